"""PNG figures and a JSON summary of a finished fusion output store.

``emfuse report O.zarr`` calls :func:`write_report`, which writes, beside the
store (``out.zarr`` -> ``out.report/``):

``maps.png``
    one row per element: raw map | fused map (| ground truth when the store
    has ``true_maps``), each panel with its colour scale and a scale bar in nm or px;
``haadf.png``
    HAADF | model HAADF | difference, both images min-max normalised;
``convergence.png``
    the ``haadf``, ``chem`` and ``tv`` cost terms against iteration;
``lambda_search.png``
    the regularisation search score, only when the store has ``lambda_score``;
``tem_fusion.png``
    tem-fuse stores: BF, DF, HRTEM, the fused image (and truth), the attention maps
    (:mod:`emfuse.flows.report.tem`);
``restore.png``
    restore stores: raw | restored (| truth) of the first, middle and last frame, each with
    its central crop at full resolution (:mod:`emfuse.flows.report.restore`, which reads the raw
    frames and the truth from the input store named by ``source_path``);
``restore_drift.png``
    restore stores with ``drift``: drift x and y (px) against frame (and the true drift);
``restore_average.png``
    restore stores with ``average``: drift-corrected mean of the raw frames | of the restored
    frames (| truth), with central crops;
``summary.json``
    shapes, elements, parameters and final costs; for restore stores also a section
    ``restore`` (frames, model, precision, largest drift, PSNR of raw and restored frames
    against the truth).

Figures are drawn on :class:`matplotlib.figure.Figure` objects, which render
through the Agg backend without a display and without touching pyplot's global
state (safe inside Dask workers and Prefect tasks). Images wider than
``max_px`` are block-averaged by an integer factor chunk by chunk with Dask,
so an 8192 x 8192 map never sits in memory whole.

Examples
--------
>>> from emfuse.flows.report import write_report
>>> paths = write_report("results/run1.fuse.zarr")  # doctest: +SKIP
>>> [p.name for p in paths]  # doctest: +SKIP
['maps.png', 'haadf.png', 'convergence.png', 'summary.json']
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xarray as xr
from matplotlib.figure import Figure

from emfuse.errors import InputError, InputFileNotFound
from emfuse.stores import layout
from emfuse.stores.errors import StoreError
from emfuse.stores.layout import (
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_DEVICES,
    ATTR_VERSION,
    ATTR_WARNINGS,
    COST,
    FUSED,
    HAADF,
    HAADF_MODEL,
    MAPS,
    RESTORED,
    TRUE_MAPS,
    ZARR_KW,
)
from emfuse.stores.zarrio import add_timing, check_writable

from .common import (
    DPI,
    MAX_DISPLAY_PX,
    coarsen_factor,
    image_shape,
    jsonable,
    loaded_if_small,
    save_figure,
    stored_params,
)
from .fusion import (
    LAMBDA_SCORE,
    atomic_numbers,
    convergence_figure,
    element_names,
    final_costs,
    haadf_figure,
    lambda_best,
    lambda_figure,
    maps_figure,
)
from .restore import average_figure, drift_figure, restore_figure, restore_summary
from .tem import tem_figure

__all__ = ["coarsen_factor", "default_report_dir", "draw_report", "summarize", "write_report"]


_PROVENANCE = (layout.ATTR_HOST, layout.ATTR_SOURCE, layout.ATTR_SHA256, layout.ATTR_INPUT_STORE,
               layout.ATTR_NORMALISATION, layout.ATTR_MAPS_FROM, layout.ATTR_IMAGE_KIND, layout.ATTR_TIMING)


def default_report_dir(out_store: str | Path) -> Path:
    """``<store>.report/`` beside the store: ``out.zarr`` -> ``out.report``.

    Examples
    --------
    >>> default_report_dir("results/out.zarr").as_posix()
    'results/out.report'
    """
    store = Path(out_store)
    return store.with_name(f"{store.stem}.report")


def write_report(
    out_store: str | Path,
    report_dir: str | Path | None = None,
    *,
    max_px: int = MAX_DISPLAY_PX,
    dpi: int = DPI,
) -> list[Path]:
    """Write PNG figures and ``summary.json`` for a fusion, tem-fuse or restore output store.

    Parameters
    ----------
    out_store
        Path of the output Zarr v3 store: of ``fuse`` (``fused``, ``haadf_model``,
        ``cost`` beside the input ``maps`` and ``haadf``; ``true_maps`` and
        ``lambda_score`` are optional), of ``tem-fuse`` (``tem_fused``,
        ``attention``, ``modes``) or of ``restore`` (``restored``, optionally
        ``drift`` and ``average``; raw frames and truth read from its input store).
    report_dir
        Where to write; default ``<store>.report/`` beside the store.
    max_px
        Images are block-averaged to at most this many pixels per side.
    dpi
        Resolution of the PNG files.

    Returns
    -------
    list of Path
        The files written: the PNG figures, in the order listed in the module
        docstring (those the store has data for), then ``summary.json``.

    Raises
    ------
    FileNotFoundError
        If ``out_store`` does not exist.
    ValueError
        If the store holds none of the variables a figure is drawn from.

    Examples
    --------
    >>> paths = write_report("out.zarr")  # doctest: +SKIP
    >>> paths[0].name  # doctest: +SKIP
    'maps.png'
    """
    store = Path(out_store)
    if not store.exists():
        raise InputFileNotFound(f"output store {str(store)!r} does not exist")
    try:
        ds = loaded_if_small(xr.open_zarr(store, **ZARR_KW))
    except (OSError, ValueError, KeyError) as exc:  # not a store, unreadable, or damaged metadata
        raise StoreError(f"{store} is not a readable Zarr v3 store ({exc}); give an output store.") from exc
    out_dir = Path(report_dir) if report_dir is not None else default_report_dir(store)
    check_writable(out_dir)  # OutputNotWritable where it cannot be created, before any drawing
    factor = coarsen_factor(image_shape(ds), max_px)
    figures: list[tuple[str, Callable[[xr.Dataset, int], Figure | None]]] = [
        ("maps.png", maps_figure),
        ("haadf.png", haadf_figure),
        ("convergence.png", convergence_figure),
        ("lambda_search.png", lambda_figure),
        ("tem_fusion.png", tem_figure),  # tem-fuse stores: modes, fused image, attention maps
        ("restore.png", restore_figure),  # restore stores: raw | restored (| truth), central crops
        ("restore_drift.png", drift_figure),
        ("restore_average.png", average_figure),
    ]
    drawn = [(name, fig) for name, fig in ((name, make(ds, factor)) for name, make in figures) if fig is not None]
    if not drawn:  # refused before the report's folder is made: nothing is left behind
        if "params" not in ds.attrs:  # every job's output records its parameters; an ingest does not
            raise InputError(
                f"{str(store)!r} is an input store (what ingest writes), not the output of a job: emfuse "
                f"report draws the outputs of fuse, restore and tem-fuse. Run a job on it (emfuse fuse "
                f"{store} --out OUT.zarr), or open it with xarray.")
        raise InputError(
            f"{str(store)!r} has none of {MAPS}, {FUSED}, {HAADF}/{HAADF_MODEL}, {COST}, tem_fused, "
            f"{RESTORED}: is it a fusion output store (or a tem-fuse or restore one)?"
        )
    out_dir.mkdir(exist_ok=True)
    written = [save_figure(fig, out_dir / name, dpi) for name, fig in drawn]
    summary = summarize(ds, store, factor, [p.name for p in written])
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return written + [summary_path]


def draw_report(store: str | Path) -> list[str]:
    """:func:`write_report` into the default folder, with its wall time added to the store's
    ``timing`` (stage ``report``); returns the files. A batch runs it on a worker, in parallel
    with the next job (:mod:`emfuse.flows.batch.flow`).

    Examples
    --------
    >>> draw_report("run1.fuse.zarr")  # doctest: +SKIP
    ['run1.fuse.report/maps.png', ..., 'run1.fuse.report/summary.json']
    """
    drawn = time.perf_counter()
    paths = [str(p) for p in write_report(store)]
    add_timing(store, "report", time.perf_counter() - drawn)
    return paths


def summarize(ds: xr.Dataset, store: Path, factor: int, figures: list[str]) -> dict[str, Any]:
    """The content of ``summary.json``: shapes, elements, parameters, final costs (and ``restore``)."""
    element_var = ds.get(FUSED, ds.get(MAPS))
    summary: dict[str, Any] = {
        "store": str(store.resolve()),
        "complete": ds.attrs.get(ATTR_COMPLETE),
        "emfuse_version": ds.attrs.get(ATTR_VERSION),
        "created": ds.attrs.get(ATTR_CREATED),
        "elements": element_names(element_var) if element_var is not None else [],
        "z": atomic_numbers(element_var) if element_var is not None else [],
        "shapes": {name: list(ds[name].shape) for name in sorted(ds.data_vars)},
        "dims": {name: list(ds[name].dims) for name in sorted(ds.data_vars)},
        "units": {d: ds[d].attrs.get("units", "px") for d in ("y", "x") if d in ds.dims},
        "has_truth": TRUE_MAPS in ds,
        "display_factor": factor,
        "params": stored_params(ds),
        "devices": list(ds.attrs.get(ATTR_DEVICES, [])),  # where the units ran (cpu, cuda:0)
        "final_costs": final_costs(ds[COST]) if COST in ds else {},
        "iterations": int(ds.sizes.get("iteration", 0)),
        "figures": figures,
        # "check" when the store carries warnings (stores/warn.py): read them before trusting the result
        "status": "check" if ds.attrs.get(ATTR_WARNINGS) else "ok",
        "warnings": list(ds.attrs.get(ATTR_WARNINGS, [])),
        # where the result came from and what it cost (emfuse.stores.zarrio.provenance, timing)
        "provenance": {name: ds.attrs.get(name) for name in _PROVENANCE if name in ds.attrs},
    }
    if LAMBDA_SCORE in ds:
        summary["lambda_search"] = lambda_best(ds[LAMBDA_SCORE])
    if RESTORED in ds:
        summary["restore"] = restore_summary(ds)
        summary["has_truth"] = summary["restore"]["has_truth"]
    return jsonable(summary)
