"""Fused CPU kernels (numba) for the hot loops of the fusion solver.

A plain numpy iteration of the solver spends most of its time allocating and
streaming temporaries: every ``a * b + c`` reads and writes whole
(element, y, x) stacks. The kernels here make one pass over memory for what
the plain code does in many:

``smooth_step``
    ``v = x - step * grad(lam_H psi_1 + lam_chem psi_2)`` in one pass
    (power, model HAADF, residual, gradient and step fused per row).
``prox_tv``
    the TV proximal step (gradient projection on the dual, optional FGP
    momentum). One kernel per dual iteration: the primal ``P(b + lam div r)``
    is recomputed on the fly from the dual (divergence fused with the
    projection), so it is never stored; the dual update, its projection on
    the unit ball and the momentum extrapolation happen in the same pass.
``objective_terms``
    ``psi_1``, ``psi_2`` and ``TV`` in one pass, accumulated in float64.
``step_sums``
    the sums the backtracking test and the stopping rule need, in one pass;
    ``prox_tv_step_sums`` takes them in the TV prox's last (primal) pass, which
    is what the solver calls.

Every kernel computes what its plain counterpart in :mod:`.model`,
:mod:`.tv` and :mod:`.solver` computes (the plain versions stay: they are the
CuPy path and the reference of ``tests/pipeline/test_fusion_kernels.py``), in the
working type of the arrays (float32 by default) and without fastmath, so
results agree to float32 rounding. Logarithms and powers use the
vectorisable float64 versions below (within 1 ulp of the correctly rounded
float32 result, like numpy's). Kernels are compiled on first use and cached
on disk (``cache=True``); work is spread over rows (``prange``) on
``numba.get_num_threads()`` threads.

Examples
--------
>>> import numpy as np
>>> from emfuse.pipeline.fusion import kernels_numba as kn
>>> rng = np.random.default_rng(0)
>>> noisy = (1 + 0.1 * rng.standard_normal((1, 32, 32))).astype(np.float32)
>>> smooth = kn.prox_tv(noisy, 0.1, 20)
>>> bool(smooth.std() < noisy.std())
True
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .tv import fgp_momenta

# Passive OpenMP waiting, see pipeline/fusion/__init__.py (which normally runs
# first; repeated here for code that imports this module some other way).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# error_model="numpy": float division by zero gives inf/nan as in numpy instead of
# a Python exception check in every division, which blocks SIMD vectorisation.
_PARALLEL = {"parallel": True, "fastmath": False, "cache": True, "error_model": "numpy"}

# Numba's "workqueue" threading layer (the fallback when neither TBB nor
# OpenMP is present) aborts the process if two Python threads launch parallel
# kernels at once, which Dask's threaded scheduler does with one tile per
# thread. Launches are serialised until the first one tells which layer
# is in use, and from then on only under workqueue.
_LAUNCH_LOCK = threading.Lock()
_serialise: bool | None = None

# Elements of work per thread below which a launch uses fewer threads: waking
# a thread and the barrier at the end cost tens of microseconds (much more
# when the cores are shared), about what 2^16 elements of a kernel take.
_WORK_PER_THREAD = 1 << 16


# Whether this process has read NUMBA_NUM_THREADS again before its first launch (_read_thread_count).
_thread_count_read = False


def _read_thread_count() -> None:
    """Read ``NUMBA_NUM_THREADS`` again, once per process, before the first launch starts the pool.

    Numba reads the variable when it is imported. A Dask nanny sets it in a worker's environment
    only after the worker process has imported its parent's main script (``spawn`` does), so a
    script that imports numba and starts a local cluster gave its workers numba's default (every
    core), a pool of that size, and 1 in the environment. The next kernel numba compiled (a
    fresh install: nothing cached yet) read the environment again and failed: "Cannot set
    NUMBA_NUM_THREADS to a different value once the threads have been launched". Read again here,
    the config follows the environment (later compilations find no change), and :func:`_launch`
    uses no more threads than it says (the worker's share of the cores,
    :func:`emfuse.cluster.profiles.numba_threads_per_worker`), whatever the pool's size.
    """
    global _thread_count_read
    if not _thread_count_read:
        with _LAUNCH_LOCK:
            if not _thread_count_read:
                numba.config.reload_config()  # a no-op where the variable has not changed
                _thread_count_read = True


def _launch(kernel: Any, *args: Any) -> Any:
    """Run ``kernel(*args)`` on at most one thread per ``_WORK_PER_THREAD`` elements of ``args[0]``."""
    global _serialise
    _read_thread_count()
    current = numba.get_num_threads()  # this Python thread's setting (a larger pool's size at first)
    threads = min(current, numba.config.NUMBA_NUM_THREADS)
    wanted = min(threads, max(1, -(-args[0].size // _WORK_PER_THREAD)))
    if wanted != current:
        numba.set_num_threads(wanted)  # thread-local: other Python threads are unaffected
    try:
        if _serialise is False:
            return kernel(*args)
        with _LAUNCH_LOCK:
            result = kernel(*args)
            if _serialise is None:
                _serialise = numba.threading_layer() == "workqueue"
            return result
    finally:
        if wanted != current:
            numba.set_num_threads(threads)  # the thread's share from now on


# --------------------------------------------------------------------------- scalar maths
# Vectorisable logarithm and power.
# libm's logf/powf are scalar calls (numba has no vector math library here),
# and they dominated the objective and gradient passes. These versions are
# plain arithmetic on the float64 bit pattern, so LLVM vectorises the loops
# that call them. Evaluated in float64 from float32 inputs, they return the
# float32 result to within 1 ulp of the correctly rounded one (max error
# measured over 1.2 M values from 1e-45 to 10: 1 ulp for pow, 0 for log),
# like numpy's own float32 functions.

_LN2 = 0.6931471805599453
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_ROUND_SHIFT = 6755399441055744.0  # 1.5 * 2^52: x + it rounds x to an integer in the low bits


@intrinsic
def _bits(typingctx, value):  # pragma: no cover
    """The bit pattern of a float64 as an int64 (a no-op for the CPU)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _from_bits(typingctx, bits):  # pragma: no cover
    """The float64 with the given int64 bit pattern."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(cache=True, error_model="numpy")
def _log64(y):  # pragma: no cover
    """Natural logarithm of a finite ``y > 0`` (float64 normal numbers, so any float32 > 0).

    ``y = 2^k m`` with ``m`` in [sqrt(1/2), sqrt(2)); ``log m = 2 atanh(s)``,
    ``s = (m - 1) / (m + 1)``, ``|s| <= 0.172``: the odd series to ``s^9``
    is accurate to 7e-10, enough for float32 results (6e-8).
    """
    bits = _bits(np.float64(y))
    k = (bits >> 52) - 1023
    m = _from_bits((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000)
    if m > _SQRT2:
        m *= 0.5
        k += 1
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    series = 1.0 + s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9))))
    return k * _LN2 + 2.0 * s * series


@njit(cache=True, error_model="numpy")
def _exp64(t):  # pragma: no cover
    """``e^t`` for float64 ``t`` (clamped to +-700): ``2^k e^r``, ``|r| <= ln(2)/2``, Taylor to ``r^8`` (3e-10).

    ``k`` is rounded by adding ``1.5 * 2^52`` (the sum's low bits are ``k``), and every constant
    divisor is a multiplication by its reciprocal: float64 divisions and conversions were most of
    the vectorised loop's time.
    """
    t = min(max(t, -700.0), 700.0)
    shifted = t * (1.0 / _LN2) + _ROUND_SHIFT
    k = _bits(shifted) - _bits(_ROUND_SHIFT)
    kf = shifted - _ROUND_SHIFT
    r = (t - kf * _LN2_HI) - kf * _LN2_LO
    taylor = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (
        1 / 720 + r * (1 / 5040 + r * (1 / 40320))))))))
    return taylor * _from_bits((k + 1023) << 52)


@njit(cache=True, error_model="numpy")
def _power(x, exponent):  # pragma: no cover
    """``x ** exponent`` (float64) for ``x >= 0``, with numpy's ``0 ** 0 = 1``.

    Computed for every ``x`` and then selected (``log 0`` is finite here): a
    branch around the computation kept LLVM from vectorising the loop.
    """
    value = _exp64(exponent * _log64(x))
    return value if (x > 0 or exponent == 0) else 0.0


# --------------------------------------------------------------------------- kernels

_LANES = 8  # _accumulate spells its 8 running sums out
_HELPER = {"cache": True, "error_model": "numpy"}

# Structure of every kernel: a ``prange`` over rows (or blocks of rows) whose
# body only allocates row buffers and calls a serial helper on row views. Loops
# written directly in a prange body that store into arrays allocated in that
# body were measured 10x slower (numba 0.68: not vectorised, calls not inlined).


@njit(**_HELPER)
def _accumulate(values, lanes, first):  # pragma: no cover
    """Add ``values`` into ``lanes[first:first + 8]``, element ``j`` into lane ``j % 8``.

    Eight independent running sums keep the adds pipelined without
    reordering any sum (fastmath stays off), and the result does not depend
    on the thread count.
    """
    n = values.shape[0]
    full = n - n % _LANES
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    for s in range(0, full, _LANES):
        a0 += values[s]
        a1 += values[s + 1]
        a2 += values[s + 2]
        a3 += values[s + 3]
        a4 += values[s + 4]
        a5 += values[s + 5]
        a6 += values[s + 6]
        a7 += values[s + 7]
    for j in range(full, n):
        lanes[first + j - full] += values[j]
    lanes[first] += a0
    lanes[first + 1] += a1
    lanes[first + 2] += a2
    lanes[first + 3] += a3
    lanes[first + 4] += a4
    lanes[first + 5] += a5
    lanes[first + 6] += a6
    lanes[first + 7] += a7


@njit(**_HELPER)
def _power_row(src, exponent, dst):  # pragma: no cover
    for j in range(dst.shape[0]):
        dst[j] = _power(src[j], exponent)


@njit(**_HELPER)
def _smooth_step_row(x, b_haadf, b_maps, w, gm1, lam_h_gamma, lam_chem, bkg, step, x_pow, have_pow, valid,
                     use_valid, v, i, row_pow, residual):  # pragma: no cover
    """Row ``i`` (all elements) of the gradient step; with ``use_valid`` the HAADF residual is
    weighted by ``valid`` (0 where the HAADF pixel is left out)."""
    n_el, nx = row_pow.shape
    one = np.float32(1.0)
    residual[:] = 0
    for e in range(n_el):
        xe, pe = x[e, i], row_pow[e]  # contiguous row views: these loops vectorise
        if have_pow:
            pe[:] = x_pow[e, i]
        else:
            _power_row(xe, gm1, pe)
        for j in range(nx):
            residual[j] += w[e] * xe[j] * pe[j]
    bh = b_haadf[i]
    for j in range(nx):
        residual[j] -= bh[j]
    if use_valid:
        vh = valid[i]
        for j in range(nx):
            residual[j] *= vh[j]
    for e in range(n_el):
        xe, pe, be, ve = x[e, i], row_pow[e], b_maps[e, i], v[e, i]
        scale, chem = lam_h_gamma * w[e], lam_chem[e]
        for j in range(nx):
            grad = scale * pe[j] * residual[j] + chem * (one - be[j] / (xe[j] + bkg))
            ve[j] = xe[j] - step * grad


@njit(**_PARALLEL)
def _smooth_step_kernel(x, b_haadf, b_maps, w, gm1, lam_h_gamma, lam_chem, bkg, step, x_pow, have_pow, valid,
                        use_valid, v):  # pragma: no cover
    # v = x - step * (lam_H gamma w x^(gamma-1) valid (sum_j w_j x_j^gamma - b_H) + lam_chem (1 - b / (x + bkg))).
    # lam_chem holds one weight per element (all equal for a scalar lambda_chem).
    # x^(gamma-1) comes from x_pow when the objective pass already computed it.
    n_el, ny, nx = x.shape
    for i in prange(ny):
        row_pow = np.empty((n_el, nx), dtype=x.dtype)
        residual = np.empty(nx, dtype=x.dtype)
        _smooth_step_row(x, b_haadf, b_maps, w, gm1, lam_h_gamma, lam_chem, bkg, step, x_pow, have_pow, valid,
                         use_valid, v, i, row_pow, residual)


@njit(**_HELPER)
def _primal_row(b, ry, rx, lam, e, i, nonneg, use_dual, dst):  # pragma: no cover
    """Row ``i`` of image ``e`` of ``P(b + lam * div r)`` into ``dst``, in one pass.

    ``div r = ((r_y - r_y[i-1]) + r_x) - r_x[j-1]`` (the plain code's order of
    operations); ``r`` is zero in its last row (y) and column (x), as every
    dual iterate is, so no masking is needed there.
    """
    nx = dst.shape[0]
    zero = np.float32(0.0)
    row_b = b[e, i]
    if not use_dual:  # zero dual: the primal point is the projected input
        for j in range(nx):
            dst[j] = max(row_b[j], zero) if nonneg else row_b[j]
        return
    row_y, row_x = ry[e, i], rx[e, i]
    up = ry[e, i - 1] if i > 0 else ry[e, i]  # not read when i == 0
    has_up = i > 0
    div = (row_y[0] - up[0] if has_up else row_y[0]) + row_x[0]
    value = row_b[0] + lam * div
    dst[0] = max(value, zero) if nonneg else value
    if has_up:
        for j in range(1, nx):
            value = row_b[j] + lam * (((row_y[j] - up[j]) + row_x[j]) - row_x[j - 1])
            dst[j] = max(value, zero) if nonneg else value
    else:
        for j in range(1, nx):
            value = row_b[j] + lam * ((row_y[j] + row_x[j]) - row_x[j - 1])
            dst[j] = max(value, zero) if nonneg else value


# Rows per task of the dual kernel: each task carries the primal row below into
# the next row, so a primal row is computed (1 + 1/ROWS) times instead of twice.
_ROWS_PER_TASK = 16


@njit(**_HELPER)
def _dual_row(here, below, step, r_y, r_x, use_dual, q_y, q_x):  # pragma: no cover
    """``q = proj(r + step * grad x)`` for one row, from primal rows ``here`` and ``below``.

    Pass ``below = here`` for the last row (no difference across it).
    """
    nx = here.shape[0]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for j in range(nx):
        gx = step * (here[j + 1] - here[j]) if j < nx - 1 else zero
        gy = step * (below[j] - here[j])
        if use_dual:
            gy += r_y[j]
            gx += r_x[j]
        # project on the unit ball (isotropic TV): one division, as in the plain code (:mod:`.tv`)
        inv = one / max(math.sqrt(gy * gy + gx * gx), one)
        q_y[j] = gy * inv
        q_x[j] = gx * inv


@njit(**_HELPER)
def _tv_dual_rows(b, ry, rx, qy, qx, py, px, lam, step, mom, nonneg, use_dual, momentum, e, first, last,
                  here, below):  # pragma: no cover
    """Dual rows ``first..last-1`` of image ``e``; see :func:`_tv_dual_kernel`."""
    ny, nx = b.shape[1], b.shape[2]
    _primal_row(b, ry, rx, lam, e, first, nonneg, use_dual, here)
    for i in range(first, last):
        if i < ny - 1:
            _primal_row(b, ry, rx, lam, e, i + 1, nonneg, use_dual, below)
            _dual_row(here, below, step, ry[e, i], rx[e, i], use_dual, qy[e, i], qx[e, i])
        else:  # Neumann: no difference across the last row
            _dual_row(here, here, step, ry[e, i], rx[e, i], use_dual, qy[e, i], qx[e, i])
        if momentum:
            new_y, new_x, old_y, old_x = qy[e, i], qx[e, i], py[e, i], px[e, i]
            for j in range(nx):
                old = old_y[j] if use_dual else np.float32(0.0)
                old_y[j] = new_y[j] + mom * (new_y[j] - old)
            for j in range(nx):
                old = old_x[j] if use_dual else np.float32(0.0)
                old_x[j] = new_x[j] + mom * (new_x[j] - old)
        here, below = below, here


@njit(**_PARALLEL)
def _tv_dual_kernel(b, ry, rx, qy, qx, py, px, lam, step, mom, nonneg, use_dual, momentum):  # pragma: no cover
    # One gradient-projection step on the dual of the TV prox, every image at once.
    # The primal P(b + lam div r) is recomputed row by row from r into row
    # buffers (never stored); q = proj(r + step * grad x). With momentum, p (the
    # previous iterate) is read and overwritten point by point with
    # q + mom (q - p): no other pixel reads p, so in place is safe; r itself is
    # read across rows, so q goes to a separate buffer.
    n_el, ny, nx = b.shape
    n_blocks = (ny + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for task in prange(n_el * n_blocks):
        e = task // n_blocks
        first = (task - e * n_blocks) * _ROWS_PER_TASK
        buffers = np.empty((2, nx), dtype=b.dtype)
        _tv_dual_rows(b, ry, rx, qy, qx, py, px, lam, step, mom, nonneg, use_dual, momentum, e, first,
                      min(first + _ROWS_PER_TASK, ny), buffers[0], buffers[1])


@njit(**_PARALLEL)
def _tv_primal_kernel(b, py, px, lam, nonneg, use_dual, out):  # pragma: no cover
    n_el, ny, nx = b.shape
    for k in prange(n_el * ny):
        e = k // ny
        i = k - e * ny
        _primal_row(b, py, px, lam, e, i, nonneg, use_dual, out[e, i])


@njit(**_PARALLEL)
def _tv_primal_step_kernel(b, py, px, lam, nonneg, use_dual, out, x, partial):  # pragma: no cover
    # _tv_primal_kernel over rows (every element of a row in one task), and the step sums from x
    # to the new point while the row is in cache: partial[i] for row i, as _step_kernel.
    for i in prange(b.shape[1]):
        for e in range(b.shape[0]):
            _primal_row(b, py, px, lam, e, i, nonneg, use_dual, out[e, i])
        _step_row_sums(x, b, out, i, partial)


@njit(**_HELPER)
def _chem_terms(x, b, bkg, dst):  # pragma: no cover
    """``x - b log(x + bkg)`` of one row (float64)."""
    for j in range(dst.shape[0]):
        dst[j] = x[j] - b[j] * _log64(x[j] + bkg)


@njit(**_HELPER)
def _tv_terms(x, below, has_below, dst):  # pragma: no cover
    """``sqrt(dy^2 + dx^2)`` of one row, forward differences, zero across the last row / column."""
    nx = dst.shape[0]
    zero = np.float32(0.0)
    for j in range(nx - 1):
        gx = x[j + 1] - x[j]
        gy = below[j] - x[j] if has_below else zero
        dst[j] = math.sqrt(gy * gy + gx * gx)
    dst[nx - 1] = abs(below[nx - 1] - x[nx - 1]) if has_below else 0.0


@njit(**_HELPER)
def _objective_row(x, b_haadf, b_maps, w, gm1, bkg, x_pow, keep_pow, valid, use_valid, i, model, row_pow, terms,
                   lanes):  # pragma: no cover
    """Lane sums of ``psi_1 | psi_2 | TV`` over row ``i`` into ``lanes`` (3 x _LANES); with
    ``use_valid`` the HAADF residual is weighted by ``valid``.

    Each pass is its own small loop over contiguous rows: loops that touch
    many arrays at once were not vectorised.
    """
    n_el, ny, nx = x.shape
    model[:] = 0
    lanes[:] = 0
    for e in range(n_el):
        xe = x[e, i]
        _power_row(xe, gm1, row_pow)
        if keep_pow:
            x_pow[e, i, :] = row_pow
        for j in range(nx):
            model[j] += w[e] * (xe[j] * row_pow[j])
        _chem_terms(xe, b_maps[e, i], bkg, terms)
        _accumulate(terms, lanes, _LANES)
        _tv_terms(xe, x[e, min(i + 1, ny - 1)], i < ny - 1, terms)
        _accumulate(terms, lanes, 2 * _LANES)
    bh = b_haadf[i]
    if use_valid:
        vh = valid[i]
        for j in range(nx):
            residual = np.float64((model[j] - bh[j]) * vh[j])
            terms[j] = residual * residual
    else:
        for j in range(nx):
            residual = np.float64(model[j] - bh[j])
            terms[j] = residual * residual
    _accumulate(terms, lanes, 0)


@njit(**_PARALLEL)
def _objective_kernel(x, b_haadf, b_maps, w, gm1, bkg, x_pow, keep_pow, valid, use_valid, partial):  # pragma: no cover
    # Per-row float64 partial sums (lane sums, so deterministic for any thread
    # count). x^gamma = x * x^(gamma-1); with keep_pow, x^(gamma-1) is stored for
    # the next gradient step, which then needs no power at all.
    n_el, ny, nx = x.shape
    for i in prange(ny):
        model = np.empty(nx, dtype=x.dtype)
        row_pow = np.empty(nx, dtype=x.dtype)
        terms = np.empty(nx, dtype=np.float64)
        lanes = np.empty(3 * _LANES, dtype=np.float64)  # psi_1 | psi_2 | TV
        _objective_row(x, b_haadf, b_maps, w, gm1, bkg, x_pow, keep_pow, valid, use_valid, i, model, row_pow, terms,
                       lanes)
        partial[i, 0] = 0.5 * lanes[:_LANES].sum()
        partial[i, 1] = lanes[_LANES:2 * _LANES].sum()
        partial[i, 2] = lanes[2 * _LANES:].sum()


@njit(**_HELPER)
def _step_terms(x, v, new, moved, along, size):  # pragma: no cover
    """``(new - x)^2 | (x - v)(new - x) | x^2`` of one row (float64)."""
    for j in range(x.shape[0]):
        o = np.float64(x[j])
        d = np.float64(new[j]) - o
        moved[j] = d * d
        along[j] = (o - np.float64(v[j])) * d
        size[j] = o * o


@njit(**_HELPER)
def _step_row(x, v, new, i, moved, along, size, lanes):  # pragma: no cover
    """Lane sums of the three step sums over row ``i`` into ``lanes`` (3 x _LANES): the terms
    first, then summed in lanes, so that the loops vectorise (one scalar sum per term did not:
    1.9 ms against 1.3 ms for 4 x 576 x 576 float32, near the time to read the three)."""
    lanes[:] = 0
    for e in range(x.shape[0]):
        _step_terms(x[e, i], v[e, i], new[e, i], moved, along, size)
        _accumulate(moved, lanes, 0)
        _accumulate(along, lanes, _LANES)
        _accumulate(size, lanes, 2 * _LANES)


@njit(**_HELPER)
def _step_row_sums(x, v, new, i, partial):  # pragma: no cover
    """The three step sums of row ``i`` into ``partial[i]`` (row buffers of its own)."""
    nx = x.shape[2]
    moved = np.empty(nx, dtype=np.float64)
    along = np.empty(nx, dtype=np.float64)
    size = np.empty(nx, dtype=np.float64)
    lanes = np.empty(3 * _LANES, dtype=np.float64)
    _step_row(x, v, new, i, moved, along, size, lanes)
    partial[i, 0] = lanes[:_LANES].sum()
    partial[i, 1] = lanes[_LANES:2 * _LANES].sum()
    partial[i, 2] = lanes[2 * _LANES:].sum()


@njit(**_PARALLEL)
def _step_kernel(x, v, new, partial):  # pragma: no cover
    for i in prange(x.shape[1]):
        _step_row_sums(x, v, new, i, partial)


# --------------------------------------------------------------------------- wrappers


def _valid_args(valid: np.ndarray | None, b_haadf: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(valid, use_valid)`` for a kernel: the HAADF's 0/1 weights in its dtype, or a stand-in
    of the same type (never read) and False, so one compiled kernel serves both."""
    if valid is None:
        return b_haadf, False
    return np.ascontiguousarray(valid, b_haadf.dtype), True


def _stack(a: np.ndarray) -> np.ndarray:
    """A C-contiguous (element, y, x) view or copy of ``a`` (2D images become one-image stacks)."""
    a = np.ascontiguousarray(a)
    return a[None] if a.ndim == 2 else a


def smooth_step(
    x: np.ndarray,
    b_haadf: np.ndarray,
    b_maps: np.ndarray,
    weights: Sequence[float] | np.ndarray,
    *,
    gamma: float,
    lam_h: float,
    lambda_chem: float | Sequence[float] | np.ndarray,
    bkg: float,
    step: float,
    x_pow: np.ndarray | None = None,
    out: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """``x - step * grad(lam_H psi_1 + lam_chem psi_2)(x)`` in one pass.

    Same as ``x - step * _smooth_gradient(...)`` of :mod:`.solver`, in the
    dtype of ``x``. ``x_pow``: ``x ** (gamma - 1)`` if already known (see
    :func:`objective_terms`). ``out`` (same shape and dtype, not ``x``) is
    reused if given. ``valid`` (y, x): 1 where the HAADF pixel is in ``psi_1``,
    0 where it is left out (saturated); None: every pixel. ``lambda_chem``: one
    number, or one per element.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((2, 4, 4), 0.5, np.float32)
    >>> v = smooth_step(x, np.ones((4, 4), np.float32), x, [1.0, 1.0], gamma=1.6,
    ...                 lam_h=0.5, lambda_chem=0.1, bkg=0.1, step=1.0)
    >>> v.shape, v.dtype
    ((2, 4, 4), dtype('float32'))
    """
    x = _stack(x)
    t = x.dtype.type
    out = np.empty_like(x) if out is None else out
    b_haadf = np.ascontiguousarray(b_haadf, x.dtype)
    lam_chem = np.ascontiguousarray(np.broadcast_to(np.asarray(lambda_chem, x.dtype).ravel(), x.shape[:1]))
    _launch(
        _smooth_step_kernel, x, b_haadf, _stack(b_maps).astype(x.dtype, copy=False),
        np.asarray(weights, x.dtype).ravel(), t(gamma - 1), t(lam_h * gamma), lam_chem, t(bkg), t(step),
        x if x_pow is None else _stack(x_pow), x_pow is not None, *_valid_args(valid, b_haadf), out,
    )
    return out


class TVWorkspace:
    """Dual buffers for :func:`prox_tv`, allocated once and reused across calls.

    The solver calls the prox once per iteration on same-sized stacks;
    fresh 100 MB buffers every call would cost page faults each time.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, momentum: bool) -> None:
        n = 6 if momentum else 4
        self.shape, self.dtype, self.momentum = tuple(shape), np.dtype(dtype), momentum
        self.buffers = [np.empty(shape, dtype) for _ in range(n)]

    def fits(self, shape: tuple[int, ...], dtype: Any, momentum: bool) -> bool:
        return self.shape == tuple(shape) and self.dtype == np.dtype(dtype) and (self.momentum or not momentum)


def prox_tv(
    b: np.ndarray,
    lambda_tv: float,
    n_iter: int,
    *,
    nonnegative: bool = True,
    momentum: bool = True,
    out: np.ndarray | None = None,
    work: TVWorkspace | None = None,
) -> np.ndarray:
    """Numba version of :func:`emfuse.pipeline.fusion.tv.prox_tv` for numpy stacks.

    ``argmin_{x >= 0} 1/2 ||x - b||^2 + lambda_tv TV_iso(x)`` by ``n_iter``
    dual gradient-projection steps from a zero dual, with FGP momentum if
    ``momentum``. ``b`` is (element, y, x) or one (y, x) image; the result
    has the shape and dtype of ``b``. ``out`` (not ``b``) and ``work``
    (a :class:`TVWorkspace`) avoid allocations in loops.

    Examples
    --------
    >>> import numpy as np
    >>> step_edge = np.zeros((1, 8, 8), np.float32); step_edge[:, :, 4:] = 1
    >>> x = prox_tv(step_edge, 0.05, 50)
    >>> bool(0 < x[0, 0, 0] < 0.1 and 0.9 < x[0, 0, 7] < 1)
    True
    """
    two_d = np.ndim(b) == 2
    b = _stack(b)
    if out is None:
        out = np.empty_like(b[0] if two_d else b)
    elif not out.flags.c_contiguous or out.dtype != b.dtype:
        raise ValueError("out must be a C-contiguous array of the dtype of b")
    target = out.reshape(b.shape)  # a view: a (1, y, x) one for a 2D image
    _launch(_tv_primal_kernel, *_tv_dual(b, lambda_tv, n_iter, nonnegative, momentum, work), target)
    return out


def prox_tv_step_sums(
    v: np.ndarray,
    lambda_tv: float,
    n_iter: int,
    x: np.ndarray,
    *,
    out: np.ndarray,
    nonnegative: bool = True,
    momentum: bool = True,
    work: TVWorkspace | None = None,
) -> tuple[float, float, float]:
    """:func:`prox_tv` of the gradient step ``v`` into ``out`` (a stack shaped like ``v``), and
    :func:`step_sums` ``(x, v, out)``, taken in the prox's last pass while each new row is in cache.

    The solver needs both for every step it tries. The sums equal :func:`step_sums`'s, added in
    the same order.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> x = rng.random((2, 8, 8), dtype=np.float32); v = x - 0.1; out = np.empty_like(x)
    >>> sums = prox_tv_step_sums(v, 0.05, 5, x, out=out)
    >>> bool(np.array_equal(out, prox_tv(v, 0.05, 5))), sums == step_sums(x, v, out)
    (True, True)
    """
    v, x = _stack(v), _stack(x)
    partial = np.empty((v.shape[1], 3), np.float64)
    _launch(_tv_primal_step_kernel, *_tv_dual(v, lambda_tv, n_iter, nonnegative, momentum, work), out, x, partial)
    moved, along, size = partial.sum(axis=0)
    return float(moved), float(along), float(size)


def _tv_dual(b: np.ndarray, lambda_tv: float, n_iter: int, nonnegative: bool, momentum: bool,
             work: TVWorkspace | None) -> tuple:
    """The dual iterations of the TV prox of ``b``; returns the primal kernels' first six arguments."""
    t = b.dtype.type
    if lambda_tv <= 0 or n_iter <= 0:
        return b, b, b, t(0), nonnegative, False
    if work is None or not work.fits(b.shape, b.dtype, momentum):
        work = TVWorkspace(b.shape, b.dtype, momentum)
    buf = work.buffers
    lam, step = t(lambda_tv), t(1.0 / (8.0 * lambda_tv))
    # r: the point the step is taken from; p: the previous iterate (momentum only);
    # q: where the new iterate goes. Buffers rotate so nothing is copied.
    (ry, rx), (qy, qx) = (buf[0], buf[1]), (buf[2], buf[3])
    py, px = (buf[4], buf[5]) if momentum else (ry, rx)
    for k, mom in enumerate(fgp_momenta(n_iter, momentum)):
        _launch(_tv_dual_kernel, b, ry, rx, qy, qx, py, px, lam, step, t(mom), nonnegative, k > 0, momentum)
        if momentum:  # p <- q (new iterate), r <- p's storage (now the extrapolation)
            ry, rx, py, px, qy, qx = py, px, qy, qx, ry, rx
        else:
            ry, rx, qy, qx = qy, qx, ry, rx
    last_y, last_x = (py, px) if momentum else (ry, rx)
    return b, last_y, last_x, lam, nonnegative, True


def objective_terms(
    x: np.ndarray,
    b_haadf: np.ndarray,
    b_maps: np.ndarray,
    weights: Sequence[float] | np.ndarray,
    gamma: float,
    bkg: float,
    *,
    pow_out: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """``(psi_1, psi_2, TV)`` at ``x`` in one pass; numba twin of :func:`.model.objective_terms`.

    Terms are evaluated in the dtype of ``x`` and summed in float64.
    ``pow_out`` (shaped like ``x``) receives ``x ** (gamma - 1)``, which the
    next :func:`smooth_step` from ``x`` can reuse. ``valid`` (y, x): 0/1
    weights of the HAADF residual, as in :func:`smooth_step`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((1, 3, 3), 1.0, np.float32)
    >>> objective_terms(x, np.zeros((3, 3), np.float32), x, [1.0], 1.6, 1.0)[0]
    4.5
    """
    x = _stack(x)
    t = x.dtype.type
    partial = np.empty((x.shape[1], 3), np.float64)
    b_haadf = np.ascontiguousarray(b_haadf, x.dtype)
    _launch(
        _objective_kernel, x, b_haadf, _stack(b_maps).astype(x.dtype, copy=False),
        np.asarray(weights, x.dtype).ravel(), t(gamma - 1), t(bkg),
        x if pow_out is None else _stack(pow_out), pow_out is not None, *_valid_args(valid, b_haadf), partial,
    )
    psi_1, psi_2, tv = partial.sum(axis=0)
    return float(psi_1), float(psi_2), float(tv)


def step_sums(x: np.ndarray, v: np.ndarray, new: np.ndarray) -> tuple[float, float, float]:
    """``(||new - x||^2, <x - v, new - x>, ||x||^2)`` in float64, without temporaries.

    For a gradient step ``v = x - t grad`` and its proximal point ``new``, the
    second sum is ``t <grad, new - x>``: with the first it gives the quadratic
    bound of the backtracking test, and the first and third the relative change.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((1, 2, 2), np.float32)
    >>> step_sums(x, x - 1, x + 2)
    (16.0, 8.0, 4.0)
    """
    x, v, new = _stack(x), _stack(v), _stack(new)
    partial = np.empty((x.shape[1], 3), np.float64)
    _launch(_step_kernel, x, v, new, partial)
    dd, gd, xx = partial.sum(axis=0)
    return float(dd), float(gd), float(xx)
