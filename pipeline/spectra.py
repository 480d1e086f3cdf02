"""Spectrum image (y, x, energy) -> elemental maps (element, y, x).

Each element is mapped by integrating an energy window around its X-ray line (EDX) or above
its core-loss edge (EELS) and subtracting the background under that window:

* EDX: the background is a straight line through two side windows, one left and one right of
  the peak, each half as wide as the peak window and one detector FWHM away from it. Since
  the counts in a window are a weighted sum of channels, the whole net map is one weighted
  sum ``spectrum @ kernel`` and costs a single pass over the data.
* EELS: the background is a power law ``A * E**-r`` fitted per pixel by weighted least
  squares in log-log space over a pre-edge window, then extrapolated under the edge window.

Energies are channel centres in eV; a channel spans half way to each neighbour, and a window
edge that falls inside a channel takes that channel's counts in proportion (so a window's
integral varies smoothly with its limits).

Works on numpy arrays and, lazily, on dask arrays (one task per (y, x) chunk).

Examples
--------
>>> import numpy as np
>>> energy_ev = np.arange(1024) * 20.0
>>> spectrum = np.random.default_rng(0).poisson(1.0, (8, 8, 1024))
>>> maps, info = elemental_maps(spectrum, energy_ev, ["Fe", "O"])
>>> maps.shape, info[0]["line"]
((2, 8, 8), 'Ka')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EmfuseError
from ..signals import signal_type as canonical_signal_type
from .elements import (
    NoLineError,
    atomic_number,
    eels_edge,
    validate_elements,
    window_hint,
    xray_line,
)

__all__ = [
    "FWHM_MNKA_EV",
    "MapWindows",
    "SpectrumError",
    "WindowError",
    "channel_edges_ev",
    "detector_fwhm_ev",
    "elemental_maps",
    "fit_power_law",
    "map_windows",
    "window_weights",
]

#: Default EDX detector resolution: FWHM at Mn Ka, eV (a typical silicon drift detector).
FWHM_MNKA_EV = 130.0
_MN_KA_EV = 5898.75
# Fano broadening in silicon: FWHM^2 = noise^2 + (2.3548^2 * F * eps) * E, with Fano factor
# F = 0.114 and eps = 3.64 eV per electron-hole pair.
_FANO_EV = 2.3548**2 * 0.114 * 3.64

# EDX: a window of 1.2 FWHM maximises the signal-to-noise ratio of a gaussian peak on a flat
# background; side windows start one FWHM further out, where the peak has fallen below 1e-4.
_EDX_WIDTH_FWHM = 1.2
_EDX_GAP_FWHM = 1.0
_EDX_MIN_CHANNELS = 3
# EELS: integrate ~10 % of the onset energy (30-150 eV) above the edge, fit the background in
# a window as wide just below it, stopping 2 % of the onset short of it (the onset is broadened
# by the energy resolution and pre-edge structure).
_EELS_WIDTH_FRACTION = 0.10
_EELS_WIDTH_LIMITS_EV = (30.0, 150.0)
_EELS_GAP_FRACTION = 0.02
_EELS_MIN_CHANNELS = 5
#: ``MapWindows.source`` of a table edge whose window was cut at the spectrum's top end (an edge
#: near the end of a recorded range, as in a spectrometer set to show several edges)
SHORTENED = "table-shortened"

# The numpy path runs in slabs of rows so that float64 temporaries stay near this many values.
_SLAB_VALUES = 4_000_000


class SpectrumError(EmfuseError, ValueError):
    """The spectrum image or its energy axis cannot be used as given (the message says why)."""


class WindowError(SpectrumError):
    """An element's energy window does not fit the spectrum's energy range."""


@dataclass(frozen=True)
class MapWindows:
    """The energy windows used to map one element (provenance of a map).

    Attributes
    ----------
    element : str
        Element symbol.
    z : int
        Atomic number.
    signal_type : str
        'EDX' or 'EELS'.
    line : str
        The X-ray line ('Ka', 'La', ...) or EELS edge ('K', 'L2,3', 'M4,5') the window is
        centred on / starts at; 'user' when the window was given by the caller.
    line_ev : float or None
        Energy of that line or edge onset, eV (None for a user window).
    signal_ev : (float, float)
        Integration window, eV.
    background_ev : tuple of (float, float)
        EDX: the side windows (one or two); EELS: the pre-edge fit window. Empty if none.
    background_model : str
        'linear' (two side windows), 'constant' (one side window), 'power-law' or 'none'.
    source : str
        'table', 'user', or 'table-shortened' (:data:`SHORTENED`): an EELS edge from the table
        whose window ran past the spectrum's end and was cut there, leaving at least 30 eV.
    """

    element: str
    z: int
    signal_type: str
    line: str
    line_ev: float | None
    signal_ev: tuple[float, float]
    background_ev: tuple[tuple[float, float], ...]
    background_model: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the windows (lists instead of tuples)."""
        return {
            "element": self.element,
            "z": self.z,
            "signal_type": self.signal_type,
            "line": self.line,
            "line_ev": self.line_ev,
            "signal_ev": [float(v) for v in self.signal_ev],
            "background_ev": [[float(a), float(b)] for a, b in self.background_ev],
            "background_model": self.background_model,
            "source": self.source,
        }


# --------------------------------------------------------------------------------------------
# Energy axis helpers
# --------------------------------------------------------------------------------------------
def detector_fwhm_ev(energy_ev: float | np.ndarray, fwhm_mnka_ev: float = FWHM_MNKA_EV):
    """EDX detector resolution (FWHM, eV) at `energy_ev` from the Fano model.

    ``FWHM(E)^2 = FWHM(Mn Ka)^2 + 2.3548^2 * F * eps * (E - E(Mn Ka))`` for a silicon
    detector (Fano factor F = 0.114, eps = 3.64 eV per electron-hole pair).

    Examples
    --------
    >>> round(float(detector_fwhm_ev(5898.75)), 1)
    130.0
    >>> float(detector_fwhm_ev(525.0)) < 70
    True
    """
    noise_sq = max(fwhm_mnka_ev**2 - _FANO_EV * _MN_KA_EV, 0.0)
    return np.sqrt(noise_sq + _FANO_EV * np.maximum(energy_ev, 0.0))


def channel_edges_ev(energy_ev: np.ndarray) -> np.ndarray:
    """Channel boundaries (n + 1 values) for channel-centre energies (n values, n >= 2).

    Each channel spans half way to its neighbours; the outer channels are as wide as
    their only neighbour spacing.

    Examples
    --------
    >>> channel_edges_ev(np.array([0.0, 10.0, 20.0]))
    array([-5.,  5., 15., 25.])
    """
    e = np.asarray(energy_ev, dtype=np.float64)
    mid = 0.5 * (e[1:] + e[:-1])
    return np.concatenate([[e[0] - (mid[0] - e[0])], mid, [e[-1] + (e[-1] - mid[-1])]])


def window_weights(edges_ev: np.ndarray, window_ev: tuple[float, float]) -> np.ndarray:
    """Fraction of each channel inside ``[low, high]`` (0 to 1), from channel boundaries.

    Examples
    --------
    >>> window_weights(np.array([0.0, 10, 20, 30]), (5.0, 20.0))
    array([0.5, 1. , 0. ])
    """
    lo, hi = window_ev
    left, right = edges_ev[:-1], edges_ev[1:]
    overlap = np.clip(np.minimum(right, hi) - np.maximum(left, lo), 0.0, None)
    return overlap / (right - left)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _normalise_signal_type(signal_type: str) -> str:
    mode = canonical_signal_type(signal_type)
    if mode is None:
        raise SpectrumError(f"signal_type must be 'EDX' or 'EELS', got {signal_type!r}")
    return mode


def _check_energy(energy_ev: Any, n_channels: int | None = None) -> np.ndarray:
    energy = np.asarray(energy_ev, dtype=np.float64)
    if energy.ndim != 1:
        raise SpectrumError(
            f"energy_ev must be 1D (one energy per channel), got shape {energy.shape}"
        )
    if energy.size == 0:
        raise SpectrumError("energy_ev is empty: give one energy (eV) per spectrum channel")
    if n_channels is not None and energy.size != n_channels:
        raise SpectrumError(
            f"energy_ev has {energy.size} values but the spectrum's last axis has {n_channels} "
            "channels: the spectrum must be (y, x, energy) with one energy per channel"
        )
    if energy.size < 2:
        raise SpectrumError("the energy axis needs at least 2 channels")
    if not np.isfinite(energy).all():
        raise SpectrumError("energy_ev contains NaN or Inf values")
    step = np.diff(energy)
    if (step == 0).all():
        raise SpectrumError(
            f"energy_ev is constant ({energy[0]:g} eV in every channel): the energy axis is not "
            "calibrated; give the energy (eV) of every channel (calibrate the axis in the "
            "acquisition software and export again)"
        )
    if (step < 0).all():
        raise SpectrumError(
            "energy_ev is decreasing: reverse the energy axis "
            "(spectrum[..., ::-1] and energy_ev[::-1]) so that energy increases"
        )
    if not (step > 0).all():
        i = int(np.argmin(step > 0))
        raise SpectrumError(
            f"energy_ev must be strictly increasing, but energy_ev[{i + 1}] = {energy[i + 1]:g} "
            f"follows energy_ev[{i}] = {energy[i]:g}; check the energy axis (one energy in eV per "
            "channel, increasing)"
        )
    return energy


def _check_spectrum_shape(spectrum: Any) -> None:
    shape = tuple(spectrum.shape)
    if len(shape) != 3:
        hint = ""
        if len(shape) == 1:
            hint = "; for a single spectrum use spectrum[None, None, :]"
        elif len(shape) == 2:
            hint = "; for a line scan (x, energy) use spectrum[None]"
        raise SpectrumError(f"spectrum must be 3D (y, x, energy), got shape {shape}{hint}")
    if 0 in shape:
        raise SpectrumError(f"spectrum is empty (shape {shape})")


def _hint_axis(shape: tuple[int, ...], n_energy: int) -> str:
    if shape[0] == n_energy:
        return " (the energy axis looks like the first axis: use np.moveaxis(spectrum, 0, -1))"
    return ""


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------
def _channel_width_at(edges: np.ndarray, energy: float) -> float:
    i = int(np.clip(np.searchsorted(edges, energy) - 1, 0, edges.size - 2))
    return float(edges[i + 1] - edges[i])


def _clip_window(win: tuple[float, float], lo: float, hi: float, min_width: float):
    a, b = max(win[0], lo), min(win[1], hi)
    return (a, b) if b - a >= min_width else None


def _edx_windows(symbol, line, line_ev, signal, edges, fwhm_mnka_ev, source, background):
    lo, hi = float(edges[0]), float(edges[-1])
    centre = 0.5 * (signal[0] + signal[1])
    width = signal[1] - signal[0]
    if background is None:
        fwhm = float(detector_fwhm_ev(centre, fwhm_mnka_ev))
        gap = _EDX_GAP_FWHM * fwhm
        channel = _channel_width_at(edges, centre)
        side = 0.5 * width
        sides = []
        left = (signal[0] - gap - side, signal[0] - gap)
        right = (signal[1] + gap, signal[1] + gap + side)
        for win in (left, right):
            clipped = _clip_window(win, lo, hi, channel)
            if clipped is not None:
                sides.append(clipped)
        if not sides:
            raise WindowError(
                f"no room for a background window beside the {symbol} window "
                f"{signal[0]:g}-{signal[1]:g} eV inside the energy range {lo:g}-{hi:g} eV; "
                f"pass windows={{'{symbol}': {{'signal': ..., 'background': [...]}}}}"
            )
        background = tuple(sides)
    model = {0: "none", 1: "constant"}.get(len(background), "linear")
    return MapWindows(symbol, atomic_number(symbol), "EDX", line, line_ev, signal,
                      tuple(background), model, source)


def _eels_windows(symbol, line, line_ev, signal, edges, source, background):
    lo, hi = float(edges[0]), float(edges[-1])
    channel = _channel_width_at(edges, signal[0])
    if background is None:
        gap = max(_EELS_GAP_FRACTION * signal[0], 2 * channel)
        width = max(signal[1] - signal[0], _EELS_MIN_CHANNELS * channel)
        fit = _clip_window((signal[0] - gap - width, signal[0] - gap), lo, hi, 3 * channel)
        if fit is None:
            raise WindowError(
                f"no room for the pre-edge fit window of {symbol} below {signal[0]:g} eV: the "
                f"energy range starts at {lo:g} eV; record the spectrum from lower energies or "
                f"pass windows={{'{symbol}': {{'signal': ..., 'background': [(low, high)]}}}}"
            )
        background = (fit,)
    for a, b in background:
        if a <= 0:
            raise WindowError(
                f"the pre-edge window {a:g}-{b:g} eV of {symbol} reaches energies <= 0, "
                "where a power law is undefined; move it above 0 eV"
            )
    model = "power-law" if background else "none"
    return MapWindows(symbol, atomic_number(symbol), "EELS", line, line_ev, signal,
                      tuple(background), model, source)


def _as_window(value: Any, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise WindowError(f"{what} must be a pair (low_ev, high_ev), got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise WindowError(f"{what} must satisfy low < high (eV), got {value!r}")
    return a, b


def _parse_user_window(symbol: str, value: Any):
    """(signal, background or None) from a user entry: a pair, a dict or a MapWindows."""
    if isinstance(value, MapWindows):
        return value.signal_ev, value.background_ev
    if isinstance(value, Mapping):
        unknown = set(value) - {"signal", "background"}
        if unknown or "signal" not in value:
            raise WindowError(
                f"windows[{symbol!r}] as a dict needs a 'signal' pair and optionally "
                f"'background' (a list of pairs, or [] for none); got keys {sorted(value)}"
            )
        signal = _as_window(value["signal"], f"windows[{symbol!r}]['signal']")
        bg = value.get("background")
        if bg is None:
            return signal, None
        return signal, tuple(_as_window(w, f"windows[{symbol!r}]['background']") for w in bg)
    return _as_window(value, f"windows[{symbol!r}]"), None


def map_windows(
    energy_ev: np.ndarray,
    elements: Sequence[str] | str,
    *,
    signal_type: str = "EDX",
    windows: Mapping[str, Any] | None = None,
    lines: Mapping[str, str] | None = None,
    fwhm_mnka_ev: float = FWHM_MNKA_EV,
) -> list[MapWindows]:
    """The energy windows :func:`elemental_maps` uses for each element.

    Parameters
    ----------
    energy_ev : ndarray, shape (n_energy,)
        Channel-centre energies, eV, strictly increasing.
    elements : sequence of str
        Element symbols (any case).
    signal_type : {'EDX', 'EELS'}
    windows : dict, optional
        Per-element override of the table: ``{"Fe": (6250, 6550)}`` sets the integration
        window (eV) and derives the background windows from it; ``{"Fe": {"signal": (lo, hi),
        "background": [(lo, hi), ...]}}`` sets both (``"background": []`` for none).
    lines : dict, optional
        Per-element choice of X-ray line or EELS edge instead of the automatic one,
        e.g. ``{"Au": "Ma"}`` or ``{"Ti": "L2,3"}``.
    fwhm_mnka_ev : float
        EDX detector resolution at Mn Ka, eV (sets the default window widths).

    Returns
    -------
    list of MapWindows
        One per element, in the order given.

    Raises
    ------
    UnknownElement
        For a symbol that is not an element.
    WindowError
        If a window lies outside the energy range, or an element has no line in it.

    Examples
    --------
    >>> w = map_windows(np.arange(1024) * 20.0, ["Fe"])[0]
    >>> w.line, [round(v) for v in w.signal_ev]
    ('Ka', [6323, 6484])
    """
    mode = _normalise_signal_type(signal_type)
    symbols = validate_elements(elements)
    energy = _check_energy(energy_ev)
    edges = channel_edges_ev(energy)
    lo, hi = float(edges[0]), float(edges[-1])
    user = {validate_elements([k])[0]: v for k, v in (windows or {}).items()}
    chosen = {validate_elements([k])[0]: v for k, v in (lines or {}).items()}
    for name, what in ((user, "windows"), (chosen, "lines")):
        extra = sorted(set(name) - set(symbols))
        if extra:
            raise WindowError(
                f"{what} given for {extra}, which {'is' if len(extra) == 1 else 'are'} not in "
                f"elements {list(symbols)}: add {'it' if len(extra) == 1 else 'them'} to elements "
                f"or remove the entry"
            )

    out = []
    for symbol in symbols:
        background = None
        if symbol in user:
            signal, background = _parse_user_window(symbol, user[symbol])
            line, line_ev, source = "user", None, "user"
        else:
            source = "table"
            try:
                if mode == "EDX":
                    line, line_ev = xray_line(symbol, chosen.get(symbol), energy_range_ev=(lo, hi))
                else:
                    line, line_ev = eels_edge(symbol, chosen.get(symbol), energy_range_ev=(lo, hi))
            except NoLineError as exc:
                raise WindowError(
                    f"{exc}; the spectrum covers {lo:g}-{hi:g} eV"
                ) from None
            channel = _channel_width_at(edges, line_ev)
            if mode == "EDX":
                fwhm = float(detector_fwhm_ev(line_ev, fwhm_mnka_ev))
                width = max(_EDX_WIDTH_FWHM * fwhm, _EDX_MIN_CHANNELS * channel)
                signal = (line_ev - 0.5 * width, line_ev + 0.5 * width)
            else:
                width = float(np.clip(_EELS_WIDTH_FRACTION * line_ev, *_EELS_WIDTH_LIMITS_EV))
                width = max(width, _EELS_MIN_CHANNELS * channel)
                signal = (line_ev, line_ev + width)
                if signal[1] > hi and hi - line_ev >= max(_EELS_WIDTH_LIMITS_EV[0], _EELS_MIN_CHANNELS * channel):
                    signal, source = (line_ev, hi), SHORTENED  # the edge is recorded, only not all of it
        if signal[0] < lo or signal[1] > hi:
            what = "the user window" if line_ev is None else f"the {line} line at {line_ev:g} eV"
            raise WindowError(
                f"the {symbol} window {signal[0]:g}-{signal[1]:g} eV ({what}) lies outside the "
                f"spectrum's energy range {lo:g}-{hi:g} eV: pass a window inside the range "
                f"({window_hint(symbol)}), choose another line (Python: lines={{'{symbol}': ...}}), "
                "or leave the element out"
            )
        if background is not None:
            for a, b in background:
                if a < lo or b > hi:
                    raise WindowError(
                        f"the {symbol} background window {a:g}-{b:g} eV lies outside the "
                        f"spectrum's energy range {lo:g}-{hi:g} eV"
                    )
        if mode == "EDX":
            out.append(_edx_windows(symbol, line, line_ev, signal, edges, fwhm_mnka_ev, source,
                                    background))
        else:
            out.append(_eels_windows(symbol, line, line_ev, signal, edges, source, background))
    return out


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
def _edx_kernel(win: MapWindows, edges: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Net-count weights per channel: signal weights minus the interpolated background's.

    With a linear background density rho(E) through the side windows, the background under
    the signal window is W_s * rho(E_s) (width times density at its centroid), which is a
    fixed linear combination of the side windows' counts; it is exact whenever a channel holds
    width * rho(centre).
    """
    width = np.diff(edges)
    w_sig = window_weights(edges, win.signal_ev)
    kernel = w_sig.copy()
    if not win.background_ev:
        return kernel
    sig_width = float(w_sig @ width)
    sig_centre = float((w_sig * width) @ energy) / sig_width
    sides = []
    for window in win.background_ev:
        w = window_weights(edges, window)
        side_width = float(w @ width)
        sides.append((w, side_width, float((w * width) @ energy) / side_width))
    if len(sides) == 1:
        w, side_width, _ = sides[0]
        return kernel - sig_width / side_width * w
    # Straight line through the first two side windows' densities, evaluated at the centroid.
    (w_a, width_a, e_a), (w_b, width_b, e_b) = sides[:2]
    t = (sig_centre - e_a) / (e_b - e_a)
    kernel -= sig_width * ((1.0 - t) / width_a * w_a + t / width_b * w_b)
    return kernel


@dataclass(frozen=True)
class _Plan:
    """Everything a block needs: precomputed per-channel weights, no spectrum data."""

    mode: str
    n_maps: int
    channels: np.ndarray  # channel indices the maps use (sorted)
    kernel: np.ndarray  # EDX: (n_used, n_maps) net weights
    # EELS, per map: ((fit_idx, fit_w, log_e_fit, log_width_fit) or None,
    #                 sig_idx, sig_w, log_e_sig, sig_width)
    eels: tuple
    clip_negative: bool


def _make_plan(wins: list[MapWindows], energy: np.ndarray, clip_negative: bool) -> _Plan:
    edges = channel_edges_ev(energy)
    width = np.diff(edges)
    if wins[0].signal_type == "EDX":
        full = np.stack([_edx_kernel(w, edges, energy) for w in wins], axis=1)
        used = np.flatnonzero(np.any(full != 0, axis=1))
        return _Plan("EDX", len(wins), used, full[used], (), clip_negative)
    items = []
    used: set[int] = set()
    for win in wins:
        w_sig = window_weights(edges, win.signal_ev)
        sig_idx = np.flatnonzero(w_sig)
        fit = None
        if win.background_ev:
            w_fit = np.zeros_like(w_sig)
            for window in win.background_ev:
                w_fit = np.maximum(w_fit, window_weights(edges, window))
            fit_idx = np.flatnonzero(w_fit)
            fit = (fit_idx, w_fit[fit_idx], np.log(energy[fit_idx]), np.log(width[fit_idx]))
            used.update(fit_idx.tolist())
        used.update(sig_idx.tolist())
        items.append((fit, sig_idx, w_sig[sig_idx], np.log(np.maximum(energy[sig_idx], 1e-300)),
                      width[sig_idx]))
    channels = np.array(sorted(used), dtype=np.intp)
    position = {c: i for i, c in enumerate(channels.tolist())}
    remapped = []
    for fit, sig_idx, sig_w, log_e_sig, sig_width in items:
        if fit is not None:
            fit = (np.array([position[c] for c in fit[0]]), *fit[1:])
        remapped.append((fit, np.array([position[c] for c in sig_idx]), sig_w, log_e_sig,
                         sig_width))
    return _Plan("EELS", len(wins), channels, np.empty((0, 0)), tuple(remapped), clip_negative)


def _power_law_fit(counts: np.ndarray, weights: np.ndarray, log_e: np.ndarray,
                   log_width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row weighted least squares of log(density) = log A - r log E.

    `counts` is (n_pixels, n_channels). The weights are the counts (times the fraction of each
    channel inside the window) because var(log N) ~ 1/N for Poisson counts; channels with no
    counts therefore drop out instead of producing log(0). Returns (log_a, r).
    """
    omega = np.clip(counts, 0.0, None) * weights
    y = np.log(np.maximum(counts, 1e-300)) - log_width
    s = omega.sum(axis=1)
    sx = omega @ log_e
    sy = np.einsum("ij,ij->i", omega, y)
    sxx = omega @ (log_e * log_e)
    sxy = np.einsum("ij,ij->i", omega, y * log_e)
    det = s * sxx - sx * sx
    ok = det > 1e-12 * np.maximum(s * s, 1e-300)
    safe = np.where(ok, det, 1.0)
    slope = np.where(ok, (s * sxy - sx * sy) / safe, 0.0)
    # Where the slope is undetermined (no or one channel with counts) fall back to a flat fit.
    log_a = np.where(ok, (sy - slope * sx) / np.where(s > 0, s, 1.0),
                     np.where(s > 0, sy / np.where(s > 0, s, 1.0), -np.inf))
    return log_a, -slope


def fit_power_law(
    spectrum: np.ndarray, energy_ev: np.ndarray, window_ev: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``density(E) = A * E**-r`` to spectra in an energy window.

    Parameters
    ----------
    spectrum : ndarray, shape (..., n_energy)
        Counts per channel (numpy).
    energy_ev : ndarray, shape (n_energy,)
        Channel-centre energies, eV, strictly increasing and > 0 in the window.
    window_ev : (float, float)
        Fit window, eV.

    Returns
    -------
    a, r : ndarray, shape spectrum.shape[:-1]
        `a` in counts per eV at E = 1 eV (so a channel of width dE at E holds about
        ``a * E**-r * dE`` counts) and the exponent `r`.

    Examples
    --------
    >>> e = np.arange(100.0, 300.0, 1.0)
    >>> a, r = fit_power_law(1e9 * e ** -3.0, e, (120.0, 200.0))
    >>> round(float(a) / 1e9, 6), round(float(r), 6)
    (1.0, 3.0)
    """
    energy = _check_energy(energy_ev)
    data = np.asarray(spectrum, dtype=np.float64)
    if data.shape[-1] != energy.size:
        raise SpectrumError(
            f"energy_ev has {energy.size} values but the spectrum's last axis has "
            f"{data.shape[-1]} channels"
        )
    edges = channel_edges_ev(energy)
    w = window_weights(edges, _as_window(window_ev, "window_ev"))
    idx = np.flatnonzero(w)
    if idx.size < 2:
        raise WindowError(f"the fit window {window_ev} covers fewer than 2 channels")
    if energy[idx[0]] <= 0:
        raise WindowError(f"the fit window {window_ev} reaches energies <= 0 eV")
    flat = data.reshape(-1, energy.size)[:, idx]
    log_a, r = _power_law_fit(flat, w[idx], np.log(energy[idx]), np.log(np.diff(edges)[idx]))
    shape = data.shape[:-1]
    return np.exp(log_a).reshape(shape), r.reshape(shape)


def _check_values(block: np.ndarray, origin: tuple[int, int]) -> None:
    """Raise SpectrumError on NaN/Inf or negative counts, naming the first bad pixel."""
    if block.dtype.kind == "f" or block.dtype.kind == "c":
        bad = ~np.isfinite(block)
        if bad.any():
            y, x, _ = np.unravel_index(int(np.argmax(bad)), block.shape)
            raise SpectrumError(
                f"spectrum contains NaN or Inf (first at pixel y={origin[0] + y}, "
                f"x={origin[1] + x}): replace them, e.g. np.nan_to_num(spectrum), or crop "
                "the bad pixels"
            )
    if block.dtype.kind in "fi":
        neg = block < 0
        if neg.any():
            y, x, _ = np.unravel_index(int(np.argmax(neg)), block.shape)
            raise SpectrumError(
                f"spectrum has negative counts (min {block.min():g}, first at pixel "
                f"y={origin[0] + y}, x={origin[1] + x}): counts must be >= 0; if an offset or "
                "dark reference was subtracted, clip with np.clip(spectrum, 0, None)"
            )
    elif block.dtype.kind not in "u":
        raise SpectrumError(f"spectrum must hold numbers (counts), got dtype {block.dtype}")


def _maps_block(block: np.ndarray, plan: _Plan, origin: tuple[int, int] = (0, 0),
                block_info: Any = None) -> np.ndarray:
    """Maps (n_maps, ny, nx) float32 of one (ny, nx, n_energy) block of the spectrum."""
    if block_info is not None:
        location = block_info[0]["array-location"]
        origin = (location[0][0], location[1][0])
    _check_values(block, origin)
    ny, nx = block.shape[:2]
    counts = block.reshape(ny * nx, -1)[:, plan.channels].astype(np.float64)
    if plan.mode == "EDX":
        net = counts @ plan.kernel
    else:
        net = np.empty((ny * nx, plan.n_maps))
        for k, (fit, sig_idx, sig_w, log_e_sig, sig_width) in enumerate(plan.eels):
            signal = counts[:, sig_idx] @ sig_w
            if fit is None:
                net[:, k] = signal
                continue
            fit_idx, fit_w, log_e_fit, log_width_fit = fit
            log_a, r = _power_law_fit(counts[:, fit_idx], fit_w, log_e_fit, log_width_fit)
            # Background under the signal window: sum_i w_i dE_i A E_i^-r, exact on the same
            # discretisation the fit used.
            density = np.exp(log_a[:, None] - r[:, None] * log_e_sig[None, :])
            background = density @ (sig_w * sig_width)
            net[:, k] = signal - background
    if plan.clip_negative:
        np.maximum(net, 0.0, out=net)
    return np.ascontiguousarray(net.T.reshape(plan.n_maps, ny, nx), dtype=np.float32)


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask") and hasattr(array, "map_blocks")


def elemental_maps(
    spectrum,
    energy_ev: np.ndarray,
    elements: Sequence[str] | str,
    *,
    signal_type: str = "EDX",
    windows: Mapping[str, Any] | None = None,
    clip_negative: bool = True,
    lines: Mapping[str, str] | None = None,
    fwhm_mnka_ev: float = FWHM_MNKA_EV,
):
    """Elemental maps from a spectrum image by background-subtracted window integration.

    Parameters
    ----------
    spectrum : ndarray or dask array, shape (y, x, n_energy)
        Counts (any real dtype, >= 0). An xarray DataArray is accepted through its ``.data``.
    energy_ev : ndarray, shape (n_energy,)
        Channel-centre energies, eV, strictly increasing.
    elements : sequence of str
        Element symbols, any case (``["Sr", "Ti", "O"]`` or ``"Sr,Ti,O"``).
    signal_type : {'EDX', 'EELS'}
        EDX: window around the X-ray line, linear background from two side windows.
        EELS: window above the edge, power-law background fitted before the edge.
    windows : dict, optional
        Per-element windows in eV overriding the table, e.g. ``{"Fe": (6250, 6550)}``; see
        :func:`map_windows` for the full form.
    clip_negative : bool
        Set negative net counts (noise after background subtraction) to 0.
    lines : dict, optional
        Per-element X-ray line / EELS edge instead of the automatic choice (``{"Au": "Ma"}``).
    fwhm_mnka_ev : float
        EDX detector resolution at Mn Ka (eV), which sets the default window widths.

    Returns
    -------
    maps : ndarray or dask array, shape (n_elements, y, x), float32
        Net counts per pixel in each element's window. Lazy (a dask array with the input's
        (y, x) chunks) when `spectrum` is a dask array.
    info : list of dict
        Per element, the windows used (:meth:`MapWindows.to_dict`), JSON-able provenance.

    Raises
    ------
    SpectrumError
        Bad shape, energy axis, NaN/Inf or negative counts (for dask input: raised when the
        maps are computed, so that nothing is loaded here).
    WindowError
        A window outside the energy range (a subclass of SpectrumError).
    UnknownElement
        An element symbol that is not an element.

    Examples
    --------
    >>> energy_ev = np.arange(1024) * 20.0
    >>> e = energy_ev - 6403.8
    >>> peak = 1000 * np.exp(-0.5 * (e / 57.2) ** 2) * 20 / (57.2 * np.sqrt(2 * np.pi))
    >>> maps, info = elemental_maps(np.tile(peak + 5.0, (2, 2, 1)), energy_ev, ["Fe"])
    >>> 800 < float(maps[0, 0, 0]) < 1000   # ~84 % of the peak falls in a 1.2 FWHM window
    True
    """
    if hasattr(spectrum, "dims") and hasattr(spectrum, "data"):  # xarray.DataArray
        spectrum = spectrum.data
    lazy = _is_dask(spectrum)
    if not lazy:
        spectrum = np.asarray(spectrum)
    _check_spectrum_shape(spectrum)
    energy_arr = np.asarray(energy_ev)
    if energy_arr.ndim == 1 and energy_arr.size and energy_arr.size != spectrum.shape[-1]:
        raise SpectrumError(
            f"energy_ev has {energy_arr.size} values but the spectrum's last axis has "
            f"{spectrum.shape[-1]} channels: the spectrum must be (y, x, energy) with one "
            f"energy per channel{_hint_axis(tuple(spectrum.shape), energy_arr.size)}"
        )
    energy = _check_energy(energy_arr, spectrum.shape[-1])
    wins = map_windows(energy, elements, signal_type=signal_type, windows=windows, lines=lines,
                       fwhm_mnka_ev=fwhm_mnka_ev)
    info = [w.to_dict() for w in wins]
    plan = _make_plan(wins, energy, clip_negative)
    n_maps = len(wins)

    if lazy:
        if spectrum.dtype.kind not in "uif":
            raise SpectrumError(f"spectrum must hold numbers (counts), got dtype {spectrum.dtype}")
        # Every map needs whole spectra (windows and background fits span many channels), so
        # the energy axis must be one chunk; rechunking only that axis keeps the (y, x) chunks.
        if len(spectrum.chunks[2]) > 1:
            spectrum = spectrum.rechunk({2: -1})
        maps = spectrum.map_blocks(
            _maps_block,
            plan=plan,
            dtype=np.float32,
            drop_axis=2,
            new_axis=0,
            chunks=((n_maps,), *spectrum.chunks[:2]),
            meta=np.empty((0, 0, 0), dtype=np.float32),
        )
        return maps, info

    ny, nx, ne = spectrum.shape
    rows = max(1, _SLAB_VALUES // max(1, nx * ne))
    maps = np.empty((n_maps, ny, nx), dtype=np.float32)
    for start in range(0, ny, rows):
        stop = min(ny, start + rows)
        maps[:, start:stop] = _maps_block(spectrum[start:stop], plan, origin=(start, 0))
    return maps, info
