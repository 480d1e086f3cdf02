"""``emfuse train-avae``: train the AVAE on tiles of modes stores that carry a truth.

Each store is preprocessed as the tem-fuse job does it (:func:`emfuse.flows.jobs.tem_fuse.fit_store_preprocessing`:
flat field (the store's ``flat_reference`` when it has one), histograms, drift fitted once,
then applied to the whole image, which must fit in memory), cut into square regions of ``region`` px, each region's truth standardised; for a
residual network (``AVAEConfig.base``) each region also gets its base, made as tem-fuse makes it
(:func:`emfuse.flows.jobs.tem_fuse.fit_base`: statistics fitted on the store's central crop, the
whole flat-fielded HRTEM restored with them); 15 % of
the regions (at least one, when there are two or more) are held out to choose the weights.
The model is written with safetensors, the training record in its metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emfuse.pipeline.avae.base import BaseFit, flat_hrtem, load_base_network, with_base
from emfuse.pipeline.avae.model import AVAEConfig, save_avae
from emfuse.pipeline.avae.train import TrainSettings, standardise, train_avae
from emfuse.stores import layout
from emfuse.stores.zarrio import check_writable, open_dataset

from ..jobs.tem_fuse import (
    TemFuseInputError,
    central_window,
    check_flat,
    check_modes,
    fit_store_preprocessing,
    recorded_modes,
)

log = logging.getLogger(__name__)


def store_regions(store: str | Path, region: int = 192, *, base_model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed modes (n, 3, r, r) and standardised truths (n, r, r) of a store's regions;
    with ``base_model`` (a residual network's restoration network) the modes and the base (n, 4, r, r)."""
    ds = open_dataset(store)
    check_modes(ds, store)
    if layout.TRUE_STRUCTURE not in ds:
        raise TemFuseInputError(f"{store} has no '{layout.TRUE_STRUCTURE}': training needs the truth "
                                "(write training data with `emfuse synth tem-modes`).")
    flat_referenced = check_flat(ds, store) is not None
    modes = recorded_modes(ds, flat_referenced)
    prep = fit_store_preprocessing(modes, flat_referenced)
    recorded = modes.values
    inputs = prep.apply(recorded)
    if base_model is not None:  # the base as tem-fuse makes it: statistics of the central crop
        window = central_window(recorded.shape[1:])
        net = load_base_network(base_model)
        fit, _ = BaseFit.fit(flat_hrtem(prep, recorded[:, window[0], window[1]], window), net)
        inputs = with_base(inputs, fit.apply(flat_hrtem(prep, recorded), net))
    truth = ds[layout.TRUE_STRUCTURE].transpose("y", "x").values
    ny, nx = truth.shape
    r = min(region, ny - ny % 2, nx - nx % 2)
    xs, ys = [], []
    for y0 in range(0, ny - r + 1, r):
        for x0 in range(0, nx - r + 1, r):
            xs.append(inputs[:, y0:y0 + r, x0:x0 + r])
            ys.append(standardise(truth[y0:y0 + r, x0:x0 + r]))
    return np.stack(xs), np.stack(ys)


def train_from_stores(stores: Sequence[str | Path], out: str | Path, *, region: int = 192,
                      settings: TrainSettings | None = None, cfg: AVAEConfig | None = None,
                      validation_fraction: float = 0.15,
                      progress: Any = None) -> tuple[Path, dict[str, Any]]:
    """Train on every region of ``stores`` and write the model to ``out``; returns (path, history)."""
    settings = settings or TrainSettings()
    cfg = cfg or AVAEConfig()
    check_writable(out, file=True)  # before training, not after it (an existing file is replaced)
    parts = [store_regions(s, region, base_model=cfg.base_model if cfg.has_base else None) for s in stores]
    inputs = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    crop = min(settings.crop, inputs.shape[-1] - inputs.shape[-1] % 2)
    if crop != settings.crop:
        from dataclasses import replace

        settings = replace(settings, crop=crop, validation_crop=min(settings.validation_crop, crop))
    n = len(inputs)
    order = np.random.default_rng(settings.seed).permutation(n)
    n_val = max(1, int(round(validation_fraction * n))) if n >= 2 else 0
    val, train = order[:n_val], order[n_val:]
    model, history = train_avae(inputs[train], targets[train], cfg, settings,
                                validation=(inputs[val], targets[val]) if n_val else None, progress=progress)
    path = save_avae(model, out, metadata={
        "trained_on": [str(Path(s).resolve()) for s in stores], "regions": {"train": len(train), "validation": n_val},
        "region_px": int(inputs.shape[-1]), "best_step": history["best_step"], "seconds": history["seconds"],
        "settings": history["settings"]})
    return path, history
