"""A schedule that fires: `emfuse serve --cron "* * * * *"` against a Prefect server on loopback.

A real Prefect server (``prefect server start`` on 127.0.0.1, its own PREFECT_HOME, analytics
off) and ``emfuse serve`` run as subprocesses for a few minutes: the first firing fuses a small
dataset and writes the morning report, the second resumes (no tile computed again). A second
test kills the Prefect server in the middle of a scheduled run and checks that the outputs stay
consistent and that the next firing finishes the work. Marked ``slow`` (``make test-all``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from emfuse.flows.tools.synth import write_synthetic

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).parent / "prefect"
ELEMENTS = ["Sr", "Ti", "O"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[:4]} exited ({proc.returncode}) while waiting for {what}"
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def write_catalog(root: Path, n_datasets: int, shape: tuple[int, int], n_iter: int) -> Path:
    """A catalog of ``n_datasets`` synthetic spectrum images fused in 32-pixel tiles."""
    datasets = []
    for i in range(n_datasets):
        path = root / "incoming" / f"si{i + 1}.zarr"
        write_synthetic("spectrum-image", path, shape=shape, elements=ELEMENTS, seed=i + 1)
        datasets.append({"path": str(path), "jobs": ["fuse"], "elements": ELEMENTS,
                         "params": {"tile": 32, "halo": 8, "n_iter": n_iter, "lambda_chem": 0.05,
                                    "lambda_tv": 0.02}})
    catalog = root / "nightly.yaml"
    catalog.write_text(json.dumps({"output": str(root / "results"), "cluster": "local-threads",
                                   "datasets": datasets}))
    return catalog


class Scheduler:
    """A Prefect server on 127.0.0.1 (its own PREFECT_HOME) and `emfuse serve CATALOG` against it."""

    def __init__(self, root: Path, catalog: Path):
        self.root, self.catalog = root, catalog
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                    "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_LOGGING_LEVEL": "WARNING",
                    "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.results = root / "results"
        self.server: subprocess.Popen | None = None
        self.serve: subprocess.Popen | None = None
        self.n_server = self.n_serve = 0

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_server(self) -> None:
        self.n_server += 1
        self.server = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, cwd=self.root, stdout=open(self.logs / f"server-{self.n_server}.log", "w"),
            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, 180, "the Prefect server", [self.server])

    def start_serve(self) -> None:
        # the worktree's emfuse (cwd first on sys.path); the flow runs in subprocesses of this one
        self.n_serve += 1
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "emfuse.flows.cli", "serve", str(self.catalog), "--cron", "* * * * *",
             "--name", "every-minute", "--timezone", "UTC"],
            env=self.env, cwd=REPO, stdout=open(self.logs / f"serve-{self.n_serve}.log", "w"),
            stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def procs(self) -> list[subprocess.Popen]:
        return [p for p in (self.server, self.serve) if p is not None]

    def run_logs(self) -> list[Path]:
        folder = self.results / "logs"
        return sorted(folder.glob("run-*.log")) if folder.is_dir() else []

    def finished(self, n: int):
        """A predicate: the report of the ``n``-th run once that run has finished."""
        def done():
            logs = self.run_logs()
            if len(logs) < n or not (self.results / "report.json").is_file():
                return None
            if "batch finished" not in logs[n - 1].read_text():
                return None
            return json.loads((self.results / "report.json").read_text())
        return done

    def completed_runs(self) -> list[dict]:
        runs = httpx.post(f"{self.api}/flow_runs/filter",
                          json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}, timeout=10).json()
        return [r for r in runs if r.get("deployment_id")]

    def deployment_runs(self) -> list[dict]:
        runs = httpx.post(f"{self.api}/flow_runs/filter", json={}, timeout=10).json()
        return [r for r in runs if r.get("deployment_id")]

    def close(self) -> None:
        stop(self.serve)
        stop(self.server)
        for log in sorted(self.logs.glob("serve-*.log")):
            print(f"{log.name}:", log.read_text()[-3000:])


@pytest.fixture
def scheduler(tmp_path):
    made: list[Scheduler] = []

    def make(catalog: Path) -> Scheduler:
        made.append(Scheduler(tmp_path, catalog))
        return made[-1]

    yield make
    for sched in made:
        sched.close()


def test_cron_schedule_fires_twice_and_resumes(tmp_path, scheduler):
    sched = scheduler(write_catalog(tmp_path, 1, (48, 40), 15))
    sched.start_server()
    sched.start_serve()
    first = wait_for(sched.finished(1), 200, "the first scheduled run", sched.procs)
    assert first["n_done"] == 1 and first["records"][0]["tiles_computed"] == 4
    assert (sched.results / "report.html").is_file()
    second = wait_for(sched.finished(2), 150, "the second scheduled run", sched.procs)
    record = second["records"][0]
    assert second["n_done"] == 1 and record["state"] == "complete" and record["tiles_computed"] == 0
    # the Prefect server saw both runs of the deployment, completed
    assert len(sched.completed_runs()) >= 2


TILES = 9  # a 96 x 96 map in 32-pixel tiles
RUN_LOG_DONE = re.compile(r"done   (\w+) fuse \([\d.]+ s, (already complete|\d+ tiles)\)")  # a run log line
OUTAGE_S = 150  # how long the Prefect server stays dead: longer than the flow run waits for it


def lock_holders(results: Path) -> dict[str, int]:
    """The process id that holds each ``<store>.lock`` under ``results`` now."""
    holders = {}
    for lock in results.glob("*.zarr.lock"):
        try:
            holders[lock.name] = json.loads(lock.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            continue  # being written this instant
    return holders


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def check_consistent(results: Path) -> dict[str, int]:
    """Every output store is either complete (opens, finite fused maps) or marked unfinished;
    a lock left by a process that is gone is taken over. Returns the finished tiles per store."""
    from crash import done_tiles

    from emfuse.stores.lock import StoreLock, lock_path
    from emfuse.stores.zarrio import completion, open_dataset

    done = done_tiles(results)
    for store in sorted(results.glob("*.zarr")):
        if completion(store):
            with open_dataset(store) as ds:
                assert np.isfinite(ds["fused"].values).all(), store
            assert done[store.name] == TILES, (store, done)
        else:  # complete False (or not yet written): a rerun resumes it (all tiles done: finalises it)
            assert completion(store) in (False, None), (store, done)
    for name, pid in lock_holders(results).items():
        if not alive(pid):  # stale: the next run takes it over (acquire removes it, release frees it)
            store = results / name.removesuffix(".lock")
            with StoreLock(store):
                pass
            assert not lock_path(store).exists()
    return done


def test_server_killed_mid_run_next_firing_finishes(tmp_path, scheduler):
    """The Prefect server SIGKILLed during a scheduled run: stores stay consistent, the next
    firing (after the server is back) completes the night, recomputing only unfinished tiles."""
    sched = scheduler(write_catalog(tmp_path, 3, (96, 96), 60))
    stores = [sched.results / f"si{i}.fuse.zarr" for i in (1, 2, 3)]
    sched.start_server()
    sched.start_serve()
    from emfuse.stores.zarrio import completion

    def mid_run():  # the first store done, the batch not finished
        logs = sched.run_logs()
        if logs and "batch finished" in logs[0].read_text():
            raise AssertionError("the first run finished before the server could be killed")
        return bool(logs) and stores[0].exists() and completion(stores[0]) is True and lock_holders(sched.results)
    holders = wait_for(mid_run, 240, "the first scheduled run to be half done", sched.procs)
    first_log = sched.run_logs()[0]
    flow_pids = set(holders.values())
    t_kill = time.monotonic()
    os.killpg(sched.server.pid, signal.SIGKILL)
    sched.server.wait(10)
    print("server killed; locks held by", holders)

    # what the serve process and the flow run do without the server: longer than the runner's
    # three failed polls (10 s apart) and the client's five retries (2 + 4 + ... + 32 s) per call
    events: dict[str, float] = {}
    while time.monotonic() - t_kill < OUTAGE_S:
        now = round(time.monotonic() - t_kill, 1)
        if sched.serve.poll() is not None:
            events.setdefault(f"emfuse serve exited ({sched.serve.returncode})", now)
        if not any(alive(pid) for pid in flow_pids):
            events.setdefault("the flow run process exited", now)
        time.sleep(1)
    print("after the server died:", events, "; first run finished:", "batch finished" in first_log.read_text())
    done = check_consistent(sched.results)
    print("tiles done per store after the outage:", done)

    restarted_at = datetime.now(UTC)
    sched.start_server()  # the same PREFECT_HOME and port, as systemd's Restart= would
    if sched.serve.poll() is not None:  # as systemd's Restart=always would
        sched.start_serve()

    def night_done():  # several missed firings may start at once: the first that did all of it
        for log in sched.run_logs():
            text = log.read_text()
            if log != first_log and f"batch finished: {len(stores)} done, 0 failed" in text:
                return log, {m[0]: 0 if m[1] == "already complete" else int(m[1].split()[0])
                             for m in RUN_LOG_DONE.findall(text)}
        return None
    log, computed = wait_for(night_done, 240, "a firing after the restart that completes the night", sched.procs)
    print(f"completed by {log.name}, {time.monotonic() - t_kill:.0f} s after the kill; tiles computed:", computed,
          "; the first run's process", "alive" if any(alive(p) for p in flow_pids) else "gone")
    for store in stores:
        name = store.name.removesuffix(".fuse.zarr")
        assert completion(store) is True, store
        if done.get(store.name) == TILES:  # finished before the outage ended: left as it is
            assert computed[name] == 0, computed
        else:  # only its unfinished tiles computed
            assert computed[name] <= TILES - done.get(store.name, 0), (computed, done)
    assert any(done.get(s.name) == TILES for s in stores)  # at least one store was not computed again
    assert (sched.results / "report.html").is_file()
    check_consistent(sched.results)
    assert sched.completed_runs()  # the restarted server records the completing run
    # the missed firings ran one after another (emfuse serve's run limit), none failing on a lock
    when = datetime.fromisoformat
    after = sorted((r for r in sched.deployment_runs() if r.get("start_time") and r.get("end_time")
                    and when(r["start_time"]) > restarted_at), key=lambda r: when(r["start_time"]))
    print("runs after the restart:", [(r["name"], r["start_time"], r["end_time"], r["state_type"]) for r in after])
    assert after, "no run started after the restart"
    for earlier, later in zip(after, after[1:]):
        assert when(later["start_time"]) >= when(earlier["end_time"]), (earlier, later)
    for run_log in sched.run_logs():
        finished = re.search(r"batch finished: \d+ done, (\d+) failed", run_log.read_text())
        if run_log != first_log and finished:
            assert finished[1] == "0", run_log.read_text()[-2000:]
