"""Tests of the Dask cluster profiles (cluster/)."""

from __future__ import annotations

import os
import sys
import types

import dask.array as da
import psutil
import pytest

from cluster import (
    PROFILES,
    ClusterConfigError,
    ClusterSpec,
    ClusterUnavailableError,
    connect,
    count_gpus,
    make_cluster,
    render_job_script,
)
from cluster.profiles import available_cores


def _listening_hosts(process: psutil.Process) -> set[str]:
    return {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == "LISTEN"}


# -- specs ----------------------------------------------------------------------


def test_default_and_names():
    assert ClusterSpec.from_string(None).profile == "local"
    assert ClusterSpec.from_string("").profile == "local"
    for name in ("local", "local-threads", "local-gpu", "slurm"):
        assert ClusterSpec.from_string(name).profile == name
    assert set(PROFILES) >= {"local", "local-threads", "local-gpu", "slurm"}


def test_scheduler_address():
    spec = ClusterSpec.from_string("tcp://10.1.2.3:8786")
    assert spec.profile == "scheduler"
    assert spec.options == {"address": "tcp://10.1.2.3:8786"}
    assert ClusterSpec.from_string("tls://node:8786").options["address"] == "tls://node:8786"
    assert make_cluster(spec) is None  # nothing of ours to start


def test_yaml_file(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text(
        "profile: slurm\nqueue: gpu\ncores: 16\nmemory: 64GB\n"
        'walltime: "08:00:00"\ngpus: 1\nmaximum_jobs: 10\n'
    )
    spec = ClusterSpec.from_string(str(path))
    assert spec.profile == "slurm"
    assert spec.options == {
        "queue": "gpu",
        "cores": 16,
        "memory": "64GB",
        "walltime": "08:00:00",
        "gpus": 1,
        "maximum_jobs": 10,
    }
    # keyword overrides win over the file
    assert ClusterSpec.from_string(path, cores=32).options["cores"] == 32


def test_yaml_address_without_profile(tmp_path):
    path = tmp_path / "sched.yml"
    path.write_text("address: tcp://127.0.0.1:8786\ntimeout: 5s\n")
    spec = ClusterSpec.from_string(path)
    assert spec.profile == "scheduler"
    assert spec.options["timeout"] == "5s"


def test_partition_is_queue():
    assert ClusterSpec("slurm", {"partition": "short"}).options == {"queue": "short"}
    with pytest.raises(ClusterConfigError, match="queue.*partition"):
        ClusterSpec("slurm", {"partition": "a", "queue": "b"})
    # an override replaces the file's value whichever of the two names it uses
    assert ClusterSpec("slurm", {"queue": "a"}).with_options(partition="b").options == {
        "queue": "b"
    }


def test_unknown_profile_names_the_choices():
    with pytest.raises(ClusterConfigError) as err:
        ClusterSpec.from_string("kubernetes")
    message = str(err.value)
    assert "'kubernetes'" in message
    for name in ("local", "local-gpu", "slurm", "tcp://"):
        assert name in message


def test_unknown_key_names_key_and_accepted(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("profile: slurm\nqueue: gpu\nwalltme: '01:00:00'\n")
    with pytest.raises(ClusterConfigError) as err:
        ClusterSpec.from_string(path)
    message = str(err.value)
    assert "'walltme'" in message and "'slurm'" in message
    assert "walltime" in message and "maximum_jobs" in message  # the accepted ones
    with pytest.raises(ClusterConfigError, match="'n_wrkers'"):
        ClusterSpec.from_string("local", n_wrkers=2)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"cores": 0}, "cores"),
        ({"gpus": "one"}, "gpus"),
        ({"minimum_jobs": 5, "maximum_jobs": 2}, "maximum_jobs"),
        ({"gpus": 2, "processes": 4}, "processes"),
        ({"job_extra_directives": "--exclusive"}, "list of strings"),
    ],
)
def test_bad_values(options, match):
    with pytest.raises(ClusterConfigError, match=match):
        ClusterSpec("slurm", options)


def test_bad_files(tmp_path):
    with pytest.raises(ClusterConfigError, match="does not exist"):
        ClusterSpec.from_string(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- slurm\n- local\n")
    with pytest.raises(ClusterConfigError, match="mapping"):
        ClusterSpec.from_string(listing)
    with pytest.raises(ClusterConfigError, match="address"):
        ClusterSpec("scheduler", {})


# -- local clusters ---------------------------------------------------------------


def test_local_processes_on_loopback():
    before = os.environ.get("NUMBA_NUM_THREADS")
    with connect("local", n_workers=2, threads_per_worker=1) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(w["nthreads"] == 1 for w in workers.values())
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert int(da.arange(1000, chunks=100).sum().compute()) == 499500
        # no malloc trim threshold in the workers (it made array-heavy kernels 5x slower)
        environ = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(environ.values()) == {None}
        # numba threads shared out so that 2 workers x 1 thread fill the cores once
        numba = client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))
        assert set(numba.values()) == {str(max(1, available_cores() // 2))}
        # ... in the workers only: numba in this process must keep its own setting
        assert os.environ.get("NUMBA_NUM_THREADS") == before
        # scheduler + dashboard (this process) and workers (children) bind loopback only
        me = psutil.Process()
        assert _listening_hosts(me) == {"127.0.0.1"}
        for child in me.children(recursive=True):
            assert _listening_hosts(child) <= {"127.0.0.1"}
        cluster = client.cluster
    assert cluster.status.name == "closed"  # connect closed what it started


def test_local_threads():
    with connect("local-threads", threads_per_worker=2) as client:
        assert client.scheduler.address.startswith("inproc://")
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert float(da.ones((64, 64), chunks=16).mean().compute()) == 1.0
        assert _listening_hosts(psutil.Process()) <= {"127.0.0.1"}


def test_connect_to_existing_scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address=None) as external:
        spec = ClusterSpec.from_dict({"profile": external.scheduler_address, "timeout": "10s"})
        assert spec.profile == "scheduler"
        with connect(spec) as client:
            assert client.submit(sum, [2, 3]).result() == 5
        # the scheduler is someone else's: connect closed its client, not the cluster
        assert external.status.name == "running"


def test_connect_closes_cluster_on_error():
    with pytest.raises(RuntimeError, match="boom"), connect("local-threads") as client:
        cluster = client.cluster
        raise RuntimeError("boom")
    assert cluster.status.name == "closed"


# -- SLURM ------------------------------------------------------------------------

def _slurm_script(tmp_path, **options):
    pytest.importorskip("dask_jobqueue")
    base = {
        "queue": "gpu",
        "account": "emlab",
        "cores": 16,
        "memory": "64GB",
        "walltime": "08:00:00",
        "log_directory": str(tmp_path / "logs"),
    }
    return render_job_script("slurm", **{**base, **options})


def test_slurm_script_gpu(tmp_path):
    script = _slurm_script(tmp_path, gpus=1)
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A emlab",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=",
        "#SBATCH -t 08:00:00",
        "#SBATCH --gres=gpu:1",
    ):
        assert line in script
    assert "-m dask cuda worker" in script
    assert "distributed.cli.dask_worker" not in script


def test_slurm_script_cpu(tmp_path):
    script = _slurm_script(tmp_path, processes=4, job_extra_directives=["--exclusive"])
    assert "#SBATCH --gres" not in script
    assert "#SBATCH --exclusive" in script
    assert "-m distributed.cli.dask_worker" in script
    assert "--nworkers 4" in script
    assert "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None" in script
    assert "cuda" not in script


def test_slurm_cluster_is_adaptive():
    # Starting a SLURMCluster runs only a scheduler here; with minimum_jobs=0 and
    # no work, adaptive scaling never calls sbatch, so this needs no SLURM.
    pytest.importorskip("dask_jobqueue")
    cluster = make_cluster(
        "slurm", cores=4, processes=2, memory="8GB", maximum_jobs=3,
        dashboard_address="127.0.0.1:0",
    )
    try:
        assert type(cluster).__name__ == "SLURMCluster"
        assert (cluster._adaptive.minimum, cluster._adaptive.maximum) == (0, 6)  # workers
    finally:
        cluster.close()


def test_job_script_only_for_slurm():
    with pytest.raises(ClusterConfigError, match="slurm"):
        render_job_script("local")


# -- GPU --------------------------------------------------------------------------


def test_local_gpu_without_dask_cuda(monkeypatch):
    # a None entry in sys.modules makes `import dask_cuda` fail as if not installed
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    monkeypatch.setitem(sys.modules, "dask_cuda.utils", None)
    with pytest.raises(ClusterUnavailableError, match=r"pip install 'emfuse\[gpu\]'") as err:
        make_cluster("local-gpu")
    assert "`local` profile" in str(err.value)


def test_local_gpu_without_gpu(monkeypatch):
    # dask-cuda installed but NVML finds no driver: the documented error, not NVML's
    def no_driver():
        raise RuntimeError("NVMLError_LibraryNotFound")

    fake = types.ModuleType("dask_cuda")
    fake.utils = types.ModuleType("dask_cuda.utils")
    fake.utils.get_n_gpus = no_driver
    fake.LocalCUDACluster = lambda **kw: pytest.fail("must not start without a GPU")
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setitem(sys.modules, "dask_cuda.utils", fake.utils)
    assert count_gpus() == 0
    with pytest.raises(ClusterUnavailableError, match="no CUDA GPU.*emfuse\\[gpu\\]"):
        make_cluster("local-gpu")


def _have_gpu() -> bool:
    try:
        return count_gpus() > 0
    except ClusterUnavailableError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _have_gpu(), reason="needs dask-cuda and a CUDA GPU")
def test_local_gpu_cluster():
    with connect("local-gpu", n_workers=1) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
