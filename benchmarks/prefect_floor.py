"""The floor under a batch of small jobs: what `emfuse run` costs when the jobs do nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prefect_floor.py [--jobs 20] [--stages 3] [--repeat 3]
        [--json FILE]

Each measurement is a fresh Python process, timed from its launch to its exit, as a user's
command is:

- ``python``: the interpreter alone;
- ``imports``: the interpreter and the modules `emfuse run` loads (the batch flow, Prefect,
  Dask's distributed scheduler);
- ``server``: the same, with Prefect's temporary server started and stopped as `emfuse run`
  does it (:func:`emfuse.flows._prefect_env.start_server_early`) around a flow with no task;
- ``flow``: the same flow with ``--jobs`` x ``--stages`` task runs that do nothing, made with the
  settings of the job stages' tasks (:func:`emfuse.flows.jobs.stages._task`: no cache policy, no
  result persistence) and named as the batch names them (``"<dataset> fuse: plan"``).

``flow - server`` over the number of task runs is Prefect's cost per task run in the driver.
Compare ``flow`` with the batch of `benchmarks/batch_overhead.py` (the same number of jobs and
stages, on the same machine) and with three times its kernel: no batch run through Prefect can be
faster than this floor, and what the batch spends above it is the jobs' own work (reading and
writing stores, the cluster's round trips, the reports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

IMPORTS = "import emfuse.flows.batch.flow, distributed"

FLOW = """
import sys
from emfuse.flows._prefect_env import start_server_early
server = start_server_early()
from prefect import flow
from emfuse.flows.batch import flow as _batch  # what emfuse run imports
from emfuse.flows.jobs.stages import _task, named
n_jobs, n_stages = int(sys.argv[1]), int(sys.argv[2])

@flow(name="emfuse-floor", persist_result=False)
def floor():
    for job in range(n_jobs):
        for stage in ("plan", "compute", "finalise")[:n_stages]:
            named(_task(lambda: None, stage), f"dataset-{job:03d} fuse")()

with server.serving():
    floor()
"""


def timed(args: list[str], env: dict[str, str]) -> float:
    """Seconds from the launch of ``python args...`` to its exit (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--stages", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="emfuse-floor-") as home:
        env = {**os.environ, "PREFECT_HOME": home, "PYTHONPATH": str(REPO)}
        cases = {"python": ["-c", "pass"], "imports": ["-c", IMPORTS],
                 "server": ["-c", FLOW, "0", str(args.stages)],
                 "flow": ["-c", FLOW, str(args.jobs), str(args.stages)]}
        timed(cases["flow"], env)  # warm-up: Prefect's database created, files in the page cache
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):  # the cases take turns, so that load falls on all of them
            for name, case in cases.items():
                runs[name].append(timed(case, env))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    n_tasks = args.jobs * args.stages
    out = {"jobs": args.jobs, "stages": args.stages, "task_runs": n_tasks, "runs_s": runs, "median_s": medians,
           "per_task_run_s": (medians["flow"] - medians["server"]) / max(n_tasks, 1)}
    for name, value in medians.items():
        print(f"{name:>8}: {value:6.2f} s  (runs {', '.join(f'{v:.2f}' for v in runs[name])})")
    print(f"Prefect per task run: {out['per_task_run_s'] * 1000:.0f} ms ({n_tasks} task runs)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
