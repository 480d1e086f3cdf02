"""The overnight batch: every dataset and job of a catalog, one Prefect flow, one morning report.

``emfuse run CATALOG.yaml`` calls :func:`batch_flow`:

1. the catalog is read (:mod:`emfuse.flows.batch.catalog`); a catalog that cannot be read stops here;
2. the catalog's cluster starts once and every job runs on it, through the batch's client;
3. each dataset's raw file is ingested into ``<output>/inputs/``, then each of its jobs runs
   its stages (plan, compute, finalise) as tasks of the batch flow, named after the dataset and
   job, writing ``<output>/<name>.<job>.zarr``; its figures are drawn by a process beside the
   cluster (:mod:`emfuse.flows.batch.figures`) while the next job computes;
4. a failure (bad input, a model that does not exist, ...) fails that job only:
   it is recorded with its message and the batch goes on with the rest;
5. the morning report ``<output>/report.html`` (and ``report.json``) is written
   (:mod:`emfuse.flows.batch.morning`), and a log of the run is kept in ``<output>/logs/``.

Running the same command again resumes: finished stores are left as they are and unfinished
ones recompute only their unfinished tiles. :func:`serve_batch` schedules the batch with cron.
"""

from __future__ import annotations

from .. import _prefect_env  # noqa: F401  (Prefect reads its settings when first imported: set them first)

# isort: split
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from prefect import flow
from tqdm.auto import tqdm

from emfuse.cluster import as_spec, connect, is_remote
from emfuse.errors import InputError
from emfuse.stores.zarrio import check_writable

from ..jobs import JOBS
from ..jobs.registry import existing_figures, ingest_stage
from ..jobs.stages import ingest_task, named, run_job_stages
from .catalog import Catalog, DatasetEntry, load_catalog
from .figures import FigurePool
from .morning import write_morning_report

log = logging.getLogger(__name__)
LOG_DIR = "logs"
#: where a deployment finds the flow (exported by :mod:`emfuse.flows.batch`)
ENTRYPOINT = "emfuse.flows.batch.batch_flow"
_OUR_LOGGERS = ("emfuse",)


def _status_line(record: dict[str, Any]) -> str:
    if record["status"] == "failed":
        return f"FAILED {record['dataset']} {record['job']}: {record['error']}"
    done = "already complete" if record.get("state") == "complete" else f"{record.get('tiles_computed', 0)} tiles"
    return f"done   {record['dataset']} {record['job']} ({record['seconds']:.1f} s, {done})"


def _failure(exc: BaseException) -> dict[str, str]:
    return {"error": str(exc) or type(exc).__name__, "error_type": type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def _record(catalog: Catalog, entry: DatasetEntry, kind: str) -> dict[str, Any]:
    return {"dataset": entry.name, "job": kind, "path": entry.path,
            "store": catalog.store(entry, kind) if kind in JOBS else None,
            "params": entry.options.get(kind, {}), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": 0.0}


def run_dataset(name: str, path: str, elements: list[str] | None, jobs: dict[str, dict[str, Any]],
                inputs_dir: str, cluster: Any, remote: bool = False, progress: bool = True,
                client=None, signal: str | int | None = None) -> list[dict[str, Any]]:
    """Ingest one dataset and run each of its jobs; returns one record per job (never raises).

    The ingest and each job's stages are tasks of the batch flow, their runs named after the
    dataset and job (``"grain-07 fuse: compute"``). A subflow per dataset cost about 0.7 s of
    Prefect bookkeeping each (its run's creation, and the wait for its heartbeat thread at its
    end): docs/benchmarks.md, "Round 3".

    ``jobs`` maps each job to ``{"store": output store, "options": its options}``; ``remote``
    says the workers run elsewhere (SLURM, a scheduler address), so devices are checked there;
    ``client``, the batch's own client of ``cluster``, which every job uses; ``signal``, which
    spectrum image of a raw file to ingest (the catalog's ``signal``).
    """
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    start = time.perf_counter()
    try:
        store = ingest_stage(path, named(ingest_task, name))(path, inputs_dir, elements, name, signal)
        ingest_seconds = time.perf_counter() - start
    except Exception as exc:  # every job of the dataset fails with the ingest error
        failure = {**_failure(exc), "error": f"dataset {name}: {exc}"}
        return [{"job": kind, "status": "failed", "started": started, **failure,
                 "seconds": round(time.perf_counter() - start, 3)} for kind in jobs]
    records = []
    for kind, job in jobs.items():
        record: dict[str, Any] = {"job": kind, "input_store": store, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        job_start = time.perf_counter()
        options = dict(job["options"])
        if kind == "fuse" and elements:
            options.setdefault("elements", list(elements))
        if kind == "restore":  # the GPU may be on the workers only
            options.setdefault("check_device", not remote)
        try:  # the job's stages are tasks of the batch flow (a subflow per job cost 2 s each)
            summary = run_job_stages(kind, store, job["store"], options, cluster=cluster, client=client,
                                     progress=progress, ingest_seconds=ingest_seconds, report=False,
                                     label=f"{name} {kind}")
        except Exception as exc:  # recorded; the batch goes on with the next job
            failure = _failure(exc)
            failure["error"] = f"dataset {name}, job {kind}: {failure['error']}"
            record.update(status="failed", seconds=round(time.perf_counter() - job_start, 3), **failure)
        else:
            record.update(status="done", state=summary.get("state"), seconds=summary["seconds"],
                          tiles_computed=summary.get("tiles_computed", 0), figures=summary.get("figures", []),
                          summary=summary)
        records.append(record)
    return records


@contextmanager
def _run_log(output: Path) -> Iterator[Path]:
    """Copy the messages of emfuse's own loggers (INFO and up) to ``<output>/logs/run-*.log``."""
    folder = output / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in _OUR_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield path
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()


def _shared_cluster(spec: Any, client) -> Any:
    """What each job connects to: the address of the cluster the batch started (with its options)."""
    options = as_spec(spec).options
    shared = {"profile": "scheduler", "address": client.scheduler.address}
    shared.update({k: v for k, v in options.items() if k.startswith("tls_")})  # the same certificates
    return shared


def _failed(cat: Catalog, entry: DatasetEntry, error: str, error_type: str, bar) -> list[dict[str, Any]]:
    """Records of a dataset whose jobs cannot start (a catalog mistake, no cluster)."""
    log.error("%s", error)
    bar.update(len(entry.jobs))
    return [{**_record(cat, entry, kind), "status": "failed", "error": error, "error_type": error_type}
            for kind in entry.jobs]


def _run_datasets(cat: Catalog, runnable: list[DatasetEntry], client, bar, progress: bool) -> list[dict[str, Any]]:
    """Each dataset's jobs on the batch's cluster; one record per dataset and job."""
    with FigurePool() as figures:
        records = _run_jobs(cat, runnable, client, figures, bar, progress)
    return records


def _run_jobs(cat: Catalog, runnable: list[DatasetEntry], client, figures: FigurePool, bar,
              progress: bool) -> list[dict[str, Any]]:
    shared = _shared_cluster(cat.cluster, client)
    records = []
    drawing: list[tuple[dict[str, Any], Any]] = []  # (record, the future of its figures)
    for entry in runnable:
        bar.set_postfix_str(entry.name)
        jobs = {k: {"store": cat.store(entry, k), "options": entry.options[k]} for k in entry.jobs}
        results = run_dataset(entry.name, entry.path, list(entry.elements or []) or None, jobs,
                               cat.inputs_dir, shared, is_remote(cat.cluster), progress, client, entry.signal)
        for result in results:
            record = {**_record(cat, entry, result["job"]), **result}
            records.append(record)
            if record["status"] == "done":
                drawn = existing_figures(record["store"], record.get("state"))
                if drawn is None:  # computed now: drawn beside the cluster while the next job runs
                    drawing.append((record, figures.submit(record["store"])))
                else:
                    record["figures"] = drawn
            (log.error if record["status"] == "failed" else log.info)("%s", _status_line(record))
            bar.update()
    _draw_reports(drawing, figures)
    return records


def _draw_reports(drawing: list[tuple[dict[str, Any], Any]], figures: FigurePool) -> None:
    """Wait for the figures being drawn and put them in their records, drawing those the figures'
    process has not begun here meanwhile (:meth:`FigurePool.take_back`); a report that cannot be
    drawn fails its job (with the message), as it would in a single command."""
    drawing = [(record, figures.take_back(record["store"], future)) for record, future in reversed(drawing)]
    for record, future in reversed(drawing):
        try:
            record["figures"] = future.result()
        except Exception as exc:
            failure = _failure(exc)
            failure["error"] = f"dataset {record['dataset']}, job {record['job']}: report: {failure['error']}"
            record.update(status="failed", **failure)
            log.error("%s", _status_line(record))
            continue
        if isinstance(record.get("summary"), dict):
            record["summary"]["figures"] = record["figures"]


@flow(name="emfuse-batch", persist_result=False)
def batch_flow(catalog: str, cluster: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every dataset and job of ``catalog``; write the morning report; return its summary.

    Parameters
    ----------
    catalog
        The catalog file (YAML): output folder, cluster, datasets and their jobs.
    cluster
        A cluster profile or scheduler address that replaces the catalog's own.
    progress
        Show progress bars.

    Returns
    -------
    dict
        ``records`` (one per dataset and job: status, timings, parameters, figures, error),
        ``report`` (the HTML page) and counts.
    """
    cat = load_catalog(catalog, cluster=cluster)
    output = check_writable(cat.output)  # OutputNotWritable (one line) where it cannot be created
    output.mkdir(exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    todo = [(e, k) for e in cat.datasets for k in e.jobs]
    with _run_log(output) as log_path:
        log.info("batch %s: %d datasets, %d jobs, cluster %s", cat.path, len(cat.datasets), len(todo), cat.cluster)
        bar = tqdm(total=len(todo), desc="batch", unit="job", disable=not progress, position=0)
        for entry in (e for e in cat.datasets if e.error):
            records += _failed(cat, entry, entry.error, "CatalogError", bar)
        runnable = [e for e in cat.datasets if not e.error]
        if runnable:
            with ExitStack() as stack:
                try:
                    client = stack.enter_context(connect(cat.cluster))
                except Exception as exc:  # no cluster: every job fails with that, and the report says so
                    message = (f"the cluster {cat.cluster!r} could not be started or reached "
                               f"({type(exc).__name__}: {exc}); check the catalog's `cluster` or --cluster")
                    for entry in runnable:
                        records += _failed(cat, entry, message, type(exc).__name__, bar)
                else:
                    records += _run_datasets(cat, runnable, client, bar, progress)
        bar.close()
        info = {"catalog": cat.path, "output": cat.output, "cluster": str(cat.cluster),
                "host": socket.gethostname(), "started": started,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - start, 3), "log": str(log_path),
                "n_done": sum(r["status"] == "done" for r in records),
                "n_failed": sum(r["status"] == "failed" for r in records), "records": records}
        info["report"] = str(write_morning_report(info, output))
        log.info("batch finished: %d done, %d failed; report %s", info["n_done"], info["n_failed"], info["report"])
    return info


def local_timezone() -> str:
    """The IANA name of this machine's time zone (``TZ``, else ``/etc/localtime``), else ``UTC``.

    Cron times are wall-clock times where the facility is, not UTC.
    """
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(os.path.realpath("/etc/localtime").split("zoneinfo/", 1)[1])
    except IndexError:
        pass
    for name in candidates:
        try:
            if name:
                ZoneInfo(name)
                return name
        except (ValueError, OSError):
            continue
    return "UTC"


#: Batches one ``emfuse serve`` runs at the same time (:func:`serve_batch`).
SERVE_RUN_LIMIT = 1


def serve_batch(catalog: str | Path, cron: str, *, name: str | None = None, cluster: str | None = None,
                timezone: str | None = None) -> None:
    """Serve :func:`batch_flow` on a cron schedule (blocks until interrupted).

    With ``PREFECT_API_URL`` set, the deployment and its runs are visible on that Prefect
    server; without it, an ephemeral server lives inside this process. One batch runs at a time
    (:data:`SERVE_RUN_LIMIT`): firings missed while the scheduler was down run one after another,
    each resuming what the last one left.
    """
    deployment = batch_deployment(catalog, cron, name=name, cluster=cluster, timezone=timezone)
    from prefect import serve

    # one batch at a time: after a scheduler outage Prefect hands over every missed firing at once,
    # and overlapping batches only contend for the same store locks (one recorded a store as failed).
    # The runner's own limit holds the others as scheduled and starts them one after another, each a
    # resume; a deployment concurrency limit would instead keep a slot leased by a run whose process
    # died with the server, and refuse the firings that should finish the night.
    serve(deployment, limit=SERVE_RUN_LIMIT)


def batch_deployment(catalog: str | Path, cron: str, *, name: str | None = None, cluster: str | None = None,
                     timezone: str | None = None):
    """The Prefect deployment of the batch for ``catalog`` on the schedule ``cron``.

    ``cron`` is read in ``timezone`` (an IANA name; default: this machine's, :func:`local_timezone`).

    The catalog is checked now, so a typo is reported when the schedule is set up and not at
    22:00; an invalid cron expression raises :class:`emfuse.errors.InputError` (a ``ValueError``).
    """
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    cat = load_catalog(catalog, cluster=cluster)
    try:
        schedule = CronSchedule(cron=cron, timezone=timezone or local_timezone())
    except ValueError as exc:
        raise InputError(f"invalid cron expression {cron!r}: give five fields, minute hour day month "
                         "weekday, e.g. '0 22 * * *' for every night at 22:00.") from exc
    parameters = {"catalog": cat.path, "progress": False}
    if cluster is not None:
        parameters["cluster"] = cluster
    deployment = batch_flow.to_deployment(
        name=name or f"nightly-{Path(cat.path).stem}", schedule=schedule, parameters=parameters,
        description=f"emfuse overnight batch of {cat.path}", entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment.entrypoint = ENTRYPOINT  # the package's name, not this module's: stable across moves
    return deployment
