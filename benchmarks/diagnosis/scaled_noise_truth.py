# ruff: noqa: E701, E702, B023
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

True variance of the unclipped synthetic maps (count split in halves) against the fitted model and box5(r^2), binned by the local mean (seed 1000).
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_noise_truth.py ...
"""
import numpy as np

from emfuse.pipeline.fusion.auto import thin_counts
from emfuse.pipeline.fusion.noise import estimate_noise, local_mean, local_variance
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPEC = {"columns": ("Sr", "Ti", "O"), "layers": ("Ga", "As", "Al")}
for specimen, dose in [("layers",80),("columns",20),("columns",5)]:
    data = make_spectrum_image((128,128), SPEC[specimen], specimen=specimen, dose=dose, seed=1000)
    def tm(s, c=True):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements, clip_negative=c)[0])
    maps = tm(data.spectrum); mx = maps.max(axis=(1,2)); rng = np.random.default_rng(0); d2 = 0
    for _ in range(8):
        a = thin_counts(data.spectrum, 0.5, rng); d2 = d2 + (tm(a, False) - tm(data.spectrum - a, False))**2 / 8
    for k, el in enumerate(data.elements):
        m = local_mean(maps[k]).ravel(); order = np.argsort(m); est = estimate_noise(maps[k]/mx[k])
        lv = local_variance(maps[k]).ravel()
        rows = []
        for ch in np.array_split(order, 6):
            c = m[ch].mean(); rows.append(f"{c:.2f}: {d2[k].ravel()[ch].mean():.2f} / {(est.gain*c/mx[k]+est.offset_var)*mx[k]**2:.2f} / {lv[ch].mean():.2f}")
        print(f"| {specimen} {dose}, seed 1000 | {el} | {(maps[k]==0).mean()*100:.0f} % | " + ", ".join(rows) + " |", flush=True)
