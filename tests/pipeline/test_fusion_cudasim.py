"""The CUDA kernels (``kernels_cuda``) and ``fuse(..., engine="cuda")`` agree with the CPU solver.

Run under numba's CUDA simulator (no GPU needed): ``tests/cudasim_check.py`` in a subprocess with
``NUMBA_ENABLE_CUDASIM=1``, which numba reads when numba.cuda is first imported. Tiny arrays and
few iterations: every simulated thread is a Python thread (about 15 s in all). On a GPU machine
``tests/pipeline/test_fusion_gpu.py`` runs the same comparison on CuPy arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

pytestmark = pytest.mark.cudasim

ROOT = Path(__file__).resolve().parents[2]
#: agreement asked of every kernel and of the whole solver: a fraction of the value range
#: (relative, for the cost terms and the objective)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def simulated() -> dict[str, float]:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "cudasim_check.py"), "all"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", [
    "smooth_step", "smooth_step_masked", "smooth_step_x_pow", "prox_tv_gp", "prox_tv_fgp",
    "prox_tv_zero_lambda", "objective_terms", "objective_terms_masked", "objective_pow_out",
    "objective_pow_out_masked", "step_sums",
])
def test_cuda_kernel_matches_the_numba_kernel(simulated, check):
    assert simulated[check] <= TOLERANCE


@pytest.mark.parametrize("case", ["fuse", "fuse_masked_per_element_tv_tol"])
@pytest.mark.parametrize("what", ["", "_haadf_model", "_costs", "_objective"])
def test_fuse_with_the_cuda_engine_matches_the_cpu_solver(simulated, case, what):
    assert simulated[case + what] <= TOLERANCE


def _signatures() -> dict[str, tuple]:
    from numba import types

    from emfuse.pipeline.fusion import kernels_cuda as kc

    f32, b = types.float32, types.boolean
    a3, a2, a1 = (types.Array(f32, n, "C") for n in (3, 2, 1))
    partial = types.Array(types.float64, 2, "C")
    return {
        "smooth_step": (kc._smooth_step_kernel, (a3, a2, a3, a1, f32, f32, f32, f32, f32, a3, b, a2, b, a3)),
        "tv_dual": (kc._tv_dual_kernel, (a3, a3, a3, a3, a3, a3, a3, f32, f32, f32, b, b, b)),
        "tv_primal": (kc._tv_primal_kernel, (a3, a3, a3, f32, b, b, a3)),
        "objective": (kc._objective_kernel, (a3, a2, a3, a1, f32, f32, a3, b, a2, b, partial)),
        "step_sums": (kc._step_kernel, (a3, a3, a3, partial)),
    }


def test_kernels_compile_for_the_device_in_float32(monkeypatch):
    """The simulator runs the kernels as Python; this compiles them with NVVM for an H100 (sm_90),
    as the GPU will (typing included), and checks the per-pixel passes have no float64 arithmetic.
    Needs NVVM (a CUDA toolkit or the nvidia-cuda-nvcc-cu12 wheel of the gpu extra), not a GPU."""
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator replaces numba.cuda's compiler")
    from numba.cuda import dispatcher
    from numba.cuda.cudadrv import nvvm

    from emfuse.pipeline.fusion import kernels_cuda

    kernels_cuda._use_pip_nvvm()
    if not nvvm.is_available():
        pytest.skip("no NVVM (install the gpu extra, or set CUDA_HOME to a CUDA toolkit)")
    if not cuda.is_available():  # device functions compile for the current device: an H100 stands in

        class _H100:
            compute_capability = (9, 0)

        monkeypatch.setattr(dispatcher, "get_current_device", lambda: _H100())
    for name, (kernel, signature) in _signatures().items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        f64 = [line for line in ptx.splitlines() if ".f64" in line and not line.lstrip().startswith("//")]
        if name in ("smooth_step", "tv_dual", "tv_primal"):
            assert not f64, f"{name}: float64 in the PTX: {f64[:3]}"
