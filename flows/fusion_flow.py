"""The fusion flow: the stages of :mod:`emfuse.flows.fusion_job` as Prefect tasks (:mod:`emfuse.flows.job_flow`)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from .job_flow import run_job_stages
from .jobs import JOBS


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
    maps_from: str | None = None,
    signal: str | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fused chemical mapping of one dataset: ingest, maps, tiled fusion, write, report.

    ``lambda_chem`` and ``lambda_tv`` not given in ``params`` are ``"auto"``:
    chosen once for the dataset by count splitting (:mod:`emfuse.pipeline.fusion.auto`)
    before the tiles run, and stored in the output. ``maps_from`` (``spectrum`` or
    ``file``; default the spectrum image where there is one) says where the maps come
    from; ``signal`` chooses the spectrum image of a raw file that holds several.

    Returns a summary: the output store, the final costs, the lambdas used,
    the report's figures and, for synthetic data, the error of raw and fused
    maps against the ground truth.
    """
    options = dict(elements=elements, params={**JOBS["fuse"].defaults, **(params or {})}, tile=tile, halo=halo,
                   windows={k: tuple(v) for k, v in windows.items()} if windows else None,
                   maps_from=maps_from, overwrite=overwrite)
    return run_job_stages("fuse", source, out, options, cluster=cluster, elements=elements,
                          report=report, progress=progress, signal=signal)
