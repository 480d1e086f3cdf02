# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

How much the automatic choice itself moves with the random split (``SearchSettings.seed``), on the counts
(count splitting, the reference of issue 12 item 3) and on the same maps divided by their maximum
(recorrupted pairs): for each case, both choosers with search seeds 0..K-1, the truth error of each choice
(NRMSE after an affine fit, mean over elements), the counts' own spread (seed k against seed 0) and
scaled / counts per seed and for the medians over seeds.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/search_seed_spread.py \
        --seed 1000 [--search-seeds 4] [--json out.json]
"""
import argparse
import dataclasses
import json

import numpy as np

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPECIMENS = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}

p = argparse.ArgumentParser(); p.add_argument("--seed", type=int, default=1000); p.add_argument("--search-seeds", type=int, default=4)
p.add_argument("--size", type=int, default=128); p.add_argument("--json"); p.add_argument("--search", default="small")
a = p.parse_args()
base = SearchSettings(n_iter=30, **({"coarse": 3, "lattice": 2.0} if a.search == "small" else {}))
rows = []
for specimen, elements in SPECIMENS.items():
    for dose in (5, 20, 80):
        data = make_spectrum_image((a.size, a.size), elements, specimen=specimen, dose=dose, seed=a.seed)
        to_maps = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])  # noqa: E731
        maps = to_maps(data.spectrum); scaled = maps / maps.max(axis=(1, 2), keepdims=True)
        row = {"specimen": specimen, "dose": dose, "seed": a.seed}
        for name, kw, m in (("counts", {"spectrum": data.spectrum, "to_maps": to_maps}, maps), ("scaled", {"maps": scaled}, scaled)):
            row[name] = []
            for k in range(a.search_seeds):
                ch = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=dataclasses.replace(base, seed=k), **kw)
                f = fuse(data.haadf, m, data.z, warn=False, n_iter=30, lambda_chem=ch.lambda_chem, lambda_tv=ch.lambda_tv).fused
                row[name].append({"lambda": [ch.lambda_chem, ch.lambda_tv], "err": float(np.mean([nrmse(x, t) for x, t in zip(f, data.true_maps)]))})
        c = np.array([r["err"] for r in row["counts"]]); s = np.array([r["err"] for r in row["scaled"]])
        row["counts_self"] = (c[1:] / c[0]).tolist(); row["scaled_over_counts"] = (s / c).tolist()
        row["median_ratio"] = float(np.median(s) / np.median(c))
        rows.append(row)
        print(f"{specimen:>9} {dose:>3} counts {np.round(c, 3).tolist()} scaled {np.round(s, 3).tolist()} "
              f"counts k/0 {np.round(c[1:] / c[0], 2).tolist()} s/c {np.round(s / c, 2).tolist()} median ratio {row['median_ratio']:.3f}", flush=True)
cs = np.array([x for r in rows for x in r["counts_self"]]); sc = np.array([x for r in rows for x in r["scaled_over_counts"]])
mr = np.array([r["median_ratio"] for r in rows])
print(f"counts seed k vs seed 0 within 10 %: {(np.abs(cs - 1) <= 0.10).sum()} / {cs.size} (above 1.10: {(cs > 1.10).sum()}); "
      f"scaled / counts per seed <= 1.10: {(sc <= 1.10).sum()} / {sc.size}; medians over seeds <= 1.10: {(mr <= 1.10).sum()} / {mr.size}")
if a.json:
    json.dump({"settings": dataclasses.asdict(base), "rows": rows}, open(a.json, "w"), indent=1)
