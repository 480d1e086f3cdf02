# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

The held-out score surfaces of the count split and of the recorrupted scaled maps, with FOLDS folds,
over a sqrt(2) lattice (lambda_chem 2^-5..1, lambda_tv 2^-4..2), beside the truth error of the full
fusion (128 px, 30 iterations); each printed relative to its own minimum.
Usage: SPECIMEN DOSE SEED FOLDS, e.g. layers 80 4000 8
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_score_grid.py ...
"""
import os
os.makedirs("/tmp/d", exist_ok=True)
import sys, numpy as np
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
specimen, dose, seed, folds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
tm = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
maps = tm(data.spectrum); scaled = maps / maps.max(axis=(1, 2), keepdims=True)
r2 = 2 ** 0.5
S = SearchSettings(n_iter=30, lattice=r2, lambda_chem_range=(2.0**-5, 1.0001), lambda_tv_range=(2.0**-4, 2.0001), coarse=11, widen=0, folds=folds)
out = {}
for name, kw in (("counts", dict(spectrum=data.spectrum, to_maps=tm)), ("scaled", dict(maps=scaled))):
    c = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=S, **kw)
    out[name] = c.score; ch, tv = c.lambda_chem_axis, c.lambda_tv_axis
truth = np.full((ch.size, tv.size, 3), np.nan)
for i, a in enumerate(ch):
    for j, b in enumerate(tv):
        f = fuse(data.haadf, maps, data.z, warn=False, n_iter=30, lambda_chem=a, lambda_tv=b).fused
        truth[i, j] = [nrmse(x, t) for x, t in zip(f, data.true_maps)]
out["truth_el"] = truth; out["truth"] = truth.mean(-1); out["ch"] = ch; out["tv"] = tv
np.savez(f"/tmp/d/g2_{specimen}_{int(dose)}_{seed}_f{folds}.npz", **out)
print("chem", np.round(ch, 4)); print("tv", np.round(tv, 4))
for k in ("truth", "counts", "scaled"):
    a = out[k]; i, j = np.unravel_index(np.nanargmin(a), a.shape)
    print(k, "min at", round(ch[i], 4), round(tv[j], 4), "truth there", round(out["truth"][i, j] / np.nanmin(out["truth"]), 3))
    for r in a / np.nanmin(a): print(" ", " ".join(f"{v:6.3f}" for v in r))
