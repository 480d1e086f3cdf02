"""Isotropic total variation and its proximal operator (GP/FGP, Beck & Teboulle 2009).

All functions act on stacks ``(..., H, W)``: the TV of each image in the stack
is independent, so a whole set of elemental maps is regularised in one pass.

Discretisation: forward differences with Neumann (reflecting) boundary, i.e.
the difference across the last row and the last column is zero. With it the
gradient ``D`` and ``-div`` are exact adjoints, and ``||D||^2 <= 8`` gives
the FGP dual step ``1 / (8 lambda)``.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_xp


def gradient(x: Any) -> tuple[Any, Any]:
    """Forward differences along rows (``gy``) and columns (``gx``), zero at the far edge.

    Parameters
    ----------
    x : array_like
        An image (H, W) or a stack (..., H, W), numpy or cupy.

    Returns
    -------
    gy, gx : array
        The differences, each the shape of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> gy, gx = gradient(np.array([[0.0, 1.0], [2.0, 4.0]]))
    >>> gy.tolist(), gx.tolist()
    ([[2.0, 3.0], [0.0, 0.0]], [[1.0, 0.0], [2.0, 0.0]])
    """
    xp = get_xp(x)
    gy = xp.zeros_like(x)
    gx = xp.zeros_like(x)
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return gy, gx


def divergence(py: Any, px: Any) -> Any:
    """Discrete divergence, the negative adjoint of :func:`gradient`.

    Parameters
    ----------
    py, px : array_like
        The field's row and column components, (..., H, W); they must be zero in their last
        row and column respectively (as every field produced by :func:`gradient` and
        :func:`prox_tv` is).

    Returns
    -------
    array
        The divergence, the shape of ``py``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 1.0], [2.0, 4.0]])
    >>> divergence(*gradient(x)).tolist()
    [[3.0, 2.0], [0.0, -5.0]]
    """
    div = py.copy()
    div[..., 1:, :] -= py[..., :-1, :]
    div += px
    div[..., :, 1:] -= px[..., :, :-1]
    return div


def tv_iso(x: Any) -> Any:
    """Isotropic TV, ``sum sqrt(dy^2 + dx^2)``, of each image of a stack ``(..., H, W)``.

    Parameters
    ----------
    x : array_like
        An image (H, W) or a stack (..., H, W), numpy or cupy.

    Returns
    -------
    array
        The TV of each image, shape ``x.shape[:-2]`` (a scalar for one image).

    Examples
    --------
    >>> import numpy as np
    >>> float(tv_iso(np.array([[0.0, 1.0], [0.0, 1.0]])))
    2.0
    """
    xp = get_xp(x)
    gy, gx = gradient(x)
    return xp.sqrt(gy * gy + gx * gx).sum(axis=(-2, -1))


def fgp_momenta(n_iter: int, momentum: bool = True) -> list[float]:
    """The extrapolation weight of each dual iteration of FGP (Beck & Teboulle 2009):
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``, weight ``(t_k - 1) / t_{k+1}`` from ``t_0 = 1``;
    all 0 without ``momentum`` (plain gradient projection). One schedule for the plain, numba
    and CUDA engines.

    Examples
    --------
    >>> [round(m, 4) for m in fgp_momenta(4)]
    [0.0, 0.2818, 0.434, 0.5311]
    >>> fgp_momenta(2, momentum=False)
    [0.0, 0.0]
    """
    if not momentum:
        return [0.0] * n_iter
    weights, t = [], 1.0
    for _ in range(n_iter):
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        weights.append((t - 1.0) / t_next)
        t = t_next
    return weights


def prox_tv(
    b: Any,
    lambda_tv: float,
    n_iter: int,
    *,
    nonnegative: bool = True,
    momentum: bool = True,
) -> Any:
    """Solve ``argmin_{x >= 0} 1/2 ||x - b||^2 + lambda_tv TV_iso(x)`` approximately.

    Gradient projection on the dual (Beck & Teboulle 2009) from a zero dual,
    ``n_iter`` iterations, for every image of the stack ``b`` (..., H, W) at
    once; with ``momentum`` it is their fast variant FGP (Nesterov
    extrapolation of the dual), without it plain gradient projection (GP).
    The result is the primal point of the last dual iterate.

    This plain version works on numpy and cupy and is the reference for the
    fused numba kernel (:func:`emfuse.pipeline.fusion.kernels_numba.prox_tv`).

    Parameters
    ----------
    b
        Images to denoise, numpy or cupy, float.
    lambda_tv
        TV weight (same units as ``b``). ``0`` returns ``b`` projected onto
        the constraint.
    n_iter
        Number of dual iterations.
    nonnegative
        Project onto ``x >= 0`` (the constrained variant of FGP).
    momentum
        FGP (True, the default: the best denoiser for a given ``n_iter``) or
        GP (False). The fusion solver uses GP: with a few iterations from a
        zero dual the iteration count is part of the regularisation, and the
        published parameters were set with GP (see :mod:`.solver`).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noisy = np.ones((32, 32)) + 0.1 * rng.standard_normal((32, 32))
    >>> bool(tv_iso(prox_tv(noisy, 0.1, 20)) < tv_iso(noisy))
    True
    >>> bool(tv_iso(prox_tv(noisy, 0.1, 20, momentum=False)) < tv_iso(noisy))
    True
    """
    xp = get_xp(b)

    def project(x: Any) -> Any:
        return xp.maximum(x, 0) if nonnegative else x

    if lambda_tv <= 0 or n_iter <= 0:
        return project(b)
    step = 1.0 / (8.0 * lambda_tv)
    py = xp.zeros_like(b)
    px = xp.zeros_like(b)
    ry, rx = py, px  # the dual point the step is taken from (extrapolated with momentum)
    for extrapolation in fgp_momenta(n_iter, momentum):
        x = project(b + lambda_tv * divergence(ry, rx))
        gy, gx = gradient(x)
        qy = ry + step * gy
        qx = rx + step * gx
        # project the dual field onto the unit ball pointwise (isotropic TV)
        inv_norm = 1.0 / xp.maximum(1.0, xp.sqrt(qy * qy + qx * qx))
        qy *= inv_norm
        qx *= inv_norm
        if momentum:
            ry = qy + extrapolation * (qy - py)
            rx = qx + extrapolation * (qx - px)
        else:
            ry, rx = qy, qx
        py, px = qy, qx
    return project(b + lambda_tv * divergence(py, px))
