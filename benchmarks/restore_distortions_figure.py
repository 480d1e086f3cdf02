"""Figures of the r_em distortion models (docs/methods/restoration.md, "Distortion models").

One panel per distortion, each applied alone (with deliberately strong parameters, so that it
shows) to the same clean image, for S(T)EM and for TEM; the fast-scan PSF for a few parameter
sets; and random training pairs from :func:`emfuse.pipeline.synth.restore_specimens.make_pair`.

    .venv/bin/python benchmarks/restore_distortions_figure.py [--out docs/figures/restore] [--seed 3]

Writes distortions_stem.png, distortions_tem.png, fast_scan_psf.png and training_pairs.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emfuse.pipeline.synth import distortions  # noqa: E402
from emfuse.pipeline.synth.restore_specimens import make_pair, make_specimen  # noqa: E402

SHAPE = (160, 160)


def _panels_stem(clean: np.ndarray, dose: float, seed: int) -> list[tuple[str, np.ndarray]]:
    def rng():
        return np.random.default_rng(seed)

    counts = dose * clean
    return [
        ("clean (expected counts)", counts),
        (f"shot noise, dose {dose:g}", distortions.shot_noise(clean, dose, rng())),
        ("X jitter, line AR(1)\nsigma 1.5 px, phi 0.5",
         distortions.scan_jitter(counts, 1.5, 0.0, rng(), phi_x=0.5)),
        ("Y jitter, line AR(1)\nsigma 1 px, phi 0.5",
         distortions.scan_jitter(counts, 0.0, 1.0, rng(), phi_y=0.5)),
        ("X jitter, pixel AR(1)\nsigma 0.7 px, phi 0.95",
         distortions.scan_jitter(counts, 0.7, 0.0, rng(), phi_x=0.95, mode="pixel")),
        ("fast-scan PSF\ngamma 1, decay 3, omega 0.8",
         distortions.fast_scan_blur(counts, 1.0, 3.0, 0.8)),
        (f"PMT noise, sigma {0.15 * dose:g}", distortions.pmt_noise(counts, 0.15 * dose, rng())),
        (f"row-line noise, sigma {0.08 * dose:g}", distortions.row_line_noise(counts, 0.08 * dose, rng())),
        ("black pixels, 1%", distortions.black_pixels(counts, 0.01, rng())),
        ("zingers, 0.2%", distortions.zingers(counts, 0.002, 1.5 * counts.max(), rng())),
        ("upper clip at the\n80% quantile", distortions.upper_clip(counts, np.quantile(counts, 0.8))),
        ("quantisation, 3 bits", distortions.quantise(counts, 3)),
        ("interpolation\n/3 and back, nearest", distortions.interpolation_distortion(counts, 3.0, 0)),
        ("gaussian blur, 2 px", distortions.gaussian_blur(counts, 2.0)),
        ("random_distortion, draw 1", distortions.random_distortion(clean, "stem", rng())[0]),
        ("random_distortion, draw 2",
         distortions.random_distortion(clean, "stem", np.random.default_rng(seed + 1))[0]),
    ]


def _panels_tem(clean: np.ndarray, dose: float, seed: int) -> list[tuple[str, np.ndarray]]:
    def rng():
        return np.random.default_rng(seed)

    counts = dose * clean
    s = 0.05 * dose
    return [
        ("clean (expected counts)", counts),
        (f"shot noise, dose {dose:g}", distortions.shot_noise(clean, dose, rng())),
        (f"dark current, {s:g} e/px\n(subtracted)", distortions.dark_current_noise(counts, s, rng())),
        (f"reset (kTC) noise, sigma {s:g}", distortions.reset_noise(counts, s, rng())),
        (f"flicker (1/f) noise, sigma {s:g}", distortions.flicker_noise(counts, s, rng())),
        (f"readout noise, sigma {s:g}", distortions.readout_noise(counts, s, rng())),
        ("zingers, 0.1%, up to 3 px", distortions.zingers(counts, 0.001, 1.5 * counts.max(), rng(), 3)),
        ("black pixels, 1%", distortions.black_pixels(counts, 0.01, rng())),
        ("upper clip at the\n80% quantile", distortions.upper_clip(counts, np.quantile(counts, 0.8))),
        ("quantisation, 3 bits", distortions.quantise(counts, 3)),
        ("interpolation\n/3 and back, nearest", distortions.interpolation_distortion(counts, 3.0, 0)),
        ("gaussian blur, 2 px", distortions.gaussian_blur(counts, 2.0)),
        ("random_distortion, draw 1", distortions.random_distortion(clean, "tem", rng())[0]),
        ("random_distortion, draw 2",
         distortions.random_distortion(clean, "tem", np.random.default_rng(seed + 1))[0]),
    ]


def _grid(panels: list[tuple[str, np.ndarray]], title: str, path: Path, cols: int = 5) -> None:
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows))
    for ax in axes.flat:
        ax.axis("off")
    # one grey scale (the clean image's) for the single distortions, so that a black pixel is
    # black and a clipped area flat; the random compositions get their own
    clean_range = np.percentile(panels[0][1], [0.5, 99.5])
    for ax, (name, img) in zip(axes.flat, panels):
        lo, hi = np.percentile(img, [0.5, 99.5]) if name.startswith("random") else clean_range
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _psf_figure(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for gamma, decay, omega in [(0.0, 1.0, 0.0), (1.0, 0.01, 0.0), (1.0, 2.0, 0.0),
                                (0.5, 3.0, 1.0)]:
        k = distortions.fast_scan_psf(gamma, decay, omega)
        x = np.arange(k.size) - k.size // 2
        keep = np.abs(x) <= 15
        ax.plot(x[keep], k[keep], marker=".", label=f"gamma {gamma:g}, decay {decay:g}, omega {omega:g}")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.set_xlabel("offset along the fast scan (px; + = recorded earlier)")
    ax.set_ylabel("weight (sum 1)")
    ax.legend(fontsize=7)
    ax.set_title("fast-scan PSF: Lorentzian (*) damped-oscillator readout", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pairs_figure(path: Path, seed: int) -> None:
    combos = [(m, r) for m in ("stem", "tem") for r in ("high", "low")]
    fig, axes = plt.subplots(4, 6, figsize=(13, 9))
    for row, (modality, resolution) in enumerate(combos):
        for j in range(3):
            clean, degraded, info = make_pair((128, 128), modality, resolution,
                                              np.random.default_rng(seed * 100 + 10 * row + j))
            for k, (img, what) in enumerate(((clean, "clean"), (degraded, "input"))):
                ax = axes[row, 2 * j + k]
                lo, hi = np.percentile(img, [0.5, 99.5])
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
                ax.set_title(f"{modality} {resolution} {info['kind']}\n{what}, dose "
                             f"{info['distortion']['dose']:.0f}", fontsize=7)
                ax.axis("off")
    fig.suptitle("random training pairs (make_pair)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/restore"))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    stem, _ = make_specimen(SHAPE, "stem", "high", np.random.default_rng(args.seed),
                            kind="crystalline", particle=False)
    _grid(_panels_stem(stem, 50.0, args.seed), "S(T)EM distortions, each alone",
          args.out / "distortions_stem.png")
    tem, _ = make_specimen(SHAPE, "tem", "high", np.random.default_rng(args.seed + 1),
                           kind="crystalline", particle=False)
    _grid(_panels_tem(tem, 400.0, args.seed), "TEM distortions, each alone",
          args.out / "distortions_tem.png")
    _psf_figure(args.out / "fast_scan_psf.png")
    _pairs_figure(args.out / "training_pairs.png", args.seed)
    for name in ("distortions_stem", "distortions_tem", "fast_scan_psf", "training_pairs"):
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
