"""The adaptive variational autoencoder (AVAE) that fuses BF, DF and HRTEM images.

One encoder branch per mode gives a **convolutional** latent: at every position of a grid at
half the image's sampling, mode ``i`` has a mean ``mu_i`` and log-variance ``logvar_i`` of
``latent`` channels, and a sample ``z_i = mu_i + exp(logvar_i / 2) * eps`` (``z_i = mu_i`` in
evaluation mode). The attention weights are, at every latent position,

    w = softmax(a' [z_1; ...; z_n])          (a 1 x 1 convolution from n * latent to n channels)

so they form a map over the image; the fused latent is ``z = sum_i w_i z_i`` and one decoder
turns it into the fused image. With ``attention=False`` the weights are fixed at ``1/n`` (the
``vae`` baseline: the same network without attention).

With ``attention_from="stats"`` the scores come instead from a small convolutional network of
every mode's posterior mean and log-variance (uncertainty-aware weighting with a few latent
pixels of context; see :class:`AVAEConfig`).

The loss (:func:`avae_loss`) is ``MSE(decoder(z), target) + beta * KL``, the KL divergence of
every mode's posterior from the unit gaussian, averaged over latent elements.

With ``base="restored_hrtem"`` (:class:`AVAEConfig`) the network is a **residual on a restored
HRTEM**: the input has one more channel after the modes, the HRTEM restored by a restoration
network (``base_model``) and standardised (:mod:`emfuse.pipeline.avae.base`), and the output is

    fused = g(z) * base + c + decoder(z)

where the gain ``g`` is a 1 x 1 convolution of the fused latent (interpolated bilinearly to the
image's sampling) and ``c`` a learnt offset. ``g``'s weights and the decoder's last convolution
start at zero, ``g``'s bias at 1 (or, in training, at the least-squares scale of the targets on
the bases: :func:`emfuse.pipeline.avae.train.start_at_the_base`), so that the untrained network
returns the restored HRTEM, affinely mapped, exactly: training starts from the best single
mode and moves away from it only where the loss says the other modes add something. The gain is
a map, not one number, so that the base can count for less where BF or DF say more. The HRTEM's
contrast changes sign against the truth from region to region (defocus, thickness), so such a
network is trained against targets turned to its base's contrast
(:func:`emfuse.pipeline.avae.train.orient_to_base`) and its output is in that contrast. The
attention still runs over the modes only.

With ``mode_gains=True`` the output also has a direct path from every recorded mode,
``+ sum_m h_m(z) * (x_m - 1/2)`` (``h_m`` 1 x 1 convolutions of the fused latent, zero at the
start, so the untrained network is unchanged; an absent mode's path is off): the way the residual
network keeps its base, offered to BF and DF, whose slow mass-thickness contrast the HRTEM lacks.

Weights are saved with safetensors only (:func:`save_avae`, :func:`load_avae`), the
configuration in the file's metadata.

Examples
--------
>>> import torch
>>> net = AVAE(AVAEConfig(features=8, latent=4))
>>> out = net(torch.rand(2, 3, 32, 32))
>>> tuple(out.fused.shape), tuple(out.attention.shape)
((2, 1, 32, 32), (2, 3, 16, 16))
>>> bool(torch.allclose(out.attention.sum(1), torch.ones(2, 16, 16)))
True
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import InputError, InputFileNotFound
from ..weights_io import save_safetensors

__all__ = ["ATTENTION_INPUTS", "AVAE", "BASES", "AVAEConfig", "AVAEOutput", "DEFAULT_BASE_MODEL", "DEFAULT_WEIGHTS", "FLAT_VAE_WEIGHTS", "FLAT_WEIGHTS", "RESIDUAL_WIENER_WEIGHTS", "VAE_WEIGHTS", "avae_loss", "load_avae", "save_avae"]

#: The plain AVAE trained on the default simulator with the illumination fitted (small, committed;
#: tem-fuse's default for such inputs until 2026-12-07, now :data:`RESIDUAL_WIENER_WEIGHTS`).
DEFAULT_WEIGHTS = Path(__file__).parent / "models" / "default.safetensors"
#: The same network without attention (equal weights), trained alike: the ``vae`` baseline.
VAE_WEIGHTS = Path(__file__).parent / "models" / "vae_equal_weights.safetensors"
#: Trained on modes divided by their flat (vacuum) references (``prepare_regions(flat_reference=True)``):
#: tem-fuse's default for inputs with a ``flat_reference`` until 2026-12-07; and its equal-weight baseline.
FLAT_WEIGHTS = Path(__file__).parent / "models" / "flat_reference.safetensors"
FLAT_VAE_WEIGHTS = Path(__file__).parent / "models" / "flat_reference_vae.safetensors"
#: A residual on the Wiener-filtered HRTEM with a gain path from every mode (``AVAEConfig(base=
#: "restored_hrtem", base_model="wiener", mode_gains=True)``), trained on the randomised simulator's
#: regions, half with a flat reference and half with the illumination fitted, three structure
#: families held out: tem-fuse's default for both kinds of input (docs/methods/avae.md).
RESIDUAL_WIENER_WEIGHTS = Path(__file__).parent / "models" / "residual_wiener.safetensors"
FORMAT = "emfuse-avae-1"  # bump when the state-dict layout changes
#: What the attention scores are computed from: ``"z"`` the paper's ``a' [z_1; ...; z_n]`` (a 1 x 1
#: convolution of the concatenated latents); ``"stats"`` a small convolutional network (a
#: ``attention_kernel`` convolution to ``attention_hidden`` channels, ReLU, 1 x 1 convolution) of
#: the concatenated posterior means *and* log-variances ``[mu_1; logvar_1; ...]`` of all modes, so
#: a weight can depend on every mode's uncertainty and on the neighbourhood.
ATTENTION_INPUTS = ("z", "stats")
#: What the network's output is a residual on: ``"none"`` (the plain AVAE: ``decoder(z)``) or
#: ``"restored_hrtem"`` (``g(z) * base + c + decoder(z)``, the base an extra input channel: the
#: HRTEM restored by ``AVAEConfig.base_model``; see the module docstring).
BASES = ("none", "restored_hrtem")
#: The restoration network of the base (a name of :func:`emfuse.pipeline.restore.load_model`): the
#: published HRTEM network, the best single-mode baseline of the issue-18 benchmarks.
DEFAULT_BASE_MODEL = "r_em:sfr_hrtem"


@dataclass(frozen=True)
class AVAEConfig:
    """Shape of the network.

    ``features`` channels in the convolutions, ``latent`` channels of each mode's latent map,
    ``stride`` the latent grid's step in image pixels (2: half the sampling; 1: the image's),
    ``n_modes`` encoder branches, ``attention`` False for equal weights; ``attention_from``
    (:data:`ATTENTION_INPUTS`), ``attention_hidden`` and ``attention_kernel`` say how the weights
    are computed (the last two only for ``"stats"``); ``base`` (:data:`BASES`) and ``base_model``
    (the restoration network that makes the base) make it a residual on a restored HRTEM;
    ``mode_gains`` adds a gain-map path from every mode to the output (see the module notes).
    """

    n_modes: int = 3
    features: int = 16
    latent: int = 8
    attention: bool = True
    stride: int = 2
    attention_from: str = "z"
    attention_hidden: int = 16
    attention_kernel: int = 3
    base: str = "none"
    base_model: str = DEFAULT_BASE_MODEL
    mode_gains: bool = False

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise InputError(f"base must be one of {BASES}, got {self.base!r}")
        if self.stride not in (1, 2):
            raise InputError(f"stride must be 1 or 2, got {self.stride}")
        if self.attention_from not in ATTENTION_INPUTS:
            raise InputError(f"attention_from must be one of {ATTENTION_INPUTS}, got {self.attention_from!r}")
        if self.attention_kernel % 2 != 1 or self.attention_kernel < 1:
            raise InputError(f"attention_kernel must be odd and >= 1, got {self.attention_kernel}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AVAEConfig:
        fields = json.loads(text)
        fields.setdefault("attention_from", "z")  # files written before the choice existed
        fields.setdefault("base", "none")  # files written before the residual existed: the plain AVAE
        fields.setdefault("mode_gains", False)  # files written before the modes' own paths existed
        return cls(**fields)

    @property
    def has_base(self) -> bool:
        """True when the network is a residual on a base (one more input channel)."""
        return self.base != "none"

    @property
    def in_channels(self) -> int:
        """Channels of the network's input: the modes, then the base if there is one."""
        return self.n_modes + self.has_base


class AVAEOutput(NamedTuple):
    fused: torch.Tensor  # (B, 1, H, W)
    attention: torch.Tensor  # (B, n_modes, H/s, W/s), sums to 1 over modes (s: the stride)
    mu: torch.Tensor  # (B, n_modes, latent, H/s, W/s)
    logvar: torch.Tensor


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class ModeEncoder(nn.Module):
    """One mode (B, 1, H, W) -> (mu, logvar), each (B, latent, H/s, W/s)."""

    def __init__(self, features: int, latent: int, stride: int = 2):
        super().__init__()
        f = features
        self.body = nn.Sequential(_conv(1, f), nn.ReLU(), _conv(f, f), nn.ReLU(), _conv(f, f, stride=stride),
                                  nn.ReLU(), _conv(f, f), nn.ReLU())
        self.head = nn.Conv2d(f, 2 * latent, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)


class Decoder(nn.Module):
    """Fused latent (B, latent, H/s, W/s) -> image (B, 1, H, W)."""

    def __init__(self, features: int, latent: int, stride: int = 2):
        super().__init__()
        f = features
        up = nn.ConvTranspose2d(f, f, 4, stride=2, padding=1) if stride == 2 else _conv(f, f)
        self.body = nn.Sequential(_conv(latent, f), nn.ReLU(), _conv(f, f), nn.ReLU(), up, nn.ReLU(),
                                  _conv(f, f), nn.ReLU(), _conv(f, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)

    def zero_last(self) -> None:
        """Zero the last convolution: the decoder then returns 0 (a residual's starting point)."""
        last = self.body[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


class AVAE(nn.Module):
    """Encoders per mode, attention over the modes' latents, one decoder.

    Input (B, n_modes, H, W), H and W even (preprocessed modes in [0, 1]), and with a base
    (B, n_modes + 1, H, W), the standardised base last; see the module docstring for what
    :meth:`forward` returns.
    """

    def __init__(self, cfg: AVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or AVAEConfig()
        c = self.cfg
        self.encoders = nn.ModuleList(ModeEncoder(c.features, c.latent, c.stride) for _ in range(c.n_modes))
        if c.attention_from == "z":
            self.score = nn.Conv2d(c.n_modes * c.latent, c.n_modes, 1)  # a' [z_1; ...; z_n]
        else:  # "stats": a small conv net of [mu_i; logvar_i] of every mode
            last = nn.Conv2d(c.attention_hidden, c.n_modes, 1)
            nn.init.zeros_(last.weight)  # starts at equal weights: the VAE baseline's fusion
            nn.init.zeros_(last.bias)
            self.score = nn.Sequential(
                nn.Conv2d(2 * c.n_modes * c.latent, c.attention_hidden, c.attention_kernel,
                          padding=c.attention_kernel // 2), nn.ReLU(), last)
        self.decoder = Decoder(c.features, c.latent, c.stride)
        if c.has_base:
            # fused = g(z) * base + c + decoder(z); g = 1, c = 0 and decoder = 0 at the start: the base itself
            self.decoder.zero_last()
            self.base_gain = nn.Conv2d(c.latent, 1, 1)
            nn.init.zeros_(self.base_gain.weight)
            nn.init.ones_(self.base_gain.bias)
            self.base_offset = nn.Parameter(torch.zeros(()))
        if c.mode_gains:  # sum_m h_m(z) (x_m - 1/2); zero at the start: the network is unchanged
            self.mode_gain = nn.Conv2d(c.latent, c.n_modes, 1)
            nn.init.zeros_(self.mode_gain.weight)
            nn.init.zeros_(self.mode_gain.bias)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> AVAEOutput:
        """Fuse the modes of ``x``; ``present`` (B, n_modes), optional, marks the modes to use.

        A mode marked absent (0) gets weight 0 and the others share the weight: the attention's
        softmax runs over the present modes only (their latents are also what it sees; an absent
        mode's latent is replaced by zeros), equal weights become ``1 / (modes present)``.
        """
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            what = f"{self.cfg.n_modes} modes and the base" if self.cfg.has_base else f"{self.cfg.n_modes}"
            raise ValueError(f"expected (batch, {what}, H, W) = (batch, {self.cfg.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-1] % self.cfg.stride or x.shape[-2] % self.cfg.stride:
            raise ValueError(f"H and W must be even, got {tuple(x.shape[-2:])}")
        stats = [enc(x[:, i : i + 1] - 0.5) for i, enc in enumerate(self.encoders)]
        mu = torch.stack([s[0] for s in stats], dim=1)
        logvar = torch.stack([s[1] for s in stats], dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        b, n, c, h, w = z.shape
        keep = self._present(present, b, z)
        seen = 1.0 if keep is None else keep[..., None, None, None]  # absent modes' latents: zeros
        if self.cfg.attention and self.cfg.attention_from == "z":
            scores = self.score((z * seen).reshape(b, n * c, h, w))
        elif self.cfg.attention:
            scores = self.score((torch.cat([mu, logvar], dim=2) * seen).reshape(b, 2 * n * c, h, w))
        else:
            scores = torch.zeros((b, n, h, w), dtype=z.dtype, device=z.device)  # softmax: 1/n
        if keep is not None:
            scores = scores.masked_fill(keep[..., None, None] == 0, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        fused = (weights.unsqueeze(2) * z).sum(dim=1)
        image = self.decoder(fused)
        if self.cfg.has_base:
            gain = self._at_image(self.base_gain(fused), x)
            image = image + gain * x[:, self.cfg.n_modes:] + self.base_offset
        if self.cfg.mode_gains:
            gains = self._at_image(self.mode_gain(fused), x)
            if keep is not None:
                gains = gains * keep[..., None, None]
            image = image + (gains * (x[:, :self.cfg.n_modes] - 0.5)).sum(dim=1, keepdim=True)
        return AVAEOutput(image, weights, mu, logvar)

    def _at_image(self, maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gain maps on the latent grid, at the image's sampling (bilinear)."""
        if self.cfg.stride == 1:
            return maps
        return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def _present(self, present: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        if present is None:
            return None
        keep = torch.as_tensor(present, device=like.device).to(like.dtype)
        if keep.ndim == 1:
            keep = keep.expand(batch, -1)
        if keep.shape != (batch, self.cfg.n_modes):
            raise ValueError(f"present must be ({self.cfg.n_modes},) or (batch, {self.cfg.n_modes}), "
                             f"got {tuple(keep.shape)}")
        if bool((keep.sum(1) == 0).any()):
            raise ValueError("at least one mode must be present in every item")
        return keep


def avae_loss(out: AVAEOutput, target: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``MSE(fused, target) + beta * KL`` (KL of every mode's posterior, mean over latent elements)."""
    recon = F.mse_loss(out.fused, target)
    kl = -0.5 * torch.mean(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
    return recon + beta * kl, {"recon": float(recon.detach()), "kl": float(kl.detach())}


def save_avae(model: AVAE, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors (configuration and ``metadata`` in the header); atomic rename.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "tiny.safetensors"
    >>> cfg = AVAEConfig(features=4, latent=2)
    >>> load_avae(save_avae(AVAE(cfg), p, metadata={"steps": 0})).cfg == cfg
    True
    """
    path = Path(path)
    header = {"format": FORMAT, "config": model.cfg.to_json(), "info": json.dumps(metadata or {}, default=str)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(tensors, path, header)


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata saved with a model (training data, steps, losses), without loading it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("info", "{}"))


def load_avae(path: str | os.PathLike | None = None, *, device: str = "cpu") -> AVAE:
    """Load an AVAE saved by :func:`save_avae` (default: :data:`DEFAULT_WEIGHTS`), in eval mode."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise InputFileNotFound(f"no AVAE weights at {path}; train some with `emfuse train-avae` "
                                "or give --model PATH")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc}); give an AVAE model written "
                         "by emfuse train-avae (--model)") from exc
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not an emfuse AVAE file (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    model = AVAE(AVAEConfig.from_json(meta["config"]))
    model.load_state_dict(load_file(str(path), device=device))
    return model.to(device).eval()
