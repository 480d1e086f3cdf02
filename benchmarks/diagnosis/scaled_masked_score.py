# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Scaled maps, recorrupted pairs: the held-out score taken only where each element's map has no exact zero
in the 3 x 3 neighbourhood (where the gaussian model of the recorrupted parts holds), against the committed
score on every pixel. Counts from the benchmark's JSON (docs/figures/auto_lambda_scaled_seed{SEED}.json).
Usage: SEED [MIN_FRACTION]
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_masked_score.py 1000
"""
import json
import sys

import numpy as np
from scipy import ndimage

import emfuse.pipeline.fusion.auto as auto
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
seed = int(sys.argv[1]); min_fraction = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
ref = {(r["specimen"], r["dose"]): r for r in json.load(open(f"docs/figures/auto_lambda_scaled_seed{seed}.json"))["synthetic"]}
orig = auto.heldout_scores
MASKS = {"m": None}
def masked_scores(fused, heldout, mask=None):
    out = []
    for k, (x, y) in enumerate(zip(np.asarray(fused, np.float64), np.asarray(heldout, np.float64))):
        m = MASKS["m"][k]
        keep = m if m.mean() >= min_fraction else np.ones_like(m)
        out.append(orig(x[None], y[None], keep)[0])
    return np.array(out)
ratios = []
for specimen in SPEC:
    for dose in (5.0, 20.0, 80.0):
        data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
        maps = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements)[0]); scaled = maps / maps.max(axis=(1, 2), keepdims=True)
        ys, xs = auto.central_crop(data.haadf.shape, S.crop)
        MASKS["m"] = [ndimage.minimum_filter((m[ys, xs] > 0).astype(np.uint8), 3, mode="nearest").astype(bool) for m in scaled]
        auto.heldout_scores = masked_scores
        ch = choose_lambdas(data.haadf, data.z, maps=scaled, params={"n_iter": 30}, settings=S)
        auto.heldout_scores = orig
        f = fuse(data.haadf, scaled, data.z, warn=False, n_iter=30, lambda_chem=ch.lambda_chem, lambda_tv=ch.lambda_tv).fused
        e = np.mean([nrmse(a, b) for a, b in zip(f, data.true_maps)]); r = ref[(specimen, dose)]
        c = np.mean(r["counts"]["nrmse"]); s0 = np.mean(r["scaled"]["nrmse"]); ratios.append(e / c)
        print(f"{specimen:>9} {dose:>3g} kept {np.round([m.mean() for m in MASKS['m']], 2).tolist()} counts {c:.3f} scaled now {s0:.3f} "
              f"({s0 / c:.2f}) masked {e:.3f} ({e / c:.2f}) ({ch.lambda_chem:.3g}, {ch.lambda_tv:.3g})", flush=True)
print(f"masked: within 10 % {(np.array(ratios) <= 1.10).sum()} / {len(ratios)}, worst {max(ratios):.2f}")
