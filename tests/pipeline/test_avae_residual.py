"""The residual AVAE on a restored HRTEM: its start at the base, old files, crops, the base itself, inference."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from emfuse.errors import InputError
from emfuse.pipeline.avae.base import BaseFit, flat_hrtem, region_bases, with_base
from emfuse.pipeline.avae.evaluate import method_images, never_worse, score_methods
from emfuse.pipeline.avae.fuse import fuse_modes
from emfuse.pipeline.avae.model import AVAE, FORMAT, AVAEConfig, load_avae, save_avae
from emfuse.pipeline.avae.preprocess import Preprocessing
from emfuse.pipeline.avae.train import TrainSettings, sample_batch, start_at_the_base, train_avae
from emfuse.pipeline.restore import save_model
from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig
from emfuse.pipeline.restore.inference import restore
from emfuse.pipeline.weights_io import save_safetensors

RESIDUAL = AVAEConfig(features=6, latent=3, base="restored_hrtem")


def _tiny_cgrdn(seed: int = 0) -> CGRDN:
    torch.manual_seed(seed)
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2)).eval()
    with torch.no_grad():  # a residual of some size: the published networks' is not small either
        for p in net.parameters():
            p.mul_(3.0)
    return net


@pytest.mark.parametrize("stride", [1, 2])
def test_the_untrained_residual_network_returns_its_affinely_mapped_base_exactly(stride):
    torch.manual_seed(0)
    net = AVAE(AVAEConfig(features=6, latent=3, base="restored_hrtem", stride=stride)).eval()
    modes, base = torch.rand(2, 3, 16, 20), torch.randn(2, 1, 16, 20)
    torch.testing.assert_close(net(torch.cat([modes, base], 1)).fused, base, rtol=0, atol=1e-6)
    x = np.concatenate([modes.numpy(), base.numpy()], 1)
    target = -0.4 * base.numpy()[:, 0] + 0.3  # contrast inverted against the truth
    scale, offset = start_at_the_base(net, x, target)
    assert (round(scale, 5), round(offset, 5)) == (-0.4, 0.3)
    torch.testing.assert_close(net(torch.cat([modes, base], 1)).fused, torch.from_numpy(target[:, None]),
                               rtol=0, atol=1e-5)
    with torch.no_grad():  # the modes reach the output once the decoder and the gain have learnt
        net.decoder.body[-1].weight.normal_()
    assert not torch.allclose(net(torch.cat([modes, base], 1)).fused, torch.from_numpy(target[:, None]))
    with pytest.raises(ValueError, match="3 modes and the base"):
        net(modes)


def test_the_gain_is_a_map_from_the_latent():
    """A gain that varies over the image: where the latent says so, the base's sign flips."""
    torch.manual_seed(1)
    net = AVAE(RESIDUAL).eval()
    with torch.no_grad():
        net.base_gain.weight.normal_()
    x = torch.cat([torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16)], 1)
    out = net(x)
    gain = torch.nn.functional.interpolate(net.base_gain((out.attention.unsqueeze(2) * out.mu).sum(1)),
                                           size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.fused, gain + net.base_offset, rtol=0, atol=1e-6)  # decoder 0, base 1
    assert float(gain.detach().std()) > 0


def test_old_files_load_as_plain_networks_with_identical_outputs(tmp_path):
    """A file written before the field existed (its config has no base) is the plain AVAE, bit for bit."""
    torch.manual_seed(2)
    net = AVAE(AVAEConfig(features=6, latent=3)).eval()
    old_config = {k: v for k, v in json.loads(net.cfg.to_json()).items() if k not in ("base", "base_model")}
    path = save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "old.safetensors",
                            {"format": FORMAT, "config": json.dumps(old_config), "info": "{}"})
    loaded = load_avae(path)
    assert loaded.cfg.base == "none" and loaded.cfg == net.cfg and not hasattr(loaded, "base_gain")
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x).fused, net(x).fused)
    residual = AVAE(RESIDUAL)
    back = load_avae(save_avae(residual, tmp_path / "residual.safetensors"))
    assert back.cfg == RESIDUAL and back.cfg.base_model == "r_em:sfr_hrtem"
    with pytest.raises(InputError, match="base must be one of"):
        AVAEConfig(base="wiener")


def test_training_crops_cut_and_turn_the_base_with_the_modes():
    rng = np.random.default_rng(3)
    modes = rng.random((3, 3, 24, 20), dtype=np.float32)
    base = 2 * modes[:, 2] - 7 * modes[:, 0]  # a pixelwise function of the modes: survives only identical crops
    truth = modes[:, 1] + 10
    x, y = sample_batch(with_base(modes, base), truth, 64, 8, rng)
    assert x.shape == (64, 4, 8, 8)
    np.testing.assert_allclose(x[:, 3], 2 * x[:, 2] - 7 * x[:, 0], atol=1e-5)
    np.testing.assert_allclose(y[:, 0], x[:, 1] + 10, atol=1e-5)
    with pytest.raises(InputError, match="do not match"):
        with_base(modes, base[:, :-1])


def test_training_a_residual_network_needs_its_base_and_starts_from_it():
    rng = np.random.default_rng(4)
    modes = rng.random((4, 3, 32, 32), dtype=np.float32)
    truth = rng.standard_normal((4, 32, 32)).astype(np.float32)
    base = -truth + 0.1 * rng.standard_normal(truth.shape).astype(np.float32)
    settings = TrainSettings(steps=1, batch=2, crop=16, validate_every=1, lr=0.0)
    with pytest.raises(InputError, match="the modes, then the base"):
        train_avae(modes, truth, RESIDUAL, settings)
    model, _ = train_avae(with_base(modes, base), truth, RESIDUAL, settings)  # targets in the base's contrast
    assert float(model.base_gain.bias.detach()) > 0.9
    fused, _ = fuse_modes(model, modes[0], base=base[0])
    assert np.corrcoef(fused.ravel(), truth[0].ravel())[0, 1] < -0.99
    signed, _ = train_avae(with_base(modes, base), truth, RESIDUAL, replace(settings, orient_to_base=False))
    assert float(signed.base_gain.bias.detach()) < -0.9  # the inverted contrast, fitted before the first step
    fused, _ = fuse_modes(signed, modes[0], base=base[0])
    assert np.corrcoef(fused.ravel(), truth[0].ravel())[0, 1] > 0.99


def test_fuse_modes_with_a_base_on_odd_sizes():
    torch.manual_seed(5)
    net = AVAE(RESIDUAL).eval()
    rng = np.random.default_rng(5)
    modes, base = rng.random((3, 21, 30)), rng.standard_normal((21, 30))
    fused, attention = fuse_modes(net, modes, base=base)
    assert fused.shape == (21, 30) and attention.shape == (3, 21, 30)
    np.testing.assert_allclose(fused, base, atol=1e-6)
    with torch.no_grad():
        net.decoder.body[-1].weight.normal_()
    fused, _ = fuse_modes(net, modes, base=base)
    padded = np.pad(with_base(modes, base), ((0, 0), (0, 1), (0, 0)), mode="reflect")  # base padded as the modes
    direct = net(torch.from_numpy(padded)[None]).fused[0, 0, :21].detach().numpy()
    np.testing.assert_allclose(fused, direct, atol=1e-6)
    with pytest.raises(InputError, match="give its base"):
        fuse_modes(net, modes)
    with pytest.raises(InputError, match="takes no base"):
        fuse_modes(AVAE(AVAEConfig(features=4, latent=2)).eval(), modes, base=base)


def test_the_base_of_a_region_is_the_restored_hrtem_standardised():
    net = _tiny_cgrdn()
    hrtem = (50 + 10 * np.random.default_rng(6).random((48, 40))).astype(np.float32)
    fit, base = BaseFit.fit(hrtem, net)
    restored = restore(hrtem, net)  # the hrtem_NAME baseline
    assert restored.std() > 0.5 * hrtem.std() and not np.allclose(restored, hrtem, atol=0.5)  # it does something
    np.testing.assert_allclose(base, (restored - restored.mean()) / restored.std(), atol=1e-4)
    assert (round(fit.hrtem_mean, 3), round(fit.hrtem_std, 3)) == (round(float(hrtem.mean()), 3),
                                                                  round(float(hrtem.std()), 3))
    bases, again = region_bases(np.stack([hrtem, hrtem[::-1]]), net)
    np.testing.assert_allclose(bases[0], base, atol=1e-6)
    np.testing.assert_allclose(again[1], restore(hrtem[::-1], net), atol=1e-3)
    assert BaseFit.from_dict(json.loads(json.dumps(fit.to_dict()))) == fit


def test_the_wiener_base_is_the_wiener_filtered_hrtem_standardised_with_no_weights():
    from emfuse.pipeline.avae.base import WIENER, load_base_network
    from emfuse.pipeline.avae.baselines import wiener_filter

    net = load_base_network(WIENER)
    assert not list(net.parameters())
    y, x = np.mgrid[:96, :80]
    lattice = 50 + 10 * np.cos(2 * np.pi * x / 6) * np.cos(2 * np.pi * y / 7)
    hrtem = (lattice + np.random.default_rng(10).normal(0, 8, lattice.shape)).astype(np.float32)
    fit, base = BaseFit.fit(hrtem, net)
    filtered = wiener_filter(hrtem)
    np.testing.assert_allclose(base, (filtered - filtered.mean()) / filtered.std(), atol=1e-4)
    assert np.abs(filtered - lattice).std() < 0.5 * np.abs(hrtem - lattice).std()  # it filters
    bases, restored = region_bases(np.stack([hrtem, hrtem[::-1]]), net)
    np.testing.assert_allclose(restored[1], wiener_filter(hrtem[::-1]), atol=1e-3)
    window = fit.apply(hrtem[:64, :64], net)  # a window is filtered in one piece, with its own noise level
    np.testing.assert_allclose(window, fit.standardise(wiener_filter(hrtem[:64, :64])), atol=1e-4)


def test_a_window_is_restored_with_the_datasets_statistics():
    """Not the window's own brightness: the interior of a window's base equals the whole image's."""
    net = _tiny_cgrdn()
    rng = np.random.default_rng(7)
    hrtem = (50 + 10 * rng.random((64, 64)) + np.linspace(0, 20, 64)[None]).astype(np.float32)
    fit, whole = BaseFit.fit(hrtem, net)
    window = fit.apply(hrtem[8:40, 30:64], net)
    np.testing.assert_allclose(window[8:-8, 8:-8], whole[16:32, 38:56], atol=1e-4)
    own, _ = BaseFit.fit(hrtem[8:40, 30:64], net)  # the window's own statistics would differ
    assert not np.allclose(own.apply(hrtem[8:40, 30:64], net)[8:-8, 8:-8], whole[16:32, 38:56], atol=1e-2)


def test_flat_hrtem_is_the_recorded_hrtem_over_the_fitted_illumination():
    rng = np.random.default_rng(8)
    yy = np.linspace(-0.5, 0.5, 40)[:, None]
    modes = (1 + rng.random((3, 40, 40))) * np.exp(-yy**2)[None]
    prep = Preprocessing.fit(modes, register=False)
    h = flat_hrtem(prep, modes)
    np.testing.assert_allclose(flat_hrtem(prep, modes[:, 10:30, 5:25], (slice(10, 30), slice(5, 25))),
                               h[10:30, 5:25], rtol=1e-6)
    assert abs(np.corrcoef(h.mean(1), yy[:, 0] ** 2)[0, 1]) < 0.5  # the beam's fall-off is gone


def test_method_images_give_residual_networks_their_bases_and_the_check_per_region():
    torch.manual_seed(9)
    rng = np.random.default_rng(9)
    truths = rng.standard_normal((4, 16, 16))
    inputs = rng.random((4, 3, 16, 16)).astype(np.float32)
    bases = (truths + 0.3 * rng.standard_normal(truths.shape)).astype(np.float32)
    models = {"residual": AVAE(RESIDUAL).eval(), "plain": AVAE(AVAEConfig(features=4, latent=2)).eval()}
    images = method_images(inputs, models, np.ones(4), bases=bases, restored={"base": list(bases)}, hrtem=bases,
                           restorations={"base": None})
    assert {"residual", "plain", "hrtem", "bf", "df", "hrtem_base"} <= set(images)
    np.testing.assert_allclose(images["residual"], bases, atol=1e-6)
    with pytest.raises(InputError, match="needs the regions' bases"):
        method_images(inputs, models, np.ones(4))
    scores = score_methods(images, truths, ["a", "a", "b", "b"])
    check = never_worse(scores, "residual", ["hrtem", "bf", "df", "hrtem_base"], ["a", "a", "b", "b"])
    assert check["all"]["psnr"]["fraction"] == 1.0 and check["b"]["regions"] == 2
    assert check["all"]["psnr"]["best_single"]["hrtem_base"] == 4
    assert never_worse(scores, "plain", ["hrtem_base"], ["a"] * 4)["a"]["psnr"]["fraction"] == 0.0


def test_a_residual_model_names_its_restoration_network(tmp_path):
    """base_model may be a file: what the tem-fuse tests use instead of the 7 M-parameter r_em."""
    path = save_model(_tiny_cgrdn(), tmp_path / "tiny_cgrdn.safetensors")
    cfg = AVAEConfig(features=4, latent=2, base="restored_hrtem", base_model=str(path))
    assert load_avae(save_avae(AVAE(cfg), tmp_path / "r.safetensors")).cfg.base_model == str(path)


def test_the_best_single_hinge_costs_only_where_the_fused_image_is_worse_than_an_input():
    from emfuse.pipeline.avae.train import best_single_hinge, single_input_mse

    torch.manual_seed(1)
    target = torch.randn(4, 1, 12, 12)
    noise = torch.randn(4, 3, 12, 12)
    inputs = torch.cat([2 * target + 0.3 * noise[:, :1], noise[:, 1:]], dim=1)  # mode 0 is nearly the target
    singles = single_input_mse(inputs, target)
    assert torch.all(singles[:, 0] < 0.1) and torch.all(singles[:, 1:] > 0.5)
    assert float(best_single_hinge(target, inputs, target)) == 0.0  # the truth beats every input
    blurred = target * 0.5  # worse than mode 0's affine fit on every crop
    expected = ((blurred - target).pow(2).mean(dim=(1, 2, 3)) - singles[:, 0]).mean()
    assert float(best_single_hinge(blurred, inputs, target)) == pytest.approx(float(expected), rel=1e-5)
    # a crop fused without mode 0 (mode dropout) is judged against the modes it was shown only
    present = torch.tensor([[0.0, 1.0, 1.0]] * 4)
    assert float(best_single_hinge(blurred, inputs, target, present)) < float(expected)


def test_training_with_the_hinge_runs_and_records_it():
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 3, 32, 32), dtype=np.float32), rng.standard_normal((4, 32, 32)).astype(np.float32)
    settings = TrainSettings(steps=2, batch=2, crop=16, validate_every=1, best_single_hinge=1.0, mode_dropout=0.5)
    model, history = train_avae(x, y, AVAEConfig(features=4, latent=2), settings, validation=(x, y))
    assert history["settings"]["best_single_hinge"] == 1.0 and len(history["validation"]) == 2


def test_mode_gains_start_unchanged_and_open_a_path_from_each_present_mode():
    torch.manual_seed(0)
    cfg = replace(RESIDUAL, mode_gains=True)
    net = AVAE(cfg).eval()
    plain = AVAE(RESIDUAL).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("mode_gain")})
    x = torch.rand(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x).fused, plain(x).fused)  # zero at the start: the same network
        net.mode_gain.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # a path of gain 1 from BF only
        expected = plain(x).fused + (x[:, :1] - 0.5)
        torch.testing.assert_close(net(x).fused, expected)
        without_bf = net(x, torch.tensor([0.0, 1.0, 1.0])).fused  # an absent mode's path is off
        torch.testing.assert_close(without_bf, plain(x, torch.tensor([0.0, 1.0, 1.0])).fused)
    assert AVAEConfig.from_json(RESIDUAL.to_json().replace(', "mode_gains": false', "")).mode_gains is False
