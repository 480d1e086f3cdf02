"""Training losses and the patch discriminator of the restoration networks (r_em)."""

from __future__ import annotations

import pytest
import torch

from emfuse.pipeline.restore.discriminator import PatchDiscriminator
from emfuse.pipeline.restore.losses import (
    MLWT_WINDOWS,
    LossWeights,
    fourier_loss,
    generator_loss,
    l1_loss,
    local_whitening,
    mean_loss,
    mlwt_loss,
    outlier_l2_loss,
    ragan_losses,
    standardise_pair,
    std_loss,
)

TERMS = [l1_loss, outlier_l2_loss, mlwt_loss, fourier_loss, mean_loss, std_loss]


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 32, 48, generator=g) * 10
    output = target + torch.randn(3, 1, 32, 48, generator=g)
    return output, target


@pytest.mark.parametrize("fn", TERMS, ids=lambda f: f.__name__)
def test_zero_for_identical_and_positive_otherwise(fn, pair):
    output, target = pair
    assert float(fn(target, target.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(fn(output, target)) > 0


@pytest.mark.parametrize("fn", TERMS, ids=lambda f: f.__name__)
def test_gradients_finite(fn, pair):
    output, target = pair
    for y in (output.clone().requires_grad_(True), target.clone().requires_grad_(True)):
        # the second case is at the minimum: |.|**p and std have infinite slopes at 0 unless guarded
        y_in = y.clone()
        y_in.data[0, 0, :4, :4] += 1e-4  # a tiny error somewhere
        loss = fn(y_in, target)
        loss.backward()
        assert torch.isfinite(y.grad).all(), fn.__name__


def test_total_loss_gradient_finite_and_zero_at_target(pair):
    output, target = pair
    y = output.clone().requires_grad_(True)
    total, terms = generator_loss(*standardise_pair(y, target))
    total.backward()
    assert torch.isfinite(y.grad).all() and set(terms) == {"l1", "outlier_l2", "mlwt", "fourier", "mean", "std"}
    total0, _ = generator_loss(target, target)
    assert float(total0) == 0.0


def test_weights_switch_terms_off_and_scale(pair):
    output, target = pair
    only_l1, terms = generator_loss(output, target, LossWeights(l1=2.0, outlier_l2=0, mlwt=0, fourier=0, mean=0, std=0))
    assert set(terms) == {"l1"}
    assert float(only_l1) == pytest.approx(2 * float(l1_loss(output, target)))
    with pytest.raises(ValueError, match="unknown loss weights"):
        LossWeights.from_dict({"l2": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        LossWeights.from_dict({"l1": -1.0})


def test_relative_balance_is_the_harmonic_mean_with_the_gradient_of_the_mean_log(pair):
    output, target = pair
    y = output.clone().requires_grad_(True)
    total, terms = generator_loss(y, target, balance="relative")
    total.backward()
    per_image = torch.stack([generator_loss(output[i:i + 1], target[i:i + 1])[0] for i in range(3)])
    assert float(total.detach()) == pytest.approx(float(3 / (1 / per_image).sum()), rel=1e-5)
    # the gradient of mean(log L_i), times the value
    y2 = output.clone().requires_grad_(True)
    logs = torch.stack([generator_loss(y2[i:i + 1], target[i:i + 1])[0].log() for i in range(3)]).mean()
    logs.backward()
    torch.testing.assert_close(y.grad, float(total.detach()) * y2.grad, rtol=1e-4, atol=1e-7)
    # logged terms are the images' means
    l1 = sum(float(l1_loss(output[i:i + 1], target[i:i + 1])) for i in range(3)) / 3
    assert terms["l1"] == pytest.approx(l1, rel=1e-5)


def test_relative_balance_gives_the_image_with_small_errors_its_share():
    # one image with errors 10 times another's (a low and a high dose in standard units)
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 1, 32, 32, generator=g)
    noise = torch.randn(2, 1, 32, 32, generator=g) * torch.tensor([1.0, 0.1]).view(2, 1, 1, 1)
    shares = {}
    for balance in ("mean", "relative"):
        y = (target + noise).requires_grad_(True)
        generator_loss(y, target, balance=balance)[0].backward()
        norms = y.grad.flatten(1).norm(dim=1)
        shares[balance] = float(norms[1] / norms.sum())
    # by the size of its errors the small-error image gets little of the gradient; by relative
    # errors it gets several times more
    assert shares["mean"] < 0.4  # (0.35: the L1 term's gradient has one size for any error)
    assert shares["relative"] > 0.8  # (0.90)
    # an exact image is left out, not given an infinite weight
    exact = target.clone().requires_grad_(True)
    both = torch.cat([target[:1] + noise[:1], exact[1:]])
    total, _ = generator_loss(both, target, balance="relative")
    assert torch.isfinite(total) and float(total.detach()) == pytest.approx(float(generator_loss(both[:1], target[:1])[0]))
    with pytest.raises(ValueError, match="balance must be"):
        generator_loss(target, target, balance="median")


def test_outlier_weighting_counts_large_errors_more():
    target = torch.zeros(1, 1, 10, 10)
    spread = torch.full_like(target, 0.1)  # 100 small errors
    spike = target.clone()
    spike[0, 0, 0, 0] = 1.0  # one large error, same MSE
    assert float(outlier_l2_loss(spread, target, weight=1.0)) == pytest.approx(float(outlier_l2_loss(spike, target, weight=1.0)))
    assert float(outlier_l2_loss(spike, target, weight=4.0)) > 3 * float(outlier_l2_loss(spread, target, weight=4.0))


def _blockwise_affine(x: torch.Tensor, window: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    nb = (x.shape[-2] // window, x.shape[-1] // window)
    a = (0.5 + 2 * torch.rand(*x.shape[:2], *nb, generator=g)).repeat_interleave(window, -2).repeat_interleave(window, -1)
    c = (10 * torch.randn(*x.shape[:2], *nb, generator=g)).repeat_interleave(window, -2).repeat_interleave(window, -1)
    return a * x + c


@pytest.mark.parametrize("window", MLWT_WINDOWS)
def test_whitening_invariant_to_per_window_affine_change(window, pair):
    _, target = pair
    changed = _blockwise_affine(target, window, seed=window)
    # invariant where the blocks have contrast well above eps
    assert torch.allclose(local_whitening(target, window, eps=1e-4), local_whitening(changed, window, eps=1e-4), atol=1e-3)
    # ... so the single-window loss does not see the change
    assert float(mlwt_loss(changed, target, windows=(window,), eps=1e-4)) < 1e-3


def test_whitening_loss_invariance_is_per_window_only(pair):
    _, target = pair
    # an affine change per 16-block is invisible to the 16- (and 8-, 4-, 2-) windows nested in it ...
    changed = _blockwise_affine(target, 16, seed=1)
    assert float(mlwt_loss(changed, target, eps=1e-4)) < 1e-3
    # ... but a change per 2-block is seen by the larger windows
    changed = _blockwise_affine(target, 2, seed=2)
    assert float(mlwt_loss(changed, target, windows=(2,), eps=1e-4)) < 1e-3
    assert float(mlwt_loss(changed, target, windows=(16,), eps=1e-4)) > 0.1
    # and a plain intensity-scale error is seen by L1 but not by the whitening loss
    assert float(mlwt_loss(3 * target + 1, target, eps=1e-4)) < 1e-3 < float(l1_loss(3 * target + 1, target))


def test_whitening_flat_blocks_finite():
    flat = torch.ones(1, 1, 16, 16)
    z = local_whitening(flat, 4)
    assert torch.isfinite(z).all() and float(z.abs().max()) == 0.0
    with pytest.raises(ValueError, match="smaller than the window"):
        local_whitening(torch.ones(1, 1, 8, 8), 16)


@pytest.mark.parametrize("power", [0.125, 0.5, 1.0, 2.0])
def test_fourier_loss_is_homogeneous_of_degree_power(power, pair):
    output, target = pair
    err = output - target
    base = float(fourier_loss(target + err, target, power=power))
    for c in (0.01, 10.0):
        assert float(fourier_loss(target + c * err, target, power=power)) == pytest.approx(c**power * base, rel=1e-4)


def test_fourier_loss_small_exponent_weighs_weak_frequencies():
    # one strong and one weak frequency error vs the strong one alone: with power 2 the weak
    # one hardly matters, with 0.125 it nearly doubles the loss
    n = 32  # float64: float32 round-off in the FFT leaves ~1e-7 everywhere, which |.|**0.125 sees
    x = torch.arange(n, dtype=torch.float64)
    strong = torch.cos(2 * torch.pi * 2 * x / n).expand(n, n)[None, None]
    weak = 1e-3 * torch.cos(2 * torch.pi * 9 * x / n).expand(n, n)[None, None]
    zero = torch.zeros(1, 1, n, n, dtype=torch.float64)
    for power, low, high in ((2.0, 1.0, 1.001), (0.125, 1.3, 2.0)):
        ratio = float(fourier_loss(strong + weak, zero, power=power) / fourier_loss(strong, zero, power=power))
        assert low <= ratio <= high, (power, ratio)


def test_mean_and_std_constraints():
    target = torch.rand(2, 1, 16, 16)
    assert float(mean_loss(target + 0.5, target)) == pytest.approx(0.5, rel=1e-5)
    assert float(std_loss(target + 0.5, target)) == pytest.approx(0.0, abs=1e-5)
    assert float(std_loss(2 * target, target)) == pytest.approx(float(target.std(dim=(-2, -1), unbiased=False).mean()), rel=1e-4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        l1_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        l1_loss(torch.zeros(4, 4), torch.zeros(4, 4))


def test_standardise_pair_dose_invariant(pair):
    output, target = pair
    a = generator_loss(*standardise_pair(output, target))[0]
    b = generator_loss(*standardise_pair(100 * output, 100 * target))[0]
    assert float(a) == pytest.approx(float(b), rel=1e-4)


# --- relativistic average GAN ---------------------------------------------------------------


def test_ragan_signs():
    real, fake = torch.full((4, 1, 3, 3), 3.0), torch.full((4, 1, 3, 3), -3.0)
    d_win, g_lose = ragan_losses(real, fake)  # the critic separates them: D happy, G unhappy
    d_lose, g_win = ragan_losses(fake, real)  # swapped: the fakes look more real
    assert float(d_win) < float(d_lose) and float(g_win) < float(g_lose)
    # generator and discriminator losses are mirror images
    assert float(g_lose) == pytest.approx(float(d_lose)) and float(d_win) == pytest.approx(float(g_win))
    # undecided critic: both 2 log 2
    d, g = ragan_losses(torch.zeros(4, 1, 3, 3), torch.zeros(4, 1, 3, 3))
    assert float(d) == pytest.approx(2 * torch.log(torch.tensor(2.0)).item()) and float(g) == pytest.approx(float(d))


def test_ragan_gradient_directions():
    real = torch.randn(4, 1, 5, 5, requires_grad=True)
    fake = torch.randn(4, 1, 5, 5, requires_grad=True)
    d_loss, _ = ragan_losses(real, fake)
    d_loss.backward()
    # the discriminator lowers its loss by raising real logits and lowering fake ones
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    real.grad = fake.grad = None
    _, g_loss = ragan_losses(real, fake)
    g_loss.backward()
    assert (fake.grad < 0).all()  # the generator wants its outputs to look more real


def test_ragan_is_relativistic():
    # adding the same constant to every logit changes nothing
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for a, b in zip(ragan_losses(real, fake), ragan_losses(real + 7.0, fake + 7.0)):
        assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_patch_discriminator_shapes_and_condition():
    d = PatchDiscriminator(width=4, downsamplings=3)
    x = torch.rand(2, 1, 64, 48)
    assert tuple(d(x, x).shape) == (2, 1, 8, 6)
    with pytest.raises(ValueError, match="conditional"):
        d(x)
    u = PatchDiscriminator(width=4, downsamplings=2, conditional=False)
    assert tuple(u(x).shape) == (2, 1, 16, 12)
    with pytest.raises(ValueError, match="not conditional"):
        u(x, x)
