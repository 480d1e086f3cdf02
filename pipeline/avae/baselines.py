"""What the AVAE is compared with, and how every method is scored against the truth.

Every method's image is first calibrated to the truth by an affine fit per image
(``a * image + c``, least squares, :func:`calibrate`): the truth is a projected potential and
each mode (and each fusion) a different transform of it in other units, so only the
structure is compared. PSNR (data range = the truth's max - min) and SSIM (gaussian window,
sigma 1.5 px) come from :mod:`emfuse.pipeline.metrics`.

Baselines on the same preprocessed modes as the networks:

``hrtem``     the HRTEM alone;
``average``   the plain mean of the registered modes;
``weighted``  a fixed linear combination ``sum_i w_i m_i``, the weights fitted by least squares
              to the (standardised) truth of the validation regions (:func:`fit_mode_weights`),
              standing in for an expert's weights (a least-squares fit is at least as good on
              the validation data as any weights an expert would choose).

and on the HRTEM as recorded (flat-fielded only, before the preprocessing's equalisation and
fixed gaussian denoising), the single-mode baselines a microscopist would try first:

``hrtem_wiener``    the HRTEM through a Wiener filter estimated from the image alone
                    (:func:`wiener_filter`: its noise level from the spectrum's outer band, so
                    the cutoff follows the data, lattice reflections included);
``hrtem_restored``  the HRTEM restored by the project's default restoration network
                    (``load_model()``, :mod:`emfuse.pipeline.restore`), and ``hrtem_r_em`` by the
                    published ``r_em:sfr_hrtem`` (benchmarks/avae_eval.py).

Examples
--------
>>> import numpy as np
>>> truth = np.random.default_rng(0).random((32, 32))
>>> scores = score(5 * truth + 2, truth)
>>> round(scores["ssim"], 6), scores["psnr"] > 100
(1.0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import fft, ndimage

from emfuse.pipeline.metrics import psnr, ssim

from ...errors import InputError

#: The smallest side :func:`wiener_filter` takes: its noise level comes from the image's spectrum.
WIENER_MIN_PX = 16

__all__ = ["average", "calibrate", "fit_mode_weights", "score", "weighted", "wiener_filter"]

#: Spatial frequencies (cycles/px) from which :func:`wiener_filter` takes a spectrum to be noise.
NOISE_BAND = 0.4
#: :func:`wiener_filter` subtracts the noise power this many times: the smoothed power of a
#: noise-only coefficient (3 x 3 coefficients: a chi-square law of 9 degrees over 9) exceeds twice
#: its mean with probability 4 %, where a plain Wiener gain (1) lets much of the noise through.
OVERSUBTRACT = 2.0
#: The median of a chi-square law of one degree of freedom: the median power of white noise of unit variance.
CHI2_1_MEDIAN = 0.4549364


def calibrate(image: Any, truth: Any) -> np.ndarray:
    """``a * image + c`` with ``a, c`` fitted to ``truth`` by least squares.

    Examples
    --------
    >>> t = np.array([0.0, 1.0, 2.0])
    >>> calibrate(-2 * t + 1, t).round(6).tolist()
    [0.0, 1.0, 2.0]
    """
    est = np.asarray(image, dtype=np.float64)
    ref = np.asarray(truth, dtype=np.float64)
    if est.shape != ref.shape:
        raise InputError(f"image {est.shape} and truth {ref.shape} differ in shape")
    design = np.stack([est.ravel(), np.ones(est.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, ref.ravel(), rcond=None)
    return (design @ coef).reshape(est.shape)


def score(image: Any, truth: Any) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``image`` against ``truth`` after the affine calibration."""
    ref = np.asarray(truth, dtype=np.float64)
    fitted = calibrate(image, ref)
    return {"psnr": psnr(fitted, ref), "ssim": ssim(fitted, ref)}


def average(modes: Any) -> np.ndarray:
    """Plain mean over the mode axis (mode, y, x) -> (y, x)."""
    return np.asarray(modes, dtype=np.float64).mean(axis=0)


def fit_mode_weights(modes: Sequence[Any], truths: Sequence[Any]) -> np.ndarray:
    """Least-squares weights ``w`` (one per mode, then an offset) of ``truth ~ sum_i w_i m_i + w_n``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> m = rng.random((3, 16, 16))
    >>> fit_mode_weights([m], [0.2 * m[0] + 0.8 * m[2] - 1]).round(6).tolist()
    [0.2, 0.0, 0.8, -1.0]
    """
    rows = []
    for m in modes:
        m = np.asarray(m, dtype=np.float64)
        rows.append(np.concatenate([m.reshape(m.shape[0], -1), np.ones((1, m[0].size))]).T)
    target = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in truths])
    coef, *_ = np.linalg.lstsq(np.concatenate(rows), target, rcond=None)
    return coef


def weighted(modes: Any, weights: Any) -> np.ndarray:
    """``sum_i w_i m_i + w_n`` with weights from :func:`fit_mode_weights`."""
    m = np.asarray(modes, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w[:-1], m, axes=1) + w[-1]


def wiener_filter(image: Any, *, noise_band: float = NOISE_BAND, smooth_bins: int = 3) -> np.ndarray:
    """An empirical Wiener filter of ``image`` whose noise level and cutoff come from the image alone.

    The image's cosine transform (DCT-II, orthonormal: white noise of variance ``v`` stays white,
    every coefficient independent with mean square ``v``, and the image is taken as mirrored at its
    edges, so no wrap-around) has its power ``P`` smoothed over ``smooth_bins`` x ``smooth_bins``
    coefficients, and each coefficient kept with the gain ``max(0, 1 - 2 N / P)``
    (:data:`OVERSUBTRACT`: the smoothed noise fluctuates too). ``N``, the white-noise power, is the
    median power of the coefficients of at least ``noise_band`` cycles/px divided by 0.455 (the
    median of a chi-square law of one degree): past the information limit of an HRTEM the
    spectrum is noise, and the sparse lattice reflections there do not move a median. The gain
    thus falls to 0 where the signal sinks below the noise, a cutoff chosen by the data, in every
    direction on its own (a lattice reflection above the floor is kept).

    Parameters
    ----------
    image : array_like
        The image (y, x), raw units.
    noise_band : float
        Lowest spatial frequency (cycles/px, at most 0.5) taken to hold only noise.
    smooth_bins : int
        Side of the box that smooths the periodogram before the gain.

    Returns
    -------
    numpy.ndarray
        The filtered image (y, x), float64, same mean.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y, x = np.mgrid[:128, :128]
    >>> lattice = np.cos(2 * np.pi * x / 8) * np.cos(2 * np.pi * y / 8)
    >>> noisy = lattice + rng.normal(0, 1, lattice.shape)
    >>> err = lambda a: float(np.sqrt(np.mean((a - lattice) ** 2)))
    >>> err(noisy) > 0.95, err(wiener_filter(noisy)) < 0.25
    (True, True)
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < WIENER_MIN_PX:
        raise InputError(f"wiener_filter needs an image (y, x) of at least {WIENER_MIN_PX} x {WIENER_MIN_PX} px, "
                         f"got shape {a.shape}")
    if not 0 < noise_band < 0.5:
        raise InputError(f"noise_band must be within (0, 0.5) cycles/px, got {noise_band}")
    mean = a.mean()
    coef = fft.dctn(a - mean, type=2, norm="ortho")
    power = coef**2
    # DCT-II bin k of n samples is the frequency k / (2 n) cycles/px
    radius = np.hypot(np.arange(a.shape[0])[:, None] / (2 * a.shape[0]),
                      np.arange(a.shape[1])[None, :] / (2 * a.shape[1]))
    noise = np.median(power[radius >= noise_band]) / CHI2_1_MEDIAN
    smoothed = ndimage.uniform_filter(power, smooth_bins, mode="reflect")
    gain = np.clip(1.0 - OVERSUBTRACT * noise / np.maximum(smoothed, np.finfo(float).tiny), 0.0, 1.0)
    gain[0, 0] = 1.0
    return fft.idctn(coef * gain, type=2, norm="ortho") + mean
