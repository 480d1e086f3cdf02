"""The batch's report figures, drawn by a process of their own while the jobs compute.

Figures take longer than a small dataset's units (about 0.5-1 CPU-second a job against tens of
milliseconds), and a Dask worker drawing one cannot start the next job's units until it is done:
on a 2-core machine the units of each job waited about a second behind the previous job's
figures. Drawn by one process beside the cluster, the figures share the CPU with the jobs and
never hold up a unit; the batch waits for the last ones before it writes the morning report.
(At a lower priority, ``nice`` 10, the drawing fell behind on a busy machine and the batch then
waited for it at its end with one core idle.)

Examples
--------
>>> with FigurePool() as pool:  # doctest: +SKIP
...     future = pool.submit("results/grain-07.fuse.zarr")
...     future.result()
['results/grain-07.fuse.report/maps.png', ...]
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor


class FigurePool:
    """One process that draws report figures (:func:`emfuse.flows.report.draw_report`) in the order
    they are submitted. Started with ``spawn``: the driver runs threads (Prefect's, Dask's), which
    a forked child would inherit in whatever state they were."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_drawing)
        self._pool.submit(int)  # start the process (and its imports) now, not at the first figure

    def submit(self, store: str) -> Future:
        """Draw the report of the output store ``store``; the future's result is the files written."""
        return self._pool.submit(_draw, store)

    def take_back(self, store: str, future: Future) -> Future:
        """The report of ``store`` drawn here, now, if the figures' process has not begun it (its
        ``future`` is cancelled), else ``future``. At the end of a batch the driver has nothing left
        to do but wait for the figures: drawing the last reports itself, from the last one back,
        while the figures' process works from the front, ends the batch sooner on a machine whose
        other cores are idle then."""
        if not future.cancel():
            return future
        here: Future = Future()
        try:
            here.set_result(_draw(store))
        except Exception as exc:  # as the process's future would carry it
            here.set_exception(exc)
        return here

    def close(self) -> None:
        """End the process once the figures submitted are drawn, without waiting for it to exit (a
        second, with matplotlib and the stores' libraries loaded): the batch closes its cluster and
        writes the morning report meanwhile, and Python waits for it at exit. Callers that need
        the figures wait for their futures first."""
        self._pool.shutdown(wait=False)

    def __enter__(self) -> FigurePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_drawing() -> None:
    """In the drawing process: import what drawing needs now, while the first jobs compute."""
    import emfuse.flows.report  # noqa: F401  (matplotlib and the figure modules)


def _draw(store: str) -> list[str]:
    """:func:`~emfuse.flows.report.draw_report` with Dask on this process alone (no cluster here)."""
    import dask

    from emfuse.flows.report import draw_report

    with dask.config.set(scheduler="synchronous"):
        return draw_report(store)
