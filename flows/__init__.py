"""Prefect flows and the ``emfuse`` command line.

Flows compose :mod:`stores`, :mod:`pipeline` and :mod:`cluster`. Importing this
package has no side effects. The modules that use Prefect configure it first
(:mod:`._prefect_env`) to run with no server and no network (ephemeral mode,
telemetry off, its home in the user cache directory) unless the user has
already chosen otherwise, e.g. set ``PREFECT_API_URL`` to a facility server.
"""
