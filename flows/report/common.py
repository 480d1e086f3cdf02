"""What every report figure shares: display size, colour limits, image panels, JSON values.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (the Agg backend, no pyplot
state); images are block-averaged lazily with Dask so a large map never sits in memory whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from emfuse.errors import InputError
from emfuse.stores.layout import ATTR_COMPLETE, ATTR_PARAMS

MAX_DISPLAY_PX = 1024
DPI = 120
PANEL_IN = 3.6  # inches per image panel
MAP_CMAP = "inferno"
HAADF_CMAP = "gray"
DIFF_CMAP = "RdBu_r"


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
        raise InputError(f"max_px must be >= 1, got {max_px}")
    return max(1, *(math.ceil(n / max_px) for n in shape))


def image_shape(ds: xr.Dataset) -> tuple[int, int]:
    return (ds.sizes.get("y", 1), ds.sizes.get("x", 1))


def shrink(da: xr.DataArray, factor: int) -> xr.DataArray:
    """Block-average y and x by ``factor`` (lazy; trims the ragged edge)."""
    if factor == 1:
        return da
    small = da.coarsen(y=factor, x=factor, boundary="trim").mean()
    for dim in ("y", "x"):  # keep the units for the axis labels
        if dim in da.coords and dim in small.coords:
            small[dim].attrs = dict(da[dim].attrs)
    return small


def compute_all(*arrays: xr.DataArray) -> list[xr.DataArray]:
    """Compute several lazy arrays in one pass, so shared store reads happen once."""
    return list(dask.compute(*arrays))


def image_extent(da: xr.DataArray) -> list[float]:
    """imshow extent (left, right, bottom, top) from pixel-centre coordinates."""
    def edges(dim: str) -> tuple[float, float]:
        c = np.asarray(da[dim].values, dtype=float)
        step = c[1] - c[0] if c.size > 1 else 1.0
        return c[0] - step / 2, c[-1] + step / 2

    x0, x1 = edges("x")
    y0, y1 = edges("y")
    return [x0, x1, y1, y0]  # y grows downwards, as in the microscope image


def robust_limits(*images: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> tuple[float, float]:
    """Percentile colour limits shared by ``images``; hot pixels do not wash out the scale."""
    values = np.concatenate([np.ravel(np.asarray(im, dtype=float)) for im in images])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(values, [lo, hi])
    if vmax <= vmin:  # flat image: widen so the colourbar still draws
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return float(vmin), float(vmax)


def minmax(image: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(image), np.nanmax(image)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def axis_units(ds: xr.Dataset | xr.DataArray, dim: str) -> str:
    return ds[dim].attrs.get("units", "px") if dim in ds.coords else "px"


def show_image(fig: Figure, ax, da: xr.DataArray, image: np.ndarray, title: str, label: str,
          outer: tuple[bool, bool] = (True, True), **imshow_kw) -> None:
    """One image panel with its colourbar and title; axis labels where ``outer`` says.

    ``outer`` is (bottom row, left column): inner panels of a grid skip the
    repeated axis labels, which keeps the grid readable (and quicker to lay out).
    """
    im = ax.imshow(image, extent=image_extent(da), interpolation="nearest", **imshow_kw)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    if outer[0]:
        ax.set_xlabel(f"x ({axis_units(da, 'x')})")
    if outer[1]:
        ax.set_ylabel(f"y ({axis_units(da, 'y')})")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.set_label(label, fontsize=8)
    cbar.ax.tick_params(labelsize=7)


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def new_figure(ds: xr.Dataset, ncols: int, nrows: int, title: str, factor: int):
    """A grid of image panels sized to the image's aspect ratio, with a headline."""
    ny, nx = image_shape(ds)
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


def comparable(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two colour ranges are worth sharing if their tops lie within a factor of 3."""
    top_a, top_b = abs(a[1]), abs(b[1])
    return min(top_a, top_b) > 0 and max(top_a, top_b) / min(top_a, top_b) <= 3


def stored_params(ds: xr.Dataset) -> Any:
    params = ds.attrs.get(ATTR_PARAMS, {})
    if isinstance(params, str):  # some writers store the dict as a JSON string
        try:
            return json.loads(params)
        except json.JSONDecodeError:
            return params
    return params


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays unwrapped, NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
