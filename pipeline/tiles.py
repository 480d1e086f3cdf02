"""Cut large images into tiles: the one tiling module of emfuse, with its two policies.

Every job and the notebook path tile images through here; what runs on the tiles lives with
its kernel (:mod:`emfuse.pipeline.fusion.tiled`, :mod:`emfuse.pipeline.avae.fuse`,
:mod:`emfuse.pipeline.restore.inference`). This module imports no kernel.

**Halo-crop** (:class:`Tile`, :func:`tile_grid`): for kernels whose result near a border
needs context and that run on windows of any size, i.e. fusion (TV and the other
neighbourhood terms) and AVAE inference. A tile is a *core* (the pixels it is responsible
for; the cores partition the image) inside a *window* (the core grown by a halo on every
side, clipped to the image). The kernel runs on the window and the core is cropped back
exactly: every output pixel comes from one tile, nothing is blended. Cores line up with Zarr
chunks, so workers write disjoint regions. With a halo of a few times the kernel's
correlation length the tiled result matches the untiled one closely
(``tests/pipeline/test_fusion_tiled.py`` states the tolerance for fusion).

**Overlap-blend** (:func:`overlap_starts`, :func:`blend_weights`, :class:`BlendGrid`): for
networks fed fixed-size inputs in batches, i.e. restoration. All tiles have one shape (a
multiple of the network's down-sampling factor), overlap by at least ``overlap`` pixels and
are spread evenly; each output pixel is a weighted mean of the tiles covering it, with weights
feathered across the overlaps (raised cosine) and normalised to sum to 1. There are no seams,
and where the tiles agree the blend gives back their common value exactly.

Examples
--------
>>> [t.id for t in tile_grid((300, 200), tile=128, halo=32)]
['0-0', '0-1', '1-0', '1-1', '2-0', '2-1']
>>> len(BlendGrid.make((300, 200), tile=128, overlap=32))
6
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BlendGrid", "Tile", "blend_weights", "overlap_starts", "tile_grid"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, multiple: int) -> int:
    return _ceil_div(a, multiple) * multiple


# -- halo-crop: cores partition the image, kernels run on core + halo ------------------------


@dataclass(frozen=True)
class Tile:
    """One tile of a 2D grid: ``core`` slices inside ``window`` slices (image coordinates).

    Attributes
    ----------
    index : tuple of int
        (row, column) of the tile in its grid.
    core : tuple of slice
        The (y, x) pixels the tile is responsible for; the cores of a grid partition the image.
    window : tuple of slice
        The (y, x) pixels a kernel sees: the core grown by the halo, clipped to the image.

    Examples
    --------
    >>> t = Tile((0, 1), (slice(0, 4), slice(4, 8)), (slice(0, 5), slice(3, 8)))
    >>> t.id, t.shape, t.crop
    ('0-1', (4, 4), (slice(0, 4, None), slice(1, 5, None)))
    """

    index: tuple[int, int]
    core: tuple[slice, slice]
    window: tuple[slice, slice]

    @property
    def id(self) -> str:
        """A stable name, ``"<row>-<col>"``, used in progress records."""
        return f"{self.index[0]}-{self.index[1]}"

    @property
    def crop(self) -> tuple[slice, slice]:
        """The core relative to the window (to cut a kernel's output back)."""
        return tuple(
            slice(c.start - w.start, c.stop - w.start) for c, w in zip(self.core, self.window)
        )  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int]:
        """The (height, width) of the core."""
        return tuple(s.stop - s.start for s in self.core)  # type: ignore[return-value]


def tile_grid(shape: Sequence[int], tile: int | Sequence[int], halo: int) -> list[Tile]:
    """Cut an image of ``shape`` (y, x) into tiles of ``tile`` pixels with a ``halo`` (halo-crop).

    Cores start at multiples of ``tile`` so that they line up with Zarr chunks of that size
    (region writes never share a chunk); the last row and column of tiles may be smaller.

    Parameters
    ----------
    shape : sequence of int
        The image's (height, width).
    tile : int or sequence of int
        The core size, one for both axes or (y, x); also the chunk size of the stores written.
    halo : int
        Pixels of context added to every side of a core (clipped at the image border).

    Returns
    -------
    list of Tile
        Row-major; cores partition the image.

    Raises
    ------
    ValueError
        For an empty image, a tile smaller than 1 px or a negative halo.

    Examples
    --------
    >>> [t.core for t in tile_grid((5, 3), tile=4, halo=1)]
    [(slice(0, 4, None), slice(0, 3, None)), (slice(4, 5, None), slice(0, 3, None))]
    >>> tile_grid((5, 3), tile=4, halo=1)[1].window
    (slice(3, 5, None), slice(0, 3, None))
    """
    ny, nx = (int(n) for n in shape)
    ty, tx = (int(tile), int(tile)) if np.isscalar(tile) else (int(t) for t in tile)
    if min(ny, nx) < 1 or min(ty, tx) < 1 or halo < 0:
        raise ValueError(f"bad tiling: image {shape}, tile {tile}, halo {halo}")
    tiles = []
    for iy in range(_ceil_div(ny, ty)):
        for ix in range(_ceil_div(nx, tx)):
            core = (slice(iy * ty, min((iy + 1) * ty, ny)), slice(ix * tx, min((ix + 1) * tx, nx)))
            window = (
                slice(max(core[0].start - halo, 0), min(core[0].stop + halo, ny)),
                slice(max(core[1].start - halo, 0), min(core[1].stop + halo, nx)),
            )
            tiles.append(Tile((iy, ix), core, window))
    return tiles


# -- overlap-blend: equal tiles overlap, outputs feathered together ---------------------------


def overlap_starts(n: int, tile: int, overlap: int, multiple: int = 1) -> tuple[list[int], int]:
    """Tile origins along one axis of ``n`` pixels, and the tile length used (overlap-blend).

    As few tiles as cover the axis with tiles of at most ``tile`` pixels overlapping by at
    least ``overlap``; the tiles are then made as short as that allows and spread evenly
    (less computed twice than with ``tile``-long tiles and a short last step).

    Parameters
    ----------
    n : int
        The axis length, a multiple of ``multiple``.
    tile : int
        The longest tile wanted (rounded up to a multiple of ``multiple``).
    overlap : int
        The least overlap between neighbouring tiles.
    multiple : int
        Tile lengths and origins are multiples of it (a network's down-sampling factor).

    Returns
    -------
    starts : list of int
        The tiles' origins, increasing; the last tile ends at ``n``.
    length : int
        Every tile's length (``n`` when one tile covers the axis).

    Raises
    ------
    ValueError
        When ``n`` is not a multiple of ``multiple``, or ``tile`` leaves no step after ``overlap``.

    Examples
    --------
    >>> overlap_starts(1024, 256, 32)  # 5 tiles of 231 px rather than 5 of 256
    ([0, 198, 396, 594, 793], 231)
    >>> overlap_starts(1024, 256, 32, multiple=2)
    ([0, 198, 396, 594, 792], 232)
    >>> overlap_starts(100, 256, 32)
    ([0], 100)
    """
    if n % multiple:
        raise ValueError(f"axis length {n} is not a multiple of {multiple}")
    longest = _round_up(tile, multiple)
    if longest >= n:
        return [0], n
    if longest - overlap < multiple:
        raise ValueError(f"tile {tile} leaves no step with overlap {overlap}; use a larger tile")
    k = _ceil_div(n - overlap, longest - overlap)
    while True:  # rounding origins down to `multiple` may take up to multiple - 1 px of overlap
        slack = overlap + multiple - 1
        length = _round_up(_ceil_div(n + (k - 1) * slack, k), multiple)
        if length <= longest:
            break
        k += 1
    starts = [(i * (n - length)) // (k - 1) // multiple * multiple for i in range(k)]
    starts[-1] = n - length
    return starts, length


def blend_weights(length: int, overlap: int, *, before: bool, after: bool) -> np.ndarray:
    """1D blending weights of one tile: tapered on the sides shared with a neighbour.

    A tapered side is 0 over ``overlap // 4`` pixels (where the tile lacked context), then
    rises as ``sin^2`` to 1 at ``overlap`` pixels; the rising and falling tapers of two tiles
    that overlap by ``overlap`` sum to 1. A side at the image border stays 1.

    Parameters
    ----------
    length : int
        The tile's length.
    overlap : int
        The overlap the tapers are made for (0: no taper).
    before, after : bool
        Whether a neighbouring tile overlaps the start / the end.

    Returns
    -------
    numpy.ndarray
        float64, ``(length,)``, in [0, 1].

    Examples
    --------
    >>> blend_weights(8, 4, before=True, after=False).round(3).tolist()
    [0.0, 0.146, 0.854, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    w = np.ones(length, dtype=np.float64)
    if overlap <= 0:
        return w
    margin = overlap // 4
    u = np.arange(overlap, dtype=np.float64)
    rise = np.sin(0.5 * np.pi * np.clip((u - margin + 0.5) / (overlap - 2 * margin), 0.0, 1.0)) ** 2
    n = min(overlap, length)
    if before:
        w[:n] = np.minimum(w[:n], rise[:n])
    if after:
        w[length - n:] = np.minimum(w[length - n:], rise[::-1][overlap - n:])
    return w


@dataclass(frozen=True)
class BlendGrid:
    """Equal, overlapping tiles covering a ``(ny, nx)`` image, with blending weights summing to 1.

    Build it with :meth:`make`; tile ``k`` covers :meth:`region` ``(k)`` and its output is
    weighted by :meth:`weights` ``(k)`` (overlap-blend policy).

    Attributes
    ----------
    size : tuple of int
        The image's (height, width).
    shape : tuple of int
        Every tile's (height, width).
    starts : tuple of tuple of int
        The (y0, x0) of every tile, row-major.
    index : tuple of tuple of int
        The (row, column) of every tile.
    wy, wx : tuple of numpy.ndarray
        The 1D weights (:func:`blend_weights`) of each row and each column of tiles.
    norm : numpy.ndarray
        1 / (the sum of all tiles' weights), ``size``.

    Examples
    --------
    >>> grid = BlendGrid.make((300, 200), tile=128, overlap=32)
    >>> len(grid), grid.shape
    (6, (122, 116))
    >>> total = np.zeros((300, 200))
    >>> for k in range(len(grid)):
    ...     total[grid.region(k)] += grid.weights(k)
    >>> bool(np.allclose(total, 1))
    True
    """

    size: tuple[int, int]
    shape: tuple[int, int]
    starts: tuple[tuple[int, int], ...]
    index: tuple[tuple[int, int], ...]
    wy: tuple[np.ndarray, ...]
    wx: tuple[np.ndarray, ...]
    norm: np.ndarray

    @classmethod
    def make(cls, size: tuple[int, int], tile: int, overlap: int, multiple: int = 1) -> BlendGrid:
        """The grid of an image of ``size`` (:func:`overlap_starts` along each axis).

        Parameters
        ----------
        size : tuple of int
            The image's (height, width), multiples of ``multiple``.
        tile, overlap, multiple : int
            As for :func:`overlap_starts`.

        Returns
        -------
        BlendGrid
        """
        (ys, ty), (xs, tx) = (overlap_starts(n, tile, overlap, multiple) for n in size)
        wy = tuple(blend_weights(ty, overlap, before=s > 0, after=s + ty < size[0]) for s in ys)
        wx = tuple(blend_weights(tx, overlap, before=s > 0, after=s + tx < size[1]) for s in xs)
        total = np.zeros(size, dtype=np.float64)
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                total[y0:y0 + ty, x0:x0 + tx] += np.outer(wy[i], wx[j])
        starts = tuple((y0, x0) for y0 in ys for x0 in xs)
        index = tuple((i, j) for i in range(len(ys)) for j in range(len(xs)))
        return cls(tuple(size), (ty, tx), starts, index, wy, wx, 1.0 / total)

    def __len__(self) -> int:
        return len(self.starts)

    def region(self, k: int) -> tuple[slice, slice]:
        """The slices of tile ``k`` in the image."""
        y0, x0 = self.starts[k]
        return slice(y0, y0 + self.shape[0]), slice(x0, x0 + self.shape[1])

    def weights(self, k: int) -> np.ndarray:
        """Normalised blending weights of tile ``k`` (float32, its shape)."""
        i, j = self.index[k]
        return (np.outer(self.wy[i], self.wx[j]) * self.norm[self.region(k)]).astype(np.float32)
