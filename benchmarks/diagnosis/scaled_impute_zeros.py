# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Scaled maps: can the noise under the clipped zeros be recovered? VARIANT 'impute' replaces each exact
zero of a map by a draw of N(0, s0^2) below zero (s0 from the windows about half clipped, as the noise
model's bin at mean 0) and draws the recorrupted noise from box5(r^2) of that imputed map; 'floor'
keeps the map and floors the variance near zeros at s0^2; 'none' is the committed code. The counts'
choice is cached in /tmp/d/counts_SEED.json. The job's own search, 128 px, 30 iterations.
Usage: VARIANT SEEDS CASES, e.g. impute 4000,5000 all  (or layers:20,columns:5)
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_impute_zeros.py ...
"""
import sys, json, os, numpy as np
from scipy import ndimage, stats
import emfuse.pipeline.fusion.auto as auto
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.fusion.noise import local_variance
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
variant = sys.argv[1]; seeds = [int(s) for s in sys.argv[2].split(",")]
cases = [(s, d) for s in SPEC for d in (5, 20, 80)] if sys.argv[3] == "all" else [(c.split(":")[0], int(c.split(":")[1])) for c in sys.argv[3].split(",")]
S = SearchSettings(n_iter=30)
def zero_sd(y):
    zero_share = ndimage.uniform_filter((y == 0).astype(float), 5, mode="reflect")
    inner = np.zeros(y.shape, bool); inner[1:-1, 1:-1] = True
    half = inner & (np.abs(zero_share - 0.5) <= 0.15) & (y > 0)
    if half.sum() < 64: return None
    return float(np.sqrt(np.mean(y[half] ** 2)))
def rec(image, v, p, rng):
    y = np.asarray(image, float); a = np.sqrt((1 - p) / p)
    s0 = zero_sd(y)
    if variant == "impute" and s0 is not None and (y == 0).any():
        u = y.copy(); zeros = y == 0
        # latent value of a clipped pixel: N(0, s0^2) below 0
        q = rng.uniform(0, 0.5, zeros.sum())
        u[zeros] = s0 * stats.norm.ppf(q)
        v = local_variance(u)
        z = rng.standard_normal(y.shape) * np.sqrt(v)
        return np.maximum(u + a * z, 0), u - z / a
    if variant == "floor" and s0 is not None:
        near = ndimage.maximum_filter(y == 0, size=3, mode="nearest")
        v = np.where(near, np.maximum(v, s0 ** 2), v)
    z = rng.standard_normal(y.shape) * np.sqrt(v)
    return np.maximum(y + a * z, 0), y - z / a
auto.recorrupt = rec
os.makedirs("/tmp/d", exist_ok=True)
rows = []
for seed in seeds:
    cache = f"/tmp/d/counts_{seed}.json"; cc = json.load(open(cache)) if os.path.exists(cache) else {}
    for specimen, dose in cases:
        data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
        tm = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
        maps = tm(data.spectrum); scaled = maps / maps.max(axis=(1, 2), keepdims=True)
        key = f"{specimen}:{dose}"
        if key not in cc:
            c = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=S, spectrum=data.spectrum, to_maps=tm)
            f = fuse(data.haadf, maps, data.z, warn=False, n_iter=30, lambda_chem=c.lambda_chem, lambda_tv=c.lambda_tv).fused
            cc[key] = [c.lambda_chem, c.lambda_tv, float(np.mean([nrmse(a, t) for a, t in zip(f, data.true_maps)]))]
            json.dump(cc, open(cache, "w"))
        c = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=S, maps=scaled)
        f = fuse(data.haadf, scaled, data.z, warn=False, n_iter=30, lambda_chem=c.lambda_chem, lambda_tv=c.lambda_tv).fused
        es = float(np.mean([nrmse(a, t) for a, t in zip(f, data.true_maps)]))
        ratio = es / cc[key][2]; rows.append(ratio)
        print(f"{variant} {seed} {specimen:9s} {dose:3d} counts {cc[key][2]:.3f} ({cc[key][0]:.3g},{cc[key][1]:.3g}) scaled {es:.3f} ({c.lambda_chem:.3g},{c.lambda_tv:.3g}) ratio {ratio:.3f}", flush=True)
r = np.array(rows); print(variant, seeds, "within 10%:", (r <= 1.10).sum(), "/", r.size, "worst", r.max().round(3), "mean", r.mean().round(3))
