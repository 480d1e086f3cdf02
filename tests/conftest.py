"""Shared fixtures: the reference data beside the checkout, a Dask client, GPU detection, Prefect harness."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# ../shared/data beside the checkout; EMFUSE_SHARED_DATA points elsewhere (a worktree outside it)
SHARED_DATA = Path(os.environ.get("EMFUSE_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (the published reference data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (clone ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def formats(shared_data) -> Path:
    """``../shared/data/formats``: the small real instrument files (.bcf, .emd, .dm3/.dm4, .emi/.ser)."""
    folder = shared_data / "formats"
    if not folder.is_dir():
        pytest.skip(f"real instrument files not found at {folder} (clone ../shared beside the checkout)")
    return folder


def _load_tutorial(shared: Path, name: str) -> dict:
    with np.load(shared / "fusion" / name, allow_pickle=False) as f:
        d = {k: f[k] for k in f.files}
    return {
        "haadf": d["haadf"],
        "maps": d["chem"],
        "elements": [str(e) for e in d["elements"]],
        "z": [int(v) for v in d["z"]],
        "params": dict(
            gamma=float(d["gamma"]), lambda_chem=float(d["lambdaChem"]), lambda_tv=float(d["lambdaTV"]),
            n_iter=int(d["nIter"]), n_iter_tv=int(d["nIter_TV"]), bkg=float(d["bkg"]),
            init_threshold=float(d["init_threshold"]),
        ),
    }


@pytest.fixture(scope="session", params=["dysco3_edx_tutorial.npz", "co3o4_mn3o4_eels_tutorial.npz"])
def tutorial(request, shared_data) -> dict:
    """Each published tutorial dataset with its published parameters."""
    return _load_tutorial(shared_data, request.param)


@pytest.fixture(scope="session")
def dysco3(shared_data) -> dict:
    return _load_tutorial(shared_data, "dysco3_edx_tutorial.npz")


def gpu_available() -> bool:
    from emfuse.pipeline.backend import gpu_available as _gpu

    return _gpu()


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy (none found)")
    for item in items:
        # the marker, not ``"gpu" in item.keywords``: keywords hold the names of the folders
        # above the test file too, and a checkout in a folder named gpu skipped every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def client():
    """A Dask client of two worker threads in this process, one per test module."""
    from emfuse.cluster import connect

    with connect("local-threads", n_workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test harness (temporary database, no server) for the whole session."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    import emfuse.flows._prefect_env  # noqa: F401  (configures the remaining Prefect defaults)

    with prefect_test_harness(server_startup_timeout=120):
        yield


def slurm_node_state() -> str | None:
    """The state of a SLURM node that `sinfo` shows as able to run jobs, or None (no SLURM, none up)."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    states = [s.strip().rstrip("*~#") for s in out.stdout.split()] if out.returncode == 0 else []
    return next((s for s in states if s in ("idle", "mix", "alloc", "comp")), None)


@pytest.fixture(scope="session")
def slurm_node():
    """Skips unless a SLURM controller answers and a node is up (tests/slurm/start.sh starts one)."""
    state = slurm_node_state()
    if state is None:
        pytest.skip("needs a SLURM node up: run tests/slurm/start.sh (as root) or `make test-slurm`")
    return state
