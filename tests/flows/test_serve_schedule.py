"""A schedule that fires: `emfuse serve --cron "* * * * *"` against a Prefect server on loopback.

A real Prefect server (``prefect server start`` on 127.0.0.1, its own PREFECT_HOME, analytics
off) and ``emfuse serve`` run as subprocesses for about two to three minutes: the first firing
fuses a small dataset and writes the morning report, the second resumes (no tile computed
again). Marked ``slow`` (``make test-all``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emfuse.flows.tools.synth import write_synthetic

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

REPO = Path(__file__).resolve().parents[2]


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


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_cron_schedule_fires_twice_and_resumes(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    write_synthetic("spectrum-image", tmp_path / "incoming" / "si1.zarr", shape=(48, 40),
                    elements=["Sr", "Ti", "O"], seed=1)
    catalog = tmp_path / "nightly.yaml"
    catalog.write_text(json.dumps({
        "output": str(tmp_path / "results"), "cluster": "local-threads",
        "datasets": [{"path": str(tmp_path / "incoming" / "si1.zarr"), "jobs": ["fuse"],
                      "elements": ["Sr", "Ti", "O"],
                      "params": {"tile": 32, "halo": 8, "n_iter": 15, "lambda_chem": 0.05, "lambda_tv": 0.02}}],
    }))
    prefect = Path(sys.executable).parent / "prefect"
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=open(logs / "server.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    serve = None
    try:
        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 180, "the Prefect server", [server])
        # the worktree's emfuse (cwd first on sys.path), the flow runs in subprocesses of this one
        serve = subprocess.Popen([sys.executable, "-m", "emfuse.flows.cli", "serve", str(catalog),
                                  "--cron", "* * * * *", "--name", "every-minute", "--timezone", "UTC"],
                                 env=env, cwd=REPO, stdout=open(logs / "serve.log", "w"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
        results = tmp_path / "results"

        def run_logs():
            return sorted((results / "logs").glob("run-*.log")) if (results / "logs").is_dir() else []

        def finished(n):
            def done():
                if len(run_logs()) < n or not (results / "report.json").is_file():
                    return None
                if "batch finished" not in run_logs()[n - 1].read_text():
                    return None
                return json.loads((results / "report.json").read_text())
            return done

        first = wait_for(finished(1), 200, "the first scheduled run", [server, serve])
        assert first["n_done"] == 1 and first["records"][0]["tiles_computed"] == 4
        assert (results / "report.html").is_file()
        second = wait_for(finished(2), 150, "the second scheduled run", [server, serve])
        record = second["records"][0]
        assert second["n_done"] == 1 and record["state"] == "complete" and record["tiles_computed"] == 0
        # the Prefect server saw both runs of the deployment, completed
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
                          timeout=10).json()
        batch_runs = [r for r in runs if r.get("deployment_id")]
        assert len(batch_runs) >= 2, [(r["name"], r["state_type"]) for r in runs]
    finally:
        if serve is not None:
            stop(serve)
        stop(server)
        print("serve.log:", (logs / "serve.log").read_text()[-3000:])
