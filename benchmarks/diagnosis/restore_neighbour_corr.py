# ruff: noqa
"""Exploratory diagnosis (issue 13, target c), a record of docs/methods/restoration.md ("Never harm"):
the correlation of the guarded residual with the input's neighbouring pixel (after 9 x 9 local means),
across rows (cy), along rows (cx) and at the same pixel (c0), for images whose SSIM fell below raw and
the others. Run from the repository root: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_neighbour_corr.py
"""
import sys, json
sys.path.insert(0, "benchmarks")
import numpy as np
from scipy import ndimage
from restore_quality import network, scored_pairs
from emfuse.pipeline.restore.guard import guard
from emfuse.pipeline.metrics import ssim, psnr
net = network(None)
def detail(a): return a - ndimage.uniform_filter(a, 9, mode="reflect")
def corr(a, b):
    a = a - a.mean(); b = b - b.mean(); return float((a*b).sum() / np.sqrt((a*a).sum()*(b*b).sum()))
def stats(raw, out):
    r, y = detail(raw - out), detail(raw)
    return {"cy": corr(r[:-1], y[1:]), "cx": corr(r[:, :-1], y[:, 1:]), "c0": corr(r, y)}
rows = []
for name, level, i, clean, raw in scored_pairs(4, 128):
    out = net(raw); g, res = guard(raw, out)
    st = stats(raw, g)
    rows.append(dict(set=name, level=level, i=i, d_ssim=ssim(g, clean)-ssim(raw, clean), d_psnr=psnr(g, clean)-psnr(raw, clean), **st))
    print(f"{name:>14} {level:>12} {i} dSSIM {rows[-1]['d_ssim']:+.3f} dPSNR {rows[-1]['d_psnr']:+6.2f}  cy {st['cy']:+.3f} cx {st['cx']:+.3f} c0 {st['c0']:+.3f}", flush=True)
json.dump(rows, open("/tmp/restore_neighbour_corr.json", "w"))
