"""Training of the AVAE on (preprocessed modes, truth) pairs: arrays in, a model out.

Targets are the truth standardised per region (:func:`standardise`): zero mean and unit
standard deviation over the region it belongs to. The preprocessed modes carry no absolute
scale (each is histogram-equalised), so the network is asked for the structure, not for an
intensity level it cannot see; results are compared to the truth after an affine fit anyway.

Each step draws ``batch`` random crops of ``crop`` pixels (random region, position, flip and
quarter turn: the physics has no preferred direction), takes one Adam step on
``MSE + beta * KL`` (:func:`emfuse.pipeline.avae.model.avae_loss`); every ``validate_every`` steps the
loss on fixed crops of the validation regions is measured and the best weights so far kept.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x, y = rng.random((4, 3, 32, 32), dtype=np.float32), rng.standard_normal((4, 32, 32)).astype(np.float32)
>>> model, history = train_avae(x, y, AVAEConfig(features=4, latent=2),
...                             TrainSettings(steps=2, batch=2, crop=16, validate_every=1), validation=(x, y))
>>> len(history["validation"]), model.training
(2, False)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from ..arrays import central_crop
from .model import AVAE, AVAEConfig, avae_loss

__all__ = ["TrainSettings", "best_single_hinge", "orient_to_base", "sample_batch", "sample_present",
           "single_input_mse", "standardise", "start_at_the_base", "train_avae"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (Adam, lr 1e-4, batch 32 as in the AVAE paper)."""

    steps: int = 3000
    batch: int = 32
    lr: float = 1e-4
    beta: float = 1e-3
    crop: int = 48
    seed: int = 0
    threads: int | None = 1  # torch CPU threads (None: leave torch's setting)
    validate_every: int = 200
    validation_crop: int = 96
    #: Probability that a training crop is fused from a random proper subset of its modes (each
    #: non-empty subset alike) instead of all of them: every mode's latent must then decode on
    #: its own and in any company, so the latents share one meaning and fusing them is a choice
    #: between estimates (see docs/methods/avae.md). 0: always all modes.
    mode_dropout: float = 0.0
    #: For a residual network (``AVAEConfig.base``): each region's target is turned to the sign of
    #: its base's correlation with it (:func:`orient_to_base`), so the network is trained in the
    #: base's contrast (the HRTEM's, which changes sign against the truth from region to region) and
    #: never has to tell that sign to keep its base. False: the truth's own sign.
    orient_to_base: bool = True
    #: Weight of a per-crop hinge on being worse than the best single input: ``relu(MSE(fused) -
    #: min_c MSE(a_c x_c + b_c))`` over the crop, ``x_c`` each input channel (the modes, and the base
    #: of a residual network) with its best affine fit to the target (:func:`single_input_mse`).
    #: It adds to the loss only where the network does worse than a mode (or its base) would, which
    #: is the per-region "never worse than the best mode" of issue 18. 0: off.
    best_single_hinge: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.mode_dropout < 1:  # at 1 no crop would ever be fused from all its modes
            raise InputError(f"mode_dropout (--mode-dropout) must be in [0, 1), got {self.mode_dropout}")


def single_input_mse(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per crop and channel, the MSE of the channel's best affine fit to the target.

    ``inputs`` (B, C, H, W), ``target`` (B, 1, H, W); returns (B, C):
    ``var(t) - cov(x, t)^2 / var(x)`` over the crop (``var(t)`` for a flat channel).

    Examples
    --------
    >>> t = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    >>> x = torch.cat([3 * t + 1, torch.zeros_like(t)], dim=1)  # an affine copy, and a flat channel
    >>> [round(v, 4) for v in single_input_mse(x, t)[0].tolist()]
    [0.0, 0.0944]
    """
    x = inputs - inputs.mean(dim=(2, 3), keepdim=True)
    t = target - target.mean(dim=(2, 3), keepdim=True)
    var_t = t.pow(2).mean(dim=(2, 3))
    cov = (x * t).mean(dim=(2, 3))
    var_x = x.pow(2).mean(dim=(2, 3))
    return (var_t - cov.pow(2) / var_x.clamp_min(1e-12)).clamp_min(0.0)


def best_single_hinge(fused: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor,
                      present: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over crops of ``relu(MSE(fused) - min_c single_input_mse)``: how much worse than its
    best single input the network is, on the crops where it is worse.

    ``present`` (B, modes) bool: the modes the network was shown (mode dropout); the others do not
    count as inputs it could have matched. Channels after the modes (a base) always count.

    Examples
    --------
    >>> t = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    >>> float(best_single_hinge(t, torch.cat([t, t], dim=1), t))  # as good as the best input: no cost
    0.0
    >>> round(float(best_single_hinge(t + 0.1, torch.cat([t, t], dim=1), t)), 4)  # worse by its error
    0.01
    """
    mse = (fused - target).pow(2).mean(dim=(1, 2, 3))
    singles = single_input_mse(inputs, target)
    if present is not None:
        shown = torch.ones_like(singles, dtype=torch.bool)
        shown[:, :present.shape[1]] = present.bool()
        singles = singles.masked_fill(~shown, float("inf"))
    best = singles.min(dim=1).values
    return torch.relu(mse - best.detach()).mean()


def standardise(truth: Any) -> np.ndarray:
    """The truth of one region, zero mean and unit standard deviation (float32).

    Examples
    --------
    >>> t = standardise(np.arange(4.0).reshape(2, 2))
    >>> round(float(t.mean()), 6), round(float(t.std()), 6)
    (0.0, 1.0)
    """
    a = np.asarray(truth, dtype=np.float64)
    spread = a.std()
    if not spread > 0:
        raise InputError("the truth is constant; it cannot be standardised")
    return ((a - a.mean()) / spread).astype(np.float32)


def sample_batch(inputs: np.ndarray, targets: np.ndarray, batch: int, crop: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crops (with flips and quarter turns) of random regions: (B, channels, c, c), (B, 1, c, c).

    Every channel of ``inputs`` (N, channels, H, W) is cropped and turned alike: the modes and,
    for a residual network, its base (the last channel, :func:`emfuse.pipeline.avae.base.with_base`).
    """
    n, _, ny, nx = inputs.shape
    if crop > min(ny, nx) or crop % 2:
        raise InputError(f"crop must be even and at most the region size {min(ny, nx)}, got {crop}")
    xs, ys = [], []
    for _ in range(batch):
        i = int(rng.integers(n))
        y0, x0 = int(rng.integers(ny - crop + 1)), int(rng.integers(nx - crop + 1))
        x = inputs[i, :, y0:y0 + crop, x0:x0 + crop]
        y = targets[i, None, y0:y0 + crop, x0:x0 + crop]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
        if flip:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        xs.append(x)
        ys.append(y)
    return np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ys))


def sample_present(batch: int, n_modes: int, dropout: float, rng: np.random.Generator) -> np.ndarray:
    """Which modes each crop is fused from (batch, n_modes) of 0/1: all, or with probability
    ``dropout`` one of the proper non-empty subsets (uniformly).

    Examples
    --------
    >>> m = sample_present(1000, 3, 0.5, np.random.default_rng(0))
    >>> bool((m.sum(1) >= 1).all()), round(float((m.sum(1) == 3).mean()), 1)
    (True, 0.5)
    """
    subsets = range(1, 2**n_modes - 1)  # bit masks, neither empty nor all
    present = np.ones((batch, n_modes), dtype=np.float32)
    for b in np.flatnonzero(rng.random(batch) < dropout):
        bits = subsets[int(rng.integers(len(subsets)))]
        present[b] = [(bits >> i) & 1 for i in range(n_modes)]
    return present


def start_at_the_base(model: AVAE, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Set a residual network's starting gain ``s`` (the bias of ``g``; its weights are 0) and offset
    ``c`` (``s * base + c``) to the least-squares fit of the targets on the bases (the last channel
    of ``inputs``); returns them.

    The untrained network then returns the best affine map of the base (its decoder starts at 0).
    Fitted, not learnt from ``s = 1``: against targets in the truth's own sign
    (``TrainSettings(orient_to_base=False)``) the best ``s`` may be negative (dark atoms), and Adam,
    moving a parameter by about ``lr`` a step, would need tens of thousands of steps to turn ``s``
    from 1 to -1; against targets turned to the base it sets the scale.
    """
    b = np.asarray(inputs[:, model.cfg.n_modes], dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel()
    spread = b.var()
    scale = float(np.mean((b - b.mean()) * (y - y.mean())) / spread) if spread > 0 else 1.0
    offset = float(y.mean() - scale * b.mean())
    with torch.no_grad():
        model.base_gain.bias.fill_(scale)
        model.base_offset.fill_(offset)
    return scale, offset


def orient_to_base(targets: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Targets (N, H, W) times the sign of their correlation with the bases (N, H, W), region by region.

    Scores are taken after an affine calibration per image, which has no preferred sign; the
    loss has one. Turned to its base's contrast, a target is what the untrained residual network
    already gives, up to a positive scale, in every region, and the decoder only has to add what
    the modes know in that contrast.

    Examples
    --------
    >>> t = np.stack([np.arange(4.0).reshape(2, 2), np.arange(4.0).reshape(2, 2)])
    >>> orient_to_base(t, np.stack([t[0], -t[1]]))[:, 0, 1].tolist()
    [1.0, -1.0]
    """
    y = np.asarray(targets, dtype=np.float64)
    b = np.asarray(bases, dtype=np.float64)
    yc = y - y.mean(axis=(1, 2), keepdims=True)
    bc = b - b.mean(axis=(1, 2), keepdims=True)
    sign = np.where((yc * bc).sum(axis=(1, 2)) < 0, -1.0, 1.0)
    return (np.asarray(targets) * sign[:, None, None]).astype(np.float32)


def _validation_crops(validation: tuple[np.ndarray, np.ndarray], crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The central crop of every validation region (fixed, so losses compare across steps)."""
    x, y = validation
    c = min(crop, x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2)
    ys, xs = central_crop(x.shape, c)
    return (torch.from_numpy(np.ascontiguousarray(x[:, :, ys, xs])),
            torch.from_numpy(np.ascontiguousarray(y[:, None, ys, xs])))


@torch.no_grad()
def _loss_on(model: AVAE, x: torch.Tensor, y: torch.Tensor, chunk: int = 16) -> float:
    model.eval()
    total = 0.0
    for s in range(0, len(x), chunk):
        out = model(x[s:s + chunk])
        total += float(torch.nn.functional.mse_loss(out.fused, y[s:s + chunk], reduction="sum"))
    model.train()
    return total / y.numel()


def train_avae(
    inputs: Any,
    targets: Any,
    cfg: AVAEConfig | None = None,
    settings: TrainSettings | None = None,
    *,
    validation: tuple[Any, Any] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[AVAE, dict[str, Any]]:
    """Train an AVAE; returns the model (eval mode, best validation weights) and the history.

    Parameters
    ----------
    inputs : array (N, modes, H, W)
        Preprocessed modes in [0, 1] (:class:`emfuse.pipeline.avae.preprocess.Preprocessing`); for a
        residual network (``cfg.base``) followed by the base, (N, modes + 1, H, W)
        (:mod:`emfuse.pipeline.avae.base`).
    targets : array (N, H, W)
        Truth of each region, standardised (:func:`standardise`).
    cfg, settings
        Network shape and optimisation (defaults :class:`AVAEConfig`, :class:`TrainSettings`).
    validation : (inputs, targets), optional
        Regions held out for choosing the weights (central crops are scored).
    progress : callable(step, record), optional
        Called after every validation with the step and a record of the losses.

    Returns
    -------
    model : AVAE
    history : dict
        ``train`` (step, recon, kl) every validation interval, ``validation`` (step, mse),
        ``best_step``, ``seconds``, ``settings``, ``config``.
    """
    settings = settings or TrainSettings()
    cfg = cfg or AVAEConfig(n_modes=int(np.shape(inputs)[1]))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    x_all = np.asarray(inputs, dtype=np.float32)
    y_all = np.asarray(targets, dtype=np.float32)
    if x_all.ndim != 4 or y_all.shape != (x_all.shape[0], *x_all.shape[2:]):
        raise InputError(f"inputs (N, modes, H, W) and targets (N, H, W) do not match: {x_all.shape}, {y_all.shape}")
    if x_all.shape[1] != cfg.in_channels:
        raise InputError(f"inputs have {x_all.shape[1]} channels, the network takes {cfg.in_channels}"
                         + (" (the modes, then the base: pipeline.avae.base.with_base)" if cfg.has_base else ""))
    if cfg.has_base and settings.orient_to_base:
        y_all = orient_to_base(y_all, x_all[:, cfg.n_modes])
        if validation is not None:
            vx = np.asarray(validation[0], np.float32)
            validation = (vx, orient_to_base(np.asarray(validation[1], np.float32), vx[:, cfg.n_modes]))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = AVAE(cfg)
    if cfg.has_base:
        start_at_the_base(model, x_all, y_all)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    val = _validation_crops((np.asarray(validation[0], np.float32), np.asarray(validation[1], np.float32)),
                            settings.validation_crop) if validation is not None else None
    history: dict[str, Any] = {"train": [], "validation": [], "best_step": None,
                               "settings": asdict(settings), "config": asdict(cfg)}
    best, best_state = np.inf, None
    running = {"recon": 0.0, "kl": 0.0}
    start = time.perf_counter()
    for step in range(1, settings.steps + 1):
        xb, yb = sample_batch(x_all, y_all, settings.batch, settings.crop, rng)
        present = (torch.from_numpy(sample_present(len(xb), cfg.n_modes, settings.mode_dropout, rng))
                   if settings.mode_dropout > 0 else None)
        out = model(torch.from_numpy(xb), present)
        loss, parts = avae_loss(out, torch.from_numpy(yb), settings.beta)
        if settings.best_single_hinge > 0:
            loss = loss + settings.best_single_hinge * best_single_hinge(
                out.fused, torch.from_numpy(xb), torch.from_numpy(yb), present)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        for k in running:
            running[k] += parts[k]
        if step % settings.validate_every == 0 or step == settings.steps:
            n = (step - 1) % settings.validate_every + 1
            record = {"step": step, **{k: v / n for k, v in running.items()}}
            running = {"recon": 0.0, "kl": 0.0}
            history["train"].append(record)
            if val is not None:
                mse = _loss_on(model, *val)
                history["validation"].append({"step": step, "mse": mse})
                record["validation_mse"] = mse
                if mse < best:
                    best, best_state = mse, copy.deepcopy(model.state_dict())
                    history["best_step"] = step
            if progress is not None:
                progress(step, record)
    if best_state is not None:
        model.load_state_dict(best_state)
    history["seconds"] = time.perf_counter() - start
    return model.eval(), history
