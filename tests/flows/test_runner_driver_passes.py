"""Where the runner makes a job's driver-side array passes (emfuse.flows.jobs.runner.driver_passes):
a small job's ``prepare``, ``merge`` and ``finalise`` compute on threads in the driver, a large
one's on the cluster; the units go to the cluster either way.

Each pass sums the input with a Dask array whose blocks note whether they ran on a Dask worker,
on a real cluster of one worker with threads in this process.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from emfuse.flows.jobs import runner
from emfuse.pipeline import tiles
from emfuse.stores.outputs import empty_like, prepare_output
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import open_dataset, read_attrs, update_attrs, write_dataset

NAME = "doubled"
WHERE: list[tuple[str, bool]] = []  # (pass or "unit", ran on a Dask worker)


def _on_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _note(block: np.ndarray, stage: str) -> np.ndarray:
    # module level, so that a worker of this process calls this very function (a closure would be
    # pickled with a copy of WHERE)
    WHERE.append((stage, _on_worker()))
    return block


def _summed(job, stage: str) -> float:
    """The input's sum, each block noting where it ran."""
    image = open_dataset(job.source)["image"].data
    noted = da.map_blocks(_note, image, stage=stage, meta=np.array((), image.dtype))
    return float(noted.sum().compute())


@dataclass(frozen=True)
class Job:
    source: str
    out: str


class SumSpec(runner.TiledJob):
    """Doubles a 32 x 32 image in four tiles; every driver-side stage sums the input with Dask."""

    def prepare(self, job, client, *, progress):
        update_attrs(job.out, prepared=_summed(job, "prepare"))
        return job, None

    def units(self, job):
        return [runner.Unit(t.index, t) for t in tiles.tile_grid((32, 32), 16, 0)]

    def read(self, job, unit):
        ys, xs = unit.region.window
        return {"image": zarr.open_array(f"{job.source}/image", mode="r")[ys, xs]}

    def process(self, job, unit, window, context, device):
        WHERE.append(("unit", _on_worker()))
        return runner.UnitOutput({NAME: (unit.region.core, 2 * window["image"][unit.region.crop])})

    def merge(self, job, client, *, progress):
        update_attrs(job.out, merged=_summed(job, "merge"))

    def finalise(self, job, record):
        update_attrs(job.out, finalised=_summed(job, "finalise"))


SPEC = SumSpec(name=NAME)


@pytest.fixture
def job(tmp_path):
    image = np.random.default_rng(3).poisson(20, (32, 32)).astype(np.float32)
    source = tmp_path / "in.zarr"
    write_dataset(xr.Dataset({"image": (("y", "x"), image)}).chunk({"y": 16, "x": 16}), source)
    out = tmp_path / "out.zarr"
    prepare_output(out, xr.Dataset({NAME: (("y", "x"), empty_like((32, 32), (16, 16)))}), {}, source=source)
    TileRecord.create(out, NAME, (2, 2))
    WHERE.clear()
    return Job(str(source), str(out)), image


@pytest.fixture(scope="module")
def client():
    from emfuse.cluster import connect

    with connect("local-threads", n_workers=1, threads_per_worker=2) as c:
        yield c


def _run(job, client) -> dict:
    runner.compute(SPEC, job, client, progress=False)
    runner.finalise(SPEC, job)
    return read_attrs(job.out)


def test_a_small_job_makes_its_passes_in_the_driver_and_its_units_on_the_cluster(job, client):
    job, image = job
    attrs = _run(job, client)
    assert attrs["prepared"] == attrs["merged"] == attrs["finalised"] == pytest.approx(float(image.sum()))
    assert np.array_equal(zarr.open_array(f"{job.out}/{NAME}", mode="r")[...], 2 * image)
    passes = [stage for stage, _ in WHERE if stage != "unit"]
    assert sorted(passes) == sorted(["prepare", "merge", "finalise"] * 4)  # four blocks each
    assert not any(on for stage, on in WHERE if stage != "unit")
    assert [on for stage, on in WHERE if stage == "unit"] == [True] * 4


def test_a_large_job_makes_its_passes_on_the_cluster(job, client, monkeypatch):
    job, image = job
    monkeypatch.setattr(runner, "DRIVER_PASS_BYTES", image.nbytes - 1)  # the input is one byte too big
    attrs = _run(job, client)
    assert attrs["finalised"] == pytest.approx(float(image.sum()))
    assert all(on for _, on in WHERE) and len(WHERE) == 3 * 4 + 4


def test_input_bytes_reads_the_metadata_only_and_follows_a_rewritten_store(job):
    job, image = job
    assert runner.input_bytes(job.source) == image.nbytes
    bigger = np.zeros((64, 32), np.float32)  # the store written again (the size is remembered per version)
    write_dataset(xr.Dataset({"image": (("y", "x"), bigger)}), job.source, overwrite=True)
    assert runner.input_bytes(job.source) == bigger.nbytes


@pytest.mark.parametrize("threshold, on_cluster", [(None, False), (0, True)], ids=["small", "large"])
def test_a_small_inputs_plan_checks_it_in_the_driver(tmp_path, client, monkeypatch, threshold, on_cluster):
    """restore's plan passes over the whole input (frames without signal, negative pixels): for a
    small input on threads in the driver, not queued on the cluster behind other jobs' figures."""
    from distributed import get_task_stream

    from emfuse.flows.jobs.registry import _plan
    from emfuse.flows.tools.synth import write_synthetic

    store = write_synthetic("movie", tmp_path / "movie.zarr", shape=(32, 32), frames=2, seed=1)
    if threshold is not None:
        monkeypatch.setattr(runner, "DRIVER_PASS_BYTES", threshold)
    with get_task_stream(client) as stream:
        job, state = _plan("restore", str(store), str(tmp_path / "out.zarr"), {"model": "default", "tile": 32, "overlap": 8,
                                                                                "device": "cpu"})
    assert state == "new" and job.n_frames == 2
    assert bool(stream.data) is on_cluster
