"""The residual guard (emfuse.pipeline.restore.guard) on outputs known good and known harmful.

Cases (256 x 256 frames; the truth is known for every case):

* ``syn_default``: 16 synthetic HR-STEM pairs (``make_pair((256, 256), "stem", "high",
  default_rng(0))``) restored by the default model (in distribution: it does well);
* ``<pairs>_rem`` / ``<pairs>_default``: tk-r-em's MULTEM test pairs (sfr_hrstem, sfr_lrstem,
  sfr_lrtem, sfr_hrsem, sfr_lrsem; 8 each) restored by the matching published network (good)
  and by the default model (it erases the HR-STEM lattices);
* ``lattice_blur3``: noisy hexagonal lattices (periods 4-10 px, 50 counts) "restored" by a
  Gaussian blur of sigma 3 px; ``lattice_perfect``: the same restored to the truth;
* ``noisefree_lattice_blur1``: the noise-free lattices blurred by sigma 1 px.

Every restore is ``restore(x, model, tile=256, overlap=0)``. The table gives the decisions and
the medians of PSNR, SSIM (``skimage.metrics.structural_similarity``, data range of the truth)
and the correlation with the truth: network output (unguarded) / guarded / raw.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/restore_guard.py`` (about 3 minutes on
one CPU core; needs tk-r-em, the dev extra). ``-v`` prints every frame.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.restore import load_model
from emfuse.pipeline.restore.guard import guard
from emfuse.pipeline.restore.inference import restore
from emfuse.pipeline.synth.restore_specimens import make_pair

PAIRS = ("sfr_hrstem", "sfr_lrstem", "sfr_lrtem", "sfr_hrsem", "sfr_lrsem")


def multem(name: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(importlib.util.find_spec("tk_r_em").submodule_search_locations[0]) / "test_data"
    with h5py.File(folder / f"{name}.h5", "r") as f:
        return tuple(np.asarray(f[k][:, 0].transpose(0, 2, 1), np.float32) for k in ("x", "y"))


def lattice(period: float, n: int = 256, dose: float = 50.0) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    waves = sum(np.cos(2 * np.pi / period * (np.cos(a) * x + np.sin(a) * y))
                for a in (0.3, 0.3 + np.pi / 3, 0.3 + 2 * np.pi / 3))
    return dose * (1 + 0.3 * waves)


def cases() -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """name -> [(raw, network output, truth)]."""
    default = load_model()
    out = {}
    rng = np.random.default_rng(0)
    pairs = [make_pair((256, 256), "stem", "high", rng) for _ in range(16)]
    raw, truth = np.stack([p[1] for p in pairs]), np.stack([p[0] for p in pairs])
    out["syn_default"] = list(zip(raw, restore(raw, default, tile=256, overlap=0), truth))
    for name in PAIRS:
        raw, truth = multem(name)
        out[f"{name}_rem"] = list(zip(raw, restore(raw, load_model(f"r_em:{name}"), tile=256, overlap=0), truth))
        out[f"{name}_default"] = list(zip(raw, restore(raw, default, tile=256, overlap=0), truth))
    rng = np.random.default_rng(0)
    truths = [lattice(p) for p in (4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 10.0)]
    noisy = [rng.poisson(t).astype(np.float64) for t in truths]
    out["lattice_blur3"] = [(x, ndimage.gaussian_filter(x, 3.0), t) for x, t in zip(noisy, truths)]
    out["lattice_perfect"] = [(x, t, t) for x, t in zip(noisy, truths)]
    out["noisefree_lattice_blur1"] = [(t, ndimage.gaussian_filter(t, 1.0), t) for t in truths]
    return out


def scores(image: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    image, truth = np.asarray(image, float), np.asarray(truth, float)
    ssim = structural_similarity(image, truth, data_range=float(truth.max() - truth.min()))
    return psnr(image, truth), ssim, float(np.corrcoef(image.ravel(), truth.ravel())[0, 1])


def main(verbose: bool = False) -> None:
    torch.set_num_threads(1)
    print("| case | frames | decisions | PSNR dB (net / guarded / raw) | SSIM | correlation |")
    print("|---|---|---|---|---|---|")
    for name, items in cases().items():
        rows, decisions = [], []
        for raw, net, truth in items:
            kept, result = guard(raw, net)
            decisions.append(result.decision)
            row = [s for image in (net, kept, raw) for s in scores(image, truth)]
            rows.append(row)
            if verbose:
                print(f"  {name} {result.decision:10s} excess {result.lattice_excess:.3g} kept "
                      f"{result.lattice_kept:.3g} corr {row[2]:.3f}/{row[5]:.3f}/{row[8]:.3f}")
        m = np.median(np.array(rows), axis=0)
        counts = ", ".join(f"{d} {decisions.count(d)}" for d in dict.fromkeys(decisions))
        print(f"| {name} | {len(items)} | {counts} | {m[0]:.2f} / {m[3]:.2f} / {m[6]:.2f} | "
              f"{m[1]:.3f} / {m[4]:.3f} / {m[7]:.3f} | {m[2]:.3f} / {m[5]:.3f} / {m[8]:.3f} |")


if __name__ == "__main__":
    main("-v" in sys.argv)
