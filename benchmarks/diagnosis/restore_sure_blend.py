"""Diagnosis (issue 13, target c): a SURE-chosen blend of the restored frame with the raw one.

For a restoration ``f`` of a frame ``y = x + n`` with noise covariance ``S``, Stein's unbiased
risk estimate of the blend ``w f(y) + (1 - w) y`` is minimised at
``w* = (tr S - tr(S J_f)) / ||y - f(y)||^2`` (clipped to [0, 1]); ``tr(S J_f)`` is estimated by
a Monte-Carlo probe ``b ~ N(0, S)``: ``<b, f(y + e b) - f(y)> / e``. Here ``S`` is white, its
variance the raw power spectrum's median beyond 0.375 cycles/px (the guard's noise level).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_sure_blend.py [--n 4]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from restore_quality import SETS, network, scored_pairs  # noqa: E402

from emfuse.pipeline.metrics import psnr, ssim  # noqa: E402
from emfuse.pipeline.restore.guard import _radius, guard, power_spectrum  # noqa: E402


def white_variance(raw: np.ndarray) -> float:
    power = power_spectrum(raw)
    return float(np.median(power[_radius(raw.shape) > 0.375]))


def sure_weight(raw: np.ndarray, fn, out: np.ndarray, variance: float, rng, probes: int = 2) -> float:
    """The SURE-optimal blend weight of ``out = fn(raw)`` with ``raw`` for white noise of ``variance``."""
    n = raw.size
    sigma = np.sqrt(variance)
    trace = 0.0
    for _ in range(probes):
        b = rng.normal(0.0, sigma, raw.shape)
        eps = 0.05
        trace += float(np.sum(b * (fn(raw + eps * b) - out)) / eps)
    trace /= probes
    residual = float(np.sum((raw - out) ** 2))
    if residual <= 0:
        return 1.0
    return float(np.clip((n * variance - trace) / residual, 0.0, 1.0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--sets", nargs="*", default=[s for s, v in SETS.items() if v.group != "real"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    net = network(None)

    def pipeline(d):
        return guard(d, net(d))[0]

    rows = []
    for name, level, i, clean, raw in scored_pairs(args.n, args.size, args.sets):
        rng = np.random.default_rng(i)
        out = pipeline(raw)
        var = white_variance(raw)
        w = sure_weight(raw, pipeline, out, var, rng)
        blend = w * out + (1 - w) * raw
        row = {"set": name, "level": level, "i": i, "w": w, "var_rel": var / raw.var()}
        for label, img in (("raw", raw), ("guard", out), ("blend", blend)):
            row[label] = (psnr(img, clean), ssim(img, clean))
        rows.append(row)
        print(f"{name:>14} {level:>12} {i} w {w:.3f} var/var {row['var_rel']:.2e}  "
              + "  ".join(f"{k} {row[k][0]:6.2f}/{row[k][1]:.3f}" for k in ("raw", "guard", "blend")),
              flush=True)
    below = {k: sum(r[k][1] < r["raw"][1] for r in rows) for k in ("guard", "blend")}
    print("images with SSIM below raw:", below, "of", len(rows))
    d = np.array([r["blend"][0] - r["guard"][0] for r in rows])
    print(f"blend - guard PSNR: median {np.median(d):+.2f} dB, min {d.min():+.2f}, max {d.max():+.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
