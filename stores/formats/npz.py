"""NumPy ``.npz`` archives in the three emfuse layouts.

(a) ``haadf`` (y, x) with ``maps`` (element, y, x) (also called ``chem``), element
    names from an ``elements`` array in the file or the ``elements`` argument,
    and optionally ``z``;
(b) ``HAADF`` plus one 2D array per element named by its symbol (the published
    tutorial layout);
(c) ``spectrum`` (y, x, energy) with ``energy`` (eV) and optionally ``haadf``.

An optional scalar or (dy, dx) ``pixel_size_nm`` calibrates y and x.

Members stored uncompressed (``np.savez``) are memory-mapped chunk by chunk,
so an archive larger than memory streams; compressed members
(``np.savez_compressed``) cannot be read in part and become one chunk each.
Pickled (object) members are refused: archives are always opened with
``allow_pickle=False``.

Examples
--------
>>> ds = read("PTO_Trilayer_dataset.npz")  # doctest: +SKIP
>>> ds.maps.element.values.tolist()  # doctest: +SKIP
['Sc', 'Dy', 'O']
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import IngestError
from . import FileArray, RawArray, fail, map_named_arrays, shape_str

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra length
_BAD_ARCHIVE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error)


class _CompressedMember(FileArray):
    """A deflated .npy member: decompressed as a whole when Dask needs it."""

    whole_only = True

    def __init__(self, path: str | Path, key: str, shape: Sequence[int], dtype: Any) -> None:
        super().__init__(path, shape, dtype)
        self.key = key

    def _identity(self) -> tuple:
        return (self.key,)

    def _read(self, index: Any) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as npz:
            return npz[self.key][index]


def read(
    path: str | Path,
    *,
    elements: Sequence[str] | None = None,
    signal_type: str | None = None,
) -> xr.Dataset:
    """Read an ``.npz`` archive lazily into the canonical Dataset.

    Raises
    ------
    IngestError
        for an archive that is not a valid zip (truncated, corrupt), a pickled
        member, or a layout that does not fit the canonical one.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise fail(
                path,
                "this is a single .npy array, not an .npz archive of named arrays",
                "Name it: np.savez(path, haadf=image), or save it as .npy (read as an image or a movie)",
            )
        with loaded as npz:
            arrays = {key: _member(path, npz, key) for key in npz.files}
    except IngestError:
        raise
    except _BAD_ARCHIVE as exc:
        raise fail(
            path,
            f"not a readable .npz archive ({type(exc).__name__}: {exc}); the file is truncated "
            "or corrupt",
            "Copy or export the file again (np.savez)",
        ) from exc
    pixel = arrays.pop("pixel_size_nm", None)
    return map_named_arrays(
        path, arrays, elements=elements, signal_type=signal_type, pixel_nm=_pixel_nm(path, pixel)
    )


def _member(path: Path, npz: Any, key: str) -> Any:
    """A small member as a NumPy array; a large one as a lazy :class:`FileArray`."""
    name = key + ".npy"
    info = npz.zip.getinfo(name)
    with npz.zip.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # rare header versions: small enough to load, numpy knows them
            try:
                return npz[key]
            except ValueError as exc:  # numpy refused an object array (allow_pickle=False)
                if "allow_pickle" in str(exc):
                    raise _pickled(path, key) from exc
                raise
        header_len = fh.tell()
    if dtype.hasobject:
        raise _pickled(path, key)
    if len(shape) <= 1:  # names, energies, scalars: tiny, and needed to decide the layout
        return npz[key]
    if info.compress_type != zipfile.ZIP_STORED:
        return _CompressedMember(path, key, shape, dtype)
    offset = _data_offset(path, info) + header_len
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise fail(path, f"member {key!r} ends past the end of the file", "Copy the file again")
    return RawArray(path, offset, shape, dtype, order="F" if fortran else "C")


def _pickled(path: Path, key: str) -> IngestError:
    return fail(
        path,
        f"member {key!r} holds Python objects (pickled), which emfuse does not load",
        "Save plain numeric or string arrays (np.savez without object arrays)",
    )


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (whose extra field
    may differ from the central directory's)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _pixel_nm(path: Path, value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    value = np.asarray(value, dtype=np.float64).ravel()
    if value.size == 1:
        return (float(value[0]), float(value[0]))
    if value.size == 2:
        return (float(value[0]), float(value[1]))
    raise fail(
        path,
        f"pixel_size_nm has shape {shape_str(value.shape)}",
        "Store one pixel size or (dy, dx) in nm",
    )
