"""Noise2Noise adaptation on a synthetic movie: held-out score and PSNR against the truth, before and after.

    .venv/bin/python benchmarks/restore_adapt.py [--size 256] [--frames 8] [--dose 20]
        [--lattice-nm 0.3905] [--sigma-nm 0.05] [--model default] [--steps 200] [--lr 1e-4]
        [--batch 8] [--patch 64] [--seed 0] [--json out.json]

Draws a drifting HR-STEM movie (:func:`emfuse.pipeline.synth.movie.make_movie`, 0.02 nm pixels: the
default lattice has columns 19.5 px apart; ``--lattice-nm 0.1 --sigma-nm 0.025`` gives 5 px,
where the default model erases lattices), adapts ``--model`` to it with
:func:`emfuse.pipeline.restore.adapt.adapt_model` (drift measured on the raw frames), and prints the
held-out-frame scores, the decision, the time per step, and the PSNR of every training frame
restored by the original and by the adapted model against its noise-free frame (mean over
the frames). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.restore import load_model
from emfuse.pipeline.restore.adapt import adapt_model
from emfuse.pipeline.restore.inference import restore
from emfuse.pipeline.synth.movie import make_movie


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dose", type=float, default=20.0)
    ap.add_argument("--lattice-nm", type=float, default=0.3905)
    ap.add_argument("--sigma-nm", type=float, default=0.05)
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    movie = make_movie((args.size, args.size), n_frames=args.frames, dose=args.dose, lattice_nm=args.lattice_nm,
                       column_sigma_nm=args.sigma_nm, seed=args.seed)
    model = load_model(args.model)
    start = time.perf_counter()
    result = adapt_model(model, movie.movie, steps=args.steps, lr=args.lr, batch=args.batch, patch=args.patch,
                         seed=args.seed)
    seconds = time.perf_counter() - start
    frames = result.frames_train
    truth = movie.true_movie[frames]

    def mean_psnr(net: torch.nn.Module) -> float:
        return float(np.mean([psnr(r, t) for r, t in zip(restore(movie.movie[frames], net), truth)]))

    out = {**{k: v for k, v in result.record().items() if k != "drift_px"},
           "drift_error_px": float(np.abs(result.drift - movie.drift).max()),
           "psnr_raw_db": float(np.mean([psnr(r, t) for r, t in zip(movie.movie[frames], truth)])),
           "psnr_before_db": mean_psnr(model), "psnr_after_db": mean_psnr(result.adapted),
           "wall_seconds": round(seconds, 1), "load_average": os.getloadavg()[0], "args": vars(args)}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
