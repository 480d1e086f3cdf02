"""Does a restoration model fit training's own fine-lattice pairs? (diagnosis)

Two measurements per model:

1. **Pure cosine lattices** (a 2-D cosine of contrast 0.25 on a 128 px frame, Poisson noise at
   four doses): the output's standard deviation over the truth's, by period. 1: kept; near 0:
   flattened into the mean.
2. **Training's own pairs**: S(T)EM high-resolution scenes of the ``lattice`` family with periods
   below 8 px, distorted by training's full table (held-out families and distortions never drawn,
   the jitter at most 0.3 Å as the shipped model was trained), seeds no training or benchmark
   draws. For each pair, the training loss (``generator_loss``, relative balance off, the loop's
   standardisation) of the model's output, of the raw frame itself and of a flat frame at the raw
   mean, median per period band and dose band; and the share of pairs where the model beats the
   raw frame. A model whose loss is near the flat frame's and above the raw frame's has not fitted
   those pairs: keeping the lattice would have lowered its own training loss.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_fine_lattice_fit.py \\
        [--model NAME=PATH ...] [--n 400]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from emfuse.pipeline.restore import load_model
from emfuse.pipeline.restore.losses import generator_loss, standardise_pair
from emfuse.pipeline.synth.scenes import held_out, make_scene_pair

SEED = 7_773_000  # no training (default_rng([seed, 0, step])) or benchmark seed
PERIODS = (3, 4, 5, 6, 8, 12, 20)
DOSES = (5, 50, 500, 5000)


def cosine_table(model: torch.nn.Module) -> list[str]:
    """Output std / truth std for 2-D cosine lattices, by period (rows) and dose (columns)."""
    y, x = np.mgrid[:128, :128]
    rng = np.random.default_rng(SEED)
    lines = ["period px  " + " ".join(f"dose {d:<5d}" for d in DOSES)]
    for period in PERIODS:
        ratios = []
        for dose in DOSES:
            truth = dose * (0.5 + 0.25 * np.cos(2 * np.pi * x / period) + 0.25 * np.cos(2 * np.pi * y / period))
            raw = rng.poisson(truth).astype(np.float32)
            with torch.no_grad():
                out = model(torch.from_numpy(raw)[None, None])[0, 0].numpy()
            ratios.append(out.std() / truth.std())
        lines.append(f"{period:9d}  " + " ".join(f"{r:10.2f}" for r in ratios))
    return lines


def _band(value: float, edges: tuple[float, ...], names: tuple[str, ...]) -> str:
    return names[int(np.searchsorted(edges, value, side="right"))]


def pair_table(model: torch.nn.Module, n: int) -> list[str]:
    """Median training loss of the output, the raw frame and a flat frame on fine-lattice pairs."""
    rng = np.random.default_rng(SEED + 1)
    cells: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    for _ in range(n):
        clean, raw, info = make_scene_pair((96, 96), "stem", "high", rng, exclude=held_out("all"),
                                           max_jitter_angstrom=0.3, family="lattice")
        if info["spacing_px"] >= 8:
            continue
        period = _band(info["spacing_px"], (4.0, 6.0), ("2-4 px", "4-6 px", "6-8 px"))
        dose = _band(info["distortion"]["dose"], (20.0, 150.0), ("dose < 20", "dose 20-150", "dose >= 150"))
        c, r = torch.from_numpy(clean)[None, None], torch.from_numpy(raw)[None, None]
        with torch.no_grad():
            out = model(r)
        min_std = 0.2 * r.std(dim=(-2, -1), keepdim=True, unbiased=False)
        losses = [float(generator_loss(*standardise_pair(y, c, min_std=min_std))[0])
                  for y in (out, r, torch.full_like(r, float(r.mean())))]
        cells[period, dose].append((*losses, float(out.std() / c.std())))
    lines = [f"{'period':8s} {'dose':12s} {'n':>3s} {'model':>6s} {'raw':>6s} {'flat':>6s} {'std ratio':>9s} {'model < raw':>11s}"]
    for (period, dose), rows in sorted(cells.items()):
        a = np.array(rows)
        med = np.median(a, axis=0)
        lines.append(f"{period:8s} {dose:12s} {len(a):3d} {med[0]:6.2f} {med[1]:6.2f} {med[2]:6.2f} {med[3]:9.2f} "
                     f"{100 * np.mean(a[:, 0] < a[:, 1]):10.0f}%")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--n", type=int, default=400, help="lattice pairs drawn (about 40 %% have periods below 8 px)")
    args = ap.parse_args()
    models = {"default": load_model()}
    for item in args.model:
        name, path = item.split("=", 1)
        models[name] = load_model(path)
    for name, model in models.items():
        print(f"== {name}: pure cosine lattices, output std / truth std")
        print("\n".join(cosine_table(model)))
        print(f"== {name}: training's fine-lattice pairs (full table), median training loss")
        print("\n".join(pair_table(model, args.n)))


if __name__ == "__main__":
    main()
