"""The fusion solver on CuPy arrays (CUDA kernels and plain CuPy code): the CPU's answer (needs a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from emfuse.pipeline.fusion import fuse

pytestmark = pytest.mark.gpu


def _problem(size: int = 256, n_elements: int = 4, seed: int = 0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    truth = np.stack([gaussian_filter(rng.random((size, size)), 3) for _ in range(n_elements)])
    truth = (truth - truth.min()) / np.ptp(truth)
    z = np.array([8, 22, 38, 66][:n_elements])
    haadf = ((z[:, None, None] / z.mean()) * truth ** 1.6).sum(0) + 0.01 * rng.standard_normal((size, size))
    return haadf, rng.poisson(20 * truth).astype(np.float32), z


@pytest.mark.parametrize("engine", ["cuda", "xp"])
def test_cupy_result_equals_the_cpu_result(engine):
    cp = pytest.importorskip("cupy")
    haadf, maps, z = _problem()
    params = dict(n_iter=30, n_iter_tv=5, lambda_chem=0.05, lambda_tv=0.02)
    cpu = fuse(haadf, maps, z, **params)
    gpu = fuse(cp.asarray(haadf), cp.asarray(maps), z, engine=engine, **params)
    assert isinstance(gpu.fused, cp.ndarray) and gpu.engine == engine
    fused = cp.asnumpy(gpu.fused)
    scale = np.ptp(cpu.fused)
    np.testing.assert_allclose(fused, cpu.fused, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(gpu.costs, cpu.costs, rtol=1e-5)
    assert gpu.step_history == cpu.step_history


def test_cupy_input_runs_the_cuda_kernels_by_default():
    cp = pytest.importorskip("cupy")
    haadf, maps, z = _problem(64, 2)
    assert fuse(cp.asarray(haadf), cp.asarray(maps), z, n_iter=2).engine == "cuda"


def test_cuda_engine_with_a_mask_and_per_element_weights_equals_the_cpu_result():
    cp = pytest.importorskip("cupy")
    haadf, maps, z = _problem(200, 3)
    valid = haadf < np.quantile(haadf, 0.95)
    params = dict(n_iter=20, n_iter_tv=5, lambda_tv=(0.01, 0.02, 0.04), tol=1e-7, tv_momentum=True)
    cpu = fuse(haadf, maps, z, haadf_valid=valid, **params)
    gpu = fuse(cp.asarray(haadf), cp.asarray(maps), z, haadf_valid=cp.asarray(valid), engine="cuda", **params)
    np.testing.assert_allclose(cp.asnumpy(gpu.fused), cpu.fused, rtol=0, atol=1e-5 * np.ptp(cpu.fused))
    np.testing.assert_allclose(gpu.costs, cpu.costs, rtol=1e-5)


def test_cupy_input_keeps_the_numba_engine_away():
    cp = pytest.importorskip("cupy")
    haadf, maps, z = _problem(64, 2)
    with pytest.raises(ValueError, match="numpy arrays only"):
        fuse(cp.asarray(haadf), cp.asarray(maps), z, engine="numba", n_iter=2)
