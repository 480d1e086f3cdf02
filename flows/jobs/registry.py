"""The three jobs behind one interface, and the one way to run a job.

Every job module (:mod:`emfuse.flows.jobs.fusion`, :mod:`emfuse.flows.jobs.restore`,
:mod:`emfuse.flows.jobs.tem_fuse`) has

``plan(store, out, **options) -> (job, state)``
    define the job, create or reopen its output store (``new``/``resume``/``complete``);
``SPEC``
    its declaration for the runner (:class:`emfuse.flows.jobs.runner.TiledJob`): the stages
    before its units of work, the units, how one is read and processed, what runs after them,
    what ``finalise`` writes, the ``summary``.

:func:`run_job` runs them under the output store's lock (:mod:`emfuse.stores.lock`) with
:func:`emfuse.flows.jobs.runner.compute` and :func:`~emfuse.flows.jobs.runner.finalise`, without
Prefect; :mod:`emfuse.flows.jobs.stages` runs the same stages as Prefect tasks, and
:mod:`emfuse.flows.batch` runs a catalog of them. A fourth job is one module with a ``plan`` and
a ``SPEC``, and one entry in :data:`JOBS`.

Examples
--------
>>> from emfuse.cluster import connect  # doctest: +SKIP
>>> with connect("local") as client:  # doctest: +SKIP
...     job = run_job("fuse", "run1.zarr", "run1.fuse.zarr", client, elements=["Sc", "Dy", "O"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from emfuse.errors import InputError
from emfuse.pipeline.fusion import FusionParams
from emfuse.stores.lock import StoreLock
from emfuse.stores.zarrio import begin_run, is_store, timed

if TYPE_CHECKING:
    from distributed import Client

    from .runner import TiledJob

log = logging.getLogger(__name__)

# plan() options that are not the user's to set in a catalog
_INTERNAL = frozenset({"overwrite", "check_device", "torch_threads", "free_memory"})


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its module (the four stages) and the names of its options.

    The module is imported when first used, so that naming the jobs (the command line, a
    catalog that fails its checks) does not load Dask, torch and the job's kernels.
    """

    name: str
    module_name: str
    nested_params: tuple[str, ...] = ()  # names gathered into plan(params={...}) (fusion weights)
    defaults: dict[str, Any] = field(default_factory=dict)  # options the flows set unless told otherwise

    @property
    def module(self) -> ModuleType:
        """The job's module (:mod:`emfuse.flows.jobs.fusion`, ...), imported on first use."""
        return importlib.import_module(f".{self.module_name}", __package__)

    @property
    def spec(self) -> TiledJob:
        """The job's declaration for the runner (the module's ``SPEC``)."""
        return self.module.SPEC

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options of ``plan`` a user may set (catalog ``params``, CLI flags)."""
        signature = inspect.signature(self.module.plan)
        names = [p.name for p in signature.parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _INTERNAL]
        if self.nested_params:
            names = [n for n in names if n != "params"] + list(self.nested_params)
        return tuple(names)

    def plan_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` as ``plan`` takes them: nested names gathered into ``params``."""
        options = dict(options)
        nested = {name: options.pop(name) for name in self.nested_params if name in options}
        if nested:
            options["params"] = {**options.get("params", {}), **nested}
        return options


_FUSION_PARAMS = tuple(f.name for f in dataclasses.fields(FusionParams))

JOBS: dict[str, JobKind] = {
    # the weights are chosen for each dataset unless given (emfuse.pipeline.fusion.auto)
    "fuse": JobKind("fuse", "fusion", nested_params=_FUSION_PARAMS,
                    defaults={"lambda_chem": "auto", "lambda_tv": "auto"}),
    # the model is chosen for each dataset's modality and resolution unless given (emfuse.pipeline.restore.select)
    "restore": JobKind("restore", "restore", defaults={"model": "auto"}),
    "tem-fuse": JobKind("tem-fuse", "tem_fuse"),
}


def job_kind(name: str) -> JobKind:
    """The :class:`JobKind` called ``name``; a ``ValueError`` naming the choices otherwise."""
    try:
        return JOBS[name]
    except KeyError:
        raise InputError(f"unknown job {name!r}; choose from {', '.join(JOBS)}") from None


def run_job(kind: str, source: str | Path, out: str | Path, client: Client, *,
            progress: bool = True, **options: Any) -> Any:
    """Run every stage of one job on ``client`` (no Prefect involved); returns the job.

    A store that is complete with the same parameters is left as it is; an unfinished one
    resumes. The output store is locked while the job runs.
    """
    with JobClient(client=client) as connection:
        job, state, _ = locked_stages(kind, str(source), str(out), options, DIRECT_STAGES, connection,
                                      progress=progress)
    if state == "complete":
        log.info("%s is already complete with these parameters; nothing to do", out)
    return job


def needs_free_memory(kind: str, out: str | Path, options: dict[str, Any]) -> bool:
    """True when the job's ``plan`` chooses a size from the workers' free GPU memory (the fusion's
    ``tile="auto"`` on a new store): the driver then asks the workers before planning."""
    wants = getattr(job_kind(kind).module, "needs_free_memory", None)
    return bool(wants and wants(out, options))


class JobClient:
    """The Dask client of one job: given (``client``), or connected once, when first needed, to
    ``cluster`` (anything :func:`emfuse.cluster.connect` takes, or ``"auto"``); closed on exit.

    A plan that sizes its units from the workers' free GPU memory (:func:`needs_free_memory`)
    connects before planning, to ask them (:meth:`free_memory`); otherwise the client is
    connected after the plan, to the cluster :func:`cluster_for` picks for the planned job.
    ``cluster`` is then the one connected to.
    """

    def __init__(self, cluster: Any = "auto", client: Client | None = None):
        self.cluster, self.client = cluster, client
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _connect(self, cluster: Any) -> Client:
        from emfuse.cluster import connect

        self.cluster = cluster
        self.client = self._stack.enter_context(connect(cluster))
        return self.client

    def free_memory(self, kind: str, device: str) -> list[Any]:
        """Each worker's free GPU memory for the job's plan (``None`` for a worker without one).

        ``cluster="auto"`` runs on this machine: without a GPU here nothing is started to ask (the
        job then chooses its cluster by its size, as before); with one, the ``local`` cluster is
        started and asked (its workers share this GPU) and kept for the job.
        """
        module = job_kind(kind).module
        if self.client is None:
            if self.cluster == "auto" and module.worker_free_share(device) is None:
                return [None]
            self._connect("local" if self.cluster == "auto" else self.cluster)
        return module.workers_free_memory(self.client, device)

    def for_job(self, kind: str, job: Any) -> Client:
        """The client to compute ``job`` on (connected now unless it was before the plan)."""
        return self.client if self.client is not None else self._connect(cluster_for(self.cluster, kind, job))


def locked_stages(kind: str, store: str, out: str, options: dict[str, Any], calls: StageCalls,
                  connection: JobClient, *, progress: bool = True,
                  ingest_seconds: float | None = None) -> tuple[Any, str, int]:
    """Plan, compute and finalise one job with the output store locked; returns (job, state, units computed).

    A store already complete with these parameters is left as it is (state ``"complete"``,
    nothing computed). Otherwise the run's record is begun (``timing``: the ``ingest`` seconds
    when given, and the plan's), the units computed on ``connection``'s client and the store
    finalised, each stage through ``calls``. A plan that sizes its units from the workers' free
    GPU memory gets it as ``options["free_memory"]``.
    """
    with StoreLock(out):
        if needs_free_memory(kind, out, options):
            options = {**options, "free_memory": connection.free_memory(kind, options.get("device", "auto"))}
        planned = time.perf_counter()
        job, state = calls.plan(kind, store, out, options)
        if state == "complete":
            return job, state, 0
        ingest = {} if ingest_seconds is None else {"ingest": ingest_seconds}
        begin_run(out, **ingest, plan=time.perf_counter() - planned)
        job, computed = calls.compute(kind, job, connection.for_job(kind, job), progress)
        with timed(out, "finalise"):
            calls.finalise(kind, job)
    return job, state, computed


# -- the stages of one job from a source file, with or without Prefect --------------------------------


def _ingest(source: str, workdir: str, elements: Sequence[str] | None = None, name: str | None = None,
            signal: str | None = None) -> str:
    from .inputs import resolve_store

    return str(resolve_store(source, workdir, elements=elements, name=name, signal=signal))


def _plan(kind: str, store: str, out: str, options: dict[str, Any]) -> tuple[Any, str]:
    from .runner import driver_passes

    jk = job_kind(kind)
    with driver_passes(store):  # a small input's checks (restore's dose pass, say): here, not on the cluster
        return jk.module.plan(store, out, **jk.plan_options(options))


def _compute(kind: str, job: Any, client: Client, progress: bool) -> tuple[Any, int]:
    from . import runner

    return runner.compute(job_kind(kind).spec, job, client, progress=progress)


def _finalise(kind: str, job: Any) -> None:
    from . import runner

    runner.finalise(job_kind(kind).spec, job)


def _report(out: str) -> list[str]:
    from ..report import draw_report

    return draw_report(out)


def fuse_options(*, elements: Sequence[str] | None = None, params: dict[str, Any] | None = None,
                 windows: dict[str, Sequence[float]] | None = None, **options: Any) -> dict[str, Any]:
    """The fusion job's options from a command or flow: weights not given are ``"auto"``."""
    return dict(elements=elements, params={**JOBS["fuse"].defaults, **(params or {})},
                windows={k: tuple(v) for k, v in windows.items()} if windows else None, **options)


def restore_options(*, cluster: Any = "auto", **options: Any) -> dict[str, Any]:
    """The restoration job's options: the GPU is checked here unless the workers run elsewhere."""
    from emfuse.cluster import is_remote

    return dict(options, check_device=cluster == "auto" or not is_remote(cluster))


def tem_fuse_options(**options: Any) -> dict[str, Any]:
    """The TEM-fusion job's options."""
    return dict(options)


@dataclass(frozen=True)
class StageCalls:
    """How :func:`run_job_stages` calls each stage: plain functions (:data:`DIRECT_STAGES`) or the
    same functions as Prefect tasks of the calling flow (:data:`emfuse.flows.jobs.stages.PREFECT_STAGES`)."""

    ingest: Callable[..., str]
    plan: Callable[[str, str, str, dict[str, Any]], tuple[Any, str]]
    compute: Callable[[str, Any, Any, bool], tuple[Any, int]]
    finalise: Callable[[str, Any], None]
    report: Callable[[str], list[str]]


DIRECT_STAGES = StageCalls(ingest=_ingest, plan=_plan, compute=_compute, finalise=_finalise, report=_report)


def ingest_stage(source: str, ingest: Callable[..., str]) -> Callable[..., str]:
    """``ingest`` for a raw file; for a canonical store, which needs no ingest (only its checks),
    the plain call: no Prefect task run for that (a batch of stores had one per dataset and job)."""
    return DIRECT_STAGES.ingest if is_store(source) else ingest

#: ``cluster="auto"``: a job of at most this many units runs on threads in this process (no
#: worker processes to start: about 2-10 s saved on a small dataset); larger ones on ``local``
SMALL_JOB_UNITS = 1


def cluster_for(cluster: Any, kind: str, job: Any) -> Any:
    """The cluster a job runs on: ``cluster``, or for ``"auto"`` threads in this process when the
    job is :data:`SMALL_JOB_UNITS` unit(s) of work, else the ``local`` profile."""
    if cluster != "auto":
        return cluster
    return "local-threads" if job_kind(kind).spec.n_units(job) <= SMALL_JOB_UNITS else "local"


def existing_figures(out: str, state: str) -> list[str] | None:
    """The report's files of an earlier run when nothing was recomputed now, else None (draw them)."""
    from ..report import default_report_dir

    folder = default_report_dir(out)
    if state == "complete" and (folder / "summary.json").is_file():
        return sorted(str(p) for p in folder.iterdir() if p.suffix in (".png", ".json"))
    return None


def run_job_stages(kind: str, source: str, out: str, options: dict[str, Any], *,
                   calls: StageCalls = DIRECT_STAGES, cluster: Any = "local", workdir: str | None = None,
                   elements: Sequence[str] | None = None, report: bool = True, progress: bool = True,
                   ingest_seconds: float = 0.0, signal: str | None = None,
                   client: Client | None = None) -> dict[str, Any]:
    """Ingest, plan, compute, finalise and report one job; each stage through ``calls``.

    ``calls`` is :data:`DIRECT_STAGES` (plain calls: a single command with no Prefect server) or
    :data:`emfuse.flows.jobs.stages.PREFECT_STAGES` (Prefect tasks of the calling flow).
    ``cluster`` is anything :func:`emfuse.cluster.connect` takes, or ``"auto"``
    (:func:`cluster_for`); ``client``, a client already connected to it (a batch passes its own,
    so that every job shares the cluster without a connection of its own: 0.25 s per job).
    Raw files are ingested into ``workdir`` (default: the output's folder), ``signal`` choosing
    its spectrum image. Returns the job's summary with ``input_store``, ``tiles_computed``,
    ``seconds``, ``cluster`` and ``figures`` (none with ``report=False``: a batch draws them in
    its figures' process). The wall time of each stage goes to the output's ``timing`` attribute, one
    record per run (``ingest_seconds``: an ingest the caller ran before, as a batch does).
    A plan that chooses a size from the workers' free GPU memory (the fusion's ``tile="auto"`` on
    a new store) connects to the cluster before planning, to ask them (:class:`JobClient`).
    """
    start = time.perf_counter()
    store = ingest_stage(source, calls.ingest)(source, workdir or str(Path(out).resolve().parent), elements,
                                                signal=signal)
    ingest_seconds += time.perf_counter() - start
    with JobClient(cluster, client) as connection:
        job, state, tiles_computed = locked_stages(kind, store, out, options, calls, connection,
                                                   progress=progress, ingest_seconds=ingest_seconds)
        cluster = connection.cluster
    from .runner import driver_passes

    with driver_passes(job.source):  # the summary's arrays of a small job: read here, not on the cluster
        result = job_kind(kind).spec.summary(job)
    result.update(input_store=store, tiles_computed=tiles_computed, state=state, cluster=str(cluster))
    result["figures"] = (existing_figures(job.out, state) or calls.report(job.out)) if report else []
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result
