"""The tem-fuse job without Prefect: a real Dask cluster, tiles equal to one pass, resume, refusals, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emfuse.flows.jobs import run_job, runner
from emfuse.flows.jobs import tem_fuse as tem_fuse_job
from emfuse.flows.report import write_report
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.avae.fuse import fuse_modes
from emfuse.pipeline.avae.model import AVAE, AVAEConfig, load_avae, save_avae
from emfuse.pipeline.avae.preprocess import Preprocessing
from emfuse.stores.errors import StoreError
from emfuse.stores.zarrio import is_complete, open_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic("tem-modes", tmp_path_factory.mktemp("in") / "tem.zarr", shape=(96, 80),
                           material="metal", seed=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = AVAE(AVAEConfig(features=4, latent=2))
    return save_avae(net, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _run(store, out, client, model, **kw):
    return run_job("tem-fuse", store, out, client, progress=False, model=model, tile=32, halo=16, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store, client, model):
    return _run(store, tmp_path_factory.mktemp("ref") / "out.zarr", client, model)


def test_tiled_fusion_matches_one_pass_and_reports(tmp_path, store, reference, model):
    job = reference
    assert is_complete(job.out)
    out = open_dataset(job.out)
    assert out.tem_fused.shape == (96, 80) and out.attention.dims == ("mode", "y", "x")
    assert list(out.mode.values) == ["bf", "df", "hrtem"] and out.tem_fused.encoding["chunks"] == (32, 32)
    np.testing.assert_allclose(out.attention.sum("mode").values, 1, atol=1e-5)
    prep = Preprocessing.from_dict(out.attrs["preprocessing"])
    assert job.flat_reference and prep.order == 0  # the synthetic store has its vacuum references
    np.testing.assert_array_equal(out.flat_reference.values, open_dataset(store).flat_reference.values)
    whole, attention = fuse_modes(load_avae(model), prep.apply(out.modes.values / out.flat_reference.values))
    np.testing.assert_allclose(out.tem_fused.values, whole, atol=1e-4)
    np.testing.assert_allclose(out.attention.values, attention, atol=1e-4)
    np.testing.assert_array_equal(out.true_structure.values, open_dataset(store).true_structure.values)
    summary = tem_fuse_job.summary(job)
    assert set(summary["quality"]) == {"tem_fused", "hrtem"} and summary["mean_attention"].keys() == {"bf", "df", "hrtem"}
    paths = write_report(job.out, tmp_path / "report")
    assert (tmp_path / "report" / "tem_fusion.png").stat().st_size > 10_000
    assert paths[-1].name == "summary.json"


def test_resume_recomputes_only_unfinished_tiles_bitwise(tmp_path, store, client, model, reference):
    job, state = tem_fuse_job.plan(store, tmp_path / "resumed.zarr", model=model, tile=32, halo=16)
    assert state == "new"
    tem_fuse_job.write_inputs(job)
    context = tem_fuse_job.fit_context(job)
    for tile in job.grid[:2]:
        runner.run_unit(tem_fuse_job.SPEC, job, runner.Unit(tile.index, tile), context)
    assert not is_complete(job.out)
    job2, state = tem_fuse_job.plan(store, job.out, model=model, tile=32, halo=16)
    assert state == "resume"
    assert runner.run_units(tem_fuse_job.SPEC, job2, tem_fuse_job.fit_context(job2), client, progress=False) == len(job.grid) - 2
    runner.finalise(tem_fuse_job.SPEC, job2)
    a, b = open_dataset(reference.out), open_dataset(job.out)
    for name in ("tem_fused", "attention", "modes"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert tem_fuse_job.plan(store, job.out, model=model, tile=32, halo=16)[1] == "complete"


def test_the_model_is_loaded_once_per_worker(model):
    from emfuse.pipeline.avae.model import model_info

    job = tem_fuse_job.TemFuseJob("in.zarr", "out.zarr", str(model), "x")
    first = tem_fuse_job.worker_model(job, "cpu")
    assert tem_fuse_job.worker_model(job, "cpu") is first
    assert model_info(model) == {}


def test_refusals_are_named(tmp_path, store, client, model, reference):
    other = save_avae(AVAE(AVAEConfig(features=4, latent=2)), tmp_path / "other.safetensors")
    with pytest.raises(StoreError, match="other parameters.*model"):
        _run(store, reference.out, client, other)
    with pytest.raises(FileNotFoundError, match="no AVAE weights"):
        _run(store, tmp_path / "o2.zarr", client, tmp_path / "missing.safetensors")
    si = write_synthetic("spectrum-image", tmp_path / "si.zarr", shape=(32, 32))
    with pytest.raises(tem_fuse_job.TemFuseInputError, match="has no 'modes'"):
        _run(si, tmp_path / "o3.zarr", client, model)


def test_stats_attention_tiles_equal_one_pass(tmp_path, store, client):
    """The uncertainty-aware attention looks at 3 x 3 latent neighbourhoods: the halo still covers it."""
    torch.manual_seed(4)
    net = AVAE(AVAEConfig(features=4, latent=2, attention_from="stats", attention_hidden=4))
    with torch.no_grad():
        net.score[2].weight.normal_(0, 2.0)  # away from the equal-weight start
    path = save_avae(net, tmp_path / "stats.safetensors")
    job = _run(store, tmp_path / "stats.zarr", client, path)
    out = open_dataset(job.out)
    prep = Preprocessing.from_dict(out.attrs["preprocessing"])
    whole, attention = fuse_modes(load_avae(path), prep.apply(out.modes.values / out.flat_reference.values))
    assert attention.std(axis=(1, 2)).max() > 0.01  # the weights do vary over the image
    np.testing.assert_allclose(out.tem_fused.values, whole, atol=1e-4)
    np.testing.assert_allclose(out.attention.values, attention, atol=1e-4)


def test_without_a_flat_reference_the_illumination_is_fitted(tmp_path, store, client):
    """A store without ``flat_reference`` is flat-fielded by a fitted surface, one with it by division;
    both get the default weights (trained on both kinds)."""
    from emfuse.pipeline.avae.model import DEFAULT_WEIGHTS, RESIDUAL_WIENER_WEIGHTS
    from emfuse.stores.zarrio import write_dataset

    bare = tmp_path / "bare.zarr"
    write_dataset(open_dataset(store).drop_vars("flat_reference"), bare)
    plain, _ = tem_fuse_job.plan(bare, tmp_path / "plain.zarr", tile=32, halo=16)
    flat, _ = tem_fuse_job.plan(store, tmp_path / "flat.zarr", tile=32, halo=16)
    assert (plain.flat_reference, flat.flat_reference) == (False, True)
    assert plain.model == flat.model == str(RESIDUAL_WIENER_WEIGHTS.resolve())
    job = _run(bare, tmp_path / "bare_out.zarr", client, DEFAULT_WEIGHTS)
    out = open_dataset(job.out)
    prep = Preprocessing.from_dict(out.attrs["preprocessing"])
    assert "flat_reference" not in out and prep.order == 2
    whole, _ = fuse_modes(load_avae(DEFAULT_WEIGHTS), prep.apply(out.modes.values))
    np.testing.assert_allclose(out.tem_fused.values, whole, atol=1e-4)


@pytest.mark.parametrize("spoil, message", [
    (lambda f: f.where(f.x > f.x[3], 0.0), "finite and > 0"),
    (lambda f: f.where(f.y > f.y[2]), "finite and > 0"),
    (lambda f: f.isel(mode=0, drop=True), r"must be \(mode, y, x\)"),
], ids=["zero", "nan", "one-for-all-modes"])
def test_bad_flat_references_are_named(tmp_path, store, spoil, message):
    from emfuse.stores.zarrio import write_dataset

    ds = open_dataset(store)
    path = tmp_path / "bad.zarr"
    write_dataset(ds.assign(flat_reference=spoil(ds.flat_reference)), path)
    with pytest.raises(tem_fuse_job.TemFuseInputError, match=message):
        tem_fuse_job.plan(path, tmp_path / "o.zarr", tile=32, halo=16)


def test_modes_unlike_the_training_data_are_marked_check(tmp_path, store):
    """Simulated modes at the training pixel size draw no warning; modes without a truth (data from
    an instrument) and at another pixel size get one warning each, stored for the report."""
    from emfuse.stores.warn import read_warnings
    from emfuse.stores.zarrio import write_dataset

    tem_fuse_job.plan(store, tmp_path / "sim.zarr", tile=32, halo=16)
    assert read_warnings(tmp_path / "sim.zarr") == []
    real = open_dataset(store).drop_vars("true_structure")
    real = real.assign_coords(x=("x", real.x.values * 30, {"units": "Å"}))  # 0.05 nm -> 0.15 nm
    write_dataset(real, tmp_path / "real.zarr")
    tem_fuse_job.plan(tmp_path / "real.zarr", tmp_path / "real_out.zarr", tile=32, halo=16)
    found = {w["code"]: w for w in read_warnings(tmp_path / "real_out.zarr")}
    assert set(found) == {"avae-simulated-training", "avae-pixel-size"}
    assert found["avae-pixel-size"]["pixel_nm"] == pytest.approx(0.15) and "0.15 nm" in found["avae-pixel-size"]["message"]
    # the default weights' own training range (pixel_nm in their metadata, 0.018-0.068 nm), not 0.05 nm +- 1.5x
    fine = open_dataset(store)
    fine = fine.assign_coords({d: (d, fine[d].values / 2, fine[d].attrs) for d in ("y", "x")})  # 0.05 -> 0.025 nm
    write_dataset(fine, tmp_path / "fine.zarr")
    tem_fuse_job.plan(tmp_path / "fine.zarr", tmp_path / "fine_out.zarr", tile=32, halo=16)
    assert read_warnings(tmp_path / "fine_out.zarr") == []


def test_a_residual_model_gets_its_restored_hrtem_base_on_every_window(tmp_path, store, client):
    """A model with a base: the base's statistics are fitted once (attribute ``base``), every window's
    base is restored by the model's restoration network, and the tiles equal one pass."""
    from emfuse.pipeline.avae.base import BaseFit, flat_hrtem
    from emfuse.pipeline.restore import load_model, save_model
    from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig

    torch.manual_seed(6)
    restoration = save_model(CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2)),
                             tmp_path / "tiny_cgrdn.safetensors")
    net = AVAE(AVAEConfig(features=4, latent=2, base="restored_hrtem", base_model=str(restoration)))
    with torch.no_grad():  # away from the start (the base itself), so the modes count too
        net.decoder.body[-1].weight.normal_(0, 0.3)
        net.base_gain.weight.normal_(0, 0.3)
    path = save_avae(net, tmp_path / "residual.safetensors")
    job = run_job("tem-fuse", store, tmp_path / "residual.zarr", client, progress=False, model=path, tile=32, halo=32)
    out = open_dataset(job.out)
    prep = Preprocessing.from_dict(out.attrs["preprocessing"])
    fit = BaseFit.from_dict(out.attrs["base"])
    assert out.attrs["base"]["model"] == str(restoration)
    recorded = out.modes.values / out.flat_reference.values
    base = fit.apply(flat_hrtem(prep, recorded), load_model(restoration))
    assert abs(float(base.mean())) < 1e-3 and abs(float(base.std()) - 1) < 1e-3  # the whole image is the fit crop
    whole, attention = fuse_modes(load_avae(path), prep.apply(recorded), base=base)
    np.testing.assert_allclose(out.tem_fused.values, whole, atol=1e-4)
    np.testing.assert_allclose(out.attention.values, attention, atol=1e-4)
    assert not np.allclose(whole, fuse_modes(load_avae(path), prep.apply(recorded), base=0 * base)[0], atol=0.1)
    assert set(tem_fuse_job.summary(job)["quality"]) == {"tem_fused", "hrtem"}


def test_the_default_model_with_a_flat_reference_fuses_on_its_wiener_base(tmp_path, store, client):
    """No --model on a store with a flat reference: the committed residual on the Wiener-filtered HRTEM.
    Each window's base is filtered in one piece with its own noise level, so tiles are close to one
    pass (not equal to it) and show no seams."""
    from emfuse.pipeline.avae.base import BaseFit, flat_hrtem, load_base_network
    from emfuse.pipeline.avae.baselines import score
    from emfuse.pipeline.avae.model import RESIDUAL_WIENER_WEIGHTS

    job = run_job("tem-fuse", store, tmp_path / "wiener.zarr", client, progress=False, tile=48, halo=16)
    assert job.model == str(RESIDUAL_WIENER_WEIGHTS.resolve())
    out = open_dataset(job.out)
    assert out.attrs["base"]["model"] == "wiener" and "Wiener-filtered" in out.tem_fused.attrs["description"]
    prep = Preprocessing.from_dict(out.attrs["preprocessing"])
    recorded = out.modes.values / out.flat_reference.values
    base = BaseFit.from_dict(out.attrs["base"]).apply(flat_hrtem(prep, recorded), load_base_network("wiener"))
    whole, _ = fuse_modes(load_avae(RESIDUAL_WIENER_WEIGHTS), prep.apply(recorded), base=base)
    tiled, truth = out.tem_fused.values, out.true_structure.values
    assert np.isfinite(tiled).all() and np.abs(tiled - whole).mean() < 0.2  # 0.15 here; 0.03 with 256 px tiles
    step = np.abs(np.diff(tiled, axis=1))
    assert step[:, 47].mean() < 1.5 * step.mean()  # across the tile boundary as anywhere else
    assert abs(score(tiled, truth)["psnr"] - score(whole, truth)["psnr"]) < 0.3


def test_train_avae_gives_a_residual_network_the_base_tem_fuse_makes(tmp_path, store):
    from emfuse.flows.tools.train_avae import store_regions, train_from_stores
    from emfuse.pipeline.avae.base import BaseFit, flat_hrtem
    from emfuse.pipeline.avae.train import TrainSettings
    from emfuse.pipeline.restore import load_model, save_model
    from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig

    torch.manual_seed(7)
    restoration = save_model(CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2)),
                             tmp_path / "tiny_cgrdn.safetensors")
    inputs, targets = store_regions(store, 40, base_model=str(restoration))
    plain, _ = store_regions(store, 40)
    assert inputs.shape == (4, 4, 40, 40) and targets.shape == (4, 40, 40)
    np.testing.assert_array_equal(inputs[:, :3], plain)
    ds = open_dataset(store)
    recorded = ds.modes.sel(mode=["bf", "df", "hrtem"]).values / ds.flat_reference.sel(mode=["bf", "df", "hrtem"]).values
    prep = tem_fuse_job.fit_store_preprocessing(tem_fuse_job.recorded_modes(ds, True), True)
    fit, base = BaseFit.fit(flat_hrtem(prep, recorded), load_model(restoration))  # 96 x 80: the central crop is all
    np.testing.assert_allclose(inputs[1, 3], base[0:40, 40:80], atol=1e-4)
    cfg = AVAEConfig(features=4, latent=2, base="restored_hrtem", base_model=str(restoration))
    path, history = train_from_stores([store], tmp_path / "r.safetensors", region=40, cfg=cfg,
                                      settings=TrainSettings(steps=2, batch=2, crop=16, validate_every=1))
    assert load_avae(path).cfg == cfg and history["best_step"] is not None
