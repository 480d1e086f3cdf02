"""Post-processing distortions: interpolation (resampling) and gaussian blur.

Lobato, Friedrich & Van Aert, npj Comput. Mater. (2024), arXiv:2303.17025 (*r_em*), Methods,
post-processing distortions. Images are often resized (binned for display, resampled when
exported or converted) and smoothed by the acquisition software or by the user before they
reach a restoration network; both act on the already noisy image, so the noise is no longer
white. r_em includes them so that the network also restores such images.

Examples
--------
>>> import numpy as np
>>> img = np.random.default_rng(0).random((64, 64))
>>> interpolation_distortion(img, 2.0).shape, round(float(gaussian_blur(img, 2.0).std()), 2) < 0.1
((64, 64), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from emfuse.errors import InputError

from .detector import check_image, check_number

__all__ = ["gaussian_blur", "interpolation_distortion"]


def interpolation_distortion(image: Any, factor: float, order: int = 1) -> np.ndarray:
    """Resample to ``1 / factor`` of the size and back to the original size.

    A ``factor`` > 1 is a downsampling (information beyond the new Nyquist frequency is lost
    or aliased, then the image is interpolated back up); a ``factor`` < 1 an upsampling and a
    downsampling back (interpolation smoothing only). ``order`` is the spline order of both
    resamplings: 0 nearest neighbour, 1 bilinear, 3 bicubic, as image software offers.

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
    factor : float
        Size ratio, in [0.25, 8].
    order : int
        Spline order, 0..5.

    Examples
    --------
    >>> img = np.kron(np.eye(4), np.ones((2, 2)))
    >>> bool(np.allclose(interpolation_distortion(img, 2.0, order=0)[::2, ::2], np.eye(4)))
    True
    """
    a = check_image(image)
    factor = check_number(factor, "factor", low=0.25, high=8.0,
                          fix=" (the ratio original size / intermediate size)")
    if isinstance(order, bool) or order not in (0, 1, 2, 3, 4, 5):
        raise InputError(f"order must be a spline order 0..5, got {order!r}")
    ny, nx = a.shape[-2:]
    my, mx = max(2, round(ny / factor)), max(2, round(nx / factor))
    stack = a.reshape(-1, ny, nx)
    out = np.empty_like(stack)
    for k, img in enumerate(stack):
        # grid_mode: pixels are areas, so the field of view is kept exactly at both sizes
        small = ndimage.zoom(img, (my / ny, mx / nx), order=order, mode="grid-mirror",
                             grid_mode=True)
        out[k] = ndimage.zoom(small, (ny / my, nx / mx), order=order, mode="grid-mirror",
                              grid_mode=True)
    return out.reshape(a.shape)


def gaussian_blur(image: Any, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` px in y and x (reflecting borders).

    Examples
    --------
    >>> img = np.zeros((9, 9)); img[4, 4] = 1.0
    >>> out = gaussian_blur(img, 1.0)
    >>> round(float(out.sum()), 6), round(float(out[4, 4]), 3)
    (1.0, 0.159)
    """
    a = check_image(image)
    sigma = check_number(sigma, "sigma", low=0.0, high=50.0, fix=" (a width in pixels)")
    if sigma == 0:
        return a.copy()
    return ndimage.gaussian_filter(a, (0.0, sigma, sigma)[-a.ndim:], mode="reflect")
