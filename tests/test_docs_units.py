"""The systemd units of docs/hpc.md are tested text: they parse, say what the page says, and
(where ``systemd-analyze`` exists) ``systemd-analyze verify`` accepts them.

The units are the fenced ``ini`` blocks that follow "`~/.config/systemd/user/NAME.service`:".
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
HPC = ROOT / "docs" / "hpc.md"
UNIT_BLOCK = re.compile(r"`~/\.config/systemd/user/([\w.-]+\.service)`:\s*\n\s*```ini\n(.*?)\n```", re.S)
SERVER, SERVE = "prefect-server.service", "emfuse-nightly.service"


def units() -> dict[str, str]:
    """The text of each unit file shown in docs/hpc.md, by file name."""
    found = dict(UNIT_BLOCK.findall(HPC.read_text()))
    assert set(found) >= {SERVER, SERVE}, f"unit blocks found in {HPC}: {sorted(found)}"
    return found


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def environment(unit: configparser.ConfigParser) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in shlex.split(unit["Service"].get("Environment", ""))]
    return dict(pairs)


def command(unit: configparser.ConfigParser) -> list[str]:
    """ExecStart as words; a `/bin/bash -lc '...'` wrapper is unwrapped (without its `exec`)."""
    words = shlex.split(unit["Service"]["ExecStart"])
    if words[0].endswith("/bash") and words[1] == "-lc":
        words = shlex.split(words[2])
        if words[0] == "exec":
            words = words[1:]
    return words


def test_units_say_what_the_page_says():
    server, serve = (parse(units()[name]) for name in (SERVER, SERVE))
    server_cmd, serve_cmd = command(server), command(serve)

    # the server: `prefect server start` on loopback, from the emfuse environment
    assert Path(server_cmd[0]).name == "prefect" and server_cmd[1:3] == ["server", "start"], server_cmd
    host = server_cmd[server_cmd.index("--host") + 1]
    port = int(server_cmd[server_cmd.index("--port") + 1])
    assert host == "127.0.0.1"
    assert "PREFECT_HOME" in environment(server)

    # the batch: `emfuse serve CATALOG --cron "..."` from the same environment, at that server
    assert Path(serve_cmd[0]).name == "emfuse" and serve_cmd[1] == "serve", serve_cmd
    assert Path(serve_cmd[0]).parent == Path(server_cmd[0]).parent  # one venv for both
    assert serve_cmd[2].endswith((".yaml", ".yml")) and not serve_cmd[2].startswith("-")
    cron = serve_cmd[serve_cmd.index("--cron") + 1]
    assert len(cron.split()) == 5, cron
    api = urlparse(environment(serve)["PREFECT_API_URL"])
    assert (api.hostname, api.port, api.path) == (host, port, "/api")

    # both come back after a crash, and the batch starts after (and with) the server
    for unit in (server, serve):
        assert unit["Service"]["Restart"] in ("always", "on-failure")
        assert int(unit["Service"]["RestartSec"]) > 0
        assert unit["Install"]["WantedBy"] == "default.target"
    assert SERVER in serve["Unit"]["After"].split() and SERVER in serve["Unit"]["Wants"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # the venv of the page does not exist here: point it at stand-ins so that verify can
    # check that ExecStart is executable
    venv = re.search(r"ExecStart=(\S*)/prefect ", units()[SERVER]).group(1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("prefect", "emfuse"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    paths = []
    for name, text in units().items():
        (tmp_path / name).write_text(text.replace(venv, str(bin_dir)) + "\n")
        paths.append(str(tmp_path / name))
    run = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
