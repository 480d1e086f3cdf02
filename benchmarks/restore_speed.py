"""Speed of r_em restoration: CPU fp32 vs channels-last vs bf16 autocast, CUDA, TensorFlow (issue 4).

    .venv/bin/python benchmarks/restore_speed.py [--size 1024] [--repeats 3] [--tile N]
                                                 [--movie-frames N] [--json out.json]

1. Single-image latency of ``pipeline.restore.inference.restore`` on a ``--size``² synthetic
   HR-STEM frame (dose 20) with ``load_model("r_em:sfr_hrstem")`` (a freshly initialised
   CGRDN of the published configuration if the weights are not available: same cost,
   meaningless output), median of ``--repeats`` runs after a warm-up, on the CPU in fp32, in
   channels-last and under bf16 autocast; the PSNR of the bf16 output against the fp32 one
   (dB, peak = fp32 range) says what bf16 costs in accuracy. ``--tile`` (default: the whole
   image, no tiling) sets the tile size.
2. The same with TensorFlow and ``tk_r_em`` side by side, only if ``import tensorflow``
   works in this environment (it is not installed by emfuse; the script says why it skipped).
3. With CUDA: single-image latency (fp32, bf16, fp16), and the throughput (frames/s) of the
   restore job on a ``--movie-frames`` x ``--size``² movie, Zarr to Zarr, on a
   ``local-threads`` Dask cluster (default 1000 frames on CUDA; on the CPU only when
   ``--movie-frames`` is given, e.g. 4).

The machine's load average is printed with the figures: on a shared machine they are only
as good as the share of the cores the benchmark had.
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

import numpy as np
import torch

from pipeline.metrics import psnr
from pipeline.restore.inference import restore
from pipeline.synth import make_movie

MODEL = "r_em:sfr_hrstem"


def load_network() -> tuple[torch.nn.Module, str]:
    from pipeline.restore import load_model

    try:
        return load_model(MODEL), MODEL
    except (ImportError, ValueError, OSError) as exc:
        from pipeline.restore.cgrdn import CGRDN

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


def cpu_variants(net, image, tile, repeats) -> tuple[dict[str, Any], np.ndarray]:
    """Timings (and PSNR against fp32) of each CPU variant, and the fp32 output."""
    rows: dict[str, Any] = {}
    variants = {"fp32": {}, "channels_last": {"channels_last": True}, "bf16": {"dtype": torch.bfloat16},
                "bf16+channels_last": {"dtype": torch.bfloat16, "channels_last": True}}
    outputs = {}
    for name, kw in variants.items():
        seconds, outputs[name] = timed(lambda kw=kw: restore(image, net, tile=tile, device="cpu", **kw), repeats)
        net.to(memory_format=torch.contiguous_format)  # the next variant starts from the default layout
        rows[name] = {"seconds": seconds}
        print(f"  cpu {name:<20} {seconds:8.2f} s")
    ref = outputs["fp32"]
    for name, out in outputs.items():
        if name != "fp32":
            rows[name]["psnr_vs_fp32_db"] = psnr(out, ref)
            print(f"  {name:<24} PSNR vs fp32 output: {rows[name]['psnr_vs_fp32_db']:.1f} dB")
    return rows, ref


def tensorflow_side_by_side(image, repeats, torch_out) -> dict[str, Any]:
    try:
        import tensorflow  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip, and say why
        reason = f"import tensorflow failed ({type(exc).__name__}: {exc})"
        print(f"  TensorFlow tk-r-em: skipped, {reason}; emfuse does not install TensorFlow")
        return {"skipped": reason}
    import tk_r_em

    net = tk_r_em.load_network(MODEL.split(":", 1)[1])
    seconds, out = timed(lambda: net.predict(image), repeats)
    out = np.asarray(out, dtype=np.float32).reshape(image.shape)
    row = {"seconds": seconds, "psnr_torch_vs_tf_db": psnr(torch_out, out)}
    print(f"  TensorFlow tk-r-em predict {seconds:8.2f} s; torch vs TF PSNR {row['psnr_torch_vs_tf_db']:.1f} dB")
    return row


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
    net.to("cpu")
    return rows


def movie_throughput(frames: int, size: int, model_name: str, device: str, tile: int,
                     cluster: str, batch: int) -> dict[str, Any]:
    import dask.array as da

    from cluster import connect
    from flows import restore_job
    from stores.formats import canonical_dataset
    from stores.ingest import chunk_canonical
    from stores.zarrio import write_dataset

    with tempfile.TemporaryDirectory(prefix="restore_speed_") as tmp:
        unique = make_movie((size, size), min(frames, 8), seed=1).movie
        movie = da.concatenate([da.from_array(unique, chunks=(1, size, size))] * -(-frames // len(unique)))
        store = write_dataset(chunk_canonical(canonical_dataset("benchmark movie", movie=movie[:frames])),
                              Path(tmp) / "movie.zarr")
        model = model_name if model_name.startswith("r_em:") else None
        if model is None:  # a random CGRDN: saved so that the job's workers can load it
            from pipeline.restore import save_model
            from pipeline.restore.cgrdn import CGRDN

            model = str(save_model(CGRDN(), Path(tmp) / "random.safetensors"))
        with connect(cluster) as client:
            start = time.perf_counter()
            job = restore_job.run_restore(store, Path(tmp) / "out.zarr", client, model=model,
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
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's: all cores); 1 gives per-core figures "
                             "that stay meaningful on a busy machine")
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA part")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tile = args.tile or args.size
    net, name = load_network()
    image = make_movie((args.size, args.size), 1, seed=0).movie[0]
    results: dict[str, Any] = {
        "model": name, "size": args.size, "tile": tile, "repeats": args.repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
    }
    print(f"{name}, {args.size}² image, tile {tile}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load average {results['load_average_before']:.1f}")
    if not args.skip_cpu:
        results["cpu"], torch_out = cpu_variants(net, image, tile, args.repeats)
        results["tensorflow"] = tensorflow_side_by_side(image, args.repeats, torch_out)
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
