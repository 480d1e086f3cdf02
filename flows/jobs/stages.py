"""The stages of any job (:mod:`emfuse.flows.jobs`) as Prefect tasks, shared by the three job flows.

Tasks run in the flow's process and submit their Dask work to the cluster themselves (a
Prefect task per stage, not per tile): with Prefect's Dask task runner every worker would
start its own temporary Prefect server.
"""

from __future__ import annotations

from .. import _prefect_env  # noqa: F401  (Prefect reads its settings when first imported: set them first)

# isort: split
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from emfuse.cluster import connect
from emfuse.stores.lock import StoreLock
from emfuse.stores.zarrio import begin_run, timed

from ..report import default_report_dir, draw_report
from . import runner
from .inputs import resolve_store
from .registry import job_kind

# Parameters are store paths, jobs and small dicts; caching would only hash them.
_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task
def ingest_task(source: str, workdir: str, elements: Sequence[str] | None = None, name: str | None = None,
                signal: str | None = None) -> str:
    return str(resolve_store(source, workdir, elements=elements, name=name, signal=signal))


@_task
def plan_task(kind: str, store: str, out: str, options: dict[str, Any]) -> tuple[Any, str]:
    jk = job_kind(kind)
    return jk.module.plan(store, out, **jk.plan_options(options))


@_task
def compute_task(kind: str, job: Any, client, progress: bool) -> tuple[Any, int]:
    return runner.compute(job_kind(kind).spec, job, client, progress=progress)


@_task
def finalise_task(kind: str, job: Any) -> None:
    runner.finalise(job_kind(kind).spec, job)


@_task
def report_task(out: str) -> list[str]:
    return draw_report(out)


def existing_figures(out: str, state: str) -> list[str] | None:
    """The report's files of an earlier run when nothing was recomputed now, else None (draw them)."""
    folder = default_report_dir(out)
    if state == "complete" and (folder / "summary.json").is_file():
        return sorted(str(p) for p in folder.iterdir() if p.suffix in (".png", ".json"))
    return None


def run_job_stages(kind: str, source: str, out: str, options: dict[str, Any], *, cluster: Any = "local",
                   workdir: str | None = None, elements: Sequence[str] | None = None,
                   report: bool = True, progress: bool = True, ingest_seconds: float = 0.0,
                   signal: str | None = None) -> dict[str, Any]:
    """Ingest, plan, compute, finalise and report one job inside the calling Prefect flow.

    ``cluster`` is anything :func:`cluster.connect` takes (a batch passes the address of the
    cluster it started, so that every job shares it). Raw files are ingested into ``workdir``
    (default: the output's folder), ``signal`` choosing its spectrum image. Returns the job's
    summary with ``input_store``, ``tiles_computed``, ``seconds`` and ``figures`` (none with
    ``report=False``: a batch draws them on its workers, :func:`draw_report`). The wall time
    of each stage goes to the output's ``timing`` attribute, one record per run
    (``ingest_seconds``: an ingest the caller ran before, as a batch does).
    """
    start = time.perf_counter()
    store = ingest_task(source, workdir or str(Path(out).resolve().parent), elements, signal=signal)
    ingest_seconds += time.perf_counter() - start
    tiles_computed = 0
    with StoreLock(out):
        planned = time.perf_counter()
        job, state = plan_task(kind, store, out, options)
        if state != "complete":
            begin_run(out, ingest=ingest_seconds, plan=time.perf_counter() - planned)
            with connect(cluster) as client:
                job, tiles_computed = compute_task(kind, job, client, progress)
            with timed(out, "finalise"):
                finalise_task(kind, job)
    result = job_kind(kind).spec.summary(job)
    result.update(input_store=store, tiles_computed=tiles_computed, state=state)
    result["figures"] = (existing_figures(job.out, state) or report_task(job.out)) if report else []
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result
