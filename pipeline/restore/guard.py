"""Never harm: test what a restoration network took out of an image, and put back what it should not have.

A network shown an image unlike its training data can remove real signal: the project's
default model wipes out fine crystal lattices the raw frame plainly shows, and blurs particles.
What it took out is the residual ``r = raw - restored``. For a good denoiser ``r`` is noise:
no lattice, nothing the raw frame shows clearly. This module measures that, frame by frame,
and decides what to keep (:func:`guard`):

``"kept"``
    the network's output: the residual holds no structure the input shows;
``"reinjected"``
    the output plus the structured part of the residual (the lattice the network removed,
    put back by a Fourier-domain gain ~1 on the residual's peaks, 0 at its noise floor and
    away from the input's own lattice peaks), when that passes the same check;
``"input"``
    the raw frame: a noise-free input the network changed (every change is harm there), or
    an output that still fails after the reinjection.

What is measured (:func:`check_residual`)
-----------------------------------------
* **Spectra** of the raw frame, the output and the residual, each mean-subtracted and
  tapered by a 2D Hann window (against the leakage of the frame's edges).
* **A local noise floor** of the raw spectrum: the median over blocks of
  :data:`FLOOR_BLOCK` x :data:`FLOOR_BLOCK` frequency bins. Noise spectra are smooth but
  not flat nor isotropic (scanned images carry noise correlated along the fast scan, a band
  around ``kx = 0``); lattice reflections are a few bins wide, so a median over 64 bins
  ignores them while following the noise wherever it goes.
* **Lattice peaks of the input**: bins beyond :data:`MIN_RADIUS_BINS` from the origin whose
  power exceeds :data:`PEAK_OVER_FLOOR` times the floor (a noise bin's power is exponentially
  distributed: it exceeds 20 x its median with probability ``2**-20``, one bin in a million).
* ``lattice_excess``: the power of those peaks above the floor over the total floor power
  (how clearly the input shows a lattice); ``lattice_kept``: the fraction of the peaks' power
  that is in the output; ``lattice_removed``: the fraction that is in the residual.
* ``residual_corr``: correlation of the residual with the output, each minus its 9 x 9 local
  mean (recorded; it does not separate good from harmful outputs, see the docs).
* ``noise_fraction``: the input's noise power, the median of its spectrum beyond 0.375
  cycles/px, over its variance; below :data:`NOISE_FREE` the input is noise-free.
* ``residual_fraction``: the residual's variance over the input's.

Harmful when the input shows a lattice (``lattice_excess >= MIN_LATTICE_EXCESS``) and the
output keeps less than :data:`MAX_LATTICE_LOST` of it, or when a noise-free input was
changed by more than :data:`NOISE_FREE_CHANGE` of its variance. The figures and their
choice are in ``docs/methods/restoration.md`` ("Never harm").

Why not :class:`emfuse.pipeline.fusion.noise.NoiseModel`: it measures the noise from 3 x 3
residuals, so it counts a fine lattice's curvature as noise (a noise-free lattice came out
"noisy") and assumes white noise (the MULTEM STEM frames, whose noise is correlated along the
scan, gave variances from 1e-4 to 1e7 of the true one). The spectral floor is what this test
compares against anyway.

Examples
--------
>>> import numpy as np
>>> from scipy import ndimage
>>> rng = np.random.default_rng(0)
>>> y, x = np.mgrid[:128, :128]
>>> truth = 50 * (1 + 0.3 * np.cos(2 * np.pi * (x + 0.3 * y) / 5))
>>> raw = rng.poisson(truth).astype(float)
>>> image, result = guard(raw, ndimage.gaussian_filter(raw, 3))  # a "model" that blurs the lattice away
>>> result.decision, result.harmful
('reinjected', True)
>>> _, kept = guard(raw, truth)  # a perfect denoiser
>>> kept.decision
'kept'
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["DECISIONS", "GuardResult", "check_residual", "guard", "guard_stack", "lattice_peaks", "reinject"]

FLOOR_BLOCK = 8  # frequency bins a side over which the noise floor is a median
PEAK_OVER_FLOOR = 20.0  # a lattice peak: power above this many times the local floor
MIN_RADIUS_BINS = 4  # bins nearer the origin are the frame's mean and gradients, not a lattice
MIN_LATTICE_EXCESS = 0.01  # the input shows a lattice: peak power >= 1 % of the floor's power
MAX_LATTICE_LOST = 0.3  # harmful: the output keeps less than 30 % of the input's lattice power
NOISE_FREE = 1e-7  # noise power below this fraction of the variance: a noise-free input
NOISE_FREE_CHANGE = 1e-4  # a noise-free input changed by more (residual variance): harmful
REINJECT_OVER_FLOOR = 4.0  # reinjection gain 1 - 4 floor / power: 0 at the residual's noise level
REINJECT_SPREAD = 3  # bins a side over which a peak's gain is spread (leakage; see reinject)
HIGH_FREQUENCY = 0.375  # cycles/px beyond which the input's spectrum measures its noise
LOCAL_MEAN_PX = 9  # box removed before correlating the residual with the output

#: decision names and the codes the restore job stores (``guard_decision``; 0: not checked)
DECISIONS = {"off": 0, "kept": 1, "reinjected": 2, "input": 3, "flat": 4}


@dataclass(frozen=True)
class GuardResult:
    """What the residual of one frame says, and what was kept.

    Attributes
    ----------
    harmful
        The network's output removed structure the input shows (or changed a noise-free input).
    reason
        One phrase: why (or ``""``).
    decision
        ``"kept"``, ``"reinjected"``, ``"input"`` or ``"flat"`` (set by :func:`guard`;
        :func:`check_residual` says ``"kept"`` or ``""`` for harmful).
    lattice_excess, lattice_kept, lattice_removed, residual_corr, noise_fraction, residual_fraction
        The figures of the module notes (of the network's output, before any fallback).
    """

    harmful: bool
    reason: str
    decision: str
    lattice_excess: float
    lattice_kept: float
    lattice_removed: float
    residual_corr: float
    noise_fraction: float
    residual_fraction: float

    def record(self) -> dict[str, Any]:
        """JSON-able figures (rounded)."""
        return {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


def power_spectrum(image: np.ndarray) -> np.ndarray:
    """Power spectrum (unshifted) of ``image`` minus its mean, under a 2D Hann window.

    The window is scaled to unit mean square, so white noise of variance ``v`` has a flat
    spectrum of mean ``v``.

    Parameters
    ----------
    image : numpy.ndarray
        An image (y, x).

    Returns
    -------
    numpy.ndarray
        The power per frequency (y, x), float64, zero frequency at [0, 0].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(float(power_spectrum(rng.normal(0, 2, (128, 128))).mean()), 1)
    4.0
    """
    a = np.asarray(image, np.float64)
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    window /= np.sqrt(np.mean(window**2))
    return np.abs(np.fft.fft2((a - a.mean()) * window)) ** 2 / a.size


def noise_floor(power: np.ndarray, block: int = FLOOR_BLOCK) -> np.ndarray:
    """The local median of a power spectrum over blocks of ``block`` x ``block`` bins.

    Sparse peaks (lattice reflections) do not move a median: the floor is the noise's level.

    Parameters
    ----------
    power : numpy.ndarray
        A power spectrum (y, x) (:func:`power_spectrum`).
    block : int
        The side of the blocks, in frequency bins.

    Returns
    -------
    numpy.ndarray
        The floor (y, x), each bin the median of its block.

    Examples
    --------
    >>> p = np.ones((32, 32)); p[5, 7] = 1e6
    >>> float(noise_floor(p).max())
    1.0
    """
    shifted = np.fft.fftshift(power)
    ny, nx = shifted.shape
    padded = np.pad(shifted, ((0, -ny % block), (0, -nx % block)), mode="reflect")
    by, bx = padded.shape[0] // block, padded.shape[1] // block
    medians = np.median(padded.reshape(by, block, bx, block).transpose(0, 2, 1, 3).reshape(by, bx, -1), axis=-1)
    full = np.repeat(np.repeat(medians, block, axis=0), block, axis=1)[:ny, :nx]
    return np.fft.ifftshift(full)


def lattice_peaks(power: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """The bins of a lattice the image plainly shows: above :data:`PEAK_OVER_FLOOR` x its floor.

    Bins nearer the origin than :data:`MIN_RADIUS_BINS` (the frame's mean and gradients) are
    left out. An exponentially distributed noise bin exceeds 20 x its median with probability
    ``2**-20``; the floor, a median of 64 bins, is itself noisy, and in white noise about one
    bin in 130,000 passes (0.13 per 128 x 128 frame).

    Parameters
    ----------
    power : numpy.ndarray
        A power spectrum (y, x) (:func:`power_spectrum`).
    floor : numpy.ndarray
        Its noise floor (:func:`noise_floor`).

    Returns
    -------
    numpy.ndarray
        Boolean mask (y, x).

    Examples
    --------
    >>> p = np.ones((32, 32)); p[5, 7] = 1e3; p[0, 1] = 1e3
    >>> np.argwhere(lattice_peaks(p, noise_floor(p))).tolist()  # [0, 1] is a gradient, not a lattice
    [[5, 7]]
    """
    away = _radius(power.shape) * min(power.shape) >= MIN_RADIUS_BINS
    return away & (power > PEAK_OVER_FLOOR * floor)


def _radius(shape: tuple[int, ...]) -> np.ndarray:
    """Distance of each (unshifted) frequency bin from the origin, in cycles/px."""
    return np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :])


def _detail(image: np.ndarray) -> np.ndarray:
    return image - ndimage.uniform_filter(image, LOCAL_MEAN_PX, mode="reflect")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / norm) if norm > 0 else 0.0


def check_residual(raw: np.ndarray, restored: np.ndarray) -> GuardResult:
    """Measure the residual ``raw - restored`` of one frame and say whether it carries signal.

    Parameters
    ----------
    raw, restored
        (y, x) arrays, same shape and units.

    Returns
    -------
    GuardResult
        ``decision`` is ``"kept"`` when not harmful, ``""`` otherwise (:func:`guard` decides).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y, x = np.mgrid[:128, :128]
    >>> lattice = 100 + 30 * np.cos(2 * np.pi * x / 6) * np.cos(2 * np.pi * y / 6)
    >>> check_residual(lattice, np.full_like(lattice, 100.0)).reason  # noise-free, and changed
    'noise-free input changed'
    >>> raw = rng.poisson(lattice).astype(float)
    >>> check_residual(raw, np.full_like(raw, raw.mean())).reason
    'lattice removed'
    >>> check_residual(raw, lattice).harmful
    False
    """
    raw = np.asarray(raw, np.float64)
    restored = np.asarray(restored, np.float64)
    residual = raw - restored
    variance = float(raw.var())
    if variance == 0:
        return GuardResult(False, "flat", "flat", 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    p_raw, p_out, p_res = power_spectrum(raw), power_spectrum(restored), power_spectrum(residual)
    floor = noise_floor(p_raw)
    radius = _radius(raw.shape)
    away = radius * min(raw.shape) >= MIN_RADIUS_BINS
    peaks = lattice_peaks(p_raw, floor)
    peak_power = float(p_raw[peaks].sum())
    excess = float((p_raw - floor)[peaks].sum() / max(floor[away].sum(), 1e-300))
    kept = float(p_out[peaks].sum() / peak_power) if peak_power > 0 else 1.0
    removed = float(p_res[peaks].sum() / peak_power) if peak_power > 0 else 0.0
    noise = float(np.median(p_raw[radius >= HIGH_FREQUENCY]) / variance)
    changed = float(residual.var() / variance)
    corr = _correlation(_detail(residual), _detail(restored))
    reason = ""
    if noise < NOISE_FREE and changed > NOISE_FREE_CHANGE:
        reason = "noise-free input changed"
    elif excess >= MIN_LATTICE_EXCESS and kept < MAX_LATTICE_LOST:
        reason = "lattice removed"
    return GuardResult(bool(reason), reason, "" if reason else "kept", excess, kept, removed, corr, noise, changed)


def reinject(raw: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """The output plus the structured part of the residual: a Wiener-like gain on its spectrum.

    ``restored + ifft(W * fft(r))`` with ``W = max(0, 1 - 4 floor / power)`` per frequency
    bin, where ``power`` is the residual's spectrum and ``floor`` its local median
    (:func:`noise_floor`): ~1 on the peaks the network removed (the lattice comes back),
    0 where the residual is at its noise level (the denoising is kept). ``W`` is 0 away from
    the input's own lattice peaks (:func:`lattice_peaks`, with their neighbours): what the
    input does not plainly show is never put back, whatever peaks the residual has.

    Parameters
    ----------
    raw : numpy.ndarray
        The input image (y, x).
    restored : numpy.ndarray
        The network's output for it (y, x).

    Returns
    -------
    numpy.ndarray
        ``restored`` with the structured part of ``raw - restored`` added back.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> y, x = np.mgrid[:64, :64]
    >>> truth = 10 * np.cos(2 * np.pi * x / 4)
    >>> raw = truth + rng.normal(0, 1, truth.shape)
    >>> back = reinject(raw, np.zeros_like(raw))  # the output lost everything
    >>> bool(np.abs(back - truth).std() < 0.5 * np.abs(raw - truth).std())
    True
    """
    raw = np.asarray(raw, np.float64)
    restored = np.asarray(restored, np.float64)
    residual = raw - restored
    power = power_spectrum(residual)
    floor = noise_floor(power)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.clip(1.0 - REINJECT_OVER_FLOOR * floor / power, 0.0, 1.0)
    gain[~np.isfinite(gain)] = 0.0
    # a lattice whose period is not a whole fraction of the frame leaks, in the unwindowed
    # transform, into the bins beside its peak: the gain of a peak covers its neighbours
    gain = ndimage.maximum_filter(gain, size=REINJECT_SPREAD, mode="wrap")
    # only at the lattice the input plainly shows: elsewhere a peak of the residual is the
    # network's own structure or the noise's (scan noise, strong noise bins), not lost signal
    p_raw = power_spectrum(raw)
    shown = lattice_peaks(p_raw, noise_floor(p_raw))
    gain *= ndimage.maximum_filter(shown, size=REINJECT_SPREAD, mode="wrap")
    gain[0, 0] = 0.0  # the mean: the network's level is kept (the residual's mean is no lattice)
    return restored + np.real(np.fft.ifft2(gain * np.fft.fft2(residual)))


def guard(raw: np.ndarray, restored: np.ndarray) -> tuple[np.ndarray, GuardResult]:
    """The image to keep for one frame, and the decision with the figures of the network's output.

    Kept when :func:`check_residual` finds no harm; a noise-free input changed by the network
    comes back as it was; otherwise the removed structure is put back (:func:`reinject`) and,
    when the result still fails the check, the raw frame is kept.

    Parameters
    ----------
    raw, restored
        (y, x) arrays of the same shape.

    Returns
    -------
    image : ndarray
        ``restored`` itself (same object) when kept, else a new float array.
    result : GuardResult

    Examples
    --------
    >>> flat = np.full((32, 32), 5.0)
    >>> out, result = guard(flat, flat + 1)
    >>> result.decision, out is not None
    ('flat', True)
    """
    result = check_residual(raw, restored)
    if result.decision in ("kept", "flat"):
        return restored, result
    if result.reason == "noise-free input changed":
        return np.array(raw, dtype=np.result_type(restored, np.float32)), _decided(result, "input")
    back = reinject(raw, restored)
    if not check_residual(raw, back).harmful:
        return back.astype(np.result_type(restored, np.float32)), _decided(result, "reinjected")
    return np.array(raw, dtype=np.result_type(restored, np.float32)), _decided(result, "input")


def _decided(result: GuardResult, decision: str) -> GuardResult:
    return GuardResult(**{**asdict(result), "decision": decision})


def guard_stack(raw: np.ndarray, restored: np.ndarray) -> Iterator[tuple[int, np.ndarray, GuardResult]]:
    """:func:`guard` frame by frame over (frame, y, x) stacks: (index, image, result).

    Parameters
    ----------
    raw, restored : numpy.ndarray
        The input stack and the network's output for it (frame, y, x).

    Yields
    ------
    index : int
        The frame.
    image : numpy.ndarray
        What the guard keeps for it (:func:`guard`).
    result : GuardResult
        Its measures and decision.

    Examples
    --------
    >>> stack = np.zeros((2, 16, 16))
    >>> [r.decision for _, _, r in guard_stack(stack, stack)]
    ['flat', 'flat']
    """
    for index, (frame, out) in enumerate(zip(raw, restored)):
        image, result = guard(frame, out)
        yield index, image, result
