"""The three jobs as Prefect flows: each runs its job's stages as Prefect tasks (:mod:`.stages`).

:func:`fuse_flow` runs :mod:`emfuse.flows.jobs.fusion`, :func:`restore_flow`
:mod:`emfuse.flows.jobs.restore` and :func:`tem_fuse_flow` :mod:`emfuse.flows.jobs.tem_fuse`.

Example
-------
>>> from emfuse.flows.jobs.flows import restore_flow  # doctest: +SKIP
>>> restore_flow("movie.emd", "movie_restored.zarr", model="r_em:sfr_hrstem", register_drift=True)  # doctest: +SKIP
"""

from __future__ import annotations

from .. import _prefect_env  # noqa: F401  (Prefect reads its settings when first imported: set them first)

# isort: split
from typing import Any

from prefect import flow

from .registry import fuse_options, restore_options, tem_fuse_options
from .stages import run_job_stages


@flow(name="emfuse-fuse", log_prints=True, persist_result=False)
def fuse_flow(
    source: str,
    out: str,
    elements: list[str] | None = None,
    params: dict[str, Any] | None = None,
    cluster: str = "auto",
    tile: int | str = "auto",
    halo: int = 32,
    windows: dict[str, list[float]] | None = None,
    maps_from: str | None = None,
    signal: str | None = None,
    device: str = "auto",
    haadf_model: str = "z",
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
    ``device`` (``auto``, ``cpu``, ``cuda``): where the tiles are fused; ``auto`` takes each
    worker's GPU (CuPy) when it has one. ``tile`` ``"auto"``: the largest tile the GPU workers'
    free memory holds (:func:`emfuse.pipeline.fusion.memory.choose_tile`), 512 on CPU workers.
    ``haadf_model`` ``"fit"``: the HAADF model's weights and gamma fitted to the data by the
    automatic choice (:func:`emfuse.flows.jobs.fusion.search_settings`).

    Returns a summary: the output store, the final costs, the lambdas used,
    the report's figures and, for synthetic data, the error of raw and fused
    maps against the ground truth.
    """
    options = fuse_options(elements=elements, params=params, tile=tile, halo=halo, windows=windows,
                           maps_from=maps_from, device=device, haadf_model=haadf_model, overwrite=overwrite)
    return run_job_stages("fuse", source, out, options, cluster=cluster, elements=elements,
                          report=report, progress=progress, signal=signal)


@flow(name="emfuse-restore", log_prints=True, persist_result=False)
def restore_flow(
    source: str,
    out: str,
    model: str | None,
    device: str = "auto",
    cluster: str = "auto",
    tile: int = 256,
    overlap: int = 32,
    batch: int | str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    register_drift: bool = False,
    block: int | None = None,
    adapt: int = 0,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
    guard: bool = True,
    compile: bool = False,
    signal: str | None = None,
) -> dict[str, Any]:
    """Restore every frame of a movie (or an image) with a network; optionally measure the drift.

    ``signal`` chooses, in a raw file that holds several signals, the image or image stack to
    restore (its index or title; a spectrum image's index restores that acquisition's HAADF).

    ``register_drift`` is the job's ``register`` option (a flow parameter may not be
    called ``register``: pydantic, which validates them, has an attribute of that name).

    ``batch`` ``"auto"``: the most tiles each GPU worker's free memory holds (8 on the CPU);
    ``compile``: :func:`torch.compile` with CUDA graphs on CUDA workers (a no-op on the CPU).

    ``adapt`` > 0 fine-tunes the model on the movie itself for that many steps first
    (Noise2Noise, kept only when a held-out-frame check says it restores better).

    ``report`` writes the PNG figures and ``summary.json`` beside the output store
    (:func:`emfuse.flows.report.write_report`: raw against restored frames, the drift, the averages).

    Returns a summary: the output store, frames, model, the largest drift, the report's files
    (``figures``) and, for synthetic movies, the PSNR of raw and restored frames against the truth.
    """
    options = restore_options(model=model, device=device, tile=tile, overlap=overlap, batch=batch,
                              precision=precision, channels_last=channels_last, register=register_drift,
                              block=block, adapt=adapt, overwrite=overwrite, guard=guard, cluster=cluster,
                              compile=compile)
    return run_job_stages("restore", source, out, options, cluster=cluster, report=report, progress=progress,
                          signal=signal)


@flow(name="emfuse-tem-fuse", log_prints=True, persist_result=False)
def tem_fuse_flow(
    source: str,
    out: str,
    model: str | None = None,
    cluster: str = "auto",
    tile: int = 256,
    halo: int = 32,
    device: str = "auto",
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Multi-mode TEM fusion of one dataset: ingest, preprocessing, tiled AVAE, write, report.

    Returns a summary: the output store, the mean attention of each mode, the drift found and,
    for synthetic data, PSNR/SSIM of the fused image and of the HRTEM against the truth.
    """
    options = tem_fuse_options(model=model, tile=tile, halo=halo, device=device, overwrite=overwrite)
    return run_job_stages("tem-fuse", source, out, options, cluster=cluster, report=report, progress=progress)
