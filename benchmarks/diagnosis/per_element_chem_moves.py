# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Per-element lambda_chem of the weakest element, emulated in the plain engine by patching the chem gradient and objective. Usage: SEED CASES.
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/per_element_chem_moves.py ...
"""
import dataclasses
import sys

import numpy as np

import emfuse.pipeline.fusion.solver as solver
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

F = {"f": np.ones(3)}
orig_grad, orig_terms = solver._smooth_gradient, solver.objective_terms
def grad(x, b_haadf, b_maps, w, gamma, lam_h, lambda_chem, bkg, valid=None):
    x_pow = x ** (gamma - 1); residual = (w * x * x_pow).sum(axis=0) - b_haadf
    if valid is not None: residual = residual * valid
    f = F["f"].astype(x.dtype)[:, None, None]
    return (lam_h * gamma) * w * x_pow * residual + lambda_chem * f * (1 - b_maps / (x + bkg))
def terms(x, haadf, maps, weights, gamma, bkg, valid=None):
    p1, _, tv = orig_terms(x, haadf, maps, weights, gamma, bkg, valid)
    p2 = sum(F["f"][i] * float(np.sum(x[i] - maps[i] * np.log(x[i] + bkg), dtype=np.float64)) for i in range(x.shape[0]))
    return p1, p2, tv
solver._smooth_gradient = grad; solver.objective_terms = terms
E = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
seed = int(sys.argv[1])
for sp, dose in [(c.split(":")[0], float(c.split(":")[1])) for c in sys.argv[2].split(",")]:
    data = make_spectrum_image((128,128), E[sp], specimen=sp, dose=dose, seed=seed)
    def tm(s):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
    maps = tm(data.spectrum)
    F["f"] = np.ones(3)
    ch = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=tm, params={"n_iter": 30}, settings=S)
    lc, lt = ch.lambda_chem, ch.lambda_tv
    folds = _splits(None, data.spectrum, tm, dataclasses.replace(S, folds=2, seed=7))
    norm = scaled_normalisation(Normalisation.from_data(data.haadf, maps), folds.fraction)
    weak = int(np.argmax([nrmse(m, t) for m, t in zip(maps, data.true_maps)]))
    def both(f):
        F["f"] = np.asarray(f, float); h = np.zeros(3)
        for tr, te in folds.folds:
            x = fuse(data.haadf, tr, data.z, normalisation=norm, warn=False, n_iter=30, lambda_chem=lc, lambda_tv=lt, engine="xp").fused
            h += heldout_scores(np.asarray(x), te) / 2
        x = fuse(data.haadf, maps, data.z, warn=False, n_iter=30, lambda_chem=lc, lambda_tv=lt, engine="xp").fused
        return h, np.array([nrmse(a, b) for a, b in zip(x, data.true_maps)])
    h0, t0 = both(np.ones(3))
    print(f"{sp} {dose:g} seed {seed}: joint ({lc:.3g},{lt:.3g}); weakest {data.elements[weak]}; truth {np.round(t0,3).tolist()}", flush=True)
    for k in (-2, -1, 1, 2):
        f = np.ones(3); f[weak] = 2.0**k
        h, t = both(f)
        print(f"  chem[{data.elements[weak]}] x2^{k:+d}: heldout rel {np.round(h/h0-1,4).tolist()}  truth rel {np.round(t/t0-1,3).tolist()}", flush=True)
