"""Memory model of the fusion solver on a GPU: bytes held per pixel, bytes moved per iteration, tile size.

What the solver holds
---------------------
For a window of ``P`` pixels and ``E`` elements, :func:`emfuse.pipeline.fusion.fuse` with the
``cuda`` engine holds these arrays at its peak, each in the working dtype (float32: ``s = 4``
bytes), counted in floats per pixel:

========================================  ==============  ==========================================
array                                     floats / pixel  held by
========================================  ==============  ==========================================
raw HAADF and maps (the caller's window)  ``1 + E``       the caller (in the working dtype)
normalised HAADF ``b_H`` and maps ``b``   ``1 + E``       the solver
starting iterate ``x0`` (a copy of ``b``) ``E``           the solver, until the last iteration
gradient-step buffer ``v``                ``E``           the engine
two iterate buffers ``x``                 ``2 E``         the engine (a rejected step keeps ``x``)
two ``x^(gamma-1)`` buffers               ``2 E``         the engine (objective pass -> next step)
TV duals ``r`` and ``q`` (y and x parts)  ``4 E``         the engine (FGP: ``+ 2 E``, the previous ``p``)
HAADF mask weights (``haadf_valid``)      ``1 + 1/s``     the solver (0/1 weights and the bool mask)
per-element TV weights                    ``4`` (FGP 6)   one more one-image dual workspace
block partial sums (float64)              ``48 / 256 B``  3 + 3 float64 per 256-pixel block
========================================  ==============  ==========================================

so ``bytes/pixel = s (2 + 12 E) + 48/256`` for GP, unmasked, one TV weight (E = 4: 200 bytes).
At the end ``x0`` is released and the result's model HAADF (one image) is made as
``x * x^(gamma-1)`` from the last objective pass, weighted in the ``v`` buffer's place, so the
end of the run needs no stack-sized temporaries and the peak is the one above.
A tile of ``t x t`` pixels with a halo of ``h`` pixels on each side fits when
``(t + 2 h)^2 * bytes_per_pixel <= safety * free_bytes`` (:func:`largest_tile`).

What the solver moves
---------------------
Per outer iteration (no backtracking), the kernels of :mod:`.kernels_cuda` read and write
(floats per pixel; neighbours read from cache, not counted again): the gradient step
``4 E + 1`` (``x``, ``x^(gamma-1)``, ``b`` and ``b_H`` in, ``v`` out), the TV step
``3 E`` for its first dual iteration, ``5 E`` (FGP ``9 E``) for each further one and ``4 E`` for
the final primal, the objective pass ``3 E + 1``: ``9 E + 5 E n + 2`` for GP with ``n`` dual
iterations (138 floats at E = 4, n = 5) (:func:`fusion_bytes_per_iteration`). Dividing by the
measured time per iteration gives the achieved bandwidth (``benchmarks/fusion_gpu.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from emfuse.errors import EmfuseError

#: Pixels per block of the CUDA kernels (``kernels_cuda.THREADS`` on a device).
BLOCK_PIXELS = 256


#: fraction of a device's free memory a tile may plan for (the rest: the CUDA context, the
#: allocator's fragmentation, the caller's other arrays)
SAFETY = 0.8


def fusion_bytes_per_pixel(
    n_elements: int,
    *,
    itemsize: int = 4,
    momentum: bool = False,
    masked: bool = False,
    per_element_tv: bool = False,
) -> float:
    """Bytes of device memory the fusion of one window holds per pixel (the model in the module docstring).

    Parameters
    ----------
    n_elements
        Elemental maps fused together (``E``).
    itemsize
        Bytes of the working dtype (4: float32, the default of :func:`~emfuse.pipeline.fusion.fuse`).
    momentum
        FGP momentum in the TV step (``tv_momentum``): two more dual buffers.
    masked
        A HAADF mask (``haadf_valid``) is given: its 0/1 weights and the bool mask.
    per_element_tv
        One TV weight per element: one more one-image dual workspace (its size over the
        window's pixels: ``4`` or ``6`` floats).

    Returns
    -------
    float
        Bytes per pixel of the window.

    Examples
    --------
    >>> fusion_bytes_per_pixel(4)
    200.1875
    >>> fusion_bytes_per_pixel(4, momentum=True)
    232.1875
    """
    if n_elements < 1 or itemsize < 1:
        raise ValueError("n_elements and itemsize must be at least 1")
    e = n_elements
    duals = 6 if momentum else 4
    floats = (1 + e) + (1 + e) + e + e + 2 * e + 2 * e + duals * e  # inputs, b, x0, v, x, x_pow, duals
    if per_element_tv:
        floats += duals
    extra = 0.0
    if masked:
        floats += 1
        extra += 1.0  # the bool mask
    partial = (3 + 3) * 8 / BLOCK_PIXELS
    return floats * itemsize + extra + partial


def fusion_bytes_per_iteration(n_elements: int, n_iter_tv: int, *, itemsize: int = 4, momentum: bool = False,
                               masked: bool = False) -> int:
    """Bytes the CUDA kernels read and write per pixel in one outer iteration (no backtracking).

    Parameters
    ----------
    n_elements
        Elemental maps (``E``).
    n_iter_tv
        Dual iterations of each TV step (``n``).
    itemsize
        Bytes of the working dtype.
    momentum
        FGP momentum in the TV step (reads and writes the previous dual iterate too).
    masked
        A HAADF mask is given (its weights are read by the gradient and objective passes).

    Returns
    -------
    int
        Bytes per pixel; multiply by the pixels and the iterations for the traffic of a run.

    Examples
    --------
    >>> fusion_bytes_per_iteration(4, 5) // 4  # floats: 9 E + 5 E n + 2
    138
    """
    e, n = n_elements, n_iter_tv
    smooth = 4 * e + 1 + (1 if masked else 0)
    objective = 3 * e + 1 + (1 if masked else 0)
    if n <= 0:
        prox = 2 * e  # the projection only: b in, x out
    else:
        first = 5 * e if momentum else 3 * e  # no dual to read yet (FGP writes p too)
        later = 9 * e if momentum else 5 * e
        prox = first + (n - 1) * later + 4 * e
    return (smooth + prox + objective) * itemsize


def largest_tile(free_bytes: float, n_elements: int, halo: int, safety: float | None = None, *, multiple: int = 64,
                 **model: bool | int) -> int:
    """The largest tile side (a multiple of ``multiple``) whose window fits in ``safety * free_bytes``.

    The window is the tile with ``halo`` pixels on each side, ``(tile + 2 halo)^2`` pixels of
    :func:`fusion_bytes_per_pixel` bytes each.

    Parameters
    ----------
    free_bytes
        Free device memory, bytes (``cupy.cuda.Device().mem_info[0]``).
    n_elements
        Elemental maps fused together.
    halo
        Pixels of context on each side of a tile (:mod:`emfuse.pipeline.tiles`).
    safety
        Fraction of the free memory to plan for (default :data:`SAFETY`).
    multiple
        The tile side is a multiple of this.
    **model
        Further arguments of :func:`fusion_bytes_per_pixel` (``itemsize``, ``momentum``,
        ``masked``, ``per_element_tv``).

    Returns
    -------
    int
        The tile side in pixels; 0 when not even one ``multiple``-sized tile fits.

    Examples
    --------
    >>> largest_tile(80e9, 4, halo=64)
    17728
    >>> largest_tile(1e6, 4, halo=64)
    0
    """
    safety = SAFETY if safety is None else safety
    if not 0 < safety <= 1:
        raise ValueError("safety must be in (0, 1]")
    per_pixel = fusion_bytes_per_pixel(n_elements, **model)
    budget = safety * free_bytes / per_pixel  # pixels of the window
    side = int(budget**0.5) - 2 * halo
    while side > 0 and (side + 2 * halo) ** 2 * per_pixel > safety * free_bytes:
        side -= 1  # guard against rounding of the square root
    return max(side // multiple * multiple, 0)


#: The tile side when the tile is not chosen from a GPU's memory (CPU workers, ``--device cpu``):
#: the long-standing default, so that CPU results do not change with ``--tile auto``.
DEFAULT_TILE = 512


class TileMemoryError(EmfuseError, ValueError):
    """Not even the smallest tile fits the GPU's free memory (the message names ``--device cpu``)."""


@dataclass(frozen=True)
class TileChoice:
    """A tile side chosen by :func:`choose_tile` and why (recorded in the output store).

    ``free_bytes`` is the smallest free memory of one task's share of a GPU (None: no GPU
    worker); ``rule`` says which rule gave ``tile`` in words.
    """

    tile: int
    rule: str
    free_bytes: float | None = None
    bytes_per_pixel: float | None = None
    safety: float | None = None

    def record(self) -> dict[str, Any]:
        """The choice as the store's ``tile_choice`` attribute (JSON types)."""
        return {"asked": "auto", **asdict(self)}


def choose_tile(free_bytes_per_worker: Sequence[float | None], image_shape: Sequence[int], n_elements: int,
                halo: int, *, default: int = DEFAULT_TILE, safety: float | None = None, multiple: int = 64,
                **model: bool | int) -> TileChoice:
    """The fusion tile for ``--tile auto``, from the free GPU memory of the workers that will fuse.

    Rules, in order:

    1. no GPU worker (every entry None, or none given): ``default``, as on the CPU before;
    2. the whole image fits in ``safety x min(free)``: one tile of ``max(image_shape)`` covers
       it (no needless tiling, no halo to recompute);
    3. else :func:`largest_tile` of ``min(free)`` (a multiple of ``multiple``), which every
       tile's window then fits by the same model as ``check_window_fits``;
    4. not even a ``multiple``-pixel tile fits: :class:`TileMemoryError` naming ``--device cpu``.

    Parameters
    ----------
    free_bytes_per_worker
        Free GPU memory available to one task of each worker, bytes (a GPU's free memory divided
        by the tasks that may share it); None for a worker that fuses on its CPU.
    image_shape
        (height, width) of the image to be tiled.
    n_elements, halo, safety, multiple, **model
        As for :func:`largest_tile` (``model``: ``momentum``, ``masked``, ...).
    default
        The tile without a GPU.

    Returns
    -------
    TileChoice

    Examples
    --------
    >>> choose_tile([None], (4096, 4096), 4, 32).tile
    512
    >>> choose_tile([80e9, 16e9], (4096, 4096), 4, 32).tile  # 4096^2 x 200 B fits 0.8 x 16 GB
    4096
    >>> choose_tile([1e9], (4096, 4096), 4, 32, masked=True).tile
    1856
    """
    gpus = [float(f) for f in free_bytes_per_worker if f is not None]
    if not gpus:
        return TileChoice(default, "no GPU worker: the CPU default")
    free = min(gpus)
    safety = SAFETY if safety is None else safety
    per_pixel = fusion_bytes_per_pixel(n_elements, **model)
    ny, nx = (int(s) for s in image_shape)
    known = dict(free_bytes=free, bytes_per_pixel=per_pixel, safety=safety)
    if ny * nx * per_pixel <= safety * free:  # a tile as large as the image has no halo beyond it
        return TileChoice(max(ny, nx), "the whole image fits: one tile", **known)
    tile = largest_tile(free, n_elements, halo, safety, multiple=multiple, **model)
    if tile == 0:
        need = (multiple + 2 * halo) ** 2 * per_pixel
        raise TileMemoryError(
            f"a GPU worker has {free / 1e9:.3g} GB free, less than the {need / 1e9:.3g} GB a {multiple} px tile "
            f"with a {halo} px halo of {n_elements} element(s) needs ({safety:.0%} planned for); free the GPU, "
            "or rerun with --device cpu.")
    return TileChoice(tile, "largest tile that fits: (tile + 2 halo)^2 x bytes_per_pixel <= safety x free",
                      **known)
