"""Instrument metadata kept at ingest: the figures a scientist checks, and the whole tree.

RosettaSciIO gives every signal two trees: ``metadata`` (HyperSpy's standard names and
units: ``Acquisition_instrument.TEM.beam_energy`` in keV, ``camera_length`` in mm, ...) and
``original_metadata`` (what the file itself says), plus a ``mapping`` from paths of the
second to paths of the first that HyperSpy applies when it loads a file (most Velox,
DigitalMicrograph and TIA figures arrive that way). :func:`complete_metadata` applies it
the same way, so emfuse keeps what HyperSpy would show.

A store keeps

* the key figures as plain attributes with their unit in the name (:data:`KEY_FIGURES`),
* the whole ``metadata`` tree and the ``original_metadata`` tree, each as one JSON
  string (:func:`to_json`: numpy types, bytes and dates made JSON-safe, large arrays
  summarised).

Examples
--------
>>> md = {"General": {"date": "2016-08-09", "time": "14:48:10"},
...       "Acquisition_instrument": {"TEM": {"beam_energy": 200.0}}}
>>> figures = key_figures(md)
>>> figures["acquired"], figures["beam_energy_kev"]
('2016-08-09T14:48:10', 200.0)
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# attribute name -> (path below Acquisition_instrument.<TEM|SEM>, unit the HyperSpy tree uses)
_INSTRUMENT_PATHS: dict[str, tuple[str, ...]] = {
    "beam_energy_kev": ("beam_energy",),
    "magnification": ("magnification",),
    "camera_length_mm": ("camera_length",),
    "microscope": ("microscope",),
    "acquisition_mode": ("acquisition_mode",),
    "eds_elevation_deg": ("Detector.EDS.elevation_angle",),
    "eds_azimuth_deg": ("Detector.EDS.azimuth_angle",),
    "live_time_s": ("Detector.EDS.live_time",),
    "real_time_s": ("Detector.EDS.real_time",),
    "energy_resolution_mnka_ev": ("Detector.EDS.energy_resolution_MnKa",),
    "eels_collection_angle_mrad": ("Detector.EELS.collection_angle",),
    "eels_convergence_angle_mrad": ("convergence_angle", "Detector.EELS.convergence_angle"),
    "detector": ("Detector.EDS.detector_type", "Detector.EELS.spectrometer", "Detector.Camera.Name"),
}
_TEXT = {"microscope", "acquisition_mode", "detector"}

#: The key figures a canonical store may carry as plain attributes, with what each one is.
KEY_FIGURES: dict[str, str] = {
    "acquired": "start of the acquisition, ISO 8601 (General.date, time, time_zone)",
    "title": "the signal's title in the file (General.title)",
    "beam_energy_kev": "accelerating voltage, keV",
    "magnification": "nominal magnification",
    "camera_length_mm": "camera length, mm",
    "microscope": "microscope name",
    "acquisition_mode": "TEM or STEM",
    "detector": "EDS detector type, EELS spectrometer or camera name",
    "eds_elevation_deg": "EDS detector elevation angle, degrees",
    "eds_azimuth_deg": "EDS detector azimuth angle, degrees",
    "live_time_s": "EDS live time, s",
    "real_time_s": "EDS real time, s",
    "energy_resolution_mnka_ev": "EDS energy resolution at Mn Ka, eV",
    "eels_collection_angle_mrad": "EELS collection semi-angle, mrad",
    "eels_convergence_angle_mrad": "convergence semi-angle, mrad",
    "dispersion_ev": "energy per channel of the spectrum image, eV",
}

# arrays larger than this are summarised in the JSON trees, not written out
MAX_ARRAY_ITEMS = 64
# str(value) of objects JSON does not know is cut to this many characters
_MAX_TEXT = 2000


# -- JSON-safe trees ----------------------------------------------------------------


def jsonable(value: Any, *, max_items: int = MAX_ARRAY_ITEMS) -> Any:
    """``value`` with every part made JSON-safe, recursively.

    numpy scalars become Python numbers, small arrays lists, large arrays a summary
    (``{"array": "summary", "shape", "dtype", "min", "max"}``); bytes are decoded as
    UTF-8 (base64 when they are not text); dates and times become ISO 8601 strings;
    non-finite floats their names (``"nan"``, ``"inf"``); mapping keys strings; anything
    else its ``str``.

    >>> jsonable({"a": np.float32(1.5), "b": b"Titan", 3: np.arange(3)})
    {'a': 1.5, 'b': 'Titan', '3': [0, 1, 2]}
    >>> jsonable(np.zeros((100, 100)))["shape"]
    [100, 100]
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.complexfloating, complex)):
        return str(complex(value))
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return _decode(bytes(value))
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, max_items=max_items) for k, v in value.items()}
    if isinstance(value, np.ndarray) or _is_array_like(value):
        return _array(value, max_items)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if len(items) > max_items and all(isinstance(v, (int, float, np.number)) for v in items):
            return _array(np.asarray(items), max_items)
        return [jsonable(v, max_items=max_items) for v in items]
    if hasattr(value, "as_dictionary"):  # a HyperSpy DictionaryTreeBrowser
        return jsonable(value.as_dictionary(), max_items=max_items)
    return str(value)[:_MAX_TEXT]


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def _is_array_like(value: Any) -> bool:
    """A dask or other lazy array: never computed here."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes))


def _array(value: Any, max_items: int) -> Any:
    shape = tuple(int(n) for n in value.shape)
    size = int(np.prod(shape)) if shape else 1
    if isinstance(value, np.ndarray) and size <= max_items:
        if value.dtype.kind in "SUO":
            return [jsonable(v) for v in value.ravel().tolist()] if value.ndim else jsonable(value.item())
        return jsonable(value.tolist())
    summary: dict[str, Any] = {"array": "summary", "shape": list(shape), "dtype": str(value.dtype)}
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and size:
        summary.update(min=jsonable(np.nanmin(value)), max=jsonable(np.nanmax(value)))
    return summary


def to_json(tree: Any) -> str:
    """``tree`` as one JSON string (made JSON-safe first), keys in the file's order."""
    return json.dumps(jsonable(tree), ensure_ascii=False, allow_nan=False)


# -- HyperSpy's mapping, applied ----------------------------------------------------------


def tree_key(key: Any) -> str:
    """A key as HyperSpy's metadata tree names it, which RosettaSciIO's mapping paths use:
    ASCII letters, digits and underscores, spaces as underscores, ``Number_`` before a key
    that is not an identifier ('High tension_kV' -> 'High_tension_kV').

    >>> tree_key("High tension_kV"), tree_key("Stage A (deg)"), tree_key("0")
    ('High_tension_kV', 'Stage_A_deg', 'Number_0')
    """
    text = unicodedata.normalize("NFKD", str(key)).encode("ascii", "ignore").decode()
    text = "".join(c for c in text if c.isalnum() or c in " _").strip().replace(" ", "_")
    return text if text.isidentifier() else "Number_" + text


def _child(node: Any, key: str) -> Any:
    """``node[key]`` matching keys as HyperSpy's tree does; KeyError when absent."""
    if not isinstance(node, Mapping):
        raise KeyError(key)
    if key in node:
        return node[key]
    for name, value in node.items():
        if tree_key(name) == key:
            return value
    raise KeyError(key)


def _get(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        node = _child(node, key)
    return node


class _Branch(dict):
    """A branch of ``original_metadata`` as RosettaSciIO's mapping functions expect it.

    HyperSpy hands those functions a ``DictionaryTreeBrowser``, whose ``keys()`` is a list
    (Velox's element-list converter indexes it) and whose lookups take dotted paths
    (DigitalMicrograph's microscope-name converter asks for 'Microscope Info.Name').
    """

    def keys(self) -> list:  # type: ignore[override]
        return list(super().keys())

    def get(self, path: Any, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return _get(self, str(path))
        except KeyError:
            return default

    get_item = get


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[leaf] = value


def _copy(tree: Any) -> Any:
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _branch(value: Any) -> Any:
    return _Branch({k: _branch(v) for k, v in value.items()}) if isinstance(value, Mapping) else value


def complete_metadata(
    metadata: Mapping[str, Any] | None,
    original: Mapping[str, Any] | None,
    mapping: Mapping[str, tuple[str, Callable[[Any], Any] | None]] | None,
) -> tuple[dict[str, Any], list[str]]:
    """RosettaSciIO's ``metadata`` with its ``mapping`` applied to ``original_metadata``.

    As HyperSpy does on load: for each ``original path -> (metadata path, function)``
    whose original path exists, the value (through the function, if any) is set at the
    metadata path unless it is None. A function that fails is skipped and named in the
    second return value, so that one odd entry loses one figure, not the file.

    >>> md, failed = complete_metadata({}, {"Optics": {"kV": "300000"}},
    ...                                {"Optics.kV": ("Acquisition_instrument.TEM.beam_energy",
    ...                                               lambda v: float(v) / 1e3)})
    >>> md, failed
    ({'Acquisition_instrument': {'TEM': {'beam_energy': 300.0}}}, [])
    """
    out = _copy(dict(metadata or {}))
    failed = []
    for source, (target, function) in (mapping or {}).items():
        try:
            value = _get(original or {}, source)
        except KeyError:
            continue
        try:
            value = function(_branch(value)) if function is not None else value
        except Exception as exc:  # a converter RosettaSciIO wrote for HyperSpy's tree type
            failed.append(f"{source} -> {target} ({type(exc).__name__}: {exc})")
            continue
        if value is not None:
            _set(out, target, value)
    return out, failed


# -- key figures ---------------------------------------------------------------------------


def _instrument(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``Acquisition_instrument.TEM`` (or ``.SEM``) branch, {} when there is none."""
    branches = metadata.get("Acquisition_instrument") or {}
    for name in ("TEM", "SEM"):
        if isinstance(branches.get(name), Mapping):
            return branches[name]
    return {}


def _number(value: Any) -> float | None:
    """A float from a number or a numeric string (Velox writes some as text), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def acquired(general: Mapping[str, Any]) -> str | None:
    """ISO 8601 start of the acquisition from ``General.date``/``time``/``time_zone``.

    >>> acquired({"date": "2024-02-29", "time": "06:58:04", "time_zone": "UTC"})
    '2024-02-29T06:58:04+00:00'
    >>> acquired({"date": "2016-02-22"})
    '2016-02-22'
    """
    date = str(general.get("date") or "").strip()
    if not date:
        return None
    time = str(general.get("time") or "").strip()
    if not time:
        return date
    stamp = f"{date}T{time}"
    zone = str(general.get("time_zone") or "").strip()
    if zone.upper() in ("UTC", "Z", "GMT"):
        return stamp + "+00:00"
    if zone[:1] in "+-" and zone[1:].replace(":", "").isdigit():
        return stamp + zone
    return stamp  # a named zone (Europe/Brussels) or none: local time as written


def key_figures(metadata: Mapping[str, Any], *, dispersion_ev: float | None = None) -> dict[str, Any]:
    """The figures of :data:`KEY_FIGURES` found in a HyperSpy-style ``metadata`` tree.

    Figures the tree does not hold are left out (never written as None or 0). Numbers
    are floats in the unit the name says; ``dispersion_ev`` (the spectrum image's eV per
    channel) is passed in because it comes from the energy axis, not from the tree.
    """
    general = metadata.get("General") or {}
    figures: dict[str, Any] = {}
    stamp = acquired(general)
    if stamp:
        figures["acquired"] = stamp
    title = str(general.get("title") or "").strip()
    if title:
        figures["title"] = title
    instrument = _instrument(metadata)
    for name, paths in _INSTRUMENT_PATHS.items():
        for path in paths:
            try:
                value = _get(instrument, path)
            except KeyError:
                continue
            value = str(value).strip() if name in _TEXT else _number(value)
            if value not in (None, ""):
                figures[name] = value
                break
    if dispersion_ev is not None and math.isfinite(dispersion_ev):
        figures["dispersion_ev"] = float(dispersion_ev)
    return figures
