"""The one runner (emfuse.flows.jobs.runner): a fourth job declared in this file runs, resumes and
reports its device like the three shipped jobs; errors of a unit come back as one line."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import xarray as xr
import zarr
from scipy import ndimage

from emfuse.flows.jobs import runner
from emfuse.pipeline import tiles
from emfuse.stores.errors import StoreError
from emfuse.stores.outputs import empty_like, prepare_output
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import open_dataset, read_attrs, write_dataset

NAME = "median"


class MedianInputError(ValueError):
    """Bad input of the example job."""


@dataclass(frozen=True)
class MedianJob:
    source: str
    out: str
    shape: tuple[int, int]
    tile: int = 24
    halo: int = 2
    device: str = "auto"


class MedianSpec(runner.TiledJob):
    """A fourth job, whole: a 5 x 5 median filter of the HAADF, in tiles with a halo."""

    def units(self, job: MedianJob) -> list[runner.Unit]:
        return [runner.Unit(t.index, t) for t in tiles.tile_grid(job.shape, job.tile, job.halo)]

    def read(self, job: MedianJob, unit: runner.Unit) -> dict[str, np.ndarray]:
        ys, xs = unit.region.window
        return {"haadf": zarr.open_array(f"{job.source}/haadf", mode="r")[ys, xs]}

    def process(self, job, unit, window, context, device) -> runner.UnitOutput:
        image = window["haadf"]
        if not np.isfinite(image).all():
            raise MedianInputError(f"{job.source}: the HAADF has NaN pixels in tile {unit.key}; mask them first")
        filtered = ndimage.median_filter(image, size=5, mode="nearest")[unit.region.crop]
        return runner.UnitOutput({"filtered": (unit.region.core, filtered)}, payload=np.array([filtered.mean()]))

    def finalise(self, job: MedianJob, record: TileRecord) -> None:
        from emfuse.stores.zarrio import update_attrs

        update_attrs(job.out, mean_of_tile_means=float(np.mean(record.payloads())))


SPEC = MedianSpec(name=NAME, desc="filtering", errors=(MedianInputError,))


def plan(source, out) -> tuple[MedianJob, str]:
    ds = open_dataset(source)
    job = MedianJob(str(source), str(out), (ds.sizes["y"], ds.sizes["x"]))
    template = xr.Dataset({"filtered": (("y", "x"), empty_like(job.shape, (job.tile, job.tile)))})
    state = prepare_output(out, template, {"tile": job.tile, "halo": job.halo}, source=source)
    grid = SPEC.units(job)
    TileRecord.create(out, NAME, (grid[-1].key[0] + 1, grid[-1].key[1] + 1), payload_shape=(1,))
    return job, state


@pytest.fixture
def haadf_store(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.poisson(50, (60, 50)).astype(np.float32)
    path = tmp_path / "in.zarr"
    write_dataset(xr.Dataset({"haadf": (("y", "x"), image)}), path)
    return path, image


def test_a_job_declared_in_one_file_runs_resumes_and_records_its_device(haadf_store, tmp_path, client):
    source, image = haadf_store
    expected = ndimage.median_filter(image, size=5, mode="nearest")
    job, state = plan(source, tmp_path / "out.zarr")
    assert state == "new" and len(SPEC.units(job)) == 9
    # two tiles finished, then the process died
    for unit in SPEC.units(job)[:2]:
        assert runner.run_unit(SPEC, job, unit, None) == (unit.key, "cpu")
    with pytest.raises(RuntimeError, match="7 of 9 tiles are not finished"):
        runner.finalise(SPEC, job)
    with pytest.raises(StoreError, match="not marked complete"):
        open_dataset(job.out)
    job, state = plan(source, job.out)
    assert state == "resume"
    job, computed = runner.compute(SPEC, job, client, progress=False)
    assert computed == 7  # only the rest
    runner.finalise(SPEC, job)
    out = open_dataset(job.out)
    np.testing.assert_array_equal(out.filtered.values, expected)  # halo 2 is enough for a 5 x 5 filter
    attrs = read_attrs(job.out)
    assert attrs["devices"] == ["cpu"] and attrs["complete"] is True
    assert attrs["mean_of_tile_means"] == pytest.approx(np.mean([expected[t.core].mean() for t in
                                                                 tiles.tile_grid(job.shape, 24, 2)]))


def test_a_bad_unit_is_one_error_in_the_driver_and_the_store_stays_incomplete(haadf_store, tmp_path, client):
    source, image = haadf_store
    image[40, 30] = np.nan
    zarr.open_array(f"{source}/haadf", mode="r+")[...] = image
    job, _ = plan(source, tmp_path / "out.zarr")
    with pytest.raises(MedianInputError, match=r"NaN pixels in tile \(1, 1\); mask them first"):
        runner.compute(SPEC, job, client, progress=False)
    assert read_attrs(job.out)["complete"] is False
    assert (1, 1) not in TileRecord.open(job.out, NAME).done_tiles()


def test_asking_for_a_gpu_without_one_names_the_fix(haadf_store, tmp_path, client):
    from emfuse.pipeline.backend import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU")
    source, _ = haadf_store
    job, _ = plan(source, tmp_path / "out.zarr")
    job = MedianJob(job.source, job.out, job.shape, device="cuda")
    with pytest.raises(runner.DeviceError, match="no CUDA GPU usable with CuPy.*local-gpu"):
        runner.compute(SPEC, job, client, progress=False)
    with pytest.raises(runner.DeviceError, match="unknown device 'gpu'"):
        runner.check_device_option("gpu")


def test_worker_cache_loads_once_per_key():
    loads = []
    first = runner.worker_cached(("test", 1), lambda: loads.append(1) or object())
    assert runner.worker_cached(("test", 1), lambda: loads.append(1) or object()) is first
    assert runner.worker_cached(("test", 2), lambda: loads.append(1) or object()) is not first
    assert len(loads) == 2


@pytest.mark.gpu
def test_fusion_runs_its_tiles_on_the_gpu_and_says_so(tmp_path, client):
    """With a GPU, device auto fuses the tiles with CuPy and the store records cuda; the maps agree
    with the CPU's to rounding."""
    from emfuse.flows.jobs import run_job
    from emfuse.flows.tools.synth import write_synthetic

    store = write_synthetic("spectrum-image", tmp_path / "syn.zarr", shape=(96, 96), seed=1)
    params = dict(lambda_chem=0.05, lambda_tv=0.05, n_iter=20)
    gpu = run_job("fuse", store, tmp_path / "gpu.zarr", client, progress=False, params=params, tile=48)
    cpu = run_job("fuse", store, tmp_path / "cpu.zarr", client, progress=False, params=params, tile=48, device="cpu")
    assert read_attrs(gpu.out)["devices"][0].startswith("cuda") and read_attrs(cpu.out)["devices"] == ["cpu"]
    np.testing.assert_allclose(open_dataset(gpu.out).fused.values, open_dataset(cpu.out).fused.values, atol=1e-3)
