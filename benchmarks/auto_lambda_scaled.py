"""Automatic weights on maps that are not counts, against the same choice on the counts.

Synthetic part: for each specimen and dose, a spectrum image with ground truth is made; the
automatic choice is made once on the counts (count splitting of the spectrum image) and once
on the maps divided by their maximum (no longer counts: recorrupted pairs with a measured noise
model, or pixel hold-out for sparse maps); both are fused and compared with the truth per element
(NRMSE after an affine fit). Published part: the two published datasets, fused with the
automatic weights as `emfuse fuse` chooses them by default, against the fusion at the tutorials'
hand-tuned parameters (per-element correlation).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/auto_lambda_scaled.py \
        [--size 128] [--doses 5 20 80] [--seed 1000] [--search small|default] [--json docs/figures/auto_lambda_scaled.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emfuse.pipeline.fusion import FusionParams, fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPECIMENS = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fusion"
PUBLISHED = {
    "Co3O4/Mn3O4 EELS": ("Co3O4_Mn3O4.h5", "co3o4_mn3o4_eels_tutorial.npz", ("Co", "Mn", "O"), (27, 25, 8)),
    "DyScO3 EDX": ("PTO_Trilayer_dataset.npz", "dysco3_edx_tutorial.npz", ("Sc", "Dy", "O"), (21, 66, 8)),
}


def _case(specimen: str, dose: float, seed: int, size: int) -> tuple[Any, Any]:
    """A synthetic spectrum image and the function that integrates its maps (same windows)."""
    data = make_spectrum_image((size, size), SPECIMENS[specimen], specimen=specimen, dose=dose, seed=seed)

    def to_maps(spectrum: np.ndarray) -> np.ndarray:
        return np.asarray(elemental_maps(spectrum, data.energy_ev, data.elements)[0])

    return data, to_maps


def synthetic_case(specimen: str, dose: float, seed: int, size: int, settings: SearchSettings,
                   n_iter: int) -> dict[str, Any]:
    data, to_maps = _case(specimen, dose, seed, size)
    maps = to_maps(data.spectrum)
    scaled = maps / maps.max(axis=(1, 2), keepdims=True)
    row: dict[str, Any] = {"specimen": specimen, "dose": dose, "seed": seed, "size": size,
                           "elements": list(data.elements)}
    for name, kw, m in (("counts", {"spectrum": data.spectrum, "to_maps": to_maps}, maps),
                        ("scaled", {"maps": scaled}, scaled)):
        choice = choose_lambdas(data.haadf, data.z, params={"n_iter": n_iter}, settings=settings, **kw)
        fused = fuse(data.haadf, m, data.z, warn=False, n_iter=n_iter, lambda_chem=choice.lambda_chem,
                     lambda_tv=choice.lambda_tv).fused
        row[name] = {"criterion": choice.criterion, "lambda_chem": choice.lambda_chem,
                     "lambda_tv": choice.lambda_tv, "seconds": round(choice.seconds, 1),
                     "nrmse": [nrmse(f, t) for f, t in zip(fused, data.true_maps)]}
    row["raw_nrmse"] = [nrmse(m, t) for m, t in zip(maps, data.true_maps)]
    row["ratio"] = [s / c for s, c in zip(row["scaled"]["nrmse"], row["counts"]["nrmse"])]
    row["mean_ratio"] = float(np.mean(row["scaled"]["nrmse"]) / np.mean(row["counts"]["nrmse"]))
    return row


def per_element_case(specimen: str, dose: float, seed: int, size: int, settings: SearchSettings,
                     n_iter: int) -> dict[str, Any]:
    """Joint TV weight against one TV weight per element (both chosen on held-out counts)."""
    data, to_maps = _case(specimen, dose, seed, size)
    maps = to_maps(data.spectrum)
    choice = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=to_maps, params={"n_iter": n_iter},
                            settings=dataclasses.replace(settings, per_element_tv=True))
    row: dict[str, Any] = {"specimen": specimen, "dose": dose, "seed": seed, "elements": list(data.elements),
                           "lambda_chem": choice.lambda_chem, "lambda_tv": choice.lambda_tv,
                           "lambda_tv_per_element": list(choice.lambda_tv_per_element)}
    for name, tv in (("joint", choice.lambda_tv), ("per_element", choice.lambda_tv_per_element)):
        fused = fuse(data.haadf, maps, data.z, warn=False, n_iter=n_iter, lambda_chem=choice.lambda_chem,
                     lambda_tv=tv).fused
        row[name] = [nrmse(f, t) for f, t in zip(fused, data.true_maps)]
    return row


def tutorial_params(bundle: str) -> dict[str, Any]:
    """The hand-tuned fusion parameters of a tutorial bundle (the reference, never the method's input)."""
    with np.load(DATA / bundle) as d:
        return dict(gamma=float(d["gamma"]), lambda_chem=float(d["lambdaChem"]), lambda_tv=float(d["lambdaTV"]),
                    n_iter=int(d["nIter"]), n_iter_tv=int(d["nIter_TV"]), bkg=float(d["bkg"]),
                    init_threshold=float(d["init_threshold"]))


def _read(name: str, elements: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    path = DATA / name
    if path.suffix == ".h5":
        with h5py.File(path, "r") as fh:
            return fh["HAADF"][()], np.stack([fh[e][()] for e in elements])
    with np.load(path) as d:
        return d["HAADF"], np.stack([d[e] for e in elements])


def published_case(label: str) -> dict[str, Any]:
    original, tutorial, elements, z = PUBLISHED[label]
    haadf, maps = _read(original, elements)  # the original file: no parameter is read from it
    choice = choose_lambdas(haadf, z, maps=maps)
    ours = fuse(haadf, maps, z, warn=False, lambda_chem=choice.lambda_chem, lambda_tv=choice.lambda_tv).fused
    params = tutorial_params(tutorial)
    reference = fuse(haadf, maps, z, warn=False, **params).fused

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    return {"dataset": label, "elements": list(elements), "criterion": choice.criterion,
            "lambda_chem": choice.lambda_chem, "lambda_tv": choice.lambda_tv, "tutorial": params,
            "noise": [m.record() for m in choice.noise or ()], "at_edge": list(choice.at_edge),
            "seconds": round(choice.seconds, 1),
            "corr_default_vs_tutorial": [corr(a, b) for a, b in zip(ours, reference)],
            "corr_raw_vs_tutorial": [corr(a, b) for a, b in zip(maps, reference)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--doses", type=float, nargs="+", default=[5, 20, 80])
    parser.add_argument("--specimens", nargs="+", default=list(SPECIMENS), choices=list(SPECIMENS))
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--n-iter", type=int, default=30)
    parser.add_argument("--no-published", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--per-element", action="store_true",
                        help="instead: joint vs per-element TV weights on the counts (no published part)")
    parser.add_argument("--search", choices=("small", "default"), default="small",
                        help="small: coarse 3 x 3 grid, lattice ratio 2 (fast); default: the job's own "
                             "search (coarse 4 x 4, lattice ratio 2**0.5), what `emfuse fuse` runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    grid = {"coarse": 3, "lattice": 2.0} if args.search == "small" else {}
    settings = SearchSettings(n_iter=args.n_iter, **grid)
    start = time.perf_counter()
    rows, published = [], []
    if args.per_element:
        print(f"{'specimen':>9} {'dose':>5} {'element':>7} {'joint':>6} {'per-el':>6} {'ratio':>6}  lambda_tv joint -> per element")
        for specimen in args.specimens:
            for dose in args.doses:
                r = per_element_case(specimen, dose, args.seed, args.size, settings, args.n_iter)
                rows.append(r)
                for k, el in enumerate(r["elements"]):
                    print(f"{specimen:>9} {dose:>5g} {el:>7} {r['joint'][k]:>6.3f} {r['per_element'][k]:>6.3f} "
                          f"{r['per_element'][k] / r['joint'][k]:>6.3f}  {r['lambda_tv']:.3g} -> "
                          f"{r['lambda_tv_per_element'][k]:.3g}", flush=True)
        args.no_synthetic = args.no_published = True
    if not args.no_synthetic:
        print(f"{'specimen':>9} {'dose':>5} {'element':>7} {'raw':>6} {'counts':>6} {'scaled':>6} {'ratio':>6}  "
              "auto counts (lc, lt) | auto scaled (lc, lt), criterion")
        for specimen in args.specimens:
            for dose in args.doses:
                r = synthetic_case(specimen, dose, args.seed, args.size, settings, args.n_iter)
                rows.append(r)
                for k, el in enumerate(r["elements"]):
                    print(f"{specimen:>9} {dose:>5g} {el:>7} {r['raw_nrmse'][k]:>6.3f} {r['counts']['nrmse'][k]:>6.3f} "
                          f"{r['scaled']['nrmse'][k]:>6.3f} {r['ratio'][k]:>6.3f}  "
                          f"({r['counts']['lambda_chem']:.3g}, {r['counts']['lambda_tv']:.3g}) | "
                          f"({r['scaled']['lambda_chem']:.3g}, {r['scaled']['lambda_tv']:.3g}), {r['scaled']['criterion']}",
                          flush=True)
        ratios = np.array([r["mean_ratio"] for r in rows])
        print(f"mean-over-elements ratio: worst {ratios.max():.3f}, mean {ratios.mean():.3f}, "
              f"within 10 %: {(ratios <= 1.10).sum()} / {ratios.size}")
    if not args.no_published:
        for label in PUBLISHED:
            p = published_case(label)
            published.append(p)
            print(f"{label}: auto ({p['lambda_chem']:.3g}, {p['lambda_tv']:.3g}) by {p['criterion']}; corr default vs "
                  f"tutorial {np.round(p['corr_default_vs_tutorial'], 3).tolist()}, raw vs tutorial "
                  f"{np.round(p['corr_raw_vs_tutorial'], 3).tolist()}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s; search {dataclasses.asdict(settings)}; "
          f"fusion {FusionParams().to_dict()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"settings": dataclasses.asdict(settings), "synthetic": rows, "published": published}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
