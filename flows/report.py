"""PNG figures and a JSON summary of a finished fusion output store.

``emfuse report O.zarr`` calls :func:`write_report`, which writes, beside the
store (``out.zarr`` -> ``out.report/``):

``maps.png``
    one row per element: raw map | fused map (| ground truth when the store
    has ``true_maps``), each panel with its colourbar, axes in nm or px;
``haadf.png``
    HAADF | model HAADF | difference, both images min-max normalised;
``convergence.png``
    the ``haadf``, ``chem`` and ``tv`` cost terms against iteration;
``lambda_search.png``
    the regularisation search score, only when the store has ``lambda_score``;
``tem_fusion.png``
    tem-fuse stores: BF, DF, HRTEM, the fused image (and truth), the attention maps
    (:mod:`emfuse.flows.report_tem`);
``restore.png``
    restore stores: raw | restored (| truth) of the first, middle and last frame, each with
    its central crop at full resolution (:mod:`emfuse.flows.report_restore`, which reads the raw
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
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from emfuse.stores import layout
from emfuse.stores.layout import (
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_PARAMS,
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

_PROVENANCE = (layout.ATTR_HOST, layout.ATTR_SOURCE, layout.ATTR_SHA256, layout.ATTR_INPUT_STORE,
               layout.ATTR_NORMALISATION, layout.ATTR_MAPS_FROM, layout.ATTR_IMAGE_KIND, layout.ATTR_TIMING)
LAMBDA_SCORE = "lambda_score"  # optional: score of each (lambda_chem, lambda_tv) tried
MAX_DISPLAY_PX = 1024
DPI = 120
PANEL_IN = 3.6  # inches per image panel

MAP_CMAP = "inferno"
HAADF_CMAP = "gray"
DIFF_CMAP = "RdBu_r"
TERM_TITLES = {
    "haadf": "HAADF fidelity term",
    "chem": "chemical (Poisson) term",
    "tv": "total variation term",
}


# -- public API -------------------------------------------------------------------


def coarsen_factor(shape: Sequence[int], max_px: int = MAX_DISPLAY_PX) -> int:
    """The smallest integer block size that brings every side to at most ``max_px``.

    Examples
    --------
    >>> coarsen_factor((512, 700))
    1
    >>> coarsen_factor((8192, 8192))
    8
    >>> coarsen_factor((3000, 1000))
    3
    """
    if max_px < 1:
        raise ValueError(f"max_px must be >= 1, got {max_px}")
    return max(1, *(math.ceil(n / max_px) for n in shape))


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
        raise FileNotFoundError(f"output store {str(store)!r} does not exist")
    ds = xr.open_zarr(store, **ZARR_KW)
    out_dir = Path(report_dir) if report_dir is not None else default_report_dir(store)
    out_dir.mkdir(parents=True, exist_ok=True)
    factor = coarsen_factor(_image_shape(ds), max_px)
    from .report_restore import (  # use this module's helpers
        average_figure,
        drift_figure,
        restore_figure,
    )
    from .report_tem import tem_figure

    figures: list[tuple[str, Callable[[xr.Dataset, int], Figure | None]]] = [
        ("maps.png", _maps_figure),
        ("haadf.png", _haadf_figure),
        ("convergence.png", _convergence_figure),
        ("lambda_search.png", _lambda_figure),
        ("tem_fusion.png", tem_figure),  # tem-fuse stores: modes, fused image, attention maps
        ("restore.png", restore_figure),  # restore stores: raw | restored (| truth), central crops
        ("restore_drift.png", drift_figure),
        ("restore_average.png", average_figure),
    ]
    written = []
    for name, make in figures:
        fig = make(ds, factor)
        if fig is not None:
            written.append(_save(fig, out_dir / name, dpi))
    if not written:
        raise ValueError(
            f"{str(store)!r} has none of {MAPS}, {FUSED}, {HAADF}/{HAADF_MODEL}, {COST}, tem_fused, "
            f"{RESTORED}: is it a fusion output store (or a tem-fuse or restore one)?"
        )
    summary = summarize(ds, store, factor, [p.name for p in written])
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return written + [summary_path]


def summarize(ds: xr.Dataset, store: Path, factor: int, figures: list[str]) -> dict[str, Any]:
    """The content of ``summary.json``: shapes, elements, parameters, final costs (and ``restore``)."""
    element_var = ds.get(FUSED, ds.get(MAPS))
    summary: dict[str, Any] = {
        "store": str(store.resolve()),
        "complete": ds.attrs.get(ATTR_COMPLETE),
        "emfuse_version": ds.attrs.get(ATTR_VERSION),
        "created": ds.attrs.get(ATTR_CREATED),
        "elements": _elements(element_var) if element_var is not None else [],
        "z": _atomic_numbers(element_var) if element_var is not None else [],
        "shapes": {name: list(ds[name].shape) for name in sorted(ds.data_vars)},
        "dims": {name: list(ds[name].dims) for name in sorted(ds.data_vars)},
        "units": {d: ds[d].attrs.get("units", "px") for d in ("y", "x") if d in ds.dims},
        "has_truth": TRUE_MAPS in ds,
        "display_factor": factor,
        "params": _params(ds),
        "final_costs": _final_costs(ds[COST]) if COST in ds else {},
        "iterations": int(ds.sizes.get("iteration", 0)),
        "figures": figures,
        # "check" when the store carries warnings (stores/warn.py): read them before trusting the result
        "status": "check" if ds.attrs.get(ATTR_WARNINGS) else "ok",
        "warnings": list(ds.attrs.get(ATTR_WARNINGS, [])),
        # where the result came from and what it cost (emfuse.stores.zarrio.provenance, timing)
        "provenance": {name: ds.attrs.get(name) for name in _PROVENANCE if name in ds.attrs},
    }
    if LAMBDA_SCORE in ds:
        summary["lambda_search"] = _lambda_best(ds[LAMBDA_SCORE])
    if RESTORED in ds:
        from .report_restore import restore_summary

        summary["restore"] = restore_summary(ds)
        summary["has_truth"] = summary["restore"]["has_truth"]
    return _jsonable(summary)


# -- image helpers ------------------------------------------------------------------


def _image_shape(ds: xr.Dataset) -> tuple[int, int]:
    return (ds.sizes.get("y", 1), ds.sizes.get("x", 1))


def _shrink(da: xr.DataArray, factor: int) -> xr.DataArray:
    """Block-average y and x by ``factor`` (lazy; trims the ragged edge)."""
    if factor == 1:
        return da
    small = da.coarsen(y=factor, x=factor, boundary="trim").mean()
    for dim in ("y", "x"):  # keep the units for the axis labels
        if dim in da.coords and dim in small.coords:
            small[dim].attrs = dict(da[dim].attrs)
    return small


def _compute(*arrays: xr.DataArray) -> list[xr.DataArray]:
    """Compute several lazy arrays in one pass, so shared store reads happen once."""
    return list(dask.compute(*arrays))


def _extent(da: xr.DataArray) -> list[float]:
    """imshow extent (left, right, bottom, top) from pixel-centre coordinates."""
    def edges(dim: str) -> tuple[float, float]:
        c = np.asarray(da[dim].values, dtype=float)
        step = c[1] - c[0] if c.size > 1 else 1.0
        return c[0] - step / 2, c[-1] + step / 2

    x0, x1 = edges("x")
    y0, y1 = edges("y")
    return [x0, x1, y1, y0]  # y grows downwards, as in the microscope image


def _robust_limits(*images: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> tuple[float, float]:
    """Percentile colour limits shared by ``images``; hot pixels do not wash out the scale."""
    values = np.concatenate([np.ravel(np.asarray(im, dtype=float)) for im in images])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(values, [lo, hi])
    if vmax <= vmin:  # flat image: widen so the colourbar still draws
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return float(vmin), float(vmax)


def _minmax(image: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(image), np.nanmax(image)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _units(ds: xr.Dataset | xr.DataArray, dim: str) -> str:
    return ds[dim].attrs.get("units", "px") if dim in ds.coords else "px"


def _show(fig: Figure, ax, da: xr.DataArray, image: np.ndarray, title: str, label: str,
          outer: tuple[bool, bool] = (True, True), **imshow_kw) -> None:
    """One image panel with its colourbar and title; axis labels where ``outer`` says.

    ``outer`` is (bottom row, left column): inner panels of a grid skip the
    repeated axis labels, which keeps the grid readable (and quicker to lay out).
    """
    im = ax.imshow(image, extent=_extent(da), interpolation="nearest", **imshow_kw)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    if outer[0]:
        ax.set_xlabel(f"x ({_units(da, 'x')})")
    if outer[1]:
        ax.set_ylabel(f"y ({_units(da, 'y')})")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.set_label(label, fontsize=8)
    cbar.ax.tick_params(labelsize=7)


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _new_figure(ds: xr.Dataset, ncols: int, nrows: int, title: str, factor: int):
    """A grid of image panels sized to the image's aspect ratio, with a headline."""
    ny, nx = _image_shape(ds)
    # image height plus room for title and tick labels; clipped so strips stay readable
    height = PANEL_IN * 0.75 * min(max(ny / nx, 0.35), 2.0) + 0.45
    fig = Figure(figsize=(PANEL_IN * ncols, height * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if factor > 1:
        title += f" (shown {factor}x{factor}-binned)"
    if ds.attrs.get(ATTR_COMPLETE) is False:  # a crashed or running job: say so on the page
        title += " - INCOMPLETE STORE"
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig, axes


# -- maps.png -----------------------------------------------------------------------


def _elements(da: xr.DataArray) -> list[str]:
    return [str(e) for e in da["element"].values] if "element" in da.coords else []


def _atomic_numbers(da: xr.DataArray) -> list[int]:
    return [int(z) for z in da["z"].values] if "z" in da.coords else []


def _element_label(ds: xr.Dataset, element: str) -> str:
    for name in (MAPS, FUSED, TRUE_MAPS):
        if name in ds and "z" in ds[name].coords and element in _elements(ds[name]):
            return f"{element} (Z={int(ds[name]['z'].sel(element=element))})"
    return element


def _maps_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    columns = [
        (name, title, unit)
        for name, title, unit in (
            (MAPS, "raw map", "counts"),
            (FUSED, "fused map", "normalised"),
            (TRUE_MAPS, "ground truth", "concentration"),
        )
        if name in ds
    ]
    if not any(name in (MAPS, FUSED) for name, _, _ in columns):
        return None
    elements = _elements(ds[FUSED] if FUSED in ds else ds[MAPS])
    if not elements:
        return None
    fig, axes = _new_figure(ds, len(columns), len(elements), "Elemental maps", factor)
    for row, element in enumerate(elements):
        _map_row(fig, axes[row], ds, element, columns, factor, row == len(elements) - 1)
    return fig


def _map_row(fig, axes, ds, element, columns, factor, bottom: bool) -> None:
    """Raw | fused | truth for one element; fused and truth share a scale when comparable."""
    shown = {}
    lazy = [_shrink(ds[name].sel(element=element), factor)
            for name, _, _ in columns if element in _elements(ds[name])]
    computed = iter(_compute(*lazy))
    for name, _, _ in columns:
        if element in _elements(ds[name]):
            shown[name] = next(computed)
    limits = {name: _robust_limits(da.values) for name, da in shown.items()}
    if FUSED in shown and TRUE_MAPS in shown:
        joint = _robust_limits(shown[FUSED].values, shown[TRUE_MAPS].values)
        if _comparable(limits[FUSED], limits[TRUE_MAPS]):
            limits[FUSED] = limits[TRUE_MAPS] = joint
    label = _element_label(ds, element)
    for col, (ax, (name, title, unit)) in enumerate(zip(axes, columns)):
        if name not in shown:
            ax.set_axis_off()
            ax.set_title(f"{label}: no {title}", fontsize=10)
            continue
        vmin, vmax = limits[name]
        _show(fig, ax, shown[name], shown[name].values, f"{label}: {title}", unit,
              outer=(bottom, col == 0), cmap=MAP_CMAP, vmin=vmin, vmax=vmax)


def _comparable(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two colour ranges are worth sharing if their tops lie within a factor of 3."""
    top_a, top_b = abs(a[1]), abs(b[1])
    return min(top_a, top_b) > 0 and max(top_a, top_b) / min(top_a, top_b) <= 3


# -- haadf.png ----------------------------------------------------------------------


def _haadf_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    if HAADF not in ds or HAADF_MODEL not in ds:
        return None
    haadf, model = _compute(_shrink(ds[HAADF], factor), _shrink(ds[HAADF_MODEL], factor))
    h, m = _minmax(haadf.values.astype(float)), _minmax(model.values.astype(float))
    diff = h - m
    rms = float(np.sqrt(np.nanmean(diff**2)))
    bound = max(_robust_limits(np.abs(diff), lo=0, hi=99.5)[1], 1e-12)
    fig, axes = _new_figure(ds, 3, 1, "HAADF and fused model", factor)
    _show(fig, axes[0, 0], haadf, h, "HAADF (input)", "min-max normalised",
          cmap=HAADF_CMAP, vmin=0, vmax=1)
    _show(fig, axes[0, 1], model, m, "model HAADF ($\\Sigma_i\\, w_i x_i^\\gamma$)",
          "min-max normalised", outer=(True, False), cmap=HAADF_CMAP, vmin=0, vmax=1)
    _show(fig, axes[0, 2], haadf, diff, f"difference (RMS {rms:.3g})", "input - model",
          outer=(True, False), cmap=DIFF_CMAP, vmin=-bound, vmax=bound)
    return fig


# -- convergence.png ----------------------------------------------------------------


def _cost_curves(cost: xr.DataArray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Iterations and finite values of each cost term (other dims averaged out)."""
    extra = [d for d in cost.dims if d not in ("term", "iteration")]
    if extra:
        cost = cost.mean(extra)
    cost = cost.compute()
    iterations = (cost["iteration"].values if "iteration" in cost.coords
                  else np.arange(cost.sizes["iteration"]))
    curves = {}
    for term in cost["term"].values:
        values = np.asarray(cost.sel(term=term).values, dtype=float)
        keep = np.isfinite(values)  # unwritten or early-stopped iterations read back as NaN
        curves[str(term)] = (np.asarray(iterations)[keep], values[keep])
    return curves


def _final_costs(cost: xr.DataArray) -> dict[str, float | None]:
    return {term: (float(v[-1]) if v.size else None) for term, (_, v) in _cost_curves(cost).items()}


def _convergence_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    if COST not in ds:
        return None
    curves = _cost_curves(ds[COST])
    fig = Figure(figsize=(4.2 * len(curves), 3.4), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    fig.suptitle("Convergence of the fusion objective", fontsize=12, fontweight="bold")
    for ax, (term, (it, values)) in zip(axes, curves.items()):
        _cost_panel(ax, term, it, values)
    return fig


def _cost_panel(ax, term: str, it: np.ndarray, values: np.ndarray) -> None:
    ax.set_title(TERM_TITLES.get(term, term), fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost")
    ax.grid(True, alpha=0.3)
    if values.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot(it, values, color="C0", lw=1.5)
    if np.all(values > 0):
        ax.set_yscale("log")  # costs fall over decades; a log axis shows the tail
    ax.plot(it[-1], values[-1], "o", color="C3", zorder=3)
    ax.annotate(f"final {values[-1]:.4g}", (it[-1], values[-1]), textcoords="offset points",
                xytext=(-6, 8), ha="right", fontsize=8, color="C3")


# -- lambda_search.png ----------------------------------------------------------------


def _lower_is_better(score: xr.DataArray) -> bool:
    return str(score.attrs.get("better", "lower")).lower() not in ("higher", "max", "maximum")


def _lambda_best(score: xr.DataArray) -> dict[str, Any]:
    """Coordinates and value of the best score (lowest unless attrs say ``better: higher``)."""
    values = np.asarray(score.values, dtype=float)
    if not np.isfinite(values).any():
        return {"best": None, "score": None}
    flat = np.nanargmin(values) if _lower_is_better(score) else np.nanargmax(values)
    index = np.unravel_index(flat, values.shape)
    best = {d: score[d].values[i].item() for d, i in zip(score.dims, index)}
    return {"best": best, "score": float(values[index]), "dims": list(score.dims)}


def _is_log_grid(coords: np.ndarray) -> bool:
    """Regularisation weights are usually searched on a log grid spanning decades."""
    coords = np.asarray(coords, dtype=float)
    return bool(coords.size > 1 and np.all(coords > 0) and coords.max() / coords.min() >= 10)


def _cell_edges(coords: np.ndarray) -> np.ndarray:
    """Cell boundaries around grid points: geometric midpoints on a log grid."""
    c = np.asarray(coords, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5]) if c[0] <= 0 else c[0] * np.array([0.5, 2.0])
    t = np.log(c) if _is_log_grid(c) else c
    mid = (t[1:] + t[:-1]) / 2
    edges = np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]])
    return np.exp(edges) if _is_log_grid(c) else edges


def _lambda_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    if LAMBDA_SCORE not in ds:
        return None
    score = ds[LAMBDA_SCORE].compute()
    while score.ndim > 2:  # keep the two first dims, best over the rest
        reduce = score.min if _lower_is_better(score) else score.max
        score = reduce(score.dims[-1], keep_attrs=True)
    best = _lambda_best(score)
    fig = Figure(figsize=(5.6, 4.4), layout="constrained")
    ax = fig.subplots()
    fig.suptitle("Regularisation search", fontsize=12, fontweight="bold")
    if score.ndim == 2:
        _lambda_map(fig, ax, score, best)
    else:
        _lambda_line(ax, score, best)
    return fig


def _lambda_map(fig, ax, score: xr.DataArray, best: dict[str, Any]) -> None:
    ydim, xdim = score.dims
    xs, ys = score[xdim].values, score[ydim].values
    values = np.asarray(score.values, dtype=float)
    if np.isnan(values).any():
        # a coarse-to-fine search tries only some cells of its grid: one marker per candidate
        # (cells would stretch each coarse point over the gaps between refined ones)
        iy, ix = np.nonzero(np.isfinite(values))
        mesh = ax.scatter(xs[ix], ys[iy], c=values[iy, ix], cmap="viridis", s=70, marker="s",
                          edgecolors="0.3", linewidths=0.4)
        ax.grid(True, alpha=0.3)
    else:
        mesh = ax.pcolormesh(_cell_edges(xs), _cell_edges(ys), values, cmap="viridis")
    fig.colorbar(mesh, ax=ax).set_label(score.attrs.get("long_name", "score"))
    if _is_log_grid(xs):
        ax.set_xscale("log")
    if _is_log_grid(ys):
        ax.set_yscale("log")
    ax.set_xlabel(xdim)
    ax.set_ylabel(ydim)
    if best["best"] is not None:
        bx, by = best["best"][xdim], best["best"][ydim]
        ax.plot(bx, by, marker="*", ms=14, color="white", mec="black")
        ax.set_title(f"best: {xdim}={bx:.3g}, {ydim}={by:.3g}", fontsize=10)


def _lambda_line(ax, score: xr.DataArray, best: dict[str, Any]) -> None:
    (dim,) = score.dims
    xs = score[dim].values
    ax.plot(xs, score.values, "o-")
    if _is_log_grid(xs):
        ax.set_xscale("log")
    ax.set_xlabel(dim)
    ax.set_ylabel(score.attrs.get("long_name", "score"))
    ax.grid(True, alpha=0.3)
    if best["best"] is not None:
        ax.plot(best["best"][dim], best["score"], "*", ms=14, color="C3")
        ax.set_title(f"best: {dim}={best['best'][dim]:.3g}", fontsize=10)


# -- summary helpers --------------------------------------------------------------------


def _params(ds: xr.Dataset) -> Any:
    params = ds.attrs.get(ATTR_PARAMS, {})
    if isinstance(params, str):  # some writers store the dict as a JSON string
        try:
            return json.loads(params)
        except json.JSONDecodeError:
            return params
    return params


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays unwrapped, NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
