# ruff: noqa: E501, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Why fused maps fall behind a plain blur on synthetic data: the same cases as
benchmarks/per_element_oracle.py, each fused with weights chosen automatically on held-out counts
(no truth) under variants of the model/solver: the default; gamma = 1 (the synthetic HAADF is linear
in the concentrations, the model raises the maps to gamma); FGP momentum and 30 dual iterations in the
TV step (the plain GP step from a zero dual smooths at most a fixed amount per iteration whatever
lambda_tv is). Also the best gaussian blur of the raw map (oracle sigma). NRMSE per element.
Run from the repository root:
    PYTHONPATH=. OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 /work/main/.venv/bin/python benchmarks/diagnosis/model_mismatch.py 1000 columns:20,particles:20,layers:20 'default,gamma 1'
"""
import sys

import numpy as np
from scipy import ndimage

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

E = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
VARIANTS = {"default": {}, "gamma 1": {"gamma": 1.0}, "FGP, 30 TV iter": {"tv_momentum": True, "n_iter_tv": 30}}
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
# usage: model_mismatch.py SEED [SPECIMEN:DOSE,...] [VARIANT,...] (default: every case, every variant)
seed = int(sys.argv[1])
cases = ([(c.split(":")[0], float(c.split(":")[1])) for c in sys.argv[2].split(",")] if len(sys.argv) > 2
         else [(sp, d) for sp in E for d in (5, 20, 80)])
if len(sys.argv) > 3:
    VARIANTS = {k: VARIANTS[k] for k in sys.argv[3].split(",")}
for sp, dose in cases:
    data = make_spectrum_image((128, 128), E[sp], specimen=sp, dose=dose, seed=seed)
    def tm(s):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
    maps = tm(data.spectrum)
    blur = [min(nrmse(ndimage.gaussian_filter(m, s), t) for s in (0.5, 0.75, 1, 1.5, 2, 3, 4)) for m, t in zip(maps, data.true_maps)]
    out = [f"{sp} {dose:g} seed {seed} {'/'.join(data.elements)}: blur {'/'.join(f'{v:.3f}' for v in blur)}"]
    for name, kw in VARIANTS.items():
        params = {"n_iter": 30, **kw}
        ch = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=tm, params=params, settings=S)
        f = fuse(data.haadf, maps, data.z, warn=False, lambda_chem=ch.lambda_chem, lambda_tv=ch.lambda_tv, **params).fused
        err = [nrmse(a, b) for a, b in zip(f, data.true_maps)]
        out.append(f"{name} ({ch.lambda_chem:.3g},{ch.lambda_tv:.3g}) {'/'.join(f'{v:.3f}' for v in err)}")
    print("; ".join(out), flush=True)
