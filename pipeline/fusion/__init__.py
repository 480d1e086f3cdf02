"""Fused multi-modal chemical mapping (Schwartz et al., npj Comput. Mater. 8, 16, 2022).

High-SNR HAADF + noisy EDX/EELS elemental maps -> high-SNR elemental maps.

numpy inputs run on fused numba kernels (:mod:`.kernels_numba`, imported on
first use), cupy inputs on fused CUDA kernels (:mod:`.kernels_cuda`) when
numba.cuda sees the GPU; ``fuse(..., engine="xp")`` runs the plain array code
(numpy or cupy). :mod:`.memory` is the GPU memory model (tile sizes).
Large maps are fused tile by tile (:mod:`.tiled`: :func:`fuse_dataset`, lazily on
a dask-backed xarray Dataset, and the per-tile kernel the jobs run), also loaded on
first use.

Examples
--------
>>> from emfuse.pipeline.fusion import fuse  # doctest: +SKIP
>>> result = fuse(haadf, maps, z=[21, 66, 8], lambda_chem=0.08, lambda_tv=0.15)  # doctest: +SKIP
"""

import os

from emfuse._lazy import on_first_use

# GNU OpenMP, numba's threading layer here, keeps idle threads spinning by
# default. When cores are shared (Dask tile threads or worker processes each
# launching parallel kernels, other jobs), the spinning threads starve the
# working ones: the DyScO3 tutorial took 2.2 s instead of 0.14 s on a busy
# 2-core machine. Passive waiting costs microseconds per kernel launch. The
# runtime reads this once, when numba first starts its threads, so it is set
# here, before any kernel runs (and inherited by Dask worker processes started
# later); an OMP_WAIT_POLICY set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .convergence import ConvergenceWarning, diagnose_convergence  # noqa: E402
from .model import (  # noqa: E402
    FusionInputError,
    Normalisation,
    check_inputs,
    haadf_model,
    haadf_weights,
    objective,
    objective_terms,
)
from .solver import COST_TERMS, FusionParams, FusionResult, cuda_available, fuse, numba_available
from .tv import divergence, gradient, prox_tv, tv_iso

#: Tiled fusion (:mod:`.tiled`), loaded at first use: it imports dask and xarray, which
#: would add seconds to every ``import`` of this package for users of plain arrays.
_TILED = ("TileFusion", "fuse_dataset", "fuse_tile", "global_normalisation", "sum_tile_costs")

__all__ = [
    "COST_TERMS",
    "ConvergenceWarning",
    "diagnose_convergence",
    "FusionInputError",
    "FusionParams",
    "FusionResult",
    "Normalisation",
    "TileFusion",
    "check_inputs",
    "cuda_available",
    "divergence",
    "fuse",
    "fuse_dataset",
    "fuse_tile",
    "global_normalisation",
    "gradient",
    "haadf_model",
    "haadf_weights",
    "objective",
    "numba_available",
    "objective_terms",
    "prox_tv",
    "sum_tile_costs",
    "tv_iso",
]


__getattr__, __dir__ = on_first_use(__name__, {name: (".tiled", name) for name in _TILED}, globals())
