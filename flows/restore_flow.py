"""The restoration flow: Prefect tasks around the stages of :mod:`flows.restore_job`.

As in :mod:`flows.fusion_flow`, tasks run in the flow's process and submit their Dask work
to the cluster themselves (a Prefect task per stage, not per block of frames).

Example
-------
>>> from flows.restore_flow import restore_flow  # doctest: +SKIP
>>> restore_flow("movie.emd", "movie_restored.zarr", model="r_em:sfr_hrstem", register_drift=True)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from cluster import ClusterSpec, connect

from . import restore_job
from .inputs import resolve_store

# Parameters are store paths and small dicts; caching would only hash them.
_task = task(cache_policy=NO_CACHE, persist_result=False)

#: Profiles whose workers may not share the flow's machine (its GPU, its torch build).
REMOTE_PROFILES = ("slurm", "scheduler")


@_task
def ingest_task(source: str, workdir: str) -> str:
    return str(resolve_store(source, workdir))


@_task
def plan_task(store: str, out: str, options: dict[str, Any]) -> tuple[restore_job.RestoreJob, str]:
    return restore_job.plan(store, out, **options)


@_task
def blocks_task(job: restore_job.RestoreJob, client, progress: bool) -> int:
    return restore_job.restore_blocks(job, client, progress=progress)


@_task
def register_task(job: restore_job.RestoreJob, client, progress: bool) -> None:
    restore_job.register(job, client, progress=progress)


@_task
def finalise_task(job: restore_job.RestoreJob) -> None:
    restore_job.finalise(job)


def _is_remote(cluster: str) -> bool:
    try:
        return ClusterSpec.from_string(cluster).profile in REMOTE_PROFILES
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
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Restore every frame of a movie (or an image) with a network; optionally measure the drift.

    ``register_drift`` is the job's ``register`` option (a flow parameter may not be
    called ``register``: pydantic, which validates them, has an attribute of that name).

    Returns a summary: the output store, frames, model, the largest drift and, for
    synthetic movies, the PSNR of raw and restored frames against the truth.
    """
    workdir = str(Path(out).resolve().parent)
    store = ingest_task(source, workdir)
    options = dict(model=model, device=device, tile=tile, overlap=overlap, batch=batch,
                   precision=precision, channels_last=channels_last, register=register_drift, block=block,
                   overwrite=overwrite, check_device=not _is_remote(cluster))
    job, state = plan_task(store, out, options)
    blocks_computed = 0
    if state != "complete":
        with connect(cluster) as client:
            blocks_computed = blocks_task(job, client, progress)
            register_task(job, client, progress)
        finalise_task(job)
    result = restore_job.summary(job)
    result["input_store"] = store
    result["blocks_computed"] = blocks_computed
    return result
