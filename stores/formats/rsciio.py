"""Microscope formats through RosettaSciIO: Bruker ``.bcf``, Gatan ``.dm3``/``.dm4``,
Velox and NCEM ``.emd``, FEI TIA ``.emi``/``.ser``, HyperSpy ``.hspy``. HyperSpy's
``.zspy`` is refused with a message naming the fix: RosettaSciIO's zspy plugin is
written for zarr 2 (its ``zspy`` extra pins ``zarr<3``; with zarr 3 its writer fails on
``zarr.storage.NestedDirectoryStore``), and emfuse runs on zarr 3.

RosettaSciIO returns a list of signals (``data``, ``axes`` in array order,
``metadata``); this module classifies each one by its axes and picks what the
canonical layout holds:

* ``spectrum``: a 3D signal with one energy axis (eV or keV); the energy axis is
  moved last (DigitalMicrograph stores (energy, y, x)). A file with several is
  refused unless ``signal`` (index in RosettaSciIO's list, or title) or
  ``signal_type`` leaves one; the message lists them.
* ``haadf``: the 2D image on the same grid whose title says HAADF, then ADF,
  then DF; without a spectrum image or movie, the best-titled image.
* ``maps``: 2D images on that grid titled by an element symbol (Velox maps).
* ``movie``: a 3D stack without an energy axis (Velox/Ceta Time series).

Everything else (single spectra, overview images, other spectrum images) is
listed in an :class:`~emfuse.stores.formats.IngestWarning` and in the ``unmapped``
attribute. A spectrum image (the file says EDX/EELS) whose energy axis has no
energy unit is refused: its channels' energies are unknown. Pixel sizes are
converted to nm, energies to eV. The ``y``/``x`` coordinates are the offset and
scale of the primary signal (the spectrum image, else the first one ingested), as
RosettaSciIO reads them, in nm; an uncalibrated axis counts pixels from 0. Each
variable's own offset and pixel size are kept in its attributes (Velox writes the
HAADF at offset 0 and the spectrum image and maps at the stage position).

Instrument metadata (:mod:`emfuse.stores.metadata`): RosettaSciIO's ``metadata`` with its
``mapping`` applied as HyperSpy does, the key figures as plain attributes of the
Dataset (from the primary signal, completed from the other ingested ones), the
whole tree and ``original_metadata`` as JSON strings, and which signal of the file
each variable (and each key figure) came from (``metadata_sources``).

Bruker spectrum images are decoded in a child process (:class:`_BcfSpectrumImage`):
RosettaSciIO's compiled decoder does not check bounds, and a corrupt file would
otherwise crash the whole process (SIGSEGV/SIGBUS), and with it a night's batch.

Examples
--------
>>> ds = read("test_TEM.bcf")  # doctest: +SKIP
>>> ds.spectrum.shape, ds.attrs["signal_type"]  # doctest: +SKIP
((64, 64, 2048), 'EDX')
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
import struct
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..layout import (
    ATTR_IMAGE_KIND,
    ATTR_INGEST_NOTES,
    ATTR_METADATA_UNMAPPED,
    HAADF,
    MAPS,
    MOVIE,
    SPECTRUM,
)
from ..metadata import complete_metadata, key_figures, to_json
from ..periodic import is_symbol
from . import (
    FileArray,
    IngestWarning,
    canonical_dataset,
    ev_per_unit,
    fail,
    lazy,
    nm_per_unit,
    normalize_signal_type,
    shape_str,
    warn_unmapped,
)

PLUGINS = {
    ".bcf": "bruker",
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".emi": "tia",
    ".ser": "tia",
    ".hspy": "hspy",
    ".zspy": "zspy",
}

_TIME_UNITS = {"s", "ms", "µs", "us", "ns"}


@dataclass(eq=False)  # compared by identity: the data are arrays
class _Signal:
    """One RosettaSciIO signal, classified, with its data in canonical axis order."""

    title: str
    kind: str  # spectrum_image | spectrum | image | stack | other
    data: Any
    pixel_nm: tuple[float | None, float | None] = (None, None)
    energy: np.ndarray | None = None
    frame_time: np.ndarray | None = None
    signal_type: str | None = None
    note: str = ""
    index: int = -1  # position in RosettaSciIO's list of the file's signals
    metadata: dict = field(default_factory=dict)  # with RosettaSciIO's mapping applied
    original: Any = None  # original_metadata as read
    origin_nm: tuple[float | None, float | None] = (None, None)  # (y, x) offsets, nm
    dispersion_ev: float | None = None  # eV per channel of a spectrum (the energy axis' scale)
    unmapped_metadata: list[str] = field(default_factory=list)  # mapping entries that failed

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def yx(self) -> tuple[int, ...]:
        return self.shape[:2] if self.kind == "spectrum_image" else self.shape[-2:]

    def describe(self) -> str:
        label = {"spectrum_image": "spectrum image", "stack": "image stack",
                 "uncalibrated": "spectrum image"}.get(
            self.kind, self.kind
        )
        return f"{label} {self.title or '(untitled)'!r} {shape_str(self.shape)}"

    def listing(self) -> str:
        """One line for a message that asks to choose: index, title, shape, type, energies."""
        text = f"[{self.index}] {self.title or '(untitled)'!r} {shape_str(self.shape)} {self.signal_type or 'unknown type'}"
        if self.energy is not None and len(self.energy):
            text += f", {float(self.energy[0]):.5g} to {float(self.energy[-1]):.5g} eV"
        return text


def read(
    path: str | Path,
    *,
    elements: Sequence[str] | None = None,
    signal_type: str | None = None,
    signal: str | int | None = None,
) -> xr.Dataset:
    """Read a microscope file lazily into the canonical Dataset.

    Parameters
    ----------
    elements
        Select (and order) the element maps the file holds. With a spectrum
        image, elements without a map in the file are left to be integrated from
        it (``emfuse fuse``); the list is kept as the attribute ``elements``.
    signal_type
        ``"EDX"`` or ``"EELS"``: which spectrum image to take when the file
        holds several (Velox EELS + EDS).
    signal
        Which of the file's signals to take: its index in RosettaSciIO's list of the
        file's signals, or its title (``emfuse ingest FILE --signal 17``). A spectrum
        image is read with its HAADF and maps; an image or image stack is read alone,
        as ``haadf`` or ``movie`` (``emfuse restore FILE --signal 13``).

    Raises
    ------
    IngestError
        for a file RosettaSciIO cannot read (truncated, corrupt), or one that
        holds nothing canonical (only single spectra, for instance).
    """
    path = Path(path)
    signals = [_classify(path, raw, index) for index, raw in enumerate(_load(path))]
    image = _named_image(signals, signal)
    if image is not None:
        return _image_alone(path, image, _image_kind(image, False, _in_sem(image)))
    return _assemble(path, signals, elements, signal_type, signal)


def describe(path: str | Path) -> list[str]:
    """One line per signal of the file, as RosettaSciIO lists them (what ``--signal`` counts).

    Each line: index, what emfuse takes it for, title, shape, signal type, energy range
    or pixel size; then the elements the file's metadata lists (``Sample.elements``).
    Nothing but headers is read.
    """
    path = Path(path)
    notes: list[str] = []  # what RosettaSciIO said about the file (a pruned spectrum stream, say)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        signals = [_classify(path, raw, index) for index, raw in enumerate(_load(path, notes))]
    lines = [f"{path.name}: {len(signals)} signal(s) as RosettaSciIO reads them"]
    elements: list[str] = []
    for s in signals:
        role = {"spectrum_image": "spectrum image", "stack": "image stack",
                "uncalibrated": "spectrum image without energy calibration"}.get(s.kind, s.kind)
        if s.kind == "image" and is_symbol(s.title.strip()):
            role = "element map"
        line = f"  [{s.index}] {role} {s.title or '(untitled)'!r} {shape_str(s.shape)}"
        if s.signal_type:
            line += f" {s.signal_type}"
        if s.energy is not None and len(s.energy):
            line += f", {float(s.energy[0]):.5g} to {float(s.energy[-1]):.5g} eV"
        if s.pixel_nm[0]:
            y, x = s.pixel_nm[0], s.pixel_nm[1] or s.pixel_nm[0]
            # non-square pixels (a Bruker image can have them) show both sides, as the file gives them
            line += f", pixel {y:.4g} nm" if f"{y:.4g}" == f"{x:.4g}" else f", pixel {y:.4g} x {x:.4g} nm (y x x)"
        lines.append(line)
        for e in (s.metadata.get("Sample") or {}).get("elements") or []:
            if str(e) not in elements:
                elements.append(str(e))
    if elements:
        lines.append(f"elements listed in the file's metadata: {' '.join(elements)}")
    lines += [f"RosettaSciIO: {note}" for note in notes]
    return lines



def read_image(path: str | Path, *, signal: str | int | None = None) -> xr.Dataset:
    """One image or image stack of a microscope file, alone: ``haadf`` (y, x) or ``movie`` (frame, y, x).

    For a file that holds several images (a Velox STEM acquisition with BF, DF and HAADF
    detectors, element maps beside a HAADF), the one image ``emfuse ingest-modes`` takes as a
    mode; spectrum images and spectra are left out. The image's metadata are kept as
    :func:`read` keeps them.

    Parameters
    ----------
    signal
        The image's index in RosettaSciIO's list of the file's signals (``emfuse ingest FILE
        --list``) or its title; needed when the file holds more than one image.

    Raises
    ------
    IngestError
        when the file holds no image, or several and ``signal`` does not name one of them;
        the message lists them.
    """
    path = Path(path)
    signals = [_classify(path, raw, index) for index, raw in enumerate(_load(path))]
    return _image_alone(path, _chosen_image(path, signals, signal), "image")  # a mode, not known to be a HAADF


def _images(signals: list[_Signal]) -> list[_Signal]:
    return [s for s in signals if s.kind in ("image", "stack")]


def _titled(candidates: list[_Signal], title: str) -> list[_Signal]:
    """The ``candidates`` titled ``title`` (case and surrounding spaces aside)."""
    return [s for s in candidates if s.title.strip().lower() == title.strip().lower()]


def _image_listing(images: list[_Signal]) -> str:
    """The images as a message lists them: index, title and shape (an image has no signal type)."""
    return "; ".join(s.listing().replace(" unknown type", "") for s in images)


def _named_image(signals: list[_Signal], signal: str | int | None) -> _Signal | None:
    """The image or image stack ``signal`` names (its index, or a title no spectrum image has),
    None when it names none (a spectrum image, or nothing: :func:`_assemble` says which)."""
    if signal is None:
        return None
    text = str(signal).strip()
    images = _images(signals)
    if text.lstrip("-").isdigit():
        match = [s for s in images if s.index == int(text)]
    elif _titled([s for s in signals if s.kind == "spectrum_image"], text):
        return None
    else:
        match = _titled(images, text)
    return match[0] if len(match) == 1 else None


def _image_alone(path: Path, image: _Signal, kind: str) -> xr.Dataset:
    """``image`` alone, as ``haadf`` (with ``image_kind`` ``kind``) or, an image stack, as ``movie``."""
    role = HAADF if image.kind == "image" else MOVIE
    ds = canonical_dataset(
        path, pixel_nm=image.pixel_nm, origin_nm=image.origin_nm,
        **({"haadf": image.data} if role == HAADF else {"movie": image.data, "frame_time": image.frame_time}),
    )
    if role == HAADF:
        ds[HAADF].attrs[ATTR_IMAGE_KIND] = kind
    return _with_metadata(ds, path, image, {role: image}, [])


def _chosen_image(path: Path, signals: list[_Signal], signal: str | int | None) -> _Signal:
    """The image or image stack ``signal`` names (index or title), or the file's only one."""
    images = _images(signals)
    listing = _image_listing(images) or "none"
    choose = "Choose one with --signal MODE=INDEX (emfuse ingest-modes; Python: signal=INDEX)"
    if signal is None:
        if len(images) == 1:
            return images[0]
        if not images:
            raise fail(path, f"it holds no image ({', '.join(s.describe() for s in signals)})",
                       "Give a file with a BF, DF or HRTEM image")
        raise fail(path, f"it holds {len(images)} images and one is taken per mode: {listing}", choose)
    text = str(signal).strip()
    if text.lstrip("-").isdigit():
        match = [s for s in signals if s.index == int(text)]
        problem = (f"signal {text} is {match[0].describe()}, not an image" if match
                   else f"signal {text} does not exist (it has signals 0 to {len(signals) - 1})")
    else:
        match = _titled(images, text)
        problem = (f"{len(match)} images are titled {text!r}" if match
                   else f"no image is titled {text!r}")
    if len(match) == 1 and match[0] in images:
        return match[0]
    raise fail(path, problem, f"{choose}; its images: {listing}")


# -- loading -----------------------------------------------------------------------


class _Capture(logging.Handler):
    """Collects RosettaSciIO's log warnings so they reach the user as IngestWarnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _load(path: Path, notes: list[str] | None = None) -> list[dict]:
    """RosettaSciIO's signals of ``path``, lazily. What it logs (why a stream is missing, say) becomes
    IngestWarnings, or goes to ``notes`` when a list is given (a listing shows them as lines)."""
    if path.suffix.lower() == ".bcf":
        _check_bcf_length(path)
    if path.suffix.lower() == ".zspy":
        raise _zspy_refused(path)
    module = importlib.import_module(f"rsciio.{PLUGINS[path.suffix.lower()]}")
    capture = _Capture()
    logger = logging.getLogger("rsciio")
    # its messages become IngestWarnings below, once: not also through RosettaSciIO's own
    # (coloured, stdout) handler and the application's handlers
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [capture], False
    try:
        signals = module.file_reader(str(path), lazy=True)
    except ImportError as exc:
        raise fail(
            path,
            f"RosettaSciIO needs the package {exc.name!r} for this file",
            f"Install it (pip install {exc.name})",
        ) from exc
    except Exception as exc:  # readers raise anything from struct.error to IndexError
        raise fail(
            path,
            f"RosettaSciIO cannot read it ({type(exc).__name__}: {exc}); the file is truncated, "
            "corrupt, or a variant RosettaSciIO does not know",
            "Copy or export the file again from the acquisition software",
        ) from exc
    finally:
        logger.handlers, logger.propagate = saved
    if notes is not None:
        notes.extend(capture.messages)
    else:
        for message in capture.messages:
            warnings.warn(f"{path}: RosettaSciIO: {message}", IngestWarning, stacklevel=4)
    if not signals:
        raise fail(path, "RosettaSciIO found no data in it", "Check that the file is complete")
    if path.suffix.lower() == ".bcf":
        signals = [_isolate_bcf_decoder(path, raw) for raw in signals]
    return signals


def _zspy_refused(path: Path) -> Exception:
    return fail(
        path,
        "HyperSpy's .zspy (Zarr) files are not read: RosettaSciIO's zspy plugin needs zarr 2 (its "
        "'zspy' extra pins zarr<3) and emfuse runs on zarr 3",
        "Save the signal as .hspy in HyperSpy (s.save('name.hspy')) and ingest that file",
    )


def _isolate_bcf_decoder(path: Path, raw: dict) -> dict:
    """The lazy Bruker hypermap (the only dask array a .bcf read gives) decoded in a child process."""
    data = raw["data"]
    if not isinstance(data, da.Array) or data.ndim != 3:
        return raw  # images come decoded already (numpy)
    isolated = _BcfSpectrumImage(path, data.shape, data.dtype)
    return {**raw, "data": isolated.to_dask(data.shape)}


# The child: RosettaSciIO's own (eager) read of the default hypermap, the one its lazy read
# returned, saved as .npy. Anything that goes wrong stays in the child.
_BCF_CHILD = """
import sys
import numpy as np
from rsciio.bruker import file_reader
signals = file_reader(sys.argv[1], select_type="spectrum_image", lazy=False)
np.save(sys.argv[2], np.ascontiguousarray(signals[0]["data"]))
"""


class _BcfSpectrumImage(FileArray):
    """A Bruker .bcf spectrum image, decoded in a child Python process when Dask needs it.

    RosettaSciIO decodes the packed hypermap with compiled code (``rsciio.bruker.unbcf_fast``)
    that does not check bounds: a corrupt pixel header makes it write outside its array,
    which kills the process with SIGSEGV or SIGBUS (or silently damages its memory). In a
    child process that becomes an :class:`IngestError` naming the file. It costs one
    interpreter start (about 0.5 s) and one copy of the decoded array through a temporary
    ``.npy`` file (in ``$TMPDIR``); the hypermap is decoded in one piece either way.
    """

    whole_only = True

    def _read(self, key: Any) -> np.ndarray:
        fix = "Copy the file again from the acquisition PC (or export it again from Esprit)"
        with tempfile.TemporaryDirectory(prefix="emfuse-bcf-") as tmp:
            out = Path(tmp) / "hypermap.npy"
            proc = subprocess.run(
                [sys.executable, "-c", _BCF_CHILD, self.path, str(out)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode < 0:
                try:
                    name = signal.Signals(-proc.returncode).name
                except ValueError:
                    name = f"signal {-proc.returncode}"
                raise fail(
                    self.path,
                    f"decoding its spectrum image crashed RosettaSciIO's Bruker decoder ({name}): "
                    "the file is corrupt",
                    fix,
                )
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines()
                raise fail(
                    self.path,
                    f"decoding its spectrum image failed ({lines[-1] if lines else 'no message'}); "
                    "the file is truncated or corrupt",
                    fix,
                )
            data = np.load(out, allow_pickle=False)
        if data.shape != self.shape:
            raise fail(
                self.path,
                f"its spectrum image decoded to shape {shape_str(data.shape)}, but its header says "
                f"{shape_str(self.shape)}: the file is corrupt",
                fix,
            )
        return data.astype(self.dtype, copy=False)[key]


def _check_bcf_length(path: Path) -> None:
    """Bruker .bcf files are AidAim SFS containers whose header gives the chunk size and
    count; a file shorter than that is truncated. Checked here because RosettaSciIO
    only notices when the spectrum image is decoded, after a lazy read has returned."""
    with open(path, "rb") as fh:
        head = fh.read(0x14C)
    if len(head) < 0x14C or head[:8] != b"AAMVHFSS":
        raise fail(
            path,
            "it does not start like a Bruker .bcf (SFS container) file: it is truncated, corrupt, "
            "or another format renamed .bcf",
            "Copy the file again from the acquisition PC (or export it again from Esprit)",
        )
    (chunk_size,) = struct.unpack_from("<I", head, 0x128)
    (n_chunks,) = struct.unpack_from("<I", head, 0x148)
    expected = 0x118 + chunk_size * n_chunks
    size = path.stat().st_size
    if size < expected:
        raise fail(
            path,
            f"the file has {size} bytes but its header declares {expected}: it is truncated "
            "(or its header is corrupt)",
            "Copy the file again from the acquisition PC",
        )


# -- classifying -------------------------------------------------------------------


def _axis_kind(axis: dict) -> str:
    units = str(axis.get("units") or "").strip()
    name = str(axis.get("name") or "").strip().lower()
    if ev_per_unit(units) is not None or "energy" in name:
        return "energy"
    if units.lower() in _TIME_UNITS or name in ("time", "frame", "frames"):
        return "time"
    return "space"


def _values(axis: dict) -> np.ndarray:
    """The axis' values in its own unit: offset + index * scale (HyperSpy's non-uniform
    axes carry their values as ``axis``)."""
    if axis.get("axis") is not None:
        return np.asarray(axis["axis"], dtype=np.float64)
    size = int(axis["size"])
    return float(axis.get("offset") or 0.0) + np.arange(size) * float(axis.get("scale") or 1.0)


def _step_nm(axis: dict) -> float | None:
    factor = nm_per_unit(axis.get("units"))
    return None if factor is None else float(axis.get("scale") or 1.0) * factor


def _offset_nm(axis: dict) -> float | None:
    factor = nm_per_unit(axis.get("units"))
    return None if factor is None else float(axis.get("offset") or 0.0) * factor


def _yx_calibration(axes: list[dict], yx: Sequence[int]) -> tuple[tuple, tuple]:
    """((dy, dx), (y0, x0)) in nm for the spatial axes ``yx``; None where not a length."""
    return (tuple(_step_nm(axes[i]) for i in yx), tuple(_offset_nm(axes[i]) for i in yx))


def _classify(path: Path, raw: dict, index: int = -1) -> _Signal:
    """The signal's role, with its metadata completed (RosettaSciIO's mapping applied)."""
    signal = _classify_data(raw)
    signal.index = index
    signal.original = raw.get("original_metadata") or {}
    signal.metadata, failed = complete_metadata(raw.get("metadata"), signal.original, raw.get("mapping"))
    signal.unmapped_metadata = [
        f"metadata of signal [{index}] {signal.title or '(untitled)'!r} not mapped: {item}" for item in failed
    ]
    for item in signal.unmapped_metadata:
        warnings.warn(f"{path}: {item}", IngestWarning, stacklevel=4)
    return signal


def _classify_data(raw: dict) -> _Signal:
    data, axes = raw["data"], list(raw.get("axes") or [])
    metadata = raw.get("metadata") or {}
    title = str((metadata.get("General") or {}).get("title") or "")
    signal_type = normalize_signal_type((metadata.get("Signal") or {}).get("signal_type"))
    shape = tuple(int(n) for n in data.shape)
    if [int(a.get("size", -1)) for a in axes] != list(shape):
        return _Signal(title, "other", data, note="axes do not match the data shape")
    kinds = [_axis_kind(a) for a in axes]
    space = [i for i, k in enumerate(kinds) if k == "space"]
    if kinds.count("energy") == 1:
        e = kinds.index("energy")
        factor = ev_per_unit(axes[e].get("units"))
        if factor is None:  # named like an energy axis, but eV/keV is not its unit
            note = (f"its energy axis {axes[e].get('name')!r} has the unit "
                    f"{axes[e].get('units')!r}, not eV or keV")
            kind = "uncalibrated" if len(shape) == 3 else "other"
            return _Signal(title, kind, data, signal_type=signal_type, note=note)
        energy = _values(axes[e]) * factor
        dispersion = None if axes[e].get("axis") is not None else float(axes[e].get("scale") or 1.0) * factor
        if len(shape) == 1:
            return _Signal(title, "spectrum", data, energy=energy, signal_type=signal_type,
                           dispersion_ev=dispersion)
        if len(shape) == 3 and len(space) == 2:
            data = data.transpose(*space, e)  # energy last
            pixel, origin = _yx_calibration(axes, space)
            return _Signal(title, "spectrum_image", data, pixel, energy, None, signal_type,
                           origin_nm=origin, dispersion_ev=dispersion)
        return _Signal(title, "other", data, note="not a spectrum image (y, x, energy)")
    if len(shape) == 2 and len(space) == 2:
        pixel, origin = _yx_calibration(axes, (0, 1))
        return _Signal(title, "image", data, pixel, origin_nm=origin)
    if len(shape) == 3 and signal_type is not None:  # a spectrum image, but which axis is energy?
        listing = ", ".join(f"{a.get('name')!r} in {a.get('units') or 'no unit'!r}" for a in axes)
        note = f"none of its axes ({listing}) is an energy axis in eV or keV"
        return _Signal(title, "uncalibrated", data, signal_type=signal_type, note=note)
    if len(shape) == 3 and "energy" not in kinds:
        frame = kinds.index("time") if "time" in kinds else 0
        yx = [i for i in range(3) if i != frame]
        data = data.transpose(frame, *yx)
        time = _values(axes[frame]) if kinds[frame] == "time" else None
        if time is not None and str(axes[frame].get("units")).strip() == "ms":
            time = time / 1e3
        pixel, origin = _yx_calibration(axes, yx)
        return _Signal(title, "stack", data, pixel, frame_time=time, origin_nm=origin)
    return _Signal(title, "other", data, note=f"{len(shape)}D with axes {kinds}")


# -- choosing what goes where ----------------------------------------------------------


def _size(signal: _Signal) -> int:
    return int(np.prod(signal.shape))


def _haadf_score(title: str) -> int:
    """How surely a title names an annular dark-field image (higher is surer)."""
    t = title.upper()
    if "HAADF" in t:
        return 3
    if re.search(r"(?<![A-Z])ADF", t):
        return 2
    if re.search(r"(?<![A-Z])DF", t):  # DF, DF-S, DF4
        return 1
    return 0


def _image_kind(image: _Signal, beside_chemistry: bool, in_sem: bool = False) -> str:
    """What the image stored as ``haadf`` is: ``"haadf"`` when its title says HAADF/ADF/DF or it
    was acquired with a spectrum image or maps in a (S)TEM (the Z-contrast image of a STEM
    acquisition), else ``"image"``: a lone image (a TEM camera frame, say) is not known to be a
    HAADF, nor is the image beside an SEM's spectrum image (``in_sem``: a secondary- or
    backscattered-electron detector, e.g. ``bcf_v2_50x50px.bcf``'s 'Ch 1')."""
    if _haadf_score(image.title) > 0:
        return HAADF
    return HAADF if beside_chemistry and not in_sem else "image"


def _in_sem(*signals: _Signal | None) -> bool:
    """Whether the signals were acquired in an SEM: their metadata's ``Acquisition_instrument``
    is an SEM's, or their signal type is (``EDS_SEM``)."""
    for one in signals:
        if one is None:
            continue
        instrument = one.metadata.get("Acquisition_instrument")
        if isinstance(instrument, dict) and "SEM" in instrument:
            return True
        if (one.signal_type or "").upper().endswith("_SEM"):
            return True
    return False


def _pick_spectrum(
    path: Path,
    signals: list[_Signal],
    signal_type: str | None,
    signal: str | int | None,
    unmapped: list[str],
) -> _Signal | None:
    spectrum_images = [s for s in signals if s.kind == "spectrum_image"]
    if signal is not None:
        chosen = _chosen_signal(path, signals, spectrum_images, signal)
        if signal_type and chosen.signal_type not in (None, signal_type):
            raise fail(
                path,
                f"signal {signal!r} is a {chosen.signal_type} spectrum image, but signal_type "
                f"{signal_type!r} was asked for",
                "Drop one of the two, or make them agree",
            )
        candidates = [chosen]
    else:
        candidates = [s for s in spectrum_images if signal_type in (None, s.signal_type)]
        candidates += [s for s in spectrum_images if s.signal_type is None and signal_type]
    if spectrum_images and not candidates:
        kinds = sorted({str(s.signal_type) for s in spectrum_images})
        raise fail(
            path,
            f"signal_type {signal_type!r} was asked for, but its spectrum images are {kinds}",
            "Drop signal_type or ask for one of those",
        )
    if not candidates:
        return None
    if len(candidates) > 1:
        listing = "; ".join(s.listing() for s in candidates)
        raise fail(
            path,
            f"it holds {len(candidates)} spectrum images{' of type ' + signal_type if signal_type else ''} "
            f"and one per store is ingested: {listing}",
            "Choose one with --signal INDEX (in a catalog: signal: INDEX; Python: signal=INDEX), the number in "
            "brackets; or, to restore or ingest one of its images alone, give that image's index (emfuse "
            "ingest FILE --list lists them)",
        )
    chosen = candidates[0]
    for s in spectrum_images:
        if s is not chosen:
            unmapped.append(
                f"{s.describe()} ({s.signal_type or 'unknown type'}): one spectrum image per "
                f"store (this is signal {s.index}: choose it with --signal {s.index})"
            )
    return chosen


def _chosen_signal(
    path: Path, signals: list[_Signal], spectrum_images: list[_Signal], signal: str | int
) -> _Signal:
    """The spectrum image ``signal`` names: an index in RosettaSciIO's list, or a title. The
    messages list what ``--signal`` can take: the spectrum images, then the images (taken alone)."""
    images = _images(signals)
    listing = "; ".join(s.listing() for s in spectrum_images) or "none"
    if images:
        listing += "; or an image, taken alone: " + _image_listing(images)
    text = str(signal).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        match = [s for s in signals if s.index == index]
        if not match:
            raise fail(
                path,
                f"--signal {index}: it has signals 0 to {len(signals) - 1}",
                f"Choose one of its spectrum images: {listing}",
            )
        if match[0].kind != "spectrum_image":  # images are taken before (_named_image): a spectrum, say
            raise fail(
                path,
                f"--signal {index} is {match[0].describe()}, neither a spectrum image (y, x, energy) nor an image",
                f"Choose one of its spectrum images: {listing}",
            )
        return match[0]
    match = _titled(spectrum_images, text)
    if len(match) != 1:
        problem = (f"{len(match)} spectrum images are titled {text!r}" if match
                   else f"no spectrum image or image is titled {text!r}")
        raise fail(path, problem, f"Choose one by its index with --signal INDEX: {listing}")
    return match[0]


def _pick_haadf(
    images: list[_Signal], grid: tuple[int, ...] | None, n_signals: int, notes: list[str]
) -> _Signal | None:
    fitting = [s for s in images if grid is None or s.yx == grid]
    if not fitting:
        return None
    chosen = max(fitting, key=lambda s: _haadf_score(s.title))
    if _haadf_score(chosen.title) == 0 and n_signals > 1:
        notes.append(
            f"image {chosen.title or '(untitled)'!r} was taken as haadf although its title "
            "does not say HAADF, ADF or DF"
        )
    return chosen


def _assemble(
    path: Path,
    signals: list[_Signal],
    elements: Sequence[str] | None,
    signal_type: str | None,
    signal: str | int | None = None,
) -> xr.Dataset:
    unmapped: list[str] = []
    notes: list[str] = []
    spectrum = _pick_spectrum(path, signals, signal_type, signal, unmapped)
    uncalibrated = [s for s in signals if s.kind == "uncalibrated"]
    if spectrum is None and uncalibrated:
        s = uncalibrated[0]
        raise fail(
            path,
            f"its {s.signal_type} spectrum image {s.title or '(untitled)'!r} {shape_str(s.shape)} "
            f"has no calibrated energy axis: {s.note}, so the energy of each channel is unknown",
            "Calibrate the energy axis (eV) in the acquisition software (DigitalMicrograph, Velox, "
            "Esprit) and save again, or save the spectrum image as .npz/.h5 with an 'energy' array "
            "in eV",
        )
    stacks = [s for s in signals if s.kind == "stack"]
    grid = spectrum.yx if spectrum else (stacks[0].yx if stacks else None)
    movie = next((s for s in stacks if s.yx == grid), None)
    images = [s for s in signals if s.kind == "image"]
    named = [s for s in images if is_symbol(s.title.strip())]
    haadf = _pick_haadf([s for s in images if s not in named], grid, len(signals), notes)
    if grid is None:
        grid = haadf.yx if haadf else (named[0].yx if named else None)
    maps = _pick_maps(path, [s for s in named if s.yx == grid], elements, spectrum is not None)
    mapped = [s for s in (spectrum, movie, haadf, *maps) if s is not None]
    unmapped += _describe_rest(signals, mapped, spectrum, grid)
    if not mapped:
        _fail_nothing(path, signals)
    primary = mapped[0]
    notes += _calibration_notes(primary, mapped[1:])
    for note in notes:
        warnings.warn(f"{path}: {note}", IngestWarning, stacklevel=3)
    warn_unmapped(path, unmapped)
    ds = canonical_dataset(
        path,
        haadf=haadf.data if haadf else None,
        spectrum=spectrum.data if spectrum else None,
        energy=spectrum.energy if spectrum else None,
        maps=da.stack([lazy(m.data, HAADF) for m in maps]) if maps else None,
        elements=[m.title.strip() for m in maps] or None,
        movie=movie.data if movie else None,
        pixel_nm=primary.pixel_nm,
        origin_nm=primary.origin_nm,
        frame_time=movie.frame_time if movie else None,
        signal_type=(spectrum.signal_type if spectrum else None) or signal_type,
        unmapped=unmapped,
    )
    if notes:
        ds.attrs[ATTR_INGEST_NOTES] = notes
    if haadf is not None:
        ds[HAADF].attrs[ATTR_IMAGE_KIND] = _image_kind(haadf, spectrum is not None or bool(maps),
                                                       _in_sem(haadf, spectrum, *maps))
    roles = {SPECTRUM: spectrum, HAADF: haadf, MOVIE: movie}
    return _with_metadata(ds, path, primary, {k: v for k, v in roles.items() if v}, maps)


def _with_metadata(
    ds: xr.Dataset, path: Path, primary: _Signal, roles: dict[str, _Signal], maps: list[_Signal]
) -> xr.Dataset:
    """The instrument metadata of the signals that were ingested, on the Dataset and its variables.

    Dataset: the key figures of ``primary`` (completed from the other ingested signals
    where it lacks one), its whole ``metadata`` and ``original_metadata`` as JSON, and
    ``metadata_sources`` (JSON): which signal each variable and each key figure came from.
    Each variable: its signal's index, title, pixel size, offset and key figures.
    """
    own = {name: _figures(s) for name, s in roles.items()}
    if maps:
        own[MAPS] = _figures(maps[0])
    primary_name = next(name for name, s in roles.items() if s is primary) if primary in roles.values() else MAPS
    figures: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in [primary_name, *[n for n in own if n != primary_name]]:
        for key, value in own[name].items():
            if key not in figures:
                figures[key], origin[key] = value, name
    for name, s in roles.items():
        ds[name].attrs.update(_source_attrs([s]), **own[name])
    if maps:
        ds[MAPS].attrs.update(_source_attrs(maps), **own[MAPS])
    sources = {name: _source_record(s) for name, s in roles.items()}
    if maps:
        sources[MAPS] = {m.title.strip(): _source_record(m) for m in maps}
    ds.attrs.update(figures)
    failed = [item for s in [*roles.values(), *maps] for item in s.unmapped_metadata]
    if failed:
        ds.attrs[ATTR_METADATA_UNMAPPED] = failed
    ds.attrs.update(
        metadata=to_json(primary.metadata),
        original_metadata=to_json(primary.original),
        metadata_sources=to_json({"file": path.name, "reader": f"rsciio.{PLUGINS[path.suffix.lower()]}",
                                  "metadata_from": primary_name, "variables": sources,
                                  "key_figures": origin}),
    )
    return ds


def _figures(s: _Signal) -> dict[str, Any]:
    return key_figures(s.metadata, dispersion_ev=s.dispersion_ev)


def _source_record(s: _Signal) -> dict[str, Any]:
    return {"signal": s.index, "title": s.title, "shape": list(s.shape)}


def _source_attrs(signals: list[_Signal]) -> dict[str, Any]:
    """Variable attributes naming the file's signal(s) behind it, with their calibration."""
    def nm(values: tuple) -> list:
        return [None if v is None else float(v) for v in values]

    if len(signals) == 1:
        s = signals[0]
        return {"source_signal": s.index, "source_title": s.title,
                "pixel_nm": nm(s.pixel_nm), "offset_nm": nm(s.origin_nm)}
    return {"source_signal": [s.index for s in signals], "source_title": [s.title for s in signals],
            "pixel_nm": nm(signals[0].pixel_nm), "offset_nm": nm(signals[0].origin_nm)}


def _pick_maps(
    path: Path, maps: list[_Signal], elements: Sequence[str] | None, has_spectrum: bool
) -> list[_Signal]:
    """The file's element maps on the grid; with ``elements``, those of them, in that order.

    An element without a map is integrated from the spectrum image later (``emfuse fuse``);
    without a spectrum image it cannot be had, and the file is refused.
    """
    if elements is None:
        return maps
    by_name = {m.title.strip(): m for m in maps}
    missing = [e for e in elements if e not in by_name]
    if missing and not has_spectrum:
        held = f"maps of {list(by_name)} on the chosen grid" if by_name else "no element maps"
        raise fail(
            path,
            f"element(s) {missing} asked for, but the file has {held} and no spectrum image to "
            "integrate them from",
            "Choose elements among those in the file" if by_name
            else "Leave --elements out, or ingest the file that holds the spectrum image",
        )
    return [by_name[e] for e in elements if e in by_name]


def _describe_rest(
    signals: list[_Signal], mapped: list[_Signal], spectrum: _Signal | None, grid: Any
) -> list[str]:
    rest = []
    spectra = [s for s in signals if s.kind == "spectrum"]
    if spectra:
        shapes = sorted({shape_str(s.shape) for s in spectra})
        reason = "" if spectrum else "; the file holds no spectrum image (y, x, energy)"
        rest.append(f"{len(spectra)} single spectra {', '.join(shapes)}{reason}")
    for s in signals:
        if s in mapped or s.kind in ("spectrum", "spectrum_image"):
            continue
        if s.kind in ("other", "uncalibrated"):
            rest.append(f"{s.describe()}: {s.note}")
        elif grid is not None and s.yx != grid:
            rest.append(f"{s.describe()}: its (y, x) grid differs from {shape_str(grid)}")
        elif s.kind == "image" and is_symbol(s.title.strip()):
            rest.append(f"{s.describe()}: element map not among the elements asked for")
        elif s.kind == "image":
            rest.append(f"{s.describe()}: neither haadf nor an element map")
        else:
            rest.append(f"{s.describe()}: only one movie per store")
    return rest


def _calibration_notes(primary: _Signal, others: list[_Signal]) -> list[str]:
    notes = []
    for s in others:
        for axis, a, b in zip("yx", primary.pixel_nm, s.pixel_nm):
            if a and b and abs(a - b) > 0.01 * abs(a):
                notes.append(
                    f"{s.describe()} has {axis} pixel size {b:.4g} nm, {primary.describe()} "
                    f"{a:.4g} nm; the coordinates use {a:.4g} nm"
                )
    return notes


def _fail_nothing(path: Path, signals: list[_Signal]) -> None:
    listing = ", ".join(s.describe() for s in signals)
    if all(s.kind == "spectrum" for s in signals):
        raise fail(
            path,
            f"it holds only single spectra ({listing}), not a spectrum image; "
            "a spectrum image (y, x, energy) is needed",
            "Ingest the spectrum-image acquisition (a map), not a single spectrum",
        )
    raise fail(
        path,
        f"nothing in it maps to haadf, spectrum, maps or movie ({listing})",
        "emfuse ingests images, image stacks (movies), spectrum images and element maps; "
        "emfuse ingest FILE --list shows how each signal of the file is taken",
    )
