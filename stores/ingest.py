"""Ingest facility files into canonical Zarr v3 stores.

:func:`read` turns any supported file into the canonical lazy
:class:`xarray.Dataset` (variables ``haadf``, ``spectrum``, ``maps``, ``movie``;
every dimension with an index coordinate; provenance attributes), and
:func:`ingest` writes it as a store, chunk by chunk, so a file larger than
memory goes through.

Examples
--------
>>> from emfuse.stores.ingest import ingest, read
>>> ds = read("test_TEM.bcf")  # doctest: +SKIP
>>> ds.spectrum.dims  # doctest: +SKIP
('y', 'x', 'energy')
>>> ingest("PTO_Trilayer_dataset.npz", "pto.zarr")  # doctest: +SKIP
PosixPath('pto.zarr')
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import xarray as xr

from ..errors import InputFileNotFound, InputNotReadable
from .errors import IngestError, OutputNotWritable, StoreError, disk_full
from .formats import (
    ATTR_UNMAPPED,
    IngestWarning,
    chunk_shape,
    element_coords,
    fail,
    normalize_signal_type,
)
from .formats.rsciio import PLUGINS as _RSCIIO_SUFFIXES
from .layout import (
    ARBITRARY_UNITS,
    ATTR_ELEMENTS,
    ATTR_INGEST_NOTES,
    ATTR_INGEST_OPTIONS,
    ATTR_METADATA_UNMAPPED,
    DIMS,
    HAADF,
    MOVIE,
)
from .warn import add_warnings, make_warning
from .zarrio import check_writable, is_complete, provenance, remove_store, write_dataset

__all__ = [
    "SUPPORTED_SUFFIXES",
    "IngestError",
    "IngestWarning",
    "chunk_canonical",
    "describe",
    "ingest",
    "ingest_options",
    "read",
    "read_image",
]

# suffix -> module in emfuse.stores.formats
_READERS = {
    ".npz": "npz",
    ".npy": "npy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".tif": "tiff",
    ".tiff": "tiff",
    **{suffix: "rsciio" for suffix in _RSCIIO_SUFFIXES},
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_READERS))


def read(
    path: str | Path,
    *,
    elements: Sequence[str] | str | None = None,
    signal_type: str | None = None,
    signal: str | int | None = None,
    **options: Any,
) -> xr.Dataset:
    """Read a facility file into the canonical lazy Dataset.

    Parameters
    ----------
    path
        A file with one of :data:`SUPPORTED_SUFFIXES` (case-insensitive).
    elements
        Element symbols: the names of unnamed maps (npz ``maps``), or the maps
        to keep, in order, when the file names them; with a spectrum image, the
        elements without a map are integrated from it by ``emfuse fuse``. Kept
        as the attribute ``elements`` (the elements ``fuse`` maps by default).
        ``"Sc,Dy,O"`` also works.
    signal_type
        ``"EDX"`` or ``"EELS"``: recorded on the Dataset, and which spectrum
        image to take when a file holds several.
    signal
        Microscope files (RosettaSciIO): which spectrum image to take, by its
        index in RosettaSciIO's list of the file's signals or by its title.
        Needed when a file holds several; the error then lists them.
    **options
        Passed to the format's reader (HDF5: ``group=``).

    Returns
    -------
    xarray.Dataset
        Dask-backed; nothing but metadata has been read (and the file hashed
        for the provenance attributes).

    Raises
    ------
    InputFileNotFound
        (a ``FileNotFoundError``) if ``path`` does not exist.
    InputNotReadable
        (a ``PermissionError``) if ``path`` cannot be read.
    IngestError
        for an unsupported suffix, a truncated or corrupt file, or a layout
        that does not fit the canonical one; the message says how to fix it.

    Examples
    --------
    >>> ds = read("Test SI 16x16 215 kx.emd")  # doctest: +SKIP
    >>> ds.maps.element.values.tolist()  # doctest: +SKIP
    ['C', 'Ca', 'O', 'Cu']
    """
    path = Path(path)
    module = _reader(path)
    wanted = _elements(path, elements)
    kind = _signal_type(path, signal_type)
    if signal is not None:
        options = {**options, "signal": signal}
    ds = _read_guarded(module, path, wanted, kind, options)
    ds.attrs.update(provenance(path))
    # what was asked, so that a later ingest of the same bytes with other options is not reused
    ds.attrs[ATTR_INGEST_OPTIONS] = ingest_options(elements=wanted, signal=signal, signal_type=kind)
    if wanted:
        ds.attrs[ATTR_ELEMENTS] = list(wanted)
    return with_value_units(ds)



def read_image(path: str | Path, *, signal: str | int | None = None) -> xr.Dataset:
    """Read the one image (or image stack) of a file: ``haadf`` (y, x) or ``movie`` (frame, y, x).

    What ``emfuse ingest-modes`` reads each BF, DF, HRTEM and flat-reference file with. Microscope
    files (RosettaSciIO) may hold several images: ``signal`` picks one (its index in
    :func:`describe`'s list, or its title); spectrum images and spectra are left out. Other
    formats (.tif, .npz, .h5) must hold exactly one image or stack.

    Raises
    ------
    InputFileNotFound, InputNotReadable, IngestError
        as :func:`read`, and when the file holds no image, or several and ``signal`` names none.

    Examples
    --------
    >>> ds = read_image("128x128_TEM_acquire-sum1.emi")  # doctest: +SKIP
    >>> ds.haadf.shape, ds.attrs["detector"]  # doctest: +SKIP
    ((128, 128), 'BM-Ceta')
    """
    path = Path(path)
    module = _reader(path)
    if hasattr(module, "read_image"):
        options = {} if signal is None else {"signal": signal}
        ds = _read_guarded(module, path, None, None, options, reader=module.read_image)
    elif signal is not None:
        raise fail(path, f"a {path.suffix} file holds one image, so --signal does not apply",
                   "Leave --signal out for this file")
    else:
        ds = _read_guarded(module, path, None, None, {})
        images = [name for name in (HAADF, MOVIE) if name in ds]
        if len(images) != 1 or len(ds.data_vars) != 1:
            raise fail(path, f"it holds {', '.join(ds.data_vars) or 'nothing'}, not one image or image stack",
                       "Save the image alone (.tif, or .npz with one array 'haadf')")
    ds.attrs.update(provenance(path))
    ds.attrs[ATTR_INGEST_OPTIONS] = ingest_options(signal=signal)
    return with_value_units(ds)



def value_units(var: xr.DataArray) -> str:
    """What the values of an image, spectrum image, maps or movie are, from their dtype.

    Integers are detector counts (``"counts"``); floating-point values are not known to be
    counts (vendor maps scaled to [0, 1], background-subtracted or gain-normalised data), so
    they are ``"a.u."`` unless the reader named other units than counts. Decided from the
    dtype alone: nothing is loaded.

    Examples
    --------
    >>> import numpy as np
    >>> value_units(xr.DataArray(np.zeros(3, np.uint16))), value_units(xr.DataArray(np.zeros(3)))
    ('counts', 'a.u.')
    """
    named = var.attrs.get("units")
    if var.dtype.kind in "iu":
        return "counts"
    return named if named and named != "counts" else ARBITRARY_UNITS


def with_value_units(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the ``units`` of every canonical data variable set by :func:`value_units`."""
    for name, var in ds.data_vars.items():
        if name in DIMS and var.dims == DIMS[name]:
            var.attrs["units"] = value_units(var)
    return ds


def describe(path: str | Path) -> list[str]:
    """What a file holds, one line each: for microscope files every signal RosettaSciIO
    reads (with the index ``--signal`` takes), else the canonical variables it maps to.

    >>> print("\\n".join(describe("test_TEM.bcf")))  # doctest: +SKIP
    test_TEM.bcf: 2 signal(s) as RosettaSciIO reads them
      [0] image 'HAADF' (64, 64), pixel 0.771 nm
      [1] spectrum image 'EDX' (64, 64, 2048) EDX, -475.45 to 19997 eV, pixel 0.771 nm
    elements listed in the file's metadata: Cu O Pd Ti
    """
    path = Path(path)
    module = _reader(path)
    if hasattr(module, "describe"):
        return module.describe(path)
    ds = _read_guarded(module, path, None, None, {})
    lines = [f"{path.name}: maps to"]
    for name, var in ds.data_vars.items():
        lines.append(f"  {name} {tuple(var.dims)} {tuple(int(n) for n in var.shape)} {var.dtype}")
    if "element" in ds.coords:
        lines.append(f"elements: {' '.join(str(e) for e in ds.element.values)}")
    return lines


def ingest_options(
    *, elements: Sequence[str] | None = None, signal: str | int | None = None,
    signal_type: str | None = None,
) -> dict[str, Any]:
    """The options of an ingest as its store records them (attribute ``ingest_options``).

    >>> ingest_options(elements=["Fe", "O"], signal=3)
    {'elements': ['Fe', 'O'], 'signal': '3', 'signal_type': None}
    """
    return {"elements": list(elements) if elements else None,
            "signal": None if signal is None else str(signal), "signal_type": signal_type}


def _read_guarded(
    module: Any, path: Path, elements: list[str] | None, signal_type: str | None, options: dict,
    reader: Any = None,
) -> xr.Dataset:
    """``module.read`` with whatever a damaged file makes a reader library raise (struct.error,
    KeyError, RuntimeError from HDF5, a tokenizer error from a mangled .npy header, ...) turned
    into an :class:`IngestError` naming the file, so one bad file is one clear line in a batch.
    The readers' own IngestErrors pass unchanged. ``reader``: another function of the module
    (``read_image``), called with ``options`` only."""
    shown = sorted(options)
    if reader is None:
        reader, options = module.read, {"elements": elements, "signal_type": signal_type, **options}
    try:
        inspect.signature(reader).bind(path, **options)
    except TypeError:
        raise fail(
            path,
            f"the option(s) {shown} do not apply to {path.suffix} files",
            "Leave them out (HDF5 files take group=)",
        ) from None
    try:
        return reader(path, **options)
    except (IngestError, MemoryError):
        raise
    except FileNotFoundError as exc:  # removed while it was read
        raise InputFileNotFound(
            f"cannot ingest {path}: the file vanished while it was read ({exc.strerror or exc}). "
            "Check the path (and that the copy from the instrument finished)."
        ) from exc
    except PermissionError as exc:
        raise InputNotReadable(
            f"cannot ingest {path}: the file is not readable ({exc.strerror or exc}). "
            "Fix its permissions or copy it."
        ) from exc
    except Exception as exc:
        raise fail(
            path,
            f"its {path.suffix} reader failed ({type(exc).__name__}: {exc}); the file is truncated "
            "or corrupt",
            "Copy or export the file again; if a fresh copy fails the same way, report it with the "
            "file attached",
        ) from exc


def _remove_failed(out: Path, settle_s: float = 1.0) -> None:
    """Remove a store whose write failed, and again if a write still in flight recreates it.

    Zarr writes a chunk's pieces concurrently on its own event loop; when one fails, the
    others may land a moment later, after the first removal.
    """
    start = time.monotonic()
    while time.monotonic() - start < 10 * settle_s:
        try:
            remove_store(out)
        except OSError:  # a file appeared while the tree was being removed: try again
            pass
        if time.monotonic() - start >= settle_s and not out.exists():
            return
        time.sleep(0.1)


def ingest(
    path: str | Path,
    out: str | Path,
    *,
    elements: Sequence[str] | str | None = None,
    signal_type: str | None = None,
    signal: str | int | None = None,
    overwrite: bool = False,
) -> Path:
    """Read a facility file and write it as a canonical Zarr v3 store.

    Spectrum images are chunked in (y, x) tiles of ``SPECTRUM_CHUNK_YX`` with
    the whole energy axis in each chunk; images and maps in tiles of
    ``IMAGE_CHUNK_YX``; movies one frame per chunk. The data stream through
    Dask chunk by chunk. The store is marked ``complete`` only after its last
    chunk; if reading fails half-way, the partial store is removed.

    Parameters are those of :func:`read`.

    Raises
    ------
    OutputNotWritable
        if ``out`` cannot be created (checked before anything is read).
    StoreError
        if ``out`` exists and ``overwrite`` is False.
    InputFileNotFound, InputNotReadable, IngestError
        as :func:`read`, or when the data turn out unreadable while writing.
    DiskFull
        (an ``OSError``) when the disk holding ``out`` runs full; the partial store is removed.

    Examples
    --------
    >>> ingest("Co3O4_Mn3O4.h5", "co3o4.zarr", overwrite=True)  # doctest: +SKIP
    PosixPath('co3o4.zarr')
    """
    out = check_writable(out)
    if out.exists() and not overwrite:
        raise StoreError(
            f"{out} already exists; pass --overwrite to replace it or choose another --out."
        )
    ds = chunk_canonical(read(path, elements=elements, signal_type=signal_type, signal=signal))
    try:
        # Our own pool: leaving the ``with`` waits for chunk writes still in flight when a
        # chunk fails, so none of them recreates the store after it is removed below. Threads
        # even where a cluster's client is Dask's default (a batch): the readers' lazy arrays
        # hold open files that cannot be pickled to workers, and the file is here anyway.
        with (ThreadPoolExecutor(os.cpu_count() or 1) as pool,
              dask.config.set(pool=pool, scheduler="threads")):
            written = write_dataset(ds, out, overwrite=overwrite)
        _store_warnings(written, Path(path), ds)
        return written
    except (StoreError, OutputNotWritable, MemoryError):
        raise
    except Exception as exc:  # a reader failing on a chunk: corrupt data past the headers
        if out.exists() and not is_complete(out):
            _remove_failed(out)
        full = disk_full(exc, out, resumable=False)
        if full is not None:  # the output's disk, not the file, is the problem
            raise full from exc
        if isinstance(exc, IngestError):  # a reader's own message (names the file and the fix)
            raise
        raise fail(
            path,
            f"reading its data failed while writing {out} ({type(exc).__name__}: {exc}); "
            "the file is probably truncated or corrupt",
            "Copy the file again; no store was left at the output",
        ) from exc


def _store_warnings(out: Path, path: Path, ds: xr.Dataset) -> None:
    """What the file held but the store does not, as warnings stored with it (:mod:`emfuse.stores.warn`);
    not logged again: :class:`IngestWarning` said it already."""
    records = [make_warning("not-ingested", f"{path.name}: not ingested: {item}", stage="ingest")
               for item in ds.attrs.get(ATTR_UNMAPPED, [])]
    records += [make_warning("metadata-not-mapped", f"{path.name}: {item}", stage="ingest")
                for item in ds.attrs.get(ATTR_METADATA_UNMAPPED, [])]
    records += [make_warning("ingest-check", f"{path.name}: {item}", stage="ingest")
                for item in ds.attrs.get(ATTR_INGEST_NOTES, [])]
    if records:
        add_warnings(out, *records, log_them=False)


def chunk_canonical(ds: xr.Dataset) -> xr.Dataset:
    """Rechunk every canonical variable to the store's chunks (lazy, no data read).

    >>> import numpy as np
    >>> ds = xr.Dataset({"spectrum": (("y", "x", "energy"), np.zeros((100, 70, 8)))})
    >>> chunk_canonical(ds).spectrum.chunks
    ((64, 36), (64, 6), (8,))
    """
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if DIMS.get(name) == var.dims:
            out[name] = var.chunk(dict(zip(var.dims, chunk_shape(name, var.shape))))
    return out


def _reader(path: Path) -> Any:
    if not path.exists():
        raise InputFileNotFound(
            f"cannot ingest {path}: no such file. Check the path (and that the copy from the "
            "instrument finished)."
        )
    if not os.access(path, os.R_OK):
        raise InputNotReadable(
            f"cannot ingest {path}: the file is not readable. Fix its permissions or copy it."
        )
    if path.is_dir() and path.suffix.lower() != ".zspy":  # a .zspy is a directory (Zarr)
        raise fail(
            path,
            "it is a directory, not a file",
            "Pass a file; a canonical store (.zarr) is opened with emfuse.stores.zarrio.open_dataset",
        )
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise fail(
            path,
            f"the suffix {path.suffix!r} is not a supported format",
            f"Supported: {' '.join(SUPPORTED_SUFFIXES)}; convert the file to one of these",
        )
    return importlib.import_module(f"{__package__}.formats.{_READERS[suffix]}")


def _elements(path: Path, elements: Sequence[str] | str | None) -> list[str] | None:
    """The user's element list, split if given as one string, with every symbol checked."""
    if elements is None:
        return None
    if isinstance(elements, str):
        elements = [e for e in re.split(r"[,\s]+", elements) if e]
    symbols, _ = element_coords(path, elements)
    return [str(s) for s in symbols]


def _signal_type(path: Path, signal_type: str | None) -> str | None:
    if signal_type is None:
        return None
    kind = normalize_signal_type(signal_type)
    if kind is None:
        raise fail(path, f"signal_type {signal_type!r} is not known", "Use 'EDX' or 'EELS'")
    return kind
