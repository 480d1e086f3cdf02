# ruff: noqa
"""Exploratory diagnosis, a record of measurements in docs/methods/fusion.md (not part of the package).

Scaled maps: the latent (unclipped) values under a clipped map's zeros, from the same spectrum image
integrated without clipping, against a censored-normal (Tobit) fit on the clipped map's pixels whose
5 x 5 window is at least half zeros.
Run from the repository root: PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_latent_zeros.py
"""
import numpy as np
from scipy import ndimage, optimize, stats
def tobit(y, share=0.5):
    zs = ndimage.uniform_filter((y == 0).astype(float), 5, mode="reflect")
    inner = np.zeros(y.shape, bool); inner[2:-2, 2:-2] = True
    P = inner & (zs >= share)
    v = y[P]; n0 = (v == 0).sum(); pos = v[v > 0]
    if n0 < 64 or pos.size < 64: return None
    def nll(th):
        mu, ls = th; s = np.exp(ls)
        return -(n0 * stats.norm.logcdf(-mu / s) + np.sum(stats.norm.logpdf((pos - mu) / s) - ls))
    r = optimize.minimize(nll, [0.0, np.log(pos.std() + 1e-12)], method="Nelder-Mead")
    return r.x[0], float(np.exp(r.x[1])), int(P.sum())
import numpy as np, sys
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
SPEC = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
for specimen, dose, seed in [("layers", 20, 4000), ("particles", 20, 5000), ("layers", 80, 4000), ("columns", 20, 5000), ("columns", 5, 4000)]:
    data = make_spectrum_image((128, 128), SPEC[specimen], specimen=specimen, dose=dose, seed=seed)
    mc = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements)[0])
    mu = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements, clip_negative=False)[0])
    for k in range(3):
        zs = ndimage.uniform_filter((mc[k] == 0).astype(float), 5, mode="reflect") >= 0.5
        print(specimen, dose, seed, data.elements[k], "latent in P: mean %.3f sd %.3f" % (mu[k][zs].mean(), mu[k][zs].std()) if zs.any() else "", "tobit", tobit(mc[k]))
