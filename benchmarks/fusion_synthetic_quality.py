"""Fusion quality on synthetic spectrum images with ground truth.

For three specimen kinds and several doses, integrates the maps from the
spectrum image, fuses them with the given parameters (default: the embedded
defaults) and prints the NRMSE (after an affine fit) of raw and fused maps
against the truth, mean over elements.

    .venv/bin/python benchmarks/fusion_synthetic_quality.py [--size 256] [--doses 5 10 40]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from emfuse.pipeline.fusion import FusionParams, fuse
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image

SPECIMENS = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--doses", type=float, nargs="+", default=[5, 10, 40])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lambda-chem", type=float, default=FusionParams.lambda_chem)
    parser.add_argument("--lambda-tv", type=float, default=FusionParams.lambda_tv)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'specimen':>10} {'dose':>6} {'NRMSE raw':>10} {'NRMSE fused':>12} {'ratio':>6} {'fuse s':>7}")
    for specimen, elements in SPECIMENS.items():
        for dose in args.doses:
            data = make_spectrum_image((args.size, args.size), elements, specimen=specimen, dose=dose,
                                       seed=args.seed)
            maps = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements)[0])
            start = time.perf_counter()
            result = fuse(data.haadf, maps, data.z, lambda_chem=args.lambda_chem, lambda_tv=args.lambda_tv)
            seconds = time.perf_counter() - start
            raw = float(np.mean([nrmse(m, t) for m, t in zip(maps, data.true_maps)]))
            fused = float(np.mean([nrmse(m, t) for m, t in zip(result.fused, data.true_maps)]))
            rows.append(dict(specimen=specimen, dose=dose, nrmse_raw=raw, nrmse_fused=fused, seconds=seconds))
            print(f"{specimen:>10} {dose:>6g} {raw:>10.3f} {fused:>12.3f} {fused / raw:>6.2f} {seconds:>7.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
