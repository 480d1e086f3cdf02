"""Test helpers around Dask."""

from __future__ import annotations

from dask.callbacks import Callback


class LargestResult(Callback):
    """Records the largest array any Dask task returns (to check nothing is loaded whole)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.largest = max(self.largest, getattr(result, "nbytes", 0))
