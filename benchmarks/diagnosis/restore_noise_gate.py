# ruff: noqa
"""Exploratory diagnosis (issue 13, target c), a record of docs/methods/restoration.md ("Never harm"):
does the input's noise level, or the residual's variance against it, tell the images whose guarded
SSIM falls below raw (a gate that would blend towards the raw frame at high signal-to-noise)?
The guard's own figures on the 140 images of restore_quality.py (n = 4, 128 px), default model:
`noise_fraction` (the raw spectrum's median beyond 0.375 cycles/px over the frame's variance) and
`residual_fraction / noise_fraction`. Run from the repository root:
OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/restore_noise_gate.py
"""
import sys
sys.path.insert(0, "benchmarks")
import numpy as np
from restore_quality import network, scored_pairs
from emfuse.pipeline.metrics import psnr, ssim
from emfuse.pipeline.restore.guard import guard
net = network(None)
rows = []
for name, level, i, clean, raw in scored_pairs(4, 128):
    g, res = guard(raw, net(raw))
    rows.append(dict(set=name, level=level[:6], i=i, nf=res.noise_fraction,
                     ratio=res.residual_fraction / max(res.noise_fraction, 1e-30),
                     d_psnr=psnr(g, clean) - psnr(raw, clean), d_ssim=ssim(g, clean) - ssim(raw, clean)))
rows.sort(key=lambda r: r["nf"])
for r in rows:
    print(f"{r['set']:>14} {r['level']:>6} {r['i']}  noise_fraction {r['nf']:.2e}  residual/noise {r['ratio']:9.2f}  "
          f"dPSNR {r['d_psnr']:+6.2f}  dSSIM {r['d_ssim']:+.3f}{'  BELOW RAW' if r['d_ssim'] < 0 else ''}")
harmed = [r for r in rows if r["d_ssim"] < 0]
print(f"\n{len(harmed)} of {len(rows)} below raw SSIM")
for key in ("nf", "ratio"):
    lo, hi = min(r[key] for r in harmed), max(r[key] for r in harmed)
    inside = [r for r in rows if lo <= r[key] <= hi and r["d_ssim"] >= 0]
    print(f"{key}: harmed span {lo:.3g} to {hi:.3g}; {len(inside)} unharmed images inside that span, "
          f"median dPSNR {np.median([r['d_psnr'] for r in inside]):+.2f} dB")
