"""What every report figure shares: display size, colour limits, image panels, JSON values.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (the Agg backend, no pyplot
state); images are block-averaged lazily with Dask so a large map never sits in memory whole.
Panels are placed by hand, with fixed margins in inches (:func:`new_figure`, :func:`place_axes`):
matplotlib's constrained layout measured every tick label of every panel, several times, and
was about a third of the time a figure took to save.
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
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

from emfuse.errors import InputError
from emfuse.stores.layout import ATTR_COMPLETE, ATTR_PARAMS

MAX_DISPLAY_PX = 1024
SMALL_STORE_BYTES = 8 * 2**20  # stores up to this size are read whole for their report (loaded_if_small)
DPI = 120
PANEL_IN = 3.6  # inches per image panel
MAP_CMAP = "inferno"
HAADF_CMAP = "gray"
DIFF_CMAP = "RdBu_r"
# the margins of an image panel, inches: its title above; a little room below and on the left
# (the image has a scale bar, not tick labels); colourbar, its tick labels and label on the right
PANEL_PAD_IN = {"top": 0.3, "bottom": 0.12, "left": 0.12, "right": 0.84}
HEADLINE_IN = 0.16  # above the panels, plus LINE_IN per line of the figure's headline
LINE_IN = 0.24
#: a panel's title: at the top of its axes (``y`` given: matplotlib does not measure every tick
#: label of the panel and of its colourbar to move it clear of them; the ticks are below)
TITLE_KW = {"fontsize": 10, "y": 1.0}
#: at most this many intervals between ticks on a colourbar, at round steps (every tick is an
#: object to build and a label to lay out: about a third fewer than matplotlib's default)
CBAR_TICKS, TICK_STEPS = 6, (1, 2, 5, 10)
#: the colourbar beside an image: gap and width in inches, height a fraction of its cell's
CBAR_GAP_IN, CBAR_WIDTH_IN, CBAR_SHRINK = 0.09, 0.11, 0.85
#: the ``gid`` of the artists of a panel's colour scale and of its scale bar
COLOUR_STRIP_GID, SCALE_BAR_GID = "colour-strip", "scale-bar"


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


def loaded_if_small(ds: xr.Dataset, limit_bytes: int | None = None) -> xr.Dataset:
    """``ds`` read into memory in one pass when its variables hold at most ``limit_bytes``
    (default :data:`SMALL_STORE_BYTES`), else as it is.

    A figure computes a few lazy arrays at a time; each Dask compute of a small store's arrays
    costs about 15 ms of graph building and scheduling, several times the reading itself, and a
    fusion report made a dozen of them. Larger stores stay lazy (block-averaged chunk by chunk,
    and a restore report reads only the frames it shows).

    Examples
    --------
    >>> import dask.array as da
    >>> lazy = xr.Dataset({"a": (("y", "x"), da.zeros((4, 4), chunks=2))})  # 128 bytes
    >>> isinstance(loaded_if_small(lazy)["a"].data, np.ndarray)
    True
    >>> isinstance(loaded_if_small(lazy, limit_bytes=64)["a"].data, np.ndarray)
    False
    """
    limit = SMALL_STORE_BYTES if limit_bytes is None else limit_bytes
    return ds.compute() if ds.nbytes <= limit else ds


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
               ticks: tuple[Sequence[float], Sequence[str]] | None = None, **imshow_kw) -> None:
    """One image panel: the image with a scale bar (no axes, as on a micrograph), its colour
    scale labelled ``label`` (:func:`colour_strip`; ``ticks`` as it takes them), and its title."""
    extent = image_extent(da)
    im = ax.imshow(image, extent=extent, interpolation="nearest", **imshow_kw)
    ax.set_title(title, **TITLE_KW)
    ax.set_axis_off()  # ticks were most of a panel's drawing time and say less than a bar
    scale_bar(ax, extent, axis_units(da, "x"))
    colour_strip(ax, im, _colourbar_bounds(fig, ax, extent), label, ticks=ticks)


def colour_strip(ax, im, bounds: Sequence[float], label: str,
                 ticks: tuple[Sequence[float], Sequence[str]] | None = None) -> None:
    """The colour scale of ``im``, drawn in the image's own axes at ``bounds`` (axes fractions:
    left, bottom, width, height): a strip of the colour map, ticks at round values with their
    labels on the right, ``label`` beside them. Not a matplotlib colourbar: that is an axes of
    its own, whose construction and tick machinery were half of an image panel's drawing time.
    ``ticks``: (values, labels) instead of round values (a categorical map)."""
    vmin, vmax = im.norm.vmin, im.norm.vmax
    left, bottom, width, height = bounds
    # artists added directly (not imshow, plot): they must not move the image's data limits
    strip = AxesImage(ax, cmap=im.get_cmap(), norm=im.norm, interpolation="nearest", origin="lower",
                      extent=(left, left + width, bottom, bottom + height), transform=ax.transAxes)
    strip.set_data(np.linspace(vmin, vmax, 256)[:, None])
    frame = Rectangle((left, bottom), width, height, transform=ax.transAxes, fill=False,
                      edgecolor="black", linewidth=0.5)
    values, labels = ticks if ticks is not None else round_ticks(vmin, vmax)
    span = (vmax - vmin) or 1.0
    right, tick_w = left + width, 0.35 * width
    heights = [bottom + height * (value - vmin) / span for value in values]
    marks = Line2D(np.repeat([[right, right + tick_w, np.nan]], len(heights), 0).ravel(),
                   np.repeat(heights, 3), color="black", linewidth=0.6, transform=ax.transAxes)
    texts = [ax.text(right + 1.6 * tick_w, y, text, fontsize=7, ha="left", va="center", transform=ax.transAxes)
             for y, text in zip(heights, labels)]
    widest = max((len(t) for t in labels), default=1)
    texts.append(ax.text(right + 1.6 * tick_w + _char_width(ax) * (widest + 1), bottom + height / 2, label,
                         fontsize=8, rotation=90, ha="left", va="center", transform=ax.transAxes))
    for artist in (strip, frame, marks):
        ax.add_artist(artist)
    for artist in (strip, frame, marks, *texts):  # outside the image: not clipped to it
        artist.set_clip_on(False)
        artist.set_gid(COLOUR_STRIP_GID)  # how a reader (or a test) finds the scale among the artists


def _char_width(ax) -> float:
    """A 7-pt tick label character's width (about 0.6 em) in the axes' width fraction."""
    fig = ax.get_figure()
    return 0.6 * 7 / 72 / (ax.get_position(original=True).width * fig.get_size_inches()[0])


def round_ticks(vmin: float, vmax: float) -> tuple[list[float], list[str]]:
    """At most :data:`CBAR_TICKS` intervals of a round step (1, 2, 5 x 10^k) inside
    [``vmin``, ``vmax``], with labels that show the step's decimals and no more.

    Examples
    --------
    >>> round_ticks(0.0, 1.0)[1]
    ['0.0', '0.2', '0.4', '0.6', '0.8', '1.0']
    >>> round_ticks(-0.013, 0.013)[1]
    ['-0.010', '-0.005', '0.000', '0.005', '0.010']
    >>> round_ticks(12000.0, 48000.0)[1]
    ['2e+04', '3e+04', '4e+04']
    """
    values = [float(v) for v in MaxNLocator(CBAR_TICKS, steps=TICK_STEPS).tick_values(vmin, vmax)
              if vmin - 1e-9 * abs(vmax - vmin) <= v <= vmax + 1e-9 * abs(vmax - vmin)]
    if len(values) < 2:
        return values, [f"{v:.3g}" for v in values]
    step = values[1] - values[0]
    values = [0.0 if abs(v) < 1e-9 * step else v for v in values]  # no "-1.4e-17" for zero
    top = max(abs(v) for v in values)
    if top >= 1e4 or top < 1e-3:
        return values, [f"{v:.2g}" for v in values]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return values, [f"{v:.{decimals}f}" for v in values]


def scale_bar_length(width: float) -> float:
    """A round length (1, 2 or 5 x 10^k) of at most a quarter of ``width``: the scale bar's.

    Examples
    --------
    >>> scale_bar_length(1.6), scale_bar_length(512.0), scale_bar_length(30.0)
    (0.2, 100.0, 5.0)
    """
    target = abs(width) / 4
    if not target > 0:
        return 0.0
    decade = 10.0 ** math.floor(math.log10(target))
    return max(m * decade for m in (1, 2, 5) if m * decade <= target * (1 + 1e-9))


def scale_bar(ax, extent: Sequence[float], units: str) -> None:
    """A white bar of :func:`scale_bar_length` at the image's lower left, its length above it in
    ``units`` on a dark box (readable on a bright or a dark image)."""
    x0, x1, y_bottom, y_top = extent
    width, height = x1 - x0, y_bottom - y_top  # y grows downwards (image_extent)
    length = scale_bar_length(width)
    if length <= 0:
        return
    left, base, thick = x0 + 0.05 * width, y_bottom - 0.06 * height, 0.02 * height
    bar = ax.add_patch(Rectangle((left, base - thick), length * np.sign(width), thick, facecolor="white",
                                 edgecolor="black", linewidth=0.5))
    text = ax.text(left + length * np.sign(width) / 2, base - thick - 0.015 * height, f"{length:g} {units}",
                   color="white", fontsize=8, ha="center", va="bottom",
                   bbox={"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 1.0})
    bar.set_gid(SCALE_BAR_GID)
    text.set_gid(SCALE_BAR_GID)


def _colourbar_bounds(fig: Figure, ax, extent: Sequence[float]) -> list[float]:
    """Where the colourbar of an image goes, in the image's axes fractions: beside the image as
    drawn (an equal-aspect image shrinks inside the rectangle its axes were given, and an inset
    follows it), centred on it, :data:`CBAR_SHRINK` of the rectangle's height (a wide strip still
    gets a readable colourbar)."""
    width_in, height_in = fig.get_size_inches()
    rect = ax.get_position(original=True)  # the rectangle given (the image's own comes at drawing)
    rect_w, rect_h = rect.width * width_in, rect.height * height_in
    box = abs(extent[2] - extent[3]) / max(abs(extent[1] - extent[0]), 1e-300)  # height / width
    image_w = min(rect_w, rect_h / box) if box > 0 else rect_w
    image_h = image_w * box if box > 0 else rect_h
    height = CBAR_SHRINK * rect_h / image_h
    return [1 + CBAR_GAP_IN / image_w, (1 - height) / 2, CBAR_WIDTH_IN / image_w, height]


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def place_axes(fig: Figure, nrows: int, ncols: int, cell: tuple[float, float], pad: dict[str, float],
               top: float) -> np.ndarray:
    """A ``nrows`` x ``ncols`` grid of axes (as ``subplots(squeeze=False)`` returns it): cells of
    ``cell`` (width, height) inches below ``top`` inches of headline, each axes inset in its cell
    by ``pad`` (inches: top, bottom, left, right)."""
    width, height = fig.get_size_inches()
    w, h = cell
    axes = np.empty((nrows, ncols), dtype=object)
    for row in range(nrows):
        for col in range(ncols):
            left = col * w + pad["left"]
            bottom = height - top - (row + 1) * h + pad["bottom"]
            axes[row, col] = fig.add_axes((left / width, bottom / height,
                                           (w - pad["left"] - pad["right"]) / width,
                                           (h - pad["top"] - pad["bottom"]) / height))
    return axes


def plot_figure(ncols: int, size: tuple[float, float], title: str, pad: dict[str, float]) -> tuple[Figure, list]:
    """A row of ``ncols`` plots (line plots, a score map), each in a cell of ``size`` inches,
    under a one-line headline; ``pad`` as :func:`place_axes` takes it."""
    top = HEADLINE_IN + LINE_IN
    fig = Figure(figsize=(size[0] * ncols, size[1] + top))
    axes = place_axes(fig, 1, ncols, size, pad, top)[0]
    _headline(fig, title)
    return fig, list(axes)


def plain_log_labels(axis) -> None:
    """Log-axis tick labels as plain numbers (2350 and 0.01, not 2.35 x 10^3 and 10^-2 typeset
    with mathtext, which costs a parse per label and reads no better); minor ticks labelled, as
    matplotlib does, when the axis spans less than two decades."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def new_figure(ds: xr.Dataset, ncols: int, nrows: int, title: str, factor: int, note: str | None = None):
    """A grid of image panels sized to the image's aspect ratio, with a headline (``note``: a
    second line)."""
    ny, nx = image_shape(ds)
    pad = PANEL_PAD_IN
    # the image as wide as the cell leaves it, its height by its aspect ratio (clipped so strips
    # stay readable), plus room for the title and tick labels
    height = (PANEL_IN - pad["left"] - pad["right"]) * min(max(ny / nx, 0.35), 2.0) + pad["top"] + pad["bottom"]
    if factor > 1:
        title += f" (shown {factor}x{factor}-binned)"
    if ds.attrs.get(ATTR_COMPLETE) is False:  # a crashed or running job: say so on the page
        title += " - INCOMPLETE STORE"
    if note:
        title += f"\n{note}"
    top = HEADLINE_IN + LINE_IN * (title.count("\n") + 1)
    fig = Figure(figsize=(PANEL_IN * ncols, height * nrows + top))
    axes = place_axes(fig, nrows, ncols, (PANEL_IN, height), pad, top)
    _headline(fig, title)
    return fig, axes


def _headline(fig: Figure, title: str) -> None:
    fig.suptitle(title, fontsize=12, fontweight="bold", y=1 - 0.12 / fig.get_size_inches()[1], va="top")


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
