"""The fusion flow: Prefect tasks around the stages of :mod:`flows.fusion_job`.

Tasks run in the flow's process and submit their Dask work to the cluster
themselves (a Prefect task per stage, not per tile): with Prefect's Dask task
runner every worker would start its own temporary Prefect server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from cluster import connect

from . import fusion_job
from .inputs import resolve_store
from .report import write_report

# Parameters are store paths and small dicts; caching would only hash them.
_task = task(cache_policy=NO_CACHE, persist_result=False)

#: The flow's default for weights not given: chosen automatically for each dataset.
AUTO_LAMBDAS = {"lambda_chem": "auto", "lambda_tv": "auto"}


@_task
def ingest_task(source: str, workdir: str, elements: Sequence[str] | None) -> str:
    return str(resolve_store(source, workdir, elements=elements))


@_task
def plan_task(store: str, out: str, options: dict[str, Any]) -> tuple[fusion_job.FusionJob, str]:
    return fusion_job.plan(store, out, **options)


@_task
def inputs_task(job: fusion_job.FusionJob) -> None:
    fusion_job.write_inputs(job)


@_task
def normalise_task(job: fusion_job.FusionJob):
    return fusion_job.normalise(job)


@_task
def lambda_task(job: fusion_job.FusionJob, norm, progress: bool) -> fusion_job.FusionJob:
    return fusion_job.choose_lambdas(job, norm, progress=progress)


@_task
def tiles_task(job: fusion_job.FusionJob, norm, client, progress: bool) -> int:
    return fusion_job.fuse_tiles(job, norm, client, progress=progress)


@_task
def finalise_task(job: fusion_job.FusionJob) -> None:
    fusion_job.finalise(job)


@_task
def report_task(out: str) -> list[str]:
    return [str(p) for p in write_report(out)]


@flow(name="emfuse-fuse", log_prints=True, persist_result=False)
def fuse_flow(
    source: str,
    out: str,
    elements: list[str] | None = None,
    params: dict[str, Any] | None = None,
    cluster: str = "local",
    tile: int = 512,
    halo: int = 32,
    windows: dict[str, list[float]] | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fused chemical mapping of one dataset: ingest, maps, tiled fusion, write, report.

    ``lambda_chem`` and ``lambda_tv`` not given in ``params`` are ``"auto"``:
    chosen once for the dataset by count splitting (:mod:`pipeline.fusion.auto`)
    before the tiles run, and stored in the output.

    Returns a summary: the output store, the final costs, the lambdas used,
    the report's figures and, for synthetic data, the error of raw and fused
    maps against the ground truth.
    """
    workdir = str(Path(out).resolve().parent)
    store = ingest_task(source, workdir, elements)
    params = {**AUTO_LAMBDAS, **(params or {})}
    options = dict(elements=elements, params=params, tile=tile, halo=halo,
                   windows={k: tuple(v) for k, v in windows.items()} if windows else None,
                   overwrite=overwrite)
    job, state = plan_task(store, out, options)
    tiles_computed = 0
    if state != "complete":
        with connect(cluster) as client:
            inputs_task(job)
            norm = normalise_task(job)
            job = lambda_task(job, norm, progress)
            tiles_computed = tiles_task(job, norm, client, progress)
        finalise_task(job)
    result = fusion_job.summary(job)
    result["input_store"] = store
    result["tiles_computed"] = tiles_computed
    result["figures"] = report_task(job.out) if report else []
    return result
