"""Image quality against a ground truth: NRMSE, PSNR.

Reconstructions come in arbitrary units (counts, normalised maps), so
:func:`nrmse` can first fit ``a * estimate + c`` to the truth by least
squares: it then measures structure, not scale, and treats raw and fused maps
alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
        raise ValueError(f"estimate {np.shape(estimate)} and truth {np.shape(truth)} differ in shape")
    if fit:
        design = np.stack([est, np.ones_like(est)], axis=1)
        coef, *_ = np.linalg.lstsq(design, ref, rcond=None)
        est = design @ coef
    spread = ref.std()
    if spread == 0:
        raise ValueError("the truth is constant; NRMSE is undefined")
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
    mse = float(np.mean((est - ref) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))
