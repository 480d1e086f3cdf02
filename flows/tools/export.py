"""Stores as HyperSpy signals: ``to_hyperspy`` in a notebook, ``emfuse export`` on the command line.

A variable of a canonical or output store becomes a HyperSpy signal with calibrated axes
(name, scale, offset and units from the store's coordinates: y/x in nm, energy in eV)
and the instrument metadata the store kept at ingest (:mod:`emfuse.stores.metadata`): the
HyperSpy ``metadata`` tree, ``original_metadata``, plus the store's own attributes under
``original_metadata.emfuse``. A spectrum image becomes an exspy ``EDSTEMSpectrum``,
``EDSSEMSpectrum`` or ``EELSSpectrum``, images and maps a ``Signal2D`` (maps and fused
maps navigate over ``element``; ``Sample.elements`` lists them).

An output store (``fused``, ``restored``, ...) has no instrument metadata of its own; it
is taken from the input store its ``source_path`` names, when that store is still there.

HyperSpy and exspy are optional (``pip install 'emfuse[hyperspy]'``).

Examples
--------
>>> s = to_hyperspy("run1.fuse.zarr", "fused")  # doctest: +SKIP
>>> s.axes_manager["x"].scale, s.axes_manager["x"].units  # doctest: +SKIP
(0.771, 'nm')
>>> export("run1.fuse.zarr", "run1_fused.hspy")  # doctest: +SKIP
PosixPath('run1_fused.hspy')
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from emfuse.errors import EmfuseError, InputError
from emfuse.stores import layout
from emfuse.stores.metadata import jsonable
from emfuse.stores.zarrio import check_writable, open_dataset, read_attrs

# the variable exported when none is named: the result first, then the inputs
DEFAULT_ORDER = (layout.FUSED, layout.RESTORED, layout.TEM_FUSED, layout.SPECTRUM, layout.MAPS,
                 layout.HAADF, layout.MOVIE, layout.MODES)
FORMATS = ("hspy",)
_INSTALL = "pip install 'emfuse[hyperspy]'"
# store attributes kept as trees of their own, not repeated under original_metadata.emfuse
_TREES = (layout.ATTR_METADATA, layout.ATTR_ORIGINAL_METADATA)

PROGRESS_BYTES = 256 * 2**20  #: exports larger than this show HyperSpy's progress bar


class HyperSpyMissing(EmfuseError, ImportError, ValueError):
    """HyperSpy (or exspy) is not installed; the message names the extra that installs it.

    A ``ValueError`` too, so the command line prints it as one line like any bad input.
    """


def hyperspy_api() -> Any:
    """``hyperspy.api``, with exspy's signal classes registered where exspy is installed."""
    try:
        import hyperspy.api as hs
    except ImportError as exc:
        raise HyperSpyMissing(
            f"HyperSpy is not installed ({exc}); install it with {_INSTALL} to convert stores to "
            "HyperSpy signals (emfuse export, emfuse.flows.tools.export.to_hyperspy)."
        ) from exc
    try:
        with warnings.catch_warnings():
            # exspy 0.3 imports lazy classes from HyperSpy 2's old paths: three deprecation warnings
            # on every export that are neither the user's nor ours to act on
            warnings.filterwarnings("ignore", message=r"Importing `Lazy\w+` from `hyperspy\._signals")
            import exspy  # noqa: F401  (registers EDS_TEM, EDS_SEM, EELS)
    except ImportError:
        pass  # spectra are exported as plain Signal1D; set_signal_type says so
    return hs


def to_hyperspy(store: str | Path | xr.Dataset, variable: str | None = None, *, lazy: bool = False) -> Any:
    """One variable of a store as a HyperSpy signal with calibrated axes and metadata.

    Parameters
    ----------
    store
        A canonical or output store (path), or a Dataset opened from one.
    variable
        The variable to convert; default: the first of :data:`DEFAULT_ORDER` present.
    lazy
        Keep the data in Dask (a lazy HyperSpy signal): nothing is read until used.

    Returns
    -------
    hyperspy.signal.BaseSignal
        ``Signal1D`` (exspy EDS/EELS class) for a spectrum image, ``Signal2D`` for images,
        maps and movies.

    Raises
    ------
    HyperSpyMissing
        when HyperSpy is not installed.
    ValueError
        when the store has no such variable (the message lists those it has).
    """
    hs = hyperspy_api()
    ds = store if isinstance(store, xr.Dataset) else open_dataset(store, require_complete=False)
    name = _variable(ds, variable, store)
    var = _signal_order(ds[name])
    axes = [_axis(var, dim, navigate=dim not in _signal_dims(var)) for dim in var.dims]
    metadata, original = _trees(ds, store)
    metadata = _signal_metadata(metadata, ds, var, name)
    original["emfuse"] = _store_attrs(ds, name)
    data = var.data if lazy else np.asarray(var.values)
    cls = hs.signals.Signal1D if len(_signal_dims(var)) == 1 else hs.signals.Signal2D
    signal = cls(data, axes=axes, metadata=metadata, original_metadata=original)
    if lazy:
        signal = signal.as_lazy()
    kind = metadata.get("Signal", {}).get("signal_type")
    if kind:
        signal.set_signal_type(kind)
    return signal


def export(
    store: str | Path, out: str | Path, *, to: str = "hspy", variable: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one variable of ``store`` as a HyperSpy file (``emfuse export``); returns its path.

    Raises
    ------
    InputError
        (a ``ValueError``) for an unknown format, an output of another suffix, or an existing output
        without ``overwrite``.
    """
    if to not in FORMATS:
        raise InputError(f"cannot export to {to!r}; formats: {', '.join(FORMATS)}.")
    out = Path(out)
    if out.suffix.lower() != f".{to}":
        raise InputError(f"the output {out} must end in .{to} (HyperSpy chooses the format by the suffix).")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
    signal = to_hyperspy(store, variable, lazy=True)
    # written beside it, then renamed: an export killed midway leaves no truncated file under the
    # name asked for (an earlier file stays as it was); the suffix keeps HyperSpy's format choice
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    check_writable(out, file=True)  # creates the folder; OutputNotWritable where it cannot
    try:
        # HyperSpy's bar only for an export long enough to watch (it printed three bars for a 16 x 16 map)
        signal.save(partial, overwrite=True, show_progressbar=signal.data.nbytes > PROGRESS_BYTES)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


# -- the pieces ---------------------------------------------------------------------


def _variable(ds: xr.Dataset, variable: str | None, store: Any) -> str:
    label = store if not isinstance(store, xr.Dataset) else "the dataset"
    if variable is None:
        for name in DEFAULT_ORDER:
            if name in ds.data_vars:
                return name
        variable = next(iter(ds.data_vars), None)
        if variable is None:
            raise InputError(f"{label} holds no variables to export.")
    if variable not in ds.data_vars:
        raise InputError(
            f"{label} has no variable {variable!r}; it has {', '.join(map(str, ds.data_vars))}. "
            "Choose one with --variable."
        )
    return variable


def _signal_dims(var: xr.DataArray) -> tuple[str, ...]:
    """The signal axes: energy for spectra, (y, x) for images, else the last dimension."""
    if "energy" in var.dims:
        return ("energy",)
    if var.dims[-2:] == ("y", "x"):
        return ("y", "x")
    return var.dims[-1:]


def _signal_order(var: xr.DataArray) -> xr.DataArray:
    """Navigation dimensions first, signal dimensions last (HyperSpy's array order)."""
    signal = _signal_dims(var)
    return var.transpose(*[d for d in var.dims if d not in signal], *signal)


def _axis(var: xr.DataArray, dim: str, *, navigate: bool) -> dict[str, Any]:
    """A HyperSpy axis from a coordinate: uniform (offset, scale) or its values (non-uniform)."""
    size = int(var.sizes[dim])
    axis: dict[str, Any] = {"name": dim, "size": size, "navigate": navigate}
    if dim not in var.coords or var[dim].dtype.kind not in "iuf":
        return {**axis, "scale": 1.0, "offset": 0.0, "units": ""}  # element, mode: an index
    values = np.asarray(var[dim].values, dtype=np.float64)
    units = str(var[dim].attrs.get("units", ""))
    steps = np.diff(values)
    if size < 2 or np.allclose(steps, steps[0], rtol=1e-9, atol=0):
        scale = (values[-1] - values[0]) / (size - 1) if size > 1 else 1.0
        return {**axis, "scale": _clean(scale), "offset": _clean(values[0]), "units": units}
    return {"name": dim, "axis": values, "navigate": navigate, "units": units}


def _clean(value: float) -> float:
    """``value`` to 12 significant digits: the coordinates were computed as offset + i * scale
    (times a unit factor), and the calibration should read back as the file wrote it (10.001,
    not 10.000999999999976)."""
    return float(f"{float(value):.12g}")


def _trees(ds: xr.Dataset, store: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, original_metadata) as ingest kept them: the store's, else its input store's."""
    attrs = dict(ds.attrs)
    if layout.ATTR_METADATA not in attrs:
        attrs = _input_attrs(attrs) or attrs
    metadata = json.loads(attrs.get(layout.ATTR_METADATA) or "{}")
    original = json.loads(attrs.get(layout.ATTR_ORIGINAL_METADATA) or "{}")
    return metadata, original


def _input_attrs(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes of the store an output was computed from, when it is still there."""
    source = attrs.get(layout.ATTR_SOURCE)
    if not source or not (Path(source) / "zarr.json").is_file():
        return None
    return read_attrs(source)


def _signal_metadata(tree: dict[str, Any], ds: xr.Dataset, var: xr.DataArray, name: str) -> dict[str, Any]:
    """The instrument tree with this variable's title, signal type and elements."""
    metadata = {k: v for k, v in tree.items() if k not in ("Signal", "_HyperSpy")}
    general = dict(metadata.get("General") or {})
    general.pop("FileIO", None)  # HyperSpy's record of earlier loads and saves of another file
    general["title"] = name
    source = ds.attrs.get(layout.ATTR_SOURCE)
    if source:
        general["original_filename"] = Path(str(source)).name
    metadata["General"] = general
    signal: dict[str, Any] = {"signal_type": _signal_type(ds, tree, name, var)}
    if var.attrs.get("units"):
        signal["quantity"] = str(var.attrs["units"])
    metadata["Signal"] = signal
    if "element" in var.coords:
        sample = dict(metadata.get("Sample") or {})
        sample["elements"] = [str(e) for e in var["element"].values]
        metadata["Sample"] = sample
    return metadata


def _signal_type(ds: xr.Dataset, tree: dict[str, Any], name: str, var: xr.DataArray) -> str:
    """HyperSpy's signal type of a spectrum image (EDS_TEM, EDS_SEM, EELS); '' for the rest."""
    if "energy" not in var.dims:
        return ""
    kind = str(ds.attrs.get(layout.ATTR_SIGNAL) or "")
    if kind == "EELS":
        return "EELS"
    if kind == "EDX":
        return "EDS_SEM" if "SEM" in (tree.get("Acquisition_instrument") or {}) else "EDS_TEM"
    return ""


def _store_attrs(ds: xr.Dataset, name: str) -> dict[str, Any]:
    """The store's attributes (provenance, parameters, key figures) and the variable's."""
    attrs = {k: v for k, v in ds.attrs.items() if k not in _TREES}
    return jsonable({"store": attrs, "variable": name, "variable_attrs": dict(ds[name].attrs)})
