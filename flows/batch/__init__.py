"""The overnight batch: the catalog (:mod:`.catalog`), the batch flow and its cron deployment
(:mod:`.flow`) and the morning report (:mod:`.morning`).

:func:`batch_flow` is also importable from here, so deployments registered with the
entrypoint ``emfuse.flows.batch.batch_flow`` keep loading.
"""

from .flow import batch_deployment, batch_flow, serve_batch

__all__ = ["batch_deployment", "batch_flow", "serve_batch"]
