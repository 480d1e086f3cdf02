"""Automatic regularisation (``lambda_chem="auto"``, ``lambda_tv="auto"``) against a grid search with the truth.

For each specimen kind and dose, a synthetic spectrum image with ground truth is made, and

* the automatic choice (:func:`emfuse.pipeline.fusion.auto.choose_lambdas`, which never sees the
  truth) is made from the spectrum image, the full data are fused with it, and its error
  against the truth is measured (mean NRMSE over elements, after an affine fit);
* a grid search fuses the full data at every point of a log grid (factor 2 on both axes,
  over the automatic search's ranges) and keeps the point with the lowest error against
  the truth.

The acceptance criterion is ``error_auto <= 1.10 * error_best`` in every case. With
``--transfer`` the script also measures how lambdas carry over from a half of the counts
to the full data: the same grid on a thinned half (normalised in full-data units), and the
full-data error at the half's best lambdas, as they are and with the MAP correction
``lambda_chem / p``.

The seeds default to 1000+ (held out: the method was developed on seeds 100-102).

    .venv/bin/python benchmarks/auto_lambda.py [--size 256] [--doses 5 20 80] [--seeds 1000]
        [--jobs 2] [--transfer] [--json auto_lambda.json] [--split 0.5] [--folds 2] [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from emfuse.pipeline.fusion import FusionParams, Normalisation, fuse
from emfuse.pipeline.fusion.auto import (
    SearchSettings,
    choose_lambdas,
    scaled_normalisation,
    thin_counts,
)
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPECIMENS = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}


def error(fused: np.ndarray, truth: np.ndarray) -> float:
    """Mean NRMSE (affine fit) over elements."""
    return float(np.mean([nrmse(f, t) for f, t in zip(fused, truth)]))


def grid_axes(settings: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
    """The truth grid: factor 2 over the automatic search's ranges."""
    def axis(lo: float, hi: float) -> np.ndarray:
        return lo * 2.0 ** np.arange(int(np.floor(np.log2(hi / lo) + 1e-9)) + 1)
    return axis(*settings.lambda_chem_range), axis(*settings.lambda_tv_range)


def error_grid(haadf, maps, z, truth, norm, chem, tv) -> np.ndarray:
    """Error against the truth at every grid point."""
    grid = np.empty((chem.size, tv.size))
    for i, lc in enumerate(chem):
        for j, lt in enumerate(tv):
            result = fuse(haadf, maps, z, normalisation=norm, warn=False, lambda_chem=float(lc),
                          lambda_tv=float(lt))
            grid[i, j] = error(result.fused, truth)
    return grid


def cached_error_grid(cache: str | None, key: str, compute) -> np.ndarray:
    """The truth grid, from ``cache`` (a folder of .npy files) when it holds this case."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{key}.npy"
    if path.exists():
        return np.load(path)
    grid = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, grid)
    return grid


def run_case(specimen: str, dose: float, seed: int, size: int, transfer: bool,
             settings: SearchSettings, cache: str | None = None) -> dict[str, Any]:
    data = make_spectrum_image((size, size), SPECIMENS[specimen], specimen=specimen, dose=dose, seed=seed)
    to_maps = functools.partial(_maps, energy=data.energy_ev, elements=data.elements)
    maps = to_maps(data.spectrum)
    norm = Normalisation.from_data(data.haadf, maps)

    choice = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=to_maps,
                            normalisation=norm, settings=settings)
    auto = fuse(data.haadf, maps, data.z, normalisation=norm, warn=False,
                lambda_chem=choice.lambda_chem, lambda_tv=choice.lambda_tv)
    default = fuse(data.haadf, maps, data.z, normalisation=norm, warn=False)

    chem, tv = grid_axes(settings)
    key = f"{specimen}-{dose:g}-{seed}-{size}-{chem[0]:.3g}-{chem.size}-{tv[0]:.3g}-{tv.size}"
    grid = cached_error_grid(cache, key, lambda: error_grid(data.haadf, maps, data.z, data.true_maps,
                                                            norm, chem, tv))
    bi, bj = np.unravel_index(np.argmin(grid), grid.shape)
    row = dict(
        specimen=specimen, dose=dose, seed=seed, size=size,
        error_raw=error(maps, data.true_maps),
        error_default=error(default.fused, data.true_maps),
        error_auto=error(auto.fused, data.true_maps),
        error_best=float(grid[bi, bj]),
        auto_lambda_chem=choice.lambda_chem, auto_lambda_tv=choice.lambda_tv,
        best_lambda_chem=float(chem[bi]), best_lambda_tv=float(tv[bj]),
        search_seconds=choice.seconds, search_candidates=choice.n_candidates,
        grid_points=int(grid.size),
    )
    row["ratio"] = row["error_auto"] / row["error_best"]
    if transfer:
        row.update(_transfer(data, maps, norm, chem, tv, grid, to_maps, seed))
    return row


def _maps(spectrum: np.ndarray, energy: np.ndarray, elements: tuple[str, ...]) -> np.ndarray:
    return np.asarray(elemental_maps(spectrum, energy, elements)[0])


def _transfer(data, maps, norm, chem, tv, grid, to_maps, seed, p: float = 0.5) -> dict[str, Any]:
    """How the truth-best lambdas of a half (p of the counts) do on the full data."""
    half = to_maps(thin_counts(data.spectrum, p, np.random.default_rng(seed + 1)))
    half_grid = error_grid(data.haadf, half, data.z, data.true_maps, scaled_normalisation(norm, p), chem, tv)
    hi, hj = np.unravel_index(np.argmin(half_grid), half_grid.shape)
    best = grid.min()
    shift = int(round(np.log2(1 / p)))  # lambda_chem / p on the factor-2 grid
    corrected = grid[min(hi + shift, chem.size - 1), hj]
    return dict(
        half_best_lambda_chem=float(chem[hi]), half_best_lambda_tv=float(tv[hj]),
        transfer_ratio_same=float(grid[hi, hj] / best),
        transfer_ratio_map_corrected=float(corrected / best),
    )


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'specimen':>9} {'dose':>5} {'seed':>5} {'raw':>6} {'default':>7} {'auto':>6} {'best':>6} "
            f"{'ratio':>6} {'auto lc':>8} {'auto lt':>8} {'best lc':>8} {'best lt':>8} {'search s':>8} {'cands':>5}")
    print(head)
    for r in rows:
        print(f"{r['specimen']:>9} {r['dose']:>5g} {r['seed']:>5} {r['error_raw']:>6.3f} {r['error_default']:>7.3f} "
              f"{r['error_auto']:>6.3f} {r['error_best']:>6.3f} {r['ratio']:>6.3f} {r['auto_lambda_chem']:>8.3g} "
              f"{r['auto_lambda_tv']:>8.3g} {r['best_lambda_chem']:>8.3g} {r['best_lambda_tv']:>8.3g} "
              f"{r['search_seconds']:>8.1f} {r['search_candidates']:>5}")
    if rows and "transfer_ratio_same" in rows[0]:
        print(f"\n{'specimen':>9} {'dose':>5} {'half best lc':>12} {'half best lt':>12} "
              f"{'full/best same':>14} {'full/best lc/p':>14}")
        for r in rows:
            print(f"{r['specimen']:>9} {r['dose']:>5g} {r['half_best_lambda_chem']:>12.3g} "
                  f"{r['half_best_lambda_tv']:>12.3g} {r['transfer_ratio_same']:>14.3f} "
                  f"{r['transfer_ratio_map_corrected']:>14.3f}")
    ratios = np.array([r["ratio"] for r in rows])
    print(f"\nworst ratio {ratios.max():.3f}, mean {ratios.mean():.3f}; "
          f"within 10 % of the grid best: {(ratios <= 1.10).sum()} / {ratios.size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--doses", type=float, nargs="+", default=[5, 20, 80])
    parser.add_argument("--specimens", nargs="+", default=list(SPECIMENS), choices=list(SPECIMENS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes")
    parser.add_argument("--transfer", action="store_true", help="also measure half -> full transfer")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--split", type=float, default=SearchSettings.split, help="training fraction")
    parser.add_argument("--folds", type=int, default=SearchSettings.folds, help="independent splits")
    parser.add_argument("--cache", default=None, help="folder caching the truth grids between runs")
    args = parser.parse_args()
    settings = SearchSettings(split=args.split, folds=args.folds)
    cases = [(s, d, seed) for seed in args.seeds for s in args.specimens for d in args.doses]
    start = time.perf_counter()
    run = functools.partial(_run_tuple, size=args.size, transfer=args.transfer, settings=settings,
                            cache=args.cache)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(run, cases))
    else:
        rows = [run(c) for c in cases]
    _print_table(rows)
    print(f"total {time.perf_counter() - start:.0f} s; search settings {dataclasses.asdict(settings)}; "
          f"fusion parameters {FusionParams().to_dict()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": dataclasses.asdict(settings), "rows": rows}, fh, indent=1)


def _run_tuple(case: tuple[str, float, int], **kwargs: Any) -> dict[str, Any]:
    return run_case(*case, **kwargs)


if __name__ == "__main__":
    main()
