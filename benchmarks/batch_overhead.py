"""Where the wall time of a night of small datasets goes: the batch against the kernel alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_overhead.py [--n 20] [--size 96] [--workers 2]
        [--code DIR ...] [--repeat R] [--single] [--workdir DIR] [--json FILE]

1. ``--n`` synthetic spectrum images of ``--size`` px (3 elements), written once.
2. **Kernel**: the same datasets fused back to back in this process by
   :func:`emfuse.pipeline.fusion.fuse` (fixed weights, the maps integrated beforehand, not timed):
   what the night would cost with no orchestration at all.
3. **Cluster start**: ``connect`` of the same ``local`` profile (``--workers`` processes), median
   of 3.
4. **Batch**: ``emfuse run catalog.yaml`` in a subprocess, for each ``--code`` checkout (default:
   this one; give an older checkout to measure before and after side by side: the command runs
   as ``python -m emfuse.flows.cli`` from that folder, so its own code is imported). From
   ``report.json`` and every output store's ``timing``: the wall time, the batch flow's own
   seconds, and the sum over jobs of each stage (ingest, plan, write_inputs, normalise, tiles,
   finalise, report), and the rest (Prefect flows and tasks, summaries, the morning report).
   ``--repeat R``: each checkout's batch R times, the checkouts taking turns (A B A B ...), so
   that load from other work on the machine falls on both; every figure is the median of the R.
5. ``--single``: one ``emfuse fuse`` of a 64 x 64 dataset from the shell (wall, median of
   ``max(3, R)``), for each ``--code``, taking turns in the same way.

Prints a table per code, the ratio batch / kernel and datasets per minute; ``--json`` keeps it all
(each run too, under ``runs`` and ``single_runs_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "plan", "write_inputs", "normalise", "choose_lambdas", "tiles", "finalise", "report")
ELEMENTS = ("Sr", "Ti", "O")  # the generator's default, named in the catalog too
PARAMS = {"lambda_chem": 0.05, "lambda_tv": 0.05, "n_iter": 30}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="datasets (default %(default)s)")
    parser.add_argument("--size", type=int, default=96, help="side in px (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    parser.add_argument("--code", type=Path, nargs="+", default=[REPO],
                        help="checkouts whose `emfuse run` is measured (default: this one)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="batches per checkout, the checkouts taking turns; medians (default %(default)s)")
    parser.add_argument("--single", action="store_true", help="also time `emfuse fuse` of a 64 x 64 dataset")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    return parser.parse_args(argv)


def make_datasets(incoming: Path, n: int, size: int) -> list[Path]:
    from emfuse.flows.tools.synth import write_synthetic

    incoming.mkdir(parents=True, exist_ok=True)
    specimens = ("columns", "particles", "layers")
    return [write_synthetic("spectrum-image", incoming / f"si{i:03d}.zarr", shape=(size, size),
                            elements=list(ELEMENTS), specimen=specimens[i % 3], seed=100 + i, overwrite=True)
            for i in range(n)]


def kernel_seconds(stores: list[Path]) -> tuple[float, list[float]]:
    """Each dataset fused by the kernel alone (maps integrated first, not timed)."""
    from emfuse.pipeline import spectra
    from emfuse.pipeline.elements import atomic_number
    from emfuse.pipeline.fusion import fuse
    from emfuse.stores.zarrio import open_dataset

    inputs = []
    for store in stores:
        ds = open_dataset(store)
        elements = list(ELEMENTS)
        maps = np.asarray(spectra.elemental_maps(ds["spectrum"].transpose("y", "x", "energy").values,
                                                 ds["energy"].values, elements, signal_type="EDX")[0])
        inputs.append((ds["haadf"].values, maps, [atomic_number(e) for e in elements]))
    fuse(*inputs[0], warn=False, **PARAMS)  # numba compiled once, as a worker does on its first tile
    times = []
    for haadf, maps, z in inputs:
        start = time.perf_counter()
        fuse(haadf, maps, z, warn=False, **PARAMS)
        times.append(time.perf_counter() - start)
    return sum(times), times


def cluster_start_seconds(workers: int) -> float:
    from emfuse.cluster import connect

    times = []
    for _ in range(3):
        start = time.perf_counter()
        with connect({"profile": "local", "n_workers": workers, "threads_per_worker": 1}):
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_batch(code: Path, workdir: Path, incoming: Path, workers: int) -> dict:
    out = workdir / f"results-{code.name}"
    shutil.rmtree(out, ignore_errors=True)
    catalog = workdir / f"catalog-{code.name}.yaml"
    catalog.write_text(yaml.safe_dump({
        "output": str(out), "cluster": {"profile": "local", "n_workers": workers, "threads_per_worker": 1},
        "datasets": [{"path": str(incoming / "*.zarr"), "jobs": ["fuse"], "elements": list(ELEMENTS),
                      "params": dict(PARAMS, tile=512)}],
    }))
    env = dict(os.environ, PREFECT_HOME=str(workdir / f"prefect-{code.name}"), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emfuse.flows.cli", "run", str(catalog), "--no-progress"],
                          cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"emfuse run failed in {code}:\n{proc.stderr[-3000:]}")
    info = json.loads((out / "report.json").read_text())
    stages = dict.fromkeys(STAGES, 0.0)
    for record in info["records"]:
        timing = _timing(record["store"])
        for stage in STAGES:
            stages[stage] += timing.get(stage, 0.0)
    computed = sum(stages[s] for s in STAGES if s != "report")
    return {"code": str(code), "wall_s": wall, "batch_flow_s": info["seconds"], "n_done": info["n_done"],
            "stages_s": stages, "job_stages_s": computed,
            "rest_s": info["seconds"] - computed - (0 if _on_workers(code) else stages["report"])}


def _timing(store: str) -> dict[str, float]:
    import zarr

    runs = zarr.open_group(store, mode="r", zarr_format=3).attrs.get("timing", [])
    return dict(runs[-1]["seconds"]) if runs else {}


def _on_workers(code: Path) -> bool:
    """Whether that checkout draws the batch's figures outside the jobs' stages (on the workers, or
    by a process beside the cluster), overlapped with compute."""
    flow = (code / "flows" / "batch" / "flow.py").read_text()
    return "draw_report" in flow or "FigurePool" in flow


def single_command_seconds(codes: list[Path], workdir: Path, runs: int = 3) -> dict[Path, list[float]]:
    """Wall seconds of ``runs`` single ``emfuse fuse`` commands per checkout, the checkouts
    taking turns."""
    from emfuse.flows.tools.synth import write_synthetic

    store = write_synthetic("spectrum-image", workdir / "single64.zarr", shape=(64, 64), seed=7, overwrite=True)
    times: dict[Path, list[float]] = {code: [] for code in codes}
    for k in range(runs):
        for code in codes:
            env = dict(os.environ, PREFECT_HOME=str(workdir / f"prefect-{code.name}"), OMP_NUM_THREADS="1")
            env.pop("PREFECT_API_URL", None)
            out = workdir / f"single-{code.name}-{k}.zarr"
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "emfuse.flows.cli", "fuse", str(store), "--out", str(out),
                                   "--elements", *ELEMENTS, "--lambda-chem", "0.05", "--lambda-tv", "0.05"],
                                  cwd=code, env=env, capture_output=True, text=True)
            times[code].append(time.perf_counter() - start)
            if proc.returncode:
                raise RuntimeError(f"emfuse fuse failed in {code}:\n{proc.stderr[-3000:]}")
    return times


def median_batch(runs: list[dict]) -> dict:
    """Field by field median of several runs of one checkout's batch."""
    med = statistics.median
    return {"code": runs[0]["code"], "repeats": len(runs), "wall_s": med(r["wall_s"] for r in runs),
            "batch_flow_s": med(r["batch_flow_s"] for r in runs), "n_done": min(r["n_done"] for r in runs),
            "stages_s": {stage: med(r["stages_s"][stage] for r in runs) for stage in STAGES},
            "job_stages_s": med(r["job_stages_s"] for r in runs), "rest_s": med(r["rest_s"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emfuse-overhead-"))
    incoming = workdir / "incoming"
    stores = make_datasets(incoming, args.n, args.size)
    kernel, per = kernel_seconds(stores)
    start_s = cluster_start_seconds(args.workers)
    print(f"{args.n} datasets of {args.size} x {args.size} x 3 elements, {args.workers} workers; workdir {workdir}")
    print(f"kernel alone: {kernel:.2f} s ({statistics.median(per) * 1e3:.0f} ms median per dataset); "
          f"cluster start {start_s:.2f} s")
    results = {"n": args.n, "size": args.size, "workers": args.workers, "repeat": args.repeat, "kernel_s": kernel,
               "cluster_start_s": start_s, "batches": []}
    codes = [code.resolve() for code in args.code]
    runs: dict[Path, list[dict]] = {code: [] for code in codes}
    for _ in range(args.repeat):
        for code in codes:  # taking turns: load from other work falls on every checkout alike
            runs[code].append(run_batch(code, workdir, incoming, args.workers))
    singles = single_command_seconds(codes, workdir, max(3, args.repeat)) if args.single else {}
    for code in codes:
        batch = median_batch(runs[code])
        batch["ratio_to_kernel"] = batch["wall_s"] / (kernel + start_s)
        batch["datasets_per_min"] = 60 * args.n / batch["wall_s"]
        batch["runs"] = runs[code]
        if args.single:
            batch["single_fuse_64_s"] = statistics.median(singles[code])
            batch["single_runs_s"] = singles[code]
        results["batches"].append(batch)
        print(f"\n{code}: wall {batch['wall_s']:.1f} s (batch flow {batch['batch_flow_s']:.1f} s), "
              f"{batch['datasets_per_min']:.1f} datasets/min, batch / (kernel + cluster start) "
              f"= {batch['ratio_to_kernel']:.1f}" + (f"; medians of {args.repeat}" if args.repeat > 1 else ""))
        for stage, seconds in batch["stages_s"].items():
            note = " (on the workers, overlapped)" if stage == "report" and _on_workers(code) else ""
            print(f"  {stage:<15} {seconds:7.2f} s{note}")
        print(f"  {'rest':<15} {batch['rest_s']:7.2f} s (Prefect flows and tasks, summaries, morning report)")
        if "single_fuse_64_s" in batch:
            print(f"  emfuse fuse of 64 x 64 from the shell: {batch['single_fuse_64_s']:.1f} s "
                  f"(median of {len(singles[code])})")
    if args.json_path:
        args.json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
