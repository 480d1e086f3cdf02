"""End-to-end fusion job from store to store on a LocalCluster: stage timings and throughput.

    .venv/bin/python benchmarks/pipeline_throughput.py [--size 512] [--tile 256] [--workers 1 2]

Synthesises a spectrum image (size x size x 1024 channels, three elements), then for each worker
count runs the job's stages (plan, write inputs incl. map integration, normalise, fuse tiles,
finalise) and prints seconds per stage and megapixel-elements fused per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from emfuse.cluster import connect
from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import runner
from emfuse.flows.tools.synth import write_synthetic

ELEMENTS = ("Sr", "Ti", "O")


def run_once(source: Path, out: Path, workers: int, tile: int, halo: int) -> dict[str, float]:
    times: dict[str, float] = {}
    with connect("local", n_workers=workers, threads_per_worker=1) as client:
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[name] = now - clock
            clock = now

        job, _ = fusion_job.plan(source, out, elements=ELEMENTS, tile=tile, halo=halo, overwrite=True)
        lap("plan")
        fusion_job.write_inputs(job)
        lap("maps + inputs")
        norm = fusion_job.normalise(job)
        lap("normalise")
        runner.run_units(fusion_job.SPEC, job, norm, client, progress=False)
        lap("fuse tiles")
        runner.finalise(fusion_job.SPEC, job)
        lap("finalise")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = write_synthetic("spectrum-image", Path(tmp) / "si.zarr", shape=(args.size, args.size),
                                 elements=ELEMENTS)
        mpx_el = args.size**2 * len(ELEMENTS) / 1e6
        for workers in args.workers:
            times = run_once(source, Path(tmp) / f"out{workers}.zarr", workers, args.tile, args.halo)
            total = sum(times.values())
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
            print(f"{workers} worker(s): total {total:.2f} s ({stages}); "
                  f"fusion {mpx_el / times['fuse tiles']:.3f} Mpx-el/s, job {mpx_el / total:.3f} Mpx-el/s")


if __name__ == "__main__":
    main()
