"""Fusion speed against the published solver, and memory bandwidth at 4096 x 4096 x 4.

    .venv/bin/python benchmarks/fusion_vs_reference.py [--repeats 5] [--size 4096] [--iters 6]
                                                       [--skip-plain] [--skip-reference]

Part 1, the published tutorials (``../shared/data/fusion``): the published solver (PyPI
``multimodal-fusion`` 0.6.0: ``DataFusion`` set-up, ``load_chemical_maps``, ``load_haadf``,
``run``) and ``emfuse.pipeline.fusion.fuse`` (input checks, normalisation, solver) with the published
parameters and iteration counts, run alternately ``--repeats`` times after one untimed warm-up
each (numba compilation or cache loading is not counted); the median wall time and process
CPU time (all threads) of each, their ratios, the objective ``F`` of both results by ``emfuse.pipeline.fusion.objective`` and the correlation
of each element's maps. The initial threshold of tutorial 2 is applied to the published solver's
start as in ``tests/pipeline/test_reference_parity.py``.

Part 2, a synthetic 4096 x 4096 x 4-element problem (smoothed random maps, Poisson counts, a
HAADF from the model plus noise), ``n_iter_tv = 5``: the time per outer iteration of the numba
engine (median over iterations 2..N, taken from the per-iteration callback; the first iteration
also computes ``x^(gamma-1)``, which later iterations reuse) and of the plain numpy engine, and
the memory bandwidth this achieves. On a shared machine the wall time includes waiting for a
core, so the process CPU time divided by the number of threads is printed as well: the time
on an idle machine if every thread were busy all along, so a lower bound of it.

Byte model (float32, E elements, P = y * x pixels, n = n_iter_tv, one accepted step; each
array read or written once per kernel, neighbour rows assumed to come from cache; a write
counted once, although without non-temporal stores the CPU also reads the line first):

=====================  ==================================================  ==========
kernel                 reads / writes (in E*P or P floats)                 floats
=====================  ==================================================  ==========
gradient step          x, x^(gamma-1), b_maps, b_haadf / v                 4E + 1
dual step 1 (zero r)   v / q_y, q_x                                        3E
dual steps 2..n        r_y, r_x, v / q_y, q_x                              5E each
primal                 p_y, p_x, v / x_new                                 4E
objective              x_new, b_maps, b_haadf / x_new^(gamma-1)            3E + 1
step sums (backtrack)  x, v, x_new /                                       3E
=====================  ==================================================  ==========

    bytes per iteration = 4 P (12E + 5E n + 2)     (E = 4, n = 5: 150 P floats, 10.07 GB at 4096^2)

Achieved bandwidth = that / time per iteration. For comparison: a STREAM-like copy
(``np.copyto`` of 1 GiB, one thread; and a numba ``prange`` copy on all numba threads),
counted as 2 x size bytes per copy, best of 5.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage

from emfuse.pipeline.fusion import Normalisation, fuse, haadf_weights, objective

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fusion"
TUTORIALS = ("dysco3_edx_tutorial.npz", "co3o4_mn3o4_eels_tutorial.npz")


def load_tutorial(path: Path) -> dict:
    """One tutorial bundle: arrays, element names, Z and the published parameters."""
    with np.load(path, allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    params = dict(
        gamma=float(d["gamma"]), lambda_chem=float(d["lambdaChem"]), lambda_tv=float(d["lambdaTV"]),
        n_iter=int(d["nIter"]), n_iter_tv=int(d["nIter_TV"]), bkg=float(d["bkg"]),
        init_threshold=float(d["init_threshold"]),
    )
    return {"haadf": d["haadf"], "maps": d["chem"], "elements": [str(e) for e in d["elements"]],
            "z": [int(v) for v in d["z"]], "params": params}


class _ThresholdedStart(np.ndarray):
    """The published ``xx0`` with a thresholded ``copy()`` (``run()`` starts from ``xx0.copy()``)."""

    threshold = 0.0

    def copy(self, order="C"):
        start = np.array(self, copy=True, order=order)
        start[start < self.threshold] = 0
        return start


def run_published(data: dict) -> np.ndarray:
    """Set up and run the published solver; its fused maps (element, y, x)."""
    from multimodal_fusion.fusion import DataFusion

    p = data["params"]
    solver = DataFusion(data["elements"], p["gamma"])
    solver.load_chemical_maps({e: data["maps"][i].astype(np.float64) for i, e in enumerate(data["elements"])},
                              method=1)
    solver.load_haadf(data["haadf"].astype(np.float64))
    if p["init_threshold"] > 0:
        start = solver.xx0.view(_ThresholdedStart)
        start.threshold = p["init_threshold"]
        solver.xx0 = start
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        solver.run(p["n_iter"], p["lambda_chem"], p["lambda_tv"], p["n_iter_tv"], p["bkg"],
                   plot_images=False, plot_convergence=False)
    results = solver.get_results()
    return np.stack([np.asarray(results[e], dtype=np.float64) for e in data["elements"]])


def run_ours(data: dict, engine: str = "numba") -> np.ndarray:
    return fuse(data["haadf"], data["maps"], data["z"], engine=engine, **data["params"]).fused


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def timed_cpu(fn, *args) -> tuple[float, float]:
    """Wall time and CPU time of the process (all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def compare_tutorial(name: str, repeats: int) -> None:
    data = load_tutorial(DATA / name)
    first_ours, _ = timed(run_ours, data)  # numba compilation or cache load
    theirs_result, ours_result = run_published(data), run_ours(data)
    t_theirs, t_ours = [], []
    for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit both
        t_theirs.append(timed_cpu(run_published, data))
        t_ours.append(timed_cpu(run_ours, data))
    med_theirs, med_ours = (statistics.median(t[0] for t in ts) for ts in (t_theirs, t_ours))
    cpu_theirs, cpu_ours = (statistics.median(t[1] for t in ts) for ts in (t_theirs, t_ours))

    norm = Normalisation.from_data(data["haadf"], data["maps"])
    haadf, maps = norm.haadf(data["haadf"], np.float64), norm.maps(data["maps"], np.float64)
    weights = {k: data["params"][k] for k in ("gamma", "lambda_chem", "lambda_tv", "bkg")}
    f_theirs = objective(theirs_result, haadf, maps, data["z"], **weights)
    f_ours = objective(ours_result.astype(np.float64), haadf, maps, data["z"], **weights)
    corr = ", ".join(
        f"{e} {np.corrcoef(ours_result[i].ravel(), theirs_result[i].ravel())[0, 1]:.4f}"
        for i, e in enumerate(data["elements"])
    )
    shape = "x".join(str(n) for n in data["maps"].shape)
    print(f"\n{name} ({shape}, {data['params']['n_iter']} iterations, n_iter_tv {data['params']['n_iter_tv']})")
    print(f"  published : median {med_theirs:7.3f} s wall, {cpu_theirs:7.3f} s CPU  "
          f"(wall of each run {', '.join(f'{t[0]:.3f}' for t in t_theirs)})")
    print(f"  emfuse    : median {med_ours:7.3f} s wall, {cpu_ours:7.3f} s CPU  "
          f"(wall of each run {', '.join(f'{t[0]:.3f}' for t in t_ours)}; first call {first_ours:.2f} s)")
    print(f"  speed-up  : {med_theirs / med_ours:.1f}x wall, {cpu_theirs / cpu_ours:.1f}x CPU time")
    print(f"  F         : emfuse {f_ours:.2f}, published {f_theirs:.2f}")
    print(f"  corr      : {corr}")


def synthetic_problem(size: int, n_el: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Smooth random maps (Gaussian-filtered noise), Poisson counts, a model HAADF plus noise."""
    rng = np.random.default_rng(seed)
    z = [8, 22, 38, 79][:n_el]
    truth = np.empty((n_el, size, size), np.float32)
    for e in range(n_el):
        field = ndimage.gaussian_filter(rng.standard_normal((size, size), np.float32), sigma=6)
        truth[e] = np.clip(field / field.std() * 0.25 + 0.5, 0, None)
    haadf = np.tensordot(haadf_weights(z).astype(np.float32), truth**1.6, axes=1)
    haadf += rng.normal(0, 0.02, haadf.shape).astype(np.float32)
    maps = rng.poisson(5.0 * truth).astype(np.float32)
    return haadf, maps, z


def bytes_per_iteration(n_el: int, n_pix: int, n_iter_tv: int, itemsize: int = 4) -> int:
    """The byte model of the module docstring."""
    return itemsize * n_pix * (12 * n_el + 5 * n_el * n_iter_tv + 2)


def iteration_times(haadf, maps, z, engine: str, n_iter: int, n_iter_tv: int) -> tuple[list[float], list[float], list[float]]:
    """Wall and process CPU seconds of outer iterations 2..n_iter, and the step history."""
    walls: list[float] = []
    cpus: list[float] = []
    result = fuse(haadf, maps, z, engine=engine, n_iter=n_iter, n_iter_tv=n_iter_tv,
                  callback=lambda i, f: (walls.append(time.perf_counter()), cpus.append(time.process_time())))
    return list(np.diff(walls)), list(np.diff(cpus)), result.step_history


@numba.njit(parallel=True, cache=True)
def _parallel_copy(src, dst):  # pragma: no cover
    for i in numba.prange(src.size):
        dst[i] = src[i]


def copy_bandwidth(n_bytes: int = 1 << 30) -> tuple[float, float]:
    """Best-of-5 copy bandwidth (bytes read + written per second): numpy (1 thread), numba (all)."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.zeros_like(src)
    _parallel_copy(src, dst)
    best_np = min(timed(np.copyto, dst, src)[0] for _ in range(5))
    best_nb = min(timed(_parallel_copy, src, dst)[0] for _ in range(5))
    return 2 * n_bytes / best_np, 2 * n_bytes / best_nb


def scale_benchmark(size: int, n_iter: int, skip_plain: bool) -> None:
    n_el, n_tv = 4, 5
    haadf, maps, z = synthetic_problem(size, n_el)
    model_bytes = bytes_per_iteration(n_el, size * size, n_tv)
    print(f"\nsynthetic {n_el} x {size} x {size}, n_iter_tv {n_tv}, numba threads {numba.get_num_threads()}")
    print(f"  bytes per iteration (model): {model_bytes / 1e9:.2f} GB")
    engines = ["numba"] + ([] if skip_plain else ["xp"])
    for engine in engines:
        threads = numba.get_num_threads() if engine == "numba" else 1
        walls, cpus, steps = iteration_times(haadf, maps, z, engine, n_iter if engine == "numba" else 3, n_tv)
        per_iter, cpu_per_thread = statistics.median(walls), statistics.median(cpus) / threads
        halvings = sum(1 for a, b in zip(steps, steps[1:]) if b < a)
        print(f"  {engine:5s}: {per_iter:.3f} s per iteration (iterations 2..{len(walls) + 1}: "
              f"{', '.join(f'{t:.3f}' for t in walls)}; step halvings {halvings})"
              f"  -> {model_bytes / per_iter / 1e9:.1f} GB/s by the model")
        print(f"         CPU time per iteration / {threads} thread(s): {cpu_per_thread:.3f} s (a lower bound "
              f"of the time on an idle machine) -> {model_bytes / cpu_per_thread / 1e9:.1f} GB/s")
    np_bw, nb_bw = copy_bandwidth()
    print(f"  copy bandwidth: numpy (1 thread) {np_bw / 1e9:.1f} GB/s, "
          f"numba prange ({numba.get_num_threads()} threads) {nb_bw / 1e9:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=6, help="outer iterations of the scale run")
    parser.add_argument("--skip-plain", action="store_true", help="no plain-numpy timing at scale")
    parser.add_argument("--skip-reference", action="store_true", help="only the scale run")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, numba {numba.__version__} ({numba.get_num_threads()} threads), "
          f"numpy {np.__version__}, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if not args.skip_reference:
        for name in TUTORIALS:
            compare_tutorial(name, args.repeats)
    scale_benchmark(args.size, args.iters, args.skip_plain)
    print(f"load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
