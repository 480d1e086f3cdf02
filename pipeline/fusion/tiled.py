"""Fusion tile by tile: lazy xarray fusion (:func:`fuse_dataset`) and the per-tile kernel the jobs run.

Large maps are cut by the halo-crop policy of :mod:`emfuse.pipeline.tiles`: each tile's window
(core + halo) is fused and its core cropped back, so TV and the other neighbourhood terms see
context across tile borders. Every tile uses the same dataset-wide normalisation
(:func:`global_normalisation`), so tiles agree on the scaling. With a halo of a few times the TV
correlation length the tiled result matches the untiled one closely;
``tests/pipeline/test_fusion_tiled.py`` states the tolerance.

The same :func:`fuse_tile` serves :func:`fuse_dataset` (lazy, any Dask scheduler, from a
notebook) and the overnight fusion job (which reads windows from and writes cores to Zarr
stores), so both give the same numbers.

Examples
--------
>>> import numpy as np
>>> sum_tile_costs([np.ones((3, 2)), np.ones((3, 1))], 3)[0].tolist()
[2.0, 2.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..backend import to_numpy
from ..tiles import Tile, tile_grid
from .model import FusionInputError, Normalisation
from .solver import COST_TERMS, FusionParams, fuse

__all__ = ["TileFusion", "fuse_dataset", "fuse_tile", "global_normalisation", "sum_tile_costs"]


@dataclass
class TileFusion:
    """The cropped output of :func:`fuse_tile`.

    Attributes
    ----------
    fused : numpy.ndarray
        The fused maps of the core, (element, core_y, core_x).
    haadf_model : numpy.ndarray
        The HAADF model of the core, (core_y, core_x).
    costs : numpy.ndarray
        The cost terms after each iteration, (3, iterations), over the whole window.
    """

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

    Parameters
    ----------
    haadf_window : array_like
        The HAADF (y, x) over ``tile.window``, numpy or cupy.
    maps_window : array_like
        The maps (element, y, x) over ``tile.window``.
    z : sequence of float
        Atomic numbers, one per element.
    tile : Tile
        The tile (:func:`emfuse.pipeline.tiles.tile_grid`).
    normalisation : Normalisation
        The dataset-wide scaling (:func:`global_normalisation`), shared by every tile.
    params : FusionParams
        The fusion parameters.
    haadf_valid : array_like of bool, optional
        The window of the (y, x) mask of HAADF pixels used (False: saturated, left out of the
        HAADF term); None uses every pixel.

    Returns
    -------
    TileFusion
        The core's results, always numpy (ready to write), and the window's cost curves.
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

    Tiles that stopped early (``tol``) keep their last value for the remaining iterations,
    so the sum stays comparable across iterations.

    Parameters
    ----------
    per_tile : sequence of numpy.ndarray
        Each tile's cost curves, (3, k_t) with k_t <= ``n_iter``.
    n_iter : int
        The iterations asked for.

    Returns
    -------
    numpy.ndarray
        float64, (3, n_iter).

    Examples
    --------
    >>> sum_tile_costs([np.array([[3.0, 2.0]] * 3), np.array([[5.0]] * 3)], 3)[0].tolist()
    [8.0, 7.0, 7.0]
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

    One reduction pass over the data; tiles then share the exact same scaling.

    Parameters
    ----------
    haadf : dask.array.Array
        The HAADF (y, x).
    maps : dask.array.Array
        The maps (element, y, x).
    elements : sequence of str, optional
        The element names, kept in the normalisation.
    haadf_valid : dask.array.Array of bool, optional
        Like ``haadf``; the HAADF's range is then over its valid pixels only.

    Returns
    -------
    dask.delayed.Delayed
        A :class:`Normalisation` once computed.
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


def _check_variables(ds: xr.Dataset, haadf: str, maps: str) -> None:
    """Name what is missing, and for a spectrum image how to get its maps (KeyError said neither)."""
    missing = [name for name in (haadf, maps) if name not in ds]
    if not missing:
        return
    have = ", ".join(map(str, ds.data_vars)) or "none"
    message = f"fuse_dataset needs the variables {haadf!r} and {maps!r}; the dataset has no {' or '.join(map(repr, missing))} (its variables: {have})."
    if maps in missing and "spectrum" in ds:
        message += (" It holds a spectrum image: integrate its maps first, e.g. "
                    "ds.assign(maps=emfuse.flows.jobs.fusion.input_maps(ds, ['Fe', 'O'])), "
                    "or run `emfuse fuse STORE --elements ...`, which integrates and fuses them.")
    raise FusionInputError(message)


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
        output, or ``~emfuse.pipeline.saturation.saturated_pixels(haadf)``). None: every pixel.
    **params
        :class:`emfuse.pipeline.fusion.FusionParams` fields.

    Returns
    -------
    xarray.Dataset
        ``fused`` (element, y, x), ``haadf_model`` (y, x) chunked by tile, and
        ``cost`` (term, iteration): the per-tile costs summed. Nothing is
        computed until ``.compute()`` or a write.

    Examples
    --------
    >>> out = fuse_dataset(xr.open_zarr("maps.zarr"), tile=256, lambda_tv=0.1)  # doctest: +SKIP
    >>> out.fused.sel(element="Ti").plot()  # doctest: +SKIP

    A spectrum image's maps are integrated first (``input_maps``, what ``emfuse fuse`` does):

    >>> from emfuse.flows.jobs.fusion import input_maps  # doctest: +SKIP
    >>> si = xr.open_zarr("run1.zarr")  # doctest: +SKIP
    >>> out = fuse_dataset(si.assign(maps=input_maps(si, ["Cu", "Ti", "O"])))  # doctest: +SKIP
    """
    p = FusionParams(**params)
    _check_variables(ds, haadf, maps)
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
