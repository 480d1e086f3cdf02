# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Maps that are not counts split by binomial thinning of pseudo-counts (maps / gain, rounded) instead of
recorrupted gaussian pairs. GAIN: 'oracle' (1/max: one count of the unscaled maps) or 'fit' (estimate_noise's gain).
Usage: CASES GAIN, e.g. layers:20:15000,columns:5:13000 oracle.
Run from the repository root: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_pseudo_count_thinning.py ...
"""
import sys
import numpy as np
import emfuse.pipeline.fusion.auto as auto
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas, thin_counts, _Folds, CRITERION_MAPS
from emfuse.pipeline.fusion.noise import estimate_noise
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
cases = [tuple(c.split(":")) for c in sys.argv[1].split(",")]
how = sys.argv[2]
S = SearchSettings(n_iter=30)
original = auto._splits
GAIN = {}
def pseudo_splits(maps, spectrum, to_maps, settings, noise=None):
    if spectrum is not None or auto.is_counts(auto.to_numpy(maps)):
        return original(maps, spectrum, to_maps, settings, noise)
    maps = auto.to_numpy(maps); rng = np.random.default_rng(settings.seed)
    gains = [GAIN["oracle"][k] if how == "oracle" else estimate_noise(m).gain for k, m in enumerate(maps)]
    n = np.stack([np.rint(m / g) for m, g in zip(maps, gains)]).astype(np.int64)
    folds = []
    for _ in range(settings.folds):
        kept = thin_counts(n, settings.split, rng)
        folds.append((kept * np.array(gains)[:, None, None], (n - kept) * np.array(gains)[:, None, None]))
    return _Folds("pseudo-counts", settings.split, folds)
auto._splits = pseudo_splits
rows = []
for specimen, dose, seed in cases:
    dose, seed = int(dose), int(seed)
    data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
    tm = lambda s: np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])
    maps = tm(data.spectrum); mx = maps.max(axis=(1, 2), keepdims=True); scaled = maps / mx
    GAIN["oracle"] = (1.0 / mx).ravel()
    fit = [estimate_noise(m).gain for m in scaled]
    res = {}
    for name, kw, m in (("counts", dict(spectrum=data.spectrum, to_maps=tm), maps), ("scaled", dict(maps=scaled), scaled)):
        c = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=S, **kw)
        f = fuse(data.haadf, m, data.z, warn=False, n_iter=30, lambda_chem=c.lambda_chem, lambda_tv=c.lambda_tv).fused
        res[name] = (c.lambda_chem, c.lambda_tv, np.mean([nrmse(a, t) for a, t in zip(f, data.true_maps)]))
    r = res['scaled'][2] / res['counts'][2]; rows.append(r)
    print(f"{how} {specimen} {dose} {seed} gain fit/oracle {np.round(np.array(fit) * mx.ravel(), 2).tolist()} counts {res['counts'][2]:.3f} ({res['counts'][0]:.3g},{res['counts'][1]:.3g}) scaled {res['scaled'][2]:.3f} ({res['scaled'][0]:.3g},{res['scaled'][1]:.3g}) ratio {r:.3f}", flush=True)
print(how, "within 10%:", sum(x <= 1.1 for x in rows), "/", len(rows), "mean", np.mean(rows), "worst", max(rows))
