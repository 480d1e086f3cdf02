"""The noise of elemental maps that are not counts, estimated from the maps themselves.

Most maps users have are not raw counts: the vendor software scaled them, subtracted a
background and clipped the result at zero. Their noise still follows the physics of the
counts: a pixel of mean ``m`` has variance

``var = gain * m + offset_var``

(Poisson counts times an unknown scale, ``gain``; plus a floor, ``offset_var``, from the
subtracted background and the detector). :func:`estimate_noise` measures both numbers on
one map; :func:`local_variance` measures each pixel's variance with no model, and
:func:`recorrupt` uses either to split the map into two nearly independent noisy copies for
the held-out choice of the fusion weights (:mod:`.auto` draws from the local variance: on
clipped maps the fitted model came out too flat, see ``docs/methods/fusion.md``).

How the noise is measured
-------------------------
* **Residuals.** ``r = (y - box3(y)) * sqrt(9/8)``: for white noise of locally constant
  variance ``v``, ``var(r) = v``. Signal leaks into ``r`` only through its curvature over
  3 x 3 pixels, which the probe blur keeps small.
* **Local mean.** ``m = box5(y)``. For white noise ``cov(r, m) = 0``, so sorting pixels by
  ``m`` does not select their residuals.
* **Clipped pixels left out.** A pixel with an exact zero in its 3 x 3 neighbourhood is not
  used: the zeros are where the vendor clipped negative values, and the noise there is
  truncated, not ``gain * m + offset_var``.
* **Robust variance per mean bin.** The usable pixels are cut into equal-count bins of
  ``m``; each bin's variance is ``(1.4826 MAD(r))^2``, which atomic columns or particle
  edges (a minority of pixels with large residuals) do not inflate much.
* **The variance at zero mean, from the clipping.** Leaving the clipped pixels out leaves
  out most of the low-mean pixels, and with them what tells ``offset_var`` (the background's
  noise) apart from ``gain``. Where about half of a 5 x 5 neighbourhood is clipped (35-65 %
  zeros), the local mean is about 0 and the kept values are the positive half of a zero-mean
  noise: their mean square is the variance at mean 0 (the second moment of a half-normal).
  That is one more bin, at mean 0, in the fit (when it holds at least 64 pixels). Without it
  the noise of background-subtracted maps was under-estimated and the choice smoothed too
  little (synthetic layers, dose 20: 1.38 x the error of the choice on the counts; with it
  1.00; it is no cure-all: layers at dose 80 went from 1.00 to 1.28, see the docs).
* **Sparse maps.** When fewer than two bins (128 pixels) lie away from exact zeros (very low
  counts or a vendor threshold: the published Co3O4/Mn3O4 EELS maps are 92-95 % zeros, and
  no 3 x 3 block of the Co or O map is free of them), every pixel is used and each bin's
  variance is the plain mean of ``r^2``: the zeros are then most of the noise distribution,
  and a median would be 0. Such a model is recorded, but the choice of the weights does not
  rely on it (:mod:`.auto` scores sparse maps by pixel hold-out).
* **Fit.** ``var = gain * m + offset_var`` by weighted non-negative least squares over the
  bins (weights: pixels per bin over the bin's variance squared, the inverse variance of a
  sample variance).

What it assumes: noise independent from pixel to pixel (the maps were not smoothed or
resampled; :func:`neighbour_correlation` measures it) and a variance linear in the mean.
It fails on maps that were smoothed (the residuals then see only part of the noise, and
neighbouring pixels share noise), and it over-estimates the noise where the signal has
sharp detail on the scale of a pixel (the curvature counts as noise).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> mean = np.tile(np.linspace(5, 50, 200), (200, 1))
>>> model = estimate_noise(0.01 * rng.poisson(mean))  # counts scaled by 0.01: gain 0.01
>>> round(model.gain, 3), model.offset_var < 1e-5
(0.01, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..._lazy import lazy_module
from ...errors import EmfuseError, InputError

# loaded where used: a fusion with fixed weights never estimates noise (scipy.optimize is
# about 0.3 s of a small job's start)
ndimage = lazy_module("scipy.ndimage")
optimize = lazy_module("scipy.optimize")

__all__ = ["NoiseModel", "estimate_noise", "local_variance", "neighbour_correlation", "recorrupt"]

#: For white noise, ``y - box3(y)`` has ``8/9`` of the variance of ``y``.
_RESIDUAL_SCALE = math.sqrt(9.0 / 8.0)
_MAD_TO_SD = 1.4826  # sd of a normal distribution over its median absolute deviation
_MIN_PER_BIN = 64
DENSE, SPARSE = "away from zeros", "all (sparse map)"  # NoiseModel.pixels_used


class NoiseEstimateError(EmfuseError, ValueError):
    """The noise of a map cannot be measured (too few usable pixels); the message says why."""


@dataclass(frozen=True)
class NoiseModel:
    """``var = gain * mean + offset_var`` of one map, in the map's own units.

    Attributes
    ----------
    gain
        Variance per unit of mean (the size of one count, for scaled counts).
    offset_var
        Variance at zero mean.
    pixels
        Pixels the fit used (those with no exact zero in their 3 x 3 neighbourhood).
    bins
        Mean bins fitted.
    pixels_used
        ``"away from zeros"`` or ``"all (sparse map)"`` (see the module notes).
    """

    gain: float
    offset_var: float
    pixels: int = 0
    bins: int = 0
    pixels_used: str = ""

    def variance(self, mean: Any) -> np.ndarray:
        """The noise variance at ``mean`` (negative means count as zero)."""
        return self.gain * np.maximum(np.asarray(mean, np.float64), 0.0) + self.offset_var

    def record(self) -> dict[str, Any]:
        """JSON-able numbers (for the output store's ``lambda_choice``)."""
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


def local_mean(image: np.ndarray) -> np.ndarray:
    """The 5 x 5 box mean (reflecting edges): the mean the noise variance is a function of."""
    return ndimage.uniform_filter(np.asarray(image, np.float64), 5, mode="reflect")


def estimate_noise(image: Any, *, bins: int = 12) -> NoiseModel:
    """Fit ``var = gain * mean + offset_var`` to one map from its own pixels.

    Parameters
    ----------
    image
        (y, x) map, any units, >= 0; exact zeros are taken as clipped.
    bins
        Equal-count bins of the local mean (fewer when there are few usable pixels).

    Returns
    -------
    NoiseModel

    Raises
    ------
    NoiseEstimateError
        When fewer than two bins of usable pixels (no exact zero within one pixel) remain,
        or the fitted variance is zero.
    """
    y = np.asarray(image, np.float64)
    residual = (y - ndimage.uniform_filter(y, 3, mode="reflect")) * _RESIDUAL_SCALE
    mean = local_mean(y)
    interior = np.zeros(y.shape, bool)
    interior[1:-1, 1:-1] = True  # reflecting edges: the residual there sees the pixel twice
    away = interior & ~ndimage.maximum_filter(y == 0, size=3, mode="nearest")
    sparse = away.sum() < 2 * _MIN_PER_BIN  # not even two bins away from zeros
    usable = interior if sparse else away
    r, m = residual[usable], mean[usable]
    n_bins = min(bins, r.size // _MIN_PER_BIN)
    if n_bins < 2:
        raise NoiseEstimateError(
            f"only {r.size} usable pixels ({'all of the interior: a sparse map' if sparse else 'away from exact zeros'}); "
            "too few to measure its noise."
        )
    order = np.argsort(m, kind="stable")
    centres, variances, counts = [], [], []
    for chunk in np.array_split(order, n_bins):
        rb = r[chunk]
        centres.append(m[chunk].mean())
        if sparse:  # mostly zeros: a MAD would be 0; the zeros are part of the noise here
            variances.append(float(np.mean(rb * rb)))
        else:
            variances.append((_MAD_TO_SD * np.median(np.abs(rb - np.median(rb)))) ** 2)
        counts.append(rb.size)
    if not sparse:
        # where about half the pixels are clipped the local mean is about 0, and the values
        # kept are the positive half of the noise: their mean square is the variance at mean 0
        zero_share = ndimage.uniform_filter((y == 0).astype(np.float64), 5, mode="reflect")
        half = interior & (np.abs(zero_share - 0.5) <= 0.15) & (y > 0)
        if half.sum() >= _MIN_PER_BIN:
            centres.append(0.0)
            variances.append(float(np.mean(y[half] ** 2)))
            counts.append(int(half.sum()))
    centres, variances, counts = np.array(centres), np.array(variances), np.array(counts)
    if not variances.max() > 0:
        raise NoiseEstimateError("the map has no measurable noise (zero residuals): it is not a noisy map.")
    # inverse variance of a sample variance ~ n / var^2; a floor keeps a noiseless bin finite
    weight = np.sqrt(counts / np.maximum(variances, 1e-6 * variances.max()) ** 2)
    design = np.stack([np.maximum(centres, 0.0), np.ones_like(centres)], axis=1)
    (gain, offset_var), _ = optimize.nnls(design * weight[:, None], variances * weight)
    if gain <= 0 and offset_var <= 0:
        raise NoiseEstimateError("the fitted noise variance is zero; the map is not a noisy map.")
    return NoiseModel(float(gain), float(offset_var), pixels=int(r.size), bins=int(n_bins),
                      pixels_used=SPARSE if sparse else DENSE)


def neighbour_correlation(image: Any) -> float:
    """Correlation of horizontally neighbouring 3 x 3 residuals; -1/6 for white noise.

    Smoothed maps share noise between neighbours and give larger values (towards +1).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> round(neighbour_correlation(rng.normal(size=(256, 256))), 2)
    -0.17
    """
    y = np.asarray(image, np.float64)
    r = y - ndimage.uniform_filter(y, 3, mode="reflect")
    a, b = r[1:-1, 1:-2].ravel(), r[1:-1, 2:-1].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def local_variance(image: Any, size: int = 5) -> np.ndarray:
    """The noise variance of each pixel, measured where it is: ``box_size(r^2)``.

    ``r`` is the 3 x 3 residual of :func:`estimate_noise` (variance ``v`` for white noise).
    Unlike :meth:`NoiseModel.variance` it assumes no relation between the variance and the
    mean, and needs no fit: on clipped, background-subtracted synthetic maps the fitted model
    came out flattened (gain 0-0.85 of the true one, ``offset_var`` several times too large,
    see ``docs/methods/fusion.md``), while ``box5(r^2)`` followed the true variance (Poisson:
    about the local mean) within 10-20 % away from the zeros. Signal curvature over 3 x 3
    pixels counts as noise here too; where the vendor clipped, it measures the clipped map's
    own (smaller) noise, which is what a recorrupted copy of that map should carry.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> sd = np.repeat([1.0, 3.0], 100)[None, :] * np.ones((100, 1))  # left half sd 1, right half 3
    >>> v = local_variance(10 + sd * rng.standard_normal(sd.shape))
    >>> round(float(v[:, :40].mean())), round(float(v[:, 160:].mean()))
    (1, 9)
    """
    y = np.asarray(image, np.float64)
    r = (y - ndimage.uniform_filter(y, 3, mode="reflect")) * _RESIDUAL_SCALE
    # rounding in the filter can give tiny negatives; a variance is >= 0
    return np.maximum(ndimage.uniform_filter(r * r, size, mode="reflect"), 0.0)


def recorrupt(
    image: Any, model: NoiseModel | np.ndarray, train_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one noisy map into a training and a held-out copy by adding and removing noise.

    ``train = y + a z``, ``test = y - z / a`` with ``z ~ N(0, v)`` and
    ``a = sqrt((1 - p) / p)``; ``v`` is the noise model's variance at the local mean, or,
    when ``model`` is an array, that array (one variance per pixel, e.g.
    :func:`local_variance`). For gaussian noise of the
    model's variance the two are independent (their covariance is ``var - var(z) = 0``);
    both have the mean of ``y``, and ``train`` has the signal-to-noise ratio of a part
    holding a fraction ``p`` of the counts (``test``: ``1 - p``), as in count splitting.
    The training copy is clipped at zero (the fusion's Poisson term needs maps >= 0, and
    vendor maps are clipped the same way); the held-out copy is not.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(10.0, 1.0, size=(200, 200))
    >>> train, test = recorrupt(y, NoiseModel(0.0, 1.0), 0.75, rng)
    >>> abs(float(np.corrcoef((train - 10).ravel(), (test - 10).ravel())[0, 1])) < 0.02
    True
    """
    if not 0 < train_fraction < 1:
        raise InputError(f"train_fraction must be in (0, 1), got {train_fraction}")
    y = np.asarray(image, np.float64)
    a = math.sqrt((1.0 - train_fraction) / train_fraction)
    variance = model.variance(local_mean(y)) if isinstance(model, NoiseModel) else np.asarray(model, np.float64)
    z = rng.standard_normal(y.shape) * np.sqrt(variance)
    return np.maximum(y + a * z, 0.0), y - z / a
