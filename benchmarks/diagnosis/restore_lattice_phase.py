"""How much of a fine lattice's phase survives training's S(T)EM distortions? (diagnosis)

For S(T)EM HAADF scenes of the ``lattice`` family (96 px, dose 500, seeds no training or benchmark
draws), four distortion draws each, the agreement at the truth's lattice peaks (bins beyond 4 from
the origin with at least 5 % of the truth's largest peak power, Hann window):
``rho = Re sum(F_raw conj F_truth) / sqrt(sum |F_raw|^2 sum |F_truth|^2)``. 1: the raw frame's lattice
is in phase with the truth's; 0: its phase is unrelated. A network trained for the squared error can
keep about ``rho`` of a lattice's contrast; far less is a fit failure, not a limit of the data.

Variants of training's full S(T)EM table: ``full``; ``no-psf`` (fast-scan PSF off); ``no-jitter``
(scan jitter off); ``no-translation`` (each frame's mean jitter displacement removed and the PSF
centred on its exact, sub-pixel centroid instead of the nearest pixel: only what shifts the whole
frame, which no image can show, taken out); ``clean`` (the detector's noise alone).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_lattice_phase.py [--n 40]
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import emfuse.pipeline.synth.distortions as distortions
from emfuse.pipeline.synth.distortions import Draw, random_distortion, stem
from emfuse.pipeline.synth.scenes import (
    JITTER_AMPLITUDES,
    make_scene,
    noise_only_settings,
    training_settings,
)

SEED = 7_771_000
DOSE = 500.0
BANDS = ((2, 4), (4, 6), (6, 10), (10, 16), (16, 40))
VARIANTS = ("full", "no-psf", "no-jitter", "no-translation", "clean")


def _without_mean_displacement(image, dy, dx, order=3):
    return stem.apply_displacement(image, dy - dy.mean(axis=(-2, -1), keepdims=True),
                                   dx - dx.mean(axis=(-2, -1), keepdims=True), order)


def _exactly_centred_blur(image, gamma, decay, omega=0.0):
    out = stem.fast_scan_blur(image, gamma, decay, omega)
    kernel = stem.fast_scan_psf(gamma, decay, omega)
    half = kernel.size // 2
    centroid = float((np.arange(-half, half + 1) * kernel).sum())  # left by the nearest-pixel centring
    pad = 32
    padded = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(pad, pad)], mode="reflect")
    f = np.fft.fftfreq(padded.shape[-1])
    shifted = np.fft.ifft(np.fft.fft(padded, axis=-1) * np.exp(2j * np.pi * f * centroid), axis=-1)
    return np.real(shifted)[..., pad:-pad]


def _table(variant: str) -> dict[str, Draw]:
    table = dict(noise_only_settings("stem", "high") if variant == "clean" else training_settings("stem", "high"))
    off = {"no-psf": ("psf_gamma",), "no-jitter": JITTER_AMPLITUDES}.get(variant, ())
    for name in off:
        table[name] = dataclasses.replace(table[name], p=0.0)
    table["dose"] = Draw(low=DOSE, high=DOSE)
    return table


def phase_agreement(raw: np.ndarray, truth: np.ndarray) -> float:
    """``rho`` of the module notes."""
    window = np.outer(np.hanning(truth.shape[0]), np.hanning(truth.shape[1]))
    f_raw = np.fft.fft2((raw - raw.mean()) * window)
    f_truth = np.fft.fft2((truth - truth.mean()) * window)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(truth.shape[0]), np.fft.fftfreq(truth.shape[1]), indexing="ij"))
    power = np.abs(f_truth) ** 2
    away = radius * truth.shape[0] >= 4
    peaks = away & (power > 0.05 * power[away].max())
    num = np.real(np.sum(f_raw[peaks] * np.conj(f_truth[peaks])))
    return float(num / np.sqrt(np.sum(np.abs(f_raw[peaks]) ** 2) * np.sum(power[peaks])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    plain = distortions.apply_displacement, distortions.fast_scan_blur
    for k in range(args.n):
        image, info = make_scene((96, 96), "stem", "high", np.random.default_rng(SEED + k),
                                 family="lattice", contrast="haadf")
        for variant in VARIANTS:
            if variant == "no-translation":  # the chain's own names, swapped for this variant only
                distortions.apply_displacement, distortions.fast_scan_blur = (_without_mean_displacement,
                                                                               _exactly_centred_blur)
            try:
                values = [phase_agreement(random_distortion(image, "stem", np.random.default_rng([SEED + k, d]),
                                                            resolution="high", settings=_table(variant))[0],
                                          DOSE * image) for d in range(4)]
            finally:
                distortions.apply_displacement, distortions.fast_scan_blur = plain
            rows[variant].append((info["spacing_px"], float(np.mean(values))))
    print(f"median phase agreement rho at the truth's lattice peaks, dose {DOSE:g}, {args.n} scenes x 4 draws")
    print(f"{'period px':10s} {'n':>3s} " + " ".join(f"{v:>14s}" for v in VARIANTS))
    for lo, hi in BANDS:
        n = sum(lo <= s < hi for s, _ in rows["full"])
        cells = [np.median([r for s, r in rows[v] if lo <= s < hi]) for v in VARIANTS]
        print(f"{lo:2d}-{hi:<7d} {n:3d} " + " ".join(f"{c:14.3f}" for c in cells))


if __name__ == "__main__":
    main()
