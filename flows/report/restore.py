"""The figures and summary of a restoration output store: raw against restored frames, the drift.

Written by :func:`emfuse.flows.report.write_report` when the store has ``restored``:

``restore.png``
    for the first, middle and last frame (at most 3): raw | restored (| truth, for a synthetic
    movie), binned to ``max_px`` like every report image, with the central crop marked; below
    each, that crop at full resolution (a restored high-resolution image needs it to show
    atomic columns). Raw, restored and truth share robust colour limits when their ranges are
    comparable (tops within a factor of 3);
``restore_drift.png``
    stores with ``drift`` (``--register``): the drift x and y (px) of every frame against the
    first, measured on the restored frames (and the true drift, dashed, for a synthetic movie);
``restore_average.png``
    stores with ``average``: the mean of the raw frames, each moved back by the measured drift,
    | the drift-corrected mean of the restored frames (``average``) (| truth of the first frame),
    then their central crops at full resolution.

The restore job writes only the restored frames: the raw frames and the truth are read from the
input store named by the output's ``source_path`` attribute, lazily, frames binned chunk by
chunk (:func:`emfuse.flows.report.common.shrink`). Panels that need the input are left out when it is gone.
:func:`restore_summary` adds the section ``restore`` of ``summary.json``: frames, model,
precision, largest drift and, against the truth, the PSNR of raw and restored frames (mean over
the first :data:`emfuse.flows.jobs.restore.SUMMARY_FRAMES`, as ``emfuse restore`` prints it), and the
residual guard's frames per decision (``guard``; the title of a shown frame whose network output
was not kept says what was: "guard: lattice put back" or "guard: raw kept").
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from emfuse.pipeline import arrays
from emfuse.pipeline.metrics import psnr_from_mse
from emfuse.stores.layout import (
    ATTR_DEVICES,
    ATTR_INPUT_STORE,
    ATTR_SOURCE,
    AVERAGE,
    DRIFT,
    GUARD_DECISION,
    HAADF,
    MOVIE,
    RESTORED,
    TRUE_DRIFT,
    TRUE_MOVIE,
    ZARR_KW,
)

from .common import (
    HAADF_CMAP,
    TITLE_KW,
    comparable,
    compute_all,
    image_extent,
    loaded_if_small,
    new_figure,
    plot_figure,
    robust_limits,
    show_image,
    shrink,
    stored_params,
)

CROP_PX = 128  # side of the central crop shown at full resolution (at most half the image)
MIN_CROP_PX = 8
AVERAGE_BLOCK_BYTES = 64 * 2**20  # binned raw frames held at once while averaging them
SUMMARY_FRAMES = 8  # = emfuse.flows.jobs.restore.SUMMARY_FRAMES (not imported: that pulls in distributed)


@functools.lru_cache(maxsize=1)
def _input_store(path: str, written_ns: int) -> xr.Dataset:
    """The input store at ``path`` (read whole when small, :func:`loaded_if_small`), opened once for
    the figures and the summary of a report, which each ask for it. ``written_ns``: the modification
    time of its metadata, so a store written again is opened again."""
    return loaded_if_small(xr.open_zarr(path, **ZARR_KW))


def restore_inputs(ds: xr.Dataset) -> tuple[xr.DataArray | None, xr.DataArray | None, xr.Dataset | None]:
    """The raw frames and the truth behind a restore store, as (frame, y, x) (or None): lazy, or in
    memory for an input store of at most :data:`~emfuse.flows.report.common.SMALL_STORE_BYTES`.

    Parameters
    ----------
    ds
        The output store of the restore job.

    Returns
    -------
    raw, truth, source
        ``movie`` (or ``haadf`` as one frame) and ``true_movie`` of the input store named by
        ``source_path``, with the output's ``frame``/``y``/``x`` coordinates; None where the
        input is gone or no longer matches the output's shape.
    """
    # the canonical store read by the job (source_path names the instrument file behind it)
    path = ds.attrs.get(ATTR_INPUT_STORE, ds.attrs.get(ATTR_SOURCE))
    if not path or not Path(path).exists():
        return None, None, None
    metadata = Path(path) / "zarr.json"
    try:
        source = _input_store(str(path), (metadata if metadata.exists() else Path(path)).stat().st_mtime_ns)
    except (OSError, ValueError, KeyError):
        return None, None, None
    shape = ds[RESTORED].shape

    def aligned(da: xr.DataArray) -> xr.DataArray | None:
        if "frame" not in da.dims:
            da = da.expand_dims("frame")
        da = da.transpose("frame", "y", "x")
        if da.shape != shape:
            return None
        return da.assign_coords(frame=ds["frame"], y=ds["y"], x=ds["x"])

    variable = MOVIE if MOVIE in source else HAADF if HAADF in source else None
    raw = aligned(source[variable]) if variable else None
    truth = aligned(source[TRUE_MOVIE]) if raw is not None and variable == MOVIE and TRUE_MOVIE in source else None
    return raw, truth, source


def shown_frames(n_frames: int) -> list[int]:
    """First, middle and last frame, without repeats.

    Examples
    --------
    >>> shown_frames(1), shown_frames(2), shown_frames(9)
    ([0], [0, 1], [0, 4, 8])
    """
    return sorted({0, n_frames // 2, n_frames - 1})


def report_crop(ny: int, nx: int, side: int = CROP_PX) -> tuple[slice, slice]:
    """The central square of ``side`` px, at most half of each side (at least 8 px).

    Examples
    --------
    >>> report_crop(1024, 2048)
    (slice(448, 576, None), slice(960, 1088, None))
    >>> report_crop(64, 48)
    (slice(20, 44, None), slice(12, 36, None))
    """
    side = max(min(side, ny // 2, nx // 2), min(MIN_CROP_PX, ny, nx))
    return arrays.central_crop((ny, nx), side)


# -- restore.png ------------------------------------------------------------------------------


def restore_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    """Raw | restored (| truth) of the first, middle and last frame, each with a central crop."""
    if RESTORED not in ds:
        return None
    raw, truth, _ = restore_inputs(ds)
    columns = [(name, da) for name, da in (("raw", raw), ("restored", ds[RESTORED]), ("truth", truth))
               if da is not None]
    frames = shown_frames(ds.sizes["frame"])
    crop = report_crop(ds.sizes["y"], ds.sizes["x"])
    lazy = []
    for f in frames:
        lazy += [shrink(da.isel(frame=f), factor) for _, da in columns]
        lazy += [da.isel(frame=f, y=crop[0], x=crop[1]) for _, da in columns]
    shown = iter(compute_all(*lazy))
    side = crop[0].stop - crop[0].start
    title = f"Restoration with {_model(ds)}" + ("" if raw is not None else " (input store not found: no raw frames)")
    fig, axes = new_figure(ds, len(columns), 2 * len(frames), title, factor, note=_zoom_note(side))
    units = ds[RESTORED].attrs.get("units", "input units")
    names = [name for name, _ in columns]
    decisions = guard_decisions(ds)
    for i, f in enumerate(frames):
        full = [next(shown) for _ in columns]
        zoom = [next(shown) for _ in columns]
        label = f"frame {ds['frame'].values[f]}"
        guarded = GUARD_NOTES.get(decisions[f], "") if decisions else ""
        _image_row(fig, axes[2 * i], full, [f"{label}: {n}" + (guarded if n == "restored" else "") for n in names],
                   units)
        _image_row(fig, axes[2 * i + 1], zoom, [f"{label} zoom: {n}" for n in names], units)
        for ax in axes[2 * i]:
            _mark(ax, zoom[0])
    return fig


#: the restored panel's title note where the guard did not keep the network's output
GUARD_NOTES = {"reinjected": " (guard: lattice put back)", "input": " (guard: raw kept)"}


def guard_decisions(ds: xr.Dataset) -> list[str]:
    """The guard's decision for each frame (``[]`` for a store without ``guard_decision``).

    Examples
    --------
    >>> ds = xr.Dataset({"guard_decision": ("frame", np.array([1, 2, 0], np.int8))})
    >>> guard_decisions(ds)
    ['kept', 'reinjected', 'off']
    """
    from emfuse.pipeline.restore.guard import DECISIONS

    if GUARD_DECISION not in ds:
        return []
    names = {code: name for name, code in DECISIONS.items()}
    return [names.get(int(code), "?") for code in np.asarray(ds[GUARD_DECISION].values)]


def _image_row(fig: Figure, axes, images: list[xr.DataArray], titles: list[str], units: str) -> None:
    """One row of panels; shared colour limits when every panel's range is comparable."""
    limits = [robust_limits(im.values) for im in images]
    if all(comparable(limits[0], lim) for lim in limits[1:]):
        limits = [robust_limits(*(im.values for im in images))] * len(images)
    for ax, image, title, (vmin, vmax) in zip(axes, images, titles, limits):
        show_image(fig, ax, image, image.values, title, units, cmap=HAADF_CMAP, vmin=vmin, vmax=vmax)


def _zoom_note(side: int) -> str:
    """The headline's second line: what the zoom panels show."""
    return f"zoom: central {side} x {side} px at full resolution (yellow box)"


def _mark(ax, crop: xr.DataArray) -> None:
    """Outline the area of ``crop`` on a full-view panel."""
    x0, x1, y1, y0 = image_extent(crop)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#ffcc00", lw=1.0))


# -- restore_drift.png -------------------------------------------------------------------------


def drift_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    """The measured drift (x and y, px) against frame; the true drift dashed when known."""
    if RESTORED not in ds or DRIFT not in ds or ds.sizes["frame"] < 2:
        return None
    drift = np.asarray(ds[DRIFT].transpose("frame", "axis").values, dtype=float)
    frames = ds["frame"].values
    _, truth, source = restore_inputs(ds)
    true_drift = None
    if truth is not None and TRUE_DRIFT in source and source[TRUE_DRIFT].shape == drift.shape:
        true_drift = np.asarray(source[TRUE_DRIFT].transpose(..., "axis").values, dtype=float)
    fig, (ax,) = plot_figure(1, (6.4, 3.3), "Drift of each frame against the first",
                             {"top": 0.3, "bottom": 0.5, "left": 0.7, "right": 0.2})
    for axis, col, colour in (("x", 1, "C0"), ("y", 0, "C1")):  # drift is (dy, dx)
        ax.plot(frames, drift[:, col], "o-", color=colour, ms=3, label=f"{axis} (measured)")
        if true_drift is not None:
            ax.plot(frames, true_drift[:, col], "--", color=colour, lw=1, label=f"{axis} (true)")
    ax.set_xlabel("frame")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("drift (px)")
    ax.set_title(f"measured on the restored frames; largest {np.abs(drift).max():.2f} px", **TITLE_KW)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# -- restore_average.png -----------------------------------------------------------------------


def average_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    """Drift-corrected mean of the raw frames | of the restored frames (| truth), and central crops."""
    if RESTORED not in ds or AVERAGE not in ds or DRIFT not in ds or ds.sizes["frame"] < 2:
        return None
    raw, truth, _ = restore_inputs(ds)
    drift = np.asarray(ds[DRIFT].transpose("frame", "axis").values, dtype=float)
    crop = report_crop(ds.sizes["y"], ds.sizes["x"])
    lazy = [shrink(ds[AVERAGE], factor), ds[AVERAGE].isel(y=crop[0], x=crop[1])]
    if truth is not None:
        lazy += [shrink(truth.isel(frame=0), factor), truth.isel(frame=0, y=crop[0], x=crop[1])]
    shown = compute_all(*lazy)
    names, full, zoom = ["restored (average)"], [shown[0]], [shown[1]]
    if raw is not None:
        raw_full, raw_zoom = corrected_mean(raw, drift, factor, crop)
        names.insert(0, "raw")
        full.insert(0, shown[0].copy(data=raw_full))
        zoom.insert(0, shown[1].copy(data=raw_zoom))
    if truth is not None:
        names.append("truth (frame 0)")
        full += shown[2:3]
        zoom += shown[3:4]
    n, side = ds.sizes["frame"], crop[0].stop - crop[0].start
    fig, axes = new_figure(ds, len(names), 2, f"Mean of {n} frames, each moved back by the measured drift",
                            factor, note=_zoom_note(side))
    units = ds[AVERAGE].attrs.get("units", "input units")
    _image_row(fig, axes[0], full, [f"mean: {name}" for name in names], units)
    _image_row(fig, axes[1], zoom, [f"zoom: {name}" for name in names], units)
    for ax in axes[0]:
        _mark(ax, zoom[0])
    return fig


def corrected_mean(raw: xr.DataArray, drift: np.ndarray, factor: int,
                   crop: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the frames of ``raw``, each moved back by its drift: binned by ``factor``, and
    the ``crop`` at full resolution.

    As the job computes ``average`` from the restored frames (bicubic, borders filled with the
    nearest pixel). Frames are read a block at a time, binned chunk by chunk: the movie is never
    in memory whole. In the binned image the drift is ``drift / factor``.
    """
    # here: the registration module loads scipy.ndimage, which a fusion store's report never needs
    from emfuse.pipeline.register import shift_image

    n_frames, ny, nx = raw.shape
    binned = shrink(raw.isel(frame=0), factor).shape
    block = max(1, min(n_frames, AVERAGE_BLOCK_BYTES // (8 * binned[0] * binned[1])))
    # the crop reads its surroundings too: the drift, and the reach of the cubic spline's
    # prefilter (its influence falls by 0.27 per pixel: below 1e-7 after 12)
    margin = int(math.ceil(np.abs(drift).max())) + 12
    ys = slice(max(0, crop[0].start - margin), min(ny, crop[0].stop + margin))
    xs = slice(max(0, crop[1].start - margin), min(nx, crop[1].stop + margin))
    inner = (slice(crop[0].start - ys.start, crop[0].stop - ys.start),
             slice(crop[1].start - xs.start, crop[1].stop - xs.start))
    total_full, total_crop = np.zeros(binned), np.zeros((crop[0].stop - crop[0].start, crop[1].stop - crop[1].start))
    for start in range(0, n_frames, block):
        frames = slice(start, min(start + block, n_frames))
        full, window = dask.compute(shrink(raw.isel(frame=frames), factor).data,
                                    raw.isel(frame=frames, y=ys, x=xs).data)
        for k, (image, part) in enumerate(zip(np.asarray(full, float), np.asarray(window, float))):
            shift = drift[start + k]
            total_full += shift_image(image, tuple(-shift / factor))
            total_crop += shift_image(part, tuple(-shift))[inner]
    return total_full / n_frames, total_crop / n_frames


# -- summary.json -------------------------------------------------------------------------------


def restore_summary(ds: xr.Dataset) -> dict[str, Any]:
    """The ``restore`` section of ``summary.json``.

    Frames, shape, model, device and precision (from ``params``), the largest drift and, when
    the input store has the truth, the mean PSNR (dB) of the raw and of the restored frames
    against it over the first :data:`SUMMARY_FRAMES` frames (range: each true frame's max -
    min), the drift-corrected average's PSNR against the first true frame, and the largest
    error of the measured drift. Reductions run chunk by chunk with Dask.
    """
    params = stored_params(ds)
    params = params if isinstance(params, dict) else {}
    n = ds.sizes["frame"]
    raw, truth, source = restore_inputs(ds)
    info: dict[str, Any] = {
        "frames": n, "shape": list(ds[RESTORED].shape), "model": params.get("model"),
        "device": params.get("device"), "devices": list(ds.attrs.get(ATTR_DEVICES, [])),
        "precision": params.get("precision"),
        "input_store": ds.attrs.get(ATTR_INPUT_STORE, ds.attrs.get(ATTR_SOURCE)), "input_found": raw is not None,
        "has_truth": truth is not None,
    }
    if DRIFT in ds:
        drift = np.asarray(ds[DRIFT].values, dtype=float)
        info["drift_max_px"] = float(np.abs(drift).max())
        if truth is not None and TRUE_DRIFT in source and source[TRUE_DRIFT].shape == drift.shape:
            info["drift_error_px"] = float(np.abs(drift - source[TRUE_DRIFT].values).max())
    if truth is not None:
        k = min(n, SUMMARY_FRAMES)
        t = truth.data[:k].astype(np.float64)
        peak = t.max(axis=(1, 2)) - t.min(axis=(1, 2))
        mse_raw = ((raw.data[:k].astype(np.float64) - t) ** 2).mean(axis=(1, 2))
        mse_restored = ((ds[RESTORED].data[:k].astype(np.float64) - t) ** 2).mean(axis=(1, 2))
        lazy = [peak, mse_raw, mse_restored]
        if AVERAGE in ds:
            lazy += [((ds[AVERAGE].data.astype(np.float64) - t[0]) ** 2).mean()]
        peak, mse_raw, mse_restored, *mse_average = dask.compute(*lazy)
        info["psnr_frames"] = k
        info["psnr_raw_db"] = float(np.mean(psnr_from_mse(peak, mse_raw)))
        info["psnr_restored_db"] = float(np.mean(psnr_from_mse(peak, mse_restored)))
        if mse_average:
            info["psnr_average_db"] = float(psnr_from_mse(peak[0], mse_average[0]))
    info.update(_guard_summary(ds, params))
    return info


def _guard_summary(ds: xr.Dataset, params: dict[str, Any]) -> dict[str, Any]:
    """``guard``: frames per decision ("off" when the job ran without it); ``guard_frames``: the
    frames whose network output was not kept (the first 10)."""
    decisions = guard_decisions(ds)
    if params.get("guard") is False:
        return {"guard": "off"}
    if not decisions:
        return {}
    counts = {name: decisions.count(name) for name in dict.fromkeys(decisions)}
    changed = [k for k, name in enumerate(decisions) if name in GUARD_NOTES]
    return {"guard": counts, "guard_frames": changed[:10]}


def _model(ds: xr.Dataset) -> str:
    params = stored_params(ds)
    model = str(params.get("model", "?")) if isinstance(params, dict) else "?"
    return Path(model).name if "/" in model else model
