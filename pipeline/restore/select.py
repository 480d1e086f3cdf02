"""Which restoration model for which data: ``--model auto``.

emfuse's own models are trained per modality and resolution (``stem-high``, ``stem-low``,
``tem-high``, ``tem-low``, ``sem``; :data:`emfuse.pipeline.restore.MODEL_FILES`). ``auto`` reads the
instrument metadata that ingest kept (:mod:`emfuse.stores.metadata`) and the pixel size, guesses the
modality (:func:`infer_modality`) and picks the model trained for it (:func:`resolve_model`).

The rules, first one that decides wins:

1. **acquisition mode**: ``acquisition_mode`` (of the image, else of the file) ``STEM``,
   ``TEM`` or ``SEM``;
2. **detector**: the image's detector or title (and the file's detector) names a scanned
   transmission detector (HAADF, ADF, DF, BF, ABF, DPC: STEM), a camera (CCD, CMOS, Ceta,
   K2/K3, OneView, ...: TEM) or an SEM detector (SE, BSE, ETD, TLD, in-lens: SEM);
3. **SEM instrument**: the metadata tree is an SEM's (``Acquisition_instrument.SEM``, signal
   type ``EDS_SEM``) or the microscope's name says SEM (Helios, Quanta, NanoSEM, ...);
4. **beam energy**: at most :data:`SEM_MAX_BEAM_ENERGY_KEV` and no transmission detector
   named: SEM;
5. **HAADF** (``image_kind == "haadf"``: titled HAADF/ADF/DF, or beside a (S)TEM's spectrum
   image): STEM (a spectrum image is scanned);
6. nothing decides: STEM, what the default model is, with ``confident=False``.

The resolution is ``"high"`` when the pixel is at most :data:`HIGH_RESOLUTION_MAX_PIXEL_NM`,
``"low"`` above; without a pixel size in nm, ``"high"`` (the default model's) and, except for
SEM (one model for both), ``confident=False``. A guess is also not confident when two of the
rules 1-3 disagree (the first one still decides).

Everything here is pure: it reads the attribute dicts it is given, nothing else (the only
I/O is :func:`available_models`, which lists the package's model folder).

Examples
--------
>>> guess = infer_modality({"acquisition_mode": "STEM"}, {"title": "HAADF"}, 0.012)
>>> guess.modality, guess.resolution, guess.confident
('stem', 'high', True)
>>> guess.reason
"STEM: acquisition_mode 'STEM' in the file's metadata and the image's title 'HAADF' names a scanned transmission (STEM) detector; pixel 0.012 nm <= 0.05 nm: high resolution"
>>> resolve_model("auto", guess, available={"default", "stem-high"}).model
'stem-high'
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from . import MODEL_FILES

STEM, TEM, SEM = "stem", "tem", "sem"
HIGH, LOW = "high", "low"
AUTO = "auto"
DEFAULT = "default"

#: Largest pixel (nm) of a "high resolution" image. Atomic columns lie 0.2-0.4 nm apart in
#: projection, so at 0.05 nm per pixel or less they are 4-8 px apart or more: resolved, with
#: their shape sampled, which is what the high-resolution models were trained on. Coarser
#: pixels show particles, grains and interfaces, not columns: the low-resolution models.
HIGH_RESOLUTION_MAX_PIXEL_NM = 0.05
#: Highest beam energy (kV) taken as an SEM's. SEMs accelerate at 0.1-30 kV; (S)TEMs at
#: 60-300 kV (a thin specimen must be transparent to the beam), so at or below 30 kV without
#: a transmission detector the image is an SEM's.
SEM_MAX_BEAM_ENERGY_KEV = 30.0

#: The own model (in :data:`emfuse.pipeline.restore.MODEL_FILES`) trained for each (modality, resolution).
MODALITY_MODELS: dict[tuple[str, str], str] = {
    (STEM, HIGH): "stem-high", (STEM, LOW): "stem-low",
    (TEM, HIGH): "tem-high", (TEM, LOW): "tem-low",
    (SEM, HIGH): "sem", (SEM, LOW): "sem",  # one SEM model: its images rarely resolve columns
}

_WORD = {STEM: "STEM", TEM: "TEM", SEM: "SEM"}
# detector (or image title) words, matched against whole words of the name, lower case
_DETECTOR_WORDS: dict[str, re.Pattern[str]] = {
    STEM: re.compile(r"(ha|ma|la)?adf\d*|a?bf\d*|df\d*|i?dpc|stem"),
    TEM: re.compile(r"ccd|cmos|ceta\d*|k[23]|oneview|ultrascan|us\d{3,4}|orius\d*|falcon\d*|rio\d*"
                    r"|metro|eagle|camera|flucam|tem"),
    SEM: re.compile(r"se\d?|bsed?|etd|tld|inlens|cbs|sed|icd|vcd|sem"),
}
_DETECTOR_WHAT = {STEM: "a scanned transmission (STEM) detector", TEM: "a camera (TEM)",
                  SEM: "an SEM detector"}
# microscope names that are SEMs (FIB-SEMs included)
_SEM_MICROSCOPE = re.compile(r"(e|nano|fib|cryo)?sem|helios|quanta|scios|apreo|verios|crossbeam|jsm")
_MODES = {"stem": STEM, "scanning": STEM, "tem": TEM, "sem": SEM}
# units of the y and x coordinates -> nm
NM_PER_UNIT = {"nm": 1.0, "pm": 1e-3, "Å": 0.1, "A": 0.1, "angstrom": 0.1, "µm": 1e3, "um": 1e3,
               "mm": 1e6, "m": 1e9}


@dataclass(frozen=True)
class ModalityGuess:
    """What :func:`infer_modality` concluded, and why.

    Attributes
    ----------
    modality : {"stem", "tem", "sem"}
        The imaging modality.
    resolution : {"high", "low"}
        ``"high"`` when the pixel is at most :data:`HIGH_RESOLUTION_MAX_PIXEL_NM` (atomic columns sampled).
    reason : str
        One sentence: which metadata decided.
    confident : bool
        False for a fallback or conflicting metadata: the user should check.
    """

    modality: str  # "stem", "tem" or "sem"
    resolution: str  # "high" or "low"
    reason: str  # one sentence: which metadata decided
    confident: bool  # False: a fallback or conflicting metadata; the user should check


@dataclass(frozen=True)
class ModelChoice:
    """The concrete model a ``--model`` value stands for (:func:`resolve_model`).

    :meth:`record` is what a restore job stores as its ``model_choice`` attribute.

    Attributes
    ----------
    asked : str
        What was given: ``"auto"``, ``"default"``, an r_em name, an own name or a path.
    model : str
        The model used: an own name (``"stem-high"``, ``"default"``), an r_em name or a path.
    reason : str
        Why this model.
    confident : bool
        False when ``auto`` had to guess (the ``model-auto-unsure`` warning).
    modality, resolution : str or None
        ``auto`` only: the guessed modality and resolution.
    wanted : str or None
        ``auto`` only: the own model the guess asked for (it may be missing from this version).
    """

    asked: str  # what was given: "auto", "default", an r_em name, an own name or a path
    model: str  # the model used: an own name ("stem-high", "default"), an r_em name or a path
    reason: str
    confident: bool = True
    modality: str | None = None  # auto only: the guess
    resolution: str | None = None
    wanted: str | None = None  # auto only: the own model the guess asked for (may be missing)

    def record(self) -> dict[str, Any]:
        """The JSON-able record (``model_choice``).

        Examples
        --------
        >>> resolve_model("default").record()["model"]
        'default'
        """
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelChoice:
        """A choice read back from a stored record (unknown keys ignored).

        Examples
        --------
        >>> ModelChoice.from_record(resolve_model("default").record()) == resolve_model("default")
        True
        """
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


# -- reading the attributes ---------------------------------------------------------------


def _text(attrs: Mapping[str, Any], key: str) -> str:
    value = attrs.get(key)
    return "" if value is None else str(value).strip()


def _words(name: str) -> list[str]:
    """The whole words of a name, lower case: 'BM-Ceta' -> ['bm', 'ceta'].

    >>> _words("DF-S"), _words("TalosF200X 200 kV")
    (['df', 's'], ['talosf200x', '200', 'kv'])
    """
    return [w for w in re.split(r"[^0-9a-zà-ÿ]+", name.lower()) if w]


def detector_modality(name: str) -> str | None:
    """The modality a detector (or image title) names, or None.

    Parameters
    ----------
    name : str
        A detector name or an image title.

    Returns
    -------
    {"stem", "tem", "sem"} or None
        The modality its words name; None when none does.

    Examples
    --------
    >>> [detector_modality(n) for n in ("HAADF", "DF4", "BM-Ceta", "K3", "BSE", "SuperX", "Ch 1")]
    ['stem', 'stem', 'tem', 'tem', 'sem', None, None]
    """
    for word in _words(name):
        for modality, pattern in _DETECTOR_WORDS.items():
            if pattern.fullmatch(word):
                return modality
    return None


def mode_modality(mode: str) -> str | None:
    """The modality an acquisition mode names ('STEM', 'TEM', 'SEM', DigitalMicrograph's 'Scanning').

    Parameters
    ----------
    mode : str
        The acquisition mode recorded in the file's metadata.

    Returns
    -------
    {"stem", "tem", "sem"} or None
        The modality it names; None when it names none.

    Examples
    --------
    >>> mode_modality("STEM"), mode_modality("TEM"), mode_modality("imaging")
    ('stem', 'tem', None)
    """
    for word in _words(mode):
        if word in _MODES:
            return _MODES[word]
    return None


def _metadata_tree(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The store's HyperSpy metadata tree (a JSON string at ingest), {} when absent or unreadable."""
    tree = attrs.get("metadata")
    if isinstance(tree, str):
        try:
            tree = json.loads(tree)
        except ValueError:
            return {}
    return tree if isinstance(tree, Mapping) else {}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- the rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clue:
    modality: str
    text: str
    strong: bool = True  # rules 1-3: a disagreement among them makes the guess unsure


def _mode_clues(attrs: Mapping[str, Any], image_attrs: Mapping[str, Any]) -> list[_Clue]:
    for source in (image_attrs, attrs):
        mode = _text(source, "acquisition_mode")
        modality = mode_modality(mode) if mode else None
        if modality:
            return [_Clue(modality, f"acquisition_mode {mode!r} in the file's metadata")]
    return []


def _detector_clues(attrs: Mapping[str, Any], image_attrs: Mapping[str, Any]) -> list[_Clue]:
    clues, seen = [], set()
    for source, key, owner in ((image_attrs, "detector", "the image's"), (image_attrs, "title", "the image's"),
                               (image_attrs, "source_title", "the image's"), (attrs, "detector", "the file's")):
        name = _text(source, key)
        modality = detector_modality(name) if name else None
        if modality and name not in seen:
            seen.add(name)
            what = "detector" if key == "detector" else "title"
            clues.append(_Clue(modality, f"{owner} {what} {name!r} names {_DETECTOR_WHAT[modality]}"))
    return clues


def _sem_instrument_clues(attrs: Mapping[str, Any]) -> list[_Clue]:
    tree = _metadata_tree(attrs)
    instrument = tree.get("Acquisition_instrument")
    clues = []
    if isinstance(instrument, Mapping) and SEM.upper() in instrument and "TEM" not in instrument:
        clues.append(_Clue(SEM, "the file's metadata describe an SEM (Acquisition_instrument.SEM)"))
    signal = tree.get("Signal")
    signal_type = _text(signal, "signal_type") if isinstance(signal, Mapping) else ""
    if signal_type.upper().endswith("_SEM"):
        clues.append(_Clue(SEM, f"signal type {signal_type!r}"))
    microscope = _text(attrs, "microscope")
    if microscope and any(_SEM_MICROSCOPE.fullmatch(w) for w in _words(microscope)):
        clues.append(_Clue(SEM, f"the microscope {microscope!r} is an SEM"))
    return clues


def _beam_energy_clues(attrs: Mapping[str, Any], image_attrs: Mapping[str, Any],
                       transmission: bool) -> list[_Clue]:
    energy = _number(image_attrs.get("beam_energy_kev", attrs.get("beam_energy_kev")))
    if energy is None or energy > SEM_MAX_BEAM_ENERGY_KEV or transmission:
        return []
    return [_Clue(SEM, f"beam energy {energy:g} kV <= {SEM_MAX_BEAM_ENERGY_KEV:g} kV and no transmission "
                       "detector named", strong=False)]


def _haadf_clues(image_attrs: Mapping[str, Any]) -> list[_Clue]:
    if _text(image_attrs, "image_kind").lower() != "haadf":
        return []
    return [_Clue(STEM, "ingest took the image for a HAADF (or DF) by its title or its place beside a "
                        "spectrum image, which is scanned",
                  strong=False)]


def _resolution(pixel_size_nm: float | None) -> tuple[str, str | None]:
    """("high" or "low", the sentence); the sentence is None when the pixel size is unknown."""
    pixel = _number(pixel_size_nm)
    if pixel is None or pixel <= 0:
        return HIGH, None
    limit = HIGH_RESOLUTION_MAX_PIXEL_NM
    if pixel <= limit:
        return HIGH, f"pixel {pixel:.3g} nm <= {limit:g} nm: high resolution"
    return LOW, f"pixel {pixel:.3g} nm > {limit:g} nm: low resolution"


def infer_modality(attrs: Mapping[str, Any], image_attrs: Mapping[str, Any],
                   pixel_size_nm: float | None) -> ModalityGuess:
    """Guess the modality and resolution of an image from the metadata ingest kept.

    Parameters
    ----------
    attrs
        The store's attributes (key figures such as ``acquisition_mode``, ``detector``,
        ``microscope``, ``beam_energy_kev``, and ``metadata``, the HyperSpy tree as JSON).
    image_attrs
        The image variable's attributes (``title``, ``image_kind``, its own key figures).
    pixel_size_nm
        The pixel size in nm, None when the image is not calibrated.

    Returns
    -------
    ModalityGuess
        ``modality`` ("stem", "tem", "sem"), ``resolution`` ("high", "low"), ``reason`` and
        ``confident``; the rules are in the module's docstring.

    Examples
    --------
    >>> infer_modality({}, {"acquisition_mode": "TEM", "detector": "BM-Ceta"}, 21.5).reason
    "TEM: acquisition_mode 'TEM' in the file's metadata and the image's detector 'BM-Ceta' names a camera (TEM); pixel 21.5 nm > 0.05 nm: low resolution"
    >>> guess = infer_modality({}, {}, None)
    >>> guess.modality, guess.resolution, guess.confident
    ('stem', 'high', False)
    """
    strong = _mode_clues(attrs, image_attrs) + _detector_clues(attrs, image_attrs) + _sem_instrument_clues(attrs)
    transmission = any(c.modality in (STEM, TEM) for c in _detector_clues(attrs, image_attrs))
    clues = strong + _beam_energy_clues(attrs, image_attrs, transmission) + _haadf_clues(image_attrs)
    resolution, pixel = _resolution(pixel_size_nm)
    if not clues:
        reason = ("nothing in the metadata says STEM, TEM or SEM (no acquisition mode, detector, instrument "
                  "type or beam energy): STEM assumed, the default model's modality")
        return ModalityGuess(STEM, resolution, _join(reason, pixel, STEM), False)
    modality = clues[0].modality
    agreeing = [c.text for c in clues if c.modality == modality]
    against = [c for c in strong if c.modality != modality]
    reason = f"{_WORD[modality]}: " + _listing(agreeing)
    if against:
        reason += " (but " + "; ".join(f"{c.text}: {_WORD[c.modality]}" for c in against) + ")"
    confident = not against and (pixel is not None or modality == SEM)
    return ModalityGuess(modality, resolution, _join(reason, pixel, modality), confident)


def _listing(texts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'.

    >>> _listing(["a"]), _listing(["a", "b", "c"])
    ('a', 'a, b and c')
    """
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]


def _join(reason: str, pixel: str | None, modality: str) -> str:
    if pixel is not None:
        return f"{reason}; {pixel}"
    if modality == SEM:
        return reason
    return f"{reason}; no pixel size in nm: high resolution assumed"


def pixel_size_nm(coords: Mapping[str, Any]) -> float | None:
    """The pixel size in nm from the ``y`` and ``x`` coordinates (the larger spacing), or None.

    Ingest writes them in nm (``units="nm"``) when the file gives a pixel size, as pixel
    indices (``units="px"``) otherwise: those give None.

    Parameters
    ----------
    coords : mapping
        The coordinates of a store (``ds.coords``), with ``y`` and ``x``.

    Returns
    -------
    float or None
        The larger of the two spacings in nm; None without nm coordinates.

    Examples
    --------
    >>> import xarray as xr, numpy as np
    >>> ds = xr.Dataset(coords={"y": ("y", np.arange(3) * 0.02, {"units": "nm"}),
    ...                         "x": ("x", np.arange(4) * 0.025, {"units": "nm"})})
    >>> round(pixel_size_nm(ds.coords), 6), pixel_size_nm(xr.Dataset(coords={"y": [0.0, 1.0]}).coords)
    (0.025, None)
    """
    steps = []
    for dim in ("y", "x"):
        if dim not in coords:
            continue
        coord = coords[dim]
        factor = NM_PER_UNIT.get(str(coord.attrs.get("units", "")).strip())
        if factor is None or coord.size < 2:
            continue
        step = abs(float(coord[1]) - float(coord[0])) * factor
        if math.isfinite(step) and step > 0:
            steps.append(step)
    return max(steps) if steps else None


# -- from a --model value to a model ----------------------------------------------------------


def available_models() -> set[str]:
    """The own models (names of :data:`emfuse.pipeline.restore.MODEL_FILES`) whose file this version has."""
    return {name for name, path in MODEL_FILES.items() if path.is_file()}


def resolve_model(name: str | os.PathLike | None, guess: ModalityGuess | None = None, *,
                  available: Collection[str] | None = None) -> ModelChoice:
    """The concrete model ``name`` stands for.

    Parameters
    ----------
    name
        ``"auto"``: the own model trained for ``guess`` (``MODALITY_MODELS``), or
        ``"default"`` when this version does not have that file; ``None`` or ``"default"``:
        the default model; anything else (an own name such as ``"tem-low"``, an
        ``r_em:`` name, a file path) is kept as it is (checked when loaded).
    guess
        The data's :class:`ModalityGuess`; needed for ``"auto"``.
    available
        The own models present (default :func:`available_models`).

    Examples
    --------
    >>> tem = ModalityGuess("tem", "low", "TEM: ...", True)
    >>> choice = resolve_model("auto", tem, available={"default"})
    >>> choice.model, choice.wanted
    ('default', 'tem-low')
    >>> resolve_model("auto", tem, available={"default", "tem-low"}).model
    'tem-low'
    >>> resolve_model("r_em:sfr_hrtem").model
    'r_em:sfr_hrtem'
    """
    asked = DEFAULT if name is None else str(name).strip()
    if asked.lower() != AUTO:
        why = "the default model (the universal model)" if asked == DEFAULT else "named with --model"
        return ModelChoice(asked, asked, why)
    if guess is None:
        raise ValueError("model 'auto' needs a guess of the modality (infer_modality)")
    present = available_models() if available is None else set(available)
    wanted = MODALITY_MODELS[guess.modality, guess.resolution]
    if wanted in present:
        model, reason = wanted, f"{guess.reason}. Model {wanted}"
    else:
        model = DEFAULT
        reason = (f"{guess.reason}. This version has no model of its own for {wanted} (a model fine-tuned "
                  "for it did not beat the default on the held-out families): the default model, trained "
                  "on every modality, restores it")
    return ModelChoice(AUTO, model, reason, guess.confident, guess.modality, guess.resolution, wanted)


__all__ = ["AUTO", "HIGH_RESOLUTION_MAX_PIXEL_NM", "MODALITY_MODELS", "ModalityGuess", "ModelChoice",
           "SEM_MAX_BEAM_ENERGY_KEV", "available_models", "detector_modality", "infer_modality",
           "mode_modality", "pixel_size_nm", "resolve_model"]
