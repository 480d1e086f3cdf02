# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Is the scaled chooser's miss the recorrupted noise's variance? The oracle is the per-pixel variance of the *clipped*
map over 24 independent Poisson draws of the same expected spectrum (box5-smoothed), drawn in place of box5(r^2).
Usage: CASES MODE, e.g. layers:20:15000,columns:5:13000 oracle (MODE current: the shipped chooser).
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_oracle_clipped_variance.py ...
"""
import sys, json, dataclasses
import numpy as np
from scipy import ndimage
import emfuse.pipeline.fusion.auto as auto
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.fusion.noise import local_variance
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
import emfuse.pipeline.synth.spectrum_image as si
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}

def expected_spectrum(specimen, dose, seed):
    symbols, mode, (ny, nx), dose_, n_channels, fb = si._check_parameters((128,128), SPEC[specimen], specimen, dose, 1024, "EDX", 20.0, None)
    model = si._spectral_model(symbols, mode, n_channels, None, si.FWHM_MNKA_EV, 200.0)
    z = np.array([si.atomic_number(s) for s in symbols])
    specimen_rng, spectrum_rng, haadf_rng = np.random.default_rng(seed).spawn(3)
    maps, support = si.specimen_maps((ny, nx), len(symbols), specimen, pixel_size_nm=si.DEFAULT_PIXEL_SIZE_NM[specimen], seed=specimen_rng)
    flat_maps, thickness = si._pixel_features(maps, support, z)
    mean_signal = float((flat_maps @ model.profiles.sum(axis=1)).mean()); mean_background = float(thickness.mean())
    weights = si._spectrum_weights(model, dose_, fb, mean_signal, mean_background)
    features_px = np.hstack([flat_maps, thickness.reshape(-1, 1)])
    return (features_px @ weights).reshape(ny, nx, -1)

cases = [tuple(c.split(":")) for c in sys.argv[1].split(",")]  # specimen:dose:seed
mode = sys.argv[2]  # current | oracle
S = SearchSettings(n_iter=30)
for specimen, dose, seed in cases:
    dose, seed = int(dose), int(seed)
    data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
    tm = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
    maps = tm(data.spectrum); mx = maps.max(axis=(1, 2), keepdims=True); scaled = maps / mx
    lam = expected_spectrum(specimen, dose, seed); rng = np.random.default_rng(7)
    draws = np.stack([tm(rng.poisson(lam)) for _ in range(24)]) / mx  # clipped maps, scaled as the data
    oracle = draws.var(axis=0)
    zero = scaled == 0
    for k, el in enumerate(data.elements):
        lv = local_variance(scaled[k]); ob = ndimage.uniform_filter(oracle[k], 5, mode="reflect")
        print(f"  {specimen} {dose} {seed} {el}: zeros {zero[k].mean():.0%}; var ratio box5(r2)/oracle at zeros {np.median(lv[zero[k]]) / max(np.median(ob[zero[k]]),1e-12):.2f}, elsewhere {np.median(lv[~zero[k]]) / np.median(ob[~zero[k]]):.2f}", flush=True)
    res = {}
    for name, kw, m in (("counts", dict(spectrum=data.spectrum, to_maps=tm), maps), ("scaled", dict(maps=scaled), scaled)):
        if name == "scaled" and mode == "oracle":
            queue = [ndimage.uniform_filter(o, 5, mode="reflect") for o in oracle]
            def _lookup(m, q=queue):
                i = int(np.argmin([np.abs(s - m).sum() for s in scaled]))
                return q[i]
            auto.local_variance = lambda m, size=5: _lookup(m)
        c = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=S, **kw)
        auto.local_variance = local_variance
        f = fuse(data.haadf, m, data.z, warn=False, n_iter=30, lambda_chem=c.lambda_chem, lambda_tv=c.lambda_tv).fused
        res[name] = (c.lambda_chem, c.lambda_tv, np.mean([nrmse(a, t) for a, t in zip(f, data.true_maps)]))
    print(f"{mode} {specimen} {dose} {seed} counts {res['counts'][2]:.3f} ({res['counts'][0]:.3g},{res['counts'][1]:.3g}) scaled {res['scaled'][2]:.3f} ({res['scaled'][0]:.3g},{res['scaled'][1]:.3g}) ratio {res['scaled'][2]/res['counts'][2]:.3f}", flush=True)
