"""The batch's figures are drawn by a process beside the cluster (emfuse.flows.batch.figures)."""

from __future__ import annotations

import os

import pytest
from test_report import make_output_store

from emfuse.errors import InputFileNotFound
from emfuse.flows.batch.figures import FigurePool


def test_the_pool_draws_reports_in_another_process_in_order_and_passes_errors_back(tmp_path):
    stores = [make_output_store(tmp_path / f"o{k}.zarr", n=32) for k in range(2)]
    with FigurePool() as pool:
        futures = [pool.submit(str(s)) for s in stores]
        missing = pool.submit(str(tmp_path / "none.zarr"))
        drawer = pool._pool.submit(os.getpid).result()
    for store, future in zip(stores, futures):
        paths = future.result()
        assert [os.path.basename(p) for p in paths] == ["maps.png", "haadf.png", "convergence.png", "summary.json"]
        assert all(os.path.getsize(p) > 0 for p in paths)
        assert all(p.startswith(str(store).removesuffix(".zarr") + ".report/") for p in paths)
    with pytest.raises(InputFileNotFound, match="does not exist"):
        missing.result()
    assert drawer != os.getpid()


def test_reports_the_process_has_not_begun_are_drawn_by_the_caller(tmp_path):
    """At the end of a batch the driver takes back the reports still queued and draws them itself;
    one the process has begun (or finished) stays with the process; errors come back either way."""
    stores = [make_output_store(tmp_path / f"o{k}.zarr", n=32) for k in range(5)]
    with FigurePool() as pool:
        futures = [pool.submit(str(s)) for s in stores]
        missing = pool.submit(str(tmp_path / "none.zarr"))
        futures[0].result()  # begun and done by the process: stays its own
        assert pool.take_back(str(stores[0]), futures[0]) is futures[0]
        last = pool.take_back(str(stores[-1]), futures[-1])  # queued behind the others: drawn here
        taken_missing = pool.take_back(str(tmp_path / "none.zarr"), missing)
    assert last is not futures[-1] and futures[-1].cancelled() and last.done()
    assert [os.path.basename(p) for p in last.result()] == ["maps.png", "haadf.png", "convergence.png", "summary.json"]
    assert all(os.path.getsize(p) > 0 for p in last.result())
    with pytest.raises(InputFileNotFound, match="does not exist"):
        taken_missing.result()
