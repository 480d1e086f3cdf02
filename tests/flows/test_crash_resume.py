"""Crashes: `emfuse run` killed with SIGKILL at several points, and a Dask worker killed mid-run.

After each crash the same command finishes the work, recomputing only unfinished tiles, and
every output store is byte for byte the store of an uninterrupted run (only the creation
timestamp in the metadata differs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from crash import done_tiles, store_differences

from emfuse.flows.tools.synth import write_synthetic

EMFUSE = [sys.executable, "-m", "emfuse.flows.cli"]
CATALOG = """
output: results
cluster: two-workers.yaml
datasets:
  - path: incoming/si*.zarr
    jobs: [fuse]
    elements: [Sr, Ti, O]
    params: {tile: 32, halo: 8, n_iter: 40, lambda_chem: 0.05, lambda_tv: 0.02}
  - path: incoming/movie.zarr
    jobs: [restore]
    params: {tile: 32, overlap: 8, block: 1, register: true}
  - path: incoming/tem.zarr
    jobs: [tem-fuse]
    params: {tile: 32, halo: 8}
"""


def _night(root: Path) -> Path:
    incoming = root / "incoming"
    for seed in (1, 2):
        write_synthetic("spectrum-image", incoming / f"si{seed}.zarr", shape=(64, 64), elements=["Sr", "Ti", "O"],
                        seed=seed)
    write_synthetic("movie", incoming / "movie.zarr", shape=(48, 48), frames=6)
    write_synthetic("tem-modes", incoming / "tem.zarr", shape=(64, 64))
    (root / "two-workers.yaml").write_text("profile: local\nn_workers: 2\nthreads_per_worker: 1\nmemory_limit: 2GiB\n")
    (root / "tonight.yaml").write_text(CATALOG)
    return root / "tonight.yaml"


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return env


def _run(catalog: Path, kill_at: int | None = None, timeout: float = 400) -> tuple[int | None, dict[str, int]]:
    """Run `emfuse run`; with ``kill_at``, SIGKILL its process group once that many tiles are done.

    Returns the exit status (None when killed) and the finished tiles per store afterwards.
    """
    root = catalog.parent
    proc = subprocess.Popen([*EMFUSE, "run", str(catalog), "--no-progress"], cwd=root, env=_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_at is not None and sum(done_tiles(root / "results").values()) >= kill_at:
                os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, no clean-up
                proc.wait()
                time.sleep(1)  # let the killed workers' file handles go
                return None, done_tiles(root / "results")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.monotonic() < deadline, "emfuse run did not finish in time"
    return proc.returncode, done_tiles(root / "results")


def _report(catalog: Path) -> dict:
    return json.loads((catalog.parent / "results" / "report.json").read_text())


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume(tmp_path):
    reference = _night(tmp_path / "reference")
    status, total = _run(reference)
    assert status == 0 and _report(reference)["n_failed"] == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(reference.parent / "incoming", crashed / "incoming")
    shutil.copy(reference.parent / "two-workers.yaml", crashed)
    catalog = crashed / "tonight.yaml"
    catalog.write_text(CATALOG)
    n_total = sum(total.values())
    previous = 0
    # during the first fusion, between datasets, during the restoration, during tem-fuse
    for kill_at in (1, 5, 10, 14):
        status, done = _run(catalog, kill_at=kill_at)
        assert status is None, f"the run finished before {kill_at} tiles were done"
        assert previous <= sum(done.values()) < n_total
        previous = sum(done.values())
        # the killed run left stale locks behind; the next run takes them over
    status, final = _run(catalog)
    assert status == 0 and final == total
    report = _report(catalog)
    assert report["n_failed"] == 0
    # the last run computed exactly the tiles not yet done when it started
    computed = {Path(r["store"]).name: r["tiles_computed"] for r in report["records"]}
    assert sum(computed.values()) == n_total - previous
    for name in total:
        assert computed[name] == total[name] - done.get(name, 0), name
    for store in sorted((reference.parent / "results").glob("*.zarr")):
        problems = store_differences(store, crashed / "results" / store.name, reference.parent, crashed)
        assert not problems, (store.name, problems[:5])
    assert not list((crashed / "results").glob("*.lock"))


def _kill_a_worker_when(client, output: Path, n_done: int, killed: list) -> None:
    deadline = time.monotonic() + 120
    while sum(done_tiles(output).values()) < n_done and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = client.run(os.getpid)
    address, pid = sorted(pids.items())[0]
    os.kill(pid, signal.SIGKILL)
    killed.append((address, sum(done_tiles(output).values())))


@pytest.mark.parametrize("kind", ["fuse", pytest.param("restore", marks=pytest.mark.slow)])
def test_worker_killed_mid_run(tmp_path, kind):
    """A worker process dies (SIGKILL) while tiles run: the job completes, identical to an unbroken run."""
    from emfuse.cluster import connect
    from emfuse.flows.jobs import run_job

    if kind == "fuse":
        source = write_synthetic("spectrum-image", tmp_path / "si.zarr", shape=(96, 96), elements=["Sr", "Ti", "O"])
        options = dict(elements=["Sr", "Ti", "O"], tile=24, halo=8,
                       params={"n_iter": 60, "lambda_chem": 0.05, "lambda_tv": 0.02})
    else:
        source = write_synthetic("movie", tmp_path / "movie.zarr", shape=(64, 64), frames=16)
        options = dict(model="default", tile=32, overlap=8, block=1)
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit="2GiB") as client:
        run_job(kind, source, tmp_path / "reference" / "out.zarr", client, progress=False, **options)
        killed: list = []
        killer = threading.Thread(target=_kill_a_worker_when, args=(client, tmp_path / "broken", 3, killed))
        killer.start()
        run_job(kind, source, tmp_path / "broken" / "out.zarr", client, progress=False, **options)
        killer.join()
    n_tiles = sum(done_tiles(tmp_path / "reference").values())
    assert killed and killed[0][1] < n_tiles, f"the worker was not killed mid-run: {killed}"
    assert sum(done_tiles(tmp_path / "broken").values()) == n_tiles
    problems = store_differences(tmp_path / "reference" / "out.zarr", tmp_path / "broken" / "out.zarr",
                                 tmp_path / "reference", tmp_path / "broken")
    assert not problems, problems[:5]
