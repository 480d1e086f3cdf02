"""The fusion solver: proximal gradient on the smooth terms, FGP-TV as the proximal step."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import get_xp
from .model import (
    FusionInputError,
    Normalisation,
    check_inputs,
    haadf_model,
    haadf_weights,
    objective_terms,
)
from .tv import prox_tv

COST_TERMS = ("haadf", "chem", "tv")


@dataclass(frozen=True)
class FusionParams:
    """Parameters of :func:`fuse` (defaults are the embedded defaults of emfuse).

    Attributes
    ----------
    gamma
        Exponent of the Z-contrast model, HAADF ~ sum_i w_i x_i^gamma (>= 1; 1.4-2 typical).
    lambda_chem
        Weight of the Poisson fidelity to the raw maps. Larger keeps the
        result closer to the measured counts.
    lambda_tv
        Weight of the total-variation prior. Larger gives smoother maps.
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
        Initial step of the gradient step (1.0 as published); halved when an
        iteration would increase the objective.
    tol
        Stop early when the relative change of the iterate falls below
        ``tol`` (``None``: run all ``n_iter`` iterations).
    """

    gamma: float = 1.6
    lambda_chem: float = 0.05
    lambda_tv: float = 0.02
    n_iter: int = 50
    n_iter_tv: int = 10
    bkg: float = 0.1
    init_threshold: float = 0.0
    step: float = 1.0
    tol: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "gamma": self.gamma >= 1,  # below 1 the gradient is infinite at x = 0
            "lambda_chem": self.lambda_chem >= 0,
            "lambda_tv": self.lambda_tv >= 0,
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
    """

    fused: Any
    haadf_model: Any
    costs: np.ndarray
    objective: np.ndarray
    normalisation: Normalisation
    params: FusionParams
    initial_objective: float = float("nan")
    step_history: list[float] = field(default_factory=list)


def fuse(
    haadf: Any,
    maps: Any,
    z: Sequence[float],
    *,
    normalisation: Normalisation | None = None,
    callback: Callable[[int, float], None] | None = None,
    dtype: Any = np.float32,
    **params: Any,
) -> FusionResult:
    """Fuse noisy elemental maps with a high-SNR HAADF (Schwartz et al. 2022).

    Solves ``argmin_{x >= 0} lam_H/2 ||b_H - sum_i w_i x_i^gamma||^2
    + lam_chem sum_i (1'x_i - b_i' log(x_i + bkg)) + lam_tv sum_i TV(x_i)``
    by proximal gradient: a gradient step on the first two terms, then the
    isotropic TV proximal step by FGP (with momentum). ``w_i = Z_i / mean(Z)``,
    ``lam_H = 1 / n_elements``. If an iteration would raise the objective,
    the step is halved and the iteration redone.

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
    **params
        Fields of :class:`FusionParams` (``gamma``, ``lambda_chem``,
        ``lambda_tv``, ``n_iter``, ``n_iter_tv``, ``bkg``, ``init_threshold``,
        ``step``, ``tol``).

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
    """
    unknown = set(params) - {f.name for f in dataclasses.fields(FusionParams)}
    if unknown:
        raise TypeError(f"fuse() got unknown parameters {sorted(unknown)}")
    p = FusionParams(**params)
    check_inputs(haadf, maps, z)
    xp = get_xp(haadf, maps)
    norm = normalisation or Normalisation.from_data(haadf, maps)
    b_haadf = norm.haadf(xp.asarray(haadf), dtype)
    b_maps = norm.maps(xp.asarray(maps), dtype)
    weights = haadf_weights(z)
    w = xp.asarray(weights, dtype=dtype)[:, None, None]
    lam_h = 1.0 / len(z)

    def total(terms: tuple[float, float, float]) -> float:
        return lam_h * terms[0] + p.lambda_chem * terms[1] + p.lambda_tv * terms[2]

    x = b_maps.copy()
    if p.init_threshold > 0:
        x[x < p.init_threshold] = 0
    f_old = total(objective_terms(x, b_haadf, b_maps, weights, p.gamma, p.bkg))
    result = FusionResult(
        fused=x, haadf_model=None, costs=np.empty((3, 0)), objective=np.empty(0),
        normalisation=norm, params=p, initial_objective=f_old,
    )
    costs: list[tuple[float, float, float]] = []
    step = p.step
    for iteration in range(p.n_iter):
        grad = _smooth_gradient(x, b_haadf, b_maps, w, p.gamma, lam_h, p.lambda_chem, p.bkg)
        for _ in range(8):  # backtracking: at most 8 halvings, then accept
            x_new = prox_tv(x - step * grad, step * p.lambda_tv, p.n_iter_tv)
            terms = objective_terms(x_new, b_haadf, b_maps, weights, p.gamma, p.bkg)
            if total(terms) <= f_old + 1e-7 * abs(f_old):
                break
            step *= 0.5
        result.step_history.append(step)
        change = float(xp.linalg.norm(x_new - x)) / max(float(xp.linalg.norm(x)), 1e-30)
        x, f_old = x_new, total(terms)
        costs.append(terms)
        if callback is not None:
            callback(iteration, f_old)
        if p.tol is not None and change < p.tol:
            break
    result.fused = x
    result.haadf_model = haadf_model(x, weights, p.gamma)
    result.costs = np.asarray(costs, dtype=np.float64).T
    result.objective = lam_h * result.costs[0] + p.lambda_chem * result.costs[1] + p.lambda_tv * result.costs[2]
    return result


def _smooth_gradient(
    x: Any, b_haadf: Any, b_maps: Any, w: Any, gamma: float, lam_h: float, lambda_chem: float, bkg: float
) -> Any:
    """Gradient of ``lam_H psi_1 + lam_chem psi_2`` at ``x``."""
    x_pow = x ** (gamma - 1)  # x^(gamma-1); x^gamma = x * x^(gamma-1) saves a power
    residual = (w * x * x_pow).sum(axis=0) - b_haadf
    return (lam_h * gamma) * w * x_pow * residual + lambda_chem * (1 - b_maps / (x + bkg))
