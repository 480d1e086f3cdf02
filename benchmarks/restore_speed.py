"""Speed of r_em restoration: torch CPU fp32 / bf16 side by side with TensorFlow tk-r-em, CUDA (issue 4).

    .venv/bin/python benchmarks/restore_speed.py [--size 1024] [--repeats 3] [--threads 2]
        [--tf-python /work/tfvenv/bin/python] [--variants fp32-reference,fp32,bf16]
        [--tile N] [--movie-frames N] [--json out.json]

1. CPU, side by side in one run: one whole-image forward of ``load_model("r_em:sfr_hrstem")``
   (a freshly initialised CGRDN of the published configuration if the weights are not
   available) on a ``--size``² synthetic HR-STEM frame (dose 20), in inference mode, for each
   variant of :data:`CPU_VARIANTS` (``fp32-reference``: the plain modules, as before the
   channels-last oneDNN path; ``fp32``: that path; ``bf16``: it under CPU bf16 autocast), and
   ``base_model.predict`` of tk-r-em's TensorFlow model in a subprocess of ``--tf-python`` (a
   separate venv: ``python3.11 -m venv /work/tfvenv && /work/tfvenv/bin/pip install
   "tensorflow-cpu==2.12.*" tk-r-em==1.0.4 "numpy<2"``; TensorFlow never goes into emfuse's
   venv) on the same input with the same number of intra-op threads. The runs are
   interleaved (one round = every variant once; a warm-up round, then ``--repeats`` timed
   rounds; medians), and the script prints the speed-up over TensorFlow, the max abs
   difference of each output from the torch fp32 one, and each output's PSNR against the
   noise-free truth (bf16's loss against fp32 is the difference of the two).
2. With CUDA: single-image latency (fp32, bf16, fp16) of ``emfuse.pipeline.restore.inference.restore``
   (``--tile``, default the whole image), and the throughput (frames/s) of the restore job on
   a ``--movie-frames`` x ``--size``² movie, Zarr to Zarr, on a ``local-threads`` Dask cluster
   (default 1000 frames on CUDA; on the CPU only when ``--movie-frames`` is given).

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (see below). The machine's load average is
printed at every round: on a shared machine the figures are only as good as the share of the
cores the benchmark had.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# OpenMP threads that spin while waiting for a busy core slowed a 2-thread forward 2.4x on the
# shared 2-core machine (256², bf16); passive waiting made 2 threads as fast as 1 or faster.
# Read once when torch starts: set it here, before the import (an explicit setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.restore.inference import restore
from emfuse.pipeline.synth import make_movie

MODEL = "r_em:sfr_hrstem"


def load_network() -> tuple[torch.nn.Module, str]:
    from emfuse.pipeline.restore import load_model

    try:
        return load_model(MODEL), MODEL
    except (ImportError, ValueError, OSError) as exc:
        from emfuse.pipeline.restore.cgrdn import CGRDN

        print(f"{MODEL} not available ({exc}); timing a freshly initialised CGRDN (published config)")
        return CGRDN().eval(), "CGRDN() random init"


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


#: CPU variants of one whole-image forward: (label, model.fast, autocast dtype).
CPU_VARIANTS = {
    "fp32-reference": ("torch fp32, plain modules (before)", False, None),
    "fp32": ("torch fp32, channels-last oneDNN path", True, None),
    "bf16": ("torch bf16 autocast, channels-last oneDNN path", True, torch.bfloat16),
    "bf16-reference": ("torch bf16 autocast, plain modules", False, torch.bfloat16),
}

# Run in the TensorFlow venv (--tf-python): loads tk_r_em, then answers commands on stdin,
# one per line: "run" times one base_model.predict of the input (prints the seconds),
# "save PATH" writes the last output, "quit". Threads are set before TensorFlow starts.
TF_WORKER = r"""
import os, sys, time
threads = int(sys.argv[3])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
import tk_r_em
net = tk_r_em.load_network(sys.argv[1])
x = np.load(sys.argv[2])[None, :, :, None].astype(np.float32)
print("ready", tf.__version__, "oneDNN" if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0" else "", flush=True)
out = None
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
        t = time.perf_counter()
        out = net.base_model.predict(x, batch_size=1, verbose=0)
        print(time.perf_counter() - t, flush=True)
    elif cmd[0] == "save":
        np.save(cmd[1], np.asarray(out, np.float32)[0, :, :, 0])
        print("saved", flush=True)
    else:
        break
"""


class TFWorker:
    """tk-r-em's TensorFlow model in a subprocess of another Python (TensorFlow's own venv)."""

    def __init__(self, python: str, image: np.ndarray, threads: int, tmp: Path) -> None:
        import subprocess

        np.save(tmp / "input.npy", image)
        self.tmp = tmp
        self.proc = subprocess.Popen(
            [python, "-c", TF_WORKER, MODEL.split(":", 1)[1], str(tmp / "input.npy"), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)})
        self.version = self._answer()

    def _answer(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"TensorFlow worker exited (code {self.proc.wait()})")
        return line.strip()

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def output(self) -> np.ndarray:
        self.proc.stdin.write(f"save {self.tmp / 'tf_out.npy'}\n")
        self.proc.stdin.flush()
        self._answer()
        return np.load(self.tmp / "tf_out.npy")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def torch_forward(net, image: np.ndarray, fast: bool, autocast) -> tuple[float, np.ndarray]:
    """Seconds of one whole-image forward (inference mode) and its float32 output."""
    import contextlib

    x = torch.from_numpy(image)[None, None]
    net.fast = fast
    cast = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        start = time.perf_counter()
        y = net(x)
        seconds = time.perf_counter() - start
    net.fast = True
    return seconds, y.float().numpy()[0, 0]


def cpu_side_by_side(net, image, truth, variants, repeats, tf_python) -> dict[str, Any]:
    """Interleaved rounds: every variant (and TensorFlow) once per round; one warm-up round.

    Medians over the ``repeats`` timed rounds; the load average is read at every round.
    """
    rows: dict[str, Any] = {}
    runners: dict[str, Any] = {}
    outputs: dict[str, np.ndarray] = {}
    tmpdir = tempfile.TemporaryDirectory(prefix="restore_speed_tf_")
    worker = None
    if tf_python:
        try:
            worker = TFWorker(tf_python, image, torch.get_num_threads(), Path(tmpdir.name))
            runners["tensorflow"] = worker.run
            rows["tensorflow"] = {"label": f"TensorFlow tk-r-em predict ({worker.version})"}
        except (OSError, RuntimeError) as exc:
            rows["tensorflow"] = {"skipped": f"{tf_python}: {exc}"}
            print(f"  TensorFlow: skipped ({exc})")
    else:
        rows["tensorflow"] = {"skipped": "no --tf-python given"}
        print("  TensorFlow: skipped (give --tf-python PATH, the python of a venv with tensorflow-cpu "
              "2.12 and tk-r-em 1.0.4)")
    for key in variants:
        label, fast, autocast = CPU_VARIANTS[key]
        rows[key] = {"label": label}

        def run(key=key, fast=fast, autocast=autocast):
            seconds, outputs[key] = torch_forward(net, image, fast, autocast)
            return seconds

        runners[key] = run
    times: dict[str, list[float]] = {k: [] for k in runners}
    loads = []
    for rnd in range(repeats + 1):
        for key, fn in runners.items():
            seconds = fn()
            if rnd:
                times[key].append(seconds)
            print(f"  round {rnd}{' (warm-up)' if not rnd else ''} {key:<16} {seconds:8.2f} s "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        loads.append(os.getloadavg()[0])
    if worker is not None:
        outputs["tensorflow"] = worker.output()
        worker.close()
    tmpdir.cleanup()
    for key, ts in times.items():
        rows[key].update(seconds=statistics.median(ts), runs=ts)
    ref_key = "fp32" if "fp32" in outputs else next(iter(outputs))
    ref = outputs[ref_key]
    for key, out in outputs.items():
        rows[key]["psnr_vs_truth_db"] = psnr(out, truth)
        if key != ref_key:
            rows[key][f"psnr_vs_{ref_key}_db"] = psnr(out, ref)
            rows[key][f"max_abs_diff_vs_{ref_key}"] = float(np.abs(out - ref).max())
    if "tensorflow" in outputs:
        rows["tensorflow"]["max_abs_diff_torch_fp32"] = float(np.abs(outputs["tensorflow"] - ref).max())
        rows["tensorflow"]["output_range"] = float(np.ptp(outputs["tensorflow"]))
    base = rows.get("tensorflow", {}).get("seconds")
    print(f"\n  {'variant':<16} {'median s':>9} {'vs TF':>7} {'PSNR vs truth':>14}  notes")
    for key, row in rows.items():
        if "seconds" not in row:
            continue
        ratio = f"{base / row['seconds']:6.2f}x" if base else "      -"
        notes = [f"{k} {v:.3g}" for k, v in row.items() if k.startswith(("psnr_vs_fp", "max_abs"))]
        print(f"  {key:<16} {row['seconds']:9.2f} {ratio:>7} {row['psnr_vs_truth_db']:11.2f} dB  {'; '.join(notes)}")
    if "bf16" in rows and "fp32" in rows and "psnr_vs_truth_db" in rows["bf16"]:
        loss = rows["fp32"]["psnr_vs_truth_db"] - rows["bf16"]["psnr_vs_truth_db"]
        rows["bf16"]["psnr_loss_vs_fp32_db"] = loss
        print(f"  bf16 PSNR loss against the truth vs fp32: {loss:.3f} dB")
    rows["load_average_per_round"] = loads
    print(f"  load average at the end of each round: {', '.join(f'{v:.1f}' for v in loads)}")
    return rows


def cuda_latency(net, image, tile, repeats) -> dict[str, Any]:
    rows = {}
    sync = torch.cuda.synchronize
    net = net.to("cuda")
    ref = None
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        seconds, out = timed(lambda dtype=dtype: restore(image, net, tile=tile, device="cuda", dtype=dtype),
                             repeats, sync)
        rows[name] = {"seconds": seconds}
        if ref is None:
            ref = out
        else:
            rows[name]["psnr_vs_fp32_db"] = psnr(out, ref)
        print(f"  cuda {name:<6} {seconds * 1e3:8.1f} ms")
    # bf16 with torch.compile (CUDA graphs): the first call compiles, so it is run once untimed
    from emfuse.pipeline.restore.inference import compile_network, tile_network

    compiled = compile_network(tile_network(net, "image"), "cuda")
    run = lambda: restore(image, net, tile=tile, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                          compile=True, network=compiled)
    start = time.perf_counter()
    run()
    sync()
    compile_s = time.perf_counter() - start
    seconds, out = timed(run, repeats, sync)
    rows["bf16+compile"] = {"seconds": seconds, "compile_seconds": compile_s, "psnr_vs_fp32_db": psnr(out, ref)}
    print(f"  cuda bf16+compile {seconds * 1e3:8.1f} ms (compiled in {compile_s:.0f} s)")
    net.to("cpu")
    return rows


def movie_throughput(frames: int, size: int, model_name: str, device: str, tile: int,
                     cluster: str, batch: int) -> dict[str, Any]:
    import dask.array as da

    from emfuse.cluster import connect
    from emfuse.flows.jobs import run_job
    from emfuse.stores.formats import canonical_dataset
    from emfuse.stores.ingest import chunk_canonical
    from emfuse.stores.zarrio import write_dataset

    with tempfile.TemporaryDirectory(prefix="restore_speed_") as tmp:
        unique = make_movie((size, size), min(frames, 8), seed=1).movie
        movie = da.concatenate([da.from_array(unique, chunks=(1, size, size))] * -(-frames // len(unique)))
        store = write_dataset(chunk_canonical(canonical_dataset("benchmark movie", movie=movie[:frames])),
                              Path(tmp) / "movie.zarr")
        model = model_name if model_name.startswith("r_em:") else None
        if model is None:  # a random CGRDN: saved so that the job's workers can load it
            from emfuse.pipeline.restore import save_model
            from emfuse.pipeline.restore.cgrdn import CGRDN

            model = str(save_model(CGRDN(), Path(tmp) / "random.safetensors"))
        with connect(cluster) as client:
            start = time.perf_counter()
            job = run_job("restore", store, Path(tmp) / "out.zarr", client, model=model,
                            device=device, tile=tile, batch=batch, progress=True)
            seconds = time.perf_counter() - start
        row = {"frames": frames, "size": size, "seconds": seconds, "frames_per_s": frames / seconds,
               "block": job.block, "device": device, "cluster": cluster}
    print(f"  restore job {frames} x {size}² on {device}: {seconds:.1f} s, {row['frames_per_s']:.2f} frames/s "
          f"(plan, model loads and Zarr I/O included)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, default=None, help="default: the whole image")
    parser.add_argument("--movie-frames", type=int, default=None,
                        help="frames of the job throughput run (default 1000 on CUDA, none on CPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cluster", default="local-threads")
    parser.add_argument("--tf-python", default=None,
                        help="python of a venv with tensorflow-cpu 2.12 and tk-r-em 1.0.4: times tk-r-em "
                             "in a subprocess, interleaved with the torch runs")
    parser.add_argument("--variants", default="fp32-reference,fp32,bf16",
                        help=f"comma-separated CPU variants, of {', '.join(CPU_VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and TensorFlow) CPU threads (default torch's: all cores); 1 gives per-core figures "
                             "that stay meaningful on a busy machine")
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA part")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tile = args.tile or args.size
    net, name = load_network()
    synth = make_movie((args.size, args.size), 1, seed=0)
    image, truth = synth.movie[0], synth.true_movie[0]
    results: dict[str, Any] = {
        "model": name, "size": args.size, "tile": tile, "repeats": args.repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg()[0], "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "cpu_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }
    print(f"{name}, {args.size}² image, tile {tile}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads (TensorFlow: same intra-op, 1 inter-op), OMP_WAIT_POLICY={results['omp_wait_policy']}, "
          f"oneDNN bf16 {'supported' if results['cpu_bf16'] else 'NOT supported (bf16 emulated, slow)'}, "
          f"load average {results['load_average_before']:.1f}")
    if not args.skip_cpu:
        if tile != args.size:
            print("  (CPU side by side: whole image; --tile applies to the CUDA and movie parts)")
        variants = [v for v in args.variants.split(",") if v]
        unknown = set(variants) - set(CPU_VARIANTS)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(CPU_VARIANTS)}")
        results["cpu"] = cpu_side_by_side(net, image, truth, variants, args.repeats, args.tf_python)
    if torch.cuda.is_available():
        results["cuda_device"] = torch.cuda.get_device_name(0)
        results["cuda"] = cuda_latency(net, image, tile, args.repeats)
        frames = 1000 if args.movie_frames is None else args.movie_frames
        if frames:
            results["movie"] = movie_throughput(frames, args.size, name, "cuda", min(tile, 1024),
                                                args.cluster, args.batch)
    else:
        print("  CUDA: skipped, torch.cuda.is_available() is False")
        if args.movie_frames:
            results["movie"] = movie_throughput(args.movie_frames, args.size, name, "cpu", tile,
                                                args.cluster, args.batch)
    results["load_average_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
