"""Scale: an 8192 x 8192 map set and a 1024 x 1024 x 2048 spectrum image through the tiled fusion job.

    .venv/bin/python benchmarks/fusion_scale.py [--quick] [--workdir DIR] [--keep] [--json FILE]

1. Inputs, generated chunk by chunk on the cluster (nothing image-sized in one process) into
   Zarr v3 canonical stores: a map set (HAADF + 4 maps, chunks 512) from
   :func:`emfuse.pipeline.synth.lazy_map_set`, and a spectrum image (uint16, chunks 64 x 64 x 2048,
   HAADF, truth) from :func:`emfuse.pipeline.synth.lazy_spectrum_image`.
2. For each worker count, on ``connect("local", n_workers=W, threads_per_worker=1,
   memory_limit=...)``, the stages of :mod:`emfuse.flows.jobs.fusion` (plan, write_inputs, normalise,
   fuse_tiles, finalise) for the spectrum image (maps integrated lazily on the cluster) and for
   the map set: seconds per stage, peak memory per worker per stage, throughput in
   megapixel-elements per second.
3. The spectrum-image read rate: the write_inputs stage (which reads the whole spectrum to
   integrate the maps) and the maps integration alone, next to raw Zarr reads of the same store
   on the same cluster (every chunk read with zarr; and ``da.from_zarr(...).sum()``), all in MB/s
   of uncompressed bytes.
4. Tiled against untiled: the spectrum image's maps fused untiled (:func:`emfuse.pipeline.fusion.fuse`,
   in this process, with the job's dataset-wide normalisation) and by the job with several halos;
   the max |difference| relative to the fused value range, and the smallest halo within the
   tolerance.

Peak memory per worker is the kernel's high-water mark of the worker process's resident set
(``VmHWM`` in ``/proc/<pid>/status``), reset before every stage by writing 5 to
``/proc/<pid>/clear_refs`` (both through ``client.run``): an exact peak, not a sample. Where
the reset is refused, the peak is the one since the worker started (still the peak of the run,
as every worker count gets a fresh cluster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from _common import cpu_seconds as _cpu_seconds  # benchmarks/_common.py
from _common import peak_rss as _peak_rss
from _common import reset_peak_rss as _reset_peak_rss
from dask.utils import parse_bytes

from emfuse.cluster import connect
from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import runner
from emfuse.flows.tools.synth import spectrum_image_dataset
from emfuse.pipeline.fusion import FusionParams, fuse
from emfuse.pipeline.synth import lazy_map_set, lazy_spectrum_image
from emfuse.stores import layout
from emfuse.stores.formats import canonical_dataset
from emfuse.stores.zarrio import open_dataset, write_dataset

GIB = 2**30
MB = 1e6
STAGES = ("plan", "write_inputs", "normalise", "fuse_tiles", "finalise")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    """What one run measures (the command-line flags)."""

    workdir: Path
    keep: bool
    map_size: int
    si_size: int
    channels: int
    elements: tuple[str, ...]
    workers: tuple[int, ...]
    memory_limit: str
    tile: int
    halo: int
    n_iter: int
    n_iter_maps: int
    n_iter_tv: int
    halos: tuple[int, ...]
    tolerance: float
    seed: int
    compare: bool
    json_path: Path | None

    @property
    def limit_bytes(self) -> int:
        return int(parse_bytes(self.memory_limit))


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 1024 px map set, 256 px x 512 channels spectrum "
                             "image, 5 iterations, halos 8 and 32")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory for the stores (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the stores after the run")
    parser.add_argument("--json", dest="json_path", type=Path, default=None,
                        help="also write every figure to this JSON file")
    parser.add_argument("--map-size", type=int, default=8192, help="map set is N x N px")
    parser.add_argument("--si-size", type=int, default=1024, help="spectrum image is N x N px")
    parser.add_argument("--channels", type=int, default=2048, help="spectrum channels")
    parser.add_argument("--elements", nargs="+", default=["Sr", "Ti", "O", "Ca"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-limit", default="2GiB", help="per worker")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--n-iter", type=int, default=50,
                        help="fusion iterations for the spectrum image and the tiled/untiled check")
    parser.add_argument("--n-iter-maps", type=int, default=50,
                        help="fusion iterations for the large map set (default %(default)s)")
    parser.add_argument("--n-iter-tv", type=int, default=10)
    parser.add_argument("--halos", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="halos of the tiled/untiled comparison")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |tiled - untiled| / value range the halo must reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the tiled/untiled comparison")
    args = parser.parse_args(argv)
    if args.quick:
        args.map_size, args.si_size, args.channels = 1024, 256, 512
        args.n_iter = args.n_iter_maps = 5
        args.halos = [8, 32]
        if args.tile == 512:
            args.tile = 128
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emfuse-scale-"))
    return Config(
        workdir=workdir, keep=args.keep, map_size=args.map_size, si_size=args.si_size,
        channels=args.channels, elements=tuple(args.elements), workers=tuple(args.workers),
        memory_limit=args.memory_limit, tile=args.tile, halo=args.halo, n_iter=args.n_iter,
        n_iter_maps=args.n_iter_maps, n_iter_tv=args.n_iter_tv, halos=tuple(args.halos),
        tolerance=args.tolerance, seed=args.seed, compare=args.compare, json_path=args.json_path,
    )


# --------------------------------------------------------------------------------------------
# Peak memory of the worker processes
# --------------------------------------------------------------------------------------------
def code_identity() -> dict[str, str]:
    """sha256 (12 hex digits) of the source of the modules whose numbers this benchmark reports.

    Run in the driver and in every worker: a worker that imported another version of the
    solver (the checkout edited while a long run was going) would make the figures a mix.
    """
    import importlib

    out = {}
    for name in ("emfuse.pipeline.fusion.solver", "emfuse.pipeline.fusion.tv", "emfuse.pipeline.spectra",
                 "emfuse.pipeline.tiles", "emfuse.pipeline.fusion.tiled", "emfuse.flows.jobs.fusion",
                 "emfuse.stores.outputs"):
        module = importlib.import_module(name)
        source = Path(module.__file__).read_bytes()
        out[name] = hashlib.sha256(source).hexdigest()[:12]
    return out


class WorkerMonitor:
    """Per stage: every worker's peak RSS and CPU seconds, the driver's CPU, the load average."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.resettable = True
        self._cpu: dict[str, float] = {}
        self._driver_cpu = 0.0
        identities = client.run(code_identity)
        here = code_identity()
        self.mixed_code = any(v != here for v in identities.values())
        if self.mixed_code:
            print(f"  WARNING: workers run other code than the driver: {identities} vs {here}")

    def reset(self) -> None:
        self.resettable = all(self.client.run(_reset_peak_rss).values()) and self.resettable
        self._cpu = self.client.run(_cpu_seconds)
        self._driver_cpu = time.process_time()
        self._load = os.getloadavg()[0]

    def read(self) -> tuple[list[int], float, float, float]:
        """Peaks (bytes, largest first), worker CPU s (sum), driver CPU s, 1-min load at start."""
        peaks = sorted(self.client.run(_peak_rss).values(), reverse=True)
        cpu = self.client.run(_cpu_seconds)
        worker_cpu = sum(cpu[w] - self._cpu.get(w, cpu[w]) for w in cpu)
        return peaks, worker_cpu, time.process_time() - self._driver_cpu, self._load


@dataclass
class Stage:
    seconds: float
    peaks: list[int] = field(default_factory=list)  # bytes, one per worker, largest first
    worker_cpu: float = 0.0  # CPU seconds, summed over the workers
    driver_cpu: float = 0.0  # CPU seconds of this process
    load: float = 0.0  # 1-minute load average when the stage started

    def record(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "peak_bytes": self.peaks, "worker_cpu_s": self.worker_cpu,
                "driver_cpu_s": self.driver_cpu, "load_at_start": self.load}


def measured(name: str, stages: dict[str, Stage], peaks: WorkerMonitor, run: Callable[[], Any]) -> Any:
    """Run ``run()`` as stage ``name``: wall time, each worker's peak RSS, CPU time."""
    peaks.reset()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    stages[name] = Stage(seconds, *peaks.read())
    return result


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def write_map_store(cfg: Config, path: Path) -> Path:
    """The map set as a canonical store: haadf (y, x) and maps (element, y, x), chunks 512."""
    ms = lazy_map_set((cfg.map_size, cfg.map_size), cfg.elements, specimen_tile=512,
                      seed=cfg.seed)
    ds = canonical_dataset(f"synthetic map set (seed {cfg.seed})", haadf=ms.haadf, maps=ms.maps,
                           elements=ms.elements, pixel_nm=(ms.pixel_size_nm, ms.pixel_size_nm))
    ds.attrs["synthetic"] = ms.params
    return write_dataset(ds, path, overwrite=True)


def write_si_store(cfg: Config, path: Path) -> Path:
    """The spectrum image as a canonical store (spectrum chunks 64 x 64 x channels, HAADF, truth)."""
    si = lazy_spectrum_image((cfg.si_size, cfg.si_size), cfg.elements, n_channels=cfg.channels,
                             chunks=layout.SPECTRUM_CHUNK_YX, specimen_tile=512, seed=cfg.seed + 1)
    return write_dataset(spectrum_image_dataset(si), path, overwrite=True)


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def codecs(path: Path, name: str) -> str:
    """The Zarr codec chain of one variable, e.g. ``bytes + zstd(level=0)``."""
    meta = json.loads((path / name / "zarr.json").read_text())
    parts = []
    for codec in meta.get("codecs", []):
        conf = codec.get("configuration", {})
        detail = ", ".join(f"{k}={v}" for k, v in conf.items() if k in ("level", "cname", "clevel"))
        parts.append(f"{codec['name']}({detail})" if detail else codec["name"])
    return " + ".join(parts)


# --------------------------------------------------------------------------------------------
# The fusion job, stage by stage
# --------------------------------------------------------------------------------------------
def run_job(source: Path, out: Path, client: Any, peaks: WorkerMonitor, elements: Sequence[str],
            params: dict[str, Any], tile: int, halo: int) -> tuple[Any, dict[str, Stage]]:
    stages: dict[str, Stage] = {}
    job, _ = measured("plan", stages, peaks, lambda: fusion_job.plan(
        source, out, elements=elements, params=params, tile=tile, halo=halo, overwrite=True))
    measured("write_inputs", stages, peaks, lambda: fusion_job.write_inputs(job))
    norm = measured("normalise", stages, peaks, lambda: fusion_job.normalise(job))
    measured("fuse_tiles", stages, peaks,
             lambda: runner.run_units(fusion_job.SPEC, job, norm, client, progress=False))
    measured("finalise", stages, peaks, lambda: runner.finalise(fusion_job.SPEC, job))
    return job, stages


def _read_chunk(path: str, start: tuple[int, int], size: int) -> int:
    """In a worker: read one (y, x) chunk of the spectrum with zarr alone; its bytes."""
    array = zarr.open_array(path, mode="r", zarr_format=3)
    y0, x0 = start
    return int(array[y0:y0 + size, x0:x0 + size].nbytes)


def read_rates(source: Path, client: Any, peaks: WorkerMonitor, elements: Sequence[str]) -> dict[str, Stage]:
    """Raw Zarr reads of the whole spectrum, and emfuse's maps integration alone."""
    stages: dict[str, Stage] = {}
    path = str(source / layout.SPECTRUM)
    array = zarr.open_array(path, mode="r", zarr_format=3)
    size = array.chunks[0]
    starts = [(y, x) for y in range(0, array.shape[0], size) for x in range(0, array.shape[1], size)]

    def zarr_chunks() -> int:
        futures = client.map(_read_chunk, [path] * len(starts), starts, [size] * len(starts),
                             pure=False)
        return sum(client.gather(futures))

    nbytes = measured("zarr chunk reads", stages, peaks, zarr_chunks)
    assert nbytes == array.nbytes, (nbytes, array.nbytes)
    measured("da.from_zarr(...).sum()", stages, peaks,
             lambda: da.from_zarr(path).sum(dtype=np.uint64).compute())

    def maps_only() -> None:
        maps = fusion_job.input_maps(open_dataset(source), elements).data
        maps.sum().compute()

    measured("emfuse maps integration alone", stages, peaks, maps_only)
    return stages


# --------------------------------------------------------------------------------------------
# Tiled against untiled
# --------------------------------------------------------------------------------------------
def compare_tiling(cfg: Config, si_out: Path, workdir: Path, client: Any, peaks: WorkerMonitor,
                   params: dict[str, Any]) -> dict[str, Any]:
    """Fuse the spectrum image's maps untiled here and tiled by the job with each halo."""
    source = open_dataset(si_out)
    haadf = source[layout.HAADF].values
    maps = source[layout.MAPS].sel(element=list(cfg.elements))
    z = tuple(int(v) for v in maps["z"].values)
    maps = maps.values
    # the normalisation the job recorded in the store (dataset-wide min/max)
    norm = fusion_job.normalise(fusion_job.FusionJob(
        str(si_out), str(si_out), tuple(cfg.elements), z, FusionParams(**params), cfg.tile,
        cfg.halo))
    start, cpu = time.perf_counter(), time.process_time()
    untiled = fuse(haadf, maps, z, normalisation=norm, **params)
    untiled_s, untiled_cpu = time.perf_counter() - start, time.process_time() - cpu
    whole = np.asarray(untiled.fused)

    value_range = float(whole.max() - whole.min())
    rows = []
    for halo in cfg.halos:
        if halo == cfg.halo:
            fused = source[layout.FUSED].values  # the main run's output has this halo
            seconds = float("nan")
        else:
            out = workdir / f"si_halo{halo}.zarr"
            _, stages = run_job(si_out, out, client, peaks, cfg.elements, params, cfg.tile, halo)
            fused = open_dataset(out)[layout.FUSED].values
            seconds = stages["fuse_tiles"].seconds
            shutil.rmtree(out)
        diff = np.abs(fused.astype(np.float64) - whole)
        at = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        rows.append({"halo": halo, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                     "max_rel_range": float(diff.max()) / value_range, "fuse_tiles_s": seconds,
                     "argmax": at, "tiled_at": float(fused[at]), "untiled_at": float(whole[at])})
    within = [r["halo"] for r in rows if r["max_rel_range"] <= cfg.tolerance]
    n_mpx_el = haadf.size * len(cfg.elements) / 1e6
    return {"shape": list(haadf.shape), "tile": cfg.tile, "value_range": value_range,
            "untiled_s": untiled_s, "untiled_cpu_s": untiled_cpu,
            "untiled_mpx_el_per_s": n_mpx_el / untiled_s,
            "untiled_final_step": (untiled.step_history or [None])[-1],
            "tolerance": cfg.tolerance, "halo_within_tolerance": min(within) if within else None,
            "rows": rows}


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def stage_line(name: str, s: Stage, width: int = 13) -> str:
    return (f"    {name:<{width}} {s.seconds:8.1f} s  (CPU: workers {s.worker_cpu:7.1f} s, driver "
            f"{s.driver_cpu:5.1f} s; load {s.load:4.1f})  peak per worker "
            f"{', '.join(gib(p) for p in s.peaks)}")


def print_job(title: str, stages: dict[str, Stage], n_mpx_el: float, limit: int) -> dict[str, Any]:
    """Print a job's stages and throughput; return them for the JSON record."""
    total = sum(s.seconds for s in stages.values())
    peak = max(max(s.peaks) for s in stages.values())
    fuse_stage = stages["fuse_tiles"]
    print(f"  {title}")
    for name, s in stages.items():
        print(stage_line(name, s))
    fusion = n_mpx_el / fuse_stage.seconds
    # per CPU-second of the workers: what one core does, whatever else shares the machine
    per_cpu = n_mpx_el / fuse_stage.worker_cpu if fuse_stage.worker_cpu > 0 else float("nan")
    print(f"    total         {total:8.1f} s   fusion {fusion:.3f} Mpx-el/s ({per_cpu:.3f} per "
          f"worker CPU-second), whole job {n_mpx_el / total:.3f} Mpx-el/s; peak per worker "
          f"{gib(peak)} ({'OK' if peak <= limit else 'OVER'} <= {gib(limit)})")
    return {"stages": {k: s.record() for k, s in stages.items()}, "total_s": total,
            "fusion_mpx_el_per_s": fusion, "fusion_mpx_el_per_worker_cpu_s": per_cpu,
            "job_mpx_el_per_s": n_mpx_el / total, "peak_bytes": peak, "within_limit": peak <= limit}


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    n_el = len(cfg.elements)
    params_si = {"n_iter": cfg.n_iter, "n_iter_tv": cfg.n_iter_tv}
    params_maps = {"n_iter": cfg.n_iter_maps, "n_iter_tv": cfg.n_iter_tv}
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(cfg).items()},
                               "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                                           "platform": platform.platform(),
                                           "dask": dask.__version__, "zarr": zarr.__version__},
                               "code": code_identity()}
    print(f"emfuse scale benchmark in {cfg.workdir} ({os.cpu_count()} cores)")
    print(f"  map set {cfg.map_size}^2 x {n_el} elements; spectrum image {cfg.si_size}^2 x "
          f"{cfg.channels} uint16; tile {cfg.tile}, halo {cfg.halo}; n_iter {cfg.n_iter_maps} "
          f"(map set) / {cfg.n_iter} (spectrum image), n_iter_tv {cfg.n_iter_tv}; "
          f"memory_limit {cfg.memory_limit} per worker")
    map_store, si_store = cfg.workdir / "mapset.zarr", cfg.workdir / "si.zarr"
    limit = cfg.limit_bytes
    ok = True
    try:
        # 1. inputs, on the largest cluster
        gen_workers = max(cfg.workers)
        with connect("local", n_workers=gen_workers, threads_per_worker=1,
                     memory_limit=cfg.memory_limit) as client:
            peaks = WorkerMonitor(client)
            gen: dict[str, Stage] = {}
            measured("map set", gen, peaks, lambda: write_map_store(cfg, map_store))
            measured("spectrum image", gen, peaks, lambda: write_si_store(cfg, si_store))
        spectrum = zarr.open_array(str(si_store / layout.SPECTRUM), mode="r", zarr_format=3)
        si_bytes = int(spectrum.nbytes)
        si_disk = disk_bytes(si_store / layout.SPECTRUM)
        results["inputs"] = {name: s.record() for name, s in gen.items()}
        results["inputs"]["map set"].update(disk_bytes=disk_bytes(map_store),
                                            codecs=codecs(map_store, layout.MAPS))
        results["inputs"]["spectrum image"].update(
            spectrum_bytes=si_bytes, spectrum_disk_bytes=si_disk,
            codecs=codecs(si_store, layout.SPECTRUM), chunks=list(spectrum.chunks))
        print(f"inputs written on {gen_workers} worker(s):")
        for name, s in gen.items():
            print(stage_line(name, s, 15))
        print(f"  spectrum {si_bytes / GIB:.2f} GiB uncompressed, {si_disk / GIB:.3f} GiB on disk "
              f"(x{si_bytes / si_disk:.1f}; codecs {codecs(si_store, layout.SPECTRUM)}, "
              f"chunks {spectrum.chunks}); map set {disk_bytes(map_store) / GIB:.2f} GiB on disk "
              f"(codecs {codecs(map_store, layout.MAPS)})")

        # 2./3. the job for each worker count, and the read rates
        results["runs"] = {}
        si_out = None
        for workers in cfg.workers:
            print(f"\n{workers} worker(s), 1 thread each, memory_limit {cfg.memory_limit}:")
            with connect("local", n_workers=workers, threads_per_worker=1,
                         memory_limit=cfg.memory_limit) as client:
                peaks = WorkerMonitor(client)
                run: dict[str, Any] = {}
                si_out = cfg.workdir / f"si_out_{workers}.zarr"
                _, stages = run_job(si_store, si_out, client, peaks, cfg.elements, params_si,
                                    cfg.tile, cfg.halo)
                run["spectrum_image"] = print_job(
                    f"spectrum image {cfg.si_size}^2 (maps integrated from {si_bytes / GIB:.2f} "
                    f"GiB of spectrum), n_iter {cfg.n_iter}:",
                    stages, cfg.si_size**2 * n_el / 1e6, limit)
                reads = read_rates(si_store, client, peaks, cfg.elements)
                rates = {"write_inputs stage (maps + inputs)": stages["write_inputs"], **reads}
                print("  spectrum read rate (uncompressed MB/s):")
                run["read_rates"] = {}
                for name, s in rates.items():
                    rate = si_bytes / MB / s.seconds
                    run["read_rates"][name] = {"mb_per_s": rate, **s.record()}
                    print(f"    {rate:6.0f} MB/s " + stage_line(name, s, 36).lstrip())
                map_out = cfg.workdir / f"map_out_{workers}.zarr"
                _, stages = run_job(map_store, map_out, client, peaks, cfg.elements, params_maps,
                                    cfg.tile, cfg.halo)
                run["map_set"] = print_job(
                    f"map set {cfg.map_size}^2, n_iter {cfg.n_iter_maps}:", stages,
                    cfg.map_size**2 * n_el / 1e6, limit)
                shutil.rmtree(map_out)
                run["resettable_peaks"] = peaks.resettable
                run["mixed_code"] = peaks.mixed_code
                ok &= run["spectrum_image"]["within_limit"] and run["map_set"]["within_limit"]
                ok &= all(max(r["peak_bytes"]) <= limit for r in run["read_rates"].values())
                results["runs"][str(workers)] = run
                if not peaks.resettable:
                    print("  (peaks could not be reset per stage: each is the peak since start)")
                if workers != cfg.workers[-1]:
                    shutil.rmtree(si_out)

        # 4. tiled against untiled
        if cfg.compare and si_out is not None:
            workers = max(cfg.workers)
            with connect("local", n_workers=workers, threads_per_worker=1,
                         memory_limit=cfg.memory_limit) as client:
                cmp = compare_tiling(cfg, si_out, cfg.workdir, client, WorkerMonitor(client), params_si)
            results["tiled_vs_untiled"] = cmp
            print(f"\ntiled ({cfg.tile} px tiles, {workers} workers) vs untiled fuse() of the "
                  f"spectrum image's maps {cmp['shape']}, n_iter {cfg.n_iter}; fused value range "
                  f"{cmp['value_range']:.3f}; untiled {cmp['untiled_s']:.1f} s in one process "
                  f"(CPU {cmp['untiled_cpu_s']:.1f} s; {cmp['untiled_mpx_el_per_s']:.3f} Mpx-el/s)")
            for r in cmp["rows"]:
                print(f"  halo {r['halo']:3d}: max |diff| {r['max_abs']:.2e} "
                      f"({r['max_rel_range']:.1e} of the range), mean {r['mean_abs']:.1e}, "
                      f"fuse_tiles {r['fuse_tiles_s']:.1f} s")
            best = cmp["halo_within_tolerance"]
            print(f"  smallest halo within {cfg.tolerance:g} of the range: {best}")
    finally:
        if cfg.json_path is not None:
            results["ok"] = ok
            results["driver_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            cfg.json_path.write_text(json.dumps(results, indent=1))
        if not cfg.keep:
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\ndriver process peak RSS {gib(driver)}; every worker within {cfg.memory_limit}: "
          f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
