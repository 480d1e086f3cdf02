# ruff: noqa: E501, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Why moving one element's own weights (benchmarks/per_element_oracle.py) changes the other elements even
with that element out of the HAADF model: the gradient step is one step for all elements, halved when the
objective rises. For a few cases at the automatic joint weights: the step history and NRMSE per element of
the joint fusion, of the oracle's move of the weakest element's weights, and of the joint fusion with a
smaller initial step or more iterations. Run from the repository root:
    PYTHONPATH=. OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 /work/main/.venv/bin/python benchmarks/diagnosis/shared_step.py
"""
import numpy as np

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

E = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
# (specimen, dose, seed, the oracle's move of the weakest element: lambda_chem x 2^b, lambda_tv x 2^a)
CASES = [("columns", 80, 1000, 5, 4), ("columns", 20, 1000, 5, 5), ("particles", 80, 1000, 6, 5)]
for sp, dose, seed, b, a in CASES:
    data = make_spectrum_image((128, 128), E[sp], specimen=sp, dose=dose, seed=seed)
    def tm(s):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
    maps = tm(data.spectrum)
    ch = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=tm, params={"n_iter": 30}, settings=S)
    lc, lt = ch.lambda_chem, ch.lambda_tv
    print(f"{sp} {dose} seed {seed}: joint ({lc:.3g}, {lt:.3g})", flush=True)
    runs = {"joint": dict(lambda_chem=lc, lambda_tv=lt),
            f"weakest (x2^{b}, x2^{a})": dict(lambda_chem=[lc, lc, lc * 2.0**b], lambda_tv=[lt, lt, lt * 2.0**a])}
    for step in (0.5, 0.25, 0.125, 0.0625):
        runs[f"joint, step {step:g}"] = dict(lambda_chem=lc, lambda_tv=lt, step=step)
    runs["joint, 100 iterations"] = dict(lambda_chem=lc, lambda_tv=lt, n_iter=100)
    runs["joint, step 0.0625, 100 iter"] = dict(lambda_chem=lc, lambda_tv=lt, step=0.0625, n_iter=100)
    runs["joint, step 0.0625, 300 iter"] = dict(lambda_chem=lc, lambda_tv=lt, step=0.0625, n_iter=300)
    for name, kw in runs.items():
        kw = {"n_iter": 30, **kw}
        r = fuse(data.haadf, maps, data.z, warn=False, **kw)
        err = [nrmse(f, t) for f, t in zip(r.fused, data.true_maps)]
        steps = np.asarray(r.step_history)
        print(f"  {name:>29}: {'/'.join(f'{v:.3f}' for v in err)}; step first {steps[0]:.3g}, last {steps[-1]:.3g}, mean {steps.mean():.3g}", flush=True)
