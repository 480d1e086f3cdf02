"""Memory model of restoration on a GPU: activations per pixel of a tile, the batch that fits.

What a forward pass holds
-------------------------
:func:`emfuse.pipeline.restore.inference.restore` runs batches of ``n`` tiles of ``t x t`` pixels
through the network under :func:`torch.inference_mode`: nothing is kept for a backward pass, so
the peak is the largest set of tensors alive at one time. For the CGRDN
(:mod:`emfuse.pipeline.restore.cgrdn`; ``f`` features, ``g`` growth, ``G`` groups of ``B``
blocks of ``L`` dense layers, down-sampling ``s``) on its torch path (CUDA), counted in floats
per pixel of the tile:

- at the down-sampled scale (``1/s^2`` of the pixels), during the last dense layer of the last
  block: the down-sampling output ``d``, the earlier group and block outputs (the groups' and
  blocks' concatenations read them), the old concatenation, the new layer's output and the new
  concatenation: ``(G + B + 1) f + 2 L g``; at the block's 1x1 fusion ``(G + B + 2) f + L g``; at
  a group's ``(G + 2 B + 1) f``; at the last fusion ``(2 G + 2) f``;
- at full size, at the end: ``d``, the group outputs and the fused trunk (``(G + 2) f / s^2``),
  the up-sampled features (``f``) and the output (``1``).

The larger of the two (published r_em: ``(9 x 64 + 2 x 8 x 32) / 4 = 272`` floats) is held in
the working dtype (4 bytes; 2 under bf16/fp16 autocast), plus :data:`IO_FLOATS` float32 copies of
the tile (the input on the device, its standardised and padded copies, the output):

    bytes per pixel = itemsize x activations + 4 x IO_FLOATS       (r_em, fp32: 1104 bytes)

The count was measured on the CPU by following every tensor the network's torch path allocates
and frees (``tests/pipeline/test_restore_memory.py``, exact for three configurations). A batch
fits when ``n x t^2 x bytes per pixel + 2 x weights <= safety x free`` (the weights and their
autocast copy); the convolution algorithms' workspaces are what the safety margin is for.
Other networks have no model: their batch stays :data:`DEFAULT_BATCH`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from emfuse.errors import EmfuseError

from ..fusion.memory import SAFETY

#: float32 copies of a tile besides the network's activations (input, standardised, padded, output)
IO_FLOATS = 4

#: the batch without a GPU (and for networks without a memory model): the long-standing default
DEFAULT_BATCH = 8

#: the largest batch ``auto`` picks: past a few dozen tiles a GPU is busy, and a larger batch only
#: holds more host memory for the tiles waiting
MAX_BATCH = 64


class BatchMemoryError(EmfuseError, ValueError):
    """Not even one tile fits the GPU's free memory (the message names the fix)."""


def activation_floats_per_pixel(cfg: Any) -> float:
    """Floats per tile pixel the CGRDN holds at the peak of a forward pass (module docstring).

    Parameters
    ----------
    cfg
        The network's :class:`~emfuse.pipeline.restore.cgrdn.CGRDNConfig`.

    Examples
    --------
    >>> from emfuse.pipeline.restore.cgrdn import CGRDNConfig
    >>> activation_floats_per_pixel(CGRDNConfig())
    272.0
    """
    f, g, groups, blocks, layers = cfg.features, cfg.growth, cfg.groups, cfg.blocks, cfg.layers
    low = max((groups + blocks + 1) * f + 2 * layers * g, (groups + blocks + 2) * f + layers * g,
              (groups + 2 * blocks + 1) * f, (2 * groups + 2) * f)
    end = (groups + 2) * f / cfg.scale**2 + f + 1
    return float(max(low / cfg.scale**2, end))


def restore_bytes_per_pixel(cfg: Any, itemsize: int = 4) -> float:
    """Device bytes per tile pixel: activations in the working dtype plus the float32 copies.

    Examples
    --------
    >>> from emfuse.pipeline.restore.cgrdn import CGRDNConfig
    >>> restore_bytes_per_pixel(CGRDNConfig()), restore_bytes_per_pixel(CGRDNConfig(), itemsize=2)
    (1104.0, 560.0)
    """
    return itemsize * activation_floats_per_pixel(cfg) + 4 * IO_FLOATS


def largest_batch(free_bytes: float, tile: int, cfg: Any, *, itemsize: int = 4, weight_bytes: float = 0.0,
                  safety: float | None = None, cap: int = MAX_BATCH) -> int:
    """The most tiles of ``tile x tile`` px one forward pass may hold in ``safety x free_bytes``.

    Returns 0 when not even one fits; at most ``cap``.

    Examples
    --------
    >>> from emfuse.pipeline.restore.cgrdn import CGRDNConfig
    >>> largest_batch(16e9, 256, CGRDNConfig()), largest_batch(1e9, 256, CGRDNConfig())
    (64, 11)
    """
    safety = SAFETY if safety is None else safety
    room = safety * free_bytes - 2 * weight_bytes
    per_tile = tile * tile * restore_bytes_per_pixel(cfg, itemsize)
    return int(max(0, min(cap, room // per_tile)))


@dataclass(frozen=True)
class BatchChoice:
    """A batch chosen by :func:`choose_batch` and why."""

    batch: int
    rule: str
    free_bytes: float | None = None
    bytes_per_pixel: float | None = None

    def record(self) -> dict[str, Any]:
        return {"asked": "auto", **asdict(self)}


def choose_batch(free_bytes: float | None, tile: int, cfg: Any, *, itemsize: int = 4, weight_bytes: float = 0.0,
                 default: int = DEFAULT_BATCH, cap: int = MAX_BATCH) -> BatchChoice:
    """The restoration batch for ``--batch auto`` on a device with ``free_bytes`` free.

    ``free_bytes`` None (the CPU) or a network without a memory model (``cfg`` not a CGRDN
    configuration): ``default``. Else :func:`largest_batch`; :class:`BatchMemoryError` when
    not even one tile fits, naming a smaller ``--tile`` and ``--device cpu``.

    Examples
    --------
    >>> from emfuse.pipeline.restore.cgrdn import CGRDNConfig
    >>> choose_batch(None, 256, CGRDNConfig()).batch, choose_batch(2e9, 256, CGRDNConfig()).batch
    (8, 22)
    """
    from .cgrdn import CGRDNConfig

    if free_bytes is None:
        return BatchChoice(default, "on the CPU: the default")
    if not isinstance(cfg, CGRDNConfig):
        return BatchChoice(default, "no memory model for this network: the default")
    per_pixel = restore_bytes_per_pixel(cfg, itemsize)
    batch = largest_batch(free_bytes, tile, cfg, itemsize=itemsize, weight_bytes=weight_bytes, cap=cap)
    if batch == 0:
        raise BatchMemoryError(
            f"one tile of {tile} px needs {tile * tile * per_pixel / 1e9:.3g} GB on the GPU, which has "
            f"{free_bytes / 1e9:.3g} GB free ({SAFETY:.0%} planned for); rerun with a smaller --tile, or "
            "with --device cpu.")
    return BatchChoice(batch, f"largest batch that fits: batch x tile^2 x bytes_per_pixel + 2 x weights "
                              f"<= {SAFETY} x free, at most {cap}", free_bytes, per_pixel)


def cuda_free_bytes(device: Any) -> int:
    """Free memory of a CUDA ``device`` for torch: the driver's free memory plus what torch's caching
    allocator holds unused (CUDA only)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
