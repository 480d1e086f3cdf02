"""Readers for facility file formats, and what they share.

Each module here reads one family of formats and returns the canonical lazy
Dataset (see :mod:`emfuse.stores.layout`)::

    npz     NumPy archives in the three emfuse layouts
    hdf5    plain HDF5 files with named datasets
    tiff    2D images and 3D stacks
    rsciio  microscope formats through RosettaSciIO (.bcf .dm3 .dm4 .emd .emi .ser)

This package module holds the pieces they share: the error and warning
helpers, unit conversion, lazy file-backed arrays, and
:func:`canonical_dataset`, the one function that checks the structure and
builds the Dataset with every coordinate, so that all readers agree.

Examples
--------
>>> import numpy as np
>>> ds = canonical_dataset("a.npz", haadf=np.zeros((4, 6)), pixel_nm=(0.5, 0.5))
>>> ds.haadf.dims, float(ds.x[1]), ds.x.attrs["units"]
(('y', 'x'), 0.5, 'nm')
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ...signals import signal_type as canonical_signal_type
from ..errors import IngestError
from ..layout import (
    ATTR_SIGNAL,
    DIMS,
    HAADF,
    IMAGE_CHUNK_YX,
    MAPS,
    MOVIE,
    SPECTRUM,
    SPECTRUM_CHUNK_YX,
)
from ..periodic import atomic_number, is_symbol

ATTR_UNMAPPED = "unmapped"  # dataset attribute: what the file held that was not ingested

PixelSize = tuple[float | None, float | None]  # (dy, dx) in nm, None where unknown


class IngestWarning(UserWarning):
    """Part of a file could not be mapped to the canonical layout and was left out."""


# -- messages -----------------------------------------------------------------


def fail(path: str | Path, problem: str, fix: str) -> IngestError:
    """An :class:`IngestError` whose message names the file, the problem and the fix."""
    return IngestError(f"cannot ingest {path}: {problem}. {fix}")


def warn_unmapped(path: str | Path, items: Sequence[str]) -> None:
    """Warn once, listing everything in the file that was left out."""
    if items:
        listing = "; ".join(_counted(items))
        warnings.warn(f"{path}: not ingested: {listing}", IngestWarning, stacklevel=3)


def _counted(items: Sequence[str]) -> list[str]:
    """Repeated entries once, with their count: '3 x spectrum image ...'."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return [f"{n} x {item}" if n > 1 else item for item, n in counts.items()]


def shape_str(shape: Sequence[int]) -> str:
    return str(tuple(int(n) for n in shape))


# -- units ----------------------------------------------------------------------

_NM_PER_UNIT = {
    "nm": 1.0,
    "pm": 1e-3,
    "å": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "µm": 1e3,  # micro sign U+00B5
    "μm": 1e3,  # Greek mu U+03BC
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "\\u00b5m": 1e3,  # ImageJ writes the micro sign escaped
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}
_EV_PER_UNIT = {"ev": 1.0, "kev": 1e3}


def nm_per_unit(units: Any) -> float | None:
    """Factor from a length unit to nm, or None when the unit is not a length (pixels)."""
    return _NM_PER_UNIT.get(str(units or "").strip().lower())


def ev_per_unit(units: Any) -> float | None:
    """Factor from an energy unit (eV, keV) to eV, or None when unknown."""
    return _EV_PER_UNIT.get(str(units or "").strip().lower())


def normalize_signal_type(value: Any) -> str | None:
    """``"EDX"`` or ``"EELS"`` for the names files and users give, None when unknown.

    The vocabulary is :mod:`emfuse.signals` (kept once for all layers).

    >>> normalize_signal_type("EDS_TEM"), normalize_signal_type("eels"), normalize_signal_type("")
    ('EDX', 'EELS', None)
    """
    return canonical_signal_type(value)


# -- chunking and lazy file-backed arrays ---------------------------------------


def chunk_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """Canonical chunks of a variable: (y, x) tiles, whole energy/element axes, one frame.

    >>> chunk_shape("spectrum", (1000, 800, 2048))
    (64, 64, 2048)
    """
    chunks = []
    for dim, size in zip(DIMS[name], shape):
        if dim in ("y", "x"):
            tile = SPECTRUM_CHUNK_YX if name == SPECTRUM else IMAGE_CHUNK_YX
            chunks.append(max(1, min(int(size), tile)))
        elif dim == "frame":
            chunks.append(1)
        else:  # energy, element, mode: whole axis in every chunk
            chunks.append(max(1, int(size)))
    return tuple(chunks)


class FileArray:
    """An array in a file, read slice by slice when Dask asks for a chunk.

    It holds the file's path, not an open handle, so the graph pickles to
    worker processes and no file stays open between reads. Subclasses
    implement :meth:`_read`. ``whole_only`` marks arrays that cannot be read
    in part (a compressed member): they become a single chunk.
    """

    whole_only = False

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any) -> None:
        self.path = str(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._read(key)

    def _read(self, key: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _identity(self) -> tuple:
        """What, besides the file, names this array (for a stable Dask key)."""
        return ()

    def to_dask(self, chunks: Sequence[int]) -> da.Array:
        """A Dask array over this file array with the given chunk shape."""
        if self.whole_only:
            chunks = self.shape
        stat = os.stat(self.path)
        token = tokenize(
            type(self).__name__, self.path, stat.st_mtime_ns, stat.st_size, self._identity(),
            self.shape, str(self.dtype), tuple(chunks),
        )  # fmt: skip
        return da.from_array(
            self,
            chunks=tuple(chunks),
            name=f"emfuse-read-{token}",
            lock=False,
            asarray=True,
            fancy=False,
            meta=np.empty((0,) * self.ndim, dtype=self.dtype),
        )


class RawArray(FileArray):
    """Uncompressed array bytes at a known offset in a file (a stored .npy member, a TIFF strip)."""

    def __init__(
        self, path: str | Path, offset: int, shape: Sequence[int], dtype: Any, order: str = "C"
    ) -> None:
        self.file_dtype = np.dtype(dtype)  # may be big-endian; chunks come out native
        super().__init__(path, shape, self.file_dtype.newbyteorder("="))
        self.offset = int(offset)
        self.order = order

    def _identity(self) -> tuple:
        return (self.offset, self.order, str(self.file_dtype))

    def _read(self, key: Any) -> np.ndarray:
        if 0 in self.shape:
            return np.empty(self.shape, self.dtype)[key]
        mm = np.memmap(
            self.path, dtype=self.file_dtype, mode="r", offset=self.offset, shape=self.shape,
            order=self.order,
        )  # fmt: skip
        return np.array(mm[key], dtype=self.dtype)  # a copy, so the map closes with ``mm``


def lazy(array: Any, name: str, perm: Sequence[int] | None = None) -> da.Array:
    """A Dask array for ``array`` (Dask, NumPy or :class:`FileArray`) in canonical chunks.

    ``perm`` gives the stored axis order as a permutation of the canonical one
    (``(1, 2, 0)`` for a spectrum stored as (energy, y, x)); chunks are chosen
    in the stored order and the result is transposed to the canonical order.
    """
    shape = array.shape if perm is None else tuple(array.shape[i] for i in perm)
    canonical = chunk_shape(name, shape)
    if isinstance(array, da.Array):  # e.g. from RosettaSciIO, in the reader's own chunks
        return (array if perm is None else array.transpose(perm)).rechunk(canonical)
    stored = canonical
    if perm is not None:
        stored = [0] * len(perm)
        for axis, source in enumerate(perm):
            stored[source] = canonical[axis]
    if isinstance(array, FileArray):
        out = array.to_dask(stored)  # may be coarser: a compressed member is one chunk
    else:
        out = da.from_array(np.asarray(array), chunks=tuple(stored), name=False)
    return (out if perm is None else out.transpose(perm)).rechunk(canonical)


# -- the canonical Dataset -------------------------------------------------------

_NEEDS = {
    HAADF: "a 2D image (y, x)",
    SPECTRUM: "a spectrum image (y, x, energy)",
    MAPS: "element maps (element, y, x)",
    MOVIE: "a movie (frame, y, x)",
}


def check_ndim(path: str | Path, name: str, shape: Sequence[int], what: str | None = None) -> None:
    """Raise when an array has the wrong number of dimensions for its role."""
    want = len(DIMS[name])
    if len(shape) != want:
        raise fail(
            path,
            f"{what or name} has shape {shape_str(shape)} ({len(shape)} dimension(s)); "
            f"{_NEEDS[name]} is needed for {name!r}",
            f"Save {name!r} with {want} dimensions {DIMS[name]}",
        )
    if 0 in tuple(shape):
        raise fail(
            path,
            f"{what or name} is empty (shape {shape_str(shape)})",
            "Check the acquisition was saved completely; every axis needs at least one entry",
        )


def element_coords(path: str | Path, names: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Validated element symbols (object array, written as UTF-8 strings) and atomic numbers."""
    symbols = []
    for raw in names:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        name = name.strip()
        if not is_symbol(name):
            raise fail(
                path,
                f"{name!r} is not a known element symbol",
                "Name element maps by chemical symbol H..U; case matters ('Co', not 'CO')",
            )
        symbols.append(name)
    duplicates = sorted({s for s in symbols if symbols.count(s) > 1})
    if duplicates:
        raise fail(path, f"element(s) {duplicates} appear more than once", "Give each map once")
    z = np.array([atomic_number(s) for s in symbols], dtype=np.int64)
    return np.array(symbols, dtype=object), z


def _grid(path: str | Path, arrays: Mapping[str, Any]) -> tuple[int, int]:
    """The common (y, x) shape of every variable; raise naming the first mismatch."""
    first_name, first_yx = None, None
    for name, array in arrays.items():
        yx = tuple(array.shape[-2:]) if name != SPECTRUM else tuple(array.shape[:2])
        if first_yx is None:
            first_name, first_yx = name, yx
        elif yx != first_yx:
            raise fail(
                path,
                f"{name!r} has (y, x) shape {shape_str(yx)} but {first_name!r} has "
                f"{shape_str(first_yx)}",
                "All images, maps and spectrum images of one dataset must share the pixel grid; "
                "crop or bin them to the same shape",
            )
    assert first_yx is not None
    return first_yx


def _axis_coord(dim: str, size: int, step_nm: float | None, origin_nm: float | None = None) -> xr.Variable:
    """offset + index * step in nm, as the file calibrates the axis; pixel index when it does not."""
    if step_nm is None or not np.isfinite(step_nm) or step_nm <= 0:
        return xr.Variable(dim, np.arange(size, dtype=np.float64), {"units": "px"})
    origin = float(origin_nm) if origin_nm is not None and np.isfinite(origin_nm) else 0.0
    values = origin + np.arange(size, dtype=np.float64) * float(step_nm)
    return xr.Variable(dim, values, {"units": "nm"})


def canonical_dataset(
    path: str | Path,
    *,
    haadf: Any = None,
    spectrum: Any = None,
    energy: Any = None,
    maps: Any = None,
    elements: Sequence[str] | None = None,
    movie: Any = None,
    pixel_nm: PixelSize = (None, None),
    origin_nm: PixelSize = (None, None),
    frame_time: Any = None,
    signal_type: str | None = None,
    unmapped: Sequence[str] = (),
) -> xr.Dataset:
    """Check the structure of the arrays found in a file and build the canonical Dataset.

    Arrays may be NumPy, Dask or :class:`FileArray`; the result is always
    Dask-backed. Only shapes are checked, never values (that would load the data).

    Parameters
    ----------
    path
        The source file, named in error messages.
    haadf, spectrum, maps, movie
        Arrays already in canonical axis order: (y, x), (y, x, energy),
        (element, y, x), (frame, y, x).
    energy
        1D energy of every spectrum channel, in eV.
    elements
        Element symbols of ``maps``, in order.
    pixel_nm
        (dy, dx) in nm; None for an uncalibrated axis (coordinate in pixels).
    origin_nm
        (y0, x0) in nm: the coordinate of the first pixel (the file's axis offset);
        None for 0.
    frame_time
        Optional time of every frame, in s.
    signal_type
        ``"EDX"`` or ``"EELS"``, recorded as the ``signal_type`` attribute.
    unmapped
        Descriptions of what the file held but was not ingested (attribute
        ``unmapped``); the caller warns about them.

    Examples
    --------
    >>> import numpy as np
    >>> ds = canonical_dataset("m.npz", maps=np.ones((2, 3, 3)), elements=["Sc", "O"])
    >>> ds.z.values.tolist()
    [21, 8]
    """
    arrays = {
        name: array
        for name, array in ((HAADF, haadf), (SPECTRUM, spectrum), (MAPS, maps), (MOVIE, movie))
        if array is not None
    }
    if not arrays:
        raise fail(
            path,
            "found no image, spectrum image, element maps or movie",
            "Name the arrays as emfuse reads them: haadf (y, x) for an image, movie (frame, y, x) for "
            "frames, spectrum (y, x, energy) with energy in eV, maps (element, y, x) with elements, or one "
            "(y, x) array per element symbol; e.g. np.savez(path, haadf=image). The user guide lists the "
            "layouts (Your own file)",
        )
    for name, array in arrays.items():
        check_ndim(path, name, array.shape)
    ny, nx = _grid(path, arrays)
    coords: dict[str, Any] = {
        "y": _axis_coord("y", ny, pixel_nm[0], origin_nm[0]),
        "x": _axis_coord("x", nx, pixel_nm[1], origin_nm[1]),
    }
    if spectrum is not None:
        coords["energy"] = _energy_coord(path, energy, spectrum.shape[2])
    if maps is not None:
        coords.update(_element_coords(path, elements, maps.shape[0]))
    if movie is not None:
        coords.update(_frame_coords(path, frame_time, movie.shape[0]))
    data_vars = {name: (DIMS[name], lazy(array, name)) for name, array in arrays.items()}
    ds = xr.Dataset(data_vars, coords=coords)
    if spectrum is not None:
        ds[SPECTRUM].attrs["units"] = "counts"
    if signal_type:
        ds.attrs[ATTR_SIGNAL] = signal_type
    if unmapped:
        ds.attrs[ATTR_UNMAPPED] = _counted(unmapped)
    return ds


def _energy_coord(path: str | Path, energy: Any, size: int) -> xr.Variable:
    if energy is None:
        raise fail(
            path,
            "the spectrum image has no energy axis",
            "Store the energy of every channel (eV) beside it, e.g. an 'energy' array",
        )
    energy = np.asarray(energy, dtype=np.float64)
    if energy.shape != (size,):
        raise fail(
            path,
            f"energy has shape {shape_str(energy.shape)} but the spectrum image has {size} "
            "channels",
            "Store one energy value (eV) per channel",
        )
    return xr.Variable("energy", energy, {"units": "eV"})


def _element_coords(path: str | Path, elements: Sequence[str] | None, n_maps: int) -> dict:
    if elements is None:
        raise fail(
            path,
            f"the {n_maps} element maps have no element names",
            "Pass elements=[...] in map order (emfuse ingest --elements Sc Dy O), "
            "or store an 'elements' array beside the maps",
        )
    symbols, z = element_coords(path, elements)
    if len(symbols) != n_maps:
        raise fail(
            path,
            f"{len(symbols)} element names {list(symbols)} for {n_maps} element maps",
            "Give exactly one element symbol per map, in map order",
        )
    return {"element": ("element", symbols), "z": ("element", z)}


def _frame_coords(path: str | Path, frame_time: Any, n_frames: int) -> dict:
    coords: dict[str, Any] = {"frame": ("frame", np.arange(n_frames, dtype=np.int64))}
    if frame_time is not None:
        frame_time = np.asarray(frame_time, dtype=np.float64)
        if frame_time.shape == (n_frames,):
            coords["time"] = xr.Variable("frame", frame_time, {"units": "s"})
    return coords


# -- files that hold named arrays (npz, HDF5) -------------------------------------

_ROLE_KEYS = {"haadf": HAADF, "spectrum": SPECTRUM, "maps": MAPS, "chem": MAPS, "movie": MOVIE}
_AUX_KEYS = {"energy", "elements", "z", "pixel_size_nm", "signal_type"}
_SYMBOL_LIKE = re.compile(r"[A-Z][a-z]?")  # looks like a symbol: a typo must not pass silently


def map_named_arrays(
    path: str | Path,
    arrays: Mapping[str, Any],
    *,
    elements: Sequence[str] | None = None,
    signal_type: str | None = None,
    file_elements: Sequence[str] | None = None,
    pixel_nm: PixelSize = (None, None),
    energy_scale: float = 1.0,
) -> xr.Dataset:
    """Map a file's named arrays (npz members, HDF5 datasets) to the canonical Dataset.

    Names (case-insensitive): ``haadf``; ``spectrum`` with ``energy`` (eV,
    times ``energy_scale``); ``maps`` or ``chem`` (element, y, x) named by
    ``file_elements``, an ``elements`` array, or the ``elements`` argument;
    ``movie``; or one 2D array per element named by its symbol. An optional
    ``z`` array must agree with the element symbols. Scalars are ignored.

    Examples
    --------
    >>> import numpy as np
    >>> ds = map_named_arrays("t.npz", {"HAADF": np.ones((2, 2)), "O": np.ones((2, 2))})
    >>> ds.element.values.tolist()
    ['O']
    """
    roles: dict[str, tuple[str, Any]] = {}
    per_element: dict[str, Any] = {}
    unmapped: list[str] = []
    for key, array in arrays.items():
        low = key.lower()
        if low in _ROLE_KEYS:
            role = _ROLE_KEYS[low]
            if role in roles:
                raise fail(
                    path,
                    f"both {roles[role][0]!r} and {key!r} look like {role!r}",
                    "Keep only one of them",
                )
            roles[role] = (key, array)
        elif low in _AUX_KEYS or len(array.shape) == 0:
            continue  # read below, or a scalar parameter
        elif is_symbol(key):
            per_element[key] = array
        elif _SYMBOL_LIKE.fullmatch(key):
            raise fail(
                path,
                f"array {key!r} is not a known element symbol",
                "Rename it to a chemical symbol H..U (case matters: 'Co', not 'CO') or remove it",
            )
        else:
            unmapped.append(f"{key!r} {shape_str(array.shape)}: not a canonical name")

    found = {role: array for role, (_, array) in roles.items()}
    for role, (key, array) in roles.items():
        check_ndim(path, role, array.shape, what=repr(key))
    if file_elements is None and "elements" in _lower(arrays):
        file_elements = [_text(v) for v in np.asarray(_lower(arrays)["elements"]).ravel()]

    names: Sequence[str] | None = None
    if MAPS in found:
        if per_element:
            unmapped.extend(f"{k!r}: per-element array beside 'maps'" for k in per_element)
        found[MAPS], names = _select_maps(path, found[MAPS], file_elements, elements)
        _check_z(path, _lower(arrays).get("z"), file_elements)
    elif per_element:
        found[MAPS], names = _stack_element_arrays(path, per_element, elements)

    energy = None
    if SPECTRUM in found:
        found[SPECTRUM], energy = _spectrum_energy_last(path, found[SPECTRUM], arrays)
        energy = energy * energy_scale
    warn_unmapped(path, unmapped)
    return canonical_dataset(
        path,
        haadf=found.get(HAADF),
        spectrum=found.get(SPECTRUM),
        energy=energy,
        maps=found.get(MAPS),
        elements=names,
        movie=found.get(MOVIE),
        pixel_nm=pixel_nm,
        signal_type=signal_type,
        unmapped=unmapped,
    )


def _lower(arrays: Mapping[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in arrays.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _select_maps(
    path: str | Path, maps: Any, file_elements: Sequence[str] | None, wanted: Sequence[str] | None
) -> tuple[Any, Sequence[str] | None]:
    """Name the maps; with names in the file, ``wanted`` selects and orders a subset."""
    if file_elements is None or wanted is None:
        return maps, (file_elements if file_elements is not None else wanted)
    file_elements = [str(e).strip() for e in file_elements]
    if len(file_elements) != maps.shape[0]:
        return maps, file_elements  # canonical_dataset reports the count mismatch
    missing = [e for e in wanted if e not in file_elements]
    if missing:
        raise fail(
            path,
            f"element(s) {missing} asked for, but the file has maps of {file_elements}",
            "Choose elements among those in the file",
        )
    index = [file_elements.index(e) for e in wanted]
    return lazy(maps, MAPS)[index], list(wanted)


def _stack_element_arrays(
    path: str | Path, per_element: Mapping[str, Any], wanted: Sequence[str] | None
) -> tuple[da.Array, list[str]]:
    """One 2D array per element -> a lazy (element, y, x) stack."""
    names = list(wanted) if wanted is not None else list(per_element)
    missing = [e for e in names if e not in per_element]
    if missing:
        element_coords(path, missing)  # an unknown symbol gets its own message
        raise fail(
            path,
            f"no map for element(s) {missing}; the file has maps of {list(per_element)}",
            "Choose elements among those in the file",
        )
    layers = []
    for name in names:
        check_ndim(path, HAADF, per_element[name].shape, what=f"element map {name!r}")
        layers.append(lazy(per_element[name], HAADF))
    shapes = {tuple(layer.shape) for layer in layers}
    if len(shapes) > 1:
        detail = ", ".join(f"{n} {shape_str(per_element[n].shape)}" for n in names)
        raise fail(path, f"element maps differ in shape: {detail}", "Give all maps one shape")
    return da.stack(layers), names


def _check_z(path: str | Path, z: Any, names: Sequence[str] | None) -> None:
    """A ``z`` array stored beside the maps must agree with the periodic table."""
    if z is None or names is None:
        return
    z = np.asarray(z).ravel().tolist()
    expected = []
    for name in names:
        try:
            expected.append(atomic_number(str(name).strip()))
        except KeyError:
            return  # canonical_dataset reports the unknown symbol
    if len(z) == len(expected) and z != expected:
        raise fail(
            path,
            f"the stored z {z} disagree with the atomic numbers {expected} of {list(names)}",
            "Fix the 'z' array or the element names",
        )


def _spectrum_energy_last(
    path: str | Path, spectrum: Any, arrays: Mapping[str, Any]
) -> tuple[da.Array, np.ndarray]:
    """Put the energy axis last (a file may store (energy, y, x)); return the energy array."""
    check_ndim(path, SPECTRUM, spectrum.shape)
    energy = _lower(arrays).get("energy")
    if energy is None:
        raise fail(
            path,
            f"the spectrum image {shape_str(spectrum.shape)} has no 'energy' array",
            "Store 'energy' (eV, one value per channel) beside 'spectrum'",
        )
    energy = np.asarray(energy, dtype=np.float64).ravel()
    n = energy.size
    if spectrum.shape[2] == n:
        return lazy(spectrum, SPECTRUM), energy
    if spectrum.shape[0] == n:  # stored energy-first
        return lazy(spectrum, SPECTRUM, perm=(1, 2, 0)), energy
    raise fail(
        path,
        f"'energy' has {n} values but no axis of the spectrum image "
        f"{shape_str(spectrum.shape)} has that length",
        "Store one energy value (eV) per channel",
    )
