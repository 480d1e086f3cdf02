"""Figures of docs/methods/avae.md: the simulated modes of each material class, and the AVAE at work.

    python benchmarks/avae_figures.py --out docs/figures/avae [--model pipeline/avae/models/default.safetensors]

``modes.png``      truth, BF, DF, HRTEM (recorded: drifted, unevenly lit, noisy) of one region per class;
``ctf.png``        the HRTEM phase-contrast transfer of the two lens settings drawn by the simulator;
``randomised.png`` one region of each structure family of the randomised simulator: truth, HRTEM, BF, DF;
``attention.png``  (with a model) per class: preprocessed modes, fused image, truth, attention maps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emfuse.pipeline.avae.baselines import calibrate  # noqa: E402
from emfuse.pipeline.avae.evaluate import prepare_regions  # noqa: E402
from emfuse.pipeline.avae.fuse import fuse_modes  # noqa: E402
from emfuse.pipeline.avae.model import DEFAULT_WEIGHTS, load_avae  # noqa: E402
from emfuse.pipeline.synth.crystals import FAMILIES  # noqa: E402
from emfuse.pipeline.synth.tem_modes import (  # noqa: E402
    MATERIALS,
    MODES,
    Microscope,
    ctf,
    simulate_region,
    simulate_regions,
)

SEED = 2024


def _panel(ax, image, title, cmap="gray", **kw):
    lo, hi = np.percentile(image, [1, 99]) if "vmin" not in kw else (kw.pop("vmin"), kw.pop("vmax"))
    ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def modes_figure(out: Path) -> None:
    fig = Figure(figsize=(10, 7.8), layout="constrained")
    axes = fig.subplots(3, 4)
    for row, material in enumerate(MATERIALS):
        r = simulate_region((160, 160), material, np.random.default_rng([SEED, row]))
        _panel(axes[row, 0], r.truth, f"{material}: truth (projected potential)")
        for col, mode in enumerate(MODES):
            d = r.drift[col]
            _panel(axes[row, col + 1], r.modes[col], f"{mode.upper()} (drift {d[0]:+.1f}, {d[1]:+.1f} px)")
    fig.suptitle("Simulated modes, 160 x 160 px of 0.05 nm (as recorded)", fontweight="bold")
    fig.savefig(out / "modes.png", dpi=75, facecolor="white")


def randomised_figure(out: Path) -> None:
    regions = simulate_regions(len(FAMILIES), (160, 160), SEED, randomised=True)
    fig = Figure(figsize=(2.0 * len(regions), 8.4), layout="constrained")
    axes = fig.subplots(4, len(regions))
    for col, r in enumerate(regions):
        c, lens = r.params["crystal"], r.params["hrtem"]
        zone = "".join(str(v) for v in c["zone"])
        _panel(axes[0, col], r.truth, f"{c['compound']} [{zone}]\n{r.params['pixel_nm']:.3f} nm/px")
        flat = r.modes / r.illumination
        _panel(axes[1, col], flat[MODES.index("hrtem")],
               f"HRTEM, {lens['kv']:.0f} kV\ndf {lens['defocus_nm']:.0f} nm{', corrected' if lens['corrected'] else ''}")
        _panel(axes[2, col], flat[MODES.index("bf")], "BF")
        _panel(axes[3, col], flat[MODES.index("df")], "DF")
    fig.suptitle("Randomised simulator: one region per structure family (modes divided by their flat reference)",
                 fontweight="bold")
    fig.savefig(out / "randomised.png", dpi=52, facecolor="white")


def ctf_figure(out: Path) -> None:
    scope = Microscope()
    n, pixel = 512, 0.05
    k = np.fft.fftfreq(n, d=pixel)[: n // 2]
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    for label, cs, df in (("uncorrected, Cs 1.2 mm, df -55 nm", scope.cs_nm, -55.0),
                          ("corrected, Cs 5 um, df -4 nm", scope.cs_corrected_nm, -4.0)):
        t = ctf((1, n), pixel, kv=scope.kv, cs_nm=cs, defocus_nm=df, focal_spread_nm=3.5,
                convergence_rad=2e-4, aperture_inv_nm=scope.aperture_inv_nm)[0, : n // 2]
        ax.plot(k, -t.imag, label=label)  # phase-contrast transfer, sin(chi) times the envelopes
    for name, d, side in (("metal 0.176 nm", 0.176, "left"), ("ceramic 0.195 nm", 0.195, "right"),
                          ("Si 0.192 nm", 0.192, "left")):
        ax.axvline(1 / d, color="0.6", lw=0.8, ls="--")
        ax.text(1 / d, 1.02 if side == "right" else -1.0, name, rotation=90, fontsize=7,
                va="bottom", ha=side)
    ax.set_xlabel("spatial frequency (1/nm)")
    ax.set_ylabel("phase-contrast transfer")
    ax.set_ylim(-1.05, 1.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.savefig(out / "ctf.png", dpi=100, facecolor="white")


def attention_figure(out: Path, model_path: Path) -> None:
    model = load_avae(model_path)
    fig = Figure(figsize=(14, 9.5), layout="constrained")
    axes = fig.subplots(6, 5)
    for block, material in enumerate(MATERIALS):
        r = simulate_region((192, 192), material, np.random.default_rng([SEED + 1, block]))
        prepared = prepare_regions([r])
        x, truth = prepared.inputs[0], prepared.truths[0]
        fused, attention = fuse_modes(model, x)
        top, bottom = axes[2 * block], axes[2 * block + 1]
        for col, mode in enumerate(MODES):
            _panel(top[col], x[col], f"{material}: {mode} (preprocessed)")
            _panel(bottom[col], attention[col], f"attention {mode} (mean {attention[col].mean():.2f})",
                   cmap="viridis", vmin=0, vmax=1)
        _panel(top[3], calibrate(fused, truth), "AVAE fused (calibrated)")
        _panel(top[4], truth, "truth")
        _panel(bottom[3], calibrate(x[2], truth), "HRTEM alone (calibrated)")
        bottom[4].set_axis_off()
    fig.suptitle("AVAE on held-out regions: inputs, fused image and attention maps", fontweight="bold")
    fig.savefig(out / "attention.png", dpi=64, facecolor="white")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("docs/figures/avae"))
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--only", choices=["modes", "ctf", "randomised", "attention"], default=None)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "modes"):
        modes_figure(args.out)
    if args.only in (None, "ctf"):
        ctf_figure(args.out)
    if args.only in (None, "randomised"):
        randomised_figure(args.out)
    if args.only in (None, "attention") and args.model.is_file():
        attention_figure(args.out, args.model)


if __name__ == "__main__":
    main()
