"""Fused CUDA kernels (numba.cuda) for the hot loops of the fusion solver.

The GPU twin of :mod:`.kernels_numba`: the same four passes, the same maths,
one kernel launch for what the plain CuPy code does in a dozen element-wise
operations with their temporaries. The solver is memory bound (a few flops
per byte), so what counts is how many times each (element, y, x) stack
crosses the device memory per iteration; see
:func:`emfuse.pipeline.fusion.memory.fusion_bytes_per_iteration`.

Design
------
One thread per pixel
    Every kernel runs on a 2D grid of ``(32, 8)``-thread blocks over the
    ``(y, x)`` plane: ``threadIdx.x`` runs along image rows, so a warp reads 32
    consecutive floats (coalesced). Each thread loops over the elements (a
    handful), so sums over elements (the HAADF model) stay in registers.
``smooth_step``
    Power ``x^(gamma-1)`` (or the one the objective pass stored), the model
    HAADF ``sum_e w_e x_e^gamma``, the residual (weighted by ``valid`` where
    HAADF pixels are left out), the gradient of both smooth terms and the step,
    in one pass: reads ``x``, ``x_pow``, ``b_maps``, ``b_haadf``, writes ``v``.
``tv_dual_step`` (one dual iteration of ``prox_tv``)
    The primal point ``P(b + lam div r)`` is recomputed on the fly at the pixel
    and its right and lower neighbours from the dual ``r`` (never stored), then
    ``q = proj(r + step grad x)`` and, with FGP momentum, the extrapolation
    ``p <- q + mom (q - p)`` in place (no other thread reads ``p``). ``r`` is read
    across pixels, so ``q`` goes to another buffer; buffers rotate on the host.
``objective_terms`` and ``step_sums``
    Each thread computes its pixel's terms in the working type, converts them
    to float64 and the block reduces them in shared memory (a tree over the 256
    threads); one float64 partial sum per block goes to global memory and the
    host (CuPy) sums the partials. The objective pass also stores
    ``x^(gamma-1)`` for the next gradient step, which then computes no power.

Types: the arrays and scalars are float32 (the solver's working type; the
host passes ``np.float32`` scalars and the kernels write float32 constants so
nothing is promoted to float64), sums are float64. ``powf``/``logf``/``sqrtf``
are the CUDA ones, within an ulp or two of numpy's, so results agree with the
CPU kernels to float32 rounding (tests: 1e-5 of the value range).

Arrays: anything with ``__cuda_array_interface__`` (CuPy arrays; numba.cuda
launches on them without a copy, on CuPy's current stream, so kernels and CuPy
operations stay in order), or numpy arrays under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
set before numba.cuda is imported), which is how the tests check these
kernels without a GPU. All arrays are C-contiguous (element, y, x) stacks of
one dtype. Kernels are compiled at first launch for the argument types, which
needs NVVM from a CUDA toolkit: a system one (``CUDA_HOME``), a conda one, or
the ``nvidia-cuda-nvcc-cu12`` wheel of the ``gpu`` extra (found by
:func:`available`). Without NVVM or a device, ``fuse`` uses the plain CuPy code.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numba import config, cuda, float32, float64

from ..backend import get_xp
from .tv import fgp_momenta

#: True under the CUDA simulator: smaller blocks (every simulated thread is a Python thread).
SIMULATOR = bool(config.ENABLE_CUDASIM)
#: Threads per block (x along image rows, y across rows); a power of two for the tree reductions.
BLOCK = (4, 4) if SIMULATOR else (32, 8)
THREADS = BLOCK[0] * BLOCK[1]


def _use_pip_nvvm() -> None:
    """Point numba at the NVVM of the ``nvidia-cuda-nvcc-cu12`` wheel (the gpu extra) when no
    CUDA toolkit is set up (``CUDA_HOME`` unset, none in the conda env or the system paths)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    home = Path(next(iter(spec.submodule_search_locations)))
    if (home / "nvvm" / "libdevice").is_dir() and not Path("/usr/local/cuda/nvvm/libdevice").is_dir():
        os.environ["CUDA_HOME"] = str(home)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when these kernels can run: a CUDA device and NVVM (to compile them), or the simulator.

    Returns
    -------
    bool
        Whether :func:`smooth_step` and the others can be launched here.
    """
    if SIMULATOR:
        return True
    try:
        if not cuda.is_available():
            return False
        _use_pip_nvvm()
        from numba.cuda.cudadrv import nvvm

        return bool(nvvm.is_available())
    except Exception:  # a broken driver or toolkit installation
        return False


def _stream(a: Any) -> Any:
    """The stream to launch on: CuPy's current stream for CuPy arrays (so kernels and CuPy
    operations stay in order on any stream), the default stream otherwise (the simulator)."""
    if SIMULATOR or not type(a).__module__.startswith("cupy"):
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    return 0 if ptr == 0 else cuda.external_stream(ptr)


def _launch(kernel: Any, like: Any, *args: Any) -> None:
    """Launch ``kernel`` over the (y, x) plane of the stack ``like`` on :func:`_stream`.

    CuPy arrays are passed as numba views made without the stream synchronisation the CUDA
    array interface asks for by default (``sync=False``): they come from CuPy work on the same
    stream, which runs in order, and a synchronisation per array argument would stall the host
    before every launch.
    """
    blocks, threads = _grid(like.shape[1], like.shape[2])
    stream = _stream(like)
    if not SIMULATOR:
        args = tuple(cuda.as_cuda_array(a, sync=False) if type(a).__module__.startswith("cupy") else a
                     for a in args)
    kernel[blocks, threads, stream](*args)


def _grid(ny: int, nx: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(blocks, threads)`` of a launch covering a ``(ny, nx)`` plane."""
    return ((nx + BLOCK[0] - 1) // BLOCK[0], (ny + BLOCK[1] - 1) // BLOCK[1]), BLOCK


def _n_blocks(ny: int, nx: int) -> int:
    blocks, _ = _grid(ny, nx)
    return blocks[0] * blocks[1]


# --------------------------------------------------------------------------- kernels


@cuda.jit(device=True)
def _power(x, exponent):  # pragma: no cover - runs on the device
    """``x ** exponent`` for ``x >= 0`` with numpy's ``0 ** 0 = 1``."""
    if x > 0:
        return math.pow(x, exponent)
    return float32(1.0) if exponent == 0 else float32(0.0)


@cuda.jit
def _smooth_step_kernel(x, b_haadf, b_maps, w, gm1, lam_h_gamma, lam_chem, bkg, step, x_pow, have_pow,
                        valid, use_valid, v):  # pragma: no cover - runs on the device
    # v = x - step (lam_H gamma w x^(gamma-1) valid (sum_e w_e x_e^gamma - b_H) + lam_chem (1 - b / (x + bkg)))
    j, i = cuda.grid(2)
    n_el, ny, nx = x.shape
    if i >= ny or j >= nx:
        return
    residual = float32(0.0)
    for e in range(n_el):
        xe = x[e, i, j]
        pe = x_pow[e, i, j] if have_pow else _power(xe, gm1)
        residual += w[e] * xe * pe
    residual -= b_haadf[i, j]
    if use_valid:
        residual *= valid[i, j]
    one = float32(1.0)
    for e in range(n_el):  # x and x_pow again: a second read of the same lines, from cache
        xe = x[e, i, j]
        pe = x_pow[e, i, j] if have_pow else _power(xe, gm1)
        grad = (lam_h_gamma * w[e]) * pe * residual + lam_chem * (one - b_maps[e, i, j] / (xe + bkg))
        v[e, i, j] = xe - step * grad


@cuda.jit(device=True)
def _primal(b, ry, rx, lam, e, i, j, nonneg, use_dual):  # pragma: no cover - runs on the device
    """``P(b + lam div r)`` at pixel ``(e, i, j)``; ``div r = ((r_y - r_y[i-1]) + r_x) - r_x[j-1]``."""
    value = b[e, i, j]
    if use_dual:
        div = ry[e, i, j]
        if i > 0:
            div = div - ry[e, i - 1, j]
        div = div + rx[e, i, j]
        if j > 0:
            div = div - rx[e, i, j - 1]
        value = value + lam * div
    if nonneg and value < 0:
        return float32(0.0)
    return value


@cuda.jit
def _tv_dual_kernel(b, ry, rx, qy, qx, py, px, lam, step, mom, nonneg, use_dual,
                    momentum):  # pragma: no cover - runs on the device
    # One gradient-projection step on the dual of the TV prox, every element:
    # q = proj(r + step grad P(b + lam div r)); with momentum p <- q + mom (q - p).
    j, i = cuda.grid(2)
    n_el, ny, nx = b.shape
    if i >= ny or j >= nx:
        return
    one = float32(1.0)
    zero = float32(0.0)
    for e in range(n_el):
        here = _primal(b, ry, rx, lam, e, i, j, nonneg, use_dual)
        gy = zero
        gx = zero
        if i < ny - 1:  # Neumann: no difference across the last row / column
            gy = step * (_primal(b, ry, rx, lam, e, i + 1, j, nonneg, use_dual) - here)
        if j < nx - 1:
            gx = step * (_primal(b, ry, rx, lam, e, i, j + 1, nonneg, use_dual) - here)
        if use_dual:
            gy += ry[e, i, j]
            gx += rx[e, i, j]
        norm = math.sqrt(gy * gy + gx * gx)
        scale = norm if norm > one else one  # project on the unit ball (isotropic TV)
        new_y = gy / scale
        new_x = gx / scale
        qy[e, i, j] = new_y
        qx[e, i, j] = new_x
        if momentum:
            old_y = py[e, i, j] if use_dual else zero
            old_x = px[e, i, j] if use_dual else zero
            py[e, i, j] = new_y + mom * (new_y - old_y)
            px[e, i, j] = new_x + mom * (new_x - old_x)


@cuda.jit
def _tv_primal_kernel(b, py, px, lam, nonneg, use_dual, out):  # pragma: no cover - runs on the device
    j, i = cuda.grid(2)
    n_el, ny, nx = b.shape
    if i >= ny or j >= nx:
        return
    for e in range(n_el):
        out[e, i, j] = _primal(b, py, px, lam, e, i, j, nonneg, use_dual)


@cuda.jit(device=True)
def _block_sum(shared, tid):  # pragma: no cover - runs on the device
    """Tree sums of the rows of ``shared`` (k, THREADS) into ``shared[:, 0]``; every thread calls it."""
    half = THREADS // 2
    while half > 0:
        cuda.syncthreads()
        if tid < half:
            for row in range(shared.shape[0]):
                shared[row, tid] += shared[row, tid + half]
        half //= 2
    cuda.syncthreads()


@cuda.jit
def _objective_kernel(x, b_haadf, b_maps, w, gm1, bkg, x_pow, keep_pow, valid, use_valid,
                      partial):  # pragma: no cover - runs on the device
    # psi_1 | psi_2 | TV of the pixel, block sums in float64 into partial[block, 0..2].
    # x^gamma = x x^(gamma-1); with keep_pow, x^(gamma-1) is stored for the next gradient step.
    j, i = cuda.grid(2)
    n_el, ny, nx = x.shape
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    sums = cuda.shared.array((3, THREADS), float64)  # psi_1 | psi_2 | TV of each thread's pixel
    chem = float64(0.0)
    tv = float64(0.0)
    haadf = float64(0.0)
    if i < ny and j < nx:
        model = float32(0.0)
        zero = float32(0.0)
        for e in range(n_el):
            xe = x[e, i, j]
            pe = _power(xe, gm1)
            if keep_pow:
                x_pow[e, i, j] = pe
            model += w[e] * (xe * pe)
            chem += float64(xe - b_maps[e, i, j] * math.log(xe + bkg))
            gy = x[e, i + 1, j] - xe if i < ny - 1 else zero
            gx = x[e, i, j + 1] - xe if j < nx - 1 else zero
            tv += float64(math.sqrt(gy * gy + gx * gx))
        residual = model - b_haadf[i, j]
        if use_valid:
            residual *= valid[i, j]
        haadf = float64(residual) * float64(residual)
    sums[0, tid] = haadf
    sums[1, tid] = chem
    sums[2, tid] = tv
    _block_sum(sums, tid)
    if tid == 0:
        block = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
        partial[block, 0] = 0.5 * sums[0, 0]
        partial[block, 1] = sums[1, 0]
        partial[block, 2] = sums[2, 0]


@cuda.jit
def _step_kernel(x, v, new, partial):  # pragma: no cover - runs on the device
    # sum (new - x)^2 | sum (x - v)(new - x) | sum x^2 over the block's pixels and every element, float64.
    j, i = cuda.grid(2)
    n_el, ny, nx = x.shape
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    sums = cuda.shared.array((3, THREADS), float64)
    dd = float64(0.0)
    gd = float64(0.0)
    xx = float64(0.0)
    if i < ny and j < nx:
        for e in range(n_el):
            o = float64(x[e, i, j])
            d = float64(new[e, i, j]) - o
            dd += d * d
            gd += (o - float64(v[e, i, j])) * d
            xx += o * o
    sums[0, tid] = dd
    sums[1, tid] = gd
    sums[2, tid] = xx
    _block_sum(sums, tid)
    if tid == 0:
        block = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
        partial[block, 0] = sums[0, 0]
        partial[block, 1] = sums[1, 0]
        partial[block, 2] = sums[2, 0]


# --------------------------------------------------------------------------- wrappers


def _stack(a: Any) -> Any:
    """A C-contiguous (element, y, x) view or copy of ``a`` (2D images become one-image stacks)."""
    a = get_xp(a).ascontiguousarray(a)
    return a[None] if a.ndim == 2 else a


def _valid_args(valid: Any, b_haadf: Any) -> tuple[Any, bool]:
    """``(valid, use_valid)``: the 0/1 HAADF weights in the working dtype, or a never-read stand-in."""
    if valid is None:
        return b_haadf, False
    return get_xp(valid).ascontiguousarray(valid, dtype=b_haadf.dtype), True


def _weights(weights: Any, like: Any) -> Any:
    """The per-element HAADF weights as a 1D array of ``like``'s namespace and dtype."""
    xp = get_xp(like)
    return xp.asarray(np.asarray(weights if not hasattr(weights, "get") else weights.get()).ravel(),
                      dtype=like.dtype)


def smooth_step(
    x: Any,
    b_haadf: Any,
    b_maps: Any,
    weights: Sequence[float] | Any,
    *,
    gamma: float,
    lam_h: float,
    lambda_chem: float,
    bkg: float,
    step: float,
    x_pow: Any = None,
    out: Any = None,
    valid: Any = None,
) -> Any:
    """``x - step * grad(lam_H psi_1 + lam_chem psi_2)(x)`` in one kernel.

    CUDA twin of :func:`emfuse.pipeline.fusion.kernels_numba.smooth_step`.

    Parameters
    ----------
    x
        The iterate (element, y, x), CuPy (or numpy under the simulator), float32.
    b_haadf, b_maps
        The normalised HAADF (y, x) and maps (element, y, x), same type.
    weights
        One HAADF weight per element (a device array of ``x``'s dtype avoids a copy per call).
    gamma, lam_h, lambda_chem, bkg, step
        The model's exponent, the weights of the two smooth terms, the Poisson background
        and the gradient step.
    x_pow
        ``x ** (gamma - 1)`` when already known (from :func:`objective_terms`).
    out
        Where the result goes (same shape and dtype, not ``x``); allocated when None.
    valid
        (y, x) 0/1 weights of the HAADF residual; None: every pixel.

    Returns
    -------
    array
        ``out``: the point after the gradient step.
    """
    x = _stack(x)
    t = x.dtype.type
    xp = get_xp(x)
    out = xp.empty_like(x) if out is None else out
    w = weights if getattr(weights, "ndim", 0) == 1 and weights.dtype == x.dtype else _weights(weights, x)
    b_haadf = xp.ascontiguousarray(b_haadf, dtype=x.dtype)
    valid_arr, use_valid = _valid_args(valid, b_haadf)
    _launch(
        _smooth_step_kernel, x, x, b_haadf, _stack(b_maps), w, t(gamma - 1), t(lam_h * gamma), t(lambda_chem), t(bkg), t(step),
        x if x_pow is None else _stack(x_pow), x_pow is not None, valid_arr, use_valid, out,
    )
    return out


class TVWorkspace:
    """Dual buffers for :func:`prox_tv` on the device, allocated once and reused.

    Parameters
    ----------
    like
        An array of the stack's shape, dtype and namespace (CuPy, or numpy under the simulator).
    momentum
        Whether FGP momentum is used (two more buffers: the previous iterate).
    """

    def __init__(self, like: Any, momentum: bool) -> None:
        xp = get_xp(like)
        self.shape, self.dtype, self.momentum = tuple(like.shape), like.dtype, momentum
        self.buffers = [xp.empty(like.shape, like.dtype) for _ in range(6 if momentum else 4)]

    def fits(self, like: Any, momentum: bool) -> bool:
        """True when the buffers serve a stack like ``like`` (same shape and dtype)."""
        return self.shape == tuple(like.shape) and self.dtype == like.dtype and (self.momentum or not momentum)


def prox_tv(
    b: Any,
    lambda_tv: float,
    n_iter: int,
    *,
    nonnegative: bool = True,
    momentum: bool = True,
    out: Any = None,
    work: TVWorkspace | None = None,
) -> Any:
    """CUDA version of :func:`emfuse.pipeline.fusion.tv.prox_tv`: one kernel per dual iteration.

    Parameters
    ----------
    b
        The stack (element, y, x) or one (y, x) image, float32, on the device.
    lambda_tv
        TV weight; ``<= 0`` returns ``b`` projected on the constraint.
    n_iter
        Dual iterations (from a zero dual).
    nonnegative
        Project the primal on ``x >= 0``.
    momentum
        FGP (Nesterov momentum on the dual) or plain gradient projection.
    out
        Where the result goes (C-contiguous, ``b``'s dtype, not ``b``); allocated when None.
    work
        A :class:`TVWorkspace` to reuse across calls.

    Returns
    -------
    array
        The primal point of the last dual iterate, shaped like ``b``.
    """
    two_d = b.ndim == 2
    b = _stack(b)
    xp = get_xp(b)
    if out is None:
        out = xp.empty_like(b[0] if two_d else b)
    target = out.reshape(b.shape)
    t = b.dtype.type
    if lambda_tv <= 0 or n_iter <= 0:
        _launch(_tv_primal_kernel, b, b, b, b, t(0), nonnegative, False, target)
        return out
    if work is None or not work.fits(b, momentum):
        work = TVWorkspace(b, momentum)
    buf = work.buffers
    lam, step = t(lambda_tv), t(1.0 / (8.0 * lambda_tv))
    # r: the point the step is taken from; p: the previous iterate (momentum only); q: the new
    # iterate. Buffers rotate so nothing is copied (the same rotation as kernels_numba.prox_tv).
    (ry, rx), (qy, qx) = (buf[0], buf[1]), (buf[2], buf[3])
    py, px = (buf[4], buf[5]) if momentum else (ry, rx)
    for k, mom in enumerate(fgp_momenta(n_iter, momentum)):
        if not momentum:  # p is not used: pass r, never the buffer q is written to
            py, px = ry, rx
        _launch(_tv_dual_kernel, b, b, ry, rx, qy, qx, py, px, lam, step, t(mom), nonnegative, k > 0, momentum)
        if momentum:
            ry, rx, py, px, qy, qx = py, px, qy, qx, ry, rx
        else:
            ry, rx, qy, qx = qy, qx, ry, rx
    last_y, last_x = (py, px) if momentum else (ry, rx)
    _launch(_tv_primal_kernel, b, b, last_y, last_x, lam, nonnegative, True, target)
    return out


def objective_terms(
    x: Any,
    b_haadf: Any,
    b_maps: Any,
    weights: Sequence[float] | Any,
    gamma: float,
    bkg: float,
    *,
    pow_out: Any = None,
    valid: Any = None,
    partial: Any = None,
) -> tuple[float, float, float]:
    """``(psi_1, psi_2, TV)`` at ``x``: per-pixel terms, float64 block sums on the device.

    Parameters
    ----------
    x
        The candidate (element, y, x), float32, on the device.
    b_haadf, b_maps
        The normalised HAADF (y, x) and maps (element, y, x).
    weights
        One HAADF weight per element.
    gamma, bkg
        The model's exponent and the Poisson background.
    pow_out
        Receives ``x ** (gamma - 1)`` (shaped like ``x``) for the next :func:`smooth_step`.
    valid
        (y, x) 0/1 weights of the HAADF residual; None: every pixel.
    partial
        A float64 (blocks, 3) buffer for the block sums (allocated when None).

    Returns
    -------
    tuple of float
        ``psi_1``, ``psi_2`` and ``TV`` (unweighted), summed in float64.
    """
    x = _stack(x)
    xp = get_xp(x)
    t = x.dtype.type
    if partial is None:
        partial = xp.empty((_n_blocks(x.shape[1], x.shape[2]), 3), xp.float64)
    w = weights if getattr(weights, "ndim", 0) == 1 and weights.dtype == x.dtype else _weights(weights, x)
    b_haadf = xp.ascontiguousarray(b_haadf, dtype=x.dtype)
    valid_arr, use_valid = _valid_args(valid, b_haadf)
    _launch(
        _objective_kernel, x, x, b_haadf, _stack(b_maps), w, t(gamma - 1), t(bkg), x if pow_out is None else _stack(pow_out),
        pow_out is not None, valid_arr, use_valid, partial,
    )
    sums = np.asarray(partial.sum(axis=0).tolist(), dtype=np.float64)  # three floats to the host
    return float(sums[0]), float(sums[1]), float(sums[2])


def step_sums(x: Any, v: Any, new: Any, *, partial: Any = None) -> tuple[float, float, float]:
    """``(||new - x||^2, <x - v, new - x>, ||x||^2)``: float64 block sums on the device, no temporaries.

    The CUDA twin of :func:`.kernels_numba.step_sums` (the backtracking test and the stopping rule).

    Parameters
    ----------
    x, v, new
        The iterate, its gradient step and the proximal point: stacks of the same shape and dtype on the device.
    partial
        A float64 (blocks, 3) buffer for the block sums (allocated when None).

    Returns
    -------
    tuple of float
        The three sums.
    """
    x, v, new = _stack(x), _stack(v), _stack(new)
    xp = get_xp(x)
    if partial is None:
        partial = xp.empty((_n_blocks(x.shape[1], x.shape[2]), 3), xp.float64)
    _launch(_step_kernel, x, x, v, new, partial)
    dd, gd, xx = partial.sum(axis=0).tolist()
    return float(dd), float(gd), float(xx)
