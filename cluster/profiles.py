"""Dask cluster profiles: where the pipeline's tasks run.

A profile is chosen by a name, a YAML file or a scheduler address, so the same
job runs on a laptop, a GPU workstation or a SLURM allocation without code
changes:

``local`` (default)
    :class:`distributed.LocalCluster` with worker processes, everything bound
    to 127.0.0.1.
``local-threads``
    :class:`distributed.LocalCluster` with threads in this process (notebooks,
    tests, debugging).
``local-gpu``
    :class:`dask_cuda.LocalCUDACluster`, one worker per GPU (``emfuse[gpu]``),
    :data:`GPU_WORKER_THREADS` threads each (one computes, one reads and writes).
``slurm``
    :class:`dask_jobqueue.SLURMCluster`, one SLURM job per worker group,
    adaptive between ``minimum_jobs`` and ``maximum_jobs`` (``emfuse[hpc]``);
    with ``gpus`` each GPU worker has ``cores`` threads.
``scheduler``
    an existing scheduler, given as ``tcp://host:port`` or ``tls://host:port``.

Every profile but ``local-threads`` (which opens no connection between its
scheduler and workers) takes TLS options: ``tls_ca_file``, ``tls_cert`` and
``tls_key`` (PEM files, all three together) and ``require_encryption``
(default true). They become one :class:`distributed.security.Security` used by
the scheduler, the workers (also the SLURM jobs' ``--tls-*`` options) and the
client, and switch the protocol to ``tls://``; see docs/hpc.md.

A profile file is YAML, for example::

    profile: slurm
    queue: gpu
    cores: 16
    memory: 64GB
    walltime: "08:00:00"
    gpus: 1
    maximum_jobs: 10

Examples
--------
>>> from emfuse.cluster import connect
>>> with connect("local-threads", n_workers=1) as client:  # doctest: +SKIP
...     client.submit(sum, [1, 2, 3]).result()
6
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import EmfuseError

if TYPE_CHECKING:  # distributed is imported when a cluster starts, not on import
    from distributed import Client
    from distributed.deploy import Cluster

DEFAULT_PROFILE = "local"
PROFILES: tuple[str, ...] = ("local", "local-threads", "local-gpu", "slurm", "scheduler")

# Scheduler address schemes that mean "connect, do not start".
ADDRESS_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")  # inproc: a local-threads cluster of this process

#: Threads of a ``local-gpu`` worker unless ``threads_per_worker`` says otherwise: while one unit
#: computes on the GPU (one at a time, :func:`emfuse.flows.jobs.runner.device_gate`), the other
#: thread reads the next window and writes the last results. dask-cuda's default, 1, leaves the
#: GPU idle during every read and write.
GPU_WORKER_THREADS = 2

GPU_FIX = "install the GPU extra with `pip install 'emfuse[gpu]'` or use the `local` profile"
HPC_FIX = "install the HPC extra with `pip install 'emfuse[hpc]'`"
TLS_FIX = (
    "make a CA and a certificate with openssl as shown in docs/hpc.md (section TLS) and give "
    "their paths"
)

# TLS: the PEM files (all three or none) and whether plain tcp:// is refused.
TLS_FILES = ("tls_ca_file", "tls_cert", "tls_key")
TLS_OPTIONS = (*TLS_FILES, "require_encryption")

_LOCAL_OPTIONS = ("n_workers", "threads_per_worker", "memory_limit", "dashboard_address")
_SLURM_OPTIONS = (
    "queue",
    "partition",  # SLURM's own word for queue; normalised to ``queue``
    "account",
    "cores",
    "processes",
    "memory",
    "walltime",
    "gpus",
    "job_name",
    "job_extra_directives",
    "job_script_prologue",
    "worker_extra_args",
    "local_directory",
    "log_directory",
    "interface",
    "python",
    "death_timeout",
    "dashboard_address",
    "minimum_jobs",
    "maximum_jobs",
)

# The options each profile accepts; anything else is a typo worth stopping for.
PROFILE_OPTIONS: dict[str, tuple[str, ...]] = {
    "local": _LOCAL_OPTIONS + ("local_directory",) + TLS_OPTIONS,
    "local-threads": _LOCAL_OPTIONS,
    "local-gpu": _LOCAL_OPTIONS
    + ("local_directory", "devices", "device_memory_limit", "rmm_pool_size")
    + TLS_OPTIONS,
    "slurm": _SLURM_OPTIONS + TLS_OPTIONS,
    "scheduler": ("address", "timeout") + TLS_OPTIONS,
}

# Options that must be whole numbers, with their smallest allowed value.
_INT_OPTIONS = {
    "n_workers": 1,
    "threads_per_worker": 1,
    "cores": 1,
    "processes": 1,
    "gpus": 0,
    "minimum_jobs": 0,
    "maximum_jobs": 1,
}
_LIST_OPTIONS = ("job_extra_directives", "job_script_prologue", "worker_extra_args")

# SLURM defaults: one modest node-sized job, scaled adaptively up to a few jobs.
SLURM_DEFAULTS: dict[str, Any] = {
    "cores": 8,
    "memory": "32GB",
    "walltime": "04:00:00",
    "minimum_jobs": 0,
    "maximum_jobs": 4,
    "dashboard_address": "127.0.0.1:8787",
}

# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker process. An
# explicit trim threshold turns off glibc's adaptive mmap threshold, so every
# array temporary above 128 KiB is mmap'ed and unmapped again: the fusion
# kernel, which makes many MB-sized temporaries per iteration, then ran 5x
# slower in a worker than in a plain process (measured: 5.5 s vs 1.1 s per
# 320x320x3 window). The glibc defaults are restored for our workers.
WORKER_ENVIRON_UNSET = ("MALLOC_TRIM_THRESHOLD_",)

# The rendered job script has no scheduler to point to yet.
PLACEHOLDER_ADDRESS = "tcp://<scheduler-address>:8786"
PLACEHOLDER_TLS_ADDRESS = "tls://<scheduler-address>:8786"


class ClusterConfigError(EmfuseError, ValueError):
    """A cluster profile, option or profile file is not valid."""


class ClusterUnavailableError(EmfuseError, RuntimeError):
    """A profile cannot start here: a missing optional dependency or no GPU."""


@dataclass
class ClusterSpec:
    """A cluster profile name and its options, validated on creation.

    Parameters
    ----------
    profile
        One of :data:`PROFILES`.
    options
        Keyword options of that profile (see :data:`PROFILE_OPTIONS`).

    Examples
    --------
    >>> ClusterSpec("slurm", {"partition": "gpu", "gpus": 1}).options["queue"]
    'gpu'
    >>> ClusterSpec.from_string("tcp://10.0.0.5:8786").profile
    'scheduler'
    """

    profile: str = DEFAULT_PROFILE
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.profile = _check_profile(self.profile)
        self.options = _check_options(self.profile, dict(self.options))

    @classmethod
    def from_string(cls, text: str | os.PathLike | None, **overrides: Any) -> ClusterSpec:
        """Parse a profile name, a scheduler address or the path of a YAML profile file.

        ``None`` or an empty string gives the default ``local`` profile; keyword
        ``overrides`` replace options read from the string or file.

        Examples
        --------
        >>> ClusterSpec.from_string("local", n_workers=2).options
        {'n_workers': 2}
        """
        text = "" if text is None else os.fspath(text).strip()
        if not text:
            return cls(DEFAULT_PROFILE, overrides)
        if text.startswith(ADDRESS_SCHEMES):
            return cls("scheduler", {"address": text, **overrides})
        if text in PROFILES:
            return cls(text, overrides)
        if text.endswith((".yaml", ".yml")) or Path(text).is_file():
            return cls.from_yaml(text, **overrides)
        raise ClusterConfigError(
            f"unknown cluster profile {text!r}: give one of {', '.join(PROFILES)}, "
            "a scheduler address (tcp://host:port), or a YAML profile file"
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> ClusterSpec:
        """Read a YAML profile file (a mapping with a ``profile`` key and its options)."""
        path = Path(path)
        if not path.is_file():
            raise ClusterConfigError(f"cluster profile file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ClusterConfigError(
                f"cluster profile file {str(path)!r} is not YAML: {err}"
            ) from err
        if not isinstance(data, Mapping):
            raise ClusterConfigError(
                f"cluster profile file {str(path)!r} must hold a mapping such as "
                "`{profile: slurm, queue: gpu, cores: 16}`"
            )
        # certificate paths in a profile file are relative to that file
        data = {
            k: _beside(path, v) if k in TLS_FILES and isinstance(v, (str, os.PathLike)) else v
            for k, v in data.items()
        }
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> ClusterSpec:
        """Build a spec from a mapping such as a catalog's ``cluster:`` entry.

        The ``profile`` key names the profile; without it, an ``address`` key
        means ``scheduler`` and anything else ``local``.
        """
        options = {str(k): v for k, v in data.items()}
        profile = options.pop("profile", None)
        if profile is None:
            profile = "scheduler" if "address" in options else DEFAULT_PROFILE
        elif str(profile).startswith(ADDRESS_SCHEMES):  # `profile: tcp://host:port`
            profile, options["address"] = "scheduler", str(profile)
        return cls(str(profile), _merge(options, overrides))

    def with_options(self, **overrides: Any) -> ClusterSpec:
        """A copy with some options replaced."""
        return ClusterSpec(self.profile, _merge(self.options, overrides))

    def describe(self) -> str:
        """A one-line description for logs, e.g. ``slurm(queue=gpu, gpus=1)``."""
        items = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.profile}({items})"


def _beside(profile_file: Path, value: str | os.PathLike) -> str:
    """A path from a profile file: ``~`` and ``$VARS`` expanded, relative to the file."""
    expanded = Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))
    return str(expanded if expanded.is_absolute() else profile_file.parent / expanded)


def _merge(options: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Options with overrides applied; ``partition`` and ``queue`` replace each other."""
    merged = dict(options)
    for key, alias in (("partition", "queue"), ("queue", "partition")):
        if key in overrides:
            merged.pop(alias, None)
    merged.update(overrides)
    return merged


def as_spec(spec: ClusterSpec | str | os.PathLike | Mapping | None, **overrides: Any) -> ClusterSpec:
    """Turn whatever a caller holds (spec, name, address, path, mapping, None) into a spec."""
    if isinstance(spec, ClusterSpec):
        return spec.with_options(**overrides) if overrides else spec
    if isinstance(spec, Mapping):
        return ClusterSpec.from_dict(spec, **overrides)
    return ClusterSpec.from_string(spec, **overrides)



#: Profiles whose workers may not share the caller's machine (its GPU, its torch build).
REMOTE_PROFILES = ("slurm", "scheduler")


def is_remote(cluster: Any) -> bool:
    """True when the cluster's workers may not share this machine (its GPU, its torch build).

    A spec that does not parse counts as local here: :func:`connect` names the problem.

    Examples
    --------
    >>> is_remote("local"), is_remote("slurm")
    (False, True)
    """
    try:
        return as_spec(cluster).profile in REMOTE_PROFILES
    except ValueError:
        return False

def _check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ClusterConfigError(
            f"unknown cluster profile {profile!r}; accepted profiles: {', '.join(PROFILES)}"
        )
    return profile


def _check_options(profile: str, options: dict[str, Any]) -> dict[str, Any]:
    accepted = PROFILE_OPTIONS[profile]
    for key in options:
        if key in TLS_OPTIONS and key not in accepted:
            raise ClusterConfigError(
                f"option {key!r}: the {profile!r} profile runs its workers as threads in this "
                "process and opens no connection to encrypt; use the `local` profile "
                "(worker processes) with TLS, or drop the TLS options"
            )
        if key not in accepted:
            raise ClusterConfigError(
                f"unknown option {key!r} for cluster profile {profile!r}; "
                f"accepted options: {', '.join(sorted(accepted))}"
            )
    for key, value in options.items():
        _check_value(profile, key, value)
    if "partition" in options:
        partition = options.pop("partition")
        if options.get("queue", partition) != partition:
            raise ClusterConfigError("give either `queue` or `partition`, not two different ones")
        options["queue"] = partition
    if profile == "scheduler" and not str(options.get("address", "")).startswith(ADDRESS_SCHEMES):
        raise ClusterConfigError(
            "the scheduler profile needs `address` like tcp://host:port or tls://host:port"
        )
    _check_tls(profile, options)
    if profile == "slurm":
        _check_slurm(options)
    return options


def _check_value(profile: str, key: str, value: Any) -> None:
    if key in _INT_OPTIONS:
        minimum = _INT_OPTIONS[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ClusterConfigError(
                f"option {key!r} of profile {profile!r} must be an integer >= {minimum}, "
                f"got {value!r}"
            )
    if key in _LIST_OPTIONS and not (
        isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    ):
        raise ClusterConfigError(f"option {key!r} must be a list of strings, got {value!r}")


def _check_tls(profile: str, options: dict[str, Any]) -> None:
    """All three PEM files or none; each one an existing, readable file; stored absolute.

    The certificate and key are also loaded once (:mod:`ssl`), so a key that does
    not belong to the certificate or a file that is not PEM is named here, not
    in a failed connection in the middle of the night.
    """
    given = [key for key in TLS_FILES if key in options]
    if "require_encryption" in options:
        if not isinstance(options["require_encryption"], bool):
            raise ClusterConfigError(
                f"option 'require_encryption' of profile {profile!r} must be true or false, "
                f"got {options['require_encryption']!r}"
            )
        if not given:
            raise ClusterConfigError(
                "option 'require_encryption' needs TLS: give tls_ca_file, tls_cert and tls_key "
                f"too; {TLS_FIX}"
            )
    if not given:
        return
    for key in TLS_FILES:
        if key not in options:
            raise ClusterConfigError(
                f"option {key!r} is missing: TLS needs tls_ca_file, tls_cert and tls_key "
                f"together (the CA certificate, this cluster's certificate, its private key); "
                f"{TLS_FIX}"
            )
        value = options[key]
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise ClusterConfigError(f"option {key!r} must be the path of a PEM file, got {value!r}")
        path = Path(os.path.expandvars(os.path.expanduser(os.fspath(value)))).absolute()
        if not path.is_file():
            raise ClusterConfigError(
                f"option {key!r}: the file {str(path)!r} does not exist; {TLS_FIX}"
            )
        if not os.access(path, os.R_OK):
            raise ClusterConfigError(
                f"option {key!r}: the file {str(path)!r} is not readable by this user; fix its "
                "permissions (the key: chmod 600, owned by the user who runs emfuse)"
            )
        options[key] = str(path)
    _check_pem(options)
    if profile == "scheduler" and not str(options["address"]).startswith("tls://"):
        raise ClusterConfigError(
            f"TLS options were given but the scheduler address {options['address']!r} is not "
            "tls://; give the address as tls://host:port"
        )


def _check_pem(options: Mapping[str, Any]) -> None:
    import ssl

    try:
        ssl.create_default_context(cafile=options["tls_ca_file"])
    except (ssl.SSLError, ValueError, OSError) as err:
        raise ClusterConfigError(
            f"option 'tls_ca_file': {options['tls_ca_file']!r} is not a PEM CA certificate "
            f"({err}); {TLS_FIX}"
        ) from err
    def no_passphrase() -> str:  # Dask cannot type a passphrase; never prompt for one
        raise ClusterConfigError(
            f"option 'tls_key': {options['tls_key']!r} is protected by a passphrase, which the "
            "scheduler and workers cannot enter; write it without one (`openssl pkey -in KEY -out "
            "PLAIN_KEY`, or make it with -nodes) and keep it private with chmod 600"
        )

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            options["tls_cert"], options["tls_key"], password=no_passphrase
        )
    except ClusterConfigError:
        raise
    except (ssl.SSLError, ValueError, OSError) as err:
        raise ClusterConfigError(
            f"options 'tls_cert' and 'tls_key': {options['tls_cert']!r} and "
            f"{options['tls_key']!r} are not a matching PEM certificate and private key ({err}); "
            f"{TLS_FIX}"
        ) from err


def tls_security(options: Mapping[str, Any]):
    """The :class:`distributed.security.Security` of a profile's TLS options, or None.

    One certificate and key serve every role (scheduler, workers, client); each
    side checks that the other's certificate is signed by ``tls_ca_file``
    (Dask checks the CA, not host names, so one certificate works on every node).

    Examples
    --------
    >>> tls_security({"n_workers": 2}) is None
    True
    """
    if "tls_ca_file" not in options:
        return None
    from distributed.security import Security

    cert, key = options["tls_cert"], options["tls_key"]
    return Security(
        require_encryption=options.get("require_encryption", True),
        tls_ca_file=options["tls_ca_file"],
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
    )


def _without_tls(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in TLS_OPTIONS}


def _check_slurm(options: dict[str, Any]) -> None:
    low = options.get("minimum_jobs", SLURM_DEFAULTS["minimum_jobs"])
    high = options.get("maximum_jobs", max(low, SLURM_DEFAULTS["maximum_jobs"]))
    if high < low:
        raise ClusterConfigError(f"maximum_jobs ({high}) is smaller than minimum_jobs ({low})")
    if options.get("gpus", 0) > 0 and options.get("processes", 1) != 1:
        # `dask cuda worker` starts one worker process per GPU on its own.
        raise ClusterConfigError(
            "with gpus > 0 leave `processes` unset: dask-cuda starts one worker per GPU"
        )


# -- local profiles -----------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. under SLURM)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def local_defaults(processes: bool = True, n_workers: int | None = None) -> dict[str, Any]:
    """Worker count, threads and memory for a LocalCluster on this machine.

    Processes: up to 4 workers (fusion tiles are numpy/numba work that releases
    the GIL, so past that more threads per worker beat more processes), the
    cores shared among them and the memory split evenly. Threads: one worker
    with a thread per core. A given ``n_workers`` gets its share of both.

    Examples
    --------
    >>> local_defaults(n_workers=2)["threads_per_worker"] >= 1
    True
    """
    from distributed.system import MEMORY_LIMIT  # honours cgroup and rlimit caps

    cores = available_cores()
    if n_workers is None:
        n_workers = min(cores, 4) if processes else 1
    return {
        "n_workers": n_workers,
        "threads_per_worker": max(1, cores // n_workers),
        "memory_limit": int(MEMORY_LIMIT // n_workers),
    }


@contextlib.contextmanager
def _worker_environ() -> Iterator[None]:
    """Dask config under which nannies spawn workers without the variables above."""
    import dask

    unset = {f"distributed.nanny.pre-spawn-environ.{name}": None for name in WORKER_ENVIRON_UNSET}
    with dask.config.set(unset):
        yield


def numba_threads_per_worker(n_workers: int, threads_per_worker: int) -> int:
    """Numba threads for each worker process so that all of them together fill the cores once.

    Every Dask worker thread may run a parallel numba kernel (a fusion tile);
    without a cap each would start one thread per core and they would fight
    over the cores.

    Examples
    --------
    >>> numba_threads_per_worker(1, 1) == available_cores()
    True
    """
    return max(1, available_cores() // max(1, n_workers * threads_per_worker))


def _worker_environ_prologue() -> list[str]:
    """The same for SLURM jobs: the nanny there reads Dask config from its environment."""
    return [f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__{name}=None" for name in WORKER_ENVIRON_UNSET]


def _local_cluster(options: Mapping[str, Any], processes: bool):
    from distributed import LocalCluster

    defaults = local_defaults(processes, options.get("n_workers"))
    kwargs = {**defaults, "dashboard_address": "127.0.0.1:0", **_without_tls(options)}
    security = tls_security(options)
    if security is not None:  # scheduler and workers talk TLS, still on loopback
        kwargs.update(protocol="tls://", security=security)
    # Scheduler, workers and every HTTP endpoint stay on loopback: nothing is
    # reachable from the network on a shared machine.
    if processes:
        kwargs["host"] = "127.0.0.1"
    else:
        # Threads talk over inproc:// (no socket at all), but the in-process
        # worker has no host of its own, so its HTTP server (metrics, health)
        # would otherwise listen on all interfaces.
        kwargs.setdefault("worker_dashboard_address", "127.0.0.1:0")
    if processes:
        # set in the worker process only (the nanny's `env`): a pre-spawn variable
        # would also change this process's environment, where numba may already run
        numba_threads = numba_threads_per_worker(kwargs["n_workers"], kwargs["threads_per_worker"])
        kwargs["env"] = {"NUMBA_NUM_THREADS": str(numba_threads), **kwargs.get("env", {})}
    with _worker_environ():
        return LocalCluster(processes=processes, **kwargs)


def _import_optional(module: str, fix: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ClusterUnavailableError(f"{what} needs the `{module}` package: {fix}") from err


def count_gpus() -> int:
    """Number of CUDA GPUs that dask-cuda sees; 0 when none or no driver."""
    dask_cuda_utils = _import_optional(
        "dask_cuda.utils", GPU_FIX, "the `local-gpu` cluster profile"
    )
    try:
        return int(dask_cuda_utils.get_n_gpus())
    except Exception:  # noqa: BLE001 - NVML and CUDA raise their own types when no driver
        return 0


def _local_gpu_cluster(options: Mapping[str, Any]):
    dask_cuda = _import_optional("dask_cuda", GPU_FIX, "the `local-gpu` cluster profile")
    if count_gpus() == 0:
        raise ClusterUnavailableError(f"the `local-gpu` cluster profile found no CUDA GPU: {GPU_FIX}")
    kwargs = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
              "threads_per_worker": GPU_WORKER_THREADS, **_without_tls(options)}
    security = tls_security(options)
    if security is not None:
        kwargs.update(protocol="tls://", security=security)
    if "devices" in kwargs:
        kwargs["CUDA_VISIBLE_DEVICES"] = kwargs.pop("devices")
    with _worker_environ():
        return dask_cuda.LocalCUDACluster(**kwargs)


# -- SLURM --------------------------------------------------------------------


def slurm_job_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a dask-jobqueue SLURM job for these profile options.

    ``gpus`` becomes ``--gres=gpu:N`` and switches the worker command to
    ``dask cuda worker`` (one worker per GPU); TLS options become ``security``
    and ``protocol="tls://"`` (dask-jobqueue adds ``--protocol tls://`` and the
    ``--tls-ca-file/--tls-cert/--tls-key`` options to the worker command);
    scaling and dashboard options are left out (they belong to the cluster,
    not the job).

    Examples
    --------
    >>> kw = slurm_job_kwargs({"gpus": 1, "cores": 8, "memory": "32GB"})
    >>> kw["job_extra_directives"], kw["worker_command"]
    (['--gres=gpu:1'], 'dask cuda worker')
    """
    kwargs = {k: v for k, v in SLURM_DEFAULTS.items() if k in ("cores", "memory", "walltime")}
    kwargs.update(_without_tls(options))
    security = tls_security(options)
    if security is not None:
        kwargs.update(protocol="tls://", security=security)
    for key in ("minimum_jobs", "maximum_jobs", "dashboard_address"):
        kwargs.pop(key, None)
    # job_name stays job_name: it is SLURM's -J (dask-jobqueue's `name` is the Dask worker's)
    gpus = kwargs.pop("gpus", 0)
    extra = list(kwargs.pop("job_extra_directives", []))
    if gpus > 0:
        if not any(d.startswith("--gres") for d in extra):
            extra.append(f"--gres=gpu:{gpus}")
        # Run through `python -m dask` so the job uses the same interpreter as
        # the scheduler side; dask-cuda registers the `cuda worker` subcommand.
        kwargs["worker_command"] = "dask cuda worker"
        kwargs["processes"] = 1
    kwargs["job_extra_directives"] = extra
    kwargs["job_script_prologue"] = [*_worker_environ_prologue(), *kwargs.get("job_script_prologue", [])]
    return kwargs


SBATCH_FIX = (
    "run emfuse on a login or service node of the SLURM cluster, from a login shell "
    "(`bash -lc ...`) so that `module` set-ups put sbatch on PATH"
)


def _sinfo_rows(fields: str, queue: str | None) -> list[list[str]]:
    """`sinfo`'s rows of partition ``queue`` (None: the default one, which sinfo marks with '*'),
    each ``"%P"`` (the partition) then the other ``fields``; empty when sinfo does not answer."""
    import subprocess

    command = ["sinfo", "-h", "-o", f"%P {fields}"] + (["-p", queue] if queue else [])
    try:
        lines = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.split() for line in lines if len(line.split()) == len(fields.split()) + 1]
    if not queue:
        rows = [r for r in rows if r[0].endswith("*")] or rows
    return rows


def _sinfo_limits(queue: str | None) -> tuple[int, int] | None:
    """The most CPUs and memory (MB) of one node of partition ``queue`` (None: the default one)."""
    import re

    rows = _sinfo_rows("%c %m", queue)
    numbers = [(int(m.group()), int(n.group())) for _, c, mem in rows
               if (m := re.match(r"\d+", c)) and (n := re.match(r"\d+", mem))]
    if not numbers:
        return None
    return max(c for c, _ in numbers), max(m for _, m in numbers)


def _script_request(script: str) -> tuple[int | None, int | None]:
    """CPUs per task and memory (MB) that a rendered job script asks for."""
    import re

    cpus = re.search(r"^#SBATCH --cpus-per-task=(\d+)", script, flags=re.M)
    mem = re.search(r"^#SBATCH --mem=(\d+)([KMGT]?)", script, flags=re.M)
    mem_mb = None
    if mem:
        scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[mem.group(2)]
        mem_mb = int(int(mem.group(1)) * scale)
    return (int(cpus.group(1)) if cpus else None), mem_mb


def _slurm_refusal(options: Mapping[str, Any], script: str, stderr: str) -> str:
    """Why SLURM refuses the profile's job, in the profile's words: the option to change, and how."""
    queue = options.get("queue")
    where = f"partition {queue!r}" if queue else "the default partition"
    said = " ".join(line.strip() for line in stderr.strip().splitlines())
    text = said.lower()
    if "unable to contact slurm controller" in text or "slurm_load_ctl_conf" in text:
        return (f"SLURM's controller does not answer ({said}): no option of the profile is at fault. "
                "Check that slurmctld runs (`scontrol ping`) and that this node may submit jobs (its "
                "slurm.conf names the controller), or use another --cluster (local)")
    if "account" in text:
        return (f"option 'account' of the slurm profile: SLURM refuses account "
                f"{options.get('account')!r} on {where} ({said}); give one that "
                "`sacctmgr show assoc user=$USER` lists")
    if "invalid partition" in text:
        return (f"option 'queue' (or 'partition') of the slurm profile: SLURM has no partition "
                f"{queue!r} ({said}); give one that `sinfo -s` lists")
    if "time limit" in text:
        return (f"option 'walltime' of the slurm profile: {where} does not allow "
                f"{options.get('walltime', SLURM_DEFAULTS['walltime'])!r} ({said}); give a shorter "
                "walltime (`sinfo -o '%P %l'` shows each partition's limit)")
    if "gres" in text or "generic resource" in text:
        return (f"option 'gpus' (or a --gres in 'job_extra_directives') of the slurm profile: "
                f"{where} has no such generic resource ({said}); choose a GPU partition as "
                "'queue' or drop 'gpus'")
    cpus, mem_mb = _script_request(script)
    limits = _sinfo_limits(queue)
    if limits is not None:
        node_cpus, node_mb = limits
        if mem_mb is not None and mem_mb > node_mb:
            return (f"option 'memory' of the slurm profile: each job asks for "
                    f"{options.get('memory', SLURM_DEFAULTS['memory'])} (--mem={mem_mb}M) but the "
                    f"nodes of {where} have at most {node_mb} MB ({said}); lower 'memory'")
        if cpus is not None and cpus > node_cpus:
            return (f"option 'cores' of the slurm profile: each job asks for {cpus} cores but the "
                    f"nodes of {where} have at most {node_cpus} ({said}); lower 'cores'")
    return (f"SLURM refuses the job of the slurm profile on {where} ({said}); check its options "
            "'queue', 'account', 'cores', 'memory', 'gpus' and 'walltime' against `sinfo -s` "
            "and `scontrol show partition`")


def check_slurm_accepts(options: Mapping[str, Any]) -> None:
    """Ask SLURM whether it would run one worker job of these options, before anything is submitted.

    ``sbatch --test-only`` validates the rendered job script (partition, account, memory and
    cores against the partition's nodes, generic resources, time limit) without submitting
    it. Without this check a refused job leaves dask-jobqueue submitting again and the batch
    waiting for workers that never come. A job accepted on a partition out of service (down,
    inactive, every node down or drained: :func:`partition_out_of_service`) is logged as a warning.

    Raises
    ------
    ClusterUnavailableError
        sbatch is not on PATH, or SLURM refuses the job: the message names the profile
        option to change.
    """
    import shutil
    import subprocess
    import tempfile

    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ClusterUnavailableError(f"the `slurm` cluster profile needs SLURM's `sbatch` on PATH: {SBATCH_FIX}")
    script = render_job_script(ClusterSpec("slurm", dict(options)))
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="emfuse-check-") as file:
        file.write(script)
        file.flush()
        try:
            done = subprocess.run([sbatch, "--test-only", file.name], capture_output=True,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired as err:
            raise ClusterUnavailableError(
                "the slurm controller did not answer `sbatch --test-only` within 60 s: check "
                "`scontrol ping` and `sinfo`"
            ) from err
    if done.returncode != 0:
        raise ClusterUnavailableError(_slurm_refusal(options, script, done.stderr or done.stdout))
    reason = partition_out_of_service(options.get("queue"))  # the controller answered: sinfo is quick
    if reason is not None:  # accepted, but nothing will start: say so now, not after hours of silence
        import logging

        logging.getLogger(__name__).warning("%s", out_of_service_message(None, reason, options.get("queue")))


#: How often the jobs of a slurm cluster are compared with `squeue` (seconds).
JOB_WATCH_INTERVAL_S = 10.0
#: `squeue` reasons of a pending job that waits for a partition or node an administrator took out
#: of service (maintenance): the batch waits for it, and says so instead of waiting in silence.
_OUT_OF_SERVICE_REASONS = {"PartitionDown", "PartitionInactive", "ReqNodeNotAvail", "NodeDown"}


def out_of_service_message(job_id: str | None, reason: str, queue: str | None) -> str:
    """What a worker job pending for ``reason`` means for the batch, and what the user can do.

    ``job_id`` None: before any job is submitted.

    Examples
    --------
    >>> out_of_service_message("12", "PartitionDown", "debug").split(";")[0]
    "SLURM job 12 waits: partition 'debug' is out of service (PartitionDown)"
    """
    where = f"partition {queue!r}" if queue else "the default partition"
    who = f"SLURM job {job_id} waits" if job_id else "SLURM worker jobs will wait"
    return (f"{who}: {where} is out of service ({reason}); the batch waits until "
            f"SLURM runs it, as after a maintenance. `scontrol show partition` and `sinfo -R` say why; "
            "to go on elsewhere, stop the batch and set the slurm profile's 'queue' to another "
            "partition (a rerun resumes).")


def partition_out_of_service(queue: str | None) -> str | None:
    """Why ``queue`` (None: the default partition) cannot start jobs now, from `sinfo`; None if it can.

    A partition that is down or inactive, or whose every node is down, drained or failing, takes
    jobs but never starts them.
    """
    rows = _sinfo_rows("%a %t", queue)
    if not rows:
        return None
    if all(avail in ("down", "inact", "drain") for _, avail, _ in rows):
        return f"PartitionDown (sinfo: {rows[0][1]})"
    states = {state.rstrip("*~#!%$@^-") for _, _, state in rows}
    if states <= {"down", "drain", "drained", "drng", "fail", "failg", "maint", "unk", "inval", "npc"}:
        return f"NodeDown (sinfo: nodes {', '.join(sorted(states))})"
    return None


#: `squeue` states of a job that runs or may still run.
_LIVE_JOB_STATES = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                    "RESIZING", "SIGNALING", "STAGE_OUT"}


def _watch_slurm_jobs(cluster, queue: str | None = None, interval_s: float = JOB_WATCH_INTERVAL_S) -> None:
    """Replace the worker jobs that SLURM ended (scancel, walltime, node failure) while work remains.

    dask-jobqueue does not poll SLURM: a job that ends before its worker connects stays in the
    cluster's list as if still queued, so adaptive scaling never submits another one and the batch
    waits for ever; one that ends after its worker connected is dropped only from that list,
    not from the cluster's plan. Every ``interval_s`` this compares the cluster's jobs with
    `squeue`: a job that is gone and has no worker connected is forgotten, and the cluster
    submits a job again for each planned worker that has none. A job pending because its
    partition (``queue``, None: the default one) is out of service is logged once per reason.
    """
    import asyncio
    import logging
    import shutil

    from distributed.core import Status
    from tornado.ioloop import PeriodicCallback

    log = logging.getLogger(__name__)
    squeue = shutil.which("squeue")
    if squeue is None:
        return

    said: set[tuple[str, str]] = set()  # (job, reason) already warned about

    async def check() -> None:
        if cluster.status in (Status.closing, Status.closed):
            watch.stop()
            return
        jobs = {name: job.job_id for name, job in list(cluster.workers.items())
                if getattr(job, "job_id", None)}
        if jobs:
            proc = await asyncio.create_subprocess_exec(
                squeue, "-h", "-o", "%i %T %r", "-j", ",".join(map(str, jobs.values())),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            if proc.returncode != 0 and b"Invalid job id" not in err:
                return  # the controller did not answer: try again next time
            rows = [line.split() for line in out.decode().splitlines() if len(line.split()) == 3]
            live = {job for job, state, _ in rows if state in _LIVE_JOB_STATES}
            for job, state, reason in rows:
                if state == "PENDING" and reason in _OUT_OF_SERVICE_REASONS and (job, reason) not in said:
                    said.add((job, reason))
                    log.warning("%s", out_of_service_message(job, reason, queue))
            connected = {str(w.get("name")) for w in cluster.scheduler_info.get("workers", {}).values()}
            for name, job_id in jobs.items():
                if str(job_id) in live or any(w == str(name) or w.startswith(f"{name}-") for w in connected):
                    continue
                log.warning("SLURM job %s (worker %s) has ended (scancel, walltime or a failed "
                            "node; see `sacct -j %s` or its log) and its worker is gone: submitting "
                            "another job", job_id, name, job_id)
                cluster.workers.pop(name, None)
        if set(cluster.worker_spec) - set(cluster.workers):
            await cluster._correct_state()

    watch = PeriodicCallback(check, interval_s * 1000)
    cluster._emfuse_job_watch = watch  # kept with the cluster (and stopped when it closes)
    cluster.loop.add_callback(watch.start)


def _slurm_cluster(options: Mapping[str, Any]):
    jobqueue = _import_optional("dask_jobqueue", HPC_FIX, "the `slurm` cluster profile")
    check_slurm_accepts(options)
    dashboard = options.get("dashboard_address", SLURM_DEFAULTS["dashboard_address"])
    cluster = jobqueue.SLURMCluster(
        scheduler_options={"dashboard_address": dashboard}, **slurm_job_kwargs(options)
    )
    _watch_slurm_jobs(cluster, options.get("queue"))
    low = options.get("minimum_jobs", SLURM_DEFAULTS["minimum_jobs"])
    high = options.get("maximum_jobs", max(low, SLURM_DEFAULTS["maximum_jobs"]))
    if low == high:
        cluster.scale(jobs=low)
    else:
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
    return cluster


def render_job_script(spec: ClusterSpec | str | os.PathLike | Mapping | None = None,
                      **overrides: Any) -> str:
    """The SLURM batch script one worker job of a ``slurm`` profile would submit.

    Nothing is started or submitted: the script is rendered by dask-jobqueue's
    ``SLURMJob`` (what ``SLURMCluster.job_script()`` uses) with a placeholder
    scheduler address, so it works on a machine without SLURM.

    Examples
    --------
    >>> script = render_job_script("slurm", queue="gpu", gpus=1)  # doctest: +SKIP
    >>> "#SBATCH --gres=gpu:1" in script  # doctest: +SKIP
    True
    """
    spec = as_spec(spec if spec is not None else "slurm", **overrides)
    if spec.profile != "slurm":
        raise ClusterConfigError(f"only the slurm profile has a job script, not {spec.profile!r}")
    slurm = _import_optional("dask_jobqueue.slurm", HPC_FIX, "rendering a SLURM job script")
    kwargs = slurm_job_kwargs(spec.options)
    address = PLACEHOLDER_TLS_ADDRESS if "security" in kwargs else PLACEHOLDER_ADDRESS
    job = slurm.SLURMJob(address, name="dummy-name", **kwargs)
    return job.job_script()


# -- public entry points --------------------------------------------------------


def make_cluster(
    spec: ClusterSpec | str | os.PathLike | Mapping | None = None, **overrides: Any
) -> Cluster | None:
    """Start the cluster a spec describes.

    Parameters
    ----------
    spec
        A :class:`ClusterSpec`, a profile name, a scheduler address, a YAML
        path, a mapping, or ``None`` for the default ``local`` profile.
    **overrides
        Options that replace the spec's own.

    Returns
    -------
    distributed.deploy.Cluster or None
        The started cluster, or ``None`` for the ``scheduler`` profile
        (nothing to start; connect a Client to ``spec.options["address"]``).
        The caller closes it; :func:`connect` does that for you.

    Examples
    --------
    >>> cluster = make_cluster("local", n_workers=2, threads_per_worker=1)  # doctest: +SKIP
    >>> cluster.close()  # doctest: +SKIP
    """
    spec = as_spec(spec, **overrides)
    early = _take_early(spec)
    return early if early is not None else _start_cluster(spec)


def _start_cluster(spec: ClusterSpec) -> Cluster | None:
    if spec.profile == "local":
        return _local_cluster(spec.options, processes=True)
    if spec.profile == "local-threads":
        return _local_cluster(spec.options, processes=False)
    if spec.profile == "local-gpu":
        return _local_gpu_cluster(spec.options)
    if spec.profile == "slurm":
        return _slurm_cluster(spec.options)
    return None  # "scheduler": someone else owns it


#: profiles :func:`start_early` starts ahead (their workers are processes on this machine)
EARLY_PROFILES = ("local", "local-gpu")
#: clusters being started ahead: spec key -> (the starting thread, its result or error)
_EARLY: dict[str, tuple[threading.Thread, dict[str, Any]]] = {}


def _early_key(spec: ClusterSpec) -> str:
    return json.dumps([spec.profile, spec.options], sort_keys=True, default=str)


def start_early(spec: ClusterSpec | str | os.PathLike | Mapping | None) -> None:
    """Begin starting a local cluster now, in a thread; the next :func:`make_cluster` (or
    :func:`connect`) of an equal spec takes it instead of starting one.

    ``emfuse run`` starts its cluster so while Prefect's server starts and the batch loads: the
    worker processes' start then overlaps that wait. Only :data:`EARLY_PROFILES`; a start that
    fails is left to :func:`make_cluster`, which starts the cluster again and reports the error
    as usual. :func:`discard_early` closes a cluster nobody took.
    """
    spec = as_spec(spec)
    key = _early_key(spec)
    if spec.profile not in EARLY_PROFILES or key in _EARLY:
        return
    result: dict[str, Any] = {}

    def start() -> None:
        try:
            result["cluster"] = _start_cluster(spec)
        except Exception as exc:  # raised again by the caller's own start
            result["error"] = exc

    thread = threading.Thread(target=start, name="emfuse-cluster-start", daemon=True)
    _EARLY[key] = (thread, result)
    thread.start()


def _take_early(spec: ClusterSpec) -> Cluster | None:
    """The cluster :func:`start_early` started for ``spec`` (waiting for its start), else None."""
    entry = _EARLY.pop(_early_key(spec), None)
    if entry is None:
        return None
    thread, result = entry
    thread.join()
    return result.get("cluster")


def discard_early() -> None:
    """Close every cluster :func:`start_early` started that no :func:`make_cluster` took."""
    for key in list(_EARLY):
        thread, result = _EARLY.pop(key)
        thread.join()
        if result.get("cluster") is not None:
            result["cluster"].close()


@contextlib.contextmanager
def connect(
    spec: ClusterSpec | str | os.PathLike | Mapping | None = None, **overrides: Any
) -> Iterator[Client]:
    """Start (or reach) a cluster, yield a :class:`distributed.Client`, then clean up.

    The client is always closed, and so is the cluster when this function
    started it; an existing scheduler (``tcp://...``) is left running.

    Examples
    --------
    >>> with connect("local", n_workers=2, threads_per_worker=1) as client:  # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    3
    """
    from distributed import Client

    spec = as_spec(spec, **overrides)
    cluster = make_cluster(spec)
    try:
        security = tls_security(spec.options)  # None: Dask's own configuration decides
        if cluster is None:
            try:
                client = Client(
                    spec.options["address"],
                    timeout=spec.options.get("timeout", "30s"),
                    security=security,
                )
            except OSError as err:  # a timeout or a refused connection: the scheduler is not there
                raise ClusterUnavailableError(
                    f"cannot reach the Dask scheduler at {spec.options['address']} ({err}); check the "
                    "address and that the scheduler is running, or choose another --cluster"
                ) from err
        else:
            client = Client(cluster, security=security)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
