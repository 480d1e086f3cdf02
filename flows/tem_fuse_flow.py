"""The tem-fuse flow: Prefect tasks around the stages of :mod:`flows.tem_fuse_job`.

As in :mod:`flows.fusion_flow`, tasks run in the flow's process and submit their Dask work to
the cluster themselves (a Prefect task per stage, not per tile).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from cluster import connect

from . import tem_fuse_job
from .inputs import resolve_store
from .report import write_report

_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task
def ingest_task(source: str, workdir: str) -> str:
    return str(resolve_store(source, workdir))


@_task
def plan_task(store: str, out: str, options: dict[str, Any]) -> tuple[tem_fuse_job.TemFuseJob, str]:
    return tem_fuse_job.plan(store, out, **options)


@_task
def inputs_task(job: tem_fuse_job.TemFuseJob) -> None:
    tem_fuse_job.write_inputs(job)


@_task
def preprocessing_task(job: tem_fuse_job.TemFuseJob):
    return tem_fuse_job.fit_preprocessing(job)


@_task
def tiles_task(job: tem_fuse_job.TemFuseJob, prep, client, progress: bool) -> int:
    return tem_fuse_job.fuse_tiles(job, prep, client, progress=progress)


@_task
def finalise_task(job: tem_fuse_job.TemFuseJob) -> None:
    tem_fuse_job.finalise(job)


@_task
def report_task(out: str) -> list[str]:
    return [str(p) for p in write_report(out)]


@flow(name="emfuse-tem-fuse", log_prints=True, persist_result=False)
def tem_fuse_flow(
    source: str,
    out: str,
    model: str | None = None,
    cluster: str = "local",
    tile: int = 256,
    halo: int = 32,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Multi-mode TEM fusion of one dataset: ingest, preprocessing, tiled AVAE, write, report.

    Returns a summary: the output store, the mean attention of each mode, the drift found and,
    for synthetic data, PSNR/SSIM of the fused image and of the HRTEM against the truth.
    """
    workdir = str(Path(out).resolve().parent)
    store = ingest_task(source, workdir)
    job, state = plan_task(store, out, dict(model=model, tile=tile, halo=halo, overwrite=overwrite))
    tiles_computed = 0
    if state != "complete":
        with connect(cluster) as client:
            inputs_task(job)
            prep = preprocessing_task(job)
            tiles_computed = tiles_task(job, prep, client, progress)
        finalise_task(job)
    result = tem_fuse_job.summary(job)
    result["input_store"] = store
    result["tiles_computed"] = tiles_computed
    result["figures"] = report_task(job.out) if report else []
    return result
