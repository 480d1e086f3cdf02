# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Columns at dose 5, seed 1000: the scaled choice under other search seeds and more folds, and the truth error surface.
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/columns5_draws.py ...
"""
import dataclasses

import numpy as np

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
data = make_spectrum_image((128,128), ("Sr","Ti","O"), specimen="columns", dose=5, seed=1000)
maps = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements)[0]); scaled = maps/maps.max(axis=(1,2), keepdims=True)
def err(lc, lt):
    f = fuse(data.haadf, scaled, data.z, warn=False, n_iter=30, lambda_chem=lc, lambda_tv=lt).fused
    return np.mean([nrmse(a, b) for a, b in zip(f, data.true_maps)])
print("truth err at counts choice (0.125,0.5):", round(err(0.125,0.5),3), " at (0.0625,0.0625):", round(err(0.0625,0.0625),3))
for lc in (0.0625, 0.125, 0.25):
    print(lc, [round(err(lc, lt),3) for lt in (0.0312, 0.0625, 0.125, 0.25, 0.5, 1)], flush=True)
for kw in [dict(seed=1), dict(seed=2), dict(seed=3), dict(folds=6), dict(folds=6, seed=1)]:
    ch = choose_lambdas(data.haadf, data.z, maps=scaled, params={"n_iter": 30}, settings=dataclasses.replace(S, **kw))
    print(kw, ch.lambda_chem, ch.lambda_tv, round(err(ch.lambda_chem, ch.lambda_tv),3), flush=True)
