"""AVAE multi-mode TEM fusion against its baselines, on simulated regions with a ground truth.

    python benchmarks/avae_eval.py --seed 1 --n 200 --json results/avae_seed1.json
    python benchmarks/avae_eval.py --seed 2 --n 60 --json out.json --pretrained

Simulates ``N`` regions from ``seed`` (:mod:`pipeline.avae.simulate`, the material classes in
turn), preprocesses each (flat field, equalisation, registration, denoising), splits them
70/15/15 into train/validation/test, trains the AVAE and the same network without attention
(``vae``, equal weights) with the same settings and seed, or loads the committed default
weights with ``--pretrained``, and scores on the test regions, after an affine calibration of
every image to the truth:

``avae``, ``vae``, ``hrtem`` (HRTEM alone), ``average`` (mean of the registered modes),
``weighted`` (least-squares mode weights fitted on the validation regions).

It also trains a small material-class classifier on the training regions' images of each kind
and reports its accuracy on the test regions (the feature-extraction check), and the
registration error of BF and DF against the simulated drift. Writes
``{"methods": {"avae": {"psnr": ..., "ssim": ...}, ...}, ...}`` to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.avae import classify  # noqa: E402
from pipeline.avae.baselines import fit_mode_weights  # noqa: E402
from pipeline.avae.evaluate import method_images, prepare_regions, score_methods, split_indices  # noqa: E402
from pipeline.avae.model import DEFAULT_WEIGHTS, VAE_WEIGHTS, AVAEConfig, load_avae, save_avae  # noqa: E402
from pipeline.avae.simulate import MATERIALS, MODES, simulate_regions  # noqa: E402
from pipeline.avae.train import TrainSettings, train_avae  # noqa: E402

PAPER = {"psnr_gain_over_hrtem_db": 5.2, "ssim_gain_over_hrtem": 0.15}
BASELINES = ("hrtem", "average", "weighted", "vae")


def _hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__} CPU"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n", type=int, required=True, help="regions to simulate")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--size", type=int, default=192, help="region side in px (default %(default)s)")
    p.add_argument("--pretrained", action="store_true", help="load the committed default weights, do not train")
    p.add_argument("--steps", type=int, default=TrainSettings().steps)
    p.add_argument("--lr", type=float, default=TrainSettings().lr)
    p.add_argument("--beta", type=float, default=TrainSettings().beta)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--classifier-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-models", type=Path, default=None, help="directory to save the trained weights")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    prepared = prepare_regions(simulate_regions(args.n, (args.size, args.size), args.seed))
    t_sim = time.perf_counter() - t0
    train, val, test = split_indices(args.n, args.seed)
    print(f"{args.n} regions of {args.size}^2 simulated and preprocessed in {t_sim:.0f} s; "
          f"split {len(train)}/{len(val)}/{len(test)}", flush=True)

    training: dict = {"pretrained": args.pretrained}
    models = {}
    if args.pretrained:
        models = {"avae": load_avae(DEFAULT_WEIGHTS), "vae": load_avae(VAE_WEIGHTS)}
        training["weights"] = [str(DEFAULT_WEIGHTS), str(VAE_WEIGHTS)]
    else:
        settings = TrainSettings(steps=args.steps, lr=args.lr, beta=args.beta, seed=args.seed, threads=args.threads)
        for name, attention in (("avae", True), ("vae", False)):
            cfg = AVAEConfig(features=args.features, latent=args.latent, attention=attention)
            model, history = train_avae(
                prepared.inputs[train], prepared.targets[train], cfg, settings,
                validation=(prepared.inputs[val], prepared.targets[val]),
                progress=lambda step, rec, name=name: print(
                    f"  {name} step {step}: recon {rec['recon']:.4f} kl {rec['kl']:.3f} "
                    f"val {rec.get('validation_mse', float('nan')):.4f}", flush=True))
            models[name] = model
            training[name] = {k: history[k] for k in ("seconds", "best_step", "validation", "settings", "config")}
            print(f"{name}: trained in {history['seconds']:.0f} s (best step {history['best_step']})", flush=True)
            if args.save_models:
                save_avae(model, args.save_models / f"{name}.safetensors", metadata={
                    "trained_on": f"simulate_regions(n={args.n}, size={args.size}, seed={args.seed}), train split",
                    "best_step": history["best_step"], "settings": history["settings"]})

    weights = fit_mode_weights(prepared.inputs[val], prepared.targets[val])
    images = method_images(prepared.inputs[test], models, weights, hrtem_index=MODES.index("hrtem"))
    materials = [prepared.materials[i] for i in test]
    methods = score_methods(images, prepared.truths[test], materials)
    methods = {name: methods[name] for name in ("avae", *BASELINES)}
    avae = methods["avae"]
    margins = {b: {"psnr_db": avae["psnr"] - methods[b]["psnr"], "ssim": avae["ssim"] - methods[b]["ssim"]}
               for b in BASELINES}
    per_region_wins = {b: {"psnr": float(np.mean(np.array(avae["psnr_per_region"]) > np.array(methods[b]["psnr_per_region"]))),
                           "ssim": float(np.mean(np.array(avae["ssim_per_region"]) > np.array(methods[b]["ssim_per_region"])))}
                       for b in BASELINES}

    # feature extraction: material class from crops of each kind of image
    t1 = time.perf_counter()
    labels = np.array([sorted(MATERIALS).index(m) for m in prepared.materials])
    train_images = method_images(prepared.inputs[train], models, weights, hrtem_index=MODES.index("hrtem"))
    kinds = {"avae": (train_images["avae"], images["avae"]),
             "average": (train_images["average"], images["average"]),
             **{m: (prepared.inputs[train][:, i], prepared.inputs[test][:, i]) for i, m in enumerate(MODES)},
             "truth": (prepared.truths[train], prepared.truths[test])}
    classification = {}
    for kind, (tr, te) in kinds.items():
        net = classify.train_classifier(np.stack(tr), labels[train], n_classes=len(MATERIALS),
                                        steps=args.classifier_steps, seed=args.seed)
        classification[kind] = classify.accuracy(net, np.stack(te), labels[test])
    t_cls = time.perf_counter() - t1

    result = {
        "methods": methods,
        "margins_avae_minus": margins,
        "avae_wins_per_region": per_region_wins,
        "avae_beats_every_baseline": all(m["psnr_db"] > 0 and m["ssim"] > 0 for m in margins.values()),
        "paper_claims": PAPER,
        "classification_accuracy": classification,
        "registration_error_px": {m: {"median": float(np.median(prepared.registration_error[:, i])),
                                      "mean": float(np.mean(prepared.registration_error[:, i])),
                                      "unregistered_median": float(np.median(np.linalg.norm(prepared.drift[:, i], axis=1)))}
                                  for i, m in enumerate(MODES) if m != "hrtem"},
        "mode_weights_weighted": dict(zip([*MODES, "offset"], weights.tolist())),
        "setup": {"seed": args.seed, "n": args.n, "size": args.size, "split": [len(train), len(val), len(test)],
                  "test_regions": test.tolist(), "simulate_seconds": t_sim, "classifier_seconds": t_cls,
                  "classifier_steps": args.classifier_steps, "hardware": _hardware(),
                  "calibration": "affine fit a*image+c to the truth per image, for every method",
                  "psnr": "data range = truth max - min", "ssim": "gaussian window sigma 1.5 px"},
        "training": training,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'method':>9} {'PSNR (dB)':>10} {'SSIM':>7}")
    for name, m in methods.items():
        print(f"{name:>9} {m['psnr']:>10.2f} {m['ssim']:>7.3f}")
    print("classification accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in classification.items()))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
