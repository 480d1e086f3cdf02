"""Inference: a trained AVAE applied to preprocessed modes of any size.

:func:`fuse_modes` runs the network on one window (mode, y, x) of preprocessed modes (odd sides
are padded by reflection) and returns the fused image and the attention map, both at the
image's sampling (the latent grid is at half of it; the weights are interpolated bilinearly).
In evaluation mode the latent is its mean, so the result is deterministic: the same window
always gives the same numbers, which the tiled job's resume relies on.
:func:`fuse_tile` does the same for one tile of a grid (:func:`emfuse.pipeline.tiles.tile_grid`):
run on the window (core + halo), crop the core. A residual network (``cfg.base``) is also given
its base, the standardised restored HRTEM of the same window (:mod:`emfuse.pipeline.avae.base`).

Examples
--------
>>> import numpy as np
>>> from emfuse.pipeline.avae.model import AVAE, AVAEConfig
>>> net = AVAE(AVAEConfig(features=4, latent=2)).eval()
>>> fused, attention = fuse_modes(net, np.random.default_rng(0).random((3, 21, 30)))
>>> fused.shape, attention.shape, bool(np.allclose(attention.sum(0), 1, atol=1e-5))
((21, 30), (3, 21, 30), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from emfuse.pipeline.tiles import Tile

from ...errors import InputError
from .base import with_base
from .model import AVAE

__all__ = ["fuse_modes", "fuse_tile"]


@torch.no_grad()
def fuse_modes(model: AVAE, modes: Any, *, present: Any = None, base: Any = None,
               device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fused image (y, x) and attention (mode, y, x) of preprocessed ``modes`` (mode, y, x) in [0, 1].

    Parameters
    ----------
    model : AVAE
        The trained attention network (:func:`emfuse.pipeline.avae.model.load_avae`).
    modes : array_like
        The preprocessed modes (mode, y, x) in [0, 1], ``model.cfg.n_modes`` of them.
    present : array_like of bool, optional
        One flag per mode: fuse only the modes marked true; the others get weight 0 whatever
        their pixels hold (a mode not recorded: pass zeros for it). Default: all modes.
    base : array_like, optional
        The base (y, x) of a residual network (``model.cfg.base``, :mod:`emfuse.pipeline.avae.base`):
        required for one, refused for a plain network.
    device : str, optional
        The torch device to run on; default: the model's.

    Returns
    -------
    fused : numpy.ndarray
        The fused image (y, x), float32.
    attention : numpy.ndarray
        The attention weights (mode, y, x), float32.
    """
    a = np.asarray(modes, dtype=np.float32)
    if a.ndim != 3 or a.shape[0] != model.cfg.n_modes:
        raise InputError(f"expected modes ({model.cfg.n_modes}, y, x), got {a.shape}")
    if model.cfg.has_base != (base is not None):
        raise InputError(f"the network's base is {model.cfg.base!r}: "
                         + ("give its base (y, x)" if model.cfg.has_base else "it takes no base"))
    if base is not None:
        a = with_base(a, base)  # the base is padded and cut with the modes
    ny, nx = a.shape[1:]
    x = torch.from_numpy(np.ascontiguousarray(a))[None]
    pad_y, pad_x = ny % 2, nx % 2
    if pad_y or pad_x:
        mode = "reflect" if min(ny, nx) > 1 else "replicate"
        x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
    device = device or next(model.parameters()).device.type
    model.eval()
    out = model(x.to(device), None if present is None else torch.as_tensor(np.asarray(present, dtype=np.float32)))
    attention = F.interpolate(out.attention, size=x.shape[-2:], mode="bilinear", align_corners=False)
    fused = out.fused[0, 0, :ny, :nx].cpu().numpy()
    return fused.astype(np.float32), attention[0, :, :ny, :nx].cpu().numpy().astype(np.float32)


def fuse_tile(model: AVAE, window_modes: Any, tile: Tile, *, base: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fuse_modes` on a tile's window (and the window's ``base``), cropped to its core."""
    fused, attention = fuse_modes(model, window_modes, base=base)
    ys, xs = tile.crop
    return fused[ys, xs], attention[:, ys, xs]
