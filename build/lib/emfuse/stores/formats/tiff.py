"""TIFF images (``.tif``, ``.tiff``): a 2D image becomes ``haadf``, a 3D stack ``movie``.

The pixel size comes from FEI/Thermo Fisher metadata (``[Scan] PixelWidth``),
ImageJ metadata (``unit`` with the X/Y resolution tags) or, in a plain TIFF, from the resolution tags in centimetres,
millimetres or micrometres. Inch resolutions are ignored: they are screen
dots per inch (72, 96, 300 dpi), not a physical pixel size. ImageJ's frame
interval becomes a ``time`` coordinate on ``frame``.

Uncompressed, contiguous image data (what most acquisition software writes)
is memory-mapped chunk by chunk; compressed stacks are read one page (frame)
per chunk.

Examples
--------
>>> ds = read("stack.tif")  # doctest: +SKIP
>>> ds.movie.dims  # doctest: +SKIP
('frame', 'y', 'x')
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import xarray as xr

from ..layout import HAADF, MOVIE
from . import FileArray, RawArray, canonical_dataset, check_ndim, fail, nm_per_unit, shape_str

# Non-standard but common ResolutionUnit values written by some software.
_UNIT_NAMES = {3: "cm", 4: "mm", 5: "um"}


class _PageStack(FileArray):
    """A stack of compressed pages (one per frame), or one compressed page; read per page."""

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: Any) -> None:
        super().__init__(path, shape, dtype)
        self.whole_only = len(shape) == 2  # a compressed 2D image is read in one piece

    def to_dask(self, chunks: Sequence[int]) -> Any:
        # a page is the unit that can be decompressed: one frame per chunk
        return super().to_dask((1, *self.shape[1:]) if self.ndim == 3 else chunks)

    def _read(self, key: Any) -> np.ndarray:
        if self.ndim == 2:
            return tifffile.imread(self.path, series=0)[key]
        frames, rest = key[0], key[1:]
        index = range(*frames.indices(self.shape[0]))
        pages = [tifffile.imread(self.path, series=0, key=i) for i in index]
        return np.stack(pages)[(slice(None), *rest)] if pages else np.empty((0, 0, 0), self.dtype)


def read(
    path: str | Path,
    *,
    elements: Sequence[str] | None = None,
    signal_type: str | None = None,
) -> xr.Dataset:
    """Read a TIFF lazily: 2D -> ``haadf`` (y, x), 3D -> ``movie`` (frame, y, x).

    ``elements`` and ``signal_type`` do not apply to TIFF images and are ignored.

    Raises
    ------
    IngestError
        for a file tifffile cannot parse (truncated, corrupt), colour (RGB)
        images, or data with other than 2 or 3 dimensions.
    """
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            info = _inspect(path, tif)
    except (tifffile.TiffFileError, OSError, ValueError, struct.error, IndexError) as exc:
        raise fail(
            path,
            f"tifffile cannot read it ({type(exc).__name__}: {exc}); the file is truncated or "
            "corrupt",
            "Copy or export the file again",
        ) from exc
    shape, axes, data, pixel_nm, frame_time = info
    name = HAADF if len(shape) == 2 else MOVIE
    if "S" in axes:
        raise fail(
            path,
            f"it is a multi-sample (colour) image (axes {axes!r}, shape {shape_str(shape)})",
            "Save the detector image as a single-channel (grayscale) TIFF",
        )
    check_ndim(path, name, shape, what=f"the image (axes {axes!r})")
    return canonical_dataset(path, **{name: data}, pixel_nm=pixel_nm, frame_time=frame_time)


def _inspect(path: Path, tif: tifffile.TiffFile) -> tuple:
    series = tif.series[0]
    shape, axes = tuple(series.shape), series.axes
    _check_declared(tif, shape, axes)
    dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
    offset = series.dataoffset  # None unless uncompressed and contiguous
    if offset is not None:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if offset + nbytes > path.stat().st_size:
            raise ValueError(f"image data end at byte {offset + nbytes}, past the end of the file")
        data = RawArray(path, offset, shape, dtype)
    else:
        _check_pages(path, series)
        data = _PageStack(path, shape, dtype.newbyteorder("="))
    page = series.pages[0] if series.pages else tif.pages[0]
    return shape, axes, data, _pixel_nm(tif, page), _frame_time(tif, shape)


def _check_declared(tif: tifffile.TiffFile, shape: tuple, axes: str) -> None:
    """A stack cut short loses the directories of its last pages, and tifffile then shows
    the pages it found (often just the first) as a smaller image; the header written by
    ImageJ (``images=``) or by tifffile (``{"shape": [...]}``) tells how many there were."""
    planes = int(np.prod([n for n, a in zip(shape, axes) if a not in "YXS"]))
    images = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
    if images and int(images) != planes:
        raise ValueError(f"its ImageJ header declares {int(images)} images, but the file holds "
                         f"only {planes}")
    declared = (tif.shaped_metadata or [{}])[0].get("shape") if tif.is_shaped else None
    if declared and int(np.prod(declared)) != int(np.prod(shape)):
        raise ValueError(f"its header declares the shape {shape_str(declared)}, but the file holds "
                         f"{shape_str(shape)}")


def _check_pages(path: Path, series: Any) -> None:
    """Every strip or tile of a compressed file must lie inside the file (truncation)."""
    size = path.stat().st_size
    for page in series.pages:
        if page is None:
            continue
        for start, count in zip(page.dataoffsets, page.databytecounts):
            if start + count > size:
                raise ValueError(f"page data end at byte {start + count}, past the end of the file")


def _pixel_nm(tif: tifffile.TiffFile, page: Any) -> tuple[float | None, float | None]:
    """(dy, dx) in nm from FEI metadata, ImageJ's unit or the resolution unit tag."""
    scan = (tif.fei_metadata or {}).get("Scan") or {}
    if scan.get("PixelWidth"):  # FEI / Thermo Fisher SEM and FIB: metres
        dx = float(scan["PixelWidth"]) * 1e9
        return (float(scan.get("PixelHeight") or scan["PixelWidth"]) * 1e9, dx)
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):
        factor = nm_per_unit(ij["unit"])
    else:
        factor = nm_per_unit(_UNIT_NAMES.get(int(page.resolutionunit)))
    xres, yres = page.resolution  # pixels per unit
    if factor is None or not xres or not yres:
        return (None, None)
    return (factor / yres, factor / xres)


def _frame_time(tif: tifffile.TiffFile, shape: tuple) -> np.ndarray | None:
    interval = (tif.imagej_metadata or {}).get("finterval")
    if len(shape) != 3 or not interval:
        return None
    return np.arange(shape[0]) * float(interval)
