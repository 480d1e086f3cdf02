"""BF, DF and HRTEM images of one region (and their flat references) as one modes store.

``emfuse tem-fuse`` fuses a store with ``modes`` (mode, y, x), mode ``bf``, ``df``, ``hrtem``,
and optionally ``flat_reference`` (mode, y, x). :func:`ingest_modes` writes one from three
instrument files, each read with :func:`emfuse.stores.ingest.read_image` (any format ``emfuse
ingest`` reads), reduced to one 2D image (a stack summed, or one frame of it), binned by an
integer factor where asked, checked, and written as a canonical Zarr v3 store:

* ``modes`` (float32), its attribute ``sources``: for each mode the file's path and sha256, the
  signal taken, how a stack was reduced, the binning, the pixel size, the key figures and the
  file's whole metadata (:mod:`emfuse.stores.metadata`), so each mode keeps its own;
* ``flat_reference`` likewise, when references are given (``"uniform"`` for a mode whose
  illumination is even, a STEM detector image: a constant 1);
* the ``y``/``x`` coordinates of the HRTEM (the registration reference), in nm when a file is
  calibrated.

Refused with a :class:`~emfuse.stores.errors.ModesInputError` naming the problem and the fix: a
mode missing, images of different shapes or pixel sizes (more than :data:`PIXEL_TOLERANCE`
apart), NaN/Inf pixels, a constant image, a flat reference of another shape than its image or
not > 0 everywhere, references for some modes only. Stored as warnings
(:mod:`emfuse.stores.warn`): stage positions further apart than half the field of view, one file
given for two modes.

Examples
--------
>>> ingest_modes({"bf": "bf.dm4", "df": "df.dm4", "hrtem": "hrtem.dm4"}, "modes.zarr")  # doctest: +SKIP
PosixPath('modes.zarr')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .errors import ModesInputError, StoreError
from .ingest import chunk_canonical, read_image
from .layout import FLAT_REFERENCE, HAADF, MODE_LABELS, MODES
from .metadata import KEY_FIGURES
from .warn import add_warnings, make_warning
from .zarrio import check_writable, provenance, write_dataset

__all__ = ["MAX_DRIFT_PX", "PIXEL_TOLERANCE", "UNIFORM", "ModeImage", "ingest_modes", "read_mode"]

#: relative difference of pixel sizes above which the modes are refused
PIXEL_TOLERANCE = 0.02
#: the largest drift tem-fuse's registration accepts (``estimate_mode_drift(max_shift=8)``), px
MAX_DRIFT_PX = 8.0
#: a flat reference given as this word is a constant 1: the mode's illumination is even
UNIFORM = "uniform"
_FIT = "leave every flat reference out to have the illumination fitted"


@dataclass
class ModeImage:
    """One file reduced to a 2D image: the (lazy) image and what the store records of it."""

    mode: str
    path: Path | None
    image: xr.DataArray  # (y, x), float32, dask
    source: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.mode} ({self.path.name if self.path else UNIFORM})"

    @property
    def pixel_nm(self) -> tuple[float, float] | None:
        """(dy, dx) in nm from the coordinates, None for an uncalibrated image."""
        if self.image["y"].attrs.get("units") != "nm" or min(self.image.shape) < 2:
            return None
        return tuple(float(self.image[d][1] - self.image[d][0]) for d in ("y", "x"))  # type: ignore[return-value]


def read_mode(mode: str, path: str | Path, *, signal: str | int | None = None, frame: str | int = "sum",
              bin_factor: int = 1) -> ModeImage:
    """Read one file as a mode's 2D image: a stack summed (``frame="sum"``) or one frame, then binned.

    Parameters
    ----------
    mode : str
        ``bf``, ``df``, ``hrtem`` (named in messages and records).
    path : str or pathlib.Path
        Any file :func:`emfuse.stores.ingest.read_image` reads.
    signal : str or int, optional
        Which image of a file that holds several (index or title).
    frame : "sum" or int
        What becomes the image of a stack: the sum of its frames, or frame ``frame`` (from 0).
    bin_factor : int
        Sum ``bin_factor`` x ``bin_factor`` pixels into one (trailing rows and columns that do not
        fill a bin are dropped).

    Examples
    --------
    >>> m = read_mode("hrtem", "128x128_TEM_acquire-sum1.emi", bin_factor=2)  # doctest: +SKIP
    >>> m.image.shape, m.source["bin"]  # doctest: +SKIP
    ((64, 64), 2)
    """
    path = Path(path)
    ds = read_image(path, signal=signal)
    var = ds[HAADF] if HAADF in ds else ds["movie"]
    image, reduced = _reduce(var, frame, path)
    image = _binned(image, bin_factor, path)
    source = _source_record(ds, var, reduced, bin_factor)
    out = ModeImage(mode, path, image, source)
    source["pixel_nm"] = list(out.pixel_nm) if out.pixel_nm else None
    return out


def _reduce(var: xr.DataArray, frame: str | int, path: Path) -> tuple[xr.DataArray, str]:
    """A stack summed or one of its frames (float64 for the sum: integer counts of many frames)."""
    if var.ndim == 2:
        return var.astype(np.float32), "image"
    n = var.sizes["frame"]
    if str(frame).strip().lower() == "sum":
        return var.astype(np.float64).sum("frame").astype(np.float32), f"sum of {n} frames"
    index = int(frame)
    if not 0 <= index < n:
        raise ModesInputError(f"cannot ingest {path}: --frame {index}, but the stack has frames 0 to {n - 1}. "
                              "Choose one of those, or --frame sum")
    return var.isel(frame=index, drop=True).astype(np.float32), f"frame {index} of {n}"


def _binned(image: xr.DataArray, factor: int, path: Path) -> xr.DataArray:
    """``image`` summed over ``factor`` x ``factor`` blocks; the coordinates become the blocks' centres."""
    if factor == 1:
        return image
    if factor < 1 or min(image.shape) < factor:
        raise ModesInputError(f"cannot ingest {path}: --bin {factor} for an image of {image.shape}; "
                              "the factor must be a whole number from 1 to the image's smaller side")
    binned = image.coarsen(y=factor, x=factor, boundary="trim").sum()
    for dim in ("y", "x"):
        binned[dim].attrs.update(image[dim].attrs)  # coarsen drops the units
    return binned


def _source_record(ds: xr.Dataset, var: xr.DataArray, reduced: str, bin_factor: int) -> dict[str, Any]:
    """What a store keeps of a mode's file: provenance, the choices made, the metadata."""
    attrs = ds.attrs
    record: dict[str, Any] = {
        "source_path": attrs["source_path"], "source_sha256": attrs["source_sha256"],
        "signal": var.attrs.get("source_signal"), "title": var.attrs.get("source_title"),
        "shape": [int(n) for n in var.shape], "reduced": reduced, "bin": bin_factor,
        "units": var.attrs.get("units"), "offset_nm": var.attrs.get("offset_nm"),
    }
    record.update({k: attrs[k] for k in KEY_FIGURES if k in attrs})
    for key in ("metadata", "original_metadata", "metadata_sources"):
        if key in attrs:  # JSON strings (stores/metadata.py)
            record[key] = attrs[key]
    return record


def _uniform(like: ModeImage) -> ModeImage:
    """A constant 1 on the grid of ``like``: the flat reference of an evenly lit mode."""
    ones = xr.ones_like(like.image)  # lazy like the image
    return ModeImage(like.mode, None, ones, {"uniform": True, "description": "even illumination: constant 1"})


def ingest_modes(images: Mapping[str, str | Path], out: str | Path, *,
                 flats: Mapping[str, str | Path] | None = None, signals: Mapping[str, str | int] | None = None,
                 frame: str | int = "sum", bins: Mapping[str, int] | None = None,
                 overwrite: bool = False) -> Path:
    """Write BF, DF and HRTEM files (and their flat references) as one modes store for ``emfuse tem-fuse``.

    Parameters
    ----------
    images : mapping
        ``{"bf": path, "df": path, "hrtem": path}``: all three.
    out : str or pathlib.Path
        The store to write (.zarr).
    flats : mapping, optional
        Each mode's flat (vacuum) reference: a file recorded with the same illumination and
        detector settings, or ``"uniform"`` (a STEM detector image: a constant 1). All three or none.
    signals : mapping, optional
        Per mode (or flat, as ``"flat-bf"``), which image of a file that holds several.
    frame : "sum" or int
        What becomes the image of a stack (flat references are always summed).
    bins : mapping, optional
        Per mode, an integer binning factor (its flat is binned alike).
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    pathlib.Path
        ``out``, complete, with warnings stored (:func:`emfuse.stores.warn.read_warnings`).

    Raises
    ------
    ModesInputError
        a mode missing, shapes or pixel sizes that differ, NaN pixels, a bad flat reference.
    StoreError
        if ``out`` exists and ``overwrite`` is False.
    """
    signals, bins = dict(signals or {}), dict(bins or {})
    _check_names(images, flats, signals, bins)
    out = check_writable(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
    modes = [read_mode(m, images[m], signal=signals.get(m), frame=frame, bin_factor=bins.get(m, 1))
             for m in MODE_LABELS]
    references = _read_flats(flats or {}, modes, signals, bins)
    _check_grid(modes, references)
    _check_values(modes, references)
    written = write_dataset(chunk_canonical(_dataset(modes, references, frame)), out, overwrite=overwrite)
    records = _stage_warnings(modes) + _same_file_warnings(modes) + _calibration_warnings(modes)
    if records:
        add_warnings(written, *records)
    return written


def _check_names(images: Mapping[str, Any], flats: Mapping[str, Any] | None, signals: Mapping[str, Any],
                 bins: Mapping[str, Any]) -> None:
    """Every mode given, each once, and no option for a mode that does not exist."""
    missing = [m for m in MODE_LABELS if not images.get(m)]
    if missing:
        raise ModesInputError(
            f"no {' or '.join(m.upper() for m in missing)} image: tem-fuse fuses BF, DF and HRTEM images of one "
            f"region, so all three are needed. Give {' '.join(f'--{m} FILE' for m in missing)}")
    known = set(MODE_LABELS) | {f"flat-{m}" for m in MODE_LABELS}
    for what, keys in (("image", images), ("flat reference", flats or {}), ("--signal", signals),
                       ("--bin", bins)):
        unknown = sorted(set(keys) - (known if what == "--signal" else set(MODE_LABELS)))
        if unknown:
            raise ModesInputError(f"unknown mode(s) {unknown} for {what}; the modes are {list(MODE_LABELS)}"
                                  + (" (and flat-bf, flat-df, flat-hrtem for --signal)" if what == "--signal" else ""))
    given = [m for m in MODE_LABELS if (flats or {}).get(m)]
    if given and len(given) < len(MODE_LABELS):
        lacking = [m for m in MODE_LABELS if m not in given]
        raise ModesInputError(
            f"flat references for {', '.join(given)} but not for {', '.join(lacking)}: tem-fuse divides every "
            f"mode by its reference, so give one per mode: {' '.join(f'--flat-{m} FILE' for m in lacking)}, "
            f"or --flat-{lacking[0]} {UNIFORM} for a STEM detector image (a scanned probe lights every pixel "
            f"alike), or {_FIT}")


def _read_flats(flats: Mapping[str, str | Path], modes: list[ModeImage], signals: Mapping[str, Any],
                bins: Mapping[str, int]) -> list[ModeImage]:
    """Each mode's flat reference, summed over a stack and binned as its mode ([] without references)."""
    if not flats:
        return []
    out = []
    for m in modes:
        spec = flats[m.mode]
        if str(spec).strip().lower() == UNIFORM:
            out.append(_uniform(m))
        else:
            out.append(read_mode(m.mode, spec, signal=signals.get(f"flat-{m.mode}"), frame="sum",
                                 bin_factor=bins.get(m.mode, 1)))
    return out


def _bin_hint(shape: tuple[int, ...], target: tuple[int, ...]) -> int | None:
    """The integer factor that bins ``shape`` down to ``target``, if there is one.

    >>> _bin_hint((4096, 4096), (1024, 1024)), _bin_hint((1000, 1000), (512, 512))
    (4, None)
    """
    ratios = {a / b for a, b in zip(shape, target)}
    factor = ratios.pop() if len(ratios) == 1 else 0
    return int(factor) if factor > 1 and float(factor).is_integer() else None


def _check_grid(modes: list[ModeImage], flats: list[ModeImage]) -> None:
    """One shape and (where the files say) one pixel size for all modes; each flat like its mode."""
    ref = modes[-1]  # the HRTEM: what BF and DF are registered to
    shapes = {m.mode: tuple(m.image.shape) for m in modes}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{m.mode} {_px(m)} ({m.path.name})" for m in modes if m.path)
        smallest = min(shapes.values(), key=lambda s: s[0] * s[1])
        hints = [f"--bin {m}={f}" for m, s in shapes.items() if (f := _bin_hint(s, smallest))]
        raise ModesInputError(
            f"the images differ in shape: {listing}; the modes must cover the same field pixel for pixel. "
            + (f"If their fields are the same, bin the larger ones: {' '.join(hints)}; otherwise crop"
               if hints else "Crop")
            + " or bin them to one shape in the acquisition software (DigitalMicrograph, Velox) and save again")
    for m in modes[:-1]:
        _check_pixel(m, ref, "the modes must be recorded at the same magnification (or one file's "
                             "calibration is wrong)")
    for flat, m in zip(flats, modes):
        if flat.path is None:
            continue
        if flat.image.shape != m.image.shape:
            raise ModesInputError(
                f"the flat reference of {m.mode} ({flat.path.name}) is {_px(flat)}, its image "
                f"({m.path.name if m.path else ''}) {_px(m)}: record the reference with the same "
                "detector settings (binning, readout area) as the image, or " + _FIT)
        _check_pixel(flat, m, "record the reference at the image's magnification", what="flat reference of")


def _px(m: ModeImage) -> str:
    return f"{m.image.shape[0]} x {m.image.shape[1]} px"


def _calibration_warnings(modes: list[ModeImage]) -> list[dict[str, Any]]:
    """A warning when some files give a pixel size and others do not: those could not be compared."""
    bare = [m.label for m in modes if m.pixel_nm is None]
    if not bare or len(bare) == len(modes):
        return []
    return [make_warning("modes-uncalibrated", f"{', '.join(bare)}: no pixel size in the file, so it could not "
                         "be checked against the others; make sure all three were recorded at one magnification",
                         stage="ingest")]


def _check_pixel(a: ModeImage, b: ModeImage, fix: str, what: str = "") -> None:
    """Refuse pixel sizes more than :data:`PIXEL_TOLERANCE` apart; uncalibrated files pass."""
    pa, pb = a.pixel_nm, b.pixel_nm
    if pa is None or pb is None:
        return
    worst = max(abs(x - y) / abs(y) for x, y in zip(pa, pb))
    if worst > PIXEL_TOLERANCE:
        name = f"the {what} {a.label}" if what else a.label
        raise ModesInputError(
            f"the pixel sizes differ: {name} {pa[0]:.4g} x {pa[1]:.4g} nm, {b.label} {pb[0]:.4g} x {pb[1]:.4g} nm, "
            f"{100 * worst:.1f} % apart (more than {100 * PIXEL_TOLERANCE:g} %); {fix}. If one is an integer "
            "multiple of the other, bin the finer image with --bin MODE=N")


def _check_values(modes: list[ModeImage], flats: list[ModeImage]) -> None:
    """NaN/Inf and constant images, flats <= 0: one pass over the data (Dask, chunk by chunk)."""
    stats = []
    for m in [*modes, *flats]:
        a = m.image.data
        stats.append((da.nanmin(a), da.nanmax(a), (~da.isfinite(a)).sum(), (a <= 0).sum()))
    computed = dask.compute(*stats)
    for m, (low, high, bad, _) in zip(modes, computed[: len(modes)]):
        if bad:
            raise ModesInputError(
                f"the {m.mode} image ({m.path.name if m.path else ''}) has {int(bad)} NaN or Inf pixels of "
                f"{m.image.size}: tem-fuse cannot fuse "
                "them. Replace them (interpolate from the neighbours) in the acquisition software or HyperSpy "
                "and save again")
        if low == high:
            raise ModesInputError(
                f"the {m.mode} image ({m.path.name if m.path else ''}) is {float(low):g} everywhere: no signal (the beam blanked, or the detector "
                "not inserted or not read out). Acquire it again")
    for f, (low, _, bad, nonpositive) in zip(flats, computed[len(modes):]):
        if bad or nonpositive:
            nan = f" and {int(bad)} NaN or Inf" if bad else ""
            raise ModesInputError(
                f"the flat reference of {f.label} has {int(nonpositive)} pixels <= 0{nan} "
                f"(smallest {float(low):g}); the image is divided by it, so it must be > 0 everywhere. Record "
                "it again in vacuum with the image's illumination (not dark-subtracted below zero), replace "
                f"dead pixels, or {_FIT}")


def _dataset(modes: list[ModeImage], flats: list[ModeImage], frame: str | int) -> xr.Dataset:
    """The canonical Dataset: modes (and flats) on the HRTEM's coordinates (or the first calibrated)."""
    grid = next((m for m in reversed(modes) if m.pixel_nm), modes[-1]).image
    coords = {"mode": list(MODE_LABELS), "y": grid["y"].variable, "x": grid["x"].variable}
    dims = ("mode", "y", "x")
    ds = xr.Dataset({MODES: (dims, da.stack([m.image.data for m in modes]))}, coords=coords)
    counts = all(m.source.get("units") == "counts" for m in modes)
    ds[MODES].attrs.update(units="counts" if counts else "a.u.", description="recorded BF, DF and HRTEM images",
                           sources={m.mode: m.source for m in modes})
    if flats:
        ds[FLAT_REFERENCE] = (dims, da.stack([f.image.data for f in flats]))
        ds[FLAT_REFERENCE].attrs.update(units="a.u.", description="each mode's beam without specimen "
                                        "(flat / vacuum reference)", sources={f.mode: f.source for f in flats})
    params = {"frame": str(frame), "bin": {m.mode: m.source["bin"] for m in modes},
              "signal": {m.mode: m.source.get("signal") for m in modes}}
    ds.attrs.update(provenance(None, params=params))
    ds.attrs["source_label"] = ", ".join(f"{m.mode.upper()} {m.path.name}" for m in modes if m.path)
    return ds


def _stage_nm(m: ModeImage) -> np.ndarray | None:
    """The stage (x, y) a file records, in nm (HyperSpy's ``Stage.x``/``y`` are in mm)."""
    try:
        stage = json.loads(m.source["metadata"])["Acquisition_instrument"]["TEM"]["Stage"]
        xy = np.array([float(stage["x"]), float(stage["y"])]) * 1e6
    except (KeyError, TypeError, ValueError):
        return None
    return xy if np.isfinite(xy).all() else None


def _stage_warnings(modes: list[ModeImage]) -> list[dict[str, Any]]:
    """A warning for each of BF, DF whose stage position is more than half the field from the HRTEM's."""
    ref = modes[-1]
    ref_xy, pixel = _stage_nm(ref), ref.pixel_nm
    if ref_xy is None or pixel is None:
        return []
    field = min(n * p for n, p in zip(ref.image.shape, pixel))
    records = []
    for m in modes[:-1]:
        xy = _stage_nm(m)
        if xy is None or not (distance := float(np.hypot(*(xy - ref_xy)))) > field / 2:
            continue
        records.append(make_warning(
            "modes-stage-apart",
            f"the stage positions of {m.label} and {ref.label} differ by {distance:.4g} nm, more than half the "
            f"{field:.4g} nm field: the images may not show the same region. tem-fuse registers BF and DF to "
            f"the HRTEM only within {MAX_DRIFT_PX:g} px ({MAX_DRIFT_PX * min(pixel):.3g} nm here); check that "
            "they overlap", stage="ingest", distance_nm=round(distance, 3), field_nm=round(field, 3)))
    return records


def _same_file_warnings(modes: list[ModeImage]) -> list[dict[str, Any]]:
    """A warning when two modes are the same bytes: fusing an image with itself adds nothing."""
    seen: dict[tuple, str] = {}
    records = []
    for m in modes:
        key = (m.source["source_sha256"], m.source.get("signal"), m.source["reduced"])
        if key in seen:
            records.append(make_warning(
                "modes-same-file", f"{m.label} is the same image as {seen[key]}: the fusion has nothing to "
                "add from it", stage="ingest"))
        else:
            seen[key] = m.label
    return records

