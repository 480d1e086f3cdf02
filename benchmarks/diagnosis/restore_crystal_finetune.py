"""Fine-tune a restoration model on HR-STEM scenes with the crystal families drawn more often (diagnosis).

The families ``lattice``, ``defects`` and ``interface`` (full-field crystals) are drawn with weight 3,
the others with weight 1 (the held-out families, contrasts and distortions never); a fifth of the
pairs from a clean scan; the scan jitter at most 0.3 Å; from the shipped default model, 2,000 steps
of 8 x 96 px, ``lr`` 2e-4 to 2e-5, seed 13. The data function is passed to
:func:`emfuse.pipeline.restore.train.train` directly (no command-line option draws families by
weight: the runs did not pay, ``docs/methods/restoration.md``, "Fine lattices").

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_crystal_finetune.py OUT \\
        [--steps 2000] [--balance relative|mean]
"""
from __future__ import annotations

import argparse

import numpy as np

from emfuse.pipeline.restore.train import TrainConfig, train
from emfuse.pipeline.synth.scenes import FAMILIES, held_out, make_scene_pair, noise_only_settings

WEIGHTS = {"lattice": 3.0, "defects": 3.0, "interface": 3.0}
CLEAN_SHARE = 0.2


class CrystalHeavy:
    """HR-STEM pairs, the crystal families weighted (a DataFn of ``train``; picklable)."""

    def __call__(self, n, shape, modality, resolution, rng):
        families = [f for f in FAMILIES if f not in held_out("all")]
        p = np.array([WEIGHTS.get(f, 1.0) for f in families])
        p /= p.sum()
        clean = np.empty((n, 1, *shape), np.float32)
        degraded = np.empty_like(clean)
        for i in range(n):
            family = families[int(rng.choice(len(families), p=p))]
            settings = (noise_only_settings("stem", "high", exclude=held_out("all"))
                        if rng.random() < CLEAN_SHARE else None)
            clean[i, 0], degraded[i, 0], _ = make_scene_pair(shape, "stem", "high", rng, exclude=held_out("all"),
                                                             settings=settings, max_jitter_angstrom=0.3,
                                                             family=family)
        return clean, degraded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--balance", choices=["relative", "mean"], default="relative")
    args = ap.parse_args()
    cfg = TrainConfig(steps=args.steps, batch=8, patch=96, modality="stem", resolution="high",
                      init="pipeline/restore/models/default.safetensors", lr=2e-4, lr_final=2e-5,
                      seed=13, checkpoint_every=250, balance=args.balance)
    train(args.out, cfg, data=CrystalHeavy())


if __name__ == "__main__":
    main()
