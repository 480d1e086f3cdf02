"""The figure of a tem-fuse output store: the three recorded modes, the fused image, the attention maps.

``tem_fusion.png`` (written by :func:`emfuse.flows.report.write_report` when the store has ``tem_fused``):

* top row: BF | DF | HRTEM as recorded (percentile limits) | fused (| truth, when the store
  has ``true_structure``);
* bottom row: the attention weight of BF, DF and HRTEM (0..1, one colour scale) | the mode
  with the largest weight at every pixel.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from emfuse.stores.layout import ATTENTION, MODES, TEM_FUSED, TRUE_STRUCTURE

from .common import HAADF_CMAP, compute_all, new_figure, robust_limits, show_image, shrink

ATTENTION_CMAP = "viridis"
MODE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c")  # bf, df, hrtem
TITLES = {"bf": "bright field (BF)", "df": "dark field (DF)", "hrtem": "HRTEM"}


def tem_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    """Modes, fused image and attention maps of a tem-fuse output store (None if it has none)."""
    if TEM_FUSED not in ds or ATTENTION not in ds or MODES not in ds:
        return None
    names = [str(m) for m in ds[MODES]["mode"].values]
    lazy = [shrink(ds[MODES], factor), shrink(ds[TEM_FUSED], factor), shrink(ds[ATTENTION], factor)]
    if TRUE_STRUCTURE in ds:
        lazy.append(shrink(ds[TRUE_STRUCTURE], factor))
    shown = compute_all(*lazy)
    modes, fused, attention = shown[:3]
    ncols = max(len(names) + 1 + (TRUE_STRUCTURE in ds), len(names) + 1)
    fig, axes = new_figure(ds, ncols, 2, "Multi-mode TEM fusion (AVAE)", factor)
    for col, name in enumerate(names):
        image = modes.sel(mode=name).values
        vmin, vmax = robust_limits(image)
        show_image(fig, axes[0, col], fused, image, f"{TITLES.get(name, name)} (recorded)",
                   ds[MODES].attrs.get("units", "counts"),
                   cmap=HAADF_CMAP, vmin=vmin, vmax=vmax)
        show_image(fig, axes[1, col], fused, attention.sel(mode=name).values, f"attention: {name}", "weight",
                   cmap=ATTENTION_CMAP, vmin=0, vmax=1)
    col = len(names)
    vmin, vmax = robust_limits(fused.values)
    show_image(fig, axes[0, col], fused, fused.values, "fused (AVAE)", "standardised",
               cmap=HAADF_CMAP, vmin=vmin, vmax=vmax)
    if TRUE_STRUCTURE in ds:
        truth = shown[3]
        vmin, vmax = robust_limits(truth.values)
        show_image(fig, axes[0, col + 1], truth, truth.values, "truth (projected potential)", "relative",
                   cmap=HAADF_CMAP, vmin=vmin, vmax=vmax)
        axes[1, col + 1].set_axis_off()
    dominant = np.argmax(attention.values, axis=0)
    cmap = ListedColormap(MODE_COLOURS[: len(names)])
    show_image(fig, axes[1, col], fused, dominant, "largest weight", "mode",
               cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, ticks=(range(len(names)), names))
    return fig
