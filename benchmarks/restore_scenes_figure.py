"""Figure of the broad training distribution: one column per family, clean over distorted.

    .venv/bin/python benchmarks/restore_scenes_figure.py [--out docs/figures/restore/scenes.png]

Rows: S(T)EM HAADF, S(T)EM BF, S(T)EM ABF (held out of training), TEM phase contrast, SEM
topography, each clean (top) and after the random distortion chain (below); columns: the
families of :mod:`emfuse.pipeline.synth.scenes` (SEM draws only its own four). Seeds are fixed, so
the figure is reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emfuse.pipeline.synth.scenes import _SEM_FAMILIES, FAMILIES, make_scene_pair  # noqa: E402

ROWS = [("stem", "haadf", "high"), ("stem", "bf", "high"), ("stem", "abf", "high"),
        ("tem", "phase", "high"), ("sem", "topography", "low")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/restore/scenes.png"))
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    fig, axes = plt.subplots(2 * len(ROWS), len(FAMILIES), figsize=(2 * len(FAMILIES), 2 * 2 * len(ROWS)))
    for r, (modality, contrast, resolution) in enumerate(ROWS):
        for c, family in enumerate(FAMILIES):
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            for ax in (top, bottom):
                ax.set_axis_off()
            if modality == "sem" and family not in _SEM_FAMILIES:
                continue
            rng = np.random.default_rng([r, c, 7])
            clean, noisy, info = make_scene_pair((args.size, args.size), modality, resolution, rng,
                                                 family=family, contrast=contrast)
            top.imshow(clean, cmap="gray")
            bottom.imshow(noisy, cmap="gray")
            top.set_title(f"{family}\n{modality} {contrast}, {info['spacing_px']:.1f} px", fontsize=7)
            bottom.set_title(f"dose {info['distortion']['dose']:.0f}", fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60)
    print(args.out)


if __name__ == "__main__":
    main()
