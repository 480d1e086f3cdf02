# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Scaled maps: the automatic choice with the recorrupted draw's variance from the fitted model ('current'), the true variance ('oracle'), box-N of r^2 ('localN') or 4 folds. Usage: SEED CASES VARIANTS, e.g. 1000 layers:80,columns:5 current,oracle,local5,local9,folds4. Patches auto.recorrupt (variants were written before local_variance existed; with the committed code 'current' is local5).
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_noise_variants.py ...
"""
import dataclasses
import sys
import time

import numpy as np
from scipy import ndimage

import emfuse.pipeline.fusion.auto as auto
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas, thin_counts
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
seed = int(sys.argv[1]); cases = [(c.split(":")[0], float(c.split(":")[1])) for c in sys.argv[2].split(",")]
variants = sys.argv[3].split(",")
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
orig = auto.recorrupt
VAR = {"maps": None, "k": 0}
def recorrupt_map(image, model, p, rng):
    v = VAR["maps"][VAR["k"] % len(VAR["maps"])]; VAR["k"] += 1
    y = np.asarray(image, np.float64); a = np.sqrt((1-p)/p)
    z = rng.standard_normal(y.shape) * np.sqrt(v)
    return np.maximum(y + a*z, 0.0), y - z/a
def resid_var(y, w):
    r = (y - ndimage.uniform_filter(y, 3, mode="reflect")) * np.sqrt(9/8)
    return np.maximum(ndimage.uniform_filter(r*r, w, mode="reflect"), 0)
for specimen, dose in cases:
    data = make_spectrum_image((128,128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
    def tm(s, clip=True):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements, clip_negative=clip)[0])
    maps = tm(data.spectrum); mx = maps.max(axis=(1,2), keepdims=True); scaled = maps/mx
    def run(kw, m, settings=S):
        t=time.time(); ch = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=settings, **kw)
        f = fuse(data.haadf, m, data.z, warn=False, n_iter=30, lambda_chem=ch.lambda_chem, lambda_tv=ch.lambda_tv).fused
        return [nrmse(a, b) for a, b in zip(f, data.true_maps)], ch.lambda_chem, ch.lambda_tv, time.time()-t
    ec, lc, lt, t = run({"spectrum": data.spectrum, "to_maps": tm}, maps)
    print(f"{specimen} {dose:g} seed {seed} counts: {np.round(ec,3).tolist()} ({lc:.3g},{lt:.3g}) {t:.0f}s", flush=True)
    for v in variants:
        auto.recorrupt = orig; settings = S
        if v == "oracle":
            rng = np.random.default_rng(1); d2 = 0
            for _ in range(8):
                a = thin_counts(data.spectrum, 0.5, rng); d2 = d2 + (tm(a, False) - tm(data.spectrum - a, False))**2 / 8
            VAR["maps"] = [np.maximum(ndimage.uniform_filter(d, 5, mode="reflect"), 0) / mx[k,0,0]**2 for k, d in enumerate(d2)]
            auto.recorrupt = recorrupt_map
        elif v.startswith("local"):
            w = int(v[5:]); VAR["maps"] = [resid_var(s, w) for s in scaled]; auto.recorrupt = recorrupt_map
        elif v == "folds4":
            settings = dataclasses.replace(S, folds=4)
        VAR["k"] = 0
        es, lc, lt, t = run({"maps": scaled}, scaled, settings)
        print(f"   {v:8s}: {np.round(es,3).tolist()} ratio {np.mean(es)/np.mean(ec):.3f} per-el {np.round(np.array(es)/ec,2).tolist()} ({lc:.3g},{lt:.3g}) {t:.0f}s", flush=True)
