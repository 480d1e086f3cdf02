# ruff: noqa
"""Exploratory diagnosis (issue 16, large data), a record of docs/benchmarks.md ("Round 10"):
the time of each numba pass of a fusion iteration on 4 x 576 x 576 float32 (one 512 px tile
with its halo), and a whole `fuse` of a synthetic 576 x 576 x 4 map set (columns, dose 20, fixed
weights, 50 iterations), medians. Run it with PYTHONPATH set to each checkout (git archive
exports) in turn, one thread:
OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=EXPORT .venv/bin/python benchmarks/diagnosis/fusion_kernel_passes.py [repeats]
"""
import sys, time
import numpy as np
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion import kernels_numba as kn
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

def median_ms(f, n=30):
    f()
    times = []
    for _ in range(n):
        start = time.perf_counter(); f(); times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))

rng = np.random.default_rng(0)
shape = (4, 576, 576)
x = rng.random(shape, dtype=np.float32) + 0.1; v = x + 0.01; new = x + 0.02
haadf = rng.random(shape[1:], dtype=np.float32); maps = rng.random(shape, dtype=np.float32)
w = np.ones(4, np.float32); pow_out = np.empty_like(x); out = np.empty_like(x)
work = kn.TVWorkspace(shape, np.float32, False)
print("per pass (ms): smooth_step %.2f, prox_tv (10 dual + primal) %.2f, objective_terms %.2f, step_sums %s" % (
    median_ms(lambda: kn.smooth_step(x, haadf, maps, w, gamma=1.7, lam_h=0.25, lambda_chem=0.05, bkg=0.1, step=1.0,
                                     x_pow=pow_out, out=out)),
    median_ms(lambda: kn.prox_tv(v, 0.05, 10, out=new, work=work, momentum=False)),
    median_ms(lambda: kn.objective_terms(new, haadf, maps, w, 1.7, 0.1, pow_out=pow_out)),
    "%.2f" % median_ms(lambda: kn.step_sums(x, v, new)) if hasattr(kn, "step_sums") else "(none)"))
data = make_spectrum_image((576, 576), ("Sr", "Ti", "O", "Ca"), specimen="columns", dose=20, seed=1)
maps = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements)[0])
kw = dict(lambda_chem=0.05, lambda_tv=0.05, n_iter=50, warn=False)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 7
print("fuse, 50 iterations: median %.3f s" % (median_ms(lambda: fuse(data.haadf, maps, data.z, **kw), n) / 1e3))
