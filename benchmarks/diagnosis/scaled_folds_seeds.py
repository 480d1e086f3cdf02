# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

The automatic choice on maps divided by their maximum against the choice on the counts (the cases of
benchmarks/auto_lambda_scaled.py, 128 px), with the count splits' and the recorrupted draws' numbers
of folds set apart, on any seeds (held-out seeds: 4000, 5000).
Usage: SEARCH(small|default) FOLDS_COUNTS FOLDS_SCALED SEEDS [JSON], e.g. default 2 2 4000,5000.
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_folds_seeds.py ...
(Four scaled draws were measured with a SearchSettings.folds_recorrupted field, since reverted; each
chooser's number of folds is now SearchSettings.folds.)
"""
import sys, json, dataclasses
import numpy as np
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
search, fc, fs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seeds = [int(s) for s in sys.argv[4].split(",")]
grid = {"coarse": 3, "lattice": 2.0} if search == "small" else {}
S = SearchSettings(n_iter=30, **grid)
rows = []
for seed in seeds:
  for specimen in SPEC:
    for dose in (5, 20, 80):
        data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
        tm = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
        maps = tm(data.spectrum); scaled = maps / maps.max(axis=(1, 2), keepdims=True)
        res = {}
        for name, kw, m, folds in (("counts", dict(spectrum=data.spectrum, to_maps=tm), maps, fc), ("scaled", dict(maps=scaled), scaled, fs)):
            c = choose_lambdas(data.haadf, data.z, params={"n_iter": 30},
                               settings=dataclasses.replace(S, folds=folds), **kw)
            f = fuse(data.haadf, m, data.z, warn=False, n_iter=30, lambda_chem=c.lambda_chem, lambda_tv=c.lambda_tv).fused
            res[name] = (c.lambda_chem, c.lambda_tv, [nrmse(a, t) for a, t in zip(f, data.true_maps)])
        ratio = np.mean(res["scaled"][2]) / np.mean(res["counts"][2])
        rows.append(dict(seed=seed, specimen=specimen, dose=dose, counts=res["counts"], scaled=res["scaled"], ratio=ratio))
        print(f"{search} {fc}/{fs} {seed} {specimen:9s} {dose:3d} counts {np.mean(res['counts'][2]):.3f} ({res['counts'][0]:.3g},{res['counts'][1]:.3g}) "
              f"scaled {np.mean(res['scaled'][2]):.3f} ({res['scaled'][0]:.3g},{res['scaled'][1]:.3g}) ratio {ratio:.3f}", flush=True)
r = np.array([x["ratio"] for x in rows])
print(search, fc, fs, "within 10%:", (r <= 1.10).sum(), "/", r.size, "worst", r.max(), "mean", r.mean())
if len(sys.argv) > 5:
    json.dump(rows, open(sys.argv[5], "w"))
