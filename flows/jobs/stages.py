"""The stages of any job (:mod:`emfuse.flows.jobs`) as Prefect tasks, shared by the three job flows
and the batch (the same stages without Prefect: :data:`emfuse.flows.jobs.registry.DIRECT_STAGES`).

Tasks run in the flow's process and submit their Dask work to the cluster themselves (a
Prefect task per stage, not per tile): with Prefect's Dask task runner every worker would
start its own temporary Prefect server.
"""

from __future__ import annotations

from .. import _prefect_env  # noqa: F401  (Prefect reads its settings when first imported: set them first)

# isort: split
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from . import registry
from .registry import DIRECT_STAGES, StageCalls


def _task(fn, name: str):
    # Parameters are store paths, jobs and small dicts; caching would only hash them, and no
    # one reads a persisted result.
    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False)


ingest_task = _task(DIRECT_STAGES.ingest, "ingest")
plan_task = _task(DIRECT_STAGES.plan, "plan")
compute_task = _task(DIRECT_STAGES.compute, "compute")
finalise_task = _task(DIRECT_STAGES.finalise, "finalise")
report_task = _task(DIRECT_STAGES.report, "report")


#: the stages as Prefect tasks, for :func:`emfuse.flows.jobs.registry.run_job_stages`
PREFECT_STAGES = StageCalls(ingest=ingest_task, plan=plan_task, compute=compute_task, finalise=finalise_task,
                            report=report_task)


def named(stage: Any, label: str) -> Any:
    """The task ``stage`` with its runs named ``"<label>: <stage>"`` (a batch labels them with the
    dataset and job, so that the Prefect UI tells the runs of one night apart).

    Examples
    --------
    >>> named(plan_task, "grain-07 fuse").task_run_name()
    'grain-07 fuse: plan'
    """
    title = f"{label}: {stage.name}"
    return stage.with_options(task_run_name=lambda: title)  # a callable: a label is not a format string


def labelled_stages(label: str) -> StageCalls:
    """:data:`PREFECT_STAGES` with their runs named after ``label`` (:func:`named`)."""
    return StageCalls(**{field: named(getattr(PREFECT_STAGES, field), label)
                         for field in StageCalls.__dataclass_fields__})


def run_job_stages(kind: str, source: str, out: str, options: dict[str, Any], *, label: str | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """:func:`emfuse.flows.jobs.registry.run_job_stages` with each stage a Prefect task of the
    calling flow; ``label`` names the task runs (:func:`labelled_stages`)."""
    calls = PREFECT_STAGES if label is None else labelled_stages(label)
    return registry.run_job_stages(kind, source, out, options, calls=calls, **kwargs)
