"""Noise2Noise adaptation to a movie's own frames (emfuse.pipeline.restore.adapt) and ``restore --adapt``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from emfuse.flows.jobs import restore as restore_job
from emfuse.flows.jobs import run_job
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.register import shift_image
from emfuse.pipeline.restore import adapt as adapt_module
from emfuse.pipeline.restore import load_model, save_model
from emfuse.pipeline.restore.adapt import (
    adapt_model,
    align_region,
    held_out_decision,
    measure_drift,
    noise2noise_pairs,
)
from emfuse.pipeline.restore.cgrdn import CGRDN
from emfuse.pipeline.restore.inference import restore
from emfuse.pipeline.restore.train import MODEL_PRESETS
from emfuse.pipeline.synth.movie import make_movie
from emfuse.stores.progress import TileRecord
from emfuse.stores.warn import read_warnings
from emfuse.stores.zarrio import mark_complete, open_dataset, read_attrs

JOB_OPTIONS = dict(tile=64, overlap=16, batch=4, block=3)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def movie():
    """6 frames of 96 x 96 px of a drifting column lattice, 20 counts at the columns (Poisson)."""
    return make_movie((96, 96), n_frames=6, dose=20, seed=0)


def _tiny(seed: int = 0) -> CGRDN:
    """An untrained tiny CGRDN: a deliberately poor restoration (input plus random residual)."""
    torch.manual_seed(seed)
    return CGRDN(MODEL_PRESETS["tiny"])


def _psnr(model, frames, truth) -> float:
    return float(np.mean([psnr(r, t) for r, t in zip(restore(frames, model), truth)]))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_pairs_show_the_same_region():
    # several pixels of drift per frame, with fractions: the pairs must undo it
    m = make_movie((96, 96), n_frames=5, dose=20, drift_per_frame=(1.3, -2.4), drift_jitter=0.2, seed=2)
    inputs, targets = noise2noise_pairs(m.true_movie, m.drift, np.random.default_rng(0), patch=32, n=16)
    corr = [_correlation(a, b) for a, b in zip(inputs, targets)]
    assert min(corr) > 0.995, corr
    # the same draws ignoring the drift are not the same region (the check can fail)
    ignored, targets0 = noise2noise_pairs(m.true_movie, np.zeros_like(m.drift), np.random.default_rng(0),
                                          patch=32, n=16)
    assert np.median([_correlation(a, b) for a, b in zip(ignored, targets0)]) < 0.9
    # with noise, input and target noise are independent: the residuals do not correlate
    noisy_in, noisy_t = noise2noise_pairs(m.movie, m.drift, np.random.default_rng(0), patch=32, n=16)
    assert abs(_correlation(noisy_in - inputs, noisy_t - targets)) < 0.05
    # the measured drift is what the pairs would use
    assert np.abs(measure_drift(m.movie) - m.drift).max() < 0.2


def test_align_region_crops_whole_pixels_and_interpolates_fractions():
    base = gaussian_filter(np.random.default_rng(0).random((64, 64)), 3)
    moved = shift_image(base, (2.4, -3.0), method="fourier")  # the specimen moved by (2.4, -3.0)
    crop = align_region(moved, (20, 20), (16, 16), np.array([2.4, -3.0]))
    np.testing.assert_allclose(crop, base[20:36, 20:36], atol=2e-3 * np.ptp(base))
    exact = align_region(np.roll(base, (2, -3), axis=(0, 1)), (20, 20), (16, 16), np.array([2.0, -3.0]))
    np.testing.assert_array_equal(exact, base[20:36, 20:36].astype(np.float32))  # no resampling


def test_decision_needs_more_than_the_noise_of_the_estimate():
    rng = np.random.default_rng(0)
    before = 5 + rng.normal(0, 1, 40)
    assert held_out_decision(before, before - 0.5)[0]
    noise = rng.normal(0, 1, 40)
    assert not held_out_decision(before, before + noise - 0.05)[0]  # a gain buried in the noise
    assert not held_out_decision(before, before - 1e-6)[0]  # a gain of rounding size


def test_adapting_a_poor_model_improves_the_check_and_the_truth(movie):
    net = _tiny()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    res = adapt_model(net, movie.movie, steps=60, lr=3e-3, batch=4, patch=48, seed=0)
    assert res.used, res.reason
    assert res.model is res.adapted
    assert res.score_after < 0.8 * res.score_before
    assert res.frames_train == [0, 1, 2, 3] and res.frames_holdout == [4, 5]
    frames, truth = movie.movie[:4], movie.true_movie[:4]
    before, after = _psnr(net, frames, truth), _psnr(res.model, frames, truth)
    assert after > before + 3, (before, after)
    for k, v in net.state_dict().items():  # the starting model is not touched
        torch.testing.assert_close(v, original[k])
    record = res.record()
    assert record["used"] and record["train_frames"] == [0, 1, 2, 3] and record["loss_last"] < record["loss_first"]


@pytest.mark.parametrize("steps, lr", [(0, 1e-4), (4, 1e-12)])
def test_no_useful_adaptation_keeps_the_original_model(movie, steps, lr):
    net = _tiny()
    res = adapt_model(net, movie.movie[:4], steps=steps, lr=lr, batch=2, patch=32)
    assert not res.used, res.reason
    assert res.model is net
    assert res.score_after == pytest.approx(res.score_before, rel=1e-4)


def test_adaptation_needs_four_frames(movie):
    with pytest.raises(ValueError, match="at least 4 frames"):
        adapt_model(_tiny(), movie.movie[:3], steps=1)


# -- the restore job --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def movie_store(tmp_path_factory):
    return write_synthetic("movie", tmp_path_factory.mktemp("in") / "movie.zarr", shape=(96, 96), frames=6)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return str(save_model(_tiny(), tmp_path_factory.mktemp("models") / "tiny.safetensors"))


def test_job_adapts_once_records_it_and_resumes_with_the_saved_model(tmp_path, movie_store, client, tiny_file,
                                                                      monkeypatch):
    out = tmp_path / "adapt.zarr"
    job = run_job("restore", movie_store, out, client, progress=False, model=tiny_file, adapt=40, **JOB_OPTIONS)
    record = read_attrs(out)["adaptation"]
    assert record["used"], record
    assert record["steps"] == 40 and record["holdout_frames"] == [4, 5] and record["frames_used"] == list(range(6))
    assert record["score_after"] < record["score_before"]
    assert read_attrs(out)["params"]["adapt_steps"] == 40
    saved = restore_job.adapted_model_path(out)
    assert saved.is_file() and job.model == str(saved.resolve()) and job.model_sha256 == record["model_sha256"]
    # the blocks were restored with the adapted model
    ds = open_dataset(out)
    frames = open_dataset(movie_store).movie.values.astype(np.float32)
    expected = restore(frames, load_model(saved), tile=64, overlap=16, batch=4)
    np.testing.assert_allclose(ds.restored.values, np.clip(expected, 0, None), rtol=1e-4, atol=1e-3)
    truth = open_dataset(movie_store).true_movie.values
    raw = restore(frames, load_model(tiny_file), tile=64, overlap=16, batch=4)
    assert psnr(ds.restored.values, truth) > psnr(np.clip(raw, 0, None), truth)
    assert restore_job.summary(job)["adaptation"]["used"]

    # an interrupted run: a block lost; the rerun must not adapt again, and must use the saved model
    TileRecord.open(out, restore_job.JOB)._group["done"][1, 0] = 0
    mark_complete(out, False)
    monkeypatch.setattr(adapt_module, "adapt_model", lambda *a, **k: pytest.fail("adapted again"))
    job2 = run_job("restore", movie_store, out, client, progress=False, model=tiny_file, adapt=40, **JOB_OPTIONS)
    assert job2.model == job.model
    np.testing.assert_array_equal(open_dataset(out).restored.values, ds.restored.values)


def test_job_warns_and_keeps_the_model_when_adaptation_does_not_help(tmp_path, movie_store, client, tiny_file,
                                                                     monkeypatch):
    monkeypatch.setattr(adapt_module, "held_out_decision", lambda b, a, **k: (False, "no gain (test)", {}))
    out = tmp_path / "kept.zarr"
    job = run_job("restore", movie_store, out, client, progress=False, model=tiny_file, adapt=2, **JOB_OPTIONS)
    record = read_attrs(out)["adaptation"]
    assert not record["used"] and record["reason"] == "no gain (test)"
    assert not restore_job.adapted_model_path(out).exists()
    assert job.model == tiny_file
    assert "adapt-not-improved" in [w["code"] for w in read_warnings(out)]
    frames = open_dataset(movie_store).movie.values.astype(np.float32)
    expected = restore(frames, load_model(tiny_file), tile=64, overlap=16, batch=4)
    np.testing.assert_allclose(open_dataset(out).restored.values, np.clip(expected, 0, None), rtol=1e-4, atol=1e-3)


def test_job_refuses_adapt_without_enough_frames(tmp_path, client, tiny_file):
    store = write_synthetic("movie", tmp_path / "short.zarr", shape=(64, 64), frames=3)
    with pytest.raises(restore_job.RestoreInputError, match="at least 4 frames"):
        restore_job.plan(store, tmp_path / "o.zarr", model=tiny_file, adapt=10, **JOB_OPTIONS)
    with pytest.raises(restore_job.RestoreInputError, match="number of fine-tuning steps"):
        restore_job.plan(store, tmp_path / "o.zarr", model=tiny_file, adapt=-1, **JOB_OPTIONS)


def test_command_line_option():
    from emfuse.flows.cli import build_parser

    args = build_parser().parse_args(["restore", "m.zarr", "--out", "o.zarr", "--adapt", "150"])
    assert args.adapt == 150
    assert build_parser().parse_args(["restore", "m.zarr", "--out", "o.zarr"]).adapt == 0
    from emfuse.flows.jobs import job_kind

    assert "adapt" in job_kind("restore").options  # a catalog may set it too
