"""The restoration flow: the stages of :mod:`flows.restore_job` as Prefect tasks (:mod:`flows.job_flow`).

Example
-------
>>> from emfuse.flows.restore_flow import restore_flow  # doctest: +SKIP
>>> restore_flow("movie.emd", "movie_restored.zarr", model="r_em:sfr_hrstem", register_drift=True)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from emfuse.cluster import as_spec

from .job_flow import run_job_stages

#: Profiles whose workers may not share the flow's machine (its GPU, its torch build).
REMOTE_PROFILES = ("slurm", "scheduler")


def is_remote(cluster: Any) -> bool:
    """True when the cluster's workers may not share this machine (its GPU, its torch build)."""
    try:
        return as_spec(cluster).profile in REMOTE_PROFILES
    except ValueError:
        return False  # connect() names the problem


@flow(name="emfuse-restore", log_prints=True, persist_result=False)
def restore_flow(
    source: str,
    out: str,
    model: str | None,
    device: str = "cpu",
    cluster: str = "local",
    tile: int = 256,
    overlap: int = 32,
    batch: int = 8,
    precision: str = "fp32",
    channels_last: bool = False,
    register_drift: bool = False,
    block: int | None = None,
    adapt: int = 0,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
    guard: bool = True,
) -> dict[str, Any]:
    """Restore every frame of a movie (or an image) with a network; optionally measure the drift.

    ``register_drift`` is the job's ``register`` option (a flow parameter may not be
    called ``register``: pydantic, which validates them, has an attribute of that name).

    ``adapt`` > 0 fine-tunes the model on the movie itself for that many steps first
    (Noise2Noise, kept only when a held-out-frame check says it restores better).

    ``report`` writes the PNG figures and ``summary.json`` beside the output store
    (:func:`flows.report.write_report`: raw against restored frames, the drift, the averages).

    Returns a summary: the output store, frames, model, the largest drift, the report's files
    (``figures``) and, for synthetic movies, the PSNR of raw and restored frames against the truth.
    """
    options = dict(model=model, device=device, tile=tile, overlap=overlap, batch=batch,
                   precision=precision, channels_last=channels_last, register=register_drift, block=block,
                   adapt=adapt, overwrite=overwrite, check_device=not is_remote(cluster), guard=guard)
    return run_job_stages("restore", source, out, options, cluster=cluster, report=report, progress=progress)
