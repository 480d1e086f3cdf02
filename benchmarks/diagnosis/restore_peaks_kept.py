# ruff: noqa
"""Exploratory diagnosis (issue 13, target c), a record of docs/methods/restoration.md ("Never harm"):
the guard's power-weighted `lattice_kept` against the median over peak bins of the kept ratio, and what
reinjecting on the frames only the median flags would do (SSIM/PSNR against the truth).
Run from the repository root: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_peaks_kept.py
"""
import sys, json
sys.path.insert(0, "benchmarks")
import numpy as np
from restore_quality import network, scored_pairs
import emfuse.pipeline.restore.guard as G
from emfuse.pipeline.metrics import ssim, psnr
net = network(None)
def peaks_kept(raw, out):
    raw = np.asarray(raw, float); out = np.asarray(out, float)
    p_raw, p_out = G.power_spectrum(raw), G.power_spectrum(out)
    floor = G.noise_floor(p_raw); radius = G._radius(raw.shape)
    away = radius * min(raw.shape) >= G.MIN_RADIUS_BINS
    peaks = away & (p_raw > G.PEAK_OVER_FLOOR * floor)
    if not peaks.any(): return 1.0, 0
    return float(np.median(p_out[peaks] / p_raw[peaks])), int(peaks.sum())
rows = []
for name, level, i, clean, raw in scored_pairs(4, 128):
    out = net(raw)
    res = G.check_residual(raw, out)
    pk, npk = peaks_kept(raw, out)
    g, gres = G.guard(raw, out)
    back = G.reinject(raw, out)
    pk_back, _ = peaks_kept(raw, back)
    row = dict(set=name, level=level, i=i, excess=res.lattice_excess, kept=res.lattice_kept, pk=pk, npk=npk, pk_back=pk_back,
               decision=gres.decision,
               s_raw=ssim(raw, clean), s_net=ssim(out, clean), s_guard=ssim(g, clean), s_back=ssim(back, clean),
               p_raw=psnr(raw, clean), p_net=psnr(out, clean), p_guard=psnr(g, clean), p_back=psnr(back, clean))
    rows.append(row)
    print(f"{name:>14} {level:>12} {i} {gres.decision:>10} excess {res.lattice_excess:7.3g} kept {res.lattice_kept:6.3f} pk {pk:6.3f} (n {npk:4d}) | SSIM raw {row['s_raw']:.3f} guard {row['s_guard']:.3f} back {row['s_back']:.3f} | PSNR guard {row['p_guard']:6.2f} back {row['p_back']:6.2f}", flush=True)
json.dump(rows, open("/tmp/restore_peaks_kept.json", "w"))
