"""Oracle of per-element weights: how far can one element's own weights lower its error?

On synthetic spectrum images with ground truth (three specimens, three doses, two seeds), the
automatic joint choice ``(lambda_chem, lambda_tv)`` is made on held-out counts as ``emfuse``
makes it (count splitting of the spectrum image; the small search of
``benchmarks/auto_lambda_scaled.py``). Then, with the truth (an oracle, which no automatic choice
has), each element's own weights are moved with the other elements' held at the joint choice:

* ``lambda_chem`` of that element times ``2^b`` and its ``lambda_tv`` times ``2^a`` (a grid), with
  the solver's per-element weights (``fuse(..., lambda_chem=[...], lambda_tv=[...])``);
* mechanism test, lowest-Z element only: its weight in the HAADF model ``w_e`` times
  ``0, 1/4, 1/2, 2`` (emulated here by patching :func:`haadf_weights` in the solver), with the same
  grid of its own two weights.

Reported per element: NRMSE (after an affine fit) of the raw map, of the best gaussian blur of the
raw map (oracle sigma), of the joint fusion, and the oracle's best point whose other elements stay
within 1 % of their joint error ("admissible"). Also how much of each element's error is the other
elements' structure ("crosstalk": R^2 of the error, after the affine fit, regressed on the other
elements' true maps), for the joint fusion and for the blur.

    cd /tmp/wt/perelem && PYTHONPATH=. OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        /work/main/.venv/bin/python benchmarks/per_element_oracle.py --seeds 1000 2000 \
        --json docs/figures/per_element_oracle.json

(24-28 min on 2 busy cores; ``--size 128``, ``--n-iter 30`` by default). The tables of
``docs/methods/fusion.md``: ``... per_element_oracle.py --summary docs/figures/per_element_oracle.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

import emfuse.pipeline.fusion.solver as solver
from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas
from emfuse.pipeline.fusion.model import haadf_weights
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPECIMENS = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
CHEM_STEPS = (-2, -1, 0, 1, 2, 3, 4, 5, 6)  # lambda_chem of the element times 2^b
TV_STEPS = (-3, -2, -1, 0, 1, 2, 3, 4, 5)  # lambda_tv of the element times 2^a
HAADF_WEIGHT_FACTORS = (0.0, 0.25, 0.5, 2.0)  # mechanism test: w_e times this
BLUR_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
TOLERANCE = 0.01  # the other elements may rise by at most this (relative) at an admissible point


@contextlib.contextmanager
def haadf_weight_factor(element: int, factor: float) -> Iterator[None]:
    """Within the block, ``fuse`` uses ``w_element * factor`` in the HAADF model (an emulation)."""
    original = solver.haadf_weights

    def patched(z: Any) -> np.ndarray:
        w = original(z)
        w[element] *= factor
        return w

    solver.haadf_weights = patched
    try:
        yield
    finally:
        solver.haadf_weights = original


def crosstalk(estimate: np.ndarray, truth: np.ndarray, others: np.ndarray) -> float:
    """R^2 of the estimate's error (after an affine fit to its truth) regressed on the other truths."""
    est, ref = estimate.ravel().astype(np.float64), truth.ravel().astype(np.float64)
    design = np.stack([est, np.ones_like(est)], axis=1)
    error = design @ np.linalg.lstsq(design, ref, rcond=None)[0] - ref
    basis = np.column_stack([o.ravel() for o in others] + [np.ones_like(est)])
    fit = basis @ np.linalg.lstsq(basis, error, rcond=None)[0]
    return float(1.0 - ((error - fit) ** 2).sum() / max(((error - error.mean()) ** 2).sum(), 1e-300))


def best_blur(raw: np.ndarray, truth: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(NRMSE, sigma, image) of the gaussian blur of ``raw`` closest to ``truth`` (oracle sigma)."""
    results = [(nrmse(b, truth), s, b) for s in BLUR_SIGMAS for b in [ndimage.gaussian_filter(raw, s)]]
    return min(results, key=lambda r: r[0])


def run_case(specimen: str, dose: float, seed: int, size: int, n_iter: int) -> dict[str, Any]:
    data = make_spectrum_image((size, size), SPECIMENS[specimen], specimen=specimen, dose=dose, seed=seed)

    def to_maps(spectrum: np.ndarray) -> np.ndarray:
        return np.asarray(elemental_maps(spectrum, data.energy_ev, data.elements)[0])

    maps = to_maps(data.spectrum)
    truth = data.true_maps
    n = len(data.elements)
    settings = SearchSettings(coarse=3, lattice=2.0, n_iter=n_iter)
    choice = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=to_maps,
                            params={"n_iter": n_iter}, settings=settings)
    lc, lt = choice.lambda_chem, choice.lambda_tv

    def errors(chem: Any, tv: Any) -> list[float]:
        fused = fuse(data.haadf, maps, data.z, warn=False, n_iter=n_iter, lambda_chem=chem, lambda_tv=tv).fused
        return [nrmse(f, t) for f, t in zip(fused, truth)]

    joint_fused = fuse(data.haadf, maps, data.z, warn=False, n_iter=n_iter, lambda_chem=lc, lambda_tv=lt).fused
    joint = [nrmse(f, t) for f, t in zip(joint_fused, truth)]
    blurs = [best_blur(m, t) for m, t in zip(maps, truth)]
    others = [np.delete(np.arange(n), e) for e in range(n)]
    row: dict[str, Any] = {
        "specimen": specimen, "dose": dose, "seed": seed, "size": size, "n_iter": n_iter,
        "elements": list(data.elements), "z": [int(v) for v in data.z], "lambda_chem": lc, "lambda_tv": lt,
        "raw": [nrmse(m, t) for m, t in zip(maps, truth)],
        "blur": [b[0] for b in blurs], "blur_sigma": [b[1] for b in blurs], "joint": joint,
        "crosstalk_joint": [crosstalk(joint_fused[e], truth[e], truth[others[e]]) for e in range(n)],
        "crosstalk_blur": [crosstalk(blurs[e][2], truth[e], truth[others[e]]) for e in range(n)],
        "oracle": [], "haadf_weight": [],
    }

    def grid(e: int) -> list[dict[str, Any]]:
        points = []
        for b in CHEM_STEPS:
            for a in TV_STEPS:
                chem, tv = [lc] * n, [lt] * n
                chem[e], tv[e] = lc * 2.0**b, lt * 2.0**a
                points.append({"chem_step": b, "tv_step": a, "nrmse": errors(chem, tv)})
        return points

    def best(e: int, points: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [p for p in points
              if all(p["nrmse"][i] <= (1 + TOLERANCE) * joint[i] for i in others[e])]
        return min(ok, key=lambda p: p["nrmse"][e]) if ok else {}

    for e in range(n):
        points = grid(e)
        row["oracle"].append({
            "element": data.elements[e], "best": best(e, points),
            "best_tv_only": best(e, [p for p in points if p["chem_step"] == 0]),
            "best_chem_only": best(e, [p for p in points if p["tv_step"] == 0]),
            "grid": points,
        })
    weakest = int(np.argmin(data.z))
    row["weakest"] = data.elements[weakest]
    for factor in HAADF_WEIGHT_FACTORS:
        with haadf_weight_factor(weakest, factor):
            points = grid(weakest)
        at_joint = next(p for p in points if p["chem_step"] == 0 and p["tv_step"] == 0)
        row["haadf_weight"].append({"factor": factor, "at_joint": at_joint["nrmse"],
                                    "best": best(weakest, points),
                                    "best_any": min(points, key=lambda p: p["nrmse"][weakest])})
    return row


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 5 decimals (the JSON stays small; NRMSE is read to 3)."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def _steps(p: dict[str, Any]) -> str:
    return f"(2^{p['chem_step']}, 2^{p['tv_step']})" if p else "-"


def _ratios(p: dict[str, Any], joint: list[float]) -> str:
    return " / ".join(f"{v / j:.3f}" for v, j in zip(p["nrmse"], joint)) if p else "none admissible"


def summary(path: str) -> None:
    """Markdown tables of a JSON written by ``--json`` (as in ``docs/methods/fusion.md``)."""
    with open(path) as fh:
        cases = json.load(fh)["cases"]
    print("| specimen | dose | seed | joint (lambda_chem, lambda_tv) | weakest | raw | blur | joint | "
          "own weights best (chem x, tv x) | ratio vs joint (all elements) | TV only | lambda_chem only |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in cases:
        e = r["elements"].index(r["weakest"])
        o = r["oracle"][e]
        tv_only = o["best_tv_only"]["nrmse"][e] / r["joint"][e] if o["best_tv_only"] else float("nan")
        chem_only = o["best_chem_only"]["nrmse"][e] / r["joint"][e] if o["best_chem_only"] else float("nan")
        print(f"| {r['specimen']} | {r['dose']:g} | {r['seed']} | ({r['lambda_chem']:.3g}, {r['lambda_tv']:.3g}) | "
              f"{r['weakest']} | {r['raw'][e]:.3f} | {r['blur'][e]:.3f} | {r['joint'][e]:.3f} | {_steps(o['best'])} | "
              f"{'/'.join(r['elements'])} {_ratios(o['best'], r['joint'])} | {tv_only:.3f} | {chem_only:.3f} |")
    print()
    print("| specimen | dose | seed | " + " | ".join(f"element {k + 1}: own best, ratio of that element" for k in range(3))
          + " |")
    print("|---|---|---|---|---|---|")
    for r in cases:
        cells = []
        for e, o in enumerate(r["oracle"]):
            b = o["best"]
            cells.append(f"{o['element']} {b['nrmse'][e] / r['joint'][e]:.3f} {_steps(b)}"
                         + ("" if not b else
                            f" (others max {max(b['nrmse'][i] / r['joint'][i] for i in range(3) if i != e):.3f})"))
        print(f"| {r['specimen']} | {r['dose']:g} | {r['seed']} | " + " | ".join(cells) + " |")
    print()
    factors = [h["factor"] for h in cases[0]["haadf_weight"]]
    print("| specimen | dose | seed | weakest | " + " | ".join(f"w x {f:g}: at joint / best admissible" for f in factors)
          + " |")
    print("|---|---|---|---|" + "---|" * len(factors))
    for r in cases:
        e = r["elements"].index(r["weakest"])
        cells = []
        for h in r["haadf_weight"]:
            best = f"{h['best']['nrmse'][e] / r['joint'][e]:.3f}" if h["best"] else "-"
            cells.append(f"{h['at_joint'][e] / r['joint'][e]:.3f} / {best}")
        print(f"| {r['specimen']} | {r['dose']:g} | {r['seed']} | {r['weakest']} | " + " | ".join(cells) + " |")
    print()
    print("| specimen | dose | seed | elements | raw | blur (oracle sigma) | joint | crosstalk joint | crosstalk blur |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in cases:
        print(f"| {r['specimen']} | {r['dose']:g} | {r['seed']} | {'/'.join(r['elements'])} | {_fmt(r['raw'])} | "
              f"{_fmt(r['blur'])} | {_fmt(r['joint'])} | {_fmt(r['crosstalk_joint'])} | {_fmt(r['crosstalk_blur'])} |")


def case_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The synthetic cases' options (size, doses, specimens, seeds, iterations) and ``--json`` and
    ``--summary``, shared with ``haadf_weight_fit.py``."""
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--doses", type=float, nargs="+", default=[5, 20, 80])
    parser.add_argument("--specimens", nargs="+", default=list(SPECIMENS), choices=list(SPECIMENS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--n-iter", type=int, default=30)
    parser.add_argument("--json", default=None)
    parser.add_argument("--summary", default=None, metavar="JSON",
                        help="print the Markdown tables of a JSON written by --json, and run nothing")
    return parser


def main() -> None:
    parser = case_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    assert np.allclose(haadf_weights([8, 24]), [0.5, 1.5])
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        for specimen in args.specimens:
            for dose in args.doses:
                r = run_case(specimen, dose, seed, args.size, args.n_iter)
                rows.append(r)
                print(f"{specimen} {dose:g} seed {seed}: joint ({r['lambda_chem']:.3g}, {r['lambda_tv']:.3g}) "
                      f"{'/'.join(r['elements'])}: raw {_fmt(r['raw'])} blur {_fmt(r['blur'])} "
                      f"joint {_fmt(r['joint'])}; crosstalk joint {_fmt(r['crosstalk_joint'])} "
                      f"blur {_fmt(r['crosstalk_blur'])}", flush=True)
                for o in r["oracle"]:
                    e = r["elements"].index(o["element"])
                    parts = []
                    for key in ("best", "best_tv_only", "best_chem_only"):
                        p = o[key]
                        parts.append(f"{key} (2^{p['chem_step']}, 2^{p['tv_step']}) "
                                     f"{_fmt([v / j for v, j in zip(p['nrmse'], r['joint'])])}" if p else f"{key} -")
                    print(f"   {o['element']:>2} own weights, ratio vs joint: " + "; ".join(parts), flush=True)
                    del e
                for h in r["haadf_weight"]:
                    b = h["best"]
                    print(f"   w_{r['weakest']} x{h['factor']:g}: at joint {_fmt([v / j for v, j in zip(h['at_joint'], r['joint'])])}"
                          f"; best admissible "
                          + (f"(2^{b['chem_step']}, 2^{b['tv_step']}) {_fmt([v / j for v, j in zip(b['nrmse'], r['joint'])])}"
                             if b else "-"), flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            record = {"chem_steps": CHEM_STEPS, "tv_steps": TV_STEPS, "tolerance": TOLERANCE,
                      "haadf_weight_factors": HAADF_WEIGHT_FACTORS, "blur_sigmas": BLUR_SIGMAS, "cases": rows}
            json.dump(_rounded(json.loads(json.dumps(record, default=lambda o: o.item()))), fh, indent=1)


if __name__ == "__main__":
    main()
