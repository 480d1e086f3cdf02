"""Overlap of I/O and compute in the runner (emfuse.flows.jobs.runner): on a locked device one unit
computes at a time while the worker's other threads read the next windows and write the last
results; on the CPU by default nothing is locked.

A job whose read, process and write each sleep records when each phase ran, on a real Dask
cluster of one worker with threads in this process (so the records land in this module's list).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np
import pytest
import xarray as xr
import zarr

from emfuse.flows.jobs import runner
from emfuse.pipeline import tiles
from emfuse.stores.outputs import empty_like, prepare_output, write_region
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import write_dataset

NAME = "doubled"
PAUSE = 0.12  # seconds each phase of a unit sleeps: long against the threads' start-up jitter

# (phase, unit key, thread, start, end) of every phase that ran, in this process
PHASES: list[tuple[str, tuple[int, int], int, float, float]] = []


@contextlib.contextmanager
def phase(name: str, key: tuple[int, int]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    PHASES.append((name, key, threading.get_ident(), start, time.perf_counter()))


@dataclass(frozen=True)
class SlowJob:
    source: str
    out: str
    shape: tuple[int, int]
    tile: int = 16
    pause: float = PAUSE
    device: str = "cpu"


class SlowSpec(runner.TiledJob):
    """Doubles the image, tile by tile; each read and process sleeps ``job.pause``."""

    def units(self, job: SlowJob) -> list[runner.Unit]:
        return [runner.Unit(t.index, t) for t in tiles.tile_grid(job.shape, job.tile, 0)]

    def read(self, job: SlowJob, unit: runner.Unit) -> dict[str, np.ndarray]:
        with phase("read", unit.key):
            time.sleep(job.pause)
            ys, xs = unit.region.window
            return {"image": zarr.open_array(f"{job.source}/image", mode="r")[ys, xs]}

    def process(self, job, unit, window, context, device) -> runner.UnitOutput:
        with phase("process", unit.key):
            time.sleep(job.pause)
            doubled = 2 * window["image"][unit.region.crop]  # numpy or CuPy alike
            return runner.UnitOutput({NAME: (unit.region.core, doubled)}, payload=doubled.sum().reshape(1))


LOCKED = SlowSpec(name=NAME, lock_cpu=True)
OPEN = SlowSpec(name=NAME)


def plan(source, out, **options) -> SlowJob:
    job = SlowJob(str(source), str(out), (32, 32), **options)
    template = xr.Dataset({NAME: (("y", "x"), empty_like(job.shape, (job.tile, job.tile)))})
    prepare_output(out, template, {"tile": job.tile}, source=source)
    TileRecord.create(out, NAME, (2, 2), payload_shape=(1,))
    return job


@pytest.fixture
def image_store(tmp_path):
    image = np.random.default_rng(5).poisson(20, (32, 32)).astype(np.float32)
    path = tmp_path / "in.zarr"
    write_dataset(xr.Dataset({"image": (("y", "x"), image)}), path)
    return path, image


@pytest.fixture
def slow_writes(monkeypatch):
    """The runner's writes sleep and are recorded too; PHASES starts empty."""
    def write(out, name, region, values):
        with phase("write", tuple(s.start // 16 for s in region)):
            time.sleep(PAUSE)
            write_region(out, name, region, values)

    monkeypatch.setattr(runner, "write_region", write)
    PHASES.clear()
    yield PHASES


def _cluster(threads: int):
    from emfuse.cluster import connect

    return connect("local-threads", n_workers=1, threads_per_worker=threads)


@pytest.fixture(scope="module")
def two_threads():
    """One worker with two threads, as a GPU worker of the local-gpu profile."""
    with _cluster(2) as client:
        yield client


def _overlap(a, b) -> bool:
    return a[3] < b[4] and b[3] < a[4]


def _of(name: str) -> list:
    return [p for p in PHASES if p[0] == name]


def _result(job: SlowJob) -> tuple[np.ndarray, np.ndarray]:
    record = TileRecord.open(job.out, NAME)
    return zarr.open_array(f"{job.out}/{NAME}", mode="r")[...], np.sort(record.payloads(), axis=None)


def _sequential(source, tmp_path, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """The same job, unit after unit in this thread, without pauses."""
    monkeypatch.setattr(runner, "write_region", write_region)
    job = plan(source, tmp_path / "sequential.zarr", pause=0.0)
    for unit in OPEN.units(job):
        assert runner.run_unit(OPEN, job, unit, None) == (unit.key, "cpu")
    return _result(job)


def test_on_a_locked_device_one_unit_computes_while_others_read_and_write(image_store, tmp_path, two_threads,
                                                                          slow_writes, monkeypatch):
    source, image = image_store
    job = plan(source, tmp_path / "out.zarr")
    _, computed = runner.compute(LOCKED, job, two_threads, progress=False)
    assert computed == 4
    reads, processes, writes = _of("read"), _of("process"), _of("write")
    assert len(processes) == len(writes) == 4
    assert not any(_overlap(a, b) for a, b in combinations(processes, 2))  # the device: one at a time
    # prefetch: the next window is read while another unit computes, and results are written beside it
    assert any(_overlap(r, p) for r in reads for p in processes if r[1] != p[1])
    assert any(_overlap(w, p) for w in writes for p in processes if w[1] != p[1])
    assert len({p[2] for p in processes}) == 2  # both threads took turns on the device
    doubled, payloads = _result(job)
    np.testing.assert_array_equal(doubled, 2 * image)
    expected_doubled, expected_payloads = _sequential(source, tmp_path, monkeypatch)
    np.testing.assert_array_equal(doubled, expected_doubled)
    np.testing.assert_array_equal(payloads, expected_payloads)


def test_on_the_cpu_by_default_nothing_is_locked(image_store, tmp_path, two_threads, slow_writes, monkeypatch):
    assert runner.device_gate("cpu") is runner.device_gate("cpu", lock_cpu=False)
    assert isinstance(runner.device_gate("cpu").lock, contextlib.nullcontext)
    assert isinstance(runner.device_gate("cpu").slots, contextlib.nullcontext)
    assert runner.device_gate("cuda:0").lock is runner.device_gate("cuda:0").lock  # one per device
    assert runner.device_gate("cuda:1").lock is not runner.device_gate("cuda:0").lock
    source, image = image_store
    job = plan(source, tmp_path / "out.zarr")
    runner.compute(OPEN, job, two_threads, progress=False)
    # the two threads process their units side by side, as before the device lock existed
    assert any(_overlap(a, b) for a, b in combinations(_of("process"), 2))
    assert _result(job)[0].tolist() == (2 * image).tolist()
    np.testing.assert_array_equal(_result(job)[1], _sequential(source, tmp_path, monkeypatch)[1])


def test_a_worker_with_more_threads_reads_at_most_two_windows_ahead(image_store, tmp_path, slow_writes):
    """Three threads: still one unit computing and one read ahead; the third thread waits before
    reading (it could write a result meanwhile), so a GPU worker's host memory holds two windows."""
    source, image = image_store
    job = plan(source, tmp_path / "out.zarr")
    with _cluster(3) as client:
        runner.compute(LOCKED, job, client, progress=False)
    reads, processes = {p[1]: p for p in _of("read")}, {p[1]: p for p in _of("process")}
    held = [(reads[k][3], processes[k][4]) for k in reads]  # from the read's start to the compute's end
    for start, _ in held:
        assert sum(s <= start < e for s, e in held) <= runner.PREFETCH_WINDOWS
    np.testing.assert_array_equal(_result(job)[0], 2 * image)


def test_gpu_staging_code_on_the_cpu(monkeypatch):
    """The copies of stage and to_host, with a stand-in for CuPy's pinned allocator: the window is
    copied (None kept, any layout), results come back through ``get(out=...)``."""
    pinned = []

    def empty_pinned(shape, dtype):
        pinned.append(np.empty(shape, dtype))
        return pinned[-1]

    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=empty_pinned))
    window = {"a": np.arange(12.0).reshape(3, 4)[:, ::2], "mask": None}
    staged = runner.stage(window, "cuda:0", "xp")
    assert staged["a"] is pinned[0] and staged["mask"] is None
    np.testing.assert_array_equal(staged["a"], window["a"])
    assert runner.stage(window, "cuda:0", "torch")["a"] is window["a"]  # networks copy their own batches
    assert runner.stage(window, "cpu", "xp")["a"] is window["a"]

    class DeviceArray:  # what to_host sees of a CuPy array: its module, shape, dtype and get(out=)
        __module__ = "cupy._core.core"
        shape, dtype = (2,), np.dtype(np.float32)

        def get(self, out):
            out[...] = 7
            return out

    back = runner.to_host(DeviceArray())
    assert back is pinned[1] and back.tolist() == [7, 7]


@pytest.mark.gpu
def test_windows_go_through_pinned_memory_on_the_gpu():
    import cupy
    from cupy.cuda.pinned_memory import is_memory_pinned

    window = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], "mask": None}
    staged = runner.stage(window, "cuda:0", "xp")
    assert is_memory_pinned(staged["a"].ctypes.data) and staged["mask"] is None
    placed = runner.place(staged, "cuda:0", "xp")
    assert isinstance(placed["a"], cupy.ndarray)
    back = runner.to_host(placed["a"] * 2)
    assert isinstance(back, np.ndarray) and is_memory_pinned(back.ctypes.data)
    np.testing.assert_array_equal(back, window["a"] * 2)


@pytest.mark.gpu
def test_on_a_gpu_worker_units_compute_one_at_a_time_and_reads_overlap(image_store, tmp_path, two_threads,
                                                                       slow_writes):
    source, image = image_store
    job = replace(plan(source, tmp_path / "out.zarr"), device="auto")
    runner.compute(OPEN, job, two_threads, progress=False)  # no lock_cpu: the GPU is locked by itself
    processes = _of("process")
    assert not any(_overlap(a, b) for a, b in combinations(processes, 2))
    assert any(_overlap(r, p) for r in _of("read") for p in processes if r[1] != p[1])
    from emfuse.stores.zarrio import read_attrs

    assert read_attrs(job.out)["devices"][0].startswith("cuda")
    np.testing.assert_array_equal(_result(job)[0], 2 * image)
