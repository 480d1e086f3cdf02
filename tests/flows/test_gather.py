"""emfuse.flows.jobs.gather: results as they finish; an error raises at once and cancels the job's other tasks."""

from __future__ import annotations

import time

import pytest

from emfuse.flows.jobs.gather import gather


def _slow(i: int) -> int:
    time.sleep(0.05 * i)
    return i


def _fails(_: int) -> int:
    raise RuntimeError("tile 0 failed")


def _reports(_: int) -> ValueError:
    return ValueError("bad input reported as a value")


def test_results_and_weighted_progress(client):
    futures = client.map(_slow, [3, 1, 2], pure=False)
    sizes = {f.key: 2 for f in futures}
    assert sorted(gather(client, futures, desc="t", progress=False, sizes=sizes)) == [1, 2, 3]


@pytest.mark.parametrize("task, message", [(_fails, "tile 0 failed"), (_reports, "reported as a value")])
def test_error_raises_and_cancels_the_rest(client, task, message):
    from distributed import wait

    first = client.submit(task, 0, pure=False)
    wait([first])  # finished before the others start: the order does not hang on the scheduler
    rest = client.map(time.sleep, [2.0] * 4, pure=False)
    start = time.monotonic()
    with pytest.raises((RuntimeError, ValueError), match=message):
        gather(client, [first, *rest], desc="t", progress=False)
    assert time.monotonic() - start < 1.5  # did not wait for the sleepers
    time.sleep(0.2)
    assert all(f.status == "cancelled" for f in rest)
