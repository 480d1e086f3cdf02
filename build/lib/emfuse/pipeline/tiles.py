"""Map kernels over tiles of large images: the tile grid, halos, and lazy xarray fusion.

This is the one place where emfuse cuts images into tiles. A tile is a *core*
(the pixels it is responsible for; the cores partition the image) inside a
*window* (the core grown by a halo on every side, clipped to the image). A
kernel runs on the window and the core is cropped back out, so TV and the
other neighbourhood terms see context across tile borders. With a halo of a
few times the TV correlation length the tiled result matches the untiled one
closely; ``tests/test_tiles.py`` states the tolerance.

The same :func:`fuse_tile` serves :func:`fuse_dataset` (lazy, any Dask
scheduler, from a notebook) and the overnight flow (which reads windows from
and writes cores to Zarr stores), so both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .backend import to_numpy
from .fusion import COST_TERMS, FusionParams, Normalisation, fuse


@dataclass(frozen=True)
class Tile:
    """One tile of a 2D grid: ``core`` slices inside ``window`` slices (image coordinates)."""

    index: tuple[int, int]
    core: tuple[slice, slice]
    window: tuple[slice, slice]

    @property
    def id(self) -> str:
        """A stable name, ``"<row>-<col>"``, used in progress records."""
        return f"{self.index[0]}-{self.index[1]}"

    @property
    def crop(self) -> tuple[slice, slice]:
        """The core relative to the window (to cut a kernel's output back)."""
        return tuple(
            slice(c.start - w.start, c.stop - w.start) for c, w in zip(self.core, self.window)
        )  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(s.stop - s.start for s in self.core)  # type: ignore[return-value]


def tile_grid(shape: Sequence[int], tile: int | Sequence[int], halo: int) -> list[Tile]:
    """Cut an image of ``shape`` (y, x) into tiles of ``tile`` pixels with a ``halo``.

    Cores start at multiples of ``tile`` so that they line up with Zarr chunks
    of that size (region writes never share a chunk); the last row and column
    of tiles may be smaller.

    Examples
    --------
    >>> [t.core for t in tile_grid((5, 3), tile=4, halo=1)]
    [(slice(0, 4, None), slice(0, 3, None)), (slice(4, 5, None), slice(0, 3, None))]
    >>> tile_grid((5, 3), tile=4, halo=1)[1].window
    (slice(3, 5, None), slice(0, 3, None))
    """
    ny, nx = (int(n) for n in shape)
    ty, tx = (int(tile), int(tile)) if np.isscalar(tile) else (int(t) for t in tile)
    if min(ny, nx) < 1 or min(ty, tx) < 1 or halo < 0:
        raise ValueError(f"bad tiling: image {shape}, tile {tile}, halo {halo}")
    tiles = []
    for iy in range(math.ceil(ny / ty)):
        for ix in range(math.ceil(nx / tx)):
            core = (slice(iy * ty, min((iy + 1) * ty, ny)), slice(ix * tx, min((ix + 1) * tx, nx)))
            window = (
                slice(max(core[0].start - halo, 0), min(core[0].stop + halo, ny)),
                slice(max(core[1].start - halo, 0), min(core[1].stop + halo, nx)),
            )
            tiles.append(Tile((iy, ix), core, window))
    return tiles


@dataclass
class TileFusion:
    """The cropped output of :func:`fuse_tile`."""

    fused: np.ndarray  # (element, core_y, core_x)
    haadf_model: np.ndarray  # (core_y, core_x)
    costs: np.ndarray  # (3, iterations) over the whole window


def fuse_tile(
    haadf_window: Any,
    maps_window: Any,
    z: Sequence[float],
    tile: Tile,
    normalisation: Normalisation,
    params: FusionParams,
    haadf_valid: Any = None,
) -> TileFusion:
    """Fuse one window and crop its core; the dataset-wide ``normalisation`` is used.

    The window may be numpy or cupy; the cropped result is always numpy, ready to write.
    ``haadf_valid``: the window of the (y, x) bool mask of HAADF pixels used (False:
    saturated, left out of the HAADF term); None uses every pixel.
    """
    # no per-tile warnings: the job diagnoses the summed cost curves once
    result = fuse(haadf_window, maps_window, z, normalisation=normalisation, warn=False, haadf_valid=haadf_valid,
                  **params.to_dict())
    ys, xs = tile.crop
    return TileFusion(
        fused=to_numpy(result.fused[:, ys, xs]),
        haadf_model=to_numpy(result.haadf_model[ys, xs]),
        costs=result.costs,
    )


def sum_tile_costs(per_tile: Sequence[np.ndarray], n_iter: int) -> np.ndarray:
    """Add per-tile cost curves (3, k_t) into one (3, n_iter) curve.

    Tiles that stopped early (``tol``) keep their last value for the
    remaining iterations, so the sum stays comparable across iterations.
    """
    total = np.zeros((len(COST_TERMS), n_iter))
    for costs in per_tile:
        costs = np.asarray(costs, dtype=np.float64)
        if costs.shape[1] == 0:
            continue
        padded = np.concatenate(
            [costs, np.repeat(costs[:, -1:], n_iter - costs.shape[1], axis=1)], axis=1
        )
        total += padded
    return total


def global_normalisation(haadf: Any, maps: Any, elements: Sequence[str] | None = None, haadf_valid: Any = None) -> Any:
    """The min-max normalisation of whole (possibly dask) arrays, as a Dask delayed value.

    One reduction pass over the data; tiles then share the exact same scaling. With
    ``haadf_valid`` (bool, like ``haadf``) the HAADF's range is over its valid pixels.
    """
    lo = maps.min(axis=(1, 2))
    hi = maps.max(axis=(1, 2))
    if haadf_valid is not None:  # saturated pixels out of the range: NaN, then nan-reductions
        haadf = da.where(haadf_valid, haadf, np.nan)
        h_lo, h_hi = da.nanmin(haadf), da.nanmax(haadf)
    else:
        h_lo, h_hi = haadf.min(), haadf.max()

    def build(h_lo, h_hi, m_lo, m_hi):
        return Normalisation.from_ranges(
            (float(h_lo), float(h_hi)), list(zip(np.ravel(m_lo), np.ravel(m_hi))), elements
        )

    return dask.delayed(build, pure=True)(h_lo, h_hi, lo, hi)


def fuse_dataset(
    ds: xr.Dataset,
    *,
    tile: int = 512,
    halo: int = 32,
    haadf: str = "haadf",
    maps: str = "maps",
    valid: str | None = None,
    **params: Any,
) -> xr.Dataset:
    """Fuse a (dask-backed) Dataset tile by tile, lazily.

    Parameters
    ----------
    ds
        A Dataset with ``haadf`` (y, x) and ``maps`` (element, y, x) with a
        ``z`` coordinate (atomic numbers) on ``element``, e.g. a canonical
        store opened with :func:`xarray.open_zarr`.
    tile, halo
        Core size and halo width in pixels.
    valid
        Name of a bool (y, x) variable of ``ds``, False where the HAADF pixel is
        left out of the HAADF term (saturated; e.g. ``haadf_valid`` of a fusion
        output, or ``~pipeline.saturation.saturated_pixels(haadf)``). None: every pixel.
    **params
        :class:`pipeline.fusion.FusionParams` fields.

    Returns
    -------
    xarray.Dataset
        ``fused`` (element, y, x), ``haadf_model`` (y, x) chunked by tile, and
        ``cost`` (term, iteration): the per-tile costs summed. Nothing is
        computed until ``.compute()`` or a write.

    Examples
    --------
    >>> out = fuse_dataset(xr.open_zarr("run1.zarr"), tile=256, lambda_tv=0.1)  # doctest: +SKIP
    >>> out.fused.sel(element="Ti").plot()  # doctest: +SKIP
    """
    p = FusionParams(**params)
    h = ds[haadf].transpose("y", "x").data
    m = ds[maps].transpose("element", "y", "x").data
    h = h if isinstance(h, da.Array) else da.from_array(h)
    m = m if isinstance(m, da.Array) else da.from_array(m)
    hv = None if valid is None else ds[valid].transpose("y", "x").data
    hv = hv if hv is None or isinstance(hv, da.Array) else da.from_array(hv)
    z = [float(v) for v in np.asarray(ds[maps]["z"].values)]
    elements = [str(e) for e in np.asarray(ds[maps]["element"].values)]
    norm = global_normalisation(h, m, elements, hv)
    grid = tile_grid(h.shape, tile, halo)
    n_rows, n_cols = grid[-1].index[0] + 1, grid[-1].index[1] + 1
    fused_blocks = [[None] * n_cols for _ in range(n_rows)]
    model_blocks = [[None] * n_cols for _ in range(n_rows)]
    costs = []
    run = dask.delayed(fuse_tile, pure=True)
    for t in grid:
        ys, xs = t.window
        out = run(h[ys, xs], m[:, ys, xs], z, t, norm, p, None if hv is None else hv[ys, xs])
        iy, ix = t.index
        fused_blocks[iy][ix] = da.from_delayed(out.fused, (len(z), *t.shape), np.float32)
        model_blocks[iy][ix] = da.from_delayed(out.haadf_model, t.shape, np.float32)
        costs.append(out.costs)
    cost = dask.delayed(sum_tile_costs)(costs, p.n_iter)
    coords = {"y": ds["y"], "x": ds["x"], "element": ds[maps]["element"], "z": ds[maps]["z"]}
    return xr.Dataset(
        {
            "fused": (("element", "y", "x"), _block3(fused_blocks)),
            "haadf_model": (("y", "x"), da.block(model_blocks)),
            "cost": (("term", "iteration"), da.from_delayed(cost, (len(COST_TERMS), p.n_iter), np.float64)),
        },
        coords={**coords, "term": list(COST_TERMS), "iteration": np.arange(1, p.n_iter + 1)},
        attrs={"params": p.to_dict(), "tile": tile, "halo": halo},
    )


def _block3(blocks: list[list[da.Array]]) -> da.Array:
    """Assemble (element, y, x) blocks laid out on a (row, col) grid."""
    return da.concatenate([da.concatenate(row, axis=2) for row in blocks], axis=1)
