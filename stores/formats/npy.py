"""NumPy ``.npy`` files: one array, as ``np.save`` writes it from a notebook.

A 2D array becomes the image ``haadf`` (y, x), a 3D array the ``movie`` (frame, y, x), as a TIFF
image or stack does; the file has no pixel size, so ``y`` and ``x`` count pixels. A spectrum image
or maps need names (an ``.npz`` archive: ``np.savez(path, spectrum=..., energy=...)``).

The array is read lazily, chunk by chunk, from the file's bytes (never with pickle).

Examples
--------
>>> ds = read("frame.npy")  # doctest: +SKIP
>>> ds.haadf.dims  # doctest: +SKIP
('y', 'x')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..layout import HAADF, MOVIE
from . import RawArray, canonical_dataset, fail, shape_str

_NAMED = "np.savez(path, spectrum=..., energy=...) or np.savez(path, haadf=..., maps=..., elements=...)"


def read(
    path: str | Path,
    *,
    elements: Sequence[str] | None = None,
    signal_type: str | None = None,
) -> xr.Dataset:
    """Read a ``.npy`` array lazily: 2D -> ``haadf`` (y, x), 3D -> ``movie`` (frame, y, x).

    ``elements`` and ``signal_type`` need named arrays and are refused here.

    Raises
    ------
    IngestError
        for a file that is not a readable ``.npy`` (truncated, corrupt), Python objects (pickled),
        an array of other than 2 or 3 dimensions, or ``elements``/``signal_type`` given.
    """
    path = Path(path)
    if elements or signal_type:
        raise fail(path, "a single .npy array has no element or spectrum names",
                   f"Save the spectrum image or maps with their names: {_NAMED}")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise fail(path, f"not a readable .npy file ({type(exc).__name__}: {exc}); the file is truncated "
                   "or corrupt", "Copy or save the array again (np.save)") from exc
    if dtype.hasobject:
        raise fail(path, "it holds Python objects (pickled), which emfuse does not load",
                   "Save a plain numeric array (np.save)")
    if len(shape) not in (2, 3):
        raise fail(path, f"the array is {shape_str(shape)}: a .npy file is read as an image (y, x) or a "
                   "movie (frame, y, x)", f"Save other data with names: {_NAMED}")
    if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
        raise fail(path, "the array ends past the end of the file (truncated)", "Copy or save the array again")
    data = RawArray(path, offset, shape, dtype, order="F" if fortran else "C")
    return canonical_dataset(path, **{HAADF if len(shape) == 2 else MOVIE: data})
