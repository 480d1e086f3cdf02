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

from emfuse.pipeline.metrics import psnr, ssim

from ...errors import InputError

__all__ = ["average", "calibrate", "fit_mode_weights", "score", "weighted"]


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
