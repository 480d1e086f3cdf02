# ruff: noqa: E501, B023
"""Exploratory diagnosis, a record of measurements for the HAADF weight fit (not part of the package).

With the HAADF model fitted (weights and gamma, benchmarks/haadf_weight_fit.py) the weakest element's
weight comes out small (O in the oxides), so its map is left mostly to its own Poisson + TV terms, under
joint weights chosen for all elements. Could the weakest element's own (lambda_chem, lambda_tv) then close
the gap where the fit alone fails (dose 5, layers)? An oracle, with the truth: its own weights times
2^b, 2^a (the grid of benchmarks/per_element_oracle.py) with the others held at the joint choice; the best
point by the weakest element's NRMSE among those meeting the criterion against the default fusion (Z
weights, gamma 1.6): other elements at most +2 % (so: is the criterion reachable at all?).
Run from the repository root:
    PYTHONPATH=. OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 /work/main/.venv/bin/python benchmarks/diagnosis/haadf_fit_own_weights.py 1000 columns:5,particles:5,layers:5,layers:20,layers:80
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from haadf_weight_fit import fit_case, weights_as  # noqa: E402
from per_element_oracle import CHEM_STEPS, SPECIMENS, TV_STEPS  # noqa: E402

from emfuse.pipeline.fusion import fuse  # noqa: E402
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas, thin_counts  # noqa: E402
from emfuse.pipeline.fusion.model import Normalisation, haadf_weights  # noqa: E402
from emfuse.pipeline.metrics import nrmse  # noqa: E402
from emfuse.pipeline.spectra import elemental_maps  # noqa: E402
from emfuse.pipeline.synth import make_spectrum_image  # noqa: E402

seed = int(sys.argv[1])
cases = [(c.split(":")[0], float(c.split(":")[1])) for c in sys.argv[2].split(",")]
S = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
for sp, dose in cases:
    data = make_spectrum_image((128, 128), SPECIMENS[sp], specimen=sp, dose=dose, seed=seed)

    def tm(s):
        return np.asarray(elemental_maps(s, data.energy_ev, data.elements)[0])

    maps = tm(data.spectrum)
    norm = Normalisation.from_data(data.haadf, maps)
    rng = np.random.default_rng(7)
    halves = []
    for _ in range(2):
        a = thin_counts(data.spectrum, 0.5, rng)
        halves.append((tm(a), tm(data.spectrum - a)))
    fit = fit_case(data.haadf, halves, norm)
    g, n, e = fit["gamma"], len(data.z), int(np.argmin(data.z))

    def run(w, gamma, chem, tv):
        with weights_as(w):
            f = fuse(data.haadf, maps, data.z, warn=False, n_iter=30, gamma=gamma, lambda_chem=chem, lambda_tv=tv).fused
        return [nrmse(a, b) for a, b in zip(f, data.true_maps)]

    ch = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=tm, params={"n_iter": 30}, settings=S)
    default = run(haadf_weights(data.z), 1.6, ch.lambda_chem, ch.lambda_tv)
    w = np.array(fit["weights"][g])
    with weights_as(w):
        ch = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=tm, params={"n_iter": 30, "gamma": g}, settings=S)
    lc, lt = ch.lambda_chem, ch.lambda_tv
    joint = run(w, g, lc, lt)
    best = None
    for b in CHEM_STEPS:
        for a in TV_STEPS:
            chem, tv = [lc] * n, [lt] * n
            chem[e], tv[e] = lc * 2.0**b, lt * 2.0**a
            err = run(w, g, chem, tv)
            ok = all(err[i] <= 1.02 * default[i] for i in range(n) if i != e)
            if ok and (best is None or err[e] < best[0][e]):
                best = (err, b, a)
    fmt = lambda v: "/".join(f"{x:.3f}" for x in v)  # noqa: E731
    line = (f"{sp} {dose:g} seed {seed} {'/'.join(data.elements)}: default {fmt(default)}; fit+gamma (g {g:g}, "
            f"w {fmt(w)}, ({lc:.3g}, {lt:.3g})) {fmt(joint)}; ")
    if best:
        err, b, a = best
        line += (f"best own weights of {data.elements[e]} (2^{b}, 2^{a}) {fmt(err)}, ratio to default "
                 f"{fmt([x / d for x, d in zip(err, default)])}")
    else:
        line += "no own weights keep the others within +2 % of default"
    print(line, flush=True)
