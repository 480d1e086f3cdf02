"""The AVAE against the same network without attention over several training runs: is the margin real?

    python benchmarks/avae_runs.py --seeds 1 2 --n 400 --json runs.json \\
        --run pipeline/avae/models/default.safetensors pipeline/avae/models/vae_equal_weights.safetensors \\
        --run runs/s10_avae.safetensors runs/s10_vae.safetensors

Each ``--run AVAE VAE`` is one pair of networks trained alike (same data and settings, one
training seed per pair, e.g. by ``benchmarks/avae_eval.py --save-models``). For every held-out
``--seeds`` it simulates ``--n`` regions, preprocesses them as :mod:`benchmarks.avae_eval` does,
scores the test split (70/15/15) after the same affine calibration, and reports:

- per pair, the paired margin ``avae - vae`` (PSNR dB, SSIM) and its standard error over regions;
- over pairs, the mean margin and its spread (standard deviation between training runs), set
  beside the spread of each network's own score between runs: a margin smaller than that spread
  is not a property of the attention;
- the ensembles (mean of the runs' fused images, standardised) of each kind against each other
  and against ``hrtem``, ``average`` and ``weighted``;
- with ``--hrtem-net PATH`` (an ``AVAEConfig(n_modes=1)`` network trained alike on the HRTEM
  alone), ``hrtem_net``: how much of the gain over HRTEM is restoration rather than fusion.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emfuse.pipeline.avae.baselines import fit_mode_weights  # noqa: E402
from emfuse.pipeline.avae.evaluate import (  # noqa: E402
    method_images,
    paired_margin,
    prepare_regions,
    score_methods,
    split_indices,
)
from emfuse.pipeline.avae.model import load_avae  # noqa: E402
from emfuse.pipeline.avae.train import standardise  # noqa: E402
from emfuse.pipeline.synth.tem_modes import MODES, VARIED, simulate_regions  # noqa: E402


def evaluate_seed(seed: int, n: int, runs: list[tuple[Path, Path]], variation: bool,
                  hrtem_net: Path | None = None, flat_reference: bool = False) -> dict:
    t0 = time.perf_counter()
    prepared = prepare_regions(simulate_regions(n, (192, 192), seed, **({"scope": VARIED} if variation else {})),
                               flat_reference=flat_reference)
    _, val, test = split_indices(n, seed)
    models = {}
    for i, (avae, vae) in enumerate(runs):
        models[f"avae_{i}"], models[f"vae_{i}"] = load_avae(avae), load_avae(vae)
    if hrtem_net is not None:
        models["hrtem_net"] = load_avae(hrtem_net)
    weights = fit_mode_weights(prepared.inputs[val], prepared.targets[val])
    images = method_images(prepared.inputs[test], models, weights, hrtem_index=MODES.index("hrtem"))
    for kind in ("avae", "vae"):
        members = [images[f"{kind}_{i}"] for i in range(len(runs))]
        images[f"{kind}_ensemble"] = [np.mean([standardise(m[r]) for m in members], axis=0)
                                      for r in range(len(test))]
    materials = [prepared.materials[i] for i in test]
    scores = score_methods(images, prepared.truths[test], materials)
    per_run = [paired_margin(scores[f"avae_{i}"], scores[f"vae_{i}"]) for i in range(len(runs))]
    between = {k: [r[k]["margin"] for r in per_run] for k in ("psnr", "ssim")}
    result = {
        "scores": {name: {"psnr": s["psnr"], "ssim": s["ssim"]} for name, s in scores.items()},
        "margin_avae_minus_vae_per_run": per_run,
        "margin_over_runs": {k: {"mean": float(np.mean(v)), "std_between_runs": float(np.std(v, ddof=1)) if len(v) > 1 else None}
                             for k, v in between.items()},
        "score_std_between_runs": {kind: {k: float(np.std([scores[f"{kind}_{i}"][k] for i in range(len(runs))], ddof=1))
                                          for k in ("psnr", "ssim")} for kind in ("avae", "vae")} if len(runs) > 1 else None,
        "ensemble_margins": {b: paired_margin(scores["avae_ensemble"], scores[b])
                             for b in ("vae_ensemble", "hrtem", "average", "weighted", "hrtem_net") if b in scores},
        "test_regions": len(test), "seconds": time.perf_counter() - t0,
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", nargs=2, action="append", type=Path, required=True, metavar=("AVAE", "VAE"))
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="held-out simulation seeds")
    p.add_argument("--n", type=int, default=400, help="regions per seed (default %(default)s)")
    p.add_argument("--variation", action="store_true", help="simulate with emfuse.pipeline.synth.tem_modes.VARIED")
    p.add_argument("--hrtem-net", type=Path, default=None,
                   help="a one-mode network trained alike on the HRTEM alone, scored as 'hrtem_net'")
    p.add_argument("--fitted-illumination", dest="flat_reference", action="store_false",
                   help="fit the illumination instead of dividing by the flat reference (as avae_eval.py)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {"runs": [[str(a), str(b)] for a, b in args.run], "hrtem_net": str(args.hrtem_net), "n": args.n, "variation": args.variation,
           "flat_reference": args.flat_reference, "seeds": {}}
    for seed in args.seeds:
        r = evaluate_seed(seed, args.n, args.run, args.variation, args.hrtem_net, args.flat_reference)
        out["seeds"][str(seed)] = r
        print(f"seed {seed} ({r['test_regions']} test regions, {r['seconds']:.0f} s)")
        for i, m in enumerate(r["margin_avae_minus_vae_per_run"]):
            print(f"  run {i}: avae {r['scores'][f'avae_{i}']['psnr']:.3f} dB / {r['scores'][f'avae_{i}']['ssim']:.4f}, "
                  f"vae {r['scores'][f'vae_{i}']['psnr']:.3f} / {r['scores'][f'vae_{i}']['ssim']:.4f}; "
                  f"margin {m['psnr']['margin']:+.3f} ±{m['psnr']['standard_error']:.3f} dB, "
                  f"{m['ssim']['margin']:+.4f} ±{m['ssim']['standard_error']:.4f}")
        print(f"  over runs: {r['margin_over_runs']}; score spread between runs: {r['score_std_between_runs']}")
        for b, m in r["ensemble_margins"].items():
            print(f"  avae ensemble - {b}: {m['psnr']['margin']:+.3f} ±{m['psnr']['standard_error']:.3f} dB, "
                  f"{m['ssim']['margin']:+.4f} ±{m['ssim']['standard_error']:.4f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
