"""Fusion on the GPU: 4096 x 4096 x 4 elements, 100 iterations, n_iter_tv = 5 (issue 3, item 3).

    .venv/bin/python benchmarks/fusion_gpu.py [--size 4096] [--iters 100] [--repeats 3]

Times ``emfuse.pipeline.fusion.fuse`` on CuPy arrays end to end on the device (inputs already on the
GPU; checks, normalisation, every iteration with its backtracking and cost evaluation, and a
final synchronisation), median of ``--repeats`` runs after one warm-up; compares the result of a
shorter run with the CPU (numba) result, and reports the achieved memory bandwidth with the byte
model of ``benchmarks/fusion_vs_reference.py`` (138 P floats per iteration at E = 4, n = 5)
against the device's peak (from its memory clock and bus width).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from emfuse.pipeline.fusion import fuse


def problem(size: int, n_elements: int = 4, seed: int = 0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    truth = np.stack([gaussian_filter(rng.random((size, size), dtype=np.float32), 4) for _ in range(n_elements)])
    truth = (truth - truth.min()) / np.ptp(truth)
    z = np.array([8, 22, 38, 66][:n_elements])
    haadf = ((z[:, None, None] / z.mean()) * truth ** 1.6).sum(0)
    haadf += 0.01 * rng.standard_normal(haadf.shape).astype(np.float32)
    return haadf.astype(np.float32), rng.poisson(20 * truth).astype(np.float32), z


def peak_bandwidth_gbs(cp) -> float:
    attrs = cp.cuda.runtime.getDeviceProperties(0)
    return 2 * attrs["memoryClockRate"] * 1e3 * attrs["memoryBusWidth"] / 8 / 1e9


def main() -> None:
    import cupy as cp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    haadf, maps, z = problem(args.size)
    params = dict(n_iter=args.iters, n_iter_tv=5)
    g_haadf, g_maps = cp.asarray(haadf), cp.asarray(maps)
    fuse(g_haadf, g_maps, z, **{**params, "n_iter": 2})  # warm-up: kernels compiled and cached
    times = []
    for _ in range(args.repeats):
        cp.cuda.Device().synchronize()
        start = time.perf_counter()
        result = fuse(g_haadf, g_maps, z, **params)
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    n_px = args.size**2
    bytes_per_iter = 4 * n_px * (9 * 4 + 5 * 4 * 5 + 2)
    achieved = bytes_per_iter * args.iters / median / 1e9
    peak = peak_bandwidth_gbs(cp)
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}: {args.size}^2 x 4, {args.iters} iterations, "
          f"n_iter_tv 5: median {median:.3f} s ({', '.join(f'{t:.3f}' for t in times)}); "
          f"{1e3 * median / args.iters:.2f} ms/iteration; {achieved:.0f} GB/s = {100 * achieved / peak:.0f}% of "
          f"{peak:.0f} GB/s peak; engine {result.engine}")
    short = dict(n_iter=10, n_iter_tv=5)
    cpu = fuse(haadf, maps, z, **short).fused
    gpu = cp.asnumpy(fuse(g_haadf, g_maps, z, **short).fused)
    print(f"10 iterations, max |gpu - cpu| / max|cpu| = {np.abs(gpu - cpu).max() / np.abs(cpu).max():.2e}")


if __name__ == "__main__":
    main()
