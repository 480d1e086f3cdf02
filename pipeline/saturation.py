"""Saturated detector pixels: the values a clipped image holds instead of the signal.

A HAADF detector (or its amplifier, or a contrast stretch in the acquisition software)
that is set too hot clips every brighter pixel to one value: the dtype's maximum of an
integer image, or whatever value the clip was at. One set too cold clips the dark pixels
to zero. A clipped pixel only says "at least (at most) this bright", so the HAADF term
of fusion, which asks the fused maps to reproduce the HAADF pixel by pixel, must leave
it out (:func:`emfuse.pipeline.fusion.fuse`, ``haadf_valid``).

The rule
--------
A pixel is saturated when

1. **the dtype ceiling**: its value is at least ``dtype_max`` (by default the maximum of
   an integer dtype, e.g. 65535 for uint16; pass it for a 12-bit detector stored in
   16 bits, or for a float copy of an integer image); or
2. **a clipped plateau**: its value is the image's maximum, or its minimum when that
   minimum is exactly 0 (an underflowed detector), and that value is a spike at the
   edge of the histogram: held by at least :data:`MIN_PIXELS` pixels and by at least
   :data:`SPIKE` times as many pixels as each of the :data:`NEIGHBOURS` next distinct
   values inward.

Why a spike at the edge: a continuous distribution holds its extreme value in one
pixel, and a quantised one (integer counts) holds it in no more pixels than the levels
next to it, because the edge of a histogram is a thinning tail. Clipping piles the whole
tail beyond the clip onto the last value, so that value holds many times more pixels
than its neighbours (``test_TEM.bcf``: 382 pixels at 65535 where the next values hold
at most 3; 289 at 0 where the next hold at most 4). A low-dose count image that is 0 in
many pixels is not flagged: its 0 holds fewer pixels than its 1 or 2, or a comparable
number (Poisson with mean 1 holds as many pixels at 0 as at 1). A constant image has no
histogram to compare with and is never a plateau (fusion refuses it separately).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> image = rng.normal(1000.0, 100.0, (64, 64))
>>> int(saturated_pixels(image).sum())  # a continuous image: nothing flagged
0
>>> clipped = np.minimum(image, 1100.0)  # clipped at one standard deviation above the mean
>>> round(float(saturated_pixels(clipped).mean()), 3)
0.157
>>> found = find_saturation(clipped.astype(np.uint16))
>>> [(level.value, level.kind) for level in found.levels]
[(1100.0, 'plateau-max')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MIN_PIXELS", "NEIGHBOURS", "SPIKE", "Saturation", "SaturationLevel", "find_saturation",
           "saturated_pixels"]

#: A plateau is held by at least this many pixels (a continuous image holds its maximum in one).
MIN_PIXELS = 5
#: ... and by at least this many times the pixels of each of the next distinct values inward.
SPIKE = 4.0
#: How many next distinct values the plateau is compared with.
NEIGHBOURS = 3


@dataclass(frozen=True)
class SaturationLevel:
    """One saturated value of an image.

    Attributes
    ----------
    value
        The pixel value (in the image's units).
    count
        How many pixels hold it.
    kind
        ``"dtype-max"`` (at or above the dtype ceiling), ``"plateau-max"`` (a clipped
        plateau at the maximum) or ``"plateau-zero"`` (a clipped plateau at 0).
    """

    value: float
    count: int
    kind: str


@dataclass(frozen=True)
class Saturation:
    """What :func:`find_saturation` found: the mask and the saturated values."""

    mask: np.ndarray  # bool, the image's shape: True where saturated
    levels: tuple[SaturationLevel, ...]

    @property
    def fraction(self) -> float:
        """Fraction of the pixels that are saturated (0 for an empty image)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def any(self) -> bool:
        return bool(self.levels)


def _is_plateau(count: int, neighbours: np.ndarray) -> bool:
    """True when an end value held by ``count`` pixels is a spike over its ``neighbours``' counts."""
    if count < MIN_PIXELS or neighbours.size == 0:  # too few pixels, or a constant image
        return False
    return count >= SPIKE * int(neighbours.max())


def _flagged(levels: list[SaturationLevel]) -> set[float]:
    return {level.value for level in levels}


def find_saturation(image: Any, dtype_max: float | None = None) -> Saturation:
    """Find the saturated pixels of an image and the values they hold (the module's rule).

    Parameters
    ----------
    image
        A 2D (or any-dimensional) image, integer or float; numpy, or anything
        :func:`numpy.asarray` takes. Non-finite pixels are never flagged.
    dtype_max
        The detector's ceiling: pixels at or above it are saturated. Default: the
        maximum of an integer dtype, none for floats.

    Returns
    -------
    Saturation
        ``mask`` (bool, the image's shape) and ``levels``: one
        :class:`SaturationLevel` per saturated value, ceiling first.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[0, 0, 0, 0, 0, 0], [1, 7, 9, 12, 255, 40]], dtype=np.uint8)
    >>> found = find_saturation(image)
    >>> [(level.value, level.count, level.kind) for level in found.levels]
    [(255.0, 1, 'dtype-max'), (0.0, 6, 'plateau-zero')]
    >>> round(found.fraction, 3)
    0.583
    """
    image = np.asarray(image)
    mask = np.zeros(image.shape, dtype=bool)
    levels: list[SaturationLevel] = []
    ceiling = dtype_max
    if ceiling is None and image.dtype.kind in "iu":
        ceiling = np.iinfo(image.dtype).max
    if ceiling is not None:
        at_ceiling = image >= ceiling
        if at_ceiling.any():
            mask |= at_ceiling
            for value, count in zip(*np.unique(image[at_ceiling], return_counts=True)):
                levels.append(SaturationLevel(float(value), int(count), "dtype-max"))
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image.ravel()
    if finite.size == 0:
        return Saturation(mask, tuple(levels))
    top, bottom = finite.max(), finite.min()
    # the full histogram (a sort) only when an end holds enough pixels to be a plateau
    ends = [(top, "plateau-max")] + ([(bottom, "plateau-zero")] if bottom == 0 else [])
    ends = [(value, kind) for value, kind in ends
            if int(np.count_nonzero(finite == value)) >= MIN_PIXELS and float(value) not in _flagged(levels)]
    if ends:
        values, counts = np.unique(finite, return_counts=True)
        for value, kind in ends:
            # the next distinct values inward: below the maximum, above the zero
            neighbours = counts[-1 - NEIGHBOURS : -1] if kind == "plateau-max" else counts[1 : 1 + NEIGHBOURS]
            count = int(counts[-1] if kind == "plateau-max" else counts[0])
            if _is_plateau(count, neighbours):
                mask |= image == value
                levels.append(SaturationLevel(float(value), count, kind))
    return Saturation(mask, tuple(levels))


def saturated_pixels(image: Any, dtype_max: float | None = None) -> np.ndarray:
    """Bool mask of the saturated pixels of ``image`` (see :func:`find_saturation` and the module's rule).

    Parameters
    ----------
    image
        The image (integer or float).
    dtype_max
        The detector's ceiling (default: the integer dtype's maximum; none for floats).

    Returns
    -------
    numpy.ndarray
        bool, the shape of ``image``; True where the pixel is saturated.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.arange(100, dtype=np.uint16).reshape(10, 10)
    >>> int(saturated_pixels(image).sum())  # a ramp: no plateau
    0
    >>> int(saturated_pixels(np.minimum(image, 80)).sum())  # 80..99 clipped to 80
    20
    >>> int(saturated_pixels(image, dtype_max=90).sum())  # a 90-count ceiling
    10
    """
    return find_saturation(image, dtype_max).mask
