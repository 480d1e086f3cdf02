"""The base of a residual AVAE: the recorded HRTEM restored by a restoration network, standardised.

An AVAE with ``AVAEConfig(base="restored_hrtem")`` outputs ``s * base + c + decoder(z)``
(:mod:`emfuse.pipeline.avae.model`). Its base is made here, the same way for training, for the
benchmark and for the tiled tem-fuse job:

1. the HRTEM **as recorded**, flat-fielded only (:func:`flat_hrtem`: divided by the fitted
   illumination, or already by its flat reference), which is in the frame of the preprocessed
   modes (it is the registration's reference, never shifted);
2. restored by the network of ``AVAEConfig.base_model`` (default ``r_em:sfr_hrtem``) through
   :func:`emfuse.pipeline.restore.inference.restore` (overlapping tiles, blended). A network
   that standardises each image (the CGRDN) is fed the image standardised with **fixed**
   statistics, fitted once for the dataset (:meth:`BaseFit.fit`), and only its residual network
   runs on the tiles: a window of a tiled job is then restored as it would be inside the whole
   image (up to the network's receptive field beyond the halo), not with its own brightness;
3. standardised with the restored image's mean and standard deviation, fitted alike, so the base
   is on the scale of the training targets (the truth standardised per region).

For a region of the benchmark the dataset is the region: :meth:`BaseFit.fit` on it gives exactly
``restore(hrtem, net)`` standardised, the ``hrtem_r_em`` baseline.

Examples
--------
>>> import numpy as np, torch
>>> net = torch.nn.Conv2d(1, 1, 3, padding=1)  # any image-to-image network
>>> hrtem = np.random.default_rng(0).random((40, 30)).astype(np.float32)
>>> fit, base = BaseFit.fit(hrtem, net)
>>> base.shape, round(float(base.mean()), 4) == 0.0, round(float(base.std()), 3)
((40, 30), True, 1.0)
>>> bool(np.allclose(fit.apply(hrtem, net), base, atol=1e-5))
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InputError
from .modes import HRTEM
from .preprocess import Preprocessing, flat_surface

if TYPE_CHECKING:
    import torch

#: Tile and overlap (px) of the restoration's own tiled inference: a tem-fuse window (256 px
#: tile + 2 x 32 px halo by default) is restored in one piece, as the regions of training are,
#: rather than in blended tiles whose seams would differ from window to window.
RESTORE_TILE, RESTORE_OVERLAP = 512, 64

__all__ = ["WIENER", "BaseFit", "flat_hrtem", "load_base_network", "region_bases", "with_base"]

#: The name of the base made by :func:`~emfuse.pipeline.avae.baselines.wiener_filter` instead of a
#: restoration network: no weights to install, its cutoff chosen by each image's own spectrum.
WIENER = "wiener"


def flat_hrtem(prep: Preprocessing, window_modes: Any, window: tuple[slice, slice] | None = None) -> np.ndarray:
    """The HRTEM of a window (mode, y, x) of recorded modes, flat-fielded only (float32).

    The same division as :meth:`Preprocessing.apply`'s first step, without the equalisation and
    the denoising: the restoration network wants intensities, not ranks.
    """
    a = np.asarray(window_modes, dtype=np.float64)
    win = window or (slice(0, a.shape[1]), slice(0, a.shape[2]))
    return (a[HRTEM] / flat_surface(prep.flat[HRTEM], prep.shape, win)).astype(np.float32)


def load_base_network(name: str, device: Any = None) -> torch.nn.Module:
    """The restoration network of a base: :data:`WIENER`
    (:class:`~emfuse.pipeline.avae.wiener_base.WienerNetwork`) or a name of
    :func:`emfuse.pipeline.restore.load_model`."""
    if name == WIENER:
        from .wiener_base import WienerNetwork  # torch is imported only here

        return WienerNetwork()
    from ..restore import load_model

    return load_model(name, device=device)


def _residual_network(net: torch.nn.Module) -> torch.nn.Module:
    """``net``'s residual network (``core``) as a module of its own, for images standardised outside:
    :func:`~emfuse.pipeline.restore.inference.restore` then runs it on the tiles as it is."""
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner
            self.cfg = inner.cfg  # the down-sampling factor the tiles must be multiples of

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.core(x)

    return Residual(net)


def _standardises(net: Any) -> bool:
    return callable(getattr(net, "core", None)) and hasattr(net, "standardise")


@dataclass(frozen=True)
class BaseFit:
    """Statistics of one dataset that make its base (JSON-able with :meth:`to_dict`).

    ``hrtem_mean``, ``hrtem_std``: the standardisation the restoration network is fed (its own
    std floor applied); ``base_mean``, ``base_std``: those of the restored HRTEM.
    """

    hrtem_mean: float
    hrtem_std: float
    base_mean: float
    base_std: float

    @classmethod
    def fit(cls, hrtem: Any, net: torch.nn.Module) -> tuple[BaseFit, np.ndarray]:
        """Fit on ``hrtem`` (flat-fielded, :func:`flat_hrtem`): the whole image or its central crop.

        Returns the fit and the standardised base of ``hrtem`` itself.
        """
        a = np.asarray(hrtem, dtype=np.float64)
        floor = float(getattr(getattr(net, "standardise", None), "floor", 0.0))
        mean, std = float(a.mean()), max(float(a.std()), floor)  # population std, as the CGRDN's
        restored = cls(mean, std, 0.0, 1.0).restore(a, net)
        spread = float(restored.std())
        if not spread > 0:
            raise InputError("the restored HRTEM is constant; it cannot be a base")
        fit = cls(mean, std, float(restored.mean()), spread)
        return fit, fit.standardise(restored)

    def restore(self, hrtem: Any, net: torch.nn.Module) -> np.ndarray:
        """``hrtem`` (y, x) restored by ``net`` (float32, the HRTEM's units), with this dataset's statistics."""
        from ..restore.inference import restore

        a = np.asarray(hrtem, dtype=np.float32)
        if not _standardises(net):  # a network without its own standardisation sees the intensities
            return restore(a, net, tile=RESTORE_TILE, overlap=RESTORE_OVERLAP)
        xs = ((a - self.hrtem_mean) / self.hrtem_std).astype(np.float32)
        residual = restore(xs, _residual_network(net), tile=RESTORE_TILE, overlap=RESTORE_OVERLAP)
        return (self.hrtem_std * (residual + xs) + self.hrtem_mean).astype(np.float32)

    def standardise(self, restored: Any) -> np.ndarray:
        """A restored HRTEM on the base's scale (float32)."""
        return ((np.asarray(restored, dtype=np.float64) - self.base_mean) / self.base_std).astype(np.float32)

    def apply(self, hrtem: Any, net: torch.nn.Module) -> np.ndarray:
        """The base of a window of the dataset: restored, then standardised."""
        return self.standardise(self.restore(hrtem, net))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaseFit:
        return cls(**{k: float(d[k]) for k in ("hrtem_mean", "hrtem_std", "base_mean", "base_std")})


def region_bases(hrtem: Any, net: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Bases of regions (N, H, W), each fitted on itself, and the restored HRTEMs (raw units).

    The restored images are what the ``hrtem_NAME`` baseline of the same network scores.
    """
    bases, restored = [], []
    for h in np.asarray(hrtem, dtype=np.float32):
        fit, base = BaseFit.fit(h, net)
        bases.append(base)
        restored.append(base * fit.base_std + fit.base_mean)
    return np.stack(bases).astype(np.float32), np.stack(restored).astype(np.float32)


def with_base(modes: Any, base: Any) -> np.ndarray:
    """Preprocessed modes (..., mode, y, x) and bases (..., y, x) as one input (..., mode + 1, y, x).

    Examples
    --------
    >>> with_base(np.zeros((2, 3, 4, 4)), np.ones((2, 4, 4))).shape
    (2, 4, 4, 4)
    """
    m = np.asarray(modes, dtype=np.float32)
    b = np.asarray(base, dtype=np.float32)
    if b.shape != m.shape[:-3] + m.shape[-2:]:
        raise InputError(f"modes {m.shape} and base {b.shape} do not match")
    return np.concatenate([m, b[..., None, :, :]], axis=-3)
