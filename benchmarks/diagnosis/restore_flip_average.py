# ruff: noqa
"""Exploratory diagnosis (issue 13), a record of docs/methods/restoration.md ("Tried, not adopted"):
the default model with test-time flips (the mean of its outputs on the frame flipped along y, x and
both, flipped back; TEM frames also the four transposed orientations, since TEM has no fast-scan
axis) against the plain output, on the 140 images of restore_quality.py (n = 4, 128 px).
Run from the repository root:
OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_flip_average.py
"""
import sys
sys.path.insert(0, "benchmarks")
import numpy as np
from restore_quality import SETS, network, set_levels
from emfuse.pipeline.metrics import psnr, ssim
net = network(None)
def four_flips(img):
    """The network's outputs on img flipped along y, x, both and neither, flipped back."""
    outs = []
    for fy in (False, True):
        for fx in (False, True):
            a = img[::-1] if fy else img
            a = a[:, ::-1] if fx else a
            o = net(np.ascontiguousarray(a))
            o = o[:, ::-1] if fx else o
            outs.append(o[::-1] if fy else o)
    return outs
def flips(img, modality):
    outs = four_flips(img)
    if modality == "tem":   # no scan axis: the transposed orientations too
        outs += [o.T for o in four_flips(np.ascontiguousarray(img.T))]
    return np.mean(outs, 0)
all_d = []
for name, level, pairs in set_levels(list(SETS), 4, 128):
    mod = SETS[name].modality
    d = []
    for clean, raw in pairs:
        plain, averaged = net(raw), flips(raw, mod)
        d.append((psnr(plain, clean), ssim(plain, clean), psnr(averaged, clean), ssim(averaged, clean), ssim(raw, clean)))
    d = np.array(d); med = np.median(d, 0); all_d.append(d)
    print(f"{name:>14} {level[:6]:>6}  plain {med[0]:6.2f}/{med[1]:.3f}  flips {med[2]:6.2f}/{med[3]:.3f}  "
          f"paired dPSNR {np.median(d[:, 2] - d[:, 0]):+.2f}  SSIM below raw {int((d[:, 1] < d[:, 4]).sum())} -> {int((d[:, 3] < d[:, 4]).sum())}", flush=True)
d = np.concatenate(all_d)
print(f"all {len(d)} images: paired dPSNR median {np.median(d[:, 2] - d[:, 0]):+.2f} dB (range {np.min(d[:, 2] - d[:, 0]):+.2f} to "
      f"{np.max(d[:, 2] - d[:, 0]):+.2f}), dSSIM median {np.median(d[:, 3] - d[:, 1]):+.4f}; SSIM below raw {int((d[:, 1] < d[:, 4]).sum())} -> {int((d[:, 3] < d[:, 4]).sum())}")
