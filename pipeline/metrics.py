"""Image quality against a ground truth: NRMSE, PSNR, SSIM.

Reconstructions come in arbitrary units (counts, normalised maps), so
:func:`nrmse` can first fit ``a * estimate + c`` to the truth by least
squares: it then measures structure, not scale, and treats raw and fused maps
alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .backend import to_numpy


def nrmse(estimate: Any, truth: Any, *, fit: bool = True) -> float:
    """Root-mean-square error normalised by the truth's standard deviation.

    Parameters
    ----------
    estimate, truth
        Arrays of the same shape.
    fit
        Fit ``a * estimate + c`` to ``truth`` (least squares) before comparing,
        so estimates in other units are compared fairly.

    Returns
    -------
    float
        0 for a perfect estimate, about 1 for one no better than the truth's mean.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.linspace(0, 1, 100)
    >>> round(nrmse(3 * truth + 2, truth), 6)
    0.0
    """
    est = to_numpy(estimate).astype(np.float64).ravel()
    ref = to_numpy(truth).astype(np.float64).ravel()
    if est.shape != ref.shape:
        raise InputError(f"estimate {np.shape(estimate)} and truth {np.shape(truth)} differ in shape")
    if fit:
        design = np.stack([est, np.ones_like(est)], axis=1)
        coef, *_ = np.linalg.lstsq(design, ref, rcond=None)
        est = design @ coef
    spread = ref.std()
    if spread == 0:
        raise InputError("the truth is constant; NRMSE is undefined")
    return float(np.sqrt(np.mean((est - ref) ** 2)) / spread)


def psnr(estimate: Any, truth: Any, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)``.

    ``data_range`` defaults to the truth's max - min.

    Examples
    --------
    >>> import numpy as np
    >>> round(psnr(np.array([0.0, 1.0]) + 0.1, np.array([0.0, 1.0])), 3)
    20.0
    """
    est = to_numpy(estimate).astype(np.float64)
    ref = to_numpy(truth).astype(np.float64)
    data_range = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    return float(psnr_from_mse(data_range, np.mean((est - ref) ** 2)))


def psnr_from_mse(data_range: Any, mse: Any) -> Any:
    """``10 log10(data_range^2 / mse)`` in dB, elementwise (inf where ``mse`` is 0): the PSNR of
    many frames at once from their mean squared errors (computed chunk by chunk elsewhere).

    Examples
    --------
    >>> psnr_from_mse(np.array([1.0, 1.0]), np.array([0.01, 0.0])).tolist()
    [20.0, inf]
    """
    data_range, mse = np.asarray(data_range, float), np.asarray(mse, float)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10 * np.log10(data_range**2 / np.where(mse == 0, 1, mse)))


def ssim(estimate: Any, truth: Any, *, data_range: float | None = None, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004) of two 2-D images, mean over the image.

    Local means, variances and covariance are taken with a gaussian window of standard
    deviation ``sigma`` pixels (truncated at 3.5 sigma, i.e. 11 x 11 for the default 1.5;
    population statistics), ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``L = data_range``
    (default the truth's max - min). The mean runs over the pixels whose window lies
    inside the image.

    This is scikit-image's ``structural_similarity`` with ``gaussian_weights=True,
    use_sample_covariance=False`` (the settings of Wang et al.); emfuse only fixes those
    settings, the default data range and the input checks, so that every SSIM it reports
    (benchmarks, the AVAE baselines, tests) is the same one. scikit-image's own default
    (a 7 x 7 uniform window, sample covariance) gives other values.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((32, 32))
    >>> ssim(img, img), ssim(2 * img + 1, img) < 1
    (1.0, True)
    """
    from skimage.metrics import structural_similarity

    est = to_numpy(estimate).astype(np.float64)
    ref = to_numpy(truth).astype(np.float64)
    if est.shape != ref.shape or est.ndim != 2:
        raise InputError(f"ssim needs two 2-D images of the same shape, got {est.shape} and {ref.shape}")
    data_range = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if not data_range > 0:
        raise InputError("the truth is constant; give data_range for SSIM")
    radius = int(3.5 * sigma + 0.5)  # scikit-image's window radius (truncate=3.5)
    if min(ref.shape) <= 2 * radius:
        raise InputError(f"images {ref.shape} are too small for a window of radius {radius}")
    return float(structural_similarity(est, ref, data_range=data_range, gaussian_weights=True, sigma=sigma,
                                       use_sample_covariance=False, K1=k1, K2=k2))
