"""The jobs: fusion, restoration and multi-mode TEM fusion, each as plan/compute/finalise stages.

:mod:`.registry` names the jobs and runs one without Prefect (:func:`run_job`); :mod:`.fusion`,
:mod:`.restore` and :mod:`.tem_fuse` are the jobs; :mod:`.stages` runs their stages as Prefect
tasks and :mod:`.flows` wraps them as Prefect flows; :mod:`.inputs` ingests raw files,
:mod:`.checks` checks arguments before anything starts and :mod:`.gather` collects a job's
tile results from the cluster.
"""

from .registry import JOBS, JobKind, job_kind, run_job

__all__ = ["JOBS", "JobKind", "job_kind", "run_job"]
