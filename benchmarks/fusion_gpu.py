"""Fusion on the GPU: 4096 x 4096 x 4 elements, 100 iterations, n_iter_tv = 5, CUDA kernels (issue 15).

    .venv/bin/python benchmarks/fusion_gpu.py [--size 4096] [--iters 100] [--repeats 3]
        [--engine cuda] [--crop 512] [--json out.json]
    .venv/bin/python benchmarks/fusion_gpu.py --dry-run     # no GPU: the same code on numpy, engine xp, 256²

Times ``emfuse.pipeline.fusion.fuse`` with ``--engine`` (default ``cuda``: the fused numba.cuda
kernels of ``pipeline/fusion/kernels_cuda.py``) on CuPy arrays end to end on the device (inputs
already on the GPU; checks, normalisation, every iteration with its backtracking and cost
evaluation, and a final synchronisation), median of ``--repeats`` runs after a short warm-up
run (kernel compilation). Reports

* seconds end to end and per iteration;
* the achieved memory bandwidth: bytes moved per iteration by the memory model
  (``emfuse.pipeline.fusion.memory.fusion_bytes_per_iteration``: 138 floats per pixel at E = 4,
  n = 5) x iterations / time, against the device's peak from its attributes
  (``2 * memoryClockRate * memoryBusWidth``), as a fraction;
* the memory held: CuPy's pool after the run against ``fusion_bytes_per_pixel`` x pixels, and
  the tile ``largest_tile`` picks from the free memory;
* agreement with the CPU solver (numba) on a ``--crop``² crop (30 iterations): max difference as
  a fraction of the CPU result's value range (asked: 1e-5), and the largest relative difference
  of the cost curves.

``--dry-run`` runs the same code path on numpy with ``engine="xp"`` at 256² (20 iterations,
64² crop), so the script can be checked on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.memory import (
    fusion_bytes_per_iteration,
    fusion_bytes_per_pixel,
    largest_tile,
)

N_ELEMENTS = 4
N_ITER_TV = 5
HALO = 64


def problem(size: int, n_elements: int = N_ELEMENTS, seed: int = 0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    truth = np.stack([gaussian_filter(rng.random((size, size), dtype=np.float32), 4) for _ in range(n_elements)])
    truth = (truth - truth.min()) / np.ptp(truth)
    z = np.array([8, 22, 38, 66][:n_elements])
    haadf = ((z[:, None, None] / z.mean()) * truth ** 1.6).sum(0)
    haadf += 0.01 * rng.standard_normal(haadf.shape).astype(np.float32)
    return haadf.astype(np.float32), rng.poisson(20 * truth).astype(np.float32), z


class Device:
    """The array module and its synchronisation: CuPy on the GPU, numpy for ``--dry-run``."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        if dry_run:
            self.xp = np
            return
        import cupy

        self.xp = cupy

    def sync(self) -> None:
        if not self.dry_run:
            self.xp.cuda.Device().synchronize()

    def asnumpy(self, a: Any) -> np.ndarray:
        return np.asarray(a) if self.dry_run else self.xp.asnumpy(a)

    def name(self) -> str:
        if self.dry_run:
            return "cpu (dry run)"
        name = self.xp.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def peak_bandwidth(self) -> float | None:
        """Bytes/s: 2 (double data rate) x memory clock (kHz) x bus width (bits) / 8."""
        if self.dry_run:
            return None
        attrs = self.xp.cuda.runtime.getDeviceProperties(0)
        return 2 * attrs["memoryClockRate"] * 1e3 * attrs["memoryBusWidth"] / 8

    def free_bytes(self) -> int | None:
        if self.dry_run:
            return None
        self.xp.get_default_memory_pool().free_all_blocks()
        return int(self.xp.cuda.Device().mem_info[0])

    def pool_bytes(self) -> int | None:
        return None if self.dry_run else int(self.xp.get_default_memory_pool().total_bytes())


def timed_runs(dev: Device, haadf, maps, z, engine: str, iters: int, repeats: int) -> dict[str, Any]:
    params = dict(n_iter=iters, n_iter_tv=N_ITER_TV, engine=engine, warn=False)
    d_haadf, d_maps = dev.xp.asarray(haadf), dev.xp.asarray(maps)
    fuse(d_haadf, d_maps, z, **{**params, "n_iter": 2})  # warm-up: kernels compiled and cached
    dev.sync()
    if not dev.dry_run:
        dev.xp.get_default_memory_pool().free_all_blocks()
    times, result = [], None
    for _ in range(repeats):
        del result
        dev.sync()
        start = time.perf_counter()
        result = fuse(d_haadf, d_maps, z, **params)
        dev.sync()
        times.append(time.perf_counter() - start)
    pool = dev.pool_bytes()  # the pool keeps what the runs allocated: about the peak of one run
    median = statistics.median(times)
    n_px = haadf.size
    iterations = len(result.step_history)
    moved = fusion_bytes_per_iteration(N_ELEMENTS, N_ITER_TV) * n_px * iterations
    peak = dev.peak_bandwidth()
    row: dict[str, Any] = {
        "engine": result.engine, "size": int(haadf.shape[0]), "iterations": iterations,
        "seconds": times, "median_s": median, "ms_per_iteration": 1e3 * median / iterations,
        "final_step": float(result.step_history[-1]),
        "bytes_moved_per_iteration_per_px": fusion_bytes_per_iteration(N_ELEMENTS, N_ITER_TV),
        "achieved_gb_s": moved / median / 1e9,
        "peak_gb_s": None if peak is None else peak / 1e9,
        "bandwidth_fraction": None if peak is None else moved / median / peak,
        "model_bytes_per_px": fusion_bytes_per_pixel(N_ELEMENTS),
        "pool_bytes_per_px": None if pool is None else pool / n_px,
    }
    print(f"{dev.name()}: {row['size']}² x {N_ELEMENTS}, {iterations} iterations, n_iter_tv {N_ITER_TV}, "
          f"engine {row['engine']}: median {median:.3f} s ({', '.join(f'{t:.3f}' for t in times)}); "
          f"{row['ms_per_iteration']:.2f} ms/iteration; {row['achieved_gb_s']:.0f} GB/s"
          + ("" if peak is None else f" = {100 * row['bandwidth_fraction']:.0f}% of {peak / 1e9:.0f} GB/s peak"))
    if pool is not None:
        print(f"  memory: pool {row['pool_bytes_per_px']:.1f} B/px after the runs; model "
              f"{row['model_bytes_per_px']:.1f} B/px (inputs on the device included)")
    return row


def agreement(dev: Device, haadf, maps, z, engine: str, crop: int) -> dict[str, Any]:
    params = dict(n_iter=30, n_iter_tv=N_ITER_TV, warn=False)
    haadf, maps = haadf[:crop, :crop], maps[:, :crop, :crop]
    cpu = fuse(haadf, maps, z, engine="numba", **params)
    dut = fuse(dev.xp.asarray(haadf), dev.xp.asarray(maps), z, engine=engine, **params)
    fused = dev.asnumpy(dut.fused)
    span = float(np.ptp(cpu.fused))
    row = {
        "crop": crop, "iterations": int(cpu.costs.shape[1]),
        "max_diff_over_range": float(np.abs(fused - cpu.fused).max() / span),
        "costs_max_rel_diff": float((np.abs(dut.costs - cpu.costs) / np.abs(cpu.costs)).max())
        if dut.costs.shape == cpu.costs.shape else float("inf"),
        "same_steps": dut.step_history == cpu.step_history,
    }
    row["ok"] = bool(row["max_diff_over_range"] <= 1e-5 and row["costs_max_rel_diff"] <= 1e-5)
    print(f"  {crop}² crop, 30 iterations, {engine} vs CPU numba: max |diff| / range = "
          f"{row['max_diff_over_range']:.2e}, cost curves {row['costs_max_rel_diff']:.2e} "
          f"({'ok' if row['ok'] else 'ABOVE 1e-5'})")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--size", type=int, default=None, help="image side (default 4096; 256 with --dry-run)")
    parser.add_argument("--iters", type=int, default=None, help="outer iterations (default 100; 20 with --dry-run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", default=None, help="fusion engine (default cuda; xp with --dry-run)")
    parser.add_argument("--crop", type=int, default=None, help="side of the CPU agreement crop (default 512; 64)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: the same code path on numpy with engine xp at 256²")
    args = parser.parse_args(argv)
    dry = args.dry_run
    size = args.size or (256 if dry else 4096)
    iters = args.iters or (20 if dry else 100)
    engine = args.engine or ("xp" if dry else "cuda")
    crop = min(args.crop or (64 if dry else 512), size)
    dev = Device(dry)
    haadf, maps, z = problem(size)
    free = dev.free_bytes()
    out: dict[str, Any] = {
        "device": dev.name(), "dry_run": dry, "n_elements": N_ELEMENTS, "n_iter_tv": N_ITER_TV,
        "free_bytes": free,
        "largest_tile_halo_64": None if free is None else largest_tile(free, N_ELEMENTS, HALO),
    }
    out["timing"] = timed_runs(dev, haadf, maps, z, engine, iters, args.repeats)
    out["agreement"] = agreement(dev, haadf, maps, z, engine, crop)
    if free is not None:
        print(f"  free {free / 1e9:.1f} GB -> largest tile {out['largest_tile_halo_64']}² (halo {HALO})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["agreement"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
