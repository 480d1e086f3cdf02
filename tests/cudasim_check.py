"""The CUDA kernels against the CPU ones, under numba's CUDA simulator (no GPU needed).

Run by ``tests/pipeline/test_fusion_cudasim.py`` in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (read when
numba.cuda is first imported, so it cannot be switched on inside the test process). Prints one
JSON object: for each check, the largest difference as a fraction of the reference's value range
(or the largest relative difference of the cost terms). Keep the arrays tiny: every simulated
thread is a Python thread.

    NUMBA_ENABLE_CUDASIM=1 python tests/cudasim_check.py [kernels|fuse|all]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _problem(n_el: int = 2, ny: int = 7, nx: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_el, ny, nx), dtype=np.float32)
    b_haadf = rng.random((ny, nx), dtype=np.float32)
    b_maps = rng.random((n_el, ny, nx), dtype=np.float32)
    valid = (rng.random((ny, nx)) > 0.2).astype(np.float32)
    weights = np.linspace(0.6, 1.4, n_el)
    return x, b_haadf, b_maps, valid, weights


def _range_error(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    span = max(float(ref.max() - ref.min()), 1e-30)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / span)


def _rel(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float((np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)).max())


def check_kernels() -> dict[str, float]:
    from emfuse.pipeline.fusion import kernels_cuda as kc
    from emfuse.pipeline.fusion import kernels_numba as kn

    x, b_haadf, b_maps, valid, weights = _problem()
    out: dict[str, float] = {}
    common = dict(gamma=1.6, lam_h=0.5, lambda_chem=0.05, bkg=0.1, step=0.7)
    for masked in (False, True):
        v = None if not masked else valid
        ref = kn.smooth_step(x, b_haadf, b_maps, weights, valid=v, **common)
        got = kc.smooth_step(x, b_haadf, b_maps, weights, valid=v, **common)
        out[f"smooth_step{'_masked' if masked else ''}"] = _range_error(got, ref)
    x_pow = x ** np.float32(0.6)
    ref = kn.smooth_step(x, b_haadf, b_maps, weights, x_pow=x_pow, **common)
    got = kc.smooth_step(x, b_haadf, b_maps, weights, x_pow=x_pow, **common)
    out["smooth_step_x_pow"] = _range_error(got, ref)
    noisy = x - 0.3
    for momentum in (False, True):
        ref = kn.prox_tv(noisy, 0.05, 3, momentum=momentum)
        got = kc.prox_tv(noisy, 0.05, 3, momentum=momentum)
        out[f"prox_tv_{'fgp' if momentum else 'gp'}"] = _range_error(got, ref)
    out["prox_tv_zero_lambda"] = _range_error(kc.prox_tv(noisy, 0.0, 3), np.maximum(noisy, 0))
    for masked in (False, True):
        v = None if not masked else valid
        pow_ref, pow_got = np.empty_like(x), np.empty_like(x)
        ref = kn.objective_terms(x, b_haadf, b_maps, weights, 1.6, 0.1, pow_out=pow_ref, valid=v)
        got = kc.objective_terms(x, b_haadf, b_maps, weights, 1.6, 0.1, pow_out=pow_got, valid=v)
        out[f"objective_terms{'_masked' if masked else ''}"] = _rel(got, ref)
        out[f"objective_pow_out{'_masked' if masked else ''}"] = _range_error(pow_got, pow_ref)
    v = x - 0.5 * b_maps
    out["step_sums"] = _rel(kc.step_sums(x, v, b_maps), kn.step_sums(x, v, b_maps))
    return out


def check_fuse() -> dict[str, float]:
    from emfuse.pipeline.fusion import fuse

    rng = np.random.default_rng(1)
    truth = rng.random((2, 7, 9))
    haadf = 1.2 * truth[0] ** 1.6 + 0.8 * truth[1] ** 1.6
    maps = rng.poisson(10 * truth).astype(np.float32)
    out: dict[str, float] = {}
    cases = {  # few launches: each simulated launch takes a fraction of a second
        "fuse": dict(n_iter=2, n_iter_tv=2),
        "fuse_masked_per_element_tv_tol": dict(n_iter=2, n_iter_tv=1, lambda_tv=(0.02, 0.05), tol=1e-9,
                                               haadf_valid=haadf < np.quantile(haadf, 0.9)),
    }
    for name, params in cases.items():
        cpu = fuse(haadf, maps, [40, 20], engine="numba", warn=False, **params)
        gpu = fuse(haadf, maps, [40, 20], engine="cuda", warn=False, **params)
        assert gpu.engine == "cuda", gpu.engine
        assert gpu.costs.shape == cpu.costs.shape, (gpu.costs.shape, cpu.costs.shape)
        assert gpu.step_history == cpu.step_history, (gpu.step_history, cpu.step_history)
        out[name] = _range_error(gpu.fused, cpu.fused)
        out[f"{name}_haadf_model"] = _range_error(gpu.haadf_model, cpu.haadf_model)
        out[f"{name}_costs"] = _rel(gpu.costs, cpu.costs)
        out[f"{name}_objective"] = _rel(gpu.objective, cpu.objective)
    return out


def main(argv: list[str]) -> None:
    from numba import config

    if not config.ENABLE_CUDASIM:
        raise SystemExit("set NUMBA_ENABLE_CUDASIM=1 before running this check")
    which = argv[0] if argv else "all"
    result: dict[str, float] = {}
    if which in ("kernels", "all"):
        result.update(check_kernels())
    if which in ("fuse", "all"):
        result.update(check_fuse())
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
