"""Detector distortions shared by TEM cameras and S(T)EM detectors, and the input checks.

Lobato, Friedrich & Van Aert, "Deep convolutional neural networks to restore single-shot
electron microscopy images", npj Comput. Mater. (2024), arXiv:2303.17025 (below: *r_em*),
section "Methods", distortion models: shot noise, readout noise, black (dead) pixels, zingers
(X-ray hits, hot pixels), upper clip (saturation) and quantisation (analogue-to-digital
conversion) occur in both kinds of detector; the modality-specific models are in
:mod:`emfuse.pipeline.synth.distortions.tem` and :mod:`emfuse.pipeline.synth.distortions.stem`.

Every function takes one image (H, W) or a stack (N, H, W) of float intensities, returns a new
array of the same shape (float32 stays float32, anything else becomes float64) and never
modifies its input. Random draws come from the ``rng`` passed in (``np.random.default_rng``),
so a seeded generator reproduces the distortion exactly.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> counts = shot_noise(np.full((64, 64), 0.5), dose=200.0, rng=rng)
>>> round(float(counts.mean()))
100
>>> quantise(np.array([[0.0, 0.26], [0.74, 1.0]]), bits=1).tolist()
[[0.0, 0.0], [1.0, 1.0]]
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

from emfuse.errors import InputError

__all__ = [
    "black_pixels",
    "check_image",
    "check_rng",
    "quantise",
    "readout_noise",
    "shot_noise",
    "upper_clip",
    "zingers",
]


# --------------------------------------------------------------------------------------------
# Input checks (used by every distortion module)
# --------------------------------------------------------------------------------------------
def check_image(image: Any, name: str = "image") -> np.ndarray:
    """The image as a float array (H, W) or (N, H, W); a ValueError that says how to fix it.

    float32 stays float32 (training data are float32; no silent doubling of memory), every
    other real dtype becomes float64. The array is not copied when it already fits.

    Examples
    --------
    >>> check_image(np.zeros((4, 4), np.uint8)).dtype
    dtype('float64')
    >>> check_image(np.zeros(4))
    Traceback (most recent call last):
    ...
    emfuse.errors.InputError: image must be one image (H, W) or a stack (N, H, W), got shape (4,); reshape it (e.g. image[None] or image.reshape(H, W))
    """
    a = np.asarray(image)
    if a.dtype.kind not in "fiu":
        raise InputError(f"{name} must be a real numeric array, got dtype {a.dtype}; "
                         f"convert it with np.asarray({name}, dtype=np.float32)")
    if a.ndim not in (2, 3):
        raise InputError(f"{name} must be one image (H, W) or a stack (N, H, W), got shape "
                         f"{a.shape}; reshape it (e.g. {name}[None] or {name}.reshape(H, W))")
    if a.shape[-1] < 2 or a.shape[-2] < 2 or a.size == 0:
        raise InputError(f"{name} must be at least 2 x 2 pixels, got shape {a.shape}")
    dtype = np.float32 if a.dtype == np.float32 else np.float64
    a = a.astype(dtype, copy=False)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or Inf; replace them before distorting "
                         f"(e.g. np.nan_to_num({name}) or inpaint the bad pixels)")
    return a


def check_nonnegative_image(image: Any, name: str = "image") -> np.ndarray:
    """:func:`check_image`, and every value must be >= 0 (an intensity, a Poisson mean)."""
    a = check_image(image, name)
    if a.min() < 0:
        raise InputError(f"{name} must be a non-negative intensity (min {float(a.min()):.3g}); "
                         f"subtract its minimum or clip it at 0 (np.clip({name}, 0, None))")
    return a


def check_rng(rng: Any) -> np.random.Generator:
    """``rng`` must be a ``np.random.Generator`` (reproducible, independent streams)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}; "
                        f"pass np.random.default_rng(seed)")
    return rng


def check_number(value: Any, name: str, *, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False, fix: str = "") -> float:
    """A finite real number in [low, high] (ends open where asked), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.number)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}{fix}")
    v = float(value)
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise InputError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {v:g}{fix}")
    return v


def _fraction(value: Any, name: str) -> float:
    return check_number(value, name, low=0.0, high=1.0,
                        fix=" (a fraction of the pixels, e.g. 1e-3)")


# --------------------------------------------------------------------------------------------
# Distortions
# --------------------------------------------------------------------------------------------
def shot_noise(image: Any, dose: float, rng: np.random.Generator) -> np.ndarray:
    """Electron (TEM) or scintillator (S(T)EM) shot noise: ``counts ~ Poisson(dose * image)``.

    r_em, Methods: the detected number of electrons at a pixel is Poisson distributed about
    its expectation; the expectation is the noise-free intensity times the dose scale. The
    result is in detector counts (electrons per pixel): mean ``dose * image`` and variance
    ``dose * image``. The paper draws the dose over a wide range so that the network sees
    signal-to-noise ratios from a few counts per pixel up to nearly noise-free images
    (:data:`emfuse.pipeline.synth.distortions.SETTINGS` holds the ranges used here).

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
        Noise-free intensity, >= 0 (relative units).
    dose : float
        Expected counts at intensity 1, > 0 (electrons per pixel per unit intensity).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, same shape
        Counts (integers stored as floats).

    Examples
    --------
    >>> c = shot_noise(np.ones((100, 100)), 4.0, np.random.default_rng(1))
    >>> abs(float(c.mean()) - 4) < 0.1, abs(float(c.var()) - 4) < 0.2
    (True, True)
    """
    a = check_nonnegative_image(image)
    dose = check_number(dose, "dose", low=0.0, low_open=True,
                        fix=" (expected electrons per pixel at intensity 1; use a positive dose)")
    check_rng(rng)
    return rng.poisson(a * dose).astype(a.dtype)


def readout_noise(image: Any, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white gaussian readout noise of standard deviation ``sigma`` (counts).

    r_em, Methods (TEM detector noise): the electronics that amplify and digitise the charge
    add zero-mean gaussian noise independent of the signal. The same function models the
    gaussian noise of the S(T)EM photomultiplier (:func:`emfuse.pipeline.synth.distortions.stem.pmt_noise`).

    Examples
    --------
    >>> n = readout_noise(np.zeros((200, 200)), 3.0, np.random.default_rng(2))
    >>> round(float(n.std()), 1)
    3.0
    """
    a = check_image(image)
    sigma = check_number(sigma, "sigma", low=0.0, fix=" (a standard deviation in counts)")
    check_rng(rng)
    return a + rng.normal(0.0, sigma, a.shape).astype(a.dtype)


def black_pixels(image: Any, fraction: float, rng: np.random.Generator,
                 value: float = 0.0) -> np.ndarray:
    """Dead (black) pixels: each pixel is set to ``value`` with probability ``fraction``.

    r_em, Methods: permanently damaged sensor pixels (TEM) or lost samples (S(T)EM) show as
    isolated black pixels at random positions. Training draws a fraction of the order of 1e-4
    to 1e-3 (see :data:`emfuse.pipeline.synth.distortions.SETTINGS`).

    Examples
    --------
    >>> b = black_pixels(np.ones((100, 100)), 0.1, np.random.default_rng(3))
    >>> abs(float((b == 0).mean()) - 0.1) < 0.01
    True
    """
    a = check_image(image)
    fraction = _fraction(fraction, "fraction")
    value = check_number(value, "value")
    check_rng(rng)
    out = a.copy()
    out[rng.random(a.shape) < fraction] = value
    return out


def zingers(image: Any, fraction: float, level: float, rng: np.random.Generator,
            max_size: int = 1) -> np.ndarray:
    """Zingers: bright spots where an X-ray or a stray electron saturated one or a few pixels.

    r_em, Methods (X-ray noise): an X-ray crossing the sensor deposits far more charge than a
    beam electron and saturates one or more neighbouring pixels. Each pixel is the corner of a
    zinger with probability ``fraction``; a zinger is a square of side ``s`` drawn uniformly in
    ``1..max_size`` whose pixels are set to ``level`` (the saturation level, or any bright
    value). With ``max_size=1`` the fraction of zinger pixels is ``fraction`` (hot pixels).

    Examples
    --------
    >>> z = zingers(np.zeros((100, 100)), 0.01, 50.0, np.random.default_rng(4))
    >>> round(float((z == 50).mean()), 2)
    0.01
    """
    a = check_image(image)
    fraction = _fraction(fraction, "fraction")
    level = check_number(level, "level")
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
        raise InputError(f"max_size must be a positive integer (pixels), got {max_size!r}")
    check_rng(rng)
    out = a.copy()
    *lead, ny, nx = a.shape
    n_images = int(np.prod(lead)) if lead else 1
    flat = out.reshape(n_images, ny, nx)
    n = rng.binomial(flat.size, fraction)
    if n == 0:
        return out
    corners = rng.choice(flat.size, size=n, replace=False)
    k, y, x = np.unravel_index(corners, flat.shape)
    size = rng.integers(1, max_size + 1, n)
    for dy in range(max_size):
        for dx in range(max_size):
            hit = (dy < size) & (dx < size) & (y + dy < ny) & (x + dx < nx)
            flat[k[hit], y[hit] + dy, x[hit] + dx] = level
    return out


def upper_clip(image: Any, level: float) -> np.ndarray:
    """Saturation: values above ``level`` are set to ``level``.

    r_em, Methods: a detector (or its ADC) saturates at a full-well or full-scale value;
    bright features (thick areas, zingers, the vacuum in TEM) are cut flat there.

    Examples
    --------
    >>> upper_clip(np.array([[1.0, 5.0], [3.0, 9.0]]), 4.0).tolist()
    [[1.0, 4.0], [3.0, 4.0]]
    """
    a = check_image(image)
    level = check_number(level, "level", fix=" (the saturation value, in the image's units)")
    return np.minimum(a, a.dtype.type(level))


def quantise(image: Any, bits: int, vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """Analogue-to-digital conversion with ``bits`` bits over the range [vmin, vmax].

    r_em, Methods (quantisation noise): the signal is clipped to the converter's range and
    rounded to one of ``2**bits`` equally spaced levels; the result is given back in the
    input's units, so the error is at most half a step, ``(vmax - vmin) / (2**bits - 1) / 2``.
    Without `vmin`/`vmax` the range is each image's own minimum and maximum (a converter
    whose range was set to the signal, or an image saved with ``bits`` bits).

    Examples
    --------
    >>> q = quantise(np.linspace(0, 1, 1000).reshape(10, 100), bits=3)
    >>> len(np.unique(q))
    8
    """
    a = check_image(image)
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise InputError(f"bits must be an integer in 1..32, got {bits!r}")
    axes = (-2, -1)
    lo = a.min(axis=axes, keepdims=True) if vmin is None else check_number(vmin, "vmin")
    hi = a.max(axis=axes, keepdims=True) if vmax is None else check_number(vmax, "vmax")
    if np.any(np.asarray(hi) < np.asarray(lo)):
        raise InputError(f"vmax must be >= vmin, got vmin={vmin!r}, vmax={vmax!r}")
    step = (np.asarray(hi, dtype=np.float64) - lo) / (2.0 ** bits - 1)
    safe = np.where(step > 0, step, 1.0)
    levels = np.round((np.clip(a, lo, hi) - lo) / safe)
    return (lo + levels * step).astype(a.dtype)
