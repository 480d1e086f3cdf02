"""The batch on a real SLURM: worker jobs submitted by dask-jobqueue, a job cancelled, a refused job.

Needs a SLURM node up (``tests/slurm/start.sh`` starts a single-node one as root; ``make
test-slurm`` runs both); skipped otherwise. Marked ``slow``: ``make test-all`` runs it too.
Every job is small (1 CPU, 1 GB); the fused maps are compared bitwise with a ``local-threads``
run of the same catalog.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emfuse.flows.tools.synth import write_synthetic
from emfuse.stores.zarrio import is_complete, open_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.prefect,
              pytest.mark.usefixtures("slurm_node")]

REPO = Path(__file__).resolve().parents[2]
FUSE = {"tile": 32, "halo": 8, "n_iter": 15, "lambda_chem": 0.05, "lambda_tv": 0.02}  # fixed weights
#: where the timings of these tests go (docs/hpc.md quotes them)
TIMINGS: dict[str, float] = {}


def slurm_profile(tmp: Path, **options) -> dict:
    """A tiny slurm profile whose jobs run this checkout's emfuse with this interpreter."""
    return {
        "profile": "slurm", "queue": "debug", "cores": 1, "memory": "1GB", "walltime": "00:10:00",
        "minimum_jobs": 1, "maximum_jobs": 2, "dashboard_address": "127.0.0.1:0",
        "log_directory": str(tmp / "slurm-logs"),
        # the job starts in the submit directory; this checkout (not an installed emfuse) is
        # imported on the workers as in the test process
        "python": sys.executable,
        "job_script_prologue": [f"cd {REPO}", f"export PYTHONPATH={REPO}"],
        **options,
    }


def write_catalog(path: Path, output: Path, cluster, datasets: str, params: dict = FUSE) -> Path:
    path.write_text(json.dumps({  # JSON is YAML
        "output": str(output), "cluster": cluster,
        "datasets": [{"path": datasets, "jobs": ["fuse"], "elements": ["Sr", "Ti", "O"], "params": params}],
    }))
    return path


def squeue(name: str) -> list[tuple[str, str]]:
    """(job id, state) of this user's jobs called ``name``."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True,
                         check=True).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def wait_no_jobs(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while squeue(name) and time.monotonic() < deadline:
        time.sleep(1)
    assert not [j for j in squeue(name) if j[1] not in ("COMPLETING", "CANCELLED")], squeue(name)


def fused(store) -> np.ndarray:
    return open_dataset(store).fused.values


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    """Two small spectrum images (48 x 40 px) and the local-threads result of their fusion."""
    root = tmp_path_factory.mktemp("slurm-night")
    for seed in (1, 2):
        write_synthetic("spectrum-image", root / "incoming" / f"si{seed}.zarr", shape=(48, 40),
                        elements=["Sr", "Ti", "O"], seed=seed)
    return root


@pytest.fixture(scope="module")
def reference(prefect_harness, night) -> dict:
    from emfuse.flows.batch import batch_flow

    catalog = write_catalog(night / "local.yaml", night / "local", "local-threads", str(night / "incoming" / "si*.zarr"))
    start = time.perf_counter()
    info = batch_flow(str(catalog), progress=False)
    TIMINGS["batch_local_threads_s"] = time.perf_counter() - start
    assert info["n_done"] == 2, info["records"]
    return info


def test_worker_job_joins_with_this_checkout(night):
    """One job: how long SLURM takes from sbatch to a connected worker, and what it imports."""
    from emfuse.cluster import connect

    profile = slurm_profile(night, job_name="emfuse-join", minimum_jobs=1, maximum_jobs=1)
    start = time.perf_counter()
    with connect(profile) as client:
        TIMINGS["cluster_start_s"] = time.perf_counter() - start
        submitted = time.perf_counter()
        client.wait_for_workers(1, timeout=120)
        TIMINGS["sbatch_to_worker_s"] = time.perf_counter() - submitted
        jobs = squeue("emfuse-join")
        assert len(jobs) == 1 and jobs[0][1] == "RUNNING", jobs
        where = client.submit(lambda: (__import__("emfuse").__file__, __import__("sys").executable)).result()
        assert where == (str(REPO / "emfuse" / "__init__.py"), sys.executable)
    wait_no_jobs("emfuse-join")
    print("timings:", TIMINGS)


def test_batch_on_slurm_equals_local_threads(prefect_harness, night, reference):
    from emfuse.flows.batch import batch_flow

    cluster = slurm_profile(night, job_name="emfuse-batch")
    catalog = write_catalog(night / "slurm.yaml", night / "slurm", cluster, str(night / "incoming" / "si*.zarr"))
    start = time.perf_counter()
    info = batch_flow(str(catalog), progress=False)
    TIMINGS["batch_slurm_s"] = time.perf_counter() - start
    assert info["n_done"] == 2 and info["n_failed"] == 0, [r.get("error") for r in info["records"]]
    for name in ("si1", "si2"):
        store = night / "slurm" / f"{name}.fuse.zarr"
        assert is_complete(store)
        np.testing.assert_array_equal(fused(store), fused(night / "local" / f"{name}.fuse.zarr"))
        assert fused(store).tobytes() == fused(night / "local" / f"{name}.fuse.zarr").tobytes()
    # the workers were SLURM jobs: their logs are in log_directory, and none is left queued
    assert list((night / "slurm-logs").glob("emfuse-batch-*.err"))
    wait_no_jobs("emfuse-batch")
    print("timings:", TIMINGS)


def _tiles_done(store: Path) -> int:
    """Tiles of a fusion store recorded as finished (0 while its record does not exist yet)."""
    from emfuse.stores.progress import TileRecord

    try:
        return len(TileRecord.open(store, "fuse").done_tiles())
    except (OSError, KeyError, ValueError):
        return 0


def test_cancelled_worker_job_is_replaced(prefect_harness, night):
    """scancel the worker jobs mid-run: adaptive scaling (minimum_jobs 1) submits a new one, the
    batch completes, and the maps equal a local-threads run's."""
    from emfuse.flows.batch import batch_flow

    incoming = night / "longer"
    for seed in (3, 4):
        write_synthetic("spectrum-image", incoming / f"si{seed}.zarr", shape=(64, 64),
                        elements=["Sr", "Ti", "O"], seed=seed)
    params = {**FUSE, "n_iter": 200}
    local = write_catalog(night / "longer-local.yaml", night / "longer-local", "local-threads",
                          str(incoming / "si*.zarr"), params)
    cluster = slurm_profile(night, job_name="emfuse-cancel")
    catalog = write_catalog(night / "longer-slurm.yaml", night / "longer-slurm", cluster,
                            str(incoming / "si*.zarr"), params)
    first = night / "longer-slurm" / "si3.fuse.zarr"
    watch: dict = {"seen": set(), "cancelled": []}
    finished = threading.Event()

    def cancel_mid_run():  # in a thread: the batch (its SLURMCluster) needs the main thread
        deadline = time.monotonic() + 180
        while not finished.is_set() and time.monotonic() < deadline and not (
                first.exists() and any(s == "RUNNING" for _, s in squeue("emfuse-cancel"))):
            time.sleep(0.2)
        # the worker has connected and finished a first tile: cancel it mid-run (a fixed wait was too
        # long once a small job took about a second)
        while not finished.is_set() and time.monotonic() < deadline and not _tiles_done(first):
            time.sleep(0.1)
        watch["cancelled"] = [job for job, state in squeue("emfuse-cancel") if state == "RUNNING"]
        watch["mid_run"] = not finished.is_set() and not is_complete(night / "longer-slurm" / "si4.fuse.zarr")
        subprocess.run(["scancel", *watch["cancelled"]], check=True)
        cancelled_at = time.perf_counter()
        while not finished.is_set():
            watch["seen"] |= {job for job, _ in squeue("emfuse-cancel")}
            if watch["seen"] - set(watch["cancelled"]) and "replaced_after_s" not in TIMINGS:
                TIMINGS["replaced_after_s"] = time.perf_counter() - cancelled_at
            finished.wait(0.5)

    watcher = threading.Thread(target=cancel_mid_run, daemon=True)
    watcher.start()
    try:
        result = batch_flow(str(catalog), progress=False)
    finally:
        finished.set()
        watcher.join(30)
    cancelled = watch["cancelled"]
    assert cancelled and watch["mid_run"], watch
    assert watch["seen"] - set(cancelled), f"no new worker job after the cancelled ones {cancelled}"
    assert result["n_done"] == 2 and result["n_failed"] == 0, [r.get("error") for r in result["records"]]
    reference = batch_flow(str(local), progress=False)
    assert reference["n_done"] == 2
    for name in ("si3", "si4"):
        assert fused(night / "longer-slurm" / f"{name}.fuse.zarr").tobytes() == \
            fused(night / "longer-local" / f"{name}.fuse.zarr").tobytes()
    log = Path("/var/log/slurm/slurmctld.log")
    if log.is_file():  # what SLURM says about the cancelled job (tests/slurm/start.sh writes it there)
        lines = [line for line in log.read_text().splitlines() if any(f"JobId={j}" in line for j in cancelled)]
        print("slurmctld.log:", *lines, sep="\n  ")
    wait_no_jobs("emfuse-cancel")
    print("timings:", TIMINGS)


@pytest.mark.parametrize("option, value, key", [("queue", "no-such-partition", "'queue'"),
                                                ("memory", "500GB", "'memory'")])
def test_refused_job_fails_the_batch_naming_the_option(prefect_harness, night, option, value, key):
    from emfuse.flows.batch import batch_flow

    cluster = slurm_profile(night, job_name="emfuse-refused", **{option: value})
    catalog = write_catalog(night / "refused.yaml", night / f"refused-{option}", cluster,
                            str(night / "incoming" / "si1.zarr"))
    start = time.perf_counter()
    info = batch_flow(str(catalog), progress=False)
    assert time.perf_counter() - start < 60  # no waiting for workers that never come
    assert info["n_failed"] == 1 and info["n_done"] == 0
    error = info["records"][0]["error"]
    assert "ClusterUnavailableError" in error and f"option {key}" in error and value in error, error
    assert f"option {key}" in html.unescape(Path(info["report"]).read_text())
    assert not squeue("emfuse-refused")  # nothing was submitted


def test_down_partition_is_reported_then_waited_for(night, caplog):
    """A partition taken DOWN (maintenance) accepts the job but starts nothing: the batch says so
    at start and when the job pends for it, and goes on once the partition is UP again."""
    import logging

    from emfuse.cluster import connect

    scontrol = ["scontrol", "update", "PartitionName=debug"]
    profile = slurm_profile(night, job_name="emfuse-down", minimum_jobs=1, maximum_jobs=1)
    subprocess.run([*scontrol, "State=DOWN"], check=True)
    try:
        with caplog.at_level(logging.WARNING, logger="emfuse.cluster.profiles"), connect(profile) as client:
            said = [r.getMessage() for r in caplog.records]
            assert any("SLURM worker jobs will wait: partition 'debug' is out of service" in m for m in said), said
            deadline = time.monotonic() + 60
            while not any("waits: partition 'debug'" in r.getMessage() and "PartitionDown" in r.getMessage()
                          for r in caplog.records):
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(1)
            assert [state for _, state in squeue("emfuse-down")] == ["PENDING"]
            subprocess.run([*scontrol, "State=UP"], check=True)
            client.wait_for_workers(1, timeout=120)
            assert client.submit(lambda x: x + 1, 1).result(timeout=60) == 2
    finally:
        subprocess.run([*scontrol, "State=UP"], check=True)
    wait_no_jobs("emfuse-down")
