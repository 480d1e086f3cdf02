"""Plain HDF5 files (``.h5``, ``.hdf5``) holding named datasets.

The datasets sit at the root or in one group and are named as in the npz
layouts (case-insensitive): ``haadf``; ``spectrum`` (y, x, energy) with
``energy`` (eV, or keV with ``units="keV"``); ``maps`` (element, y, x) named by
an ``elements`` attribute on ``maps`` or an ``elements`` dataset; ``movie``; or
one 2D dataset per element named by its symbol, as in the tutorial file
``Co3O4_Mn3O4.h5`` (``HAADF``, ``Co``, ``Mn``, ``O``). Optional attributes on the
group: ``pixel_size_nm`` (scalar or (dy, dx)) and ``signal_type``.

Large datasets are read chunk by chunk: each Dask chunk opens the file, reads
its slice and closes it again, so no handle stays open and the graph can run
in other processes.

Examples
--------
>>> ds = read("Co3O4_Mn3O4.h5")  # doctest: +SKIP
>>> ds.maps.shape  # doctest: +SKIP
(3, 400, 400)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from ..periodic import is_symbol
from . import (
    _ROLE_KEYS,
    FileArray,
    ev_per_unit,
    fail,
    map_named_arrays,
    normalize_signal_type,
)


class H5Array(FileArray):
    """One HDF5 dataset, read slice by slice."""

    def __init__(self, path: str | Path, name: str, shape: Sequence[int], dtype: Any) -> None:
        super().__init__(path, shape, dtype)
        self.name = name

    def _identity(self) -> tuple:
        return (self.name,)

    def _read(self, key: Any) -> np.ndarray:
        with h5py.File(self.path, "r") as fh:
            return fh[self.name][key]


def read(
    path: str | Path,
    *,
    elements: Sequence[str] | None = None,
    signal_type: str | None = None,
    group: str | None = None,
) -> xr.Dataset:
    """Read an HDF5 file lazily into the canonical Dataset.

    Parameters
    ----------
    group
        The group holding the datasets, when several groups hold some
        (for example ``"map7"``); found automatically when only one does.

    Raises
    ------
    IngestError
        for a file HDF5 cannot open (truncated, corrupt), no or several
        candidate groups, or a layout that does not fit the canonical one.
    """
    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise fail(
            path,
            f"HDF5 cannot open it ({exc}); the file is truncated, corrupt or not HDF5",
            "Copy or export the file again",
        ) from exc
    with fh:
        node = _pick_group(path, fh, group)
        arrays, maps_elements, energy_scale = _collect(path, node)
        pixel_nm = _pixel_nm(node, arrays)
        signal_type = _signal_type(path, node, signal_type)
    return map_named_arrays(
        path,
        arrays,
        elements=elements,
        signal_type=signal_type,
        file_elements=maps_elements,
        pixel_nm=pixel_nm,
        energy_scale=energy_scale,
    )


def _has_canonical(node: h5py.Group) -> bool:
    return any(
        isinstance(obj, h5py.Dataset) and (key.lower() in _ROLE_KEYS or is_symbol(key))
        for key, obj in node.items()
    )


def _pick_group(path: Path, fh: h5py.File, group: str | None) -> h5py.Group:
    if group is not None:
        node = fh.get(group)
        if not isinstance(node, h5py.Group):
            raise fail(path, f"there is no group {group!r}", f"Choose one of {_groups(fh)}")
        return node
    if _has_canonical(fh):
        return fh
    candidates = [name for name in _groups(fh) if _has_canonical(fh[name])]
    if len(candidates) == 1:
        return fh[candidates[0]]
    if not candidates:
        raise fail(
            path,
            "no dataset named haadf/HAADF, spectrum, maps, movie or by an element symbol",
            "Name the datasets haadf (y, x), movie (frame, y, x), spectrum (y, x, energy) with energy in eV, "
            "maps (element, y, x) with elements, or one (y, x) dataset per element symbol (the user guide, "
            "Your own file)",
        )
    raise fail(
        path,
        f"several groups hold datasets: {candidates}",
        "Choose one with group='NAME'",
    )


def _groups(fh: h5py.File) -> list[str]:
    names: list[str] = []
    fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Group) else None)
    return names


def _collect(path: Path, node: h5py.Group) -> tuple[dict[str, Any], list[str] | None, float]:
    """Small datasets loaded, large ones lazy; the maps' element names; the energy scale."""
    arrays: dict[str, Any] = {}
    maps_elements = None
    energy_scale = 1.0
    for key, obj in node.items():
        if not isinstance(obj, h5py.Dataset) or obj.shape is None:
            continue  # subgroups, empty datasets
        arrays[key] = obj[()] if obj.ndim <= 1 else H5Array(path, obj.name, obj.shape, obj.dtype)
        if key.lower() in ("maps", "chem") and "elements" in obj.attrs:
            maps_elements = [_text(v) for v in np.atleast_1d(obj.attrs["elements"])]
        if key.lower() == "energy" and "units" in obj.attrs:
            units = _text(obj.attrs["units"])
            energy_scale = ev_per_unit(units)
            if energy_scale is None:
                raise fail(path, f"energy has units {units!r}", "Store energy in eV or keV")
    return arrays, maps_elements, energy_scale


def _pixel_nm(node: h5py.Group, arrays: dict[str, Any]) -> tuple[float | None, float | None]:
    value = node.attrs.get("pixel_size_nm")
    if value is None:
        value = arrays.pop("pixel_size_nm", None)
    if value is None:
        return (None, None)
    value = np.asarray(value, dtype=np.float64).ravel()
    return (float(value[0]), float(value[-1]))


def _signal_type(path: Path, node: h5py.Group, asked: str | None) -> str | None:
    stored = normalize_signal_type(node.attrs.get("signal_type"))
    if asked and stored and asked != stored:
        raise fail(
            path,
            f"signal_type {asked!r} was asked for, but the file says {stored!r}",
            "Drop signal_type or pass the file's",
        )
    return asked or stored


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
