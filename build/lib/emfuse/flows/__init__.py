"""Prefect flows and the ``emfuse`` command line.

Flows compose :mod:`stores`, :mod:`pipeline` and :mod:`cluster`. Importing this
package configures Prefect to run with no server and no network (ephemeral
mode, telemetry off, its home in the user cache directory) unless the user has
already chosen otherwise, e.g. set ``PREFECT_API_URL`` to a facility server.
"""

from ._prefect_env import configure_prefect

configure_prefect()
