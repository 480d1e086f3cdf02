"""Train a restoration network on a lent GPU in a few minutes: one prepared run (issue 13, item 5).

    OUT=DIR python3 benchmarks/gpu_train_restore.py [--minutes 7] [--config medium] [--init PATH]
        [--batch 16] [--patch 128] [--workers N] [--device cuda]

Needs only NumPy, SciPy, PyTorch, safetensors and tqdm, so the device machine's own ``python3``
runs it from the repository root with ``PYTHONPATH=.`` (nothing to install there).

1. Calibration: 40 steps with the run's settings into a scratch folder; seconds per step from
   step 10 to 40 (the data workers started and the GPU warm).
2. The run: as many steps as fit in ``--minutes`` at that speed, the cosine schedule over exactly
   those steps, on the broad scenes (``--data scenes --modality all --resolution all
   --hold-out``: the held-out families are never drawn), with ``--workers`` data workers
   (default: ``train-restore``'s for the device: all cores but two, at most 8, on a GPU).
   ``max_seconds`` stops it (with a checkpoint) at 1.2 x the budget whatever happens.
3. ``$OUT`` (default ``./gpu_train_out``): ``model.safetensors`` (loads with
   ``load_model(path)``), ``train_log.jsonl``, ``train_config.json`` and ``gpu_train_restore.json``
   (device, calibration, steps, seconds, the last validation). Checkpoints stay in the scratch
   folder: they hold the optimiser too, and files coming back from a device are limited in size.

Then, on the development machine, the held-out table against the cached baselines:
``benchmarks/restore_quality.py --n 4 --cache CACHE --model gpu=DIR/model.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=7.0, help="training budget (default %(default)s)")
    parser.add_argument("--config", default="medium", help="architecture from scratch (default %(default)s)")
    parser.add_argument("--init", default="scratch", help="or fine-tune a model file or name")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=None, help="default 1e-3 from scratch, 1e-4 fine-tuning")
    parser.add_argument("--noise-only", type=float, default=0.0, metavar="FRACTION",
                        help="pairs from a clean scan (emfuse train-restore --noise-only)")
    parser.add_argument("--max-jitter-angstrom", type=float, default=None, metavar="A",
                        help="the S(T)EM scan jitter at most this many Å (emfuse train-restore --max-jitter-angstrom)")
    parser.add_argument("--balance", default="mean", choices=["mean", "relative"],
                        help="how a batch's images count in the loss (emfuse train-restore --balance)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None,
                        help="data workers (default: train-restore's for the device, all cores but two, at most 8)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_train_out")))
    return parser.parse_args(argv)


def seconds_per_step(log: Path, first: int = 10) -> float:
    """Mean seconds per step after ``first`` steps, from a run's ``train_log.jsonl``."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [line for line in lines if "val" not in line]
    return (steps[-1]["seconds"] - steps[first - 1]["seconds"]) / (len(steps) - first)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from emfuse.flows.tools.train_restore import default_data_workers, training_config
    from emfuse.pipeline.restore.train import train

    if args.workers is None:
        args.workers = default_data_workers(args.device)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA GPU; use --device cpu to try the script here")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_train_"))

    def config(steps: int):
        return training_config(steps=steps, batch=args.batch, patch=args.patch, modality="all",
                               resolution="all", init=args.init,
                               config=None if args.init != "scratch" else args.config, lr=args.lr,
                               checkpoint_every=max(steps // 10, 1), seed=args.seed, data="scenes",
                               hold_out=True, balance=args.balance, noise_only=args.noise_only,
                               max_jitter_angstrom=args.max_jitter_angstrom)

    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device {device}; {args.workers} data workers; calibrating 40 steps ...", flush=True)
    started = time.perf_counter()
    train(scratch / "calibration", config(40), device=args.device, progress=False, data_workers=args.workers)
    per_step = seconds_per_step(scratch / "calibration" / "train_log.jsonl")
    budget = 60.0 * args.minutes
    steps = max(int(budget / per_step), 20)
    print(f"{per_step:.3f} s a step: training {steps} steps ({budget:.0f} s)", flush=True)
    run = scratch / "run"
    result = train(run, config(steps), device=args.device, progress=False, data_workers=args.workers,
                   max_seconds=1.2 * budget)
    for name in ("model.safetensors", "train_log.jsonl", "train_config.json"):
        (args.out / name).write_bytes((run / name).read_bytes())
    summary = {
        "device": device, "torch": torch.__version__, "data_workers": args.workers,
        "calibration_s_per_step": per_step, "steps_planned": steps, "steps_done": result.step,
        "train_s": result.seconds, "s_per_step": seconds_per_step(run / "train_log.jsonl"),
        "wall_s": time.perf_counter() - started, "last": result.last, "val": result.val,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
    }
    (args.out / "gpu_train_restore.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("steps_done", "s_per_step", "val", "wall_s")}), flush=True)
    return 0 if result.step == steps else 1


if __name__ == "__main__":
    raise SystemExit(main())
