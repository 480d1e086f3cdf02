"""Patch discriminator for the optional adversarial training of the restoration networks.

r_em can train its generator against a relativistic average discriminator that judges
image patches (Lobato, Friedrich & Van Aert, 2024; relativistic average GAN: Jolicoeur-
Martineau, ICLR 2019; patch discriminator: Isola et al., CVPR 2017). The critic here is a
stack of 4x4 convolutions with leaky ReLU, halving the size ``downsamplings`` times, then
a 3x3 convolution to one logit per patch: ``(N, C, H, W) -> (N, 1, H / 2**d, W / 2**d)``
(each logit sees a receptive field of about ``6 * 2**d`` pixels).

With ``conditional=True`` (default) it judges a pair: the distorted input beside the
candidate (restored output or clean target), so it can tell whether the restoration fits
its input, not only whether it looks clean. Inputs should be standardised (the training
loop passes images in the target's standard units). The losses are
:func:`emfuse.pipeline.restore.losses.ragan_losses`.

Examples
--------
>>> import torch
>>> d = PatchDiscriminator(width=8, downsamplings=2)
>>> tuple(d(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)).shape)
(2, 1, 8, 8)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ...errors import InputError


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Hyper-parameters of :class:`PatchDiscriminator`.

    Examples
    --------
    >>> DiscriminatorConfig.from_dict(DiscriminatorConfig().to_dict()) == DiscriminatorConfig()
    True
    """

    in_channels: int = 1
    width: int = 32  # channels of the first layer, doubled at each down-sampling (max 8x)
    downsamplings: int = 3
    conditional: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiscriminatorConfig:
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise InputError(f"unknown discriminator config keys {sorted(set(d) - known)}")
        return cls(**d)


class PatchDiscriminator(nn.Module):
    """Patch critic: images (and their distorted inputs) -> one logit per patch.

    Parameters
    ----------
    cfg
        A :class:`DiscriminatorConfig`; keyword arguments override its fields.

    Examples
    --------
    >>> d = PatchDiscriminator(conditional=False, width=4, downsamplings=1)
    >>> tuple(d(torch.rand(1, 1, 16, 16)).shape)
    (1, 1, 8, 8)
    """

    def __init__(self, cfg: DiscriminatorConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = DiscriminatorConfig.from_dict({**(cfg or DiscriminatorConfig()).to_dict(), **overrides})
        if cfg.downsamplings < 1 or cfg.width < 1:
            raise InputError(f"downsamplings and width must be >= 1, got {cfg}")
        self.cfg = cfg
        c_in = cfg.in_channels * (2 if cfg.conditional else 1)
        layers: list[nn.Module] = []
        for i in range(cfg.downsamplings):
            c_out = cfg.width * 2 ** min(i, 3)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.conditional:
            if condition is None:
                raise ValueError("this discriminator is conditional: pass the distorted input as condition")
            image = torch.cat([image, condition], dim=1)
        elif condition is not None:
            raise ValueError("this discriminator is not conditional; do not pass a condition")
        return self.net(image)
