"""Preprocessing of BF, DF and HRTEM images before fusion: flat field, equalisation, registration, denoising.

The four steps of the AVAE paper's pipeline, each a pure function on numpy arrays, and
:class:`Preprocessing`, the parameters of all four fitted once on a whole dataset (or its
central crop) and then applied window by window, so that a tiled job gives the same numbers as
one pass over the whole image:

1. **flat field** (:func:`fit_flat`, :func:`flat_surface`, :func:`flat_field`): divide by the
   illumination. With a flat (gain or vacuum reference) it is used; without one the
   illumination is estimated as ``exp(P(u, v))``, ``P`` a low-order polynomial of the
   normalised image coordinates fitted to the log of the block-averaged image. A gaussian beam
   is exactly such a surface (order 2); so is the part of the specimen's own thickness wedge
   that it cannot tell from the beam, which is removed with it.
2. **histogram equalisation** (:func:`mode_quantiles`, :func:`equalise`): each mode mapped
   through its own cumulative histogram to [0, 1], so the modes share one range whatever their
   dose and contrast.
3. **registration** (:func:`estimate_mode_drift`, :func:`align_modes`): the drift of BF and DF
   against the HRTEM by phase correlation with subpixel refinement
   (:func:`emfuse.pipeline.register.estimate_shift`). The modes are different transforms of the
   specimen (HRTEM fringes, BF dark diffracting grains, DF a few bright grains), so they are
   not correlated directly: each is reduced to the gradient magnitude of its smoothed image,
   which marks the grain boundaries and the amorphous film in every mode, and those maps are
   cross-correlated (plain, not phase-normalised: most of their spectrum is noise).
4. **denoising** (:func:`denoise`): a gaussian filter per mode, narrow for the HRTEM (its
   fringes are 3.5 px apart) and wider for the low-resolution BF and DF.

Examples
--------
>>> import numpy as np
>>> from emfuse.pipeline.synth.tem_modes import simulate_region
>>> region = simulate_region((96, 96), "metal", np.random.default_rng(0))
>>> prep = Preprocessing.fit(region.modes)
>>> out = prep.apply(region.modes)
>>> out.shape, out.dtype, float(out.min()) >= 0, float(out.max()) <= 1
((3, 96, 96), dtype('float32'), True, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from emfuse.errors import InputError
from emfuse.pipeline.register import estimate_shift

from .modes import HRTEM, MODES

__all__ = ["DENOISE_SIGMA", "Preprocessing", "align_modes", "block_mean", "denoise", "equalise",
           "estimate_mode_drift", "fit_flat", "flat_field", "flat_surface", "mode_quantiles",
           "registration_view"]

#: Gaussian denoising width per mode (px).
DENOISE_SIGMA = {"bf": 1.0, "df": 1.0, "hrtem": 0.5}
N_QUANTILES = 1024


# -- flat field ---------------------------------------------------------------------------


def _monomials(order: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]


def _design(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    return np.stack([u**i * v**j for i, j in _monomials(order)], axis=-1)


def _normalised(index: np.ndarray, n: int) -> np.ndarray:
    return index / max(n - 1, 1) - 0.5


def block_mean(image: Any, max_px: int = 128) -> tuple[np.ndarray, int]:
    """Average ``image`` over square blocks so that no side exceeds ``max_px``; returns (image, factor).

    Examples
    --------
    >>> small, f = block_mean(np.ones((300, 200)), 128)
    >>> small.shape, f
    ((100, 66), 3)
    """
    a = np.asarray(image, dtype=np.float64)
    f = max(1, math.ceil(max(a.shape) / max_px))
    ny, nx = a.shape[0] // f, a.shape[1] // f
    return a[: ny * f, : nx * f].reshape(ny, f, nx, f).mean(axis=(1, 3)), f


def fit_flat(image: Any, *, order: int = 2, full_shape: Sequence[int] | None = None,
             factor: int = 1, max_px: int = 128) -> np.ndarray:
    """Coefficients of the log-illumination polynomial of an image (no flat reference).

    Parameters
    ----------
    image : array (H, W)
        The image, or (with ``full_shape`` and ``factor``) a block average of it by ``factor``.
    order : int
        Polynomial order in the normalised coordinates (2 fits a gaussian beam exactly).
    full_shape : (int, int), optional
        Shape of the full image when ``image`` is its block average.
    factor : int
        Block size of that average.
    max_px : int
        The image is block-averaged further to at most this many pixels a side.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:64, 0:64] / 63 - 0.5
    >>> beam = np.exp(-(yy**2 + (xx - 0.2) ** 2) / 0.5)
    >>> coef = fit_flat(100 * beam)
    >>> bool(np.allclose(flat_surface(coef, (64, 64)), beam / np.exp(-0.2**2 / 0.5), rtol=1e-3))
    True
    """
    a = np.asarray(image, dtype=np.float64)
    full = tuple(full_shape) if full_shape is not None else a.shape
    small, f2 = block_mean(a, max_px)
    f = factor * f2
    iy = (np.arange(small.shape[0]) + 0.5) * f - 0.5
    ix = (np.arange(small.shape[1]) + 0.5) * f - 0.5
    u, v = np.meshgrid(_normalised(iy, full[0]), _normalised(ix, full[1]), indexing="ij")
    floor = max(float(np.percentile(small, 99)) * 1e-3, 1e-9)
    target = np.log(np.clip(small, floor, None))
    coef, *_ = np.linalg.lstsq(_design(u.ravel(), v.ravel(), order).reshape(-1, len(_monomials(order))),
                               target.ravel(), rcond=None)
    return coef


def flat_surface(coef: np.ndarray, full_shape: Sequence[int],
                 window: tuple[slice, slice] | None = None) -> np.ndarray:
    """The illumination (1 at the centre of the full image) on ``window`` of an image of ``full_shape``."""
    order = int(round((math.sqrt(8 * len(coef) + 1) - 3) / 2))
    ys, xs = window or (slice(0, full_shape[0]), slice(0, full_shape[1]))
    u, v = np.meshgrid(_normalised(np.arange(ys.start, ys.stop), full_shape[0]),
                       _normalised(np.arange(xs.start, xs.stop), full_shape[1]), indexing="ij")
    log_surface = _design(u, v, order) @ coef
    centre = _design(np.zeros(1), np.zeros(1), order) @ coef  # the value at the image centre
    return np.exp(log_surface - centre)


def flat_field(image: Any, flat: Any = None, *, order: int = 2) -> np.ndarray:
    """Divide ``image`` by its illumination: ``flat`` if given, else the fitted surface.

    Examples
    --------
    >>> flat_field(np.full((4, 4), 6.0), flat=np.full((4, 4), 3.0)).tolist()[0]
    [6.0, 6.0, 6.0, 6.0]
    """
    a = np.asarray(image, dtype=np.float64)
    if flat is not None:
        f = np.asarray(flat, dtype=np.float64)
        if f.shape != a.shape:
            raise InputError(f"the flat {f.shape} and the image {a.shape} differ in shape")
        if not (f > 0).all():
            raise InputError("the flat must be > 0 everywhere")
        return a / (f / f.mean())
    return a / flat_surface(fit_flat(a, order=order), a.shape)


# -- histogram equalisation ------------------------------------------------------------------


def mode_quantiles(image: Any, n: int = N_QUANTILES) -> np.ndarray:
    """``n`` quantiles (0..1) of an image: its cumulative histogram, for :func:`equalise`."""
    a = np.asarray(image, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise InputError("the image has no finite values")
    return np.quantile(a, np.linspace(0, 1, n))


def stretch(image: Any, quantiles: np.ndarray, low: float = 0.01, high: float = 0.99) -> np.ndarray:
    """A linear map of the ``low`` and ``high`` quantiles to 0 and 1, clipped: keeps the image's
    values proportional (:func:`equalise` does not).

    Examples
    --------
    >>> q = mode_quantiles(np.linspace(0.0, 10.0, 1001))
    >>> [round(float(v), 3) for v in stretch(np.array([0.1, 5.0, 9.9]), q)]
    [0.0, 0.5, 1.0]
    """
    ranks = np.linspace(0, 1, len(quantiles))
    lo, hi = np.interp([low, high], ranks, quantiles)
    spread = hi - lo if hi > lo else 1.0
    return np.clip((np.asarray(image, dtype=np.float64) - lo) / spread, 0.0, 1.0)


def equalise(image: Any, quantiles: np.ndarray | None = None) -> np.ndarray:
    """Histogram equalisation: each value replaced by its rank in ``quantiles`` (default its own), in [0, 1].

    Examples
    --------
    >>> out = equalise(np.random.default_rng(0).exponential(size=(64, 64)))
    >>> round(float(out.mean()), 2), float(out.min()), float(out.max())
    (0.5, 0.0, 1.0)
    """
    a = np.asarray(image, dtype=np.float64)
    q = mode_quantiles(a) if quantiles is None else np.asarray(quantiles, dtype=np.float64)
    # ties (flat stretches of the CDF) map to the middle of their rank interval
    ranks = np.linspace(0, 1, q.size)
    lo = np.interp(a, q, ranks, left=0.0, right=1.0)
    hi = np.interp(-a, -q[::-1], ranks[::-1], left=1.0, right=0.0)
    return np.clip(0.5 * (lo + hi), 0.0, 1.0)


# -- registration -----------------------------------------------------------------------------


def registration_view(image: Any, sigma: float = 3.0) -> np.ndarray:
    """What the modes share: the gradient magnitude of the image smoothed by ``sigma`` px."""
    return ndimage.gaussian_gradient_magnitude(np.asarray(image, dtype=np.float64), sigma, mode="nearest")


def estimate_mode_drift(modes: Any, *, reference: int = HRTEM, sigma: float = 3.0,
                        max_shift: float = 8.0, upsample: int = 20) -> np.ndarray:
    """Drift ``(dy, dx)`` of every mode against ``reference`` (px), shape (modes, 2).

    ``modes`` (mode, y, x) should be flat-fielded. A drift larger than ``max_shift`` is taken
    for a failed match: it is replaced by 0 with a warning.

    Examples
    --------
    >>> from emfuse.pipeline.register import shift_image
    >>> base = ndimage.gaussian_filter(np.random.default_rng(0).random((96, 96)), 3)
    >>> stack = np.stack([shift_image(base, (1.5, -2.25)), base])
    >>> np.round(estimate_mode_drift(stack, reference=1, sigma=1.0), 1).tolist()
    [[1.5, -2.2], [0.0, 0.0]]
    """
    a = np.asarray(modes, dtype=np.float64)
    ref = registration_view(a[reference], sigma)
    drift = np.zeros((a.shape[0], 2))
    for i in range(a.shape[0]):
        if i == reference:
            continue
        d = np.array(estimate_shift(ref, registration_view(a[i], sigma), normalization=None,
                                    upsample=upsample))
        if np.abs(d).max() > max_shift:
            warnings.warn(f"registration of mode {i} gave a drift of {d.round(1).tolist()} px, more than "
                          f"{max_shift}; taken as failed, the mode is not shifted", RuntimeWarning, stacklevel=2)
            d[:] = 0.0
        drift[i] = d
    return drift


def align_modes(modes: Any, drift: Any) -> np.ndarray:
    """Move every mode back by its drift (bicubic; borders repeat the edge)."""
    a = np.asarray(modes, dtype=np.float64)
    return np.stack([ndimage.shift(m, -np.asarray(d), order=3, mode="nearest") if np.any(d) else m
                     for m, d in zip(a, np.asarray(drift, dtype=np.float64))])


# -- denoising -------------------------------------------------------------------------------


def denoise(image: Any, sigma: float) -> np.ndarray:
    """Gaussian denoising of width ``sigma`` px (0: unchanged).

    Examples
    --------
    >>> noisy = np.random.default_rng(0).normal(1.0, 1.0, (128, 128))
    >>> out = denoise(noisy, 1.0)
    >>> round(float(out.mean()), 1), bool(out.std() < 0.4)
    (1.0, True)
    """
    a = np.asarray(image, dtype=np.float64)
    if sigma < 0:
        raise InputError(f"sigma must be >= 0, got {sigma}")
    return ndimage.gaussian_filter(a, sigma, mode="nearest") if sigma > 0 else a


# -- all four, fitted once and applied by window -------------------------------------------------


@dataclass
class Preprocessing:
    """The fitted parameters of the four steps for one dataset (JSON-able with :meth:`to_dict`).

    ``flat`` (mode, n_coef) log-illumination coefficients; ``quantiles`` (mode, n) cumulative
    histograms of the flat-fielded modes; ``drift`` (mode, 2) px; ``denoise`` sigma per mode (px);
    ``shape`` the full image's (y, x); ``linear`` the modes (indices) mapped to [0, 1] by
    :func:`stretch` instead of :func:`equalise` (none by default).
    """

    flat: np.ndarray
    quantiles: np.ndarray
    drift: np.ndarray
    shape: tuple[int, int]
    denoise: tuple[float, ...] = field(default_factory=lambda: tuple(DENOISE_SIGMA[m] for m in MODES))
    order: int = 2
    linear: tuple[int, ...] = ()

    @classmethod
    def fit(cls, modes: Any, *, full_shape: Sequence[int] | None = None, offset: Sequence[int] = (0, 0),
            coarse: Any = None, factor: int = 1, register: bool = True, sigma: float = 3.0,
            order: int = 2, linear: Sequence[int] = ()) -> Preprocessing:
        """Fit every step on ``modes`` (mode, y, x): the whole image or a crop of it.

        For a dataset larger than memory pass the central crop as ``modes`` (with its
        ``offset`` in the full image of ``full_shape``) and a block average of the whole dataset
        by ``factor`` as ``coarse``, for the flat field.
        """
        a = np.asarray(modes, dtype=np.float64)
        full = tuple(int(n) for n in (full_shape or a.shape[1:]))
        low = np.asarray(coarse, dtype=np.float64) if coarse is not None else None
        flat = np.stack([fit_flat(low[i] if low is not None else a[i], order=order, full_shape=full,
                                  factor=factor if low is not None else 1) for i in range(a.shape[0])])
        window = (slice(offset[0], offset[0] + a.shape[1]), slice(offset[1], offset[1] + a.shape[2]))
        flattened = np.stack([a[i] / flat_surface(flat[i], full, window) for i in range(a.shape[0])])
        quantiles = np.stack([mode_quantiles(m) for m in flattened])
        drift = estimate_mode_drift(flattened, sigma=sigma) if register else np.zeros((a.shape[0], 2))
        return cls(flat, quantiles, drift, full, order=order, linear=tuple(int(i) for i in linear))

    def apply(self, window_modes: Any, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """Flat field, equalise, align and denoise a window (mode, y, x) of the full image."""
        a = np.asarray(window_modes, dtype=np.float64)
        win = window or (slice(0, a.shape[1]), slice(0, a.shape[2]))
        out = np.empty_like(a)
        for i in range(a.shape[0]):
            to_unit = stretch if i in self.linear else equalise
            out[i] = to_unit(a[i] / flat_surface(self.flat[i], self.shape, win), self.quantiles[i])
        out = align_modes(out, self.drift)
        for i in range(a.shape[0]):
            out[i] = denoise(out[i], self.denoise[i])
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, tuple) else v)
                for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(np.asarray(d["flat"]), np.asarray(d["quantiles"]), np.asarray(d["drift"]),
                   tuple(d["shape"]), tuple(d["denoise"]), int(d["order"]), tuple(d.get("linear", ())))
