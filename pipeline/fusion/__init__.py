"""Fused multi-modal chemical mapping (Schwartz et al., npj Comput. Mater. 8, 16, 2022).

High-SNR HAADF + noisy EDX/EELS elemental maps -> high-SNR elemental maps.

>>> from pipeline.fusion import fuse  # doctest: +SKIP
>>> result = fuse(haadf, maps, z=[21, 66, 8], lambda_chem=0.08, lambda_tv=0.15)  # doctest: +SKIP
"""

from .model import (
    FusionInputError,
    Normalisation,
    check_inputs,
    haadf_model,
    haadf_weights,
    objective,
    objective_terms,
)
from .solver import COST_TERMS, FusionParams, FusionResult, fuse
from .tv import divergence, gradient, prox_tv, tv_iso

__all__ = [
    "COST_TERMS",
    "FusionInputError",
    "FusionParams",
    "FusionResult",
    "Normalisation",
    "check_inputs",
    "divergence",
    "fuse",
    "gradient",
    "haadf_model",
    "haadf_weights",
    "objective",
    "objective_terms",
    "prox_tv",
    "tv_iso",
]
