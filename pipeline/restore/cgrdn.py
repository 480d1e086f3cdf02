"""CGRDN, the restoration generator of r_em (Lobato, Friedrich & Van Aert, npj Comput. Mater. 2024).

The network, as in the published Keras models (``tk-r-em`` 1.0.4, generator ``gen_``):

1. standardise each image: ``xs = (x - mean) / max(std, std_floor)`` (population std over
   the image, ``std_floor = 0.1`` in raw units);
2. a 3x3 convolution to ``features`` channels, then a strided ``down_kernel`` convolution
   that halves the size (``scale = 2``);
3. ``groups`` residual dense groups, each ``blocks`` residual dense blocks: a block adds
   ``layers`` 3x3 ReLU convolutions of ``growth`` channels, each fed the concatenation of
   the block input and all earlier outputs, fuses the concatenation with a 1x1 convolution
   and adds the block input; a group concatenates its block outputs, fuses them (1x1) and
   adds the group input; the group outputs are concatenated, fused (1x1) and added to the
   output of the down-sampling convolution;
4. a transposed convolution back to full size, a 3x3 convolution to one channel, plus
   ``xs`` (the network predicts a residual), then ``std * out + mean``.

All convolutions have biases, no dilation, and 'same' padding in Keras' sense: zero
padding, ``(k - s) // 2`` before and the rest after. Only the dense layers have an
activation (ReLU). With the published settings the model has 7,035,521 parameters.

Images whose height or width is not a multiple of ``scale`` are padded at the bottom and
right (by ``scale - 1`` rows/columns at most) after standardisation, and the output is
cropped back: ``pad_mode="reflect"`` (default) mirrors the image, ``"constant"`` pads with
its mean, as ``tk_r_em``'s ``predict`` does, except that there the padded rows also enter
the mean and std. The statistics here are always those of the image itself.

Examples
--------
>>> import torch
>>> net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2)).eval()
>>> with torch.no_grad():
...     y = net(torch.rand(2, 1, 15, 20) * 1000)
>>> tuple(y.shape)
(2, 1, 15, 20)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError


@dataclass(frozen=True)
class CGRDNConfig:
    """Hyper-parameters of :class:`CGRDN`; the defaults are the published r_em networks'.

    Examples
    --------
    >>> CGRDNConfig.from_dict(CGRDNConfig().to_dict()) == CGRDNConfig()
    True
    """

    in_channels: int = 1
    features: int = 64  # width of the trunk: first conv, down-sampling, block and group outputs
    growth: int = 32  # channels each dense layer adds
    groups: int = 4  # residual dense groups
    blocks: int = 4  # residual dense blocks per group
    layers: int = 8  # dense layers per block
    kernel_size: int = 3
    down_kernel: int = 4  # kernel of the strided convolution and of the transposed one
    scale: int = 2  # their stride: the down-sampling factor
    std_floor: float = 0.1  # lower bound on the per-image std (raw units), as published

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CGRDNConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown CGRDN config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow 'same' padding ``(before, after)`` for a size divisible by ``stride``.

    Examples
    --------
    >>> same_padding(3, 1), same_padding(4, 2), same_padding(3, 2)
    ((1, 1), (1, 1), (0, 1))
    """
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


class Standardise(nn.Module):
    """Per-image standardisation (``gen_r_em_pp``): returns ``(x - mean) / std, mean, std``.

    ``mean`` and ``std`` have shape ``(N, C, 1, 1)``; ``std`` is the population std,
    clamped below at ``floor`` so a flat image does not divide by zero.

    Examples
    --------
    >>> xs, mean, std = Standardise()(torch.tensor([[[[1.0, 3.0]]]]))
    >>> xs.flatten().tolist(), mean.item(), std.item()
    ([-1.0, 1.0], 2.0, 1.0)
    """

    def __init__(self, floor: float = 0.1) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = (x - mean).square().mean(dim=(-2, -1), keepdim=True)
        std = var.sqrt().clamp_min(self.floor)
        return (x - mean) / std, mean, std


class DenseBlock(nn.Module):
    """Residual dense block: ``layers`` ReLU convs on the growing concatenation, 1x1 fusion, skip."""

    def __init__(self, cfg: CGRDNConfig) -> None:
        super().__init__()
        f, g, k = cfg.features, cfg.growth, cfg.kernel_size
        pad = same_padding(k, 1)[0]
        self.layers = nn.ModuleList(nn.Conv2d(f + i * g, g, k, padding=pad) for i in range(cfg.layers))
        self.fuse = nn.Conv2d(f + cfg.layers * g, f, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.layers:
            # Concatenation order as published: everything so far, then the new features.
            h = torch.cat([h, F.relu(conv(h))], dim=1)
        return self.fuse(h) + x


class DenseGroup(nn.Module):
    """Residual dense group: a chain of blocks, their outputs concatenated, fused (1x1), skip."""

    def __init__(self, cfg: CGRDNConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DenseBlock(cfg) for _ in range(cfg.blocks))
        self.fuse = nn.Conv2d(cfg.blocks * cfg.features, cfg.features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, h = [], x
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        return self.fuse(torch.cat(outs, dim=1)) + x


class CGRDN(nn.Module):
    """The r_em generator: ``(N, C, H, W)`` raw intensities -> restored, same shape and units.

    Parameters
    ----------
    cfg
        The hyper-parameters (default: the published networks').
    pad_mode
        How images whose size is not a multiple of ``cfg.scale`` are padded before the
        network and cropped after: ``"reflect"``, ``"replicate"`` or ``"constant"`` (the
        image mean). See the module docstring.

    Examples
    --------
    >>> sum(p.numel() for p in CGRDN().parameters())
    7035521
    """

    def __init__(self, cfg: CGRDNConfig | None = None, *, pad_mode: str = "reflect") -> None:
        super().__init__()
        cfg = cfg or CGRDNConfig()
        if cfg.down_kernel < cfg.scale:
            raise InputError(f"down_kernel {cfg.down_kernel} must be at least scale {cfg.scale}")
        if pad_mode not in ("reflect", "replicate", "constant"):
            raise InputError(f"pad_mode must be 'reflect', 'replicate' or 'constant', not {pad_mode!r}")
        self.cfg, self.pad_mode = cfg, pad_mode
        self.fast = True  # CPU inference through _core_cpu (False: the plain modules, the reference)
        f, k, dk, s = cfg.features, cfg.kernel_size, cfg.down_kernel, cfg.scale
        self.standardise = Standardise(cfg.std_floor)
        self.fst = nn.Conv2d(cfg.in_channels, f, k, padding=same_padding(k, 1)[0])
        # torch pads evenly: asymmetric 'same' padding (odd dk - s) is added by F.pad in core.
        self._down_pad = same_padding(dk, s)
        even = self._down_pad[0] == self._down_pad[1]
        self.down = nn.Conv2d(f, f, dk, stride=s, padding=self._down_pad[0] if even else 0)
        self.groups = nn.ModuleList(DenseGroup(cfg) for _ in range(cfg.groups))
        self.fuse = nn.Conv2d(cfg.groups * f, f, 1)
        # TF's transposed 'same' conv is the adjoint of the strided conv above: torch's
        # ConvTranspose2d trims `before` on both sides, so the extra row (if any) is cropped.
        self.up = nn.ConvTranspose2d(f, f, dk, stride=s, padding=self._down_pad[0])
        self.last = nn.Conv2d(f, cfg.in_channels, k, padding=same_padding(k, 1)[0])

    def core(self, xs: torch.Tensor) -> torch.Tensor:
        """The residual predicted from standardised images whose size is a multiple of ``scale``."""
        dtype = _fast_dtype(self, xs)
        if dtype is not None:
            return self._core_cpu(xs, dtype)
        before, after = self._down_pad
        h = self.fst(xs)
        if before != after:
            h = F.pad(h, (before, after, before, after))
        d = self.down(h)
        outs, h = [], d
        for group in self.groups:
            h = group(h)
            outs.append(h)
        t = self.fuse(torch.cat(outs, dim=1)) + d
        u = self.up(t)[..., : xs.shape[-2], : xs.shape[-1]]
        return self.last(u)

    def _core_cpu(self, xs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`core` for CPU inference, same arithmetic, in oneDNN's channels-last layout.

        Each dense block works in one preallocated buffer (block input, then each layer's
        output written into its channel slice) instead of concatenating a growing tensor
        at every layer; block and group outputs go straight into the buffers that their
        1x1 fusions read; convolutions and ReLU run as fused oneDNN primitives (also the
        1x1 ones, which torch would otherwise send to a slow path on one thread). A conv
        fed a channel slice of the buffer copies it into one reused staging buffer first:
        oneDNN wants dense input, and fresh allocations (page faults) cost more than the
        copy. ``dtype`` is float32, or bfloat16 under CPU autocast (weights cast per call).
        """
        cfg, cl = self.cfg, torch.channels_last
        f, g = cfg.features, cfg.growth
        n = xs.shape[0]

        def wb(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
            w = conv.weight.to(dtype=dtype, memory_format=cl)
            return w, None if conv.bias is None else conv.bias.to(dtype)

        def conv(x: torch.Tensor, mod: nn.Conv2d, act: str = "none") -> torch.Tensor:
            w, b = wb(mod)
            return _POINTWISE(x, w, b, list(mod.padding), list(mod.stride), list(mod.dilation),
                              mod.groups, act, [], "")

        before, after = self._down_pad
        h = conv(xs.to(dtype).contiguous(memory_format=cl), self.fst)
        if before != after:
            h = F.pad(h, (before, after, before, after)).contiguous(memory_format=cl)
        d = conv(h, self.down)
        hh, ww = d.shape[-2:]

        def buffer(channels: int) -> torch.Tensor:
            return torch.empty(n, channels, hh, ww, dtype=dtype, device=xs.device, memory_format=cl)

        dense = buffer(f + cfg.layers * g)
        staging = torch.empty(n * hh * ww * (f + (cfg.layers - 1) * g), dtype=dtype, device=xs.device)
        blocks_out = buffer(cfg.blocks * f)
        groups_out = buffer(cfg.groups * f)

        def dense_input(c: int) -> torch.Tensor:
            if c == dense.shape[1]:
                return dense
            view = staging[: n * hh * ww * c].view(n, hh, ww, c).permute(0, 3, 1, 2)
            return view.copy_(dense[:, :c])

        group_in = d
        for gi, group in enumerate(self.groups):
            block_in = group_in
            for bi, block in enumerate(group.blocks):
                dense[:, :f].copy_(block_in)
                for li, layer in enumerate(block.layers):
                    c = f + li * g
                    src = block_in if li == 0 and block_in.is_contiguous(memory_format=cl) else dense_input(c)
                    dense[:, c : c + g].copy_(conv(src, layer, "relu"))
                out = blocks_out[:, bi * f : (bi + 1) * f]
                torch.add(conv(dense, block.fuse), block_in, out=out)
                block_in = out
            out = groups_out[:, gi * f : (gi + 1) * f]
            torch.add(conv(blocks_out, group.fuse), group_in, out=out)
            group_in = out
        t = conv(groups_out, self.fuse).add_(d)
        w, b = wb(self.up)
        u = F.conv_transpose2d(t, w, b, stride=self.up.stride, padding=self.up.padding)
        u = u[..., : xs.shape[-2], : xs.shape[-1]].contiguous(memory_format=cl)
        return conv(u, self.last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected images (N, {self.cfg.in_channels}, H, W); got shape {tuple(x.shape)}"
            )
        x = x.to(self.fst.weight.dtype)
        xs, mean, std = self.standardise(x)
        h, w = x.shape[-2:]
        ph, pw = -h % self.cfg.scale, -w % self.cfg.scale
        y = xs
        if ph or pw:
            # reflect needs more than one row/column to mirror.
            mode = "replicate" if self.pad_mode == "reflect" and min(h, w) < 2 else self.pad_mode
            y = F.pad(xs, (0, pw, 0, ph), mode=mode)
        y = self.core(y)[..., :h, :w]
        return std * (y + xs) + mean


_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def _fast_dtype(model: CGRDN, x: torch.Tensor) -> torch.dtype | None:
    """The dtype of :meth:`CGRDN._core_cpu` for this call, or None to run the plain modules.

    The fast path is for CPU inference (no autograd) with oneDNN, in float32 or under
    bfloat16 autocast; ``model.fast = False`` turns it off (the reference implementation).
    """
    if not getattr(model, "fast", True) or x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    if _POINTWISE is None or not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype not in (torch.float32, torch.bfloat16) or model.fst.weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return dtype


# --- the published Keras graph, layer by layer (for checking converted models) ------------


def torch_names(cfg: CGRDNConfig) -> dict[str, str]:
    """Keras layer name of every convolution -> its module path in :class:`CGRDN`.

    Examples
    --------
    >>> torch_names(CGRDNConfig())["gen_g_2_rdb_3_cpl_4_1_conv"]
    'groups.1.blocks.2.layers.3'
    """
    names = {"gen_fst_0_conv": "fst", "gen_down_spl_0_conv": "down"}
    for g in range(1, cfg.groups + 1):
        for b in range(1, cfg.blocks + 1):
            pre, mod = f"gen_g_{g}_rdb_{b}", f"groups.{g - 1}.blocks.{b - 1}"
            for i in range(1, cfg.layers + 1):
                names[f"{pre}_cpl_{i}_1_conv"] = f"{mod}.layers.{i - 1}"
            names[f"{pre}_fsl_conv"] = f"{mod}.fuse"
        names[f"gen_g_{g}_fsl_0_conv"] = f"groups.{g - 1}.fuse"
    names.update(gen_g_fsl_conv="fuse", gen_up_spl_0_dconv="up", gen_last_0_conv="last")
    return names


def keras_layers(cfg: CGRDNConfig) -> list[dict]:
    """The Keras functional graph that :class:`CGRDN` computes, in the published layer names.

    One dict per layer, in the order of the published model config: ``class_name``,
    ``name``, ``inbound`` (``(layer, output index)`` pairs) and, for convolutions, their
    settings. :func:`emfuse.pipeline.restore.weights.check_keras_config` compares it with a
    SavedModel's configuration entry by entry.
    """
    out: list[dict] = []

    def conv(name, src, filters, k, stride=1, act="linear", cls="Conv2D"):
        spec = {"class_name": cls, "name": name, "inbound": [(src, 0)], "filters": filters,
                "padding": "same", "activation": act, "use_bias": True, "groups": 1,
                "kernel_size": (k, k), "strides": (stride, stride), "dilation_rate": (1, 1)}
        if cls == "Conv2DTranspose":
            spec["output_padding"] = None
        out.append(spec)
        return name

    def node(cls, name, srcs, **extra):
        out.append({"class_name": cls, "name": name, "inbound": [(s, 0) for s in srcs], **extra})
        return name

    f, k = cfg.features, cfg.kernel_size
    node("InputLayer", "input_gen", [])
    node("Custom>lay_r_em_pp", "gen_r_em_pp", ["input_gen"])
    h = conv("gen_fst_0_conv", "gen_r_em_pp", f, k)
    d = conv("gen_down_spl_0_conv", h, f, cfg.down_kernel, cfg.scale)
    group_in, group_outs = d, []
    for g in range(1, cfg.groups + 1):
        block_in, block_outs = group_in, []
        for b in range(1, cfg.blocks + 1):
            pre, cat = f"gen_g_{g}_rdb_{b}", block_in
            for i in range(1, cfg.layers + 1):
                c = conv(f"{pre}_cpl_{i}_1_conv", cat, cfg.growth, k, act="relu")
                cat = node("Concatenate", f"{pre}_cpl_{i}_concat", [cat, c], axis=3)
            fused = conv(f"{pre}_fsl_conv", cat, f, 1)
            block_in = node("Add", f"{pre}_add", [fused, block_in])
            block_outs.append(block_in)
        cat = node("Concatenate", f"gen_g_{g}_concat", block_outs, axis=3)
        fused = conv(f"gen_g_{g}_fsl_0_conv", cat, f, 1)
        group_in = node("Add", f"gen_g_{g}_add", [fused, group_in])
        group_outs.append(group_in)
    cat = node("Concatenate", "gen_g_concat", group_outs, axis=3)
    fused = conv("gen_g_fsl_conv", cat, f, 1)
    t = node("Add", "gen_g_add", [fused, d])
    u = conv("gen_up_spl_0_dconv", t, f, cfg.down_kernel, cfg.scale, cls="Conv2DTranspose")
    last = conv("gen_last_0_conv", u, cfg.in_channels, k)
    node("Add", "gen_add_0", [last, "gen_r_em_pp"])
    # The output layer takes the mean and std (outputs 1 and 2 of gen_r_em_pp) as keywords.
    node("Custom>lay_r_em_out", "gen_r_em_out", ["gen_add_0"],
         kwargs={"x_sc": ("gen_r_em_pp", 2), "x_sft": ("gen_r_em_pp", 1)})
    return out
