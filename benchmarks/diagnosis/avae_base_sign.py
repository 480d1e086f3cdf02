"""How often a truth-free reference tells the sign of the HRTEM base against the truth (issue 18).

The residual AVAE's targets are turned to its base's contrast region by region (``orient_to_base``):
in a region whose (Wiener-filtered) HRTEM is inverted against the projected potential, the target
is the negated truth, so BF's thickness contrast must be added with the opposite sign from the
other regions, and the network cannot tell which from the base alone. This counts, on the
randomised simulator's regions, how often the sign of the base's correlation with DF (bright where
the specimen scatters more) or with the inverted BF, whole-image or low-passed, agrees with the sign
of its correlation with the truth: a truth-free orientation that would let BF and DF enter with a
fixed sign.

    python benchmarks/diagnosis/avae_base_sign.py --seed 11 --n 540
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emfuse.pipeline.avae.base import load_base_network, region_bases  # noqa: E402
from emfuse.pipeline.avae.evaluate import prepare_regions  # noqa: E402
from emfuse.pipeline.synth.tem_modes import MODES, simulate_regions  # noqa: E402


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--n", type=int, default=540)
    p.add_argument("--sigma", type=float, default=4.0, help="low-pass sigma in px")
    args = p.parse_args(argv)
    prepared = prepare_regions(simulate_regions(args.n, (192, 192), args.seed, randomised=True),
                               flat_reference=True)
    bases, _ = region_bases(prepared.hrtem, load_base_network("wiener"))
    bf, df = MODES.index("bf"), MODES.index("df")
    rows = []
    for i in range(args.n):
        base, truth = bases[i], prepared.truths[i]
        x_bf, x_df = prepared.inputs[i, bf], prepared.inputs[i, df]
        low = lambda a: gaussian_filter(a, args.sigma)  # noqa: E731
        rows.append((prepared.materials[i], np.sign(corr(base, truth)),
                     np.sign(corr(base, x_df)), np.sign(corr(base, -x_bf)),
                     np.sign(corr(low(base), low(x_df))), np.sign(corr(low(base), -low(x_bf))),
                     np.sign(corr(x_df, truth)), np.sign(corr(-x_bf, truth)), abs(corr(base, truth))))
    names = ["df", "-bf", "low df", "low -bf"]
    families = sorted({r[0] for r in rows})
    print(f"{args.n} regions, seed {args.seed}; share where sign(corr(base, ref)) == sign(corr(base, truth))")
    print(f"{'family':<12} {'n':>4} {'inverted':>9} " + " ".join(f"{n:>8}" for n in names)
          + f" {'df~truth':>9} {'-bf~truth':>9}")
    for fam in [*families, "all"]:
        sel = [r for r in rows if fam in ("all", r[0])]
        s_truth = np.array([r[1] for r in sel])
        agree = [np.mean(np.array([r[2 + k] for r in sel]) == s_truth) for k in range(4)]
        print(f"{fam:<12} {len(sel):>4} {np.mean(s_truth < 0):>9.2f} " + " ".join(f"{a:>8.2f}" for a in agree)
              + f" {np.mean([r[6] > 0 for r in sel]):>9.2f} {np.mean([r[7] > 0 for r in sel]):>9.2f}")


if __name__ == "__main__":
    main()
