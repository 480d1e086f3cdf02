"""The Wiener-filtered HRTEM as the base of a residual AVAE, with no weights to install.

:class:`WienerNetwork` puts :func:`~emfuse.pipeline.avae.baselines.wiener_filter` behind the
interface of a restoration network, so that :class:`~emfuse.pipeline.avae.base.BaseFit` and
:func:`~emfuse.pipeline.restore.inference.restore` make its base exactly as they make a restored
HRTEM's (``AVAEConfig(base="restored_hrtem", base_model="wiener")``).
"""

from __future__ import annotations

import numpy as np
import torch

from .baselines import wiener_filter

__all__ = ["WienerNetwork"]


class WienerNetwork(torch.nn.Module):
    """:func:`~emfuse.pipeline.avae.baselines.wiener_filter` on every image of a batch ``(N, 1, H, W)``.

    It has no weights and does not standardise, so
    :func:`~emfuse.pipeline.restore.inference.restore` feeds it the intensities, in tiles of
    :data:`~emfuse.pipeline.avae.base.RESTORE_TILE` px: a tem-fuse window is filtered in one piece
    with its own noise estimate, as a training region is.

    Examples
    --------
    >>> image = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    >>> out = WienerNetwork()(torch.from_numpy(image)[None, None])[0, 0].numpy()
    >>> bool(np.allclose(out, wiener_filter(image), atol=1e-5))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().float().cpu().numpy()
        out = np.stack([[wiener_filter(image[0])] for image in images]).astype(np.float32)
        return torch.from_numpy(out).to(x.device)
