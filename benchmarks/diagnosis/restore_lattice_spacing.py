"""Does a restoration model keep a crystal lattice, by the lattice's period in pixels?

Draws S(T)EM HAADF scenes of the ``lattice`` family (training's family, high resolution) with
seeds that no training or benchmark uses, distorts each at a fixed dose either from a clean scan
(the detector's noise alone, ``scenes.noise_only_settings``) or with training's full table, runs
each model and reports, per band of the lattice period, the median PSNR of the raw frame and of
the output, and the median ratio of the output's standard deviation to the truth's (1: the lattice's
contrast kept; near 0: the lattice flattened into its mean).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_lattice_spacing.py \\
        [--model NAME=PATH ...] [--n 60] [--dose 500] [--table clean|full]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.restore import load_model
from emfuse.pipeline.synth.distortions import Draw, random_distortion
from emfuse.pipeline.synth.scenes import make_scene, noise_only_settings, training_settings

SEED = 7_770_000  # no training (default_rng([seed, 0, step])) or benchmark seed (1e6 + offset + i)
BANDS = ((2, 4), (4, 6), (6, 10), (10, 16), (16, 40))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--dose", type=float, default=500.0)
    ap.add_argument("--table", choices=["clean", "full"], default="clean")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    models = {"default": load_model()}
    for item in args.model:
        name, path = item.split("=", 1)
        models[name] = load_model(path)
    settings = noise_only_settings if args.table == "clean" else training_settings
    table = dict(settings("stem", "high"))
    table["dose"] = Draw(low=args.dose, high=args.dose)
    rows = []
    for k in range(args.n):
        rng = np.random.default_rng(SEED + k)
        image, info = make_scene((128, 128), "stem", "high", rng, family="lattice", contrast="haadf")
        raw, _ = random_distortion(image, "stem", rng, resolution="high", settings=table)
        truth = args.dose * image
        row = {"spacing_px": info["spacing_px"], "raw": psnr(raw, truth)}
        with torch.no_grad():
            x = torch.from_numpy(raw.astype(np.float32))[None, None]
            for name, model in models.items():
                out = model(x)[0, 0].double().numpy()
                row[name] = psnr(out, truth)
                row[name + "_std"] = float(out.std() / truth.std())
        rows.append(row)
    print(f"table {args.table}, dose {args.dose:g}, n {args.n}: median PSNR dB (output std / truth std)")
    print(f"{'period px':>10s} {'n':>3s} {'raw':>7s} " + " ".join(f"{m:>16s}" for m in models))
    for lo, hi in BANDS:
        band = [r for r in rows if lo <= r["spacing_px"] < hi]
        if not band:
            continue
        cells = " ".join(f"{np.median([r[m] for r in band]):7.2f} ({np.median([r[m + '_std'] for r in band]):.2f})"
                         for m in models)
        print(f"{lo:4d}-{hi:<5d} {len(band):3d} {np.median([r['raw'] for r in band]):7.2f} {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": args.table, "dose": args.dose, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
