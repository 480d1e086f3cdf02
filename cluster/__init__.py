"""Dask cluster profiles: local (default), local threads, local GPU, SLURM, existing scheduler.

Every profile but local-threads takes TLS options (see :data:`TLS_OPTIONS`).

Examples
--------
>>> from emfuse.cluster import ClusterSpec, connect
>>> spec = ClusterSpec.from_string("local", n_workers=2)
>>> with connect(spec) as client:  # doctest: +SKIP
...     client.submit(abs, -1).result()
1
"""

from .profiles import (
    DEFAULT_PROFILE,
    PROFILE_OPTIONS,
    PROFILES,
    REMOTE_PROFILES,
    TLS_OPTIONS,
    ClusterConfigError,
    ClusterSpec,
    ClusterUnavailableError,
    as_spec,
    connect,
    count_gpus,
    discard_early,
    is_remote,
    local_defaults,
    make_cluster,
    render_job_script,
    slurm_job_kwargs,
    start_early,
    tls_security,
)

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_OPTIONS",
    "REMOTE_PROFILES",
    "TLS_OPTIONS",
    "ClusterConfigError",
    "ClusterSpec",
    "ClusterUnavailableError",
    "as_spec",
    "connect",
    "discard_early",
    "count_gpus",
    "is_remote",
    "local_defaults",
    "make_cluster",
    "render_job_script",
    "slurm_job_kwargs",
    "start_early",
    "tls_security",
]
