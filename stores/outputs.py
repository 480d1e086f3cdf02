"""Output stores: create from a template, resume, and write regions aligned to chunks.

An output store is created once, from a template Dataset whose (lazy) arrays
fix every variable's shape, dtype and chunks; nothing but metadata and
coordinates is written then. Tiles are written later into their regions, from
any worker, and the store is marked complete last. A store that exists with
other parameters is refused rather than silently mixed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .errors import StoreError, other_parameters_error, params_differ
from .layout import ATTR_COMPLETE, ATTR_PARAMS, ZARR_KW
from .zarrio import (
    check_writable,
    jsonable,
    provenance,
    read_attrs,
    remove_store,
    with_vlen_strings,
)

State = Literal["new", "resume", "complete"]


def _canonical(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they read back from Zarr attributes (JSON types)."""
    return jsonable(params)


def prepare_output(
    path: str | Path,
    template: xr.Dataset,
    params: dict[str, Any],
    *,
    source: str | Path | None = None,
    overwrite: bool = False,
    attrs: dict[str, Any] | None = None,
) -> State:
    """Create an output store from ``template``, or decide how to reuse the existing one.

    A new store gets :func:`emfuse.stores.zarrio.provenance` of ``source`` with ``params`` and
    ``attrs`` (further attributes of the job, e.g. where its maps came from).

    Returns
    -------
    "new"
        the store was created (``complete = False``);
    "resume"
        it exists with the same parameters but is unfinished: carry on;
    "complete"
        it exists, finished, with the same parameters: nothing to do.

    Raises
    ------
    StoreError
        if it exists with other parameters (and ``overwrite`` is False).
    """
    path = check_writable(path)
    params = _canonical(params)
    if path.exists() and not overwrite:
        try:
            attrs = read_attrs(path)
        except StoreError as exc:
            raise StoreError(
                f"{path} exists but is not an emfuse output store; remove it, pass --overwrite, "
                "or choose another --out."
            ) from exc
        differ = params_differ(attrs.get(ATTR_PARAMS, {}), params)
        if differ:
            raise other_parameters_error(path, differ)
        return "complete" if attrs.get(ATTR_COMPLETE) else "resume"
    if path.exists():
        remove_store(path)
    ds = with_vlen_strings(template).copy()
    ds.attrs.update(provenance(source, params=params, **(attrs or {})))
    ds.attrs[ATTR_COMPLETE] = False
    ds.to_zarr(str(path), mode="w", compute=False, **ZARR_KW)
    return "new"


def empty_like(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any = np.float32) -> da.Array:
    """A lazy placeholder array for templates (never computed: only its metadata is written).

    Named at random: Dask would otherwise hash its arguments (pickling a partial function), about
    15 ms per array, several arrays per job, for a name nothing ever looks up.
    """
    fill = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0
    return da.full(shape, fill, chunks=chunks, dtype=dtype, name=f"template-{uuid.uuid4().hex}")


def write_region(path: str | Path, name: str, region: tuple[slice, ...], data: Any) -> None:
    """Write ``data`` into ``region`` of variable ``name`` of an existing store.

    The region must start on chunk boundaries (tiles from
    :func:`emfuse.pipeline.tiles.tile_grid` with ``tile`` equal to the chunk size
    do), so no two writers ever touch the same chunk.
    """
    array = zarr.open_array(str(Path(path) / name), mode="r+", zarr_format=3)
    for sl, chunk in zip(region, array.chunks):
        if sl.start is not None and sl.start % chunk:
            raise ValueError(
                f"region {region} of {name} does not start on a chunk boundary ({array.chunks})"
            )
    array[region] = np.asarray(data, dtype=array.dtype)


def write_variable(path: str | Path, name: str, data: da.Array) -> None:
    """Stream a whole dask array into variable ``name`` (rechunked to the store's chunks)."""
    array = zarr.open_array(str(Path(path) / name), mode="r+", zarr_format=3)
    if tuple(data.shape) != tuple(array.shape):
        raise ValueError(f"{name}: data {data.shape} do not fit the store's {array.shape}")
    data = data.astype(array.dtype).rechunk(array.chunks)
    da.store(data, array, lock=False)
