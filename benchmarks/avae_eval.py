"""AVAE multi-mode TEM fusion against its baselines, on simulated regions with a ground truth.

    python benchmarks/avae_eval.py --seed 1 --n 200 --json results/avae_seed1.json
    python benchmarks/avae_eval.py --seed 2 --n 60 --json out.json --pretrained
    python benchmarks/avae_eval.py --seed 0 --n 200 --variation --attention-from stats --compare-z --json v0.json --save-models DIR
    python benchmarks/avae_eval.py --seed 1 --n 400 --pretrained --fitted-illumination --json fitted1.json
    python benchmarks/avae_eval.py --seed 3 --n 400 --hold-out ceramic --json held_ceramic.json
    python benchmarks/avae_eval.py --seed 3 --n 400 --hold-out metal --base restored_hrtem --base-cache bases.npz \
        --load vae=held_metal/vae.safetensors --load avae_plain=held_metal/avae.safetensors --json residual.json

Simulates ``N`` regions from ``seed`` (:mod:`emfuse.pipeline.synth.tem_modes`, the material classes in
turn), preprocesses each (flat field, equalisation, registration, denoising), splits them
70/15/15 into train/validation/test, trains the AVAE and the same network without attention
(``vae``, equal weights) with the same settings and seed, or loads the committed default
weights with ``--pretrained``, and scores on the test regions, after an affine calibration of
every image to the truth:

``avae``, ``vae``, ``hrtem`` (HRTEM alone), ``average`` (mean of the registered modes),
``weighted`` (least-squares mode weights fitted on the validation regions), ``hrtem_wiener``
(the recorded HRTEM through a Wiener filter estimated from the image alone) and ``hrtem_restored``
and ``hrtem_r_em`` (the recorded HRTEM through the project's default restoration network and the
published ``r_em:sfr_hrtem``; ``--restoration``), and with
``--compare-z`` ``avae_z`` (the paper's ``softmax(a'[z])``; ``avae`` is then the attention chosen
by ``--attention-from``: the paper's ``z`` by default, or the uncertainty-aware ``stats``). ``--variation`` simulates with
per-region variation of mode quality (:data:`emfuse.pipeline.synth.tem_modes.VARIED`). Every mode is
divided by its recorded illumination (its flat reference), as tem-fuse does for the stores of
``emfuse synth tem-modes``, and ``--pretrained`` loads the weights trained that way;
``--fitted-illumination`` fits the illumination as a smooth surface instead (as for data
without a reference) and loads the weights trained that way; ``--load NAME=PATH``
reuses trained weights for one network instead of training it. Margins are paired over the test
regions and reported with the standard error of the mean per-region difference.

It also trains a small material-class classifier on the training regions' images of each kind
and reports its accuracy on the test regions (the feature-extraction check), and the
registration error of BF and DF against the simulated drift.

``--base restored_hrtem`` trains the AVAE as a residual on the HRTEM restored by
``--base-model`` (:mod:`emfuse.pipeline.avae.base`; the restorations are computed once per region,
kept in ``--base-cache`` for the next run on the same regions, and reused as that network's
``hrtem_NAME`` baseline). Networks given with ``--load NAME=PATH`` under other names than
``avae``/``vae`` are compared too. Per test region it checks whether the AVAE is at least as
good as the best single method of that region (``hrtem``, ``bf``, ``df`` and the restored
HRTEM of the base network; :func:`emfuse.pipeline.avae.evaluate.never_worse`), per family. Writes
``{"methods": {"avae": {"psnr": ..., "ssim": ...}, ...}, ...}`` to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emfuse.pipeline.avae import classify  # noqa: E402
from emfuse.pipeline.avae.base import load_base_network, region_bases, with_base  # noqa: E402
from emfuse.pipeline.avae.baselines import fit_mode_weights  # noqa: E402
from emfuse.pipeline.avae.evaluate import (  # noqa: E402
    method_images,
    never_worse,
    paired_margin,
    prepare_regions,
    score_methods,
    split_indices,
)
from emfuse.pipeline.avae.fuse import fuse_modes  # noqa: E402
from emfuse.pipeline.avae.model import (  # noqa: E402
    ATTENTION_INPUTS,
    BASES,
    DEFAULT_BASE_MODEL,
    FLAT_VAE_WEIGHTS,
    RESIDUAL_WIENER_WEIGHTS,
    VAE_WEIGHTS,
    AVAEConfig,
    load_avae,
    save_avae,
)
from emfuse.pipeline.avae.train import TrainSettings, train_avae  # noqa: E402
from emfuse.pipeline.restore import load_model  # noqa: E402
from emfuse.pipeline.synth.crystals import FAMILIES  # noqa: E402
from emfuse.pipeline.synth.tem_modes import MATERIALS, MODES, VARIED, simulate_regions  # noqa: E402

PAPER = {"psnr_gain_over_hrtem_db": 5.2, "ssim_gain_over_hrtem": 0.15}
BASELINES = ("hrtem", "average", "weighted", "vae", "hrtem_wiener", "hrtem_restored", "hrtem_r_em")
#: the restoration networks of the restored-HRTEM baselines (method ``hrtem_NAME``): the project's
#: default model and the published HRTEM network (through emfuse's port; needs emfuse[r_em])
RESTORATIONS = {"restored": "default", "r_em": "r_em:sfr_hrtem"}
#: the single methods of the per-region check, besides the restored HRTEM of the base network
SINGLES = ("hrtem", "bf", "df")


def _hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__} CPU"


def _missing_mode_scores(prepared, test, models, materials) -> dict:
    """Each mode left out in turn: the networks fused from the other two, and their average."""
    out = {}
    for i, mode in enumerate(MODES):
        present = np.ones(len(MODES), dtype=bool)
        present[i] = False
        images = {name: [fuse_modes(net, x, present=present)[0] for x in prepared.inputs[test]]
                  for name, net in models.items() if net.cfg.n_modes == len(MODES) and not net.cfg.has_base}
        images["average"] = [x[present].mean(axis=0) for x in prepared.inputs[test]]
        scores = score_methods(images, prepared.truths[test], materials)
        out[mode] = {k: {"psnr": v["psnr"], "ssim": v["ssim"]} for k, v in scores.items()}
    return out


def _family_margins(methods: dict, compared: tuple[str, ...], materials: list[str]) -> dict:
    """Per material family: the AVAE's paired margin (mean and standard error) over each method."""
    out = {}
    for family in sorted(set(materials)):
        keep = np.array(materials) == family
        if keep.sum() < 2:
            continue
        pick = {name: {f"{k}_per_region": np.asarray(methods[name][f"{k}_per_region"])[keep] for k in ("psnr", "ssim")}
                for name in ("avae", *compared)}
        out[family] = {b: paired_margin(pick["avae"], pick[b]) for b in compared}
    return out


def _bases(prepared, model: str, cache: Path | None, key: dict,
           regions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The base (and the restored HRTEM) of every region, or of ``regions`` only (the others NaN), by
    the restoration network ``model``, from ``cache`` when it holds them for the same regions
    (``key``), else computed and kept there."""
    if regions is not None:
        key = {**key, "regions": np.asarray(regions).tolist()}
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            if json.loads(str(f["key"])) == key:
                print(f"bases from {cache}", flush=True)
                return f["bases"], f["restored"]
    t0 = time.perf_counter()
    which = np.arange(len(prepared.hrtem)) if regions is None else np.asarray(regions)
    bases = np.full(prepared.hrtem.shape, np.nan, dtype=np.float32)
    restored = bases.copy()
    bases[which], restored[which] = region_bases(prepared.hrtem[which], load_base_network(model))
    print(f"{len(which)} HRTEMs restored by {model} in {time.perf_counter() - t0:.0f} s", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=json.dumps(key, sort_keys=True), bases=bases, restored=restored)
    return bases, restored


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n", type=int, required=True, help="regions to simulate")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--size", type=int, default=192, help="region side in px (default %(default)s)")
    p.add_argument("--pretrained", action="store_true", help="load tem-fuse's default weights (emfuse.pipeline.avae.model.RESIDUAL_WIENER_WEIGHTS) and the "
                        "committed equal-weight VAE, do not train")
    p.add_argument("--steps", type=int, default=TrainSettings().steps)
    p.add_argument("--lr", type=float, default=TrainSettings().lr)
    p.add_argument("--beta", type=float, default=TrainSettings().beta)
    p.add_argument("--crop", type=int, default=TrainSettings().crop,
                   help="training crop side in px (default %(default)s; validation crops stay 96 px)")
    p.add_argument("--batch", type=int, default=TrainSettings().batch, help="training crops per step (default %(default)s)")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--latent", type=int, default=8)
    p.add_argument("--train-seed", type=int, default=None,
                   help="seed of the networks' initialisation and crop sampling (default: --seed); "
                        "vary it to measure the spread between training runs (benchmarks/avae_runs.py)")
    p.add_argument("--mode-gains", action="store_true",
                   help="the AVAE (not the vae) gets a gain-map path from every mode to its output "
                        "(AVAEConfig.mode_gains)")
    p.add_argument("--best-single-hinge", type=float, default=0.0,
                   help="weight of the per-crop hinge on doing worse than the best single input "
                        "(TrainSettings.best_single_hinge; default %(default)s: off)")
    p.add_argument("--mode-dropout", type=float, default=TrainSettings().mode_dropout,
                   help="train with this probability of fusing a random subset of the modes (TrainSettings.mode_dropout)")
    p.add_argument("--missing", action="store_true",
                   help="also score the networks with each mode missing in turn (fused from the other two)")
    p.add_argument("--classifier-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-models", type=Path, default=None, help="directory to save the trained weights")
    p.add_argument("--attention-from", choices=ATTENTION_INPUTS, default="z",
                   help="what the AVAE's attention is computed from: 'z' the paper's a'[z] (default), "
                        "'stats' uncertainty-aware (emfuse.pipeline.avae.model.ATTENTION_INPUTS)")
    p.add_argument("--compare-z", action="store_true",
                   help="also train (or load, --z-weights) the paper's z-attention as method 'avae_z'")
    p.add_argument("--hrtem-net", action="store_true",
                   help="also train (or --load hrtem_net=PATH) the same network on the HRTEM alone "
                        "(AVAEConfig(n_modes=1)) as method 'hrtem_net': the gain of restoration without fusion")
    p.add_argument("--variation", action="store_true",
                   help="simulate with per-region variation of mode quality (emfuse.pipeline.synth.tem_modes.VARIED)")
    p.add_argument("--fitted-illumination", dest="flat_reference", action="store_false",
                   help="fit each mode's illumination as a smooth surface (as for data without a flat "
                        "reference) instead of dividing by the recorded one, which keeps BF's thickness wedge")
    p.add_argument("--avae-weights", type=Path, default=None,
                   help="with --pretrained (default: the committed AVAE for the flat field chosen)")
    p.add_argument("--vae-weights", type=Path, default=None, help="with --pretrained (default: its equal-weight twin)")
    p.add_argument("--z-weights", type=Path, default=None, help="with --pretrained --compare-z")
    p.add_argument("--load", action="append", default=[], metavar="NAME=PATH",
                   help="use these weights for network NAME (avae, vae, avae_z) instead of training it")
    p.add_argument("--linear-modes", nargs="+", choices=MODES, default=[],
                   help="modes mapped to [0, 1] linearly (1st-99th percentile) instead of equalised")
    p.add_argument("--skip-classifier", action="store_true", help="leave out the feature-extraction check")
    p.add_argument("--hold-out", nargs="+", choices=sorted({*MATERIALS, *FAMILIES}), default=None,
                   help="leave these material families out of training and validation and test on all their regions "
                        "(with --pretrained: only the test; the committed weights saw every family, which makes "
                        "the reference for the held-out training)")
    p.add_argument("--randomised", action="store_true",
                   help="the randomised simulator: structure families of pipeline.synth.crystals down random "
                        "zone axes, a random instrument per region (tem_modes.random_scope)")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=None,
                   help="with --randomised: the families to simulate (default all)")
    p.add_argument("--mixed-illumination", action="store_true",
                   help="half the regions (drawn per region) divided by their flat reference, the others "
                        "with the illumination fitted, as data with and without a reference")
    p.add_argument("--restoration", action="append", default=None, metavar="NAME=MODEL",
                   help="a restored-HRTEM baseline 'hrtem_NAME' by the network MODEL (a name of "
                        "emfuse.pipeline.restore.load_model); repeat for more, 'none' for none "
                        f"(default: {' '.join(f'{k}={v}' for k, v in RESTORATIONS.items())})")
    p.add_argument("--base", choices=BASES, default="none",
                   help="train the AVAE as a residual on this base (AVAEConfig.base; default: none)")
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL,
                   help="the restoration network of the base, or 'wiener' (default %(default)s)")
    p.add_argument("--signed-targets", action="store_true",
                   help="train a residual AVAE against the truth's own sign, not turned to its base's contrast "
                        "(TrainSettings.orient_to_base=False)")
    p.add_argument("--base-cache", type=Path, default=None,
                   help="an .npz file that keeps the regions' bases between runs on the same regions")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = RESTORATIONS if args.restoration is None else dict(
        item.split("=", 1) for item in args.restoration if item != "none")
    restorations = {name: load_model(model) for name, model in wanted.items()}  # before hours of work

    t0 = time.perf_counter()
    scope = {"scope": VARIED} if args.variation else {}
    if args.randomised:
        scope = {"randomised": True, "materials": args.families}
    elif args.families:
        p.error("--families needs --randomised")
    if args.hold_out and set(args.hold_out) - set(FAMILIES if args.randomised else MATERIALS):
        p.error(f"--hold-out {args.hold_out}: not all are {'families' if args.randomised else 'materials'} "
                "of this simulator")
    flat = args.flat_reference
    if args.mixed_illumination:
        flat = [bool(np.random.default_rng([args.seed, i, 1]).random() < 0.5) for i in range(args.n)]
    prepared = prepare_regions(simulate_regions(args.n, (args.size, args.size), args.seed, **scope),
                               flat_reference=flat, linear=[MODES.index(m) for m in args.linear_modes])
    t_sim = time.perf_counter() - t0
    train, val, test = split_indices(args.n, args.seed)
    if args.hold_out:  # a whole material family never trained on nor validated with: all its regions are tested
        held = np.array([m in args.hold_out for m in prepared.materials])
        train, val, test = train[~held[train]], val[~held[val]], np.flatnonzero(held)
    if args.pretrained and not args.avae_weights:  # tem-fuse's default, which may be a residual network too
        args.avae_weights = RESIDUAL_WIENER_WEIGHTS
    given = [*(item.split("=", 1)[1] for item in args.load), *((args.avae_weights,) if args.avae_weights else ())]
    base_models = {load_avae(path).cfg.base_model for path in given if load_avae(path).cfg.has_base}
    if args.base != "none" and not args.pretrained:
        base_models.add(args.base_model)
    if len(base_models) > 1:
        p.error(f"the residual networks compared must share one base network, got {sorted(base_models)}")
    args.base_model = next(iter(base_models), args.base_model)
    bases = restored = None
    if base_models:  # restored once; with --pretrained (no classifier) only the test regions need a base
        bases, restored = _bases(prepared, args.base_model, args.base_cache, {
            "seed": args.seed, "n": args.n, "size": args.size, "variation": args.variation,
            "flat_reference": args.flat_reference, "model": args.base_model, "randomised": args.randomised,
            "families": args.families, "mixed_illumination": args.mixed_illumination},
            regions=test if args.pretrained and args.skip_classifier else None)
    print(f"{args.n} regions of {args.size}^2 simulated and preprocessed in {t_sim:.0f} s; "
          f"split {len(train)}/{len(val)}/{len(test)}", flush=True)

    training: dict = {"pretrained": args.pretrained}
    models = {}
    if args.pretrained:
        paths = {"avae": args.avae_weights,
                 "vae": args.vae_weights or (FLAT_VAE_WEIGHTS if args.flat_reference else VAE_WEIGHTS)}
        if args.compare_z:
            if args.z_weights is None:
                p.error("--pretrained --compare-z needs --z-weights")
            paths["avae_z"] = args.z_weights
        models = {name: load_avae(path) for name, path in paths.items()}
        training["weights"] = {name: str(path) for name, path in paths.items()}
        training["configs"] = {name: asdict(m.cfg) for name, m in models.items()}
    else:
        train_seed = args.seed if args.train_seed is None else args.train_seed
        settings = TrainSettings(steps=args.steps, lr=args.lr, beta=args.beta, seed=train_seed, threads=args.threads,
                                 crop=args.crop, batch=args.batch,
                                 mode_dropout=args.mode_dropout, orient_to_base=not args.signed_targets,
                                 best_single_hinge=args.best_single_hinge)
        variants = [("avae", True, args.attention_from), ("vae", False, "z")]
        if args.compare_z:
            variants.append(("avae_z", True, "z"))
        if args.hrtem_net:
            variants.append(("hrtem_net", False, "z"))
        loaded = dict(item.split("=", 1) for item in args.load)
        for name, path in loaded.items():
            models[name] = load_avae(path)
            training[name] = {"weights": path, "config": asdict(models[name].cfg)}
        for name, attention, source in variants:
            if name in loaded:
                continue
            modes = [MODES.index("hrtem")] if name == "hrtem_net" else list(range(len(MODES)))
            base = args.base if name == "avae" else "none"
            cfg = AVAEConfig(n_modes=len(modes), features=args.features, latent=args.latent, attention=attention,
                             attention_from=source, base=base, base_model=args.base_model,
                             mode_gains=args.mode_gains and name == "avae")
            inputs = prepared.inputs[:, modes] if base == "none" else with_base(prepared.inputs[:, modes], bases)
            model, history = train_avae(
                inputs[train], prepared.targets[train], cfg, settings,
                validation=(inputs[val], prepared.targets[val]),
                progress=lambda step, rec, name=name: print(
                    f"  {name} step {step}: recon {rec['recon']:.4f} kl {rec['kl']:.3f} "
                    f"val {rec.get('validation_mse', float('nan')):.4f}", flush=True))
            models[name] = model
            training[name] = {k: history[k] for k in ("seconds", "best_step", "validation", "settings", "config")}
            print(f"{name}: trained in {history['seconds']:.0f} s (best step {history['best_step']})", flush=True)
            if args.save_models:
                save_avae(model, args.save_models / f"{name}.safetensors", metadata={
                    "trained_on": f"simulate_regions(n={args.n}, size={args.size}, seed={args.seed}"
                                  f"{', scope=VARIED' if args.variation else ''}"
                                  f"{', randomised=True' if args.randomised else ''}), train split"
                                  f"{f' without {args.hold_out}' if args.hold_out else ''}"
                                  f"{', mixed illumination' if args.mixed_illumination else ''}",
                    "best_step": history["best_step"], "settings": history["settings"]})

    weights = fit_mode_weights(prepared.inputs[val], prepared.targets[val])
    base_names = {name for name, model in wanted.items() if model == args.base_model}
    images = method_images(prepared.inputs[test], models, weights, hrtem_index=MODES.index("hrtem"),
                           hrtem=prepared.hrtem[test], restorations=restorations,
                           bases=None if bases is None else bases[test],
                           restored={} if restored is None else {n: restored[test] for n in base_names})
    materials = [prepared.materials[i] for i in test]
    methods = score_methods(images, prepared.truths[test], materials)
    singles = (*SINGLES, *(f"hrtem_{n}" for n in sorted(base_names) if f"hrtem_{n}" in methods))
    best_mode = {name: never_worse(methods, name, singles, materials) for name in models if name in methods}
    baselines = tuple(b for b in BASELINES if b in methods)
    compared = (*baselines, *(extra for extra in models if extra not in ("avae", *baselines)))
    methods = {name: methods[name] for name in ("avae", *compared)}
    avae = methods["avae"]
    margins = {b: {"psnr_db": avae["psnr"] - methods[b]["psnr"], "ssim": avae["ssim"] - methods[b]["ssim"]}
               for b in compared}
    per_region_wins = {b: {"psnr": float(np.mean(np.array(avae["psnr_per_region"]) > np.array(methods[b]["psnr_per_region"]))),
                           "ssim": float(np.mean(np.array(avae["ssim_per_region"]) > np.array(methods[b]["ssim_per_region"])))}
                       for b in compared}
    # paired spread of the per-region differences (standard error of the mean margin)
    margin_sem = {b: {k: v["standard_error"] for k, v in paired_margin(avae, methods[b]).items()} for b in compared}
    by_family = _family_margins(methods, compared, materials)
    attention_mean = {}
    for name in models:
        if models[name].cfg.attention:
            maps = [fuse_modes(models[name], x, base=bases[i] if models[name].cfg.has_base else None)[1].mean(axis=(1, 2))
                    for i, x in zip(test, prepared.inputs[test])]
            attention_mean[name] = dict(zip(MODES, np.mean(maps, axis=0).round(4).tolist()))

    missing = _missing_mode_scores(prepared, test, models, materials) if args.missing else {}

    # feature extraction: material class from crops of each kind of image
    t1 = time.perf_counter()
    classes = sorted(set(prepared.materials))
    labels = np.array([classes.index(m) for m in prepared.materials])
    train_images = method_images(prepared.inputs[train], models, weights, hrtem_index=MODES.index("hrtem"),
                                 bases=None if bases is None else bases[train]) if not args.skip_classifier else {}
    kinds = {"avae": (train_images["avae"], images["avae"]),
             "average": (train_images["average"], images["average"]),
             **{m: (prepared.inputs[train][:, i], prepared.inputs[test][:, i]) for i, m in enumerate(MODES)},
             "truth": (prepared.truths[train], prepared.truths[test])} if not args.skip_classifier else {}
    classification = {}
    for kind, (tr, te) in kinds.items():
        net = classify.train_classifier(np.stack(tr), labels[train], n_classes=len(classes),
                                        steps=args.classifier_steps, seed=args.seed)
        classification[kind] = classify.accuracy(net, np.stack(te), labels[test])
    t_cls = time.perf_counter() - t1

    result = {
        "methods": methods,
        "margins_avae_minus": margins,
        "avae_wins_per_region": per_region_wins,
        "margin_standard_error": margin_sem,
        "avae_beats_every_baseline": all(margins[b]["psnr_db"] > 0 and margins[b]["ssim"] > 0 for b in baselines),
        "margins_by_family": by_family,
        "never_worse_than_best_single": {"singles": list(singles), "by_network": best_mode},
        "mean_attention": attention_mean,
        "missing_mode": missing,
        "paper_claims": PAPER,
        "classification_accuracy": classification,
        "registration_error_px": {m: {"median": float(np.median(prepared.registration_error[:, i])),
                                      "mean": float(np.mean(prepared.registration_error[:, i])),
                                      "unregistered_median": float(np.median(np.linalg.norm(prepared.drift[:, i], axis=1)))}
                                  for i, m in enumerate(MODES) if m != "hrtem"},
        "mode_weights_weighted": dict(zip([*MODES, "offset"], weights.tolist())),
        "setup": {"seed": args.seed, "n": args.n, "size": args.size, "variation": args.variation,
                  "held_out_family": args.hold_out,
                  "flat_reference": "mixed (per region, p = 0.5)" if args.mixed_illumination else args.flat_reference,
                  "scope": ("randomised: tem_modes.random_scope per region" if args.randomised
                            else asdict(VARIED) if args.variation else "Microscope() defaults"),
                  "families": args.families if args.randomised else None, "split": [len(train), len(val), len(test)],
                  "test_regions": test.tolist(), "simulate_seconds": t_sim, "classifier_seconds": t_cls,
                  "classifier_steps": args.classifier_steps, "hardware": _hardware(),
                  "calibration": "affine fit a*image+c to the truth per image, for every method",
                  "psnr": "data range = truth max - min", "ssim": "gaussian window sigma 1.5 px"},
        "training": training,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'method':>9} {'PSNR (dB)':>10} {'SSIM':>7}   avae margin (± s.e.)")
    for name, m in methods.items():
        extra = (f"   {margins[name]['psnr_db']:+.3f} ±{margin_sem[name]['psnr']:.3f} dB  "
                 f"{margins[name]['ssim']:+.4f} ±{margin_sem[name]['ssim']:.4f}") if name in margins else ""
        print(f"{name:>9} {m['psnr']:>10.2f} {m['ssim']:>7.3f}{extra}")
    for family, rows in by_family.items():
        print(f"{family}: " + ", ".join(f"avae - {b} {r['psnr']['margin']:+.2f} ±{r['psnr']['standard_error']:.2f} dB"
                                        for b, r in rows.items()))
    for name, rows in best_mode.items():
        print(f"{name} >= best single ({', '.join(singles)}) per region: " + "; ".join(
            f"{fam} {r['psnr']['fraction']:.0%} PSNR (worst {r['psnr']['worst_deficit']:+.2f} dB), "
            f"{r['ssim']['fraction']:.0%} SSIM (worst {r['ssim']['worst_deficit']:+.3f})" for fam, r in rows.items()))
    print(f"mean attention: {attention_mean}")
    for mode, scores in missing.items():
        print(f"{mode} missing: " + ", ".join(f"{k} {v['psnr']:.2f} dB / {v['ssim']:.3f}" for k, v in scores.items()))
    print("classification accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in classification.items()))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
