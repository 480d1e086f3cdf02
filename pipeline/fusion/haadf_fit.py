"""The HAADF model's per-element weights and exponent fitted to the data.

The fusion's HAADF model is ``sum_i w_i x_i^gamma`` on min-max normalised maps; by default
``w_i = Z_i / mean(Z)`` and ``gamma = 1.6`` (:func:`.model.haadf_weights`). Here both are
estimated from the data instead, without a ground truth.

Why two independent halves
--------------------------
Regressing the HAADF on the noisy maps by least squares biases the weights (errors in
variables: the regressors' noise inflates ``X'X``): it shrinks them, and with several
correlated elements and no offset the shrunk share of the heavy elements goes partly to the
weakest one (``tests/pipeline/test_haadf_fit.py``: at 5 counts per pixel the heaviest weight
2 comes out 1.83 and the weakest 0.3 comes out 0.40; the halves give 1.95 and 0.32). With two halves of the maps whose noises are independent (binomial
thinning of counts, :func:`.auto.thin_counts`, or the two colours of a :func:`checkerboard`
for any noise independent between pixels), ``(Y - X_A w)'(Y - X_B w)`` has the expectation of
the noise-free squared misfit plus a constant, so its minimiser over ``w >= 0`` is free of
that bias, and its value is a held-out misfit that can compare models (the probe width,
``gamma``) without a truth.

Regressors and target
---------------------
``Y`` is the normalised HAADF blurred by a gaussian of ``denoise_sigma`` (2 px), ``X_i`` a
half's normalised map blurred by ``sqrt(denoise_sigma^2 + probe_sigma^2)`` (the same
denoising plus the probe the HAADF saw) and raised to ``gamma``. The probe width is chosen
first at ``gamma = 1`` (the blur is linear), then the weights and misfit at each ``gamma``.
No offset: the solver's model has none.

Measured on synthetic data (``benchmarks/haadf_weight_fit.py``): the weights match those
regressed on the truth, the fit chose ``gamma = 1`` in all 18 cases (the synthetic HAADF
is linear in the concentrations).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..._lazy import lazy_module
from ...errors import InputError

ndimage = lazy_module("scipy.ndimage")

__all__ = ["DENOISE_SIGMA", "GAMMAS", "PROBE_SIGMAS", "HaadfFit", "checkerboard", "cross_fit",
           "fit_haadf_model"]

#: Exponents tried by :func:`fit_haadf_model`.
GAMMAS = (1.0, 1.3, 1.6)
#: Probe widths (gaussian sigma, px) tried by :func:`fit_haadf_model`.
PROBE_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0)
#: The gaussian blur (px) applied to the HAADF and the maps before the regression.
DENOISE_SIGMA = 2.0


def checkerboard(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The two colours of a checkerboard of ``shape``: two halves of the pixels.

    For noise independent between pixels, a map blurred over each colour alone (see
    :func:`cross_fit` ``masks``) gives two independent estimates of nearly the same blurred
    mean, for maps that are not counts (vendor-scaled, background-subtracted).

    Examples
    --------
    >>> even, odd = checkerboard((2, 3))
    >>> even.astype(int).tolist(), bool((even ^ odd).all())
    ([[1, 0, 1], [0, 1, 0]], True)
    """
    even = np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 2 == 0
    return even, ~even


def _nonneg_quadratic(q: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """``min_w w'Qw - 2 b'w`` over ``w >= 0``, by trying every set of free weights (a few elements)."""
    n = b.size
    best: tuple[float, np.ndarray] = (0.0, np.zeros(n))
    for free in itertools.product((False, True), repeat=n):
        idx = np.flatnonzero(free)
        if idx.size == 0:
            continue
        sub = q[np.ix_(idx, idx)]
        if np.linalg.eigvalsh(sub).min() <= 0:  # not convex on that face (very noisy halves)
            continue
        sol = np.linalg.solve(sub, b[idx])
        if (sol < 0).any():
            continue
        w = np.zeros(n)
        w[idx] = sol
        value = float(w @ q @ w - 2.0 * b @ w)
        if value < best[0]:
            best = (value, w)
    return best


def _regressors(maps: np.ndarray, gamma: float, sigma: float, mask: np.ndarray | None,
                valid: np.ndarray | None) -> np.ndarray:
    """Each map blurred (over ``mask`` only, by normalised convolution), clipped at 0, to the ``gamma``."""
    maps = np.asarray(maps, np.float64)
    if mask is None:
        blurred = [ndimage.gaussian_filter(m, sigma) for m in maps]
    else:
        weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
        blurred = [ndimage.gaussian_filter(m * mask, sigma) / np.maximum(weight, 1e-12) for m in maps]
    x = np.stack([np.clip(b, 0.0, None) ** gamma for b in blurred])
    return x[:, valid] if valid is not None else x.reshape(len(maps), -1)


def cross_fit(
    haadf: Any,
    halves: Sequence[tuple[Any, Any]],
    gamma: float,
    *,
    probe_sigma: float = 0.0,
    denoise_sigma: float = DENOISE_SIGMA,
    masks: tuple[np.ndarray, np.ndarray] | None = None,
    valid: Any = None,
) -> tuple[np.ndarray, float]:
    """Weights of ``haadf ~ sum_i w_i x_i^gamma`` (``w >= 0``) from independent halves, and the misfit.

    Parameters
    ----------
    haadf : array_like
        The normalised HAADF (y, x).
    halves : sequence of (array_like, array_like)
        Pairs ``(A, B)`` of normalised maps (element, y, x) with independent noise and the
        expected values of the full normalised maps (several pairs, e.g. folds, are pooled).
        With ``masks``, ``A`` and ``B`` may be the same maps.
    gamma : float
        The exponent of the model.
    probe_sigma : float
        Gaussian sigma (px) of the probe, applied to the maps on top of ``denoise_sigma``.
    denoise_sigma : float
        Gaussian sigma (px) applied to the HAADF and the maps.
    masks : (ndarray, ndarray) of bool, optional
        Blur ``A`` over the first mask's pixels only and ``B`` over the second's
        (:func:`checkerboard`).
    valid : array_like of bool, optional
        (y, x): the HAADF pixels to fit (False: saturated); default all. Pixels within three
        blur widths of an invalid one are left out too (the blur would carry its value in).

    Returns
    -------
    weights : numpy.ndarray
        (element,) float64, >= 0, in normalised units (the ``haadf_weights`` of
        :class:`~emfuse.pipeline.fusion.FusionParams`).
    misfit : float
        ``(Y - X_A w)'(Y - X_B w) / (n var(Y))``: the held-out fraction of the blurred HAADF's
        variance the model leaves unexplained (plus a constant, the HAADF's own noise), lower is
        better; may fall slightly below 0 when the model is exact.

    Examples
    --------
    A HAADF made of two smooth maps with weights 2 and 0.5, and two noisy halves:

    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> truth = np.stack([ndimage.gaussian_filter(rng.random((64, 64)), 4) for _ in range(2)])
    >>> truth = (truth - truth.min(axis=(1, 2), keepdims=True)) / np.ptp(truth, axis=(1, 2), keepdims=True)
    >>> haadf = 2.0 * truth[0] + 0.5 * truth[1]
    >>> halves = [tuple(truth + 0.3 * rng.standard_normal(truth.shape) for _ in range(2))]
    >>> w, misfit = cross_fit(haadf, halves, 1.0)
    >>> np.round(w, 1).tolist(), bool(misfit < 0.01)
    ([2.0, 0.5], True)
    """
    if not halves:
        raise InputError("cross_fit needs at least one pair of halves")
    sigma = float(np.hypot(denoise_sigma, probe_sigma))
    valid_flat = None
    if valid is not None:
        invalid = ~np.asarray(valid, bool)
        reach = int(np.ceil(3 * sigma))
        valid_flat = ~ndimage.binary_dilation(invalid, iterations=reach) if reach > 0 and invalid.any() else ~invalid
        if not valid_flat.any():
            raise InputError("no HAADF pixel is far enough from the saturated ones to fit the HAADF model")
    y_image = ndimage.gaussian_filter(np.asarray(haadf, np.float64), denoise_sigma)
    y = y_image[valid_flat] if valid_flat is not None else y_image.ravel()
    mask_a, mask_b = masks if masks is not None else (None, None)
    n = len(halves[0][0])
    q, b = np.zeros((n, n)), np.zeros(n)
    for a, c in halves:
        xa = _regressors(a, gamma, sigma, mask_a, valid_flat)
        xb = _regressors(c, gamma, sigma, mask_b, valid_flat)
        q += 0.5 * (xa @ xb.T + xb @ xa.T) / y.size
        b += 0.5 * (xa + xb) @ y / y.size
    q, b = q / len(halves), b / len(halves)
    value, w = _nonneg_quadratic(q, b)
    return w, float((value + y @ y / y.size) / max(float(y.var()), 1e-300))


@dataclass(frozen=True)
class HaadfFit:
    """The outcome of :func:`fit_haadf_model`.

    Attributes
    ----------
    weights
        The fitted weights at the chosen ``gamma`` (element order of the maps).
    gamma
        The exponent with the lowest misfit.
    probe_sigma
        The probe width with the lowest misfit at ``gamma = 1``.
    misfit
        The held-out misfit at each ``gamma`` tried.
    weights_by_gamma
        The fitted weights at each ``gamma`` tried.
    """

    weights: tuple[float, ...]
    gamma: float
    probe_sigma: float
    misfit: dict[float, float] = field(default_factory=dict)
    weights_by_gamma: dict[float, tuple[float, ...]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {"weights": list(self.weights), "gamma": self.gamma, "probe_sigma": self.probe_sigma,
                "misfit": {f"{g:g}": m for g, m in self.misfit.items()},
                "weights_by_gamma": {f"{g:g}": list(w) for g, w in self.weights_by_gamma.items()},
                "method": "cross-fit of the HAADF on two independent halves of the maps (no truth)"}


def fit_haadf_model(
    haadf: Any,
    halves: Sequence[tuple[Any, Any]],
    *,
    gammas: Sequence[float] = GAMMAS,
    probe_sigmas: Sequence[float] = PROBE_SIGMAS,
    denoise_sigma: float = DENOISE_SIGMA,
    masks: tuple[np.ndarray, np.ndarray] | None = None,
    valid: Any = None,
) -> HaadfFit:
    """The HAADF model's weights and exponent fitted on independent halves (see the module notes).

    The probe width is the one of ``probe_sigmas`` with the lowest :func:`cross_fit` misfit at
    ``gamma = 1``; then ``gamma`` is the one of ``gammas`` with the lowest misfit, and the
    weights are fitted at it.

    Parameters
    ----------
    haadf, halves, denoise_sigma, masks, valid
        As :func:`cross_fit`.
    gammas : sequence of float
        The exponents tried (each >= 1, as the solver requires).
    probe_sigmas : sequence of float
        The probe widths tried (px).

    Returns
    -------
    HaadfFit

    Examples
    --------
    A HAADF linear in two maps (``gamma = 1``), blurred by a probe of sigma 1 px:

    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(1)
    >>> truth = (rng.random((2, 64, 64)) > 0.5).astype(float)
    >>> truth = np.stack([ndimage.gaussian_filter(t, 2) for t in truth])
    >>> haadf = ndimage.gaussian_filter(3.0 * truth[0] + truth[1], 1.0)
    >>> halves = [tuple(truth + 0.2 * rng.standard_normal(truth.shape) for _ in range(2))]
    >>> fit = fit_haadf_model(haadf, halves, gammas=(1.0, 1.6))
    >>> fit.gamma, np.round(fit.weights, 1).tolist()
    (1.0, [3.0, 1.0])
    """
    if any(g < 1 for g in gammas) or not gammas or not probe_sigmas:
        raise InputError(f"fit_haadf_model needs gammas >= 1 and probe widths; got {gammas}, {probe_sigmas}")
    probe = {float(s): cross_fit(haadf, halves, 1.0, probe_sigma=s, denoise_sigma=denoise_sigma,
                                 masks=masks, valid=valid)[1] for s in probe_sigmas}
    sp = min(probe, key=lambda s: (probe[s], s))
    per_gamma = {float(g): cross_fit(haadf, halves, g, probe_sigma=sp, denoise_sigma=denoise_sigma,
                                     masks=masks, valid=valid) for g in gammas}
    gamma = min(per_gamma, key=lambda g: (per_gamma[g][1], g))
    return HaadfFit(
        weights=tuple(float(v) for v in per_gamma[gamma][0]), gamma=gamma, probe_sigma=sp,
        misfit={g: m for g, (_, m) in per_gamma.items()},
        weights_by_gamma={g: tuple(float(v) for v in w) for g, (w, _) in per_gamma.items()},
    )
