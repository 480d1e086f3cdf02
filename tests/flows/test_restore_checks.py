"""Restoration input checks: too small, not count-like, what the image is, values outside the input's range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from emfuse.flows.jobs import restore as restore_job
from emfuse.flows.jobs import run_job
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.restore import load_model, save_model
from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig
from emfuse.pipeline.restore.inference import min_image_size
from emfuse.stores.warn import read_warnings
from emfuse.stores.zarrio import open_dataset, read_attrs, write_dataset

OPTIONS = dict(tile=32, overlap=8, batch=4)


def _shift_model(path, shift: float) -> str:
    """A CGRDN that adds ``shift`` standard deviations to every pixel (its residual is a constant)."""
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=1))
    torch.nn.init.zeros_(net.last.weight)
    torch.nn.init.constant_(net.last.bias, shift)
    return str(save_model(net, path))


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return _shift_model(tmp_path_factory.mktemp("m") / "identity.safetensors", 0.0)


def _image_store(path, image, **attrs):
    ds = xr.Dataset({"haadf": (("y", "x"), image, attrs)},
                    coords={"y": np.arange(image.shape[0], dtype=float), "x": np.arange(image.shape[1], dtype=float)})
    return write_dataset(ds, path)


def _run(store, out, client, model, **kw):
    return run_job("restore", store, out, client, progress=False, model=model, **{**OPTIONS, **kw})


def test_an_image_smaller_than_the_network_can_use_is_refused(tmp_path, client, identity):
    smallest = min_image_size(load_model(identity))
    assert smallest == 16  # 8 px after the network's down-sampling by 2
    store = _image_store(tmp_path / "small.zarr", np.full((12, 40), 5, np.uint16))
    with pytest.raises(restore_job.RestoreInputError, match=r"12 x 40 px.*at least 16 x 16 px"):
        _run(store, tmp_path / "out.zarr", client, identity)
    assert not (tmp_path / "out.zarr").exists()


def test_input_that_is_not_count_like_gets_a_warning(tmp_path, client, identity):
    rng = np.random.default_rng(0)
    processed = rng.normal(0, 1, (32, 32)).astype(np.float32)  # background-subtracted: half negative
    job = _run(_image_store(tmp_path / "neg.zarr", processed), tmp_path / "neg_out.zarr", client, identity)
    [warning] = [w for w in read_warnings(job.out) if w["code"] == "not-count-like"]
    assert 0.3 < warning["negative_fraction"] < 0.7 and "not counts" in warning["message"]
    assert read_attrs(job.out)["value_range"] == [None, None]  # nothing to clip a float image to
    counts = rng.poisson(20, (32, 32)).astype(np.float32)
    job = _run(_image_store(tmp_path / "pos.zarr", counts), tmp_path / "pos_out.zarr", client, identity)
    assert not [w for w in read_warnings(job.out) if w["code"] == "not-count-like"]


def test_restored_values_beyond_the_detector_maximum_are_clipped_and_flagged(tmp_path, client):
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(230, 15, (32, 32)), 0, 255).astype(np.uint8)  # a nearly full 8-bit detector
    brighter = _shift_model(tmp_path / "up.safetensors", 3.0)  # + 3 standard deviations everywhere
    job = _run(_image_store(tmp_path / "u8.zarr", image), tmp_path / "out.zarr", client, brighter)
    restored = open_dataset(job.out).restored.values
    assert restored.max() == 255 and restored.min() >= 0
    [warning] = [w for w in read_warnings(job.out) if w["code"] == "restored-clipped"]
    unclipped = image.astype(np.float64) + 3 * image.std()
    assert warning["clipped_fraction"] == pytest.approx(np.mean(unclipped > 255 + 0.02 * np.ptp(image)), abs=0.02)
    assert warning["above"] > 0 and warning["below"] == 0 and "above 255" in warning["message"]


def test_counts_are_not_restored_below_zero(tmp_path, client):
    counts = np.random.default_rng(2).poisson(1.0, (32, 32)).astype(np.float32)  # float dtype, but counts
    darker = _shift_model(tmp_path / "down.safetensors", -3.0)
    job = _run(_image_store(tmp_path / "c.zarr", counts), tmp_path / "out.zarr", client, darker)
    assert open_dataset(job.out).restored.values.min() == 0
    [warning] = [w for w in read_warnings(job.out) if w["code"] == "restored-clipped"]
    assert warning["below"] > 0 and "below 0" in warning["message"]


def test_a_noise_level_undershoot_near_zero_is_clipped_without_a_warning(tmp_path, client):
    counts = np.random.default_rng(3).poisson(1.0, (32, 32)).astype(np.float32)  # a third of the pixels 0
    undershoot = 0.01 * np.ptp(counts)  # every pixel lowered by 1 % of the span: zeros go below 0
    slightly = _shift_model(tmp_path / "down.safetensors", -undershoot / counts.std())
    job = _run(_image_store(tmp_path / "c.zarr", counts), tmp_path / "out.zarr", client, slightly)
    restored = open_dataset(job.out).restored.values
    assert restored.min() == 0 and np.mean(restored == 0) > 0.3  # clipped ...
    assert not [w for w in read_warnings(job.out) if w["code"] == "restored-clipped"]  # ... not flagged


def test_the_output_says_what_was_restored(tmp_path, client, identity):
    movie = write_synthetic("movie", tmp_path / "movie.zarr", shape=(32, 32), frames=2)
    job = _run(movie, tmp_path / "m_out.zarr", client, identity, block=1)
    assert read_attrs(job.out)["image_kind"] == "movie"
    assert open_dataset(job.out).restored.attrs["description"].startswith("movie restored")
    # a store written with xarray by a user (no `complete` flag) whose image says it is a HAADF
    image = np.full((32, 32), 7, np.uint16) + np.eye(32, dtype=np.uint16)
    xr.Dataset({"haadf": (("y", "x"), image, {"image_kind": "haadf"})}).to_zarr(
        tmp_path / "h.zarr", zarr_format=3, consolidated=False)
    job = _run(tmp_path / "h.zarr", tmp_path / "h_out.zarr", client, identity)
    assert read_attrs(job.out)["image_kind"] == "haadf"
    # the image beside a spectrum image is that acquisition's HAADF
    si = write_synthetic("spectrum-image", tmp_path / "si.zarr", shape=(32, 32))
    job = _run(si, tmp_path / "si_out.zarr", client, identity)
    assert read_attrs(job.out)["image_kind"] == "haadf"
