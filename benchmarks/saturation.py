"""Saturated HAADF pixels: what the detector finds on real files, and what leaving them out does.

    .venv/bin/python benchmarks/saturation.py [--shared ../shared/data] [--json FILE]

1. :func:`emfuse.pipeline.saturation.find_saturation` on the HAADF (or image) of every shared real
   file that ingests (``shared/data/formats``, read with :func:`emfuse.stores.ingest.read`) and of
   the published tutorial files (``shared/data/fusion``): the saturated fraction and values.
2. Synthetic specimens (columns, particles, layers; 96 x 96, Sr Ti O, maps Poisson with 8
   counts at the maximum) whose HAADF is clipped at its 85th percentile: the mean NRMSE
   (affine-fitted, over elements) of the fused maps against the truth, over the whole image
   and inside the saturated pixels, fusing the unclipped HAADF, the clipped one, and the
   clipped one with the saturated pixels left out (``haadf_valid``), at the embedded default
   weights (0.05, 0.02) and at weights like those the automatic search picks (0.35, 0.7).
3. A particle whose thickness fringes are hidden by the plateau (the HAADF clipped at the 5th
   percentile of the particle's pixels): the same errors, for the main element inside and
   over all elements and pixels.
4. The specimens of 2 with the weights chosen by the automatic search
   (:func:`emfuse.pipeline.fusion.auto.choose_lambdas` on the integer-count maps, the default of the
   command line), which is given the same mask as the fusion.

Everything is seeded; it takes about three minutes on two busy cores.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.saturation import find_saturation, saturated_pixels
from emfuse.pipeline.synth import specimen_maps

Z = [38, 22, 8]


def real_files(shared: Path) -> list[dict]:
    from emfuse.stores.ingest import read

    rows = []
    for path in sorted((shared / "formats").iterdir()) + sorted((shared / "fusion").glob("*.*")):
        if path.suffix in (".md", ".ser"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = read(path)
        except Exception as exc:  # single spectra and the like: not an image
            rows.append({"file": path.name, "haadf": None, "note": type(exc).__name__})
            continue
        if "haadf" not in ds:
            rows.append({"file": path.name, "haadf": None, "note": "no HAADF"})
            continue
        image = np.asarray(ds["haadf"].values)
        found = find_saturation(image)
        rows.append({"file": path.name, "haadf": f"{image.shape} {image.dtype}", "fraction": found.fraction,
                     "levels": [(lv.value, lv.count, lv.kind) for lv in found.levels]})
    return rows


def _errors(fused: np.ndarray, truth: np.ndarray, region: np.ndarray, elements=range(3)) -> float:
    return float(np.mean([nrmse(fused[e][region], truth[e][region]) for e in elements]))


def clipped_specimens() -> list[dict]:
    rows = []
    for specimen in ("columns", "particles", "layers"):
        truth, haadf, clipped, maps = _specimen(specimen)
        maps = maps.astype(np.float32)
        valid = ~saturated_pixels(clipped)
        everywhere = np.ones_like(valid)
        for lambda_chem, lambda_tv in ((0.05, 0.02), (0.35, 0.7)):
            kw = dict(lambda_chem=lambda_chem, lambda_tv=lambda_tv, n_iter=50, warn=False)
            runs = {"unclipped": fuse(haadf, maps, Z, **kw).fused, "clipped": fuse(clipped, maps, Z, **kw).fused,
                    "left out": fuse(clipped, maps, Z, haadf_valid=valid, **kw).fused}
            rows.append({"case": specimen, "lambdas": (lambda_chem, lambda_tv), "saturated": float((~valid).mean()),
                         "all": {k: _errors(f, truth, everywhere) for k, f in runs.items()},
                         "saturated pixels": {k: _errors(f, truth, ~valid) for k, f in runs.items()}})
    return rows


def _specimen(specimen: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(truth, HAADF, HAADF clipped at its 85th percentile, Poisson maps) of a synthetic specimen."""
    truth = specimen_maps((96, 96), 3, specimen, seed=1)[0].astype(np.float64)
    rng = np.random.default_rng(0)
    haadf = np.tensordot(np.asarray(Z, float) ** 1.6, truth, axes=1)
    haadf = (haadf / haadf.max() + 0.1 + rng.normal(0, 0.02, haadf.shape)).astype(np.float32)
    clipped = np.minimum(haadf, np.percentile(haadf, 85))
    maps = rng.poisson(8 * truth / truth.max(axis=(1, 2), keepdims=True) + 0.5)
    return truth, haadf, clipped, maps


def auto_weights() -> list[dict]:
    from emfuse.pipeline.fusion.auto import choose_lambdas

    rows = []
    for specimen in ("columns", "particles", "layers"):
        truth, haadf, clipped, maps = _specimen(specimen)
        valid = ~saturated_pixels(clipped)
        runs, chosen = {}, {}
        for name, image, mask in (("unclipped", haadf, None), ("clipped", clipped, None),
                                  ("left out", clipped, valid)):
            choice = choose_lambdas(image, Z, maps=maps, haadf_valid=mask)
            chosen[name] = (choice.lambda_chem, choice.lambda_tv)
            runs[name] = fuse(image, maps.astype(np.float32), Z, haadf_valid=mask, lambda_chem=choice.lambda_chem,
                              lambda_tv=choice.lambda_tv, warn=False).fused
        rows.append({"case": f"{specimen}, auto", "lambdas": chosen, "saturated": float((~valid).mean()),
                     "all": {k: _errors(f, truth, np.ones_like(valid)) for k, f in runs.items()},
                     "saturated pixels": {k: _errors(f, truth, ~valid) for k, f in runs.items()}})
    return rows


def hidden_fringes() -> list[dict]:
    yy, xx = np.mgrid[:64, :64]
    particle = ((yy - 32) ** 2 + (xx - 32) ** 2 < 20**2).astype(float)
    thickness = 0.6 + 0.4 * np.sin(xx / 3.0)
    truth = np.stack([particle * thickness, 0.5 * particle * thickness, 0.3 + 0.7 * (1 - particle)])
    z = [60, 30, 8]
    rows = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        haadf = np.tensordot(np.array(z, float) ** 1.6, truth, axes=1)
        haadf = (haadf / haadf.max() + rng.normal(0, 0.01, haadf.shape)).astype(np.float32)
        clipped = np.minimum(haadf, np.percentile(haadf[particle > 0], 5))
        maps = rng.poisson(10 * truth).astype(np.float32)
        valid = ~saturated_pixels(clipped)
        for lambda_chem, lambda_tv in ((0.05, 0.02), (0.3, 0.3)):
            kw = dict(lambda_chem=lambda_chem, lambda_tv=lambda_tv, n_iter=50, warn=False)
            runs = {"unclipped": fuse(haadf, maps, z, **kw).fused, "clipped": fuse(clipped, maps, z, **kw).fused,
                    "left out": fuse(clipped, maps, z, haadf_valid=valid, **kw).fused}
            rows.append({"case": f"fringes seed {seed}", "lambdas": (lambda_chem, lambda_tv),
                         "saturated": float((~valid).mean()),
                         "all": {k: _errors(f, truth, np.ones_like(valid)) for k, f in runs.items()},
                         "saturated pixels": {k: _errors(f, truth, ~valid, [0]) for k, f in runs.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {"real": real_files(args.shared), "clipped": clipped_specimens() + hidden_fringes() + auto_weights()}
    print("| file | image | saturated | values (pixels, kind) |\n|---|---|---|---|")
    for row in result["real"]:
        if row["haadf"] is None:
            print(f"| {row['file']} | none ({row['note']}) | | |")
        else:
            levels = "; ".join(f"{v:g} ({n}, {k})" for v, n, k in row["levels"]) or "none"
            print(f"| {row['file']} | {row['haadf']} | {100 * row['fraction']:.1f} % | {levels} |")
    print("\nNRMSE vs truth (affine fit): all pixels | saturated pixels; unclipped / clipped / left out\n")
    print("| case | lambdas | saturated | all: unclipped | clipped | left out | sat.: unclipped | clipped | left out |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in result["clipped"]:
        a, s = row["all"], row["saturated pixels"]
        lambdas = row["lambdas"]
        lambdas = (" / ".join(f"({c:.3g}, {t:.3g})" for c, t in lambdas.values()) if isinstance(lambdas, dict)
                   else f"{lambdas[0]:g}, {lambdas[1]:g}")
        print(f"| {row['case']} | {lambdas} | {100 * row['saturated']:.0f} % | "
              f"{a['unclipped']:.3f} | {a['clipped']:.3f} | {a['left out']:.3f} | "
              f"{s['unclipped']:.3f} | {s['clipped']:.3f} | {s['left out']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
