# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Is the scaled maps' miss noise or bias? For one case (128 px, 30 iterations) every candidate of a
sqrt(2) lattice (lambda_chem 2^-7..2, lambda_tv 2^-6..4) is fused on the job's two folds, for the
count split and for the recorrupted maps, keeping each pixel's contribution to the held-out score, and
the truth error of the full fusion. `--analyse` then compares the plain minimum with the
one-standard-error rule (the smallest lambda_chem whose paired score difference to the minimum is
within k standard errors of the held-out noise).
Usage: SPECIMEN DOSE SEED  |  --analyse
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_score_bias.py ...
(npz files go to /tmp/d/.)
"""
import os, sys, glob
import numpy as np
os.makedirs("/tmp/d", exist_ok=True)
if sys.argv[1:] == ["--analyse"]:
    def choose(contrib, rule, mult=1.0):
        s = contrib.sum(-1).mean(-1)  # (ch, tv)
        i, j = np.unravel_index(np.argmin(s), s.shape)
        if rule == "min": return i, j
        b = contrib[i, j]  # (folds, pix)
        d = contrib - b  # (ch,tv,folds,pix)
        D = d.sum(-1).mean(-1)
        F, n = b.shape
        se = np.sqrt((n * d.var(-1)).sum(-1)) / F
        ok = D <= mult * se
        cand = [(k, l) for k, l in zip(*np.nonzero(ok))]
        k = min(cand, key=lambda p: (p[0], s[p]))
        return k
    for fn in sorted(glob.glob("/tmp/d/se_*.npz")):
        r = np.load(fn); t = r["truth"]; ch, tv = r["ch"], r["tv"]
        ib, jb = np.unravel_index(np.argmin(t), t.shape)
        line = f"{fn[7:-4]:22s} best ({ch[ib]:.3g},{tv[jb]:.3g}) {t.min():.3f} |"
        for rule, mult in (("min", 0), ("se", 0.5), ("se", 1.0)):
            out = {}
            for name in ("counts", "scaled"):
                i, j = choose(r[name + "_contrib"], rule, mult); out[name] = (i, j)
            ec, es = t[out["counts"]], t[out["scaled"]]
            line += f" {rule}{mult:g}: c ({ch[out['counts'][0]]:.3g},{tv[out['counts'][1]]:.3g}) {ec/t.min():.3f} s ({ch[out['scaled'][0]]:.3g},{tv[out['scaled'][1]]:.3g}) {es/t.min():.3f} ratio {es/ec:.3f} |"
        print(line)
    sys.exit()
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion import auto
from emfuse.pipeline.fusion.model import Normalisation
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
specimen, dose, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
tm = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
maps = tm(data.spectrum); scaled = maps / maps.max(axis=(1, 2), keepdims=True)
ch = 2.0 ** (np.arange(-14, 3) / 2)  # 2^-7..2^1
tv = 2.0 ** (np.arange(-12, 5) / 2)  # 2^-6..2^2
truth = np.array([[np.mean([nrmse(x, t) for x, t in zip(fuse(data.haadf, maps, data.z, warn=False, n_iter=30, lambda_chem=a, lambda_tv=b).fused, data.true_maps)]) for b in tv] for a in ch])
S = auto.SearchSettings(n_iter=30, folds=2)
res = {"truth": truth, "ch": ch, "tv": tv}
for name, m, kw in (("counts", maps, dict(spectrum=data.spectrum, to_maps=tm)), ("scaled", scaled, dict(maps=scaled))):
    norm = Normalisation.from_data(data.haadf, m)
    noise = None if name == "counts" else auto.estimate_map_noise(scaled)
    split = auto._splits(None if name == "counts" else scaled, kw.get("spectrum"), kw.get("to_maps"), S, noise)
    pn = auto.scaled_normalisation(norm, split.fraction)
    contrib = np.zeros((ch.size, tv.size, len(split.folds), data.haadf.size), np.float32)
    for i, a in enumerate(ch):
        for j, b in enumerate(tv):
            for f, (train, test) in enumerate(split.folds):
                fused = fuse(data.haadf, train, data.z, normalisation=pn, warn=False, n_iter=30, lambda_chem=a, lambda_tv=b).fused
                c = 0  # per pixel: auto.heldout_scores' affine-calibrated residual (it returns only the sum)
                for x, y in zip(np.asarray(fused, np.float64), np.asarray(test, np.float64)):
                    x, y = x.ravel(), y.ravel(); xc = x - x.mean(); yc = y - y.mean()
                    r = yc - (xc @ yc) / (xc @ xc) * xc
                    c = c + r * r / y.size / y.var() / len(data.z)
                contrib[i, j, f] = c
    res[name + "_contrib"] = contrib
np.savez(f"/tmp/d/se_{specimen}_{int(dose)}_{seed}.npz", **res)
print("done", specimen, dose, seed)
