"""The AVAE network, its loss, safetensors files, training, inference, baselines and the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emfuse.errors import InputError
from emfuse.pipeline.avae import baselines
from emfuse.pipeline.avae.evaluate import (
    method_images,
    paired_margin,
    prepare_regions,
    score_methods,
    split_indices,
)
from emfuse.pipeline.avae.fuse import fuse_modes
from emfuse.pipeline.avae.model import AVAE, AVAEConfig, avae_loss, load_avae, model_info, save_avae
from emfuse.pipeline.avae.train import (
    TrainSettings,
    sample_batch,
    sample_present,
    standardise,
    train_avae,
)
from emfuse.pipeline.synth.tem_modes import simulate_regions

TINY = AVAEConfig(features=6, latent=3)


def test_attention_is_a_softmax_over_modes_of_a_linear_map_of_the_latents():
    torch.manual_seed(0)
    net = AVAE(TINY).eval()
    x = torch.rand(2, 3, 16, 20)
    out = net(x)
    assert out.fused.shape == (2, 1, 16, 20) and out.attention.shape == (2, 3, 8, 10)
    assert out.mu.shape == (2, 3, 3, 8, 10)
    z = out.mu.reshape(2, 9, 8, 10)  # eval mode: z = mu
    expected = torch.softmax(torch.einsum("mc,bchw->bmhw", net.score.weight[:, :, 0, 0], z)
                             + net.score.bias[None, :, None, None], dim=1)
    torch.testing.assert_close(out.attention, expected)
    torch.testing.assert_close(net(x).fused, out.fused)  # deterministic in eval mode
    net.train()
    assert not torch.allclose(net(x).fused, net(x).fused)  # z sampled in training
    with pytest.raises(ValueError, match="even"):
        net(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        net(torch.rand(1, 2, 16, 16))


def test_a_full_sampling_latent_gives_attention_at_every_pixel():
    out = AVAE(AVAEConfig(features=4, latent=2, stride=1)).eval()(torch.rand(1, 3, 9, 12))
    assert out.fused.shape == (1, 1, 9, 12) and out.attention.shape == (1, 3, 9, 12)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        AVAEConfig(stride=4)


def test_without_attention_the_weights_are_equal():
    out = AVAE(AVAEConfig(features=6, latent=3, attention=False)).eval()(torch.rand(1, 3, 8, 8))
    assert torch.all(out.attention == 1 / 3)


@pytest.mark.parametrize("cfg", [TINY, AVAEConfig(features=6, latent=3, attention_from="stats"),
                                 AVAEConfig(features=6, latent=3, attention=False)], ids=["z", "stats", "equal"])
def test_absent_modes_get_no_weight_and_do_not_change_the_result(cfg):
    torch.manual_seed(1)
    net = AVAE(cfg).eval()
    x = torch.rand(2, 3, 16, 16)
    present = torch.tensor([[1, 0, 1], [0, 0, 1]])
    out = net(x, present)
    assert torch.all(out.attention[0, 1] == 0) and torch.all(out.attention[1, :2] == 0)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2, 8, 8))
    torch.testing.assert_close(out.fused[1:], net(x[1:], torch.tensor([0, 0, 1])).fused)
    if not cfg.attention:  # equal weights over what is there
        assert torch.all(out.attention[0, 0] == 0.5)
    scrambled = x.clone()
    scrambled[0, 1], scrambled[1, 0] = torch.rand(16, 16), torch.rand(16, 16)  # what an absent mode holds is ignored
    torch.testing.assert_close(net(scrambled, present).fused, out.fused)
    assert not torch.allclose(net(scrambled).fused, net(x).fused)
    torch.testing.assert_close(net(x, torch.ones(3)).fused, net(x).fused)
    with pytest.raises(ValueError, match="at least one mode"):
        net(x, torch.tensor([1, 0, 0]).expand(2, 3) * torch.tensor([[1], [0]]))
    with pytest.raises(ValueError, match="present must be"):
        net(x, torch.ones(2, 2))


def test_mode_dropout_draws_every_proper_subset_and_keeps_full_sets():
    m = sample_present(6000, 3, 0.4, np.random.default_rng(4))
    full = (m.sum(1) == 3).mean()
    assert 0.57 < full < 0.63
    codes = (m[m.sum(1) < 3] * [1, 2, 4]).sum(1).astype(int)
    counts = np.bincount(codes, minlength=8)
    assert counts[0] == 0 and counts[7] == 0 and counts[1:7].min() > 0.8 * counts[1:7].mean()
    assert (sample_present(10, 3, 0.0, np.random.default_rng(0)) == 1).all()


def test_loss_is_reconstruction_plus_beta_kl():
    mu, logvar = torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 3, 2, 4, 4)
    target = torch.ones(1, 1, 8, 8)
    out = type(AVAE(TINY)(torch.rand(1, 3, 8, 8)))(torch.zeros(1, 1, 8, 8), torch.ones(1, 3, 4, 4) / 3, mu, logvar)
    loss, parts = avae_loss(out, target, beta=0.5)
    assert parts == {"recon": 1.0, "kl": 0.0} and float(loss) == 1.0
    out = out._replace(mu=torch.ones_like(mu))
    loss, parts = avae_loss(out, target, beta=0.5)
    assert parts["kl"] == pytest.approx(0.5) and float(loss) == pytest.approx(1.25)


def test_safetensors_round_trip_and_refusal(tmp_path):
    torch.manual_seed(1)
    net = AVAE(TINY).eval()
    path = save_avae(net, tmp_path / "m.safetensors", metadata={"steps": 3})
    back = load_avae(path)
    x = torch.rand(1, 3, 12, 12)
    torch.testing.assert_close(back(x).fused, net(x).fused)
    assert back.cfg == TINY and model_info(path) == {"steps": 3}
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an emfuse AVAE file"):
        load_avae(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no AVAE weights"):
        load_avae(tmp_path / "missing.safetensors")


def test_fuse_modes_handles_odd_sizes_and_sums_attention_to_one():
    fused, attention = fuse_modes(AVAE(TINY), np.random.default_rng(0).random((3, 17, 9)))
    assert fused.shape == (17, 9) and attention.shape == (3, 17, 9)
    np.testing.assert_allclose(attention.sum(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match="expected modes"):
        fuse_modes(AVAE(TINY), np.zeros((2, 8, 8)))


def test_batches_are_crops_with_the_same_transform_on_modes_and_truth():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 20, 20)).astype(np.float32)
    x = np.stack([np.stack([t, 2 * t, 3 * t]) for t in y])
    xb, yb = sample_batch(x, y, 8, 10, rng)
    assert xb.shape == (8, 3, 10, 10) and yb.shape == (8, 1, 10, 10)
    np.testing.assert_allclose(xb[:, 2], 3 * yb[:, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="crop must be even"):
        sample_batch(x, y, 1, 11, rng)


def test_training_learns_which_mode_carries_the_truth():
    """The truth is (a smoothed) mode 2: a few steps make the validation error fall, reproducibly."""
    from scipy import ndimage

    rng = np.random.default_rng(2)
    x = rng.random((6, 3, 32, 32)).astype(np.float32)
    x[:, 2] = [ndimage.gaussian_filter(m, 2.0) for m in x[:, 2]]
    x[:, 2] = (x[:, 2] - x[:, 2].min()) / np.ptp(x[:, 2])
    y = np.stack([standardise(m[2]) for m in x])
    settings = TrainSettings(steps=120, batch=8, lr=3e-3, crop=16, validate_every=30, validation_crop=32)
    model, history = train_avae(x[:4], y[:4], TINY, settings, validation=(x[4:], y[4:]))
    val = [v["mse"] for v in history["validation"]]
    assert val[-1] < 0.6 * val[0] and history["best_step"] == 120
    _, again = train_avae(x[:4], y[:4], TINY, settings, validation=(x[4:], y[4:]))
    assert [v["mse"] for v in again["validation"]] == val
    with pytest.raises(ValueError, match="do not match"):
        train_avae(x, y[:2], TINY, settings)


def test_baselines_and_scores():
    truth = np.random.default_rng(3).random((24, 24))
    assert baselines.score(-3 * truth + 7, truth)["ssim"] == pytest.approx(1.0)
    modes = np.stack([truth, np.ones_like(truth), -truth])
    np.testing.assert_allclose(baselines.average(modes), 1 / 3)
    w = baselines.fit_mode_weights([modes], [2 * truth])
    np.testing.assert_allclose(baselines.weighted(modes, w), 2 * truth, atol=1e-9)


def test_evaluation_protocol_on_a_few_regions():
    train, val, test = split_indices(40, seed=1)
    assert len(train) == 28 and len(val) == len(test) == 6
    assert not set(train) & set(val) | set(train) & set(test) | set(val) & set(test)
    prepared = prepare_regions(simulate_regions(3, (48, 48), seed=4))
    assert prepared.inputs.shape == (3, 3, 48, 48) and prepared.registration_error.shape == (3, 3)
    np.testing.assert_allclose(prepared.targets.std(axis=(1, 2)), 1, rtol=1e-4)
    w = baselines.fit_mode_weights(prepared.inputs[:1], prepared.targets[:1])
    one_mode = AVAE(AVAEConfig(n_modes=1, features=6, latent=3, attention=False)).eval()
    images = method_images(prepared.inputs, {"avae": AVAE(TINY).eval(), "hrtem_net": one_mode}, w)
    np.testing.assert_array_equal(images["hrtem_net"][1], fuse_modes(one_mode, prepared.inputs[1, 2:3])[0])
    scores = score_methods(images, prepared.truths, prepared.materials)
    assert set(scores) == {"avae", "hrtem_net", "hrtem", "bf", "df", "average", "weighted"}
    np.testing.assert_array_equal(images["df"][2], prepared.inputs[2, 1])
    assert set(scores["hrtem"]["by_material"]) == {"metal", "semiconductor", "ceramic"}


def test_paired_margin_is_the_mean_difference_per_region_with_its_standard_error():
    rng = np.random.default_rng(7)
    b = {"psnr_per_region": rng.normal(20, 2, 30), "ssim_per_region": rng.uniform(0.3, 0.6, 30)}
    a = {"psnr_per_region": b["psnr_per_region"] + 0.1 + rng.normal(0, 0.05, 30),
         "ssim_per_region": b["ssim_per_region"] - 0.002}
    m = paired_margin(a, b)
    d = a["psnr_per_region"] - b["psnr_per_region"]
    assert m["psnr"]["margin"] == pytest.approx(d.mean()) and 0.08 < m["psnr"]["margin"] < 0.12
    assert m["psnr"]["standard_error"] == pytest.approx(d.std(ddof=1) / np.sqrt(30))
    # paired: the spread between regions (2 dB) does not enter, only that of the differences
    assert m["psnr"]["standard_error"] < 0.02
    assert m["ssim"]["margin"] == pytest.approx(-0.002) and m["ssim"]["standard_error"] == pytest.approx(0, abs=1e-12)


STATS = AVAEConfig(features=6, latent=3, attention_from="stats", attention_hidden=5, attention_kernel=3)


def test_stats_attention_starts_at_equal_weights_and_follows_the_uncertainty():
    """``attention_from="stats"``: softmax of a small conv net of [mu; logvar] of every mode."""
    torch.manual_seed(0)
    net = AVAE(STATS).eval()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(net(x).attention, torch.full((2, 3, 8, 8), 1 / 3))  # zero-initialised last layer
    # make the score of mode i = -(sum of mode i's logvar channels): the weights are then
    # softmax(-sum_c logvar_i), a precision weighting, so the least uncertain mode wins
    first, last = net.score[0], net.score[2]
    with torch.no_grad():
        first.weight.zero_(), first.bias.zero_(), last.bias.zero_()
        last.weight.zero_()
        c = STATS.latent
        for i in range(3):  # [mu_1; logvar_1; mu_2; logvar_2; ...]: logvar_i at 2 c i + c ... 2 c i + 2 c
            first.weight[i, 2 * c * i + c: 2 * c * (i + 1), 1, 1] = -1.0  # centre tap only
            first.bias[i] = 50.0  # stays in ReLU's linear range
            last.weight[i, i, 0, 0] = 1.0
    out = net(x)
    expected = torch.softmax(-out.logvar.sum(dim=2), dim=1)
    torch.testing.assert_close(out.attention, expected)
    torch.testing.assert_close(out.fused, net.decoder((out.attention.unsqueeze(2) * out.mu).sum(1)))
    # the weights see the neighbourhood (3 x 3 kernel): a change in one corner of the latent grid
    # changes the weights next to it and not far away
    x2 = x.clone()
    x2[:, 0, :2, :2] += 1.0
    changed = (net(x2).attention - out.attention).abs().amax(dim=(0, 1)) > 1e-6
    assert changed[0, 0] and not changed[6:, 6:].any()
    with pytest.raises(ValueError, match="attention_from"):
        AVAEConfig(attention_from="logits")
    with pytest.raises(ValueError, match="attention_kernel"):
        AVAEConfig(attention_kernel=2)


def test_stats_attention_round_trips_and_older_files_load_as_z_attention(tmp_path):
    torch.manual_seed(3)
    net = AVAE(STATS).eval()
    with torch.no_grad():
        net.score[2].weight.normal_()
    back = load_avae(save_avae(net, tmp_path / "s.safetensors"))
    x = torch.rand(1, 3, 12, 12)
    assert back.cfg == STATS
    torch.testing.assert_close(back(x).attention, net(x).attention)
    assert not torch.allclose(back(x).attention, torch.full_like(back(x).attention, 1 / 3))
    # a file written before attention_from existed: its config has no such key
    import json

    from safetensors.torch import save_file

    old = AVAE(TINY)
    cfg = json.loads(TINY.to_json())
    for key in ("attention_from", "attention_hidden", "attention_kernel"):
        del cfg[key]
    tensors = {k: v.contiguous() for k, v in old.state_dict().items()}
    save_file(tensors, str(tmp_path / "old.safetensors"),
              {"format": "emfuse-avae-1", "config": json.dumps(cfg), "info": "{}"})
    assert load_avae(tmp_path / "old.safetensors").cfg.attention_from == "z"


def test_the_committed_weights_load_and_say_what_they_are():
    from emfuse.pipeline.avae.model import DEFAULT_WEIGHTS, VAE_WEIGHTS

    avae, vae = load_avae(DEFAULT_WEIGHTS), load_avae(VAE_WEIGHTS)
    assert avae.cfg.attention and not vae.cfg.attention
    # same network apart from the weighting: identical encoders and decoder shapes
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.startswith("score")}  # noqa: E731
    assert shapes(avae) == shapes(vae)
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    from emfuse.pipeline.avae.model import FLAT_VAE_WEIGHTS, FLAT_WEIGHTS

    flat, flat_vae = load_avae(FLAT_WEIGHTS), load_avae(FLAT_VAE_WEIGHTS)
    assert flat.cfg.attention and not flat_vae.cfg.attention and shapes(flat) == shapes(avae)
    assert model_info(FLAT_WEIGHTS)["flat_reference"] and "flat_reference" not in model_info(DEFAULT_WEIGHTS)
    from emfuse.pipeline.avae.model import RESIDUAL_WIENER_WEIGHTS

    residual = load_avae(RESIDUAL_WIENER_WEIGHTS)
    assert (residual.cfg.base, residual.cfg.base_model, residual.cfg.mode_gains) == ("restored_hrtem", "wiener", True)
    info = model_info(RESIDUAL_WIENER_WEIGHTS)
    assert info["illumination"] == "both" and "fcc" in info["trained_on"] and "held out" in info["description"]
    assert info["settings"]["mode_dropout"] > 0 and len(info["pixel_nm"]) == 2
    assert RESIDUAL_WIENER_WEIGHTS.stat().st_size < 2_000_000


def test_hrtem_baselines_use_the_recorded_hrtem_in_the_truth_frame():
    """The single-mode baselines work on the HRTEM as recorded (flat-fielded): it lines up with the
    truth better than any other mode, and the self-tuned Wiener filter improves on it."""
    prepared = prepare_regions(simulate_regions(3, (64, 64), seed=5), flat_reference=True)
    assert prepared.hrtem.shape == (3, 64, 64)
    w = baselines.fit_mode_weights(prepared.inputs[:1], prepared.targets[:1])
    restoration = torch.nn.Conv2d(1, 1, 1, bias=False)  # a stand-in network: the identity
    torch.nn.init.ones_(restoration.weight)
    images = method_images(prepared.inputs, {}, w, hrtem=prepared.hrtem, restorations={"restored": restoration})
    np.testing.assert_allclose(images["hrtem_restored"][0], prepared.hrtem[0], rtol=1e-5, atol=1e-5)
    scores = score_methods(images, prepared.truths, prepared.materials)
    raw = [baselines.score(h, t)["psnr"] for h, t in zip(prepared.hrtem, prepared.truths)]
    assert scores["hrtem_wiener"]["psnr"] > np.mean(raw) + 0.5, (scores["hrtem_wiener"]["psnr"], raw)


def test_wiener_filter_keeps_a_lattice_and_removes_white_noise():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:96, :128]
    lattice = np.cos(2 * np.pi * x / 3.5) + np.cos(2 * np.pi * y / 6)  # one fringe near Nyquist
    noisy = 5 + lattice + rng.normal(0, 1.0, lattice.shape)
    out = baselines.wiener_filter(noisy)
    assert out.shape == noisy.shape and out.mean() == pytest.approx(noisy.mean())
    assert np.sqrt(np.mean((out - 5 - lattice) ** 2)) < 0.3  # the noise (sd 1) mostly gone
    assert abs(np.corrcoef(out.ravel(), lattice.ravel())[0, 1]) > 0.95  # the fringes kept
    flat = baselines.wiener_filter(rng.normal(0, 1, (64, 64)))  # noise alone: nearly nothing left
    assert flat.std() < 0.15
    with pytest.raises(InputError, match="16 x 16"):
        baselines.wiener_filter(np.zeros((8, 8)))


def test_prepare_regions_takes_a_flat_reference_flag_per_region():
    regions = simulate_regions(2, (48, 48), seed=6)
    mixed = prepare_regions(regions, flat_reference=[True, False])
    flat, fitted = prepare_regions(regions, flat_reference=True), prepare_regions(regions, flat_reference=False)
    np.testing.assert_array_equal(mixed.inputs[0], flat.inputs[0])
    np.testing.assert_array_equal(mixed.inputs[1], fitted.inputs[1])
    assert not np.array_equal(flat.inputs[1], fitted.inputs[1])  # the flag matters for that region
    with pytest.raises(ValueError, match="1 flags for 2 regions"):
        prepare_regions(regions, flat_reference=[True])
