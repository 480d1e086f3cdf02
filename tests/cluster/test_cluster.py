"""Tests of the Dask cluster profiles (cluster/)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import dask.array as da
import psutil
import pytest

from emfuse.cluster import (
    PROFILES,
    ClusterConfigError,
    ClusterSpec,
    ClusterUnavailableError,
    connect,
    count_gpus,
    make_cluster,
    render_job_script,
    tls_security,
)
from emfuse.cluster.profiles import available_cores


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


def test_slurm_script_job_name(tmp_path):
    # SLURM's job name (-J, and the log file names), not the Dask worker's name
    script = _slurm_script(tmp_path, job_name="emfuse-night")
    assert "#SBATCH -J emfuse-night" in script and "dask-worker-%J.err" not in script
    assert "emfuse-night-%J.err" in script and "--name dummy-name" in script


def test_slurm_script_cpu(tmp_path):
    script = _slurm_script(tmp_path, processes=4, job_extra_directives=["--exclusive"])
    assert "#SBATCH --gres" not in script
    assert "#SBATCH --exclusive" in script
    assert "-m distributed.cli.dask_worker" in script
    assert "--nworkers 4" in script
    assert "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None" in script
    assert "cuda" not in script


@pytest.fixture
def no_sbatch_check(monkeypatch):
    """The profile's `sbatch --test-only` check and squeue watch left out: these tests run no SLURM job."""
    from emfuse.cluster import profiles

    monkeypatch.setattr(profiles, "check_slurm_accepts", lambda options: None)
    monkeypatch.setattr(profiles, "_watch_slurm_jobs", lambda cluster, queue=None: None)


def test_slurm_cluster_is_adaptive(no_sbatch_check):
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


def test_slurm_without_sbatch_is_named(monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterUnavailableError, match="sbatch.*PATH"):
        make_cluster("slurm", cores=1, memory="1GB", dashboard_address="127.0.0.1:0")


@pytest.mark.parametrize(
    "options, stderr, key",
    [
        ({"queue": "nosuch"}, "sbatch: error: invalid partition specified: nosuch\n"
         "allocation failure: Invalid partition name specified", "'queue' (or 'partition')"),
        ({"account": "x"}, "sbatch: error: Batch job submission failed: Invalid account or "
         "account/partition combination specified", "'account'"),
        ({"walltime": "99:00:00"}, "sbatch: error: Batch job submission failed: Requested time "
         "limit is invalid (missing or exceeds some limit)", "'walltime'"),
        ({"gpus": 1}, "sbatch: error: Invalid generic resource (gres) specification", "'gpus'"),
    ],
)
def test_slurm_refusal_names_the_option(options, stderr, key):
    from emfuse.cluster.profiles import _slurm_refusal

    message = _slurm_refusal(ClusterSpec("slurm", options).options, "#!/bin/bash\n", stderr)
    assert message.startswith(f"option {key}") and stderr.splitlines()[-1].strip() in message


def test_a_controller_that_does_not_answer_is_not_blamed_on_an_option():
    from emfuse.cluster.profiles import _slurm_refusal

    said = ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)")
    message = _slurm_refusal({"queue": "debug"}, "#!/bin/bash\n", said)
    assert message.startswith("SLURM's controller does not answer") and "scontrol ping" in message
    assert "no option of the profile is at fault" in message and "check its options" not in message


def test_slurm_refusal_of_memory_and_cores(monkeypatch):
    from emfuse.cluster import profiles

    monkeypatch.setattr(profiles, "_sinfo_limits", lambda queue: (2, 22000))  # a 2-core, 22 GB node
    refused = "allocation failure: Requested node configuration is not available"
    script = "#SBATCH --cpus-per-task=1\n#SBATCH --mem=61440M\n"
    message = profiles._slurm_refusal({"queue": "debug", "memory": "64GB"}, script, refused)
    assert message.startswith("option 'memory'") and "22000 MB" in message and "64GB" in message
    script = "#SBATCH --cpus-per-task=4\n#SBATCH --mem=954M\n"
    assert profiles._slurm_refusal({"cores": 4}, script, refused).startswith("option 'cores'")


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


def _fake_dask_cuda(monkeypatch) -> dict:
    """dask-cuda with one GPU whose LocalCUDACluster records its keyword arguments."""
    seen = {}
    fake = types.ModuleType("dask_cuda")
    fake.utils = types.ModuleType("dask_cuda.utils")
    fake.utils.get_n_gpus = lambda: 1
    fake.LocalCUDACluster = lambda **kw: seen.update(kw) or "cluster"
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setitem(sys.modules, "dask_cuda.utils", fake.utils)
    return seen


def test_local_gpu_workers_have_two_threads_unless_told(monkeypatch):
    # one thread computes on the GPU while the other reads the next window and writes (the runner's
    # device lock); dask-cuda's own default of one thread would leave the GPU idle during I/O
    from emfuse.cluster.profiles import GPU_WORKER_THREADS

    seen = _fake_dask_cuda(monkeypatch)
    make_cluster("local-gpu")
    assert seen["threads_per_worker"] == GPU_WORKER_THREADS == 2
    make_cluster("local-gpu", threads_per_worker=3)
    assert seen["threads_per_worker"] == 3


def test_slurm_gpu_workers_have_a_thread_per_core(tmp_path):
    # `dask cuda worker --nthreads` is per GPU worker: one computes, the others read and write
    worker = next(line for line in _slurm_script(tmp_path, gpus=1, cores=4).splitlines() if "cuda worker" in line)
    assert "--nthreads 4" in worker


def test_slurm_gpu_script_interpreter_and_gres(tmp_path):
    # the GPU job runs dask-cuda's worker with the interpreter that runs emfuse
    script = _slurm_script(tmp_path, gpus=2)
    assert f"{sys.executable} -m dask cuda worker tcp://" in script
    assert "#SBATCH --gres=gpu:2" in script
    assert "--nworkers" not in script  # dask-cuda starts one worker per GPU itself
    # ... or the one the profile names, e.g. where the compute nodes see the environment
    script = _slurm_script(tmp_path, gpus=1, python="/shared/emfuse/venv/bin/python")
    assert "/shared/emfuse/venv/bin/python -m dask cuda worker" in script
    # a --gres of the user's own is kept, not doubled
    script = _slurm_script(tmp_path, gpus=1, job_extra_directives=["--gres=gpu:a100:1"])
    assert script.count("--gres") == 1 and "#SBATCH --gres=gpu:a100:1" in script


class _FakeSLURMCluster:
    """Records how the profile scales the cluster (a real one would call sbatch)."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def adapt(self, **kwargs):
        self.calls.append(("adapt", kwargs))

    def scale(self, **kwargs):
        self.calls.append(("scale", kwargs))


@pytest.mark.parametrize(
    "options, call",
    [
        ({}, ("adapt", {"minimum_jobs": 0, "maximum_jobs": 4})),  # the defaults
        ({"minimum_jobs": 2, "maximum_jobs": 8}, ("adapt", {"minimum_jobs": 2, "maximum_jobs": 8})),
        ({"minimum_jobs": 3, "maximum_jobs": 3}, ("scale", {"jobs": 3})),
        ({"minimum_jobs": 6}, ("scale", {"jobs": 6})),  # maximum defaults to max(minimum, 4)
    ],
)
def test_slurm_scaling_from_profile(monkeypatch, no_sbatch_check, options, call):
    jobqueue = pytest.importorskip("dask_jobqueue")
    monkeypatch.setattr(jobqueue, "SLURMCluster", _FakeSLURMCluster)
    cluster = make_cluster("slurm", gpus=1, **options)
    assert cluster.calls == [call]
    assert cluster.kwargs["scheduler_options"] == {"dashboard_address": "127.0.0.1:8787"}
    assert cluster.kwargs["worker_command"] == "dask cuda worker"


# -- TLS --------------------------------------------------------------------------


def _write_tls(directory, name="emfuse-dask"):
    """A CA and a certificate signed by it (EC keys: quick to make), as PEM files."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def subject(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)

    def certificate(cn, key, issuer, issuer_key, ca):
        return (
            x509.CertificateBuilder().subject_name(subject(cn)).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate(f"{name}-ca", ca_key, subject(f"{name}-ca"), ca_key, True)
    cert = certificate(name, key, ca.subject, ca_key, False)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "tls_ca_file": directory / "ca.pem",
        "tls_cert": directory / "dask.pem",
        "tls_key": directory / "dask.key",
    }
    files["tls_ca_file"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["tls_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["tls_key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    files["tls_key"].chmod(0o600)
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return _write_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory):
    """Certificates from another CA: someone else's cluster, or an intruder."""
    return _write_tls(tmp_path_factory.mktemp("other-tls"), name="intruder")


def test_tls_options_accepted(tls):
    for profile in ("local", "local-gpu", "slurm"):
        assert ClusterSpec(profile, tls).options == tls
    spec = ClusterSpec.from_string("tls://10.0.0.5:8786", **tls, require_encryption=False)
    assert spec.profile == "scheduler" and spec.options["require_encryption"] is False
    security = tls_security(ClusterSpec("local", tls).options)
    assert security.require_encryption is True  # plain tcp:// refused by default
    for role in ("client", "scheduler", "worker"):
        assert security.get_tls_config_for_role(role) == {
            "ca_file": tls["tls_ca_file"], "cert": tls["tls_cert"], "key": tls["tls_key"],
            "ciphers": None,
        }
    assert tls_security(ClusterSpec("local").options) is None


def test_tls_paths_relative_to_profile_file(tmp_path, tls, monkeypatch):
    certs = tmp_path / "site" / "certs"
    certs.mkdir(parents=True)
    for path in map(Path, tls.values()):
        (certs / path.name).write_bytes(path.read_bytes())
    profile = tmp_path / "site" / "tls.yaml"
    profile.write_text(
        "profile: local\ntls_ca_file: certs/ca.pem\ntls_cert: certs/dask.pem\n"
        "tls_key: ~/certs/dask.key\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "site"))
    monkeypatch.chdir(tmp_path)  # not the profile's folder
    options = ClusterSpec.from_string(profile).options
    assert options == {
        "tls_ca_file": str(certs / "ca.pem"),
        "tls_cert": str(certs / "dask.pem"),
        "tls_key": str(certs / "dask.key"),
    }


def test_tls_problems_are_named(tmp_path, tls, other_tls):
    def refused(match, profile="local", **changes):
        options = {**tls, **changes}
        for key in [k for k, v in changes.items() if v is None]:
            del options[key]
        with pytest.raises(ClusterConfigError, match=match) as err:
            ClusterSpec(profile, options)
        return str(err.value)

    for key in ("tls_ca_file", "tls_cert", "tls_key"):
        message = refused(f"'{key}' is missing", **{key: None})
        assert "openssl" in message and "docs/hpc.md" in message
    message = refused("'tls_cert'.*does not exist", tls_cert=str(tmp_path / "nope.pem"))
    assert str(tmp_path / "nope.pem") in message and "openssl" in message
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    refused("'tls_ca_file'.*not a PEM", tls_ca_file=str(text))
    refused("'tls_cert' and 'tls_key'.*matching", tls_key=other_tls["tls_key"])
    refused("true or false", require_encryption="yes")
    with pytest.raises(ClusterConfigError, match="require_encryption.*tls_ca_file"):
        ClusterSpec("local", {"require_encryption": True})
    with pytest.raises(ClusterConfigError, match="'local-threads'.*`local` profile"):
        ClusterSpec("local-threads", tls)
    with pytest.raises(ClusterConfigError, match="tls://host:port"):
        ClusterSpec("scheduler", {"address": "tcp://10.0.0.5:8786", **tls})


def test_tls_key_with_passphrase(tmp_path, tls):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(tls["tls_key"]).read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    with pytest.raises(ClusterConfigError, match="'tls_key'.*passphrase.*openssl pkey"):
        ClusterSpec("local", {**tls, "tls_key": str(locked)})  # refused, never prompts


def test_local_cluster_over_tls(tls, other_tls):
    from distributed import Client

    with connect("local", n_workers=1, threads_per_worker=1, **tls) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")  # TLS, and still on loopback only
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and all(w.startswith("tls://127.0.0.1:") for w in workers)
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert int(da.arange(1000, chunks=100).sum().compute()) == 499500
        assert client.submit(sum, [1, 2, 3]).result() == 6
        # a certificate from another CA cannot connect, nor can a plain tcp:// client
        with pytest.raises(OSError):
            Client(address, security=tls_security(ClusterSpec("local", other_tls).options),
                   timeout="3s")
        with pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout="3s")


def test_scheduler_profile_with_tls(tls):
    from distributed import LocalCluster

    security = tls_security(ClusterSpec("local", tls).options)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
                      host="127.0.0.1", security=security, dashboard_address=None) as external:
        assert external.scheduler_address.startswith("tls://")
        with connect(external.scheduler_address, timeout="10s", **tls) as client:
            assert client.submit(sum, [2, 3]).result() == 5
        assert external.status.name == "running"


def test_local_gpu_tls(monkeypatch, tls):
    seen = _fake_dask_cuda(monkeypatch)
    assert make_cluster("local-gpu", **tls) == "cluster"
    assert seen["protocol"] == "tls://" and seen["host"] == "127.0.0.1"
    assert seen["security"].get_tls_config_for_role("worker")["cert"] == tls["tls_cert"]
    assert not any(key.startswith("tls_") for key in seen)


@pytest.mark.parametrize("gpus, command", [(0, "-m distributed.cli.dask_worker"),
                                           (1, "-m dask cuda worker")])
def test_slurm_script_tls(tmp_path, tls, gpus, command):
    script = _slurm_script(tmp_path, gpus=gpus, **tls)
    worker = next(line for line in script.splitlines() if command in line)
    assert " tls://<scheduler-address>:8786 " in worker
    assert "--protocol tls://" in worker
    for flag, key in (("--tls-ca-file", "tls_ca_file"), ("--tls-cert", "tls_cert"),
                      ("--tls-key", "tls_key")):
        assert f"{flag} {tls[key]}" in worker
    assert "PRIVATE KEY" not in script  # paths only, never the key itself


def test_slurm_cluster_with_tls(tls, no_sbatch_check):
    # scheduler only: no work and minimum_jobs=0, so nothing is submitted
    pytest.importorskip("dask_jobqueue")
    cluster = make_cluster("slurm", cores=2, memory="4GB", dashboard_address="127.0.0.1:0", **tls)
    try:
        assert cluster.scheduler_address.startswith("tls://")
        assert cluster.security.require_encryption is True
        assert f"--tls-key {tls['tls_key']}" in cluster.job_script()
    finally:
        cluster.close()


# -- the examples in docs/hpc.md ---------------------------------------------------


def _doc_blocks(language):
    text = (Path(__file__).resolve().parents[2] / "docs" / "hpc.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_docs_tls_recipe(tmp_path, monkeypatch):
    # the openssl commands of docs/hpc.md make certificates that the profiles accept and that
    # a TLS cluster runs with; and every profile example there is valid
    from distributed import Client, LocalCluster

    recipe = next(block for block in _doc_blocks("bash") if "openssl req -x509" in block)
    monkeypatch.setenv("HOME", str(tmp_path))
    subprocess.run(["bash", "-e", "-c", recipe], check=True, capture_output=True, cwd=tmp_path)
    folder = tmp_path / "emfuse" / "tls"
    assert oct((folder / "dask.key").stat().st_mode & 0o777) == "0o600"
    tls = {"tls_ca_file": str(folder / "ca.pem"), "tls_cert": str(folder / "dask.pem"),
           "tls_key": str(folder / "dask.key")}
    security = tls_security(ClusterSpec("local", tls).options)
    with LocalCluster(n_workers=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=security, dashboard_address=None) as cluster, \
            Client(cluster, security=security) as client:
        assert client.submit(sum, [1, 1]).result() == 2

    profiles = [b for b in _doc_blocks("yaml") if re.search(r"^profile:", b, flags=re.M)]
    assert len(profiles) >= 4
    for i, block in enumerate(profiles):
        path = tmp_path / f"profile{i}.yaml"
        path.write_text(block)
        spec = ClusterSpec.from_string(path)  # unknown keys, bad values, missing files refused
        if spec.profile == "slurm" and importlib.util.find_spec("dask_jobqueue"):
            render_job_script(spec.with_options(log_directory=str(tmp_path / "logs")))


def test_a_cluster_started_early_is_the_one_connect_uses():
    """``start_early`` (``emfuse run``: while Prefect's server starts) starts a local cluster in a
    thread; ``connect`` with an equal spec takes that very cluster and closes it at the end."""
    from emfuse.cluster import profiles

    spec = {"profile": "local", "n_workers": 1, "threads_per_worker": 1}
    profiles.start_early(spec)
    ((thread, result),) = profiles._EARLY.values()
    thread.join()
    early = result["cluster"]
    with profiles.connect(dict(spec)) as client:
        assert client.cluster is early
        assert client.submit(abs, -3).result() == 3
    assert not profiles._EARLY and early.status.name == "closed"


def test_an_early_cluster_nobody_takes_is_closed_and_other_profiles_start_as_before():
    from emfuse.cluster import profiles

    profiles.start_early({"profile": "local-threads", "n_workers": 1})  # cheap in-process: not ahead
    profiles.start_early("tcp://127.0.0.1:1")  # someone else's scheduler: nothing to start
    assert not profiles._EARLY
    profiles.start_early({"profile": "local", "n_workers": 1, "threads_per_worker": 1})
    ((thread, result),) = profiles._EARLY.values()
    profiles.discard_early()
    assert not profiles._EARLY and result["cluster"].status.name == "closed"


def test_an_early_start_that_fails_fails_again_where_it_is_used():
    """The error of a failed early start is the one the flow's own start raises, as before."""
    from emfuse.cluster import profiles

    spec = {"profile": "local", "n_workers": 1, "threads_per_worker": 1, "memory_limit": "lots"}
    profiles.start_early(spec)
    with pytest.raises(Exception) as early_error:
        profiles.make_cluster(spec)
    assert not profiles._EARLY
    with pytest.raises(type(early_error.value)):
        profiles.make_cluster(spec)
