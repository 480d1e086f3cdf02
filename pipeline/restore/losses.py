"""Training losses of the restoration networks (r_em: Lobato, Friedrich & Van Aert, 2024).

r_em trains its generator on a weighted sum of complementary terms, each comparing the
network output ``y`` with the clean target ``y_g`` (tensors ``(N, C, H, W)``):

========================  ================================================================
:func:`l1_loss`           ``mean |y - y_g|``: the pixel-wise fidelity
:func:`outlier_l2_loss`   ``mean w (y - y_g)**2``, the pixels whose error is an outlier of
                          their image (above its ``quantile`` of ``|y - y_g|``) weighted up,
                          so that rare large errors (a missed zinger, a dropped column) are
                          not averaged away
:func:`mlwt_loss`         multi-local whitening: ``y`` and ``y_g`` standardised over local
                          windows of 2, 4, 8 and 16 pixels, then compared (L1): local
                          contrast counts as much in dim regions as in bright ones
:func:`fourier_loss`      ``mean |F(y - y_g)|**0.125``: a small exponent makes every spatial
                          frequency count, the weak high frequencies (sharpness) included
:func:`mean_loss`,        ``|mean(y) - mean(y_g)|`` and ``|std(y) - std(y_g)|`` per image:
:func:`std_loss`          the output keeps the target's intensity scale
:func:`ragan_losses`      relativistic average GAN (optional), with the patch discriminator
                          of :mod:`emfuse.pipeline.restore.discriminator`
========================  ================================================================

:func:`generator_loss` sums them with the weights of :class:`LossWeights`. The terms are
not scale-invariant (except the whitening loss): the training loop
(:mod:`emfuse.pipeline.restore.train`) first standardises output and target by the target's
per-image mean and standard deviation (:func:`standardise_pair`), so one set of weights
serves every dose.

The weights and the outlier definition are ours where the paper's text was not available
to us; docs/methods/restoration.md ("Training and fine-tuning") says which.

Examples
--------
>>> import torch
>>> t = torch.rand(2, 1, 32, 32)
>>> total, terms = generator_loss(t + 0.1 * torch.randn_like(t), t)
>>> sorted(terms)[:3], bool(total > 0)
(['fourier', 'l1', 'mean'], True)
>>> float(generator_loss(t, t)[0])
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from ...errors import InputError

__all__ = [
    "MLWT_WINDOWS",
    "LossWeights",
    "fourier_loss",
    "generator_loss",
    "l1_loss",
    "local_whitening",
    "mean_loss",
    "mlwt_loss",
    "outlier_l2_loss",
    "ragan_losses",
    "standardise_pair",
    "std_loss",
]

#: Window sizes (pixels) of the multi-local whitening loss, as in r_em.
MLWT_WINDOWS = (2, 4, 8, 16)


def _check_pair(y: torch.Tensor, target: torch.Tensor) -> None:
    if y.shape != target.shape:
        raise ValueError(f"output {tuple(y.shape)} and target {tuple(target.shape)} differ in shape")
    if y.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W); got shape {tuple(y.shape)}")


def standardise_pair(
    y: torch.Tensor, target: torch.Tensor, *, min_std: torch.Tensor | float = 0.0, floor: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and target in the target's per-image standard units, ``(x - mean_t) / s``.

    ``s`` is the target's population std, but at least ``min_std`` (a number or a tensor
    ``(N, C, 1, 1)``; the training loop passes a fraction of the distorted input's std, so
    an almost flat target, a patch of vacuum, does not blow the errors up) and at least
    ``floor * (|mean_t| + 1)``. The statistics carry no gradient. The losses are then
    independent of the dose (the image's scale).

    Examples
    --------
    >>> t = torch.tensor([[[[1.0, 3.0]]]])
    >>> ys, ts = standardise_pair(t + 1, t)
    >>> ys.flatten().tolist(), ts.flatten().tolist()
    ([0.0, 2.0], [-1.0, 1.0])
    >>> standardise_pair(t + 1, t, min_std=2.0)[1].flatten().tolist()
    [-0.5, 0.5]
    """
    _check_pair(y, target)
    with torch.no_grad():
        mean = target.mean(dim=(-2, -1), keepdim=True)
        std = target.std(dim=(-2, -1), keepdim=True, unbiased=False)
        std = torch.maximum(std.clamp_min(0.0), torch.as_tensor(min_std, dtype=std.dtype, device=std.device))
        std = torch.maximum(std, floor * (mean.abs() + 1.0))
    return (y - mean) / std, (target - mean) / std


def l1_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, ``mean |y - y_g|``.

    Examples
    --------
    >>> float(l1_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)))
    1.0
    """
    _check_pair(y, target)
    return (y - target).abs().mean()


def outlier_l2_loss(
    y: torch.Tensor, target: torch.Tensor, *, quantile: float = 0.95, weight: float = 4.0
) -> torch.Tensor:
    """Squared error with the outlier pixels of each image weighted ``weight`` times.

    A pixel is an outlier when its absolute error exceeds the ``quantile`` of its image's
    absolute errors (computed without gradient). With ``weight = 1`` this is the MSE.

    Parameters
    ----------
    y, target
        Images ``(N, C, H, W)``.
    quantile
        In (0, 1): the fraction of each image's pixels that keep weight 1.
    weight
        >= 1: the weight of the outliers.

    Examples
    --------
    >>> t = torch.zeros(1, 1, 4, 4)
    >>> y = t.clone(); y[0, 0, 0, 0] = 1.0  # one pixel off by 1, 15 exact
    >>> float(outlier_l2_loss(y, t, quantile=0.9, weight=4.0))  # (4 * 1) / 16
    0.25
    """
    _check_pair(y, target)
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if not weight >= 1:
        raise ValueError(f"weight must be >= 1, got {weight}")
    err = y - target
    with torch.no_grad():
        mag = err.abs().flatten(1)
        threshold = torch.quantile(mag, quantile, dim=1, keepdim=True)
        w = torch.where(mag > threshold, weight, 1.0).view_as(err)
    return (w * err.square()).mean()


def local_whitening(x: torch.Tensor, window: int, *, eps: float = 1e-2) -> torch.Tensor:
    """Whiten ``x`` over non-overlapping ``window`` x ``window`` blocks: ``(x - mu_b) / sigma_b``.

    ``mu_b`` and ``sigma_b`` are each block's mean and (population) standard deviation;
    ``sigma_b`` is ``sqrt(var_b + eps**2)``, so flat blocks stay finite. Rows and columns
    beyond the last whole block are dropped. A per-block affine change ``a_b x + c_b``
    (``a_b > 0``) leaves the result unchanged where ``a_b sigma_b >> eps``.

    Examples
    --------
    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> z = local_whitening(x, 2, eps=0.0)
    >>> torch.allclose(z, local_whitening(3 * x + 7, 2, eps=0.0)), tuple(z.shape)
    (True, (1, 1, 4, 4))
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    h, w = (x.shape[-2] // window) * window, (x.shape[-1] // window) * window
    if h == 0 or w == 0:
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the window {window}")
    x = x[..., :h, :w]
    mean = F.avg_pool2d(x, window)
    var = (F.avg_pool2d(x.square(), window) - mean.square()).clamp_min(0.0)
    # one value per block, repeated over the block's pixels
    mean = mean.repeat_interleave(window, -2).repeat_interleave(window, -1)
    sigma = (var + eps**2).sqrt().repeat_interleave(window, -2).repeat_interleave(window, -1)
    return (x - mean) / sigma


def mlwt_loss(
    y: torch.Tensor, target: torch.Tensor, *, windows: Sequence[int] = MLWT_WINDOWS, eps: float = 1e-2
) -> torch.Tensor:
    """Multi-local whitening loss: mean over ``windows`` of ``mean |W_w(y) - W_w(y_g)|``.

    ``W_w`` is :func:`local_whitening` over ``w`` x ``w`` blocks. The loss compares local
    structure whatever the local brightness and contrast, so faint columns beside bright
    ones weigh as much as in a global loss they would not.

    Examples
    --------
    >>> t = torch.rand(2, 1, 32, 32)
    >>> float(mlwt_loss(t, t)), bool(mlwt_loss(t.flip(-1), t) > 0.5)
    (0.0, True)
    """
    _check_pair(y, target)
    if not windows:
        raise ValueError("give at least one window size")
    terms = [(local_whitening(y, w, eps=eps) - local_whitening(target, w, eps=eps)).abs().mean()
             for w in windows]
    return torch.stack(terms).mean()


def fourier_loss(
    y: torch.Tensor, target: torch.Tensor, *, power: float = 0.125, tiny: float = 1e-20
) -> torch.Tensor:
    """Fourier-space loss, ``mean |F(y - y_g)|**power`` (orthonormal 2-D FFT per image).

    The loss is homogeneous of degree ``power`` in the error: scaling the error by ``c``
    scales the loss by ``c**power``, so with the small exponent of r_em (0.125) every
    frequency with any error counts nearly alike, the weak high frequencies (sharpness)
    included. Frequencies whose squared modulus is below ``tiny`` count as exact (value
    and gradient 0), which keeps the gradient finite (``|z|**p`` has an infinite slope
    at 0).

    Examples
    --------
    >>> t = torch.rand(1, 1, 16, 16); e = torch.randn(1, 1, 16, 16)
    >>> r = fourier_loss(t + 16 * e, t) / fourier_loss(t + e, t)
    >>> round(float(r), 3)  # 16 ** 0.125
    1.414
    """
    _check_pair(y, target)
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")
    diff = y - target
    spec = torch.fft.fft2(diff if diff.is_floating_point() else diff.float(), norm="ortho")
    mag2 = spec.real.square() + spec.imag.square()
    live = mag2 > tiny
    return torch.where(live, mag2.clamp_min(tiny).pow(power / 2), 0.0).mean()


def mean_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``|mean(y) - mean(y_g)|`` (each image's mean over its pixels).

    Examples
    --------
    >>> float(mean_loss(torch.ones(1, 1, 2, 2) * 3, torch.ones(1, 1, 2, 2)))
    2.0
    """
    _check_pair(y, target)
    return (y.mean(dim=(-2, -1)) - target.mean(dim=(-2, -1))).abs().mean()


def std_loss(y: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Mean over images of ``|std(y) - std(y_g)|`` (population std over each image's pixels).

    Examples
    --------
    >>> t = torch.tensor([[[[0.0, 2.0]]]])
    >>> float(std_loss(3 * t, t))  # stds 3 and 1
    2.0
    """
    _check_pair(y, target)

    def std(x: torch.Tensor) -> torch.Tensor:
        return (x.var(dim=(-2, -1), unbiased=False) + eps).sqrt()

    return (std(y) - std(target)).abs().mean()


def ragan_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relativistic average GAN losses ``(discriminator, generator)`` from critic logits.

    With ``C`` the critic's logits (per patch for a patch discriminator) and
    ``D(a, b) = sigmoid(C(a) - mean C(b))``:

    * discriminator: ``-E log D(real, fake) - E log(1 - D(fake, real))``;
    * generator: ``-E log(1 - D(real, fake)) - E log D(fake, real)``.

    The means run over the batch and all patches; computed with ``softplus`` for
    stability. To train the discriminator pass ``fake_logits`` computed on detached
    outputs; for the generator step, on the live outputs.

    Examples
    --------
    >>> d, g = ragan_losses(torch.full((4, 1, 3, 3), 5.0), torch.full((4, 1, 3, 3), -5.0))
    >>> bool(d < 1e-3), bool(g > 10)  # the critic wins: D loss ~0, G loss large
    (True, True)
    """
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    d_loss = F.softplus(-real_rel).mean() + F.softplus(fake_rel).mean()
    g_loss = F.softplus(real_rel).mean() + F.softplus(-fake_rel).mean()
    return d_loss, g_loss


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator loss terms (0 switches a term off).

    Examples
    --------
    >>> LossWeights.from_dict(LossWeights(fourier=0.0).to_dict()).fourier
    0.0
    """

    l1: float = 1.0
    outlier_l2: float = 0.5
    mlwt: float = 0.1
    fourier: float = 0.02
    mean: float = 1.0
    std: float = 1.0
    adversarial: float = 0.0  # > 0 only when training with the discriminator

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LossWeights:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown loss weights {sorted(unknown)}; known: {sorted(known)}")
        out = cls(**d)
        bad = {k: v for k, v in out.to_dict().items() if not v >= 0}
        if bad:
            raise InputError(f"loss weights must be >= 0, got {bad}")
        return out


_TERMS = {"l1": l1_loss, "outlier_l2": outlier_l2_loss, "mlwt": mlwt_loss,
          "fourier": fourier_loss, "mean": mean_loss, "std": std_loss}


def generator_loss(
    y: torch.Tensor,
    target: torch.Tensor,
    weights: LossWeights | None = None,
    *,
    adversarial: torch.Tensor | None = None,
    balance: str = "mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted total ``sum_k weight_k L_k(y, y_g)`` and each term's value.

    Parameters
    ----------
    y, target
        Output and clean target, in the same units (standardise them first with
        :func:`standardise_pair` for dose-independent weights).
    weights
        Default :class:`LossWeights`.
    adversarial
        The generator's RaGAN loss (from :func:`ragan_losses`), added with weight
        ``weights.adversarial``.
    balance
        How the images of the batch count. ``"mean"``: the terms average over every pixel of
        the batch, so an image counts by the size of its errors. ``"relative"``: each image's
        total ``L_i`` is computed alone and weighted by ``1 / L_i`` (held fixed, no gradient),
        normalised: the value is the harmonic mean ``n / sum_i (1 / L_i)`` and the gradient
        is that of the mean of ``log L_i``, times that value. Every image then counts by its
        *relative* error, as a median PSNR in dB counts it: a high-dose image, whose errors
        in standard units are a tenth of a low-dose one's, is not drowned by it. ``terms``
        are then the means of the images' terms.

    Returns
    -------
    total : scalar tensor (with gradient)
    terms : dict
        Each computed term's unweighted value (floats), for the training log.

    Examples
    --------
    >>> t = torch.rand(1, 1, 16, 16)
    >>> total, terms = generator_loss(t, t, LossWeights(mlwt=0.0))
    >>> "mlwt" in terms, float(total)
    (False, 0.0)
    """
    weights = weights or LossWeights()
    if balance == "relative":
        return _relative_loss(y, target, weights, adversarial)
    if balance != "mean":
        raise ValueError(f"balance must be 'mean' or 'relative', got {balance!r}")
    total = y.new_zeros(())
    terms: dict[str, float] = {}
    for name, fn in _TERMS.items():
        w = getattr(weights, name)
        if w:
            value = fn(y, target)
            terms[name] = float(value.detach())
            total = total + w * value
    if adversarial is not None and weights.adversarial:
        terms["adversarial"] = float(adversarial.detach())
        total = total + weights.adversarial * adversarial
    return total, terms


def _relative_loss(y: torch.Tensor, target: torch.Tensor, weights: LossWeights,
                   adversarial: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """``generator_loss(balance="relative")``: the images' own totals, each weighted by its inverse."""
    _check_pair(y, target)
    per_image = [generator_loss(y[i:i + 1], target[i:i + 1], weights) for i in range(y.shape[0])]
    losses = torch.stack([total for total, _ in per_image])
    # n / sum(1 / L_i) over the images; one whose loss is 0 (already exact) gets no weight, not an infinite one
    live = losses.detach() > 1e-12
    if not bool(live.any()):
        total = losses.sum() * 0.0
    else:
        inverse = torch.where(live, 1.0 / losses.detach().clamp_min(1e-12), 0.0)
        total = (inverse / inverse.sum() * losses).sum()
    terms = {name: sum(t[name] for _, t in per_image) / len(per_image) for name in per_image[0][1]}
    if adversarial is not None and weights.adversarial:
        terms["adversarial"] = float(adversarial.detach())
        total = total + weights.adversarial * adversarial
    return total, terms
