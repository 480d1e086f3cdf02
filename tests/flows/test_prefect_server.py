"""``emfuse run`` starts Prefect's temporary server early, in a thread (flows._prefect_env.start_server_early),
so that its start overlaps the batch's imports; the flow then finds it running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_the_early_server_is_the_one_the_flow_uses(tmp_path):
    """Without a configured server, the early start leaves Prefect's own temporary server running
    and healthy, and a flow called afterwards runs against it (no second server)."""
    script = textwrap.dedent("""
        from emfuse.flows._prefect_env import start_server_early

        start_server_early()()
        from prefect import flow
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        assert server.running and server.server_process.poll() is None
        pid = server.server_process.pid

        @flow(persist_result=False)
        def answer() -> int:
            return 42

        assert answer() == 42
        assert SubprocessASGIServer().server_process.pid == pid  # the same server, not a second one
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_a_configured_server_is_left_alone(prefect_harness):
    """With ``PREFECT_API_URL`` set (here: the test harness's server) nothing is started."""
    from prefect.server.api.server import SubprocessASGIServer

    from emfuse.flows._prefect_env import start_server_early

    before = dict(SubprocessASGIServer._instances)
    start_server_early()()
    assert SubprocessASGIServer._instances == before
