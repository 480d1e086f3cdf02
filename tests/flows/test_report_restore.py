"""The report of restore output stores (flows/report/restore.py), on stores the real restore job wrote."""

from __future__ import annotations

import json
import shutil

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr
from dask_helpers import LargestResult
from matplotlib.image import imread

from emfuse.flows.jobs import restore as restore_job
from emfuse.flows.jobs import runner
from emfuse.flows.report import write_report
from emfuse.flows.report.restore import (
    average_figure,
    drift_figure,
    report_crop,
    restore_figure,
    restore_inputs,
    shown_frames,
)
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.register import shift_image
from emfuse.pipeline.restore import save_model
from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig
from emfuse.stores.zarrio import open_dataset, update_attrs, write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIONS = dict(tile=32, overlap=8, batch=4, block=3)
FRAMES = 9  # more than restore_job.SUMMARY_FRAMES: the PSNR is over the first 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small random CGRDN with a damped last layer: output = input + a small learned change,
    so that restored frames differ from the raw ones but still register."""
    torch.manual_seed(0)
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2))
    with torch.no_grad():
        net.last.weight.mul_(0.1)
    return str(save_model(net, tmp_path_factory.mktemp("models") / "tiny.safetensors"))


def _restore(source, out, client, model, **kw):
    """The real job, stage by stage: plan, restore blocks, register, finalise."""
    job, state = restore_job.plan(source, out, model=model, **{**OPTIONS, **kw})
    assert state == "new"
    runner.run_units(restore_job.SPEC, job, None, client, progress=False)
    restore_job.register(job, client, progress=False)
    runner.finalise(restore_job.SPEC, job)
    return job


@pytest.fixture(scope="module")
def movie_job(tmp_path_factory, client, model):
    d = tmp_path_factory.mktemp("movie")
    source = write_synthetic("movie", d / "movie.zarr", shape=(64, 48), frames=FRAMES, dose=50, seed=1)
    return _restore(source, d / "restored.zarr", client, model, register=True)


def _check_png(path, min_side=200, max_side=4000):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min_side <= image.shape[0] <= max_side and min_side <= image.shape[1] <= max_side
    assert image[..., :3].std() > 0.05  # not a blank page
    return image


def _panels(fig) -> dict[str, np.ndarray]:
    """Title -> image drawn, for every image panel of a figure (colourbars have no image)."""
    return {ax.get_title(): np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images}


def _clims(fig) -> dict[str, tuple[float, float]]:
    return {ax.get_title(): ax.images[0].get_clim() for ax in fig.axes if ax.images}


def test_report_of_a_restored_movie(movie_job, tmp_path):
    out, source = open_dataset(movie_job.out), open_dataset(movie_job.source)
    paths = write_report(movie_job.out, tmp_path / "report")
    assert [p.name for p in paths] == ["restore.png", "restore_drift.png", "restore_average.png", "summary.json"]
    images = {p.name: _check_png(p) for p in paths[:-1]}
    assert images["restore.png"].shape[0] > 1.5 * images["restore.png"].shape[1]  # 6 rows of 3 panels

    summary = json.loads(paths[-1].read_text())
    r = summary["restore"]
    assert r["frames"] == FRAMES and r["shape"] == [FRAMES, 64, 48]
    assert r["model"] == movie_job.model and r["precision"] == "fp32" and r["device"] == "auto"
    assert r["devices"] == ["cpu"]
    assert r["input_found"] is True and r["has_truth"] is True and summary["has_truth"] is True
    assert summary["figures"] == ["restore.png", "restore_drift.png", "restore_average.png"]
    # PSNRs computed here from the stores, frame by frame, over the first 8 frames
    raw, truth, restored = source.movie.values, source.true_movie.values, out.restored.values
    n = restore_job.SUMMARY_FRAMES
    psnr_raw = np.mean([psnr(raw[k], truth[k]) for k in range(n)])
    psnr_restored = np.mean([psnr(restored[k], truth[k]) for k in range(n)])
    assert r["psnr_frames"] == n
    assert r["psnr_raw_db"] == pytest.approx(psnr_raw, rel=1e-9)
    assert r["psnr_restored_db"] == pytest.approx(psnr_restored, rel=1e-9)
    assert abs(psnr_raw - psnr_restored) > 0.01  # the two are not interchangeable here
    assert r["psnr_average_db"] == pytest.approx(psnr(out.average.values, truth[0]), rel=1e-9)
    drift = out.drift.values
    assert r["drift_max_px"] == pytest.approx(np.abs(drift).max())
    assert r["drift_error_px"] == pytest.approx(np.abs(drift - source.true_drift.values).max())
    assert r["drift_max_px"] > 0.5  # the synthetic specimen drifts by about 0.25 px per frame
    # the numbers `emfuse restore` prints agree
    printed = restore_job.summary(movie_job)
    for key in ("frames", "model", "precision", "psnr_raw_db", "psnr_restored_db", "drift_max_px"):
        assert r[key] == pytest.approx(printed[key]), key


def test_restore_figure_draws_the_stored_frames_and_crops(movie_job):
    out, source = open_dataset(movie_job.out), open_dataset(movie_job.source)
    fig = restore_figure(xr.open_zarr(movie_job.out, zarr_format=3, consolidated=False), 1)
    panels, clims = _panels(fig), _clims(fig)
    assert shown_frames(FRAMES) == [0, 4, 8] and len(panels) == 3 * 2 * 3
    ys, xs = report_crop(64, 48)
    assert (ys.stop - ys.start, xs.stop - xs.start) == (24, 24)
    for f in (0, 4, 8):
        np.testing.assert_array_equal(panels[f"frame {f}: raw"], source.movie.values[f])
        np.testing.assert_array_equal(panels[f"frame {f}: restored"], out.restored.values[f])
        np.testing.assert_array_equal(panels[f"frame {f}: truth"], source.true_movie.values[f])
        np.testing.assert_array_equal(panels[f"frame {f} zoom: raw"], source.movie.values[f][ys, xs])
        np.testing.assert_array_equal(panels[f"frame {f} zoom: restored"], out.restored.values[f][ys, xs])
        np.testing.assert_array_equal(panels[f"frame {f} zoom: truth"], source.true_movie.values[f][ys, xs])
        # raw, restored and truth are counts of the same dose: one colour scale
        assert clims[f"frame {f}: raw"] == clims[f"frame {f}: restored"] == clims[f"frame {f}: truth"]


def test_drift_and_average_figures(movie_job):
    out, source = open_dataset(movie_job.out), open_dataset(movie_job.source)
    ds = xr.open_zarr(movie_job.out, zarr_format=3, consolidated=False)
    drift = out.drift.values
    lines = {line.get_label(): line.get_ydata() for line in drift_figure(ds, 1).axes[0].lines}
    np.testing.assert_array_equal(lines["x (measured)"], drift[:, 1])
    np.testing.assert_array_equal(lines["y (measured)"], drift[:, 0])
    np.testing.assert_array_equal(lines["x (true)"], source.true_drift.values[:, 1])

    panels = _panels(average_figure(ds, 1))
    raw_mean = np.mean([shift_image(frame, tuple(-d)) for frame, d in zip(source.movie.values, drift)], axis=0)
    np.testing.assert_allclose(panels["mean: raw"], raw_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(panels["mean: restored (average)"], out.average.values)
    np.testing.assert_array_equal(panels["mean: truth (frame 0)"], source.true_movie.values[0])
    ys, xs = report_crop(64, 48)
    # the crop is averaged on its own (with a margin): the same as cropping the whole mean
    np.testing.assert_allclose(panels["zoom: raw"], raw_mean[ys, xs], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(panels["zoom: restored (average)"], out.average.values[ys, xs])


def test_without_its_input_store_only_the_restored_frames_are_shown(movie_job, tmp_path):
    moved = tmp_path / "restored.zarr"
    shutil.copytree(movie_job.out, moved)
    update_attrs(moved, source_path=str(tmp_path / "gone.zarr"), input_store=str(tmp_path / "gone.zarr"))
    paths = write_report(moved)
    assert [p.name for p in paths] == ["restore.png", "restore_drift.png", "restore_average.png", "summary.json"]
    for png in paths[:-1]:
        _check_png(png)
    r = json.loads(paths[-1].read_text())["restore"]
    assert r["input_found"] is False and r["has_truth"] is False and "psnr_raw_db" not in r
    assert r["frames"] == FRAMES and r["drift_max_px"] > 0.5
    panels = _panels(restore_figure(xr.open_zarr(moved, zarr_format=3, consolidated=False), 1))
    assert sorted(panels) == sorted(f"frame {f}{z}: restored" for f in (0, 4, 8) for z in ("", " zoom"))


def test_an_input_store_written_again_is_read_again(movie_job, tmp_path):
    # a report opens its input store once for all its figures (report.restore._input_store); a store
    # written again since is read again, not served from that cache
    source, out = tmp_path / "movie.zarr", tmp_path / "restored.zarr"
    shutil.copytree(movie_job.source, source)
    shutil.copytree(movie_job.out, out)
    update_attrs(out, input_store=str(source), source_path=str(source))
    ds = xr.open_zarr(out, zarr_format=3, consolidated=False)
    first = restore_inputs(ds)[0].values
    assert restore_inputs(ds)[2] is restore_inputs(ds)[2]  # one open for every figure of the report
    movie = open_dataset(source).load()
    write_dataset(movie.assign(movie=2 * movie["movie"]), source, overwrite=True)
    np.testing.assert_array_equal(restore_inputs(ds)[0].values, 2 * first)


def test_an_image_restored_as_one_frame(tmp_path, client, model):
    image = np.random.default_rng(0).poisson(30, (40, 52)).astype(np.float32)
    store = write_dataset(xr.Dataset({"haadf": (("y", "x"), image)},
                                     coords={"y": np.arange(40.0), "x": np.arange(52.0)}), tmp_path / "img.zarr")
    job = _restore(store, tmp_path / "img_out.zarr", client, model, register=True)
    paths = write_report(job.out)
    assert [p.name for p in paths] == ["restore.png", "summary.json"]  # one frame: no drift to plot
    _check_png(paths[0])
    r = json.loads(paths[-1].read_text())["restore"]
    assert r["frames"] == 1 and r["drift_max_px"] == 0 and r["has_truth"] is False and "psnr_raw_db" not in r
    panels = _panels(restore_figure(xr.open_zarr(job.out, zarr_format=3, consolidated=False), 1))
    np.testing.assert_array_equal(panels["frame 0: raw"], image)
    assert set(panels) == {"frame 0: raw", "frame 0: restored", "frame 0 zoom: raw", "frame 0 zoom: restored"}


@pytest.mark.slow  # kept out of the default suite's 10 minutes; make test-all runs it
def test_large_frames_are_binned_not_loaded_whole(tmp_path):
    """A hand-made restore store of 1100 x 1100 frames, laid out as the job writes it."""
    n, frames = 1100, 3
    v = da.from_array(np.sin(np.linspace(0, 30, n, dtype="float32")), chunks=550)
    truth = (2 + v[:, None] * v[None, :]).astype("float32")
    stack = da.stack([truth] * frames).rechunk((1, 550, 550))
    coords = {"frame": np.arange(frames), "y": np.arange(n, dtype=float), "x": np.arange(n, dtype=float)}
    source = write_dataset(xr.Dataset({"movie": (("frame", "y", "x"), stack + 0.1),
                                       "true_movie": (("frame", "y", "x"), stack)}, coords=coords),
                           tmp_path / "big.zarr")
    drift = np.array([[0, 0], [0.5, -0.25], [1.0, -0.5]])
    out = xr.Dataset({"restored": (("frame", "y", "x"), stack + 0.01), "average": (("y", "x"), truth),
                      "drift": (("frame", "axis"), drift)}, coords={**coords, "axis": ["y", "x"]})
    out.attrs.update(params={"model": "r_em:sfr_hrstem", "precision": "bf16", "device": "cpu"},
                     source_path=str(source))
    write_dataset(out, tmp_path / "big_restored.zarr")

    # the local scheduler (not the module's cluster), whose tasks the probe sees
    with dask.config.set(scheduler="threads"), LargestResult() as probe:
        paths = write_report(tmp_path / "big_restored.zarr", dpi=60)
    assert 0 < probe.largest < n * n * 4  # chunks and binned frames, never a whole frame
    summary = json.loads(paths[-1].read_text())
    assert summary["display_factor"] == 2
    r = summary["restore"]
    assert r["model"] == "r_em:sfr_hrstem" and r["precision"] == "bf16" and r["frames"] == frames
    peak = float(truth.max() - truth.min())
    assert r["psnr_raw_db"] == pytest.approx(20 * np.log10(peak / 0.1), rel=1e-5)
    assert r["psnr_restored_db"] == pytest.approx(20 * np.log10(peak / 0.01), rel=1e-4)
    assert r["drift_max_px"] == 1.0
    for png in paths[:-1]:
        _check_png(png, min_side=100)


@pytest.mark.slow  # kept out of the default suite's 10 minutes; make test-all runs it
def test_report_command_on_a_restore_store(movie_job, tmp_path, capsys):
    from emfuse.flows.cli import main

    assert main(["report", movie_job.out, "--report-dir", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "r" / name) for name in
                       ("restore.png", "restore_drift.png", "restore_average.png", "summary.json")]


@pytest.mark.prefect
def test_emfuse_restore_writes_the_report(prefect_harness, tmp_path, model, capsys):
    from emfuse.flows.cli import main

    store, out = tmp_path / "movie.zarr", tmp_path / "restored.zarr"
    assert main(["synth", "movie", "--out", str(store), "--shape", "48", "40", "--frames", "3"]) == 0
    assert main(["restore", str(store), "--out", str(out), "--model", model, "--cluster", "local-threads",
                 "--tile", "32", "--overlap", "8", "--register"]) == 0
    printed = capsys.readouterr().out
    report = tmp_path / "restored.report"
    assert f"report:       {report}" in printed
    for name in ("restore.png", "restore_drift.png", "restore_average.png"):
        _check_png(report / name)
    assert json.loads((report / "summary.json").read_text())["restore"]["frames"] == 3
    assert main(["restore", str(store), "--out", str(tmp_path / "quiet.zarr"), "--model", model,
                 "--cluster", "local-threads", "--tile", "32", "--overlap", "8", "--no-report"]) == 0
    assert "report:" not in capsys.readouterr().out and not (tmp_path / "quiet.report").exists()
