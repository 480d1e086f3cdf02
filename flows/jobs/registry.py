"""The three jobs behind one interface, and the one way to run a job.

Every job module (:mod:`emfuse.flows.jobs.fusion`, :mod:`emfuse.flows.jobs.restore`,
:mod:`emfuse.flows.jobs.tem_fuse`) has the same stages:

``plan(store, out, **options) -> (job, state)``
    define the job, create or reopen its output store (``new``/``resume``/``complete``);
``compute(job, client, progress=...) -> (job, n)``
    everything the cluster does; ``n`` tiles (or blocks of frames) computed now;
``finalise(job)``
    check every tile is done, write what is summed over tiles, mark complete;
``summary(job) -> dict``
    what the user wants to know afterwards (JSON types).

:func:`run_job` runs them under the output store's lock (:mod:`emfuse.stores.lock`), without
Prefect; :mod:`emfuse.flows.jobs.stages` runs the same stages as Prefect tasks, and
:mod:`emfuse.flows.batch` runs a catalog of them.

Examples
--------
>>> from emfuse.cluster import connect  # doctest: +SKIP
>>> with connect("local") as client:  # doctest: +SKIP
...     job = run_job("fuse", "run1.zarr", "run1.fuse.zarr", client, elements=["Sc", "Dy", "O"])
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from emfuse.errors import InputError
from emfuse.pipeline.fusion import FusionParams
from emfuse.stores.lock import StoreLock
from emfuse.stores.zarrio import begin_run, timed

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

# plan() options that are not the user's to set in a catalog
_INTERNAL = frozenset({"overwrite", "check_device", "torch_threads"})


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
    jk = job_kind(kind)
    with StoreLock(out):
        start = time.perf_counter()
        job, state = jk.module.plan(source, out, **jk.plan_options(options))
        if state == "complete":
            log.info("%s is already complete with these parameters; nothing to do", out)
            return job
        begin_run(out, plan=time.perf_counter() - start)
        job, _ = jk.module.compute(job, client, progress=progress)
        with timed(out, "finalise"):
            jk.module.finalise(job)
    return job
