"""Small array helpers shared by the pipeline's modules, kept once.

Examples
--------
>>> import numpy as np
>>> image = np.arange(36).reshape(6, 6)
>>> image[central_crop(image.shape, 2)].tolist()
[[14, 15], [20, 21]]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["central_crop"]


def central_crop(shape: Sequence[int], size: int) -> tuple[slice, slice]:
    """The central ``size`` x ``size`` window of an image (the whole side if smaller).

    Parameters
    ----------
    shape : sequence of int
        The image's shape (..., y, x).
    size : int
        The side of the window.

    Returns
    -------
    (slice, slice)
        The rows and columns of the window; an odd margin leaves the extra pixel after it.

    Examples
    --------
    >>> central_crop((1000, 100), 256)
    (slice(372, 628, None), slice(0, 100, None))
    """
    out = []
    for n in shape[-2:]:
        m = min(int(n), int(size))
        start = (int(n) - m) // 2
        out.append(slice(start, start + m))
    return out[0], out[1]
