"""The fusion job without Prefect: stores in and out, a real Dask cluster, resume, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import run_job, runner
from emfuse.pipeline import tiles
from emfuse.pipeline.fusion import FusionInputError, fuse
from emfuse.stores.errors import OutputNotWritable, StoreError
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import is_complete, open_dataset, write_dataset


@pytest.fixture()
def dysco3_store(tmp_path, dysco3):
    ds = xr.Dataset(
        {"haadf": (("y", "x"), dysco3["haadf"][:, :200]),
         "maps": (("element", "y", "x"), dysco3["maps"][:, :, :200])},
        coords={"y": np.arange(256) * 0.02, "x": np.arange(200) * 0.02, "element": dysco3["elements"],
                "z": ("element", dysco3["z"])},
    ).chunk({"y": 64, "x": 64})
    return write_dataset(ds, tmp_path / "dysco3.zarr")


def _run(store, out, client, dysco3, **kw):
    return run_job("fuse", store, out, client, progress=False, params=dysco3["params"],
                                 tile=100, halo=32, **kw)


def test_run_fusion_matches_untiled_solver(tmp_path, dysco3_store, client, dysco3):
    job = _run(dysco3_store, tmp_path / "out.zarr", client, dysco3)
    assert is_complete(job.out)
    out = open_dataset(job.out)
    whole = fuse(dysco3["haadf"][:, :200], dysco3["maps"][:, :, :200], dysco3["z"], **dysco3["params"])
    np.testing.assert_allclose(out.fused.values, whole.fused, atol=1e-6)
    np.testing.assert_array_equal(out.maps.values, dysco3["maps"][:, :, :200].astype(np.float32))
    assert out.fused.encoding["chunks"] == (3, 100, 100)
    assert list(out.element.values) == ["Sc", "Dy", "O"] and list(out.z.values) == [21, 66, 8]
    assert out.attrs["params"]["lambda_tv"] == dysco3["params"]["lambda_tv"]
    assert out.attrs["normalisation"]["haadf_offset"] == float(dysco3["haadf"][:, :200].min())
    assert np.isfinite(out.cost.values).all() and out.cost.shape == (3, dysco3["params"]["n_iter"])


def test_resume_recomputes_only_unfinished_tiles_and_is_bitwise_identical(tmp_path, dysco3_store, client, dysco3):
    reference = _run(dysco3_store, tmp_path / "ref.zarr", client, dysco3)
    # an interrupted run: inputs written, two of six tiles finished, then the process died
    job, state = fusion_job.plan(dysco3_store, tmp_path / "resumed.zarr", params=dysco3["params"], tile=100, halo=32)
    assert state == "new"
    fusion_job.write_inputs(job)
    norm = fusion_job.normalise(job)
    for tile in job.grid[:2]:
        runner.run_unit(fusion_job.SPEC, job, runner.Unit(tile.index, tile), norm)
    assert not is_complete(job.out)
    with pytest.raises(StoreError, match="not marked complete"):
        open_dataset(job.out)
    job2, state = fusion_job.plan(dysco3_store, job.out, params=dysco3["params"], tile=100, halo=32)
    assert state == "resume"
    assert runner.run_units(fusion_job.SPEC, job2, fusion_job.normalise(job2), client, progress=False) == len(job.grid) - 2
    runner.finalise(fusion_job.SPEC, job2)
    a, b = open_dataset(reference.out), open_dataset(job.out)
    for name in ("fused", "haadf_model", "maps", "haadf", "cost"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # a complete store with the same parameters: nothing to do
    assert fusion_job.plan(dysco3_store, job.out, params=dysco3["params"], tile=100, halo=32)[1] == "complete"


def test_store_with_other_parameters_is_refused(tmp_path, dysco3_store, client, dysco3):
    out = tmp_path / "out.zarr"
    _run(dysco3_store, out, client, dysco3)
    other = {**dysco3["params"], "lambda_tv": 0.3}
    with pytest.raises(StoreError, match="other parameters.*lambda_tv.*--overwrite"):
        run_job("fuse", dysco3_store, out, client, progress=False, params=other, tile=100)
    job = run_job("fuse", dysco3_store, out, client, progress=False, params=other, tile=100, overwrite=True)
    assert open_dataset(job.out).attrs["params"]["lambda_tv"] == 0.3


def test_unwritable_output_is_named(tmp_path, dysco3_store, client, dysco3):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputNotWritable, match="cannot create the output directory"):
        _run(dysco3_store, blocker / "out.zarr", client, dysco3)


def test_negative_counts_in_a_store_leave_it_incomplete(tmp_path, dysco3, client):
    maps = dysco3["maps"][:, :64, :64].copy()
    maps[1, 5, 5] = -3
    ds = xr.Dataset(
        {"haadf": (("y", "x"), dysco3["haadf"][:64, :64]), "maps": (("element", "y", "x"), maps)},
        coords={"y": np.arange(64.0), "x": np.arange(64.0), "element": dysco3["elements"],
                "z": ("element", dysco3["z"])},
    )
    store = write_dataset(ds, tmp_path / "bad.zarr")
    with pytest.raises(FusionInputError, match="map of Dy has negative counts"):
        _run(store, tmp_path / "out.zarr", client, dysco3)
    assert not is_complete(tmp_path / "out.zarr")


def test_missing_haadf_and_missing_elements_are_named(tmp_path, dysco3, client):
    ds = xr.Dataset({"maps": (("element", "y", "x"), dysco3["maps"][:, :32, :32])},
                    coords={"y": np.arange(32.0), "x": np.arange(32.0), "element": dysco3["elements"],
                            "z": ("element", dysco3["z"])})
    store = write_dataset(ds, tmp_path / "nohaadf.zarr")
    with pytest.raises(FusionInputError, match="no HAADF"):
        _run(store, tmp_path / "o.zarr", client, dysco3)
    ds["haadf"] = (("y", "x"), dysco3["haadf"][:32, :32])
    store = write_dataset(ds, tmp_path / "h.zarr")
    with pytest.raises(FusionInputError, match="no spectrum image and no maps for \\['Fe'\\]"):
        _run(store, tmp_path / "o2.zarr", client, dysco3, elements=["Fe"])


def test_progress_records_are_hidden_from_xarray(tmp_path, dysco3_store, client, dysco3):
    job = _run(dysco3_store, tmp_path / "out.zarr", client, dysco3)
    assert "done" not in open_dataset(job.out) and "payload" not in open_dataset(job.out)
    record = TileRecord.open(job.out, "fuse")
    assert len(record.done_tiles()) == len(job.grid)
    assert "_progress" in zarr.open_group(job.out, mode="r")


def test_convergence_of_the_summed_costs_is_stored_and_logged(tmp_path, dysco3_store, client, dysco3, caplog):
    import logging

    short = {**dysco3["params"], "n_iter": 4}
    with caplog.at_level(logging.WARNING, logger="emfuse.flows.jobs.fusion"):
        job = run_job("fuse", dysco3_store, tmp_path / "short.zarr", client, progress=False,
                                    params=short, tile=100, halo=32)
    messages = open_dataset(job.out).attrs["convergence"]
    assert any("has not levelled off" in m for m in messages) and "raise n_iter" in caplog.text
    assert fusion_job.summary(job)["convergence"] == messages


def test_a_tile_the_gpu_cannot_hold_is_refused_with_the_tile_that_fits(tmp_path, dysco3_store, dysco3):
    """The memory model decides on the worker before the window goes to the GPU (checked here with
    the free memory given): a clear error naming --tile instead of a CUDA out-of-memory."""
    from emfuse.flows.jobs.runner import DeviceError
    from emfuse.pipeline.fusion import memory

    job, _ = fusion_job.plan(dysco3_store, tmp_path / "o.zarr", params=dysco3["params"], tile=100, halo=32)
    tile = job.grid[0]
    ys, xs = tile.window
    need = (ys.stop - ys.start) * (xs.stop - xs.start) * memory.fusion_bytes_per_pixel(len(job.elements))
    fusion_job.check_window_fits(job, tile, free_bytes=2 * need)  # fits: nothing raised
    with pytest.raises(DeviceError, match=r"a tile of 100 px with a 32 px halo needs .* rerun with --device cpu"):
        fusion_job.check_window_fits(job, tile, free_bytes=need / 10)
    big = fusion_job.FusionJob(**{**job.__dict__, "tile": 4096})
    free = 1.2 * need * 64  # room for a tile of about 8 x 100 px a side
    with pytest.raises(DeviceError, match=r"rerun with --tile (\d+) \(the largest that fits\)") as caught:
        fusion_job.check_window_fits(big, tiles.tile_grid((4096, 4096), 4096, 32)[0], free_bytes=free)
    suggested = int(caught.value.args[0].split("--tile ")[1].split(" ")[0])
    assert suggested == memory.largest_tile(free, len(job.elements), 32) and suggested % 64 == 0
    fusion_job.check_window_fits(big, tiles.tile_grid((4096, 4096), suggested, 32)[0], free_bytes=free)


def _free_for_tile(job_elements: int, tile: int, halo: int) -> float:
    """Free bytes in which a tile of exactly ``tile`` px (and its halo) fits, by the memory model."""
    from emfuse.pipeline.fusion import memory

    per_pixel = memory.fusion_bytes_per_pixel(job_elements, masked=True)
    return (tile + 2 * halo) ** 2 * per_pixel / memory.SAFETY * 1.001


def test_auto_tile_is_chosen_from_the_free_memory_recorded_and_kept_on_resume(tmp_path, dysco3_store, dysco3):
    """tile "auto": the largest tile the smallest GPU share holds, every window of its grid passes
    check_window_fits, the choice is in the store, and a rerun keeps the stored grid."""
    out = tmp_path / "auto.zarr"
    free = _free_for_tile(len(dysco3["elements"]), 128, 32)
    job, state = fusion_job.plan(dysco3_store, out, params=dysco3["params"], halo=32, free_memory=[4 * free, free])
    assert state == "new" and job.tile == 128
    choice = zarr.open_group(str(out), mode="r").attrs["tile_choice"]
    assert choice["tile"] == 128 and choice["free_bytes"] == free and choice["asked"] == "auto"
    assert zarr.open_group(str(out), mode="r").attrs["params"]["tile"] == 128
    fusion_job.write_inputs(job)  # haadf_valid: the masked model check_window_fits applies
    for tile in job.grid:
        fusion_job.check_window_fits(job, tile, free_bytes=free)
    again, state = fusion_job.plan(dysco3_store, out, params=dysco3["params"], halo=32, free_memory=[80e9])
    assert state == "resume" and again.tile == 128 and len(again.grid) == len(job.grid)
    assert not fusion_job.needs_free_memory(out, {"tile": "auto"})  # started: the workers are not asked again
    assert fusion_job.needs_free_memory(tmp_path / "new.zarr", {"tile": "auto"})
    assert not fusion_job.needs_free_memory(tmp_path / "new.zarr", {"tile": "auto", "device": "cpu"})
    assert not fusion_job.needs_free_memory(tmp_path / "new.zarr", {"tile": 256})


def test_auto_tile_without_a_gpu_is_the_cpu_default_and_covers_the_image_when_it_fits(tmp_path, dysco3_store,
                                                                                      dysco3):
    job, _ = fusion_job.plan(dysco3_store, tmp_path / "cpu.zarr", params=dysco3["params"], free_memory=[None])
    assert job.tile == 512 == fusion_job.FusionJob.tile  # today's default: CPU results do not change
    job, _ = fusion_job.plan(dysco3_store, tmp_path / "dev.zarr", params=dysco3["params"], free_memory=[80e9],
                             device="cpu")
    assert job.tile == 512  # device cpu: the GPU's memory does not matter
    job, _ = fusion_job.plan(dysco3_store, tmp_path / "gpu.zarr", params=dysco3["params"], free_memory=[80e9])
    assert job.tile == 256 and len(job.grid) == 1  # 256 x 200 px fit: one tile, no halo recomputed
    with pytest.raises(fusion_job.memory.TileMemoryError, match="--device cpu"):
        fusion_job.plan(dysco3_store, tmp_path / "tiny.zarr", params=dysco3["params"], free_memory=[1e5])


def test_free_memory_is_shared_by_the_tasks_on_one_gpu():
    gpu = {"host": "n1", "gpu": "0000:01:00.0", "free": 40e9, "threads": 2}
    other = {**gpu, "gpu": "0000:02:00.0", "threads": 1}
    assert fusion_job.free_per_task([gpu, {**gpu, "threads": 2}, other, None]) == [10e9, 10e9, 40e9, None]
    assert fusion_job.free_per_task([{**gpu, "host": "n2"}, gpu]) == [20e9, 20e9]


def test_workers_without_a_gpu_report_none(client):
    assert fusion_job.workers_free_memory(client, "cpu") == [None, None]


def test_large_tiles_get_chunks_that_divide_them():
    assert fusion_job.chunk_side(100, (256, 200)) == 100
    side = fusion_job.chunk_side(12608, (30_000, 30_000))
    assert 12608 % side == 0 and 64 <= side <= fusion_job.MAX_CHUNK
    assert fusion_job.chunk_side(9001, (9001, 9001)) == fusion_job.MAX_CHUNK  # one tile: any chunk


def test_run_job_asks_the_workers_and_cpu_workers_keep_the_default_tile(tmp_path, dysco3_store, client, dysco3):
    params = {**dysco3["params"], "n_iter": 3}
    job = run_job("fuse", dysco3_store, tmp_path / "o.zarr", client, progress=False, params=params)
    assert job.tile == 512
    summary = fusion_job.summary(job)
    assert summary["tile"] == 512 and summary["tile_choice"]["rule"] == "no GPU worker: the CPU default"
    assert summary["tile_choice"]["free_bytes"] is None


@pytest.mark.parametrize("cluster", ["auto", "local-threads"])
def test_run_job_stages_plans_the_cpu_tile_without_a_gpu(tmp_path, dysco3_store, dysco3, cluster):
    """cluster auto on a machine without a GPU starts nothing before the plan (a one-tile job still
    runs on threads); a named cluster is connected first and its workers asked."""
    from emfuse.flows.jobs import registry

    with registry.JobClient(cluster) as connection:
        free = connection.free_memory("fuse", "auto")
        assert (connection.client is None) == (cluster == "auto")
        assert free == [None] if cluster == "auto" else all(f is None for f in free)
    options = registry.fuse_options(params={**dysco3["params"], "n_iter": 3})
    result = registry.run_job_stages("fuse", str(dysco3_store), str(tmp_path / "o.zarr"), options,
                                     cluster=cluster, report=False, progress=False)
    assert result["tile"] == 512 and result["tile_choice"]["free_bytes"] is None
    assert result["cluster"] == ("local-threads" if cluster == "auto" else cluster)


@pytest.mark.gpu
def test_gpu_workers_report_their_share_of_the_free_memory(client, tmp_path, dysco3_store, dysco3):
    """Two worker threads on one GPU: each may hold half its free memory; the plan's tile fits it."""
    free = fusion_job.workers_free_memory(client, "auto")
    total = runner.gpu_free_bytes()
    assert len(free) == 2 and free[0] == pytest.approx(free[1], rel=0.05)
    assert 0 < free[0] <= 0.55 * total
    job, _ = fusion_job.plan(dysco3_store, tmp_path / "o.zarr", params=dysco3["params"], free_memory=free)
    assert job.tile == 256  # 256 x 200 px need a few MB: one tile
