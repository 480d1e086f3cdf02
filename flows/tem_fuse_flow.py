"""The tem-fuse flow: the stages of :mod:`emfuse.flows.tem_fuse_job` as Prefect tasks (:mod:`emfuse.flows.job_flow`)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from .job_flow import run_job_stages


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
    options = dict(model=model, tile=tile, halo=halo, overwrite=overwrite)
    return run_job_stages("tem-fuse", source, out, options, cluster=cluster, report=report, progress=progress)
