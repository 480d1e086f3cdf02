"""``emfuse run`` starts Prefect's temporary server early (flows._prefect_env.start_server_early): its
process is launched as soon as Prefect's settings are read, so that its start overlaps the batch's
imports, and the flow runs against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_serve_schedule import alive


def test_the_early_server_is_the_one_the_flow_uses_and_stops_at_exit(tmp_path):
    """Without a configured server, the flow runs against the early server, whose start never
    loaded Prefect's server module in this process, its run is recorded there, and the server's
    process ends with this one."""
    script = textwrap.dedent("""
        import json, sys
        from emfuse.flows._prefect_env import start_server_early

        server = start_server_early()
        from prefect import flow
        from prefect.client.orchestration import get_client
        from prefect.settings import get_current_settings

        @flow(name="answer", persist_result=False)
        def answer() -> int:
            return 42

        with server.serving():
            url = get_current_settings().api.url
            value = answer()
            with get_client(sync_client=True) as client:
                names = [run.name for run in client.read_flow_runs()]
        print(json.dumps({"value": value, "url": url, "ours": server.url, "runs": len(names),
                          "pid": server.process.pid,
                          "server_module": "prefect.server.api.server" in sys.modules}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["value"] == 42 and report["runs"] == 1
    assert report["url"] == report["ours"] and report["ours"].startswith("http://127.0.0.1:")
    assert report["server_module"] is False  # the 1.3-4 s import happened in the server's process only
    assert not alive(report["pid"])  # stopped when the script exited


def test_an_early_server_that_cannot_start_says_so(tmp_path):
    """A server process that exits while starting is an error naming the fix, not a hang."""
    script = textwrap.dedent("""
        import sys
        from emfuse.flows._prefect_env import start_server_early

        server = start_server_early()
        server.stop()  # the real one; in its place, a server that fails as it starts
        server._command = lambda port: [sys.executable, "-c", "import sys; sys.exit(7)"]
        server._launch()
        try:
            with server.serving():
                pass
        except Exception as exc:
            print(type(exc).__name__, "|", exc)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NotAvailableHere | Prefect's temporary server exited while starting (status 7" in done.stdout
    assert "PREFECT_API_URL" in done.stdout


@pytest.mark.usefixtures("prefect_harness")
def test_a_configured_server_is_left_alone():
    """With ``PREFECT_API_URL`` set (here: the test harness's server) nothing is started, and the
    block runs against the configured server."""
    from prefect.settings import get_current_settings

    from emfuse.flows._prefect_env import start_server_early

    configured = get_current_settings().api.url
    server = start_server_early()
    with server.serving():
        assert get_current_settings().api.url == configured
    assert server.process is None and server.url is None


def test_a_single_command_with_prefect_starts_the_server_early(tmp_path):
    """``emfuse fuse --prefect`` runs as the ``emfuse-fuse`` flow against the early server (its run
    and its stages' task runs are in that server's database, and the command never imported
    Prefect's server module, as Prefect's own start would), writes a complete store, and leaves no
    server behind; without ``--prefect`` no Prefect database is made."""
    import sqlite3

    from emfuse.flows.tools.synth import write_synthetic
    from emfuse.stores.zarrio import completion

    source = write_synthetic("spectrum-image", tmp_path / "si.zarr", shape=(48, 48), elements=["Sr", "Ti", "O"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    common = [sys.executable, "-m", "emfuse.flows.cli", "fuse", str(source), "--elements", "Sr", "Ti", "O",
              "--lambda-chem", "0.05", "--lambda-tv", "0.02", "--n-iter", "5", "--no-report"]
    before = {p.pid for p in _uvicorn()}
    done = subprocess.run([sys.executable, "-X", "importtime", *common[1:], "--out", str(tmp_path / "a.zarr"),
                           "--prefect"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prefect.server.api.server" not in done.stderr  # imported by the server's process only
    assert completion(tmp_path / "a.zarr") is True
    db = sqlite3.connect(f"file:{tmp_path / 'prefect' / 'prefect.db'}?mode=ro", uri=True)
    flows = [name for (name,) in db.execute("select f.name from flow_run r join flow f on r.flow_id = f.id")]
    tasks = db.execute("select count(*) from task_run").fetchone()[0]
    assert flows == ["emfuse-fuse"] and tasks >= 3  # plan, compute, finalise at least
    assert db.execute("select count(*) from events").fetchone()[0] == 0  # not stored (configure_prefect)
    assert {p.pid for p in _uvicorn()} <= before  # the early server ended with the command

    plain = {k: v for k, v in env.items()}
    plain["PREFECT_HOME"] = str(tmp_path / "unused")
    done = subprocess.run([*common, "--out", str(tmp_path / "b.zarr")], env=plain, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "unused" / "prefect.db").exists()


def _uvicorn():
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if "uvicorn" in " ".join(p.info["cmdline"] or [])]
