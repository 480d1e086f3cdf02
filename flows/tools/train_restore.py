"""``emfuse train-restore``: train or fine-tune a restoration network on synthetic pairs.

A thin layer over :func:`emfuse.pipeline.restore.train.train`: it turns the command-line options
into a :class:`~emfuse.pipeline.restore.train.TrainConfig`, runs the loop (tqdm bar, checkpoints
and a JSON-lines log in the output directory) and returns a summary. The trained model is
``OUT/model.safetensors``, usable at once with ``emfuse restore --model OUT/model.safetensors``.

Example
-------
>>> summary = run_training("runs/hrstem", steps=2000, init="r_em:sfr_hrstem")  # doctest: +SKIP
>>> summary["model"]  # doctest: +SKIP
'runs/hrstem/model.safetensors'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emfuse.errors import InputError

SCRATCH = "scratch"


def training_config(
    *,
    steps: int,
    batch: int,
    patch: int,
    modality: str,
    resolution: str = "high",
    init: str = SCRATCH,
    config: str | None = None,
    lr: float | None = None,
    adversarial: bool = False,
    checkpoint_every: int = 100,
    seed: int = 0,
    data: str = "specimens",
    hold_out: bool = False,
    balance: str = "mean",
    noise_only: float = 0.0,
    max_jitter_angstrom: float | None = None,
) -> Any:
    """The :class:`TrainConfig` for the command-line options; ValueError on conflicting ones.

    ``config`` (``small``, ``medium``, ``paper``) picks the architecture when training from scratch;
    fine-tuning (``init`` a model name or file) keeps the loaded model's architecture, so
    ``config`` must then be left out. The learning rate defaults to 1e-3 from scratch and
    1e-4 when fine-tuning. ``hold_out`` (data ``scenes`` only) leaves
    :data:`emfuse.pipeline.synth.scenes.HELD_OUT` out of training. ``balance`` is how a batch's
    images count in the loss (``mean`` or ``relative``; :class:`TrainConfig`); ``noise_only`` the
    fraction of pairs from a clean scan, the detector's noise their only distortion (data ``scenes``);
    ``max_jitter_angstrom`` caps the S(T)EM scan jitter in Å (data ``scenes``).

    Example
    -------
    >>> training_config(steps=10, batch=2, patch=64, modality="tem").model
    'small'
    >>> training_config(steps=10, batch=2, patch=64, modality="stem", init="r_em:sfr_hrstem").lr
    0.0001
    """
    from emfuse.pipeline.restore.train import MODEL_PRESETS, TrainConfig
    from emfuse.pipeline.synth.scenes import held_out

    if hold_out and data != "scenes":
        raise InputError("--hold-out applies to --data scenes (the broad distribution) only")
    if noise_only and data != "scenes":
        raise InputError("--noise-only applies to --data scenes (the broad distribution) only")
    if max_jitter_angstrom is not None and data != "scenes":
        raise InputError("--max-jitter-angstrom applies to --data scenes (the broad distribution) only")
    if init != SCRATCH:
        if config is not None:
            raise InputError(f"--config {config} applies to training from scratch; --init {init} brings its "
                             "own architecture (leave --config out to fine-tune)")
        if not init.startswith("r_em:") and not Path(init).is_file():
            raise InputError(f"--init {init!r} is neither 'scratch', a published model (r_em:sfr_hrstem, ...) "
                             "nor an existing .safetensors file")
    config = config or "small"
    if config not in ("small", "medium", "paper"):
        raise InputError(f"--config must be small, medium or paper, got {config!r} "
                         f"(known presets: {sorted(MODEL_PRESETS)})")
    if lr is None:
        lr = 1e-3 if init == SCRATCH else 1e-4
    return TrainConfig(
        steps=steps, batch=batch, patch=patch, modality=modality, resolution=resolution, model=config,
        init=init, lr=lr, lr_final=min(lr, 2e-5) if init == SCRATCH else lr / 10, adversarial=adversarial,
        checkpoint_every=checkpoint_every, seed=seed, data=data, balance=balance, noise_only=noise_only,
        max_jitter_angstrom=max_jitter_angstrom,
        exclude=list(held_out("all")) if hold_out else [],
    ).checked()


def default_data_workers(device: str, cores: int | None = None) -> int:
    """Data workers when none are asked for: none on the CPU (the training's own threads use the
    cores, and a worker would compete with them), and on a GPU all cores but two, at most 8 (without
    workers the GPU waits for pairs made with NumPy, one batch at a time).

    Examples
    --------
    >>> default_data_workers("cpu", cores=16), default_data_workers("cuda", cores=16), default_data_workers("cuda", cores=2)
    (0, 8, 1)
    """
    if device == "cpu":
        return 0
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(8, cores - 2))


def run_training(
    out: str | os.PathLike,
    *,
    steps: int = 1000,
    batch: int = 8,
    patch: int = 128,
    modality: str = "stem",
    resolution: str = "high",
    init: str = SCRATCH,
    config: str | None = None,
    lr: float | None = None,
    adversarial: bool = False,
    checkpoint_every: int = 100,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    max_minutes: float | None = None,
    progress: bool = True,
    data: str = "specimens",
    hold_out: bool = False,
    data_workers: int | None = None,
    balance: str = "mean",
    noise_only: float = 0.0,
    max_jitter_angstrom: float | None = None,
) -> dict[str, Any]:
    """Train into ``out`` and return a JSON-able summary (paths, steps, last losses).

    Parameters are those of ``emfuse train-restore`` (see :func:`training_config`);
    ``max_minutes`` stops the run (with a checkpoint) after that much wall time; ``data_workers``
    processes make the training pairs ahead of the steps (the weights do not depend on it; default
    :func:`default_data_workers`).
    """
    from emfuse.pipeline.restore.train import train

    cfg = training_config(steps=steps, batch=batch, patch=patch, modality=modality, resolution=resolution,
                          init=init, config=config, lr=lr, adversarial=adversarial,
                          checkpoint_every=checkpoint_every, seed=seed, data=data, hold_out=hold_out,
                          balance=balance, noise_only=noise_only,
                          max_jitter_angstrom=max_jitter_angstrom)
    result = train(out, cfg, resume=resume, device=device, progress=progress,
                   max_seconds=None if max_minutes is None else 60.0 * max_minutes,
                   data_workers=default_data_workers(device) if data_workers is None else data_workers)
    return {
        "out": str(result.out), "model": str(result.model_path),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "step": result.step, "steps": cfg.steps, "seconds": result.seconds,
        "last": result.last, "val": result.val,
    }


#: per-image std floor of the shipped own models (raw units): small enough that any units work
#: (restoring ``a x + b`` gives ``a restore(x) + b`` for every image with std above it); the
#: published 0.1 assumes counts, and would shrink the contrast of an image scaled to [0, 1]
PACKAGED_STD_FLOOR = 1e-6


def package_model(run: str | os.PathLike, dest: str | os.PathLike, *, description: str,
                  std_floor: float = PACKAGED_STD_FLOOR, init_file: str | os.PathLike | None = None) -> Path:
    """Write the trained ``run/model.safetensors`` as a package model at ``dest``.

    The header keeps the architecture (with ``std_floor`` set to ``std_floor``; the floor is
    not a learned weight, and in training the images' std was always far above it), the run's
    ``train_config.json``, the licence, ``description`` and, with ``init_file`` (the model the run
    was fine-tuned from, when its file has since been replaced), that model's own header as
    ``init_model``: the chain of trainings stays readable from the shipped file.

    Example
    -------
    >>> package_model("runs/stem-high", "pipeline/restore/models/stem-high.safetensors",
    ...               description="HR-STEM")  # doctest: +SKIP
    """
    import dataclasses
    import json

    from emfuse.pipeline.restore import load_model, save_model

    run = Path(run)
    model = load_model(run / "model.safetensors")
    model.cfg = dataclasses.replace(model.cfg, std_floor=std_floor)
    model.standardise.floor = std_floor
    config = json.loads((run / "train_config.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    last_val = next((row["val"] for row in reversed(log) if "val" in row), None)
    metadata = {"description": description, "train_config": json.dumps(config),
                "validation": json.dumps(last_val), "license": "BSD-3-Clause (emfuse); trained on synthetic data only"}
    if init_file is not None:
        from safetensors import safe_open

        with safe_open(str(init_file), "pt") as f:
            metadata["init_model"] = json.dumps(f.metadata())
    return save_model(model, dest, metadata=metadata)
