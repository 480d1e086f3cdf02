# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Per-element TV: one element's weight moved by 2^k at the joint choice; held-out and truth changes. Usage: SEED FOLDS CASES.
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/per_element_tv_moves.py ...
"""
import dataclasses
import sys

import numpy as np

from emfuse.pipeline.fusion import Normalisation, fuse
from emfuse.pipeline.fusion.auto import (
    SearchSettings,
    _splits,
    choose_lambdas,
    heldout_scores,
    scaled_normalisation,
)
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

E = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
seed = int(sys.argv[1]); folds = int(sys.argv[2])
for sp, dose in [(c.split(":")[0], float(c.split(":")[1])) for c in sys.argv[3].split(",")]:
    data = make_spectrum_image((128,128), E[sp], specimen=sp, dose=dose, seed=seed)
    def tm(s):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
    maps = tm(data.spectrum)
    ch = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=tm, params={"n_iter": 30}, settings=S)
    lc, lt = ch.lambda_chem, ch.lambda_tv
    sp_folds = _splits(None, data.spectrum, tm, dataclasses.replace(S, folds=folds, seed=7))
    norm = scaled_normalisation(Normalisation.from_data(data.haadf, maps), sp_folds.fraction)
    weak = int(np.argmax([nrmse(m, t) for m, t in zip(maps, data.true_maps)]))
    print(f"{sp} {dose:g} seed {seed}: joint ({lc:.3g},{lt:.3g}); weakest {data.elements[weak]}")
    def both(lcv, ltv):
        h = np.zeros(3)
        for tr, te in sp_folds.folds:
            f = fuse(data.haadf, tr, data.z, normalisation=norm, warn=False, n_iter=30, lambda_chem=lcv, lambda_tv=ltv).fused
            h += heldout_scores(np.asarray(f), te) / folds
        f = fuse(data.haadf, maps, data.z, warn=False, n_iter=30, lambda_chem=lcv, lambda_tv=ltv).fused
        return h, np.array([nrmse(a, b) for a, b in zip(f, data.true_maps)])
    h0, t0 = both(lc, lt)
    for e in range(3):
        for k in (-4,-2,-1,1,2,4):
            tv = [lt]*3; tv[e] = lt*2.0**k
            h, t = both(lc, tv)
            print(f"  tv[{data.elements[e]}] x2^{k:+d}: heldout rel {np.round(h/h0-1,4).tolist()}  truth rel {np.round(t/t0-1,3).tolist()}", flush=True)
    # per-element lambda_chem was not in the solver when this ran: its effect on the weak element is emulated below by
    # joint lambda_chem moves with the TV of the weak element only.
