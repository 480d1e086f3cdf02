"""The fusion solver: proximal gradient on the smooth terms, a TV proximal step.

Why the TV step is gradient projection without momentum
--------------------------------------------------------
Each TV proximal step runs ``n_iter_tv`` dual iterations from a zero dual, so
it is solved only roughly, and how roughly is part of the regulariser: the
iterates settle at a fixed point that depends on the inner solver and its
iteration count, not at the minimiser of ``F``. With the published DyScO3
parameters the true minimiser (300 outer x 50 inner iterations) has a flat
Sc map (correlation 0.08 with the published result) at ``F`` 7215, while
the published code gives 7771. The published parameters were chosen with a
plain gradient-projection (GP) inner solver; FGP momentum solves each inner
problem further in the same number of iterations and so smooths more than
those parameters were meant to (DyScO3 O map: correlation 0.945 with the
published result with FGP, 0.958 with GP, both with a lower ``F`` than the
published code). GP therefore gives the published ``(lambda_tv, n_iter_tv)``
their published meaning; on synthetic data with ground truth it is as good
as or better than FGP at equal iteration counts. :func:`emfuse.pipeline.fusion.prox_tv`
keeps FGP as its default for stand-alone denoising.

Engines
-------
``fuse`` runs the same algorithm with three sets of kernels: fused numba kernels
(:mod:`.kernels_numba`, the default for numpy input), fused CUDA kernels
(:mod:`.kernels_cuda`, numba.cuda on CuPy arrays: the default for CuPy input
when numba.cuda sees the GPU) or plain array code on the namespace of the
inputs (``xp``: numpy or cupy; the reference in tests). ``engine="xp"`` (or
``solver.ENGINE = "xp"``) forces the plain code.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InputError, NotAvailableHere
from ..backend import get_xp, to_numpy
from .convergence import ConvergenceWarning, diagnose_convergence
from .model import (
    FusionInputError,
    Normalisation,
    check_haadf_valid,
    check_inputs,
    haadf_model,
    haadf_weights,
    objective_terms,
)
from .tv import prox_tv, tv_iso

COST_TERMS = ("haadf", "chem", "tv")

#: Default engine of :func:`fuse` when none is given: ``"auto"`` (numba for numpy
#: input when numba imports, cuda for cupy input when numba.cuda sees the GPU, else
#: plain), ``"numba"``, ``"cuda"`` or ``"xp"`` (plain array code).
ENGINE = "auto"
#: The engines :func:`fuse` knows.
ENGINES = ("auto", "numba", "cuda", "xp")


@dataclass(frozen=True)
class FusionParams:
    """Parameters of :func:`fuse` (defaults are the embedded defaults of emfuse).

    Attributes
    ----------
    gamma
        Exponent of the Z-contrast model, HAADF ~ sum_i w_i x_i^gamma (>= 1; 1.4-2 typical).
    lambda_chem
        Weight of the Poisson fidelity to the raw maps. Larger keeps the
        result closer to the measured counts. One number for every element,
        or one per element (a sequence in map order).
    lambda_tv
        Weight of the total-variation prior. Larger gives smoother maps. One
        number for every element, or one per element (a sequence in map order).
    n_iter
        Outer (proximal gradient) iterations.
    n_iter_tv
        FGP iterations of each TV proximal step.
    bkg
        Background added inside the logarithm of the Poisson term (normalised
        units); keeps the gradient finite where a map is zero.
    init_threshold
        Set the initial iterate to zero where the normalised map is below this
        (the second published tutorial uses 0.2); the Poisson term still uses
        the unthresholded maps.
    step
        Initial step of the gradient step (1.0 as published); halved when the
        smooth terms rise above their quadratic bound (backtracking, below).
    tol
        Stop early when the relative change of the iterate falls below
        ``tol`` (``None``: run all ``n_iter`` iterations).
    tv_momentum
        Solve each TV step by FGP (Nesterov momentum) instead of plain
        gradient projection. Off by default: the published parameters were
        set with GP (see the module docstring); turn it on to solve each TV
        step further in the same ``n_iter_tv``.
    haadf_weights
        The HAADF model's weight of each element (map order, normalised units,
        >= 0), e.g. fitted by :func:`emfuse.pipeline.fusion.haadf_fit.fit_haadf_model`;
        ``None`` (the default): ``Z_i / mean(Z)`` (:func:`.model.haadf_weights`).
    """

    gamma: float = 1.6
    lambda_chem: float | tuple[float, ...] = 0.05
    lambda_tv: float | tuple[float, ...] = 0.02
    n_iter: int = 50
    n_iter_tv: int = 10
    bkg: float = 0.1
    init_threshold: float = 0.0
    step: float = 1.0
    tol: float | None = None
    tv_momentum: bool = False
    haadf_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.haadf_weights is not None:
            weights = np.ravel(np.asarray(self.haadf_weights, dtype=np.float64))
            if weights.size < 1 or not bool(np.all(np.isfinite(weights)) and np.all(weights >= 0)
                                            and np.any(weights > 0)):
                raise FusionInputError(
                    f"invalid fusion parameter haadf_weights={self.haadf_weights!r}; give one finite "
                    "weight >= 0 per element, not all 0 (or None for Z_i / mean(Z))."
                )
            object.__setattr__(self, "haadf_weights", tuple(float(v) for v in weights))
        for name in ("lambda_chem", "lambda_tv"):  # one weight per element: kept as a tuple of floats
            if not np.isscalar(getattr(self, name)):
                object.__setattr__(self, name, tuple(float(v) for v in np.ravel(getattr(self, name))))
        chem = np.atleast_1d(np.asarray(self.lambda_chem, dtype=np.float64))
        tv = np.atleast_1d(np.asarray(self.lambda_tv, dtype=np.float64))
        checks = {
            "gamma": self.gamma >= 1,  # below 1 the gradient is infinite at x = 0
            "lambda_chem": chem.size >= 1 and bool(np.all(chem >= 0) and np.all(np.isfinite(chem))),
            "lambda_tv": tv.size >= 1 and bool(np.all(tv >= 0) and np.all(np.isfinite(tv))),
            "n_iter": self.n_iter >= 1,
            "n_iter_tv": self.n_iter_tv >= 0,
            "bkg": self.bkg > 0,
            "init_threshold": 0 <= self.init_threshold < 1,
            "step": self.step > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise FusionInputError(
                    f"invalid fusion parameter {name}={value!r}; see `emfuse fuse --help` "
                    "for the accepted range."
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FusionResult:
    """What :func:`fuse` returns.

    Attributes
    ----------
    fused
        Fused maps (element, y, x), normalised units; ``normalisation.maps_to_counts``
        puts them back into counts.
    haadf_model
        ``sum_i w_i fused_i^gamma`` (y, x), normalised HAADF units.
    costs
        (3, n_iterations) float64: psi_1, psi_2 and TV after every iteration
        (order :data:`COST_TERMS`), unweighted.
    objective
        (n_iterations,) the weighted objective F after every iteration.
    normalisation
        The min-max normalisation applied to the inputs.
    params
        The parameters used.
    lambda_choice
        :class:`~emfuse.pipeline.fusion.auto.LambdaChoice` when the weights were chosen
        automatically (:func:`emfuse.fuse` with ``"auto"``), else None.
    initial_objective
        The objective F at the starting iterate.
    step_history
        The gradient step used at each iteration.
    engine
        The kernels that ran: ``"numba"``, ``"cuda"`` or ``"xp"``.
    convergence
        Messages on cost curves that had not levelled off or oscillated (empty when none).
    """

    fused: Any
    haadf_model: Any
    costs: np.ndarray
    objective: np.ndarray
    normalisation: Normalisation
    params: FusionParams
    initial_objective: float = float("nan")
    step_history: list[float] = field(default_factory=list)
    engine: str = ""  # the kernels that ran: "numba", "cuda" or "xp"
    convergence: list[str] = field(default_factory=list)  # cost curves not levelled off / oscillating
    lambda_choice: Any = None  # the automatic choice (emfuse.fuse with "auto" weights), else None


def fuse(
    haadf: Any,
    maps: Any,
    z: Sequence[float],
    *,
    normalisation: Normalisation | None = None,
    callback: Callable[[int, float], None] | None = None,
    dtype: Any = np.float32,
    engine: str | None = None,
    warn: bool = True,
    haadf_valid: Any = None,
    **params: Any,
) -> FusionResult:
    """Fuse noisy elemental maps with a high-SNR HAADF (Schwartz et al. 2022).

    Solves ``argmin_{x >= 0} lam_H/2 ||b_H - sum_i w_i x_i^gamma||^2
    + lam_chem sum_i (1'x_i - b_i' log(x_i + bkg)) + lam_tv sum_i TV(x_i)``
    by proximal gradient: a gradient step on the first two terms, then the
    isotropic TV proximal step by ``n_iter_tv`` dual gradient-projection steps
    (no momentum; see the module docstring). ``w_i = Z_i / mean(Z)`` (or
    the ``haadf_weights`` given),
    the first sum runs over the valid HAADF pixels (``haadf_valid``),
    ``lam_H = 1 / n_elements``. If the smooth terms at the new point rise
    above their quadratic bound at the old one (``f(x+) > f(x) + <grad f,
    x+ - x> + ||x+ - x||^2 / (2 step)``, Beck & Teboulle's backtracking), the
    step is halved and the iteration redone. The TV term is not part of the
    test: its step is solved only roughly and can raise it at any step length,
    and halving for that made the result jump with ``lambda_tv`` (see
    ``docs/methods/fusion.md``); so ``F`` itself may rise a little at an
    iteration.

    Parameters
    ----------
    haadf
        (y, x) HAADF, any units; numpy or cupy.
    maps
        (element, y, x) raw elemental maps, counts >= 0; same namespace.
    z
        Atomic number of each element, in the order of ``maps``.
    normalisation
        The min-max normalisation to use; by default computed from these
        inputs. Pass the whole dataset's when fusing one tile of it.
    callback
        Called as ``callback(iteration, objective)`` after every iteration
        (progress bars, logging).
    dtype
        Floating type of the iterate (float32 halves memory traffic).
    engine
        ``"numba"`` (fused CPU kernels, numpy input only), ``"cuda"`` (fused
        CUDA kernels, cupy input; numpy input under the CUDA simulator),
        ``"xp"`` (plain numpy/cupy code) or ``"auto"``: numba for numpy input
        when numba is installed, cuda for cupy input when numba.cuda sees the
        GPU, else xp. ``None`` uses the module default :data:`ENGINE`.
    warn
        Emit a :class:`ConvergenceWarning` for each cost curve that has not
        levelled off or oscillates (the messages are kept in
        ``FusionResult.convergence`` either way).
    haadf_valid
        (y, x) bool, same namespace as ``haadf``: False where the HAADF pixel is
        left out of the HAADF term (saturated: see
        :func:`emfuse.pipeline.saturation.saturated_pixels`); there the maps follow the
        chemical term and TV only. The normalisation's HAADF range is then taken
        over the valid pixels. None (the default): every pixel is used.
    **params
        Fields of :class:`FusionParams` (``gamma``, ``lambda_chem``,
        ``lambda_tv``, ``n_iter``, ``n_iter_tv``, ``bkg``, ``init_threshold``,
        ``step``, ``tol``, ``tv_momentum``, ``haadf_weights``). ``lambda_chem`` and ``lambda_tv`` may each be one
        number per element (a sequence in map order): that element's chemical
        term and TV are weighted by its own number.

    Returns
    -------
    FusionResult

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.stack([np.tile([1.0, 0.0], (16, 8)), np.tile([0.0, 1.0], (16, 8))])
    >>> haadf = 2.0 * truth[0] + 1.0 * truth[1]
    >>> maps = rng.poisson(5 * truth + 0.5).astype(float)
    >>> result = fuse(haadf, maps, z=[40, 20], n_iter=20)
    >>> result.fused.shape, bool(result.objective[-1] < result.initial_objective)
    ((2, 16, 16), True)

    A HAADF clipped at 1.8 (saturated): the clipped pixels are left out of the HAADF
    term, and its normalisation spans the valid pixels only:

    >>> ramp = haadf + np.linspace(0.0, 0.5, 16)
    >>> clipped = np.minimum(ramp, 1.8)
    >>> masked = fuse(clipped, maps, z=[40, 20], n_iter=20, haadf_valid=clipped < 1.8)
    >>> norm = masked.normalisation
    >>> bool(norm.haadf_offset + norm.haadf_scale < 1.8)
    True
    """
    unknown = set(params) - {f.name for f in dataclasses.fields(FusionParams)}
    if unknown:
        raise TypeError(f"fuse() got unknown parameters {sorted(unknown)}")
    p = FusionParams(**params)
    check_inputs(haadf, maps, z)
    xp = get_xp(haadf, maps)
    tv_weights = _per_element(p.lambda_tv, len(z), "lambda_tv")
    chem_weights = _per_element(p.lambda_chem, len(z), "lambda_chem")
    valid = check_haadf_valid(haadf, haadf_valid)
    if valid is not None and bool(valid.all()):
        valid = None  # nothing left out: the unmasked kernels, bit for bit
    norm = normalisation or Normalisation.from_data(haadf, maps, haadf_valid=valid)
    b_haadf = norm.haadf(xp.asarray(haadf), dtype)
    b_maps = norm.maps(xp.asarray(maps), dtype)
    weights = haadf_weights(z) if p.haadf_weights is None else np.asarray(p.haadf_weights, np.float64)
    if weights.size != len(z):
        raise FusionInputError(
            f"haadf_weights has {weights.size} weights for {len(z)} maps; give one per element."
        )
    # 1 where the HAADF pixel is in psi_1, 0 where it is left out (weights the residual)
    h_weight = None if valid is None else valid.astype(dtype)
    ops = _make_ops(engine if engine is not None else ENGINE, xp, b_haadf, b_maps, weights, p, h_weight)
    lam_h = 1.0 / len(z)

    def parts(terms: tuple[float, float, float], x: Any) -> tuple[float, float]:
        """``(lam_H psi_1 + lam_chem psi_2, lam_tv TV)``: the smooth part of F and the TV part."""
        # one weight per element: the weighted sum needs each element's term
        chem = (p.lambda_chem * terms[1] if chem_weights is None
                else float(chem_weights @ _chem_per_element(x, b_maps, p.bkg)))
        tv = p.lambda_tv * terms[2] if tv_weights is None else float(tv_weights @ _tv_per_element(x))
        return lam_h * terms[0] + chem, tv

    x = b_maps.copy()
    if p.init_threshold > 0:
        x[x < p.init_threshold] = 0
    smooth_old, tv_old = parts(ops.terms(x), x)
    result = FusionResult(
        fused=x, haadf_model=None, costs=np.empty((3, 0)), objective=np.empty(0),
        normalisation=norm, params=p, initial_objective=smooth_old + tv_old, engine=ops.name,
    )
    costs: list[tuple[float, float, float]] = []
    objectives: list[float] = []
    step = p.step
    for iteration in range(p.n_iter):
        descend = ops.descent(x)
        for _ in range(8):  # backtracking: at most 8 halvings, then accept
            v = descend(step)
            x_new, (moved, along, size) = ops.prox_step(v, step * (p.lambda_tv if tv_weights is None else tv_weights),
                                                        x)
            terms = ops.terms(x_new)
            smooth_new, tv_new = parts(terms, x_new)
            # the smooth part's quadratic bound at x (Beck & Teboulle 2009): the TV part is left out of
            # the test, because the TV step is solved only roughly and may raise it at any step length
            bound = smooth_old + (along + 0.5 * moved) / step
            if smooth_new <= bound + 1e-7 * abs(smooth_old):
                break
            step *= 0.5
        result.step_history.append(step)
        change = math.sqrt(moved) / max(math.sqrt(size), 1e-30)
        x, smooth_old = x_new, smooth_new
        costs.append(terms)
        objectives.append(smooth_new + tv_new)
        if callback is not None:
            callback(iteration, objectives[-1])
        if p.tol is not None and change < p.tol:
            break
    result.fused = x
    model = getattr(ops, "model", None)  # the cuda engine's: no temporaries the size of the stack
    result.haadf_model = model(x) if model is not None else haadf_model(x, weights, p.gamma)
    result.costs = np.asarray(costs, dtype=np.float64).T
    if tv_weights is None and chem_weights is None:
        result.objective = lam_h * result.costs[0] + p.lambda_chem * result.costs[1] + p.lambda_tv * result.costs[2]
    else:
        result.objective = np.asarray(objectives, dtype=np.float64)
    result.convergence = diagnose_convergence(result.costs, COST_TERMS)
    if warn:
        for message in result.convergence:
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return result


def _per_element(value: float | tuple[float, ...], n_elements: int, name: str) -> np.ndarray | None:
    """A weight given per element as an array, or None for one weight for all elements."""
    if np.isscalar(value):
        return None
    weights = np.asarray(value, dtype=np.float64)
    if weights.size != n_elements:
        raise FusionInputError(
            f"{name} has {weights.size} weights for {n_elements} maps; give one number, or one per element."
        )
    return weights


def _chem_per_element(x: Any, b_maps: Any, bkg: float) -> np.ndarray:
    """``psi_2`` of each element's map, ``sum(x - b log(x + bkg))`` (float64 sums)."""
    xp = get_xp(x)
    terms = x - b_maps * xp.log(x + bkg)
    return np.asarray(to_numpy(xp.sum(terms.reshape(terms.shape[0], -1), axis=1, dtype=xp.float64)),
                      dtype=np.float64)


def _tv_per_element(x: Any) -> np.ndarray:
    """``TV_iso`` of each element's map (float64)."""
    return np.asarray(to_numpy(tv_iso(x.astype("float64"))), dtype=np.float64).reshape(-1)


def _smooth_gradient(
    x: Any, b_haadf: Any, b_maps: Any, w: Any, gamma: float, lam_h: float, lambda_chem: Any, bkg: float,
    valid: Any = None,
) -> Any:
    """Gradient of ``lam_H psi_1 + lam_chem psi_2`` at ``x`` (``valid``: 0/1 weights of the HAADF pixels;
    ``lambda_chem``: a number, or one per element shaped (element, 1, 1))."""
    x_pow = x ** (gamma - 1)  # x^(gamma-1); x^gamma = x * x^(gamma-1) saves a power
    residual = (w * x * x_pow).sum(axis=0) - b_haadf
    if valid is not None:
        residual = residual * valid
    return (lam_h * gamma) * w * x_pow * residual + lambda_chem * (1 - b_maps / (x + bkg))


class _ProxStep:
    """``prox_step`` as the prox, then a pass of its own for the step sums (the numba engine takes
    them in the prox's last pass instead)."""

    def prox_step(self, v: Any, lambda_tv: Any, x: Any) -> tuple[Any, tuple[float, float, float]]:
        """The proximal point of the gradient step ``v`` and the step sums from ``x`` to it."""
        new = self.prox(v, lambda_tv, x)
        return new, self.step_sums(x, v, new)


class _XpOps(_ProxStep):
    """The solver's steps in plain array code (numpy or cupy): the reference engine."""

    name = "xp"

    def __init__(self, xp: Any, b_haadf: Any, b_maps: Any, weights: np.ndarray, p: FusionParams,
                 valid: Any = None) -> None:
        self.xp, self.b_haadf, self.b_maps, self.weights, self.p = xp, b_haadf, b_maps, weights, p
        self.valid = valid
        self.w = xp.asarray(weights, dtype=b_maps.dtype)[:, None, None]
        # one chem weight per element: shaped to broadcast over each element's map
        self.lambda_chem = (p.lambda_chem if np.isscalar(p.lambda_chem)
                            else xp.asarray(p.lambda_chem, dtype=b_maps.dtype)[:, None, None])

    def descent(self, x: Any) -> Callable[[float], Any]:
        """``step -> x - step * grad`` (the gradient is computed once per iteration)."""
        p = self.p
        grad = _smooth_gradient(x, self.b_haadf, self.b_maps, self.w, p.gamma, 1.0 / len(self.weights),
                                self.lambda_chem, p.bkg, self.valid)
        return lambda step: x - step * grad

    def prox(self, v: Any, lambda_tv: float | np.ndarray, x: Any) -> Any:
        if np.isscalar(lambda_tv):
            return prox_tv(v, lambda_tv, self.p.n_iter_tv, momentum=self.p.tv_momentum)
        return self.xp.concatenate([prox_tv(v[e:e + 1], float(lam), self.p.n_iter_tv, momentum=self.p.tv_momentum)
                                    for e, lam in enumerate(lambda_tv)])

    def terms(self, x: Any) -> tuple[float, float, float]:
        return objective_terms(x, self.b_haadf, self.b_maps, self.weights, self.p.gamma, self.p.bkg, self.valid)

    def step_sums(self, x: Any, v: Any, new: Any) -> tuple[float, float, float]:
        """``(||new - x||^2, <x - v, new - x>, ||x||^2)`` in float64, one element at a time
        (float64 temporaries the size of one image, not of the stack)."""
        xp = self.xp
        sums = np.zeros(3)
        for x_e, v_e, new_e in zip(x, v, new):
            x64 = x_e.astype(xp.float64)
            d = new_e.astype(xp.float64) - x64
            sums += (float((d * d).sum()), float(((x64 - v_e) * d).sum()), float((x64 * x64).sum()))
        return float(sums[0]), float(sums[1]), float(sums[2])


class _NumbaOps:
    """The solver's steps as fused numba kernels on preallocated buffers (numpy only).

    Two iterate buffers alternate (the candidate never overwrites the iterate
    a rejected step is retried from), each with a buffer for its
    ``x^(gamma-1)``: the objective pass computes it for the candidate and the
    next gradient step reuses it.
    """

    name = "numba"

    def __init__(self, b_haadf: np.ndarray, b_maps: np.ndarray, weights: np.ndarray, p: FusionParams,
                 valid: np.ndarray | None = None) -> None:
        from . import kernels_numba

        self.kn, self.p = kernels_numba, p
        self.valid = valid
        self.b_haadf = np.ascontiguousarray(b_haadf)
        self.b_maps = np.ascontiguousarray(b_maps)
        self.weights = np.asarray(weights, b_maps.dtype)
        self.v = np.empty_like(self.b_maps)
        self.x_buffers = [np.empty_like(self.b_maps), np.empty_like(self.b_maps)]
        self.pow_buffers = [np.empty_like(self.b_maps), np.empty_like(self.b_maps)]
        self.pow_valid = [False, False]
        self.work = kernels_numba.TVWorkspace(b_maps.shape, b_maps.dtype, p.tv_momentum)
        self.work_single: Any = None  # per-element TV weights: a one-image workspace, made on first use

    def _slot(self, x: np.ndarray) -> int | None:
        """Which iterate buffer ``x`` lives in (None: an array of the caller's)."""
        for k, buffer in enumerate(self.x_buffers):
            if np.shares_memory(buffer, x):
                return k
        return None

    def descent(self, x: np.ndarray) -> Callable[[float], np.ndarray]:
        """``step -> x - step * grad``, recomputed in one pass for each step tried."""
        p, k = self.p, self._slot(x)
        x_pow = self.pow_buffers[k] if k is not None and self.pow_valid[k] else None
        return lambda step: self.kn.smooth_step(
            x, self.b_haadf, self.b_maps, self.weights, gamma=p.gamma, lam_h=1.0 / len(self.weights),
            lambda_chem=p.lambda_chem, bkg=p.bkg, step=step, x_pow=x_pow, out=self.v, valid=self.valid,
        )

    def prox_step(self, v: np.ndarray, lambda_tv: float | np.ndarray, x: np.ndarray
                  ) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The proximal point of the gradient step ``v`` and the step sums from ``x`` to it."""
        k = 1 if self._slot(x) == 0 else 0  # never write over the iterate
        self.pow_valid[k] = False
        new = self.x_buffers[k]
        if np.isscalar(lambda_tv):  # the step sums are taken in the prox's last pass
            return new, self.kn.prox_tv_step_sums(v, lambda_tv, self.p.n_iter_tv, x, momentum=self.p.tv_momentum,
                                                  out=new, work=self.work)
        # one weight per element: each element's stack is its own TV problem (contiguous views)
        if self.work_single is None:
            self.work_single = self.kn.TVWorkspace((1, *v.shape[1:]), v.dtype, self.p.tv_momentum)
        for e, lam in enumerate(lambda_tv):
            self.kn.prox_tv(v[e:e + 1], float(lam), self.p.n_iter_tv, momentum=self.p.tv_momentum,
                            out=new[e:e + 1], work=self.work_single)
        return new, self.kn.step_sums(x, v, new)

    def terms(self, x: np.ndarray) -> tuple[float, float, float]:
        k = self._slot(x)
        pow_out = self.pow_buffers[k] if k is not None else None
        terms = self.kn.objective_terms(x, self.b_haadf, self.b_maps, self.weights, self.p.gamma,
                                        self.p.bkg, pow_out=pow_out, valid=self.valid)
        if k is not None:
            self.pow_valid[k] = True
        return terms



class _CudaOps(_ProxStep):
    """The solver's steps as fused CUDA kernels (:mod:`.kernels_cuda`) on preallocated device buffers.

    The buffer scheme of :class:`_NumbaOps` (two iterate buffers, each with its
    ``x^(gamma-1)``), on CuPy arrays, or numpy arrays under the CUDA simulator.
    The buffers are exactly what :func:`emfuse.pipeline.fusion.memory.fusion_bytes_per_pixel`
    counts (:meth:`arrays` lists them).
    """

    name = "cuda"

    def __init__(self, xp: Any, b_haadf: Any, b_maps: Any, weights: np.ndarray, p: FusionParams,
                 valid: Any = None) -> None:
        from . import kernels_cuda

        self.kc, self.p, self.xp = kernels_cuda, p, xp
        self.b_haadf = xp.ascontiguousarray(b_haadf)
        self.b_maps = xp.ascontiguousarray(b_maps)
        self.valid = None if valid is None else xp.ascontiguousarray(valid, dtype=b_maps.dtype)
        self.weights = xp.asarray(np.asarray(weights).ravel(), dtype=b_maps.dtype)
        self.v = xp.empty_like(self.b_maps)
        self.x_buffers = [xp.empty_like(self.b_maps), xp.empty_like(self.b_maps)]
        self.pow_buffers = [xp.empty_like(self.b_maps), xp.empty_like(self.b_maps)]
        self.pow_valid = [False, False]
        self.work = kernels_cuda.TVWorkspace(self.b_maps, p.tv_momentum)
        self.work_single: Any = None  # per-element TV weights: a one-image workspace, made on first use
        n_blocks = kernels_cuda._n_blocks(*b_maps.shape[1:])
        self.partial_terms = xp.empty((n_blocks, 3), xp.float64)
        self.partial_step = xp.empty((n_blocks, 3), xp.float64)

    def arrays(self) -> list[Any]:
        """Every array this engine holds (for the memory model's tests)."""
        held = [self.b_haadf, self.b_maps, self.weights, self.v, *self.x_buffers, *self.pow_buffers,
                *self.work.buffers, self.partial_terms, self.partial_step]
        if self.valid is not None:
            held.append(self.valid)
        if self.work_single is not None:
            held.extend(self.work_single.buffers)
        return held

    def _slot(self, x: Any) -> int | None:
        """Which iterate buffer ``x`` is (None: an array of the caller's)."""
        for k, buffer in enumerate(self.x_buffers):
            if x is buffer:
                return k
        return None

    def descent(self, x: Any) -> Callable[[float], Any]:
        """``step -> x - step * grad``, recomputed in one kernel for each step tried."""
        p, k = self.p, self._slot(x)
        x_pow = self.pow_buffers[k] if k is not None and self.pow_valid[k] else None
        return lambda step: self.kc.smooth_step(
            x, self.b_haadf, self.b_maps, self.weights, gamma=p.gamma, lam_h=1.0 / len(self.weights),
            lambda_chem=p.lambda_chem, bkg=p.bkg, step=step, x_pow=x_pow, out=self.v, valid=self.valid,
        )

    def prox(self, v: Any, lambda_tv: float | np.ndarray, x: Any) -> Any:
        k = 1 if self._slot(x) == 0 else 0  # never write over the iterate
        self.pow_valid[k] = False
        if np.isscalar(lambda_tv):
            return self.kc.prox_tv(v, lambda_tv, self.p.n_iter_tv, momentum=self.p.tv_momentum,
                                   out=self.x_buffers[k], work=self.work)
        if self.work_single is None:
            self.work_single = self.kc.TVWorkspace(v[0:1], self.p.tv_momentum)
        for e, lam in enumerate(lambda_tv):
            self.kc.prox_tv(v[e:e + 1], float(lam), self.p.n_iter_tv, momentum=self.p.tv_momentum,
                            out=self.x_buffers[k][e:e + 1], work=self.work_single)
        return self.x_buffers[k]

    def terms(self, x: Any) -> tuple[float, float, float]:
        k = self._slot(x)
        pow_out = self.pow_buffers[k] if k is not None else None
        terms = self.kc.objective_terms(x, self.b_haadf, self.b_maps, self.weights, self.p.gamma, self.p.bkg,
                                        pow_out=pow_out, valid=self.valid, partial=self.partial_terms)
        if k is not None:
            self.pow_valid[k] = True
        return terms

    def step_sums(self, x: Any, v: Any, new: Any) -> tuple[float, float, float]:
        return self.kc.step_sums(x, v, new, partial=self.partial_step)

    def model(self, x: Any) -> Any:
        """``sum_e w_e x_e^gamma`` as ``x * x^(gamma-1)`` from the objective pass, in the ``v`` buffer
        (plain :func:`.haadf_model` would hold two stack-sized temporaries at the solver's peak)."""
        k = self._slot(x)
        if k is None or not self.pow_valid[k]:
            return haadf_model(x, self.weights, self.p.gamma)
        product = self.xp.multiply(x, self.pow_buffers[k], out=self.v)
        product *= self.weights[:, None, None]
        return product.sum(axis=0)


def numba_available() -> bool:
    """True when the numba engine can run here (numba imports)."""
    try:
        from . import kernels_numba  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_available() -> bool:
    """True when the cuda engine can run here: numba.cuda sees a GPU, or runs its simulator."""
    try:
        from . import kernels_cuda
    except ImportError:
        return False
    return kernels_cuda.available()


def _make_ops(engine: str, xp: Any, b_haadf: Any, b_maps: Any, weights: np.ndarray, p: FusionParams,
              valid: Any = None) -> Any:
    if engine not in ENGINES:
        raise InputError(f"unknown fusion engine {engine!r}; use one of {', '.join(map(repr, ENGINES))}.")
    on_numpy = xp is np
    if engine == "numba" and not on_numpy:
        raise InputError("engine='numba' runs on numpy arrays only; use engine='cuda' or 'xp' for cupy input.")
    if engine == "cuda":
        if not cuda_available():
            raise NotAvailableHere(
                "engine='cuda' needs numba.cuda with a CUDA GPU (or NUMBA_ENABLE_CUDASIM=1 for the simulator); "
                "use engine='xp' or 'auto'."
            )
        if on_numpy and not _cuda_simulator():
            raise InputError("engine='cuda' runs on cupy arrays (numpy only under the CUDA simulator); "
                             "move the inputs to the GPU with cupy.asarray, or use engine='numba'.")
        return _CudaOps(xp, b_haadf, b_maps, weights, p, valid)
    if engine == "numba" or (engine == "auto" and on_numpy and numba_available()):
        return _NumbaOps(b_haadf, b_maps, weights, p, valid)
    if engine == "auto" and not on_numpy and cuda_available():
        return _CudaOps(xp, b_haadf, b_maps, weights, p, valid)
    return _XpOps(xp, b_haadf, b_maps, weights, p, valid)


def _cuda_simulator() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)
