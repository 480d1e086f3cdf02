"""Training and fine-tuning of the restoration networks on pairs made on the fly.

Every step draws a fresh batch of (clean, distorted) pairs from a data function (default
:func:`emfuse.pipeline.synth.restore_specimens.make_batch`: random specimens and the physical
distortion models), runs the :class:`~emfuse.pipeline.restore.cgrdn.CGRDN`, and takes one Adam
step on the loss of :mod:`emfuse.pipeline.restore.losses` (optionally against the patch
discriminator of :mod:`emfuse.pipeline.restore.discriminator`, relativistic average GAN).

Reproducible by construction: the batch of step ``k`` comes from
``numpy.random.default_rng([seed, 0, k])`` and the weights are initialised from
``torch.manual_seed(seed)``, so a run stopped and resumed from a checkpoint gives the same
weights, bit for bit, as one that was never stopped (same device and thread count).

Files in the output directory:

``checkpoint-STEP.safetensors``
    model, discriminator and both optimisers' tensors, the torch RNG state; the step, the
    configuration and the optimisers' scalar settings as JSON in the header metadata. No
    pickles. The last ``keep`` checkpoints are kept.
``model.safetensors``
    the trained generator, readable by :func:`emfuse.pipeline.restore.load_model`.
``train_config.json``, ``train_log.jsonl``
    the configuration, and one JSON line per step (losses, learning rate, seconds) plus
    ``"val"`` lines with the loss and PSNR on a fixed validation batch.

Examples
--------
>>> import tempfile
>>> cfg = TrainConfig(steps=2, batch=2, patch=32, model="tiny", checkpoint_every=1)
>>> result = train(tempfile.mkdtemp(), cfg, progress=False)  # doctest: +SKIP
>>> result.step  # doctest: +SKIP
2
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InputError, OutputNotWritable
from ..weights_io import save_safetensors
from .cgrdn import CGRDN, CGRDNConfig
from .discriminator import DiscriminatorConfig, PatchDiscriminator
from .losses import LossWeights, generator_loss, ragan_losses, standardise_pair

__all__ = [
    "MODEL_PRESETS",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "latest_checkpoint",
    "learning_rate",
    "train",
]

log = logging.getLogger(__name__)

#: Architectures by name: ``paper`` is the published r_em CGRDN (7.0 M parameters);
#: ``small`` the project's default model (0.18 M parameters, trainable on a CPU); ``medium``
#: (1.46 M parameters, 5.8 MB of weights) for a GPU session of minutes; ``tiny`` for tests.
MODEL_PRESETS: dict[str, CGRDNConfig] = {
    "paper": CGRDNConfig(),
    "medium": CGRDNConfig(features=64, growth=32, groups=3, blocks=3, layers=4),
    "small": CGRDNConfig(features=32, growth=16, groups=2, blocks=2, layers=4),
    "tiny": CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2),
}
MODALITIES = ("stem", "tem")
SCENE_MODALITIES = ("stem", "tem", "sem", "all")
DATA_SOURCES = ("specimens", "scenes")  # emfuse.pipeline.synth: restore_specimens (HR-STEM columns) or scenes (broad)
RESOLUTIONS = ("high", "low")
BALANCES = ("mean", "relative")  # how a batch's images count in the loss (losses.generator_loss)
_CKPT = re.compile(r"checkpoint-(\d+)\.safetensors$")
_FORMAT = "emfuse-train-1"

#: ``data(n, (H, W), modality, resolution, rng) -> (clean, distorted)``, float32 (n, 1, H, W)
DataFn = Callable[[int, tuple[int, int], str, str, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. Defaults: the ``small`` model on HR-STEM from scratch.

    Parameters
    ----------
    steps
        Total optimiser steps (a resumed run continues up to this number).
    batch, patch
        Pairs per step and their size (``patch`` x ``patch`` pixels, even).
    modality, resolution
        Which distortion models and specimens: ``stem``/``tem``, ``high``/``low``.
    model
        ``"scratch"`` training: a :data:`MODEL_PRESETS` name or a :class:`CGRDNConfig` dict.
    init
        ``"scratch"`` (random weights, architecture ``model``), a published network
        (``"r_em:sfr_hrstem"``, ...) or a ``.safetensors`` file from
        :func:`emfuse.pipeline.restore.save_model` to fine-tune.
    lr, lr_final, warmup
        Adam learning rate: linear warm-up over ``warmup`` steps, then a cosine decay to
        ``lr_final``. ``betas``, ``adam_eps``: Adam's other settings.
    weights
        :class:`~emfuse.pipeline.restore.losses.LossWeights` as a dict.
    adversarial
        Also train a :class:`~emfuse.pipeline.restore.discriminator.PatchDiscriminator` (RaGAN);
        its loss enters with ``weights["adversarial"]`` (set to 0.005 when left at 0).
    grad_clip
        Clip the generator's gradient norm to this (None: no clipping).
    balance
        How the images of a batch count in the loss: ``"mean"`` (by the size of their errors)
        or ``"relative"`` (each by its relative error, so high-dose images are not drowned
        by low-dose ones; see :func:`~emfuse.pipeline.restore.losses.generator_loss`).
    min_std_fraction
        Losses are computed in the target's standard units (per image), with the std at
        least this fraction of the distorted input's std (see
        :func:`~emfuse.pipeline.restore.losses.standardise_pair`).
    seed
        Seeds the weights and every batch.
    checkpoint_every, keep
        Write a checkpoint every so many steps (and at the end); keep the last ``keep``.
    val_size
        Pairs in the fixed validation batch (0: none), evaluated at every checkpoint.
    noise_only
        With data ``scenes``: the fraction of pairs whose only distortion is the detector's
        noise, a clean scan (:func:`emfuse.pipeline.synth.scenes.noise_only_settings`). The
        validation batch is drawn the same way.
    max_jitter_angstrom
        With data ``scenes``: the S(T)EM scan jitter at most this many Å (None: the tables'
        amplitudes in pixels; :func:`emfuse.pipeline.synth.scenes.make_scene_pair`).

    Examples
    --------
    >>> TrainConfig.from_dict(TrainConfig(steps=5).to_dict()).steps
    5
    """

    steps: int = 1000
    batch: int = 8
    patch: int = 128
    modality: str = "stem"
    resolution: str = "high"
    model: str | dict = "small"
    init: str = "scratch"
    lr: float = 1e-3
    lr_final: float = 2e-5
    warmup: int = 50
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weights: dict = field(default_factory=lambda: LossWeights().to_dict())
    adversarial: bool = False
    discriminator: dict = field(default_factory=lambda: DiscriminatorConfig().to_dict())
    d_lr: float = 1e-4
    grad_clip: float | None = 1.0
    min_std_fraction: float = 0.2
    balance: str = "mean"
    seed: int = 0
    checkpoint_every: int = 100
    keep: int = 2
    val_size: int = 8
    data: str = "specimens"
    exclude: list = field(default_factory=list)
    noise_only: float = 0.0
    max_jitter_angstrom: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d).checked()

    def checked(self) -> TrainConfig:
        """Self, after checking every option (ValueError naming the bad one and the fix)."""

        def positive_int(name: str, value: Any, low: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")

        positive_int("steps", self.steps)
        positive_int("batch", self.batch)
        positive_int("patch", self.patch, 16)
        if self.patch % 16:
            raise InputError(f"patch must be a multiple of 16 (the largest whitening window), got {self.patch}")
        positive_int("checkpoint_every", self.checkpoint_every)
        positive_int("keep", self.keep)
        positive_int("warmup", self.warmup, 0)
        positive_int("val_size", self.val_size, 0)
        positive_int("seed", self.seed, 0)
        if self.data not in DATA_SOURCES:
            raise InputError(f"data must be one of {DATA_SOURCES}, got {self.data!r}")
        modalities = SCENE_MODALITIES if self.data == "scenes" else MODALITIES
        resolutions = (*RESOLUTIONS, "all") if self.data == "scenes" else RESOLUTIONS
        if self.modality not in modalities:
            raise InputError(f"modality must be one of {modalities} with data {self.data!r}, got {self.modality!r}")
        if self.resolution not in resolutions:
            raise InputError(f"resolution must be one of {resolutions} with data {self.data!r}, got {self.resolution!r}")
        if self.exclude and self.data != "scenes":
            raise InputError("exclude (held-out families) applies to data 'scenes' only")
        if not (isinstance(self.noise_only, (int, float)) and 0 <= self.noise_only <= 1):
            raise InputError(f"noise_only must be a fraction in [0, 1], got {self.noise_only!r}")
        if self.max_jitter_angstrom is not None:
            if not (isinstance(self.max_jitter_angstrom, (int, float)) and self.max_jitter_angstrom > 0):
                raise InputError(f"max_jitter_angstrom must be a positive number of Å, got {self.max_jitter_angstrom!r}")
            if self.data != "scenes":
                raise InputError("max_jitter_angstrom applies to data 'scenes' only (their scenes have a pixel size)")
        if self.noise_only and self.data != "scenes":
            raise InputError("noise_only (pairs from a clean scan) applies to data 'scenes' only")
        for name in ("lr", "lr_final", "d_lr", "adam_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0 <= self.min_std_fraction < 10:
            raise InputError(f"min_std_fraction must be in [0, 10), got {self.min_std_fraction!r}")
        if self.balance not in BALANCES:
            raise InputError(f"balance must be one of {BALANCES}, got {self.balance!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InputError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if isinstance(self.model, str):
            if self.model not in MODEL_PRESETS:
                raise InputError(f"model must be one of {sorted(MODEL_PRESETS)} or a CGRDN config dict, got {self.model!r}")
        else:
            CGRDNConfig.from_dict(self.model)
        LossWeights.from_dict(self.weights)
        DiscriminatorConfig.from_dict(self.discriminator)
        if not isinstance(self.init, str) or not self.init:
            raise InputError(f"init must be 'scratch', a model name or a path, got {self.init!r}")
        return self

    def model_config(self) -> CGRDNConfig:
        """The architecture trained from scratch."""
        return MODEL_PRESETS[self.model] if isinstance(self.model, str) else CGRDNConfig.from_dict(self.model)

    def loss_weights(self) -> LossWeights:
        w = LossWeights.from_dict(self.weights)
        if self.adversarial and not w.adversarial:
            w = replace(w, adversarial=0.005)
        return w


@dataclass
class TrainResult:
    """Where a run ended: its last step, files and last logged values."""

    step: int
    out: Path
    model_path: Path
    checkpoint: Path | None
    seconds: float
    last: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up, then cosine to ``lr_final``.

    Examples
    --------
    >>> cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, lr_final=1e-5)
    >>> learning_rate(cfg, 0), learning_rate(cfg, 9), round(learning_rate(cfg, 99), 8)
    (0.0001, 0.001, 1e-05)
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(cfg.steps - 1 - cfg.warmup, 1)
    t = min((step - cfg.warmup) / span, 1.0)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * t))


def _resolve_device(device: str | torch.device | None) -> torch.device:
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device must be cpu or cuda, got {device!r}")
    return dev


def _initial_model(cfg: TrainConfig) -> CGRDN:
    """The generator before the first step: random (seeded) or loaded weights."""
    if cfg.init == "scratch":
        torch.manual_seed(cfg.seed)
        return CGRDN(cfg.model_config())
    from . import load_model

    try:
        model = load_model(cfg.init)
    except ImportError as exc:  # tk-r-em not installed
        raise InputError(str(exc)) from exc
    return model.train()


def _batch(data: DataFn, cfg: TrainConfig, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    clean, degraded = data(n, (cfg.patch, cfg.patch), cfg.modality, cfg.resolution, rng)
    clean, degraded = np.asarray(clean, np.float32), np.asarray(degraded, np.float32)
    want = (n, 1, cfg.patch, cfg.patch)
    if clean.shape != want or degraded.shape != want:
        raise ValueError(f"the data function returned {clean.shape} and {degraded.shape}, expected {want} each")
    return torch.from_numpy(clean), torch.from_numpy(degraded)


def _default_data(cfg: TrainConfig | None = None) -> DataFn:
    """The pairs of ``cfg.data``: ``specimens`` (:func:`~emfuse.pipeline.synth.restore_specimens.make_batch`) or
    ``scenes`` (:class:`SceneBatches`). Both can be sent to worker processes (``data_workers``)."""
    if cfg is None or cfg.data == "specimens":
        from ..synth.restore_specimens import make_batch

        return make_batch
    return SceneBatches(tuple(cfg.exclude), cfg.noise_only, cfg.max_jitter_angstrom)


@dataclass(frozen=True)
class SceneBatches:
    """:func:`~emfuse.pipeline.synth.scenes.make_scene_batch` as a :data:`DataFn`: ``modality``
    ``"all"`` draws stem, tem and sem, ``resolution`` ``"all"`` high and low, and ``exclude`` (family,
    contrast and distortion names) is held out. A module-level class, not a closure, so that it
    pickles for the data workers."""

    exclude: tuple[str, ...] = ()
    noise_only: float = 0.0
    max_jitter_angstrom: float | None = None

    def __call__(self, n: int, shape: tuple[int, int], modality: str, resolution: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        from ..synth.scenes import MODALITIES as ALL_MODALITIES
        from ..synth.scenes import make_scene_batch

        mods = ALL_MODALITIES if modality == "all" else modality
        res = RESOLUTIONS if resolution == "all" else resolution
        return make_scene_batch(n, shape, mods, res, rng, exclude=self.exclude, noise_only=self.noise_only,
                                max_jitter_angstrom=self.max_jitter_angstrom)


class _StepBatches(torch.utils.data.Dataset):
    """The training batch of each step, by step number (from ``default_rng([seed, 0, step])``), so
    that any process makes the same batch for a step: the data workers make them ahead of the loop
    and the weights stay bit for bit those of a run without workers."""

    def __init__(self, data: DataFn, cfg: TrainConfig) -> None:
        self.data, self.cfg = data, cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _batch(self.data, self.cfg, self.cfg.batch, np.random.default_rng([self.cfg.seed, 0, step]))


def _one_thread(_worker: int) -> None:
    """In a data worker: one thread, so that the workers do not compete with each other and with
    the training process for the cores (the pairs are made with NumPy, image by image)."""
    torch.set_num_threads(1)


def _step_batches(data: DataFn, cfg: TrainConfig, start: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """The batches of steps ``start`` to ``cfg.steps - 1``, in order: made in this process
    (``workers`` 0) or by ``workers`` spawned processes, each a few steps ahead of the loop."""
    if workers < 0:
        raise InputError(f"data_workers must be >= 0, got {workers}")
    extra: dict[str, Any] = {}
    if workers:
        try:
            pickle.dumps(data)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise InputError(f"the data function cannot be sent to worker processes ({exc}); give a module-level "
                             "function or class instance, or data_workers=0") from exc
        # spawned, not forked: the training process runs threads (torch's, tqdm's) that a fork would copy mid-state
        extra = {"num_workers": workers, "prefetch_factor": 4, "multiprocessing_context": "spawn",
                 "worker_init_fn": _one_thread}
    # a generator of its own: the loader draws a seed for its workers, which must not move the global
    # torch RNG (saved in the checkpoints, and a resumed run makes one loader more than a whole run)
    return torch.utils.data.DataLoader(_StepBatches(data, cfg), batch_size=None, sampler=range(start, cfg.steps),
                                       pin_memory=pin, generator=torch.Generator(), **extra)


def evaluate(model: torch.nn.Module, clean: torch.Tensor, degraded: torch.Tensor,
             weights: LossWeights | None = None) -> dict[str, float]:
    """Loss (standardised units) and mean PSNR (dB, range of each clean image) on one batch.

    Examples
    --------
    >>> net = CGRDN(MODEL_PRESETS["tiny"])
    >>> c = torch.rand(2, 1, 32, 32); r = evaluate(net, c, c + 0.1 * torch.randn_like(c))
    >>> sorted(r)
    ['loss', 'psnr']
    """
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean, degraded = clean.to(dev), degraded.to(dev)
        out = model(degraded)
        min_std = 0.2 * degraded.std(dim=(-2, -1), keepdim=True, unbiased=False)
        total, _ = generator_loss(*standardise_pair(out, clean, min_std=min_std), weights)
        mse = (out - clean).square().mean(dim=(1, 2, 3))
        rng = clean.amax(dim=(1, 2, 3)) - clean.amin(dim=(1, 2, 3))
        # metrics.psnr's formula (range of the truth), on the batch's tensors where they are (GPU)
        psnr = 10 * torch.log10(rng.square() / mse.clamp_min(1e-30))
        psnr = psnr[rng > 0]  # a flat target (all vacuum) has no PSNR
    model.train(was_training)
    return {"loss": float(total), "psnr": float(psnr.mean()) if psnr.numel() else float("nan")}


# --- checkpoints ------------------------------------------------------------------------------


def _flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as tensors (``prefix.IDX.KEY``) and JSON (groups, scalars)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, prefix: str) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``out`` (None if there is none).

    Examples
    --------
    >>> import tempfile
    >>> latest_checkpoint(tempfile.mkdtemp()) is None
    True
    """
    found = [(int(m.group(1)), p) for p in Path(out).glob("checkpoint-*.safetensors")
             if (m := _CKPT.search(p.name))]
    return max(found)[1] if found else None


def _save_checkpoint(out: Path, step: int, cfg: TrainConfig, model: CGRDN, opt: torch.optim.Optimizer,
                     disc: PatchDiscriminator | None, opt_d: torch.optim.Optimizer | None) -> Path:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_t, opt_meta = _flatten_optimizer(opt, "opt")
    tensors.update(opt_t)
    meta = {"format": _FORMAT, "step": str(step), "train_config": json.dumps(cfg.to_dict()),
            "model_config": json.dumps(model.cfg.to_dict()), "opt": json.dumps(opt_meta)}
    if disc is not None and opt_d is not None:
        tensors.update({f"disc.{k}": v.detach().cpu().contiguous() for k, v in disc.state_dict().items()})
        d_t, d_meta = _flatten_optimizer(opt_d, "opt_d")
        tensors.update(d_t)
        meta["opt_d"] = json.dumps(d_meta)
    tensors["torch_rng"] = torch.get_rng_state()
    path = out / f"checkpoint-{step:07d}.safetensors"
    save_safetensors(tensors, path, meta)
    old = sorted((int(m.group(1)), p) for p in out.glob("checkpoint-*.safetensors") if (m := _CKPT.search(p.name)))
    for _, p in old[: -cfg.keep]:
        p.unlink(missing_ok=True)
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable checkpoint ({exc}); delete it to resume from an earlier one") from exc
    if meta.get("format") != _FORMAT:
        raise InputError(f"{path}: not an emfuse training checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def _resumable(saved: TrainConfig, cfg: TrainConfig) -> None:
    """Raise unless ``cfg`` continues ``saved`` (only ``steps`` and checkpointing may change)."""
    free = {"steps", "checkpoint_every", "keep"}
    a, b = saved.to_dict(), cfg.to_dict()
    diff = sorted(k for k in a if k not in free and a[k] != b[k])
    if diff:
        shown = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff)
        raise InputError(f"cannot resume with changed options ({shown}); use the checkpoint's options "
                         "or start a new run in another --out directory")


def _rewrite_log(path: Path, upto: int) -> None:
    """Drop log lines beyond the resumed step (they will be written again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= upto]
    path.write_text("".join(line + "\n" for line in keep))


# --- the loop ---------------------------------------------------------------------------------


def train(
    out: str | os.PathLike,
    cfg: TrainConfig | None = None,
    *,
    data: DataFn | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
    data_workers: int = 0,
) -> TrainResult:
    """Train (or fine-tune) a restoration network; checkpoints and logs go to ``out``.

    Parameters
    ----------
    out
        Output directory (created). Without ``resume`` it must hold no checkpoint.
    cfg
        The :class:`TrainConfig` (default: the ``small`` model on HR-STEM).
    data
        ``data(n, (H, W), modality, resolution, rng) -> (clean, distorted)``, float32
        arrays (n, 1, H, W) in the same units; default
        :func:`emfuse.pipeline.synth.restore_specimens.make_batch`.
    resume
        Continue from the last checkpoint in ``out`` (its options must match ``cfg``
        except ``steps``, ``checkpoint_every`` and ``keep``).
    device
        ``"cpu"`` (default) or ``"cuda"``.
    progress
        Show a tqdm progress bar.
    max_seconds
        Stop (with a checkpoint) after this much wall time; resume later to go on.
    data_workers
        Processes that make the training pairs a few steps ahead of the loop (0: made in this
        process, between steps). The weights do not depend on it: each step's pairs come from
        its own seed. On a GPU the pairs, made with NumPy on the CPU, are otherwise most of a
        step's time; give as many workers as spare cores.

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> res = train("runs/stem", TrainConfig(steps=2000))  # doctest: +SKIP
    >>> load_model(res.model_path)  # doctest: +SKIP
    """
    cfg = (cfg or TrainConfig()).checked()
    dev = _resolve_device(device)
    data = data or _default_data(cfg)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create the output directory {out}: {exc.strerror or exc}. "
                                "Choose an output directory you can write (--out).") from exc
    last_ckpt = latest_checkpoint(out)
    if last_ckpt is not None and not resume:
        raise InputError(f"{out} already holds checkpoints ({last_ckpt.name}); pass resume=True (--resume) "
                         "to continue that run, or choose another output directory")
    if resume and last_ckpt is None:
        log.warning("no checkpoint in %s: starting from step 0", out)

    weights = cfg.loss_weights()
    model = _initial_model(cfg)
    disc = opt_d = None
    if cfg.adversarial:
        torch.manual_seed(cfg.seed + 1)
        disc = PatchDiscriminator(DiscriminatorConfig.from_dict(cfg.discriminator))
    start = 0
    saved_meta: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    if resume and last_ckpt is not None:
        tensors, saved_meta = _read_checkpoint(last_ckpt)
        _resumable(TrainConfig.from_dict(json.loads(saved_meta["train_config"])), cfg)
        model = CGRDN(CGRDNConfig.from_dict(json.loads(saved_meta["model_config"])))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if disc is not None:
            disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        start = int(saved_meta["step"])
        torch.set_rng_state(tensors["torch_rng"])
    model = model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)
    if disc is not None:
        disc = disc.to(dev).train()
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999), eps=cfg.adam_eps)
    if saved_meta:
        opt.load_state_dict(_unflatten_optimizer(tensors, json.loads(saved_meta["opt"]), "opt"))
        if opt_d is not None and "opt_d" in saved_meta:
            opt_d.load_state_dict(_unflatten_optimizer(tensors, json.loads(saved_meta["opt_d"]), "opt_d"))
    del tensors

    (out / "train_config.json").write_text(json.dumps(
        {**cfg.to_dict(), "model_config": model.cfg.to_dict(),
         "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")
    log_path = out / "train_log.jsonl"
    _rewrite_log(log_path, start)
    val = None
    if cfg.val_size:
        val = _batch(data, cfg, cfg.val_size, np.random.default_rng([cfg.seed, 1, 0]))

    t0 = time.perf_counter()
    step, last, val_result, ckpt = start, {}, {}, last_ckpt if resume else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train-restore", unit="step", dynamic_ncols=True)
    try:
        batches = _step_batches(data, cfg, start, data_workers, pin=dev.type == "cuda")
        with log_path.open("a") as logf:
            for clean, degraded in batches:
                lr = learning_rate(cfg, step)
                for group in opt.param_groups:
                    group["lr"] = lr
                clean, degraded = clean.to(dev, non_blocking=True), degraded.to(dev, non_blocking=True)
                output = model(degraded)
                min_std = cfg.min_std_fraction * degraded.std(dim=(-2, -1), keepdim=True, unbiased=False)
                ys, ts = standardise_pair(output, clean, min_std=min_std)
                adv = None
                if disc is not None and opt_d is not None:
                    _, cond = standardise_pair(degraded, clean, min_std=min_std)
                    # discriminator step on detached outputs
                    d_loss, _ = ragan_losses(disc(ts, cond), disc(ys.detach(), cond))
                    opt_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    opt_d.step()
                    _, adv = ragan_losses(disc(ts, cond), disc(ys, cond))
                total, terms = generator_loss(ys, ts, weights, adversarial=adv, balance=cfg.balance)
                if not torch.isfinite(total):
                    raise InputError(f"the loss is {float(total)} at step {step}; lower --lr "
                                             "or resume from an earlier checkpoint")
                opt.zero_grad(set_to_none=True)
                total.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                last = {"step": step, "loss": total.item(), **terms, "lr": lr,
                        "seconds": round(time.perf_counter() - t0, 3)}
                if disc is not None:
                    last["d_loss"] = d_loss.item()
                logf.write(json.dumps(last) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.1e}")
                out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                    if val is not None:
                        val_result = {"step": step, "val": evaluate(model, *val, weights)}
                        logf.write(json.dumps(val_result) + "\n")
                        log.info("step %d: validation %s", step, val_result["val"])
                    logf.flush()
                    ckpt = _save_checkpoint(out, step, cfg, model, opt, disc, opt_d)
                if out_of_time:
                    log.warning("stopped after %.0f s at step %d; resume to continue", max_seconds, step)
                    break
    finally:
        if bar is not None:
            bar.close()

    from . import save_model

    model_path = save_model(model.cpu(), out / "model.safetensors", metadata={
        "training": json.dumps({"step": step, "train_config": cfg.to_dict()}),
    })
    return TrainResult(step=step, out=out, model_path=model_path, checkpoint=ckpt,
                       seconds=time.perf_counter() - t0, last=last, val=val_result.get("val", {}))
