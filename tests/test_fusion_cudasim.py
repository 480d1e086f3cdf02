"""The CUDA kernels (``kernels_cuda``) and ``fuse(..., engine="cuda")`` agree with the CPU solver.

Run under numba's CUDA simulator (no GPU needed): ``tests/cudasim_check.py`` in a subprocess with
``NUMBA_ENABLE_CUDASIM=1``, which numba reads when numba.cuda is first imported. Tiny arrays and
few iterations: every simulated thread is a Python thread (about 15 s in all). On a GPU machine
``tests/test_fusion_gpu.py`` runs the same comparison on CuPy arrays.
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

ROOT = Path(__file__).resolve().parents[1]
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
    "objective_pow_out_masked", "relative_change",
])
def test_cuda_kernel_matches_the_numba_kernel(simulated, check):
    assert simulated[check] <= TOLERANCE


@pytest.mark.parametrize("case", ["fuse", "fuse_masked_per_element_tv_tol"])
@pytest.mark.parametrize("what", ["", "_haadf_model", "_costs", "_objective"])
def test_fuse_with_the_cuda_engine_matches_the_cpu_solver(simulated, case, what):
    assert simulated[case + what] <= TOLERANCE
