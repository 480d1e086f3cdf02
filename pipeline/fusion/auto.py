"""Automatic choice of ``lambda_chem`` and ``lambda_tv`` on held-out data.

Why count splitting
-------------------
Counts ``N ~ Poisson(mu)`` split by binomial thinning, ``A ~ Binomial(N, p)`` and
``B = N - A``, give two *independent* Poisson images with means ``p mu`` and
``(1 - p) mu``. A candidate ``(lambda_chem, lambda_tv)`` is judged by fusing the
training part ``A`` and asking how well the result predicts the held-out part
``B``, which the fusion never saw. No ground truth and no noise level is needed,
and because ``B`` is independent of the prediction, the expected held-out loss
is the prediction error against the true mean plus a constant (for any loss that
is a Bregman divergence, e.g. squared error or Poisson deviance).

What is split
-------------
* A spectrum image (counts per channel) is thinned channel by channel, and the
  maps of each part are integrated with the same windows and background model
  as the full data: background-subtracted window sums are not Poisson, but each
  part's maps are a function of that part's spectra only, so they stay
  independent.
* Maps given as integer counts are thinned directly.
* Maps that are not counts (scaled, background-subtracted and clipped by the
  vendor software: what most users have) cannot be thinned. Their noise is
  measured on the maps themselves as ``var = gain * mean + offset_var``
  (:mod:`.noise`), and each map is split into recorrupted pairs (data fission):
  ``train = max(y + a z, 0)``, ``test = y - z / a`` with ``z`` drawn with
  each pixel's locally measured variance (:func:`.noise.local_variance`; the
  fitted model is recorded and decides dense or sparse, but on clipped maps its
  fit is too flat to draw from) and ``a = sqrt((1 - p) / p)``. For gaussian
  noise of that variance the parts are independent, keep the mean of ``y`` (so the full
  normalisation applies unchanged) and have the signal-to-noise ratios of a
  fraction ``p`` and ``1 - p`` of the counts: the same two parts as count
  splitting, so everything below holds unchanged
  (criterion ``heldout-recorrupted:maps``). Why this and not the others: it
  needs no integer counts (pseudo-counts by the gain would need rounding and
  a Poisson law the background subtraction breaks), it copes with the
  background's variance through ``offset_var``, and unlike SURE it needs no
  divergence of the fusion (an iterative, clipped solver).
* Sparse maps (fewer than 128 pixels away from exact zeros, too few for the
  noise model: very low counts or a vendor threshold, e.g. the published
  Co3O4/Mn3O4 EELS maps, where no 3 x 3 block of the Co map is free of zeros) are
  a set of isolated spikes that no gaussian model describes, and recorrupted
  parts would share those spikes. They are scored by pixel hold-out instead
  (criterion ``heldout-pixels:maps``): each fold replaces a random eighth of
  the pixels by the mean of their kept neighbours and scores the fusion only
  there, which for noise independent between pixels needs no noise model.
  Its weakness: it scores a fusion that predicts pixels from neighbours, not
  the one run on the full data (see ``docs/methods/fusion.md`` for where each
  criterion falls short on synthetic data).
* Both need noise independent from pixel to pixel; maps smoothed elsewhere
  share noise between neighbours, and the choice then smooths too little.
  When a map's noise cannot be measured at all, :class:`AutoLambdaError`
  names the fix (give numbers, or the spectrum image).

The held-out score
------------------
For each element, the fused training map ``x`` is calibrated to the held-out
counts ``y`` by a least-squares affine fit ``a x + c``; the score is the
fraction of the variance of ``y`` that the calibrated prediction leaves
unexplained, averaged over elements (lower is better). The squared error is a
proper score for the mean whatever the noise: background-subtracted maps are
over-dispersed (their variance includes the background's), so a Poisson
likelihood would weight pixels wrongly. The affine calibration removes the
global scale and offset that the HAADF term and ``bkg`` give the fused maps;
what is scored is the spatial structure, which is what emfuse's quality metric
(:func:`emfuse.pipeline.metrics.nrmse`, after an affine fit) measures against a truth.
Two folds (independent splits) are summed to lower the noise of the score.

From a part to the full data
----------------------------
Every part is normalised with the *full* data's normalisation scaled by its
fraction (``Normalisation`` offsets and scales times ``p``), so its normalised
maps have the same expected values as the full data's and the lambdas act on
the same units. The lambdas chosen on a part are used as they are on the full
data. A part has less dose than the whole, so the weights best for it are not
exactly those best for the whole; the larger the training fraction, the smaller
that gap and the noisier the held-out score. The training part holds 3/4 of the
counts (``split=0.75``): on the synthetic benchmark (three specimens, three
doses) it put the choice within 6 % of the truth-best grid point in every case,
where an even split fell 21 % short at the lowest dose. See
``docs/methods/fusion.md`` and ``benchmarks/auto_lambda.py``.

The search
----------
Candidates lie on a log lattice (factor ``2 ** 0.5``). A coarse grid
(``coarse`` x ``coarse`` points over the ranges) is evaluated first, then the
3 x 3 neighbourhood of the best point at half the spacing, repeatedly, down to
the lattice spacing. A choice on an end of a range, with the score still
falling towards it, widens that end by ``widen_by`` (8) and searches on from
the best point, at most ``widen`` (2) times; a choice still on an end is
reported in :attr:`LambdaChoice.at_edge` (the job warns ``lambda-at-edge``). Large images are searched on their central
``crop`` x ``crop`` pixels: every term of the objective is a sum over pixels,
so the weights per pixel do not depend on the image size.

Examples
--------
>>> import numpy as np
>>> from emfuse.pipeline.fusion.auto import choose_lambdas
>>> rng = np.random.default_rng(0)
>>> truth = np.stack([np.tile([1.0, 0.0], (16, 8)), np.tile([0.0, 1.0], (16, 8))])
>>> haadf = 2.0 * truth[0] + truth[1]
>>> counts = rng.poisson(20 * truth + 1)
>>> choice = choose_lambdas(haadf, [40, 20], maps=counts, settings=SearchSettings(coarse=2, n_iter=5))
>>> choice.criterion, choice.score.shape == (choice.lambda_chem_axis.size, choice.lambda_tv_axis.size)
('heldout-counts:maps', True)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._lazy import lazy_module
from ...errors import InputError
from ..arrays import central_crop  # re-exported: callers use auto.central_crop
from ..backend import to_numpy
from .haadf_fit import HaadfFit, checkerboard, fit_haadf_model
from .model import FusionInputError, Normalisation
from .noise import DENSE, NoiseEstimateError, NoiseModel, estimate_noise, local_variance, recorrupt
from .solver import FusionParams, fuse

ndimage = lazy_module("scipy.ndimage")  # loaded where used: only the search needs it

__all__ = [
    "AUTO",
    "AutoLambdaError",
    "LambdaChoice",
    "SearchSettings",
    "central_crop",
    "choose_lambdas",
    "estimate_map_noise",
    "heldout_score",
    "heldout_scores",
    "refine_tv_per_element",
    "refine_weakest",
    "is_counts",
    "scaled_normalisation",
    "thin_counts",
]

#: The value that asks for an automatic choice (``lambda_chem="auto"``).
AUTO = "auto"
#: ``SearchSettings.haadf_weights``: ``Z_i / mean(Z)``, or fitted to the data.
HAADF_WEIGHTS = ("z", "fit")
#: :func:`refine_weakest`: the weakest element's ``lambda_chem`` times ``2^b`` and ``lambda_tv`` times ``2^a``.
WEAKEST_CHEM_STEPS = (-2, -1, 0, 1, 2, 3, 4, 5, 6)
WEAKEST_TV_STEPS = (-3, -2, -1, 0, 1, 2, 3, 4, 5)

CRITERION_SPECTRUM = "heldout-counts:spectrum"
CRITERION_MAPS = "heldout-counts:maps"
CRITERION_RECORRUPTED = "heldout-recorrupted:maps"
CRITERION_PIXELS = "heldout-pixels:maps"


class AutoLambdaError(FusionInputError):
    """``lambda_*="auto"`` cannot be used on these inputs; the message names the fix."""


@dataclass(frozen=True)
class SearchSettings:
    """How :func:`choose_lambdas` searches.

    Attributes
    ----------
    lambda_chem_range, lambda_tv_range
        Search ranges (inclusive; the lattice starts at the low end).
    coarse
        Points per axis of the first, coarse grid.
    lattice
        Ratio between neighbouring lattice values (the finest spacing).
    split
        Fraction of the counts in the training part (the rest is held out).
    folds
        Independent splits whose scores are summed.
    crop
        Side of the central crop the search runs on (the whole image if smaller).
    seed
        Seed of the random splits: the same seed gives the same choice.
    n_iter, n_iter_tv
        Override the job's iteration counts during the search (``None``: the
        job's own, which is the default and what the benchmarks validate).
    widen, widen_by
        When the choice ends on an end of a searched range (and the score still
        falls towards it), that end is moved out by the factor ``widen_by`` and
        the search goes on from the best point, at most ``widen`` times; a choice
        still at an end is reported in :attr:`LambdaChoice.at_edge`.
    per_element_tv
        After the joint search, refine one TV weight per element
        (:func:`refine_tv_per_element`); off by default (see ``docs/methods/fusion.md``).
    haadf_weights
        ``"z"`` (the default): the HAADF model's weights ``Z_i / mean(Z)`` and the job's
        ``gamma``. ``"fit"``: before the search, fit the weights and ``gamma`` to the data
        (:func:`emfuse.pipeline.fusion.haadf_fit.fit_haadf_model` on two independent halves:
        thinned counts, or the checkerboard for maps that are not counts); the search and the
        full fusion use them (:meth:`LambdaChoice.fusion_params`). Refused for sparse maps.
    refine_weakest
        After the joint search (and ``per_element_tv``), move the lowest-Z element's own
        ``lambda_chem`` and ``lambda_tv`` over a grid, held out (:func:`refine_weakest`); off
        by default. Measured with ``haadf_weights="fit"``: ``benchmarks/haadf_weight_fit.py``.
    """

    lambda_chem_range: tuple[float, float] = (2.0**-10, 8.0)
    lambda_tv_range: tuple[float, float] = (2.0**-12, 4.0)
    coarse: int = 4
    lattice: float = 2.0**0.5
    split: float = 0.75
    folds: int = 2
    crop: int = 256
    seed: int = 0
    n_iter: int | None = None
    n_iter_tv: int | None = None
    widen: int = 2
    widen_by: float = 8.0
    per_element_tv: bool = False
    haadf_weights: str = "z"
    refine_weakest: bool = False

    def __post_init__(self) -> None:
        if self.haadf_weights not in HAADF_WEIGHTS:
            raise InputError(f"haadf_weights must be one of {', '.join(map(repr, HAADF_WEIGHTS))}; "
                             f"got {self.haadf_weights!r}")
        ok = (
            0 < self.lambda_chem_range[0] < self.lambda_chem_range[1]
            and 0 < self.lambda_tv_range[0] < self.lambda_tv_range[1]
            and self.coarse >= 2 and self.lattice > 1 and 0 < self.split < 1
            and self.folds >= 1 and self.crop >= 8 and self.widen >= 0 and self.widen_by > 1
        )
        if not ok:
            raise InputError(f"invalid lambda search settings {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LambdaChoice:
    """The outcome of :func:`choose_lambdas`.

    Attributes
    ----------
    lambda_chem, lambda_tv
        The chosen weights, to use on the full data.
    lambda_chem_axis, lambda_tv_axis
        Every value tried on each axis (increasing).
    score
        (lambda_chem, lambda_tv) held-out score of each candidate tried
        (lower is better); NaN where no candidate was evaluated.
    criterion
        What was split: ``heldout-counts:spectrum`` or ``heldout-counts:maps``.
    settings
        The search settings.
    crop
        (y0, y1, x0, x1) of the pixels searched on.
    seconds
        Time the search took.
    noise
        Recorrupted maps: the noise model estimated for each map (else None).
    widened
        How many times a range was widened because the choice sat on its end.
    at_edge
        For each weight still on an end of its (widened) range: what and where.
    lambda_tv_per_element
        With ``SearchSettings.per_element_tv`` or ``refine_weakest``: one TV weight per
        element, refined after the joint search (else None).
    lambda_chem_per_element
        With ``SearchSettings.refine_weakest``: one ``lambda_chem`` per element (else None).
    haadf_fit
        With ``SearchSettings.haadf_weights="fit"``: the fitted HAADF model (weights and
        ``gamma``) the search used and the full fusion must use (else None).
    """

    lambda_chem: float
    lambda_tv: float
    lambda_chem_axis: np.ndarray
    lambda_tv_axis: np.ndarray
    score: np.ndarray
    criterion: str
    settings: SearchSettings
    crop: tuple[int, int, int, int]
    seconds: float = float("nan")
    noise: tuple[NoiseModel, ...] | None = None
    widened: int = 0
    at_edge: tuple[str, ...] = ()
    lambda_tv_per_element: tuple[float, ...] | None = None
    lambda_chem_per_element: tuple[float, ...] | None = None
    haadf_fit: HaadfFit | None = None

    @property
    def n_candidates(self) -> int:
        return int(np.isfinite(self.score).sum())

    def fusion_params(self) -> dict[str, Any]:
        """The parameters of the full fusion this choice asks for: the weights (per element where
        refined) and, with a fitted HAADF model, its ``gamma`` and ``haadf_weights``."""
        params: dict[str, Any] = {
            "lambda_chem": self.lambda_chem_per_element or self.lambda_chem,
            "lambda_tv": self.lambda_tv_per_element or self.lambda_tv,
        }
        if self.haadf_fit is not None:
            params.update(gamma=self.haadf_fit.gamma, haadf_weights=self.haadf_fit.weights)
        return params

    def record(self) -> dict[str, Any]:
        """A JSON-able summary (without the score grid), e.g. for store attributes."""
        return {
            "lambda_chem": self.lambda_chem,
            "lambda_tv": self.lambda_tv,
            "criterion": self.criterion,
            "score": "fraction of held-out variance unexplained (affine-calibrated), lower is better",
            "n_candidates": self.n_candidates,
            "crop": list(self.crop),
            "settings": self.settings.to_dict(),
            "seconds": round(float(self.seconds), 2),
            "widened": self.widened,
            **({"lambda_tv_per_element": list(self.lambda_tv_per_element)}
               if self.lambda_tv_per_element is not None else {}),
            **({"lambda_chem_per_element": list(self.lambda_chem_per_element)}
               if self.lambda_chem_per_element is not None else {}),
            **({"haadf_fit": self.haadf_fit.record()} if self.haadf_fit is not None else {}),
            "at_edge": list(self.at_edge),
            **({"noise_model": "var = gain * mean + offset_var per map, in the map's units",
                "noise": [m.record() for m in self.noise]} if self.noise is not None else {}),
        }


# -- splitting --------------------------------------------------------------------


def thin_counts(counts: Any, p: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning: keep each count with probability ``p``.

    For ``N ~ Poisson(mu)``, the kept part is ``Poisson(p mu)`` and independent of
    the rest ``N - kept`` (``Poisson((1 - p) mu)``).

    Parameters
    ----------
    counts
        Non-negative integer counts (any shape; integer or integral float dtype).
    p
        Probability of keeping a count, in (0, 1).
    rng
        Random generator (the split is reproducible for a seeded generator).

    Returns
    -------
    ndarray
        The kept counts, same shape and dtype as ``counts``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> kept = thin_counts(np.full(10_000, 8, dtype=np.uint16), 0.5, rng)
    >>> kept.dtype, round(float(kept.mean()), 1)
    (dtype('uint16'), 4.0)
    """
    counts = np.asarray(counts)
    if not 0 < p < 1:
        raise InputError(f"p must be in (0, 1), got {p}")
    kept = np.empty_like(counts)
    flat_in, flat_out = counts.reshape(-1), kept.reshape(-1)
    # in blocks: binomial draws are int64, 4x a uint16 spectrum image, so bound the temporaries
    block = 1 << 22
    for start in range(0, flat_in.size, block):
        n = flat_in[start : start + block]
        n = n if n.dtype.kind in "iu" else np.rint(n).astype(np.int64)
        flat_out[start : start + block] = rng.binomial(n, p)
    return kept


def is_counts(maps: Any) -> bool:
    """True when every value is a non-negative integer (so the maps can be thinned).

    Parameters
    ----------
    maps : array_like
        The maps, numpy or cupy.

    Returns
    -------
    bool
        Whether they are counts.

    Examples
    --------
    >>> is_counts(np.array([0.0, 3.0, 7.0])), is_counts(np.array([0.5, 1.0]))
    (True, False)
    """
    values = to_numpy(maps)
    if values.dtype.kind in "iu":
        return bool((values >= 0).all())
    finite = np.isfinite(values).all()
    return bool(finite and (values >= 0).all() and np.array_equal(values, np.rint(values)))


def scaled_normalisation(norm: Normalisation, fraction: float) -> Normalisation:
    """The normalisation of a part holding ``fraction`` of the counts.

    Map offsets and scales are multiplied by ``fraction``, so the part's
    normalised maps have the same expected values as the full data's and the
    lambdas act on the same units; the HAADF is not split.

    Parameters
    ----------
    norm : Normalisation
        The full data's normalisation.
    fraction : float
        The part's share of the counts.

    Returns
    -------
    Normalisation
        The part's normalisation.
    """
    return dataclasses.replace(
        norm,
        map_offset=tuple(fraction * v for v in norm.map_offset),
        map_scale=tuple(fraction * v for v in norm.map_scale),
    )


# -- scoring ----------------------------------------------------------------------


def heldout_score(fused: np.ndarray, heldout: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of the held-out variance left unexplained by the fused maps, mean over elements.

    For each element the fused map ``x`` is fitted to the held-out counts ``y``
    as ``a x + c`` by least squares; the score is ``mean((a x + c - y)^2) / var(y)``
    averaged over elements: 0 for a perfect predictor of ``y`` (impossible with
    noisy ``y``), 1 for a flat map.

    Parameters
    ----------
    fused : numpy.ndarray
        The fused maps (element, y, x).
    heldout : numpy.ndarray
        The held-out maps (element, y, x).
    mask : numpy.ndarray of bool, optional
        (y, x): score only these pixels (pixel hold-out); default every pixel.

    Returns
    -------
    float
        The mean over the elements that have held-out variance.

    Examples
    --------
    >>> y = np.arange(8.0).reshape(1, 2, 4)
    >>> heldout_score(2 * y + 1, y), heldout_score(np.zeros_like(y), y)
    (0.0, 1.0)
    """
    return _mean_finite(heldout_scores(fused, heldout, mask))


def _mean_finite(scores: np.ndarray) -> float:
    """The mean of the finite scores (NaN: an element without held-out variance), NaN if none."""
    scores = scores[np.isfinite(scores)]
    return float(np.mean(scores)) if scores.size else float("nan")


def heldout_scores(fused: np.ndarray, heldout: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """:func:`heldout_score` of each element (NaN where the held-out map has no variance).

    Parameters
    ----------
    fused, heldout, mask
        As :func:`heldout_score`.

    Returns
    -------
    numpy.ndarray
        (element,) float64.
    """
    scores = []
    for x, y in zip(np.asarray(fused, np.float64), np.asarray(heldout, np.float64)):
        x, y = (x.ravel(), y.ravel()) if mask is None else (x[mask], y[mask])
        var_y = y.var()
        if var_y <= 0:  # no held-out signal (e.g. an empty crop at very low dose)
            scores.append(float("nan"))
            continue
        xc = x - x.mean()
        slope = float(xc @ (y - y.mean())) / max(float(xc @ xc), 1e-300)
        residual = (y - y.mean()) - slope * xc
        scores.append(float(residual @ residual) / y.size / var_y)
    return np.array(scores)


# -- the search -------------------------------------------------------------------


def _lattice(low: float, high: float, ratio: float) -> np.ndarray:
    n = int(math.floor(math.log(high / low) / math.log(ratio) + 1e-9)) + 1
    return low * ratio ** np.arange(n)


def _axis(fixed: float | None, value_range: tuple[float, float], ratio: float) -> np.ndarray:
    """The candidate values of one weight: the given number, or the log lattice over the range."""
    if fixed is None:
        return _lattice(*value_range, ratio)
    if not (math.isfinite(fixed) and fixed >= 0):
        raise InputError(f"a fixed lambda must be a finite number >= 0, got {fixed!r}")
    return np.array([float(fixed)])


def _coarse_indices(n: int, k: int) -> list[int]:
    """``k`` lattice indices spread evenly over ``0..n-1`` (both ends included)."""
    if n == 1:
        return [0]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def _search(
    evaluate: Callable[[int, int], float], n_chem: int, n_tv: int, coarse: int
) -> dict[tuple[int, int], float]:
    """Coarse grid, then 3 x 3 neighbourhoods of the best point at halving spacing."""
    scores: dict[tuple[int, int], float] = {}
    ci, cj = _coarse_indices(n_chem, coarse), _coarse_indices(n_tv, coarse)
    for i in ci:
        for j in cj:
            _visit(scores, evaluate, (i, j), n_chem, n_tv)
    step = max(ci[1] - ci[0] if len(ci) > 1 else 1, cj[1] - cj[0] if len(cj) > 1 else 1)
    _refine(scores, evaluate, n_chem, n_tv, step)
    return scores


def _visit(scores: dict[tuple[int, int], float], evaluate: Callable[[int, int], float],
           point: tuple[int, int], n_chem: int, n_tv: int) -> None:
    if point not in scores and 0 <= point[0] < n_chem and 0 <= point[1] < n_tv:
        scores[point] = evaluate(*point)


def _refine(scores: dict[tuple[int, int], float], evaluate: Callable[[int, int], float],
            n_chem: int, n_tv: int, step: int) -> None:
    """From the best point so far: 3 x 3 neighbourhoods at halving spacing, down to the lattice."""
    while step > 1:
        step = max(1, step // 2)
        while True:  # recentre until the best point is the centre of its neighbourhood
            best = _best(scores)
            for di in (-step, 0, step):
                for dj in (-step, 0, step):
                    _visit(scores, evaluate, (best[0] + di, best[1] + dj), n_chem, n_tv)
            if _best(scores) == best:
                break


def _best(scores: dict[tuple[int, int], float]) -> tuple[int, int]:
    """Lowest score; ties (a flat score, e.g. where lambda_tv saturates) go to the smallest lambdas."""
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        raise AutoLambdaError("every candidate of the lambda search failed to give a finite score")
    return min(finite, key=lambda k: (finite[k], k))


@dataclass(frozen=True)
class _Folds:
    """The held-out folds of a search: how they were made and what they hold."""

    criterion: str
    fraction: float  # mean of a training part over the full data's (normalisation scale)
    folds: list[tuple[np.ndarray, np.ndarray]]
    noise: tuple[NoiseModel, ...] | None = None
    masks: list[np.ndarray] | None = None  # pixel hold-out: the held-out pixels of each fold


def hold_out_pixels(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``maps`` with the pixels of ``mask`` replaced by the mean of their kept 3 x 3 neighbours.

    What the fusion then predicts at a held-out pixel depends on its neighbours and the
    HAADF only, not on the pixel's own noise (for noise independent between pixels).

    Parameters
    ----------
    maps : numpy.ndarray
        The maps (element, y, x).
    mask : numpy.ndarray of bool
        (y, x), the pixels held out.

    Returns
    -------
    numpy.ndarray
        The maps with those pixels replaced.
    """
    kept = (~mask).astype(np.float64)
    weight = ndimage.uniform_filter(kept, 3, mode="reflect")
    out = np.array(maps, np.float64)
    for image in out:
        fill = ndimage.uniform_filter(image * kept, 3, mode="reflect") / np.maximum(weight, 1e-12)
        image[mask] = np.maximum(fill[mask], 0.0)  # rounding in the filter can dip below zero
    return out


def _pixel_folds(maps: np.ndarray, settings: SearchSettings, rng: np.random.Generator,
                 models: tuple[NoiseModel, ...]) -> _Folds:
    """Pixel hold-out: each fold holds out a disjoint random 1/8 of the pixels."""
    n_pixels = maps[0].size
    order = rng.permutation(n_pixels)
    size = n_pixels // PIXEL_HOLD_OUT
    folds, masks = [], []
    for k in range(settings.folds):
        mask = np.zeros(n_pixels, bool)
        mask[order[(k * size) % n_pixels:(k * size) % n_pixels + size]] = True
        mask = mask.reshape(maps[0].shape)
        masks.append(mask)
        folds.append((hold_out_pixels(maps, mask), maps))
    return _Folds(CRITERION_PIXELS, 1.0, folds, models, masks)


#: Pixel hold-out keeps out one pixel in this many per fold.
PIXEL_HOLD_OUT = 8


def _splits(
    maps: Any,
    spectrum: Any,
    to_maps: Callable[[np.ndarray], np.ndarray] | None,
    settings: SearchSettings,
    noise: Sequence[NoiseModel] | None = None,
) -> _Folds:
    """The (training maps, held-out maps) of every fold, on the crop.

    Counts (a spectrum image, or integer maps) are thinned; other maps are recorrupted with
    their noise model (``noise``, else estimated on ``maps``).
    """
    rng = np.random.default_rng(settings.seed)
    folds = []
    if spectrum is not None:
        if to_maps is None:
            raise InputError("choose_lambdas(spectrum=...) needs to_maps, the spectrum -> maps function")
        spectrum = np.asarray(spectrum)
        for _ in range(settings.folds):
            train = thin_counts(spectrum, settings.split, rng)
            test = spectrum - train
            folds.append((np.asarray(to_maps(train)), np.asarray(to_maps(test))))
        return _Folds(CRITERION_SPECTRUM, settings.split, folds)
    maps = to_numpy(maps)
    if is_counts(maps):
        for _ in range(settings.folds):
            train = thin_counts(maps, settings.split, rng)
            folds.append((train, maps - train))
        return _Folds(CRITERION_MAPS, settings.split, folds)
    models = tuple(noise) if noise is not None else estimate_map_noise(maps)
    if any(m.pixels_used != DENSE for m in models):
        return _pixel_folds(maps, settings, rng, models)
    # the noise drawn is each pixel's own measured variance, not the fitted model's variance at the
    # pixel's mean: on clipped, background-subtracted maps the fit came out flattened (gain 0-0.85 of
    # the true one, offset several times too large), so it drew too little noise on the signal and
    # too much on the clipped zeros; box5(r^2) follows the true variance (docs/methods/fusion.md)
    variances = [local_variance(m) for m in maps]
    for _ in range(settings.folds):
        parts = [recorrupt(m, v, settings.split, rng) for m, v in zip(maps, variances)]
        folds.append((np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])))
    # a recorrupted part keeps the full data's mean: the full normalisation applies as it is
    return _Folds(CRITERION_RECORRUPTED, 1.0, folds, models)


def estimate_map_noise(maps: Any) -> tuple[NoiseModel, ...]:
    """The noise model of every map (see :mod:`.noise`); refuses maps whose noise cannot be measured.

    Parameters
    ----------
    maps : array_like
        The maps (element, y, x), numpy or cupy.

    Returns
    -------
    tuple of NoiseModel
        One per map.

    Raises
    ------
    AutoLambdaError
        Naming the map whose noise cannot be measured, and what to do instead.
    """
    models = []
    for k, image in enumerate(to_numpy(maps)):
        try:
            models.append(estimate_noise(image))
        except NoiseEstimateError as exc:
            raise AutoLambdaError(
                f"lambda 'auto' on maps that are not counts needs the noise of each map, but map {k}: "
                f"{exc} Pass numbers instead (e.g. --lambda-chem 0.05 --lambda-tv 0.02), or fuse the "
                "raw spectrum image."
            ) from exc
    return tuple(models)


def choose_lambdas(
    haadf: Any,
    z: Sequence[float],
    *,
    maps: Any = None,
    spectrum: Any = None,
    to_maps: Callable[[np.ndarray], np.ndarray] | None = None,
    normalisation: Normalisation | None = None,
    params: FusionParams | dict[str, Any] | None = None,
    lambda_chem: float | None = None,
    lambda_tv: float | None = None,
    settings: SearchSettings | None = None,
    callback: Callable[[float, float, float], None] | None = None,
    haadf_valid: Any = None,
    noise: Sequence[NoiseModel] | None = None,
) -> LambdaChoice:
    """Choose ``lambda_chem`` and ``lambda_tv`` by held-out counts (see the module notes).

    Parameters
    ----------
    haadf
        (y, x) HAADF of the whole image (or of the part to search on).
    z
        Atomic numbers, in map order.
    maps
        (element, y, x) integer-count maps; used when no spectrum is given.
    spectrum
        (y, x, energy) spectrum image (counts) the maps are integrated from.
    to_maps
        With ``spectrum``: the function that turns a spectrum image into maps
        with the same windows as the full data (e.g. a partial of
        :func:`emfuse.pipeline.spectra.elemental_maps` that returns the maps).
    normalisation
        The full data's normalisation (the one every tile uses); by default the
        min-max of ``haadf`` and of the maps (of ``to_maps(spectrum)``).
    params
        The other fusion parameters (gamma, n_iter, n_iter_tv, bkg, ...); the
        lambdas in it are ignored.
    lambda_chem, lambda_tv
        A number fixes that weight (only the other one is searched); None
        searches it.
    settings
        The search; :class:`SearchSettings` defaults when None.
    callback
        Called as ``callback(lambda_chem, lambda_tv, score)`` after each
        candidate is scored (e.g. to advance a progress bar).
    haadf_valid
        (y, x) bool like ``haadf``: False where the HAADF is saturated; every
        candidate's fusion leaves those pixels out of the HAADF term, as the
        full fusion does (:func:`emfuse.pipeline.fusion.fuse`). None: every pixel.
    noise
        Maps that are not counts: the noise model of each map (see
        :mod:`.noise`), e.g. measured on more pixels than ``maps`` holds; by
        default estimated on ``maps``. It is recorded and decides recorrupted
        pairs or pixel hold-out; the recorrupted draw itself uses each pixel's
        measured variance (:func:`.noise.local_variance`).

    Returns
    -------
    LambdaChoice

    Raises
    ------
    AutoLambdaError
        If the maps are not counts and their noise cannot be measured.
    """
    start = time.perf_counter()
    settings = settings or SearchSettings()
    base = params if isinstance(params, FusionParams) else FusionParams(**(params or {}))
    overrides = {k: v for k, v in (("n_iter", settings.n_iter), ("n_iter_tv", settings.n_iter_tv)) if v}
    base = dataclasses.replace(base, **overrides)
    haadf = to_numpy(haadf)
    ys, xs = central_crop(haadf.shape, settings.crop)
    if normalisation is None:
        full_maps = to_maps(np.asarray(spectrum)) if spectrum is not None and to_maps else to_numpy(maps)
        normalisation = Normalisation.from_data(haadf, full_maps, haadf_valid=haadf_valid)
    if spectrum is None and noise is None and maps is not None and not is_counts(maps):
        noise = estimate_map_noise(maps)  # on all the pixels given, not only the crop
    spectrum_crop = None if spectrum is None else spectrum[ys, xs]
    maps_crop = None if maps is None else to_numpy(maps)[:, ys, xs]
    split = _splits(maps_crop, spectrum_crop, to_maps, settings, noise)
    haadf_crop = haadf[ys, xs]
    valid_crop = None if haadf_valid is None else to_numpy(haadf_valid)[ys, xs]
    part_norm = scaled_normalisation(normalisation, split.fraction)
    haadf_fit = None
    if settings.haadf_weights == "fit":
        haadf_fit = _fit_haadf(haadf_crop, maps_crop, spectrum_crop, to_maps, normalisation, settings,
                               valid_crop, split.criterion)
        base = dataclasses.replace(base, gamma=haadf_fit.gamma, haadf_weights=haadf_fit.weights)
    chem_axis = _Axis.make(lambda_chem, settings.lambda_chem_range, settings.lattice)
    tv_axis = _Axis.make(lambda_tv, settings.lambda_tv_range, settings.lattice)

    def fold_scores(chem: float | tuple[float, ...], tv: float | tuple[float, ...]) -> np.ndarray:
        """Each fold's held-out score of each element for these weights (fold, element)."""
        candidate = dataclasses.replace(base, lambda_chem=chem, lambda_tv=tv)
        rows = []
        for k, (train, test) in enumerate(split.folds):
            fused = fuse(haadf_crop, train, z, normalisation=part_norm, warn=False, haadf_valid=valid_crop,
                         **candidate.to_dict()).fused
            rows.append(heldout_scores(to_numpy(fused), test, None if split.masks is None else split.masks[k]))
        return np.array(rows)

    def score(k_chem: int, k_tv: int) -> float:
        """The search's score: per fold the mean over the elements with held-out variance
        (:func:`heldout_score`), then the mean over folds."""
        lc, lt = chem_axis.value(k_chem), tv_axis.value(k_tv)
        per_fold = [_mean_finite(row) for row in fold_scores(lc, lt)]
        value = sum(per_fold) / len(per_fold)
        if callback is not None:
            callback(lc, lt, value)
        return value

    scores, widened, at_edge = _search_widening(score, chem_axis, tv_axis, settings)
    best = _best(scores)
    def element_scores(chem: float | tuple[float, ...], tv: float | tuple[float, ...]) -> np.ndarray:
        """Each element's held-out score for these weights (one number, or one per element)."""
        return fold_scores(chem, tv).sum(axis=0) / len(split.folds)

    per_element = None
    if settings.per_element_tv and lambda_tv is None and len(z) > 1:
        per_element = refine_tv_per_element(lambda tv: element_scores(chem_axis.value(best[0]), tv),
                                            tv_axis.value(best[1]), len(z), settings.lattice)
    chem_per_element = None
    if settings.refine_weakest and lambda_chem is None and lambda_tv is None and len(z) > 1:
        chem_per_element, per_element = refine_weakest(
            element_scores, (chem_axis.value(best[0]),) * len(z),
            per_element or (tv_axis.value(best[1]),) * len(z), int(np.argmin(np.asarray(z, np.float64))))
    rows = sorted({i for i, _ in scores})
    cols = sorted({j for _, j in scores})
    grid = np.full((len(rows), len(cols)), np.nan)
    for (i, j), value in scores.items():
        grid[rows.index(i), cols.index(j)] = value
    return LambdaChoice(
        lambda_chem=chem_axis.value(best[0]),
        lambda_tv=tv_axis.value(best[1]),
        lambda_chem_axis=np.array([chem_axis.value(i) for i in rows]),
        lambda_tv_axis=np.array([tv_axis.value(j) for j in cols]),
        score=grid,
        criterion=split.criterion,
        settings=settings,
        crop=(ys.start, ys.stop, xs.start, xs.stop),
        seconds=time.perf_counter() - start,
        noise=split.noise,
        widened=widened,
        at_edge=at_edge,
        lambda_tv_per_element=per_element,
        lambda_chem_per_element=chem_per_element,
        haadf_fit=haadf_fit,
    )


def refine_tv_per_element(
    element_scores: Callable[[tuple[float, ...]], np.ndarray], lambda_tv: float, n_elements: int,
    ratio: float, steps: int = 4,
) -> tuple[float, ...]:
    """Coordinate-wise refinement of one TV weight per element after the joint search.

    Element by element, its weight is moved over ``lambda_tv * ratio**k`` for
    ``k`` in ``-steps..steps`` with the others held; a move is kept when it lowers
    that element's held-out score by more than 0.1 % and raises no other element's
    by more than 0.1 % (the elements are coupled through the HAADF term).

    Parameters
    ----------
    element_scores : callable
        The held-out score of each element (an array) for a tuple of per-element TV weights.
    lambda_tv : float
        The joint search's TV weight, the start of every element.
    n_elements : int
        The number of elements.
    ratio : float
        The step between candidate weights.
    steps : int
        The candidates on each side of ``lambda_tv``.

    Returns
    -------
    tuple of float
        The weights; ``(lambda_tv,) * n_elements`` where nothing paid.
    """
    weights = [float(lambda_tv)] * n_elements
    current = element_scores(tuple(weights))
    for e in range(n_elements):
        best_value, best_scores = weights[e], current
        for k in [k for k in range(-steps, steps + 1) if k]:
            trial = list(weights)
            trial[e] = float(lambda_tv * ratio**k)
            scores = element_scores(tuple(trial))
            others = [i for i in range(n_elements) if i != e]
            better = scores[e] < best_scores[e] - _PER_ELEMENT_GAIN * abs(best_scores[e])
            harmless = all(scores[i] <= current[i] + _PER_ELEMENT_GAIN * abs(current[i]) for i in others)
            if better and harmless:
                best_value, best_scores = trial[e], scores
        weights[e], current = best_value, best_scores
    return tuple(weights)


_PER_ELEMENT_GAIN = 1e-3  # relative held-out score change that counts


def refine_weakest(
    element_scores: Callable[[tuple[float, ...], tuple[float, ...]], np.ndarray],
    lambda_chem: Sequence[float], lambda_tv: Sequence[float], element: int,
    chem_steps: Sequence[int] = WEAKEST_CHEM_STEPS, tv_steps: Sequence[int] = WEAKEST_TV_STEPS,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """One element's own ``lambda_chem`` and ``lambda_tv`` moved together over a grid, held out.

    Its weights are multiplied by ``2^b`` and ``2^a`` for every ``b`` in ``chem_steps`` and
    ``a`` in ``tv_steps``, the other elements' held; the point with the lowest held-out score of
    that element is kept among those that raise no other element's score by more than 0.1 %
    (the starting point is one of them). Meant for the element the HAADF shows least, whose
    weight in a fitted HAADF model is small, so its map is left mostly to its own terms
    (``docs/methods/fusion.md``; ``benchmarks/haadf_weight_fit.py``).

    Parameters
    ----------
    element_scores : callable
        The held-out score of each element (an array) for per-element ``(lambda_chem, lambda_tv)``.
    lambda_chem, lambda_tv : sequence of float
        The starting weights, one per element.
    element : int
        The element whose weights move.
    chem_steps, tv_steps : sequence of int
        The powers of 2 tried on each weight.

    Returns
    -------
    (tuple of float, tuple of float)
        The per-element ``lambda_chem`` and ``lambda_tv``.

    Examples
    --------
    A score of element 1 lowest at 4x its ``lambda_chem``, element 0 indifferent:

    >>> def scores(chem, tv):
    ...     return np.array([1.0, (np.log2(chem[1]) - 2) ** 2 + (np.log2(tv[1])) ** 2 + 1])
    >>> refine_weakest(scores, (1.0, 1.0), (1.0, 1.0), 1)
    ((1.0, 4.0), (1.0, 1.0))
    """
    chem0, tv0 = tuple(float(v) for v in lambda_chem), tuple(float(v) for v in lambda_tv)
    start = element_scores(chem0, tv0)
    others = [i for i in range(len(chem0)) if i != element]
    best = (float(start[element]), chem0, tv0)
    for b in chem_steps:
        for a in tv_steps:
            if a == 0 and b == 0:
                continue
            chem, tv = list(chem0), list(tv0)
            chem[element], tv[element] = chem0[element] * 2.0**b, tv0[element] * 2.0**a
            scores = element_scores(tuple(chem), tuple(tv))
            harmless = all(scores[i] <= start[i] + _PER_ELEMENT_GAIN * abs(start[i]) for i in others)
            if harmless and scores[element] < best[0]:
                best = (float(scores[element]), tuple(chem), tuple(tv))
    return best[1], best[2]


def _fit_haadf(haadf: np.ndarray, maps: Any, spectrum: Any, to_maps: Callable[[np.ndarray], np.ndarray] | None,
               normalisation: Normalisation, settings: SearchSettings, valid: Any, criterion: str) -> HaadfFit:
    """The HAADF model fitted on two independent halves of the crop's data (``haadf_weights="fit"``)."""
    if criterion == CRITERION_PIXELS:
        raise AutoLambdaError(
            "haadf_weights='fit' needs maps whose noise can be split, but these maps are sparse "
            "(mostly exact zeros; the search falls back to pixel hold-out); keep the Z weights "
            "(haadf_weights='z')."
        )
    rng = np.random.default_rng(settings.seed + 1)  # not the search's folds
    masks = None
    if spectrum is not None or is_counts(maps):  # counts: thinned into independent halves, twice
        counts, as_maps = (spectrum, to_maps) if spectrum is not None else (maps, np.asarray)
        fraction, halves = 0.5, []
        for _ in range(2):
            kept = thin_counts(counts, 0.5, rng)
            halves.append((np.asarray(as_maps(kept)), np.asarray(as_maps(counts - kept))))  # type: ignore[misc]
    else:  # not counts: the two colours of a checkerboard (noise independent between pixels)
        fraction, halves, masks = 1.0, [(maps, maps)], checkerboard(np.shape(haadf))
    half = scaled_normalisation(normalisation, fraction)
    return fit_haadf_model(
        normalisation.haadf(haadf, np.float64),
        [(half.maps(np.asarray(a, np.float64), np.float64), half.maps(np.asarray(b, np.float64), np.float64))
         for a, b in halves],
        masks=masks, valid=valid)


@dataclass
class _Axis:
    """One weight's candidates: ``low * ratio**k`` for lattice index ``k`` in ``[k_lo, k_hi]``
    (widening moves the ends), or one fixed number (``fixed``)."""

    low: float
    ratio: float
    k_lo: int
    k_hi: int
    fixed: float | None = None

    @classmethod
    def make(cls, fixed: float | None, value_range: tuple[float, float], ratio: float) -> _Axis:
        values = _axis(fixed, value_range, ratio)
        return cls(float(values[0]), ratio, 0, values.size - 1, None if fixed is None else float(fixed))

    @property
    def size(self) -> int:
        return self.k_hi - self.k_lo + 1

    def value(self, k: int) -> float:
        return self.fixed if self.fixed is not None else float(self.low * self.ratio**k)

    def edge(self, k: int, score_at: Callable[[int], float]) -> str | None:
        """"low" or "high" when ``k`` is an end of a searched axis and the score still falls
        towards that end (a flat score there, e.g. a weight with no effect, is not an edge)."""
        if self.fixed is not None or self.size < 2:
            return None
        for end, inward, name in ((self.k_lo, self.k_lo + 1, "low"), (self.k_hi, self.k_hi - 1, "high")):
            if k == end:
                here, inside = score_at(end), score_at(inward)
                if not np.isfinite(inside) or inside - here > _EDGE_TOLERANCE * abs(here):
                    return name
        return None


_EDGE_TOLERANCE = 1e-3  # relative score drop towards an end that counts as "still falling"


def _search_widening(
    score: Callable[[int, int], float], chem: _Axis, tv: _Axis, settings: SearchSettings
) -> tuple[dict[tuple[int, int], float], int, tuple[str, ...]]:
    """The coarse-to-fine search, widened at an edge the choice ends on.

    Returns the scores by lattice index pair, the number of widenings and, for a weight
    still at an edge after ``settings.widen`` widenings, a description of that edge.
    """
    memo: dict[tuple[int, int], float] = {}

    def evaluate_abs(kc: int, kt: int) -> float:
        if (kc, kt) not in memo:
            memo[(kc, kt)] = score(kc, kt)
        return memo[(kc, kt)]

    def local(offset: tuple[int, int]) -> Callable[[int, int], float]:
        return lambda i, j: evaluate_abs(i + offset[0], j + offset[1])

    found = _search(local((chem.k_lo, tv.k_lo)), chem.size, tv.size, settings.coarse)
    memo.update({(i + chem.k_lo, j + tv.k_lo): v for (i, j), v in found.items()})
    steps = max(1, round(math.log(settings.widen_by) / math.log(settings.lattice)))
    widened = 0
    while True:
        best = _best(memo)
        edges = {"lambda_chem": chem.edge(best[0], lambda k, b=best: memo.get((k, b[1]), np.nan)),
                 "lambda_tv": tv.edge(best[1], lambda k, b=best: memo.get((b[0], k), np.nan))}
        edges = {name: side for name, side in edges.items() if side}
        if not edges or widened >= settings.widen:
            break
        for name, side in edges.items():
            axis = chem if name == "lambda_chem" else tv
            if side == "low":
                axis.k_lo -= steps
            else:
                axis.k_hi += steps
        widened += 1
        offset = (chem.k_lo, tv.k_lo)
        scores = {(kc - offset[0], kt - offset[1]): v for (kc, kt), v in memo.items()}
        _refine(scores, local(offset), chem.size, tv.size, 2 * steps)
        memo.update({(i + offset[0], j + offset[1]): v for (i, j), v in scores.items()})
    at_edge = tuple(
        f"{name} at the {'lower' if side == 'low' else 'upper'} end of its range "
        f"({(chem if name == 'lambda_chem' else tv).value(best[0] if name == 'lambda_chem' else best[1]):.3g})"
        for name, side in edges.items()
    )
    return memo, widened, at_edge
