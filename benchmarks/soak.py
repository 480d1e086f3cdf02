"""Soak: a catalog of many small synthetic datasets through ``emfuse run``, then a rerun.

    .venv/bin/python benchmarks/soak.py [--n-fuse 30] [--n-restore 12] [--n-tem 10]
        [--size 64 80 96] [--seed 0] [--workdir DIR] [--json FILE]
        [--cluster SPEC | --workers 2 --memory-limit 2GiB] [--auto-lambda] [--n-iter 30]

1. Datasets, written by :func:`emfuse.flows.tools.synth.write_synthetic` into ``<workdir>/incoming/``:
   spectrum images (specimens columns, particles and layers in turn, with their elements),
   drifting HR-STEM movies and BF/DF/HRTEM mode sets (materials in turn); sizes taken in turn
   from ``--size``, every dataset its own seed.
2. A cluster: by default a profile file ``<workdir>/cluster.yaml`` (``profile: local``,
   ``--workers`` worker processes, 1 thread each, ``--memory-limit``) started here by
   :func:`cluster.connect`, exactly as ``emfuse run`` would start it.
3. A catalog ``<workdir>/catalog.yaml`` (``data_root: incoming``, one glob per specimen, movie
   and mode-set family; flat fusion parameters, per-job ones for restore and tem-fuse) whose
   ``cluster`` is that cluster's scheduler address, run by ``emfuse run catalog.yaml
   --no-progress`` in a subprocess: what a user or a cron job runs (the command line, its
   Prefect ephemeral server, its exit status), with only the batch's driver in that process.
   Pointing the catalog at a scheduler started here is what lets this script watch the workers.
4. While it runs, every ``--interval`` s: each worker's RSS (``client.run``), the driver's and
   its children's (the Prefect server, the figures' process) high-water marks and CPU seconds
   (per role: driver, figures, Prefect server; the workers' from ``client.run``), the load average. Each worker's exact
   peak is its ``VmHWM``, reset before the run (:mod:`_common`, as in ``fusion_scale.py``).
5. Checks: exit status 0 and ``n_failed == 0`` in ``report.json``; every output store complete,
   its variables present, of the input's shape and finite (fused maps >= 0, attention summing to
   1 over the modes); fused maps closer to the truth than the raw maps (NRMSE, every element),
   restored frames closer than the raw ones (PSNR); tem-fused PSNR against the truth reported
   next to the HRTEM's; no ``.lock`` file left.
6. The same command again (``--no-rerun`` skips it): every job ``already complete``, 0 tiles
   computed, every output unchanged (sha256 of its values), and how long that takes.

Exit status 0 when every check passes, 1 otherwise. The workdir (stores, ``results/report.html``,
the logs of both runs) is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from _common import cpu_seconds, current_rss, peak_rss, process_id, reset_peak_rss

from emfuse.cluster import as_spec, connect
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.synth.tem_modes import MATERIALS
from emfuse.stores import layout
from emfuse.stores.lock import LOCK_SUFFIX
from emfuse.stores.zarrio import is_complete, open_dataset

GIB = 2**30
MARKER = ".emfuse-soak"  # a workdir this script made, whose incoming/ and results/ it may replace
SPECIMENS = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
JOB_OF_KIND = {"spectrum-image": "fuse", "movie": "restore", "tem-modes": "tem-fuse"}
# the variables each job writes, and the input dims each must match
OUTPUTS = {"fuse": (layout.FUSED, layout.HAADF_MODEL, layout.COST),
           "restore": (layout.RESTORED,),
           "tem-fuse": (layout.TEM_FUSED, layout.ATTENTION)}
MAIN_OUTPUT = {"fuse": layout.FUSED, "restore": layout.RESTORED, "tem-fuse": layout.TEM_FUSED}
PX_UNIT = {"fuse": "Mpx x elements", "restore": "Mpx x frames", "tem-fuse": "Mpx"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-fuse", type=int, default=30, help="spectrum images (fuse jobs)")
    parser.add_argument("--n-restore", type=int, default=12, help="movies (restore jobs)")
    parser.add_argument("--n-tem", type=int, default=10, help="TEM mode sets (tem-fuse jobs)")
    parser.add_argument("--size", type=int, nargs="+", default=[64, 80, 96],
                        help="image sizes in px, taken in turn (default %(default)s)")
    parser.add_argument("--frames", type=int, default=4, help="frames per movie")
    parser.add_argument("--tile", type=int, default=48, help="tile of every job (default %(default)s)")
    parser.add_argument("--halo", type=int, default=16, help="halo (fuse, tem-fuse) and overlap (restore)")
    parser.add_argument("--n-iter", type=int, default=30, help="fusion iterations")
    parser.add_argument("--auto-lambda", action="store_true",
                        help="lambda_chem and lambda_tv 'auto' (a search per dataset; slower) "
                             "instead of 0.05 and 0.02")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch folder (default: a new temporary one); kept after the run")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write every figure here")
    parser.add_argument("--cluster", default=None,
                        help="a profile name, profile YAML or scheduler address instead of the "
                             "generated local profile (not local-threads: the batch runs in another process)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the generated profile")
    parser.add_argument("--memory-limit", default="2GiB", help="per worker, in the generated profile")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--no-rerun", dest="rerun", action="store_false", help="skip the second run")
    parser.add_argument("--prefect-home", type=Path, default=None,
                        help="PREFECT_HOME of the runs (default <workdir>/prefect: a private database, "
                             "so runs beside this one do not share it)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Datasets and catalog
# --------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str
    kind: str  # synthetic kind
    job: str
    shape: tuple[int, int]
    depth: int  # elements, frames or 1: the third factor of the pixel count
    family: str  # the glob it belongs to

    @property
    def mpx(self) -> float:
        return self.shape[0] * self.shape[1] * self.depth / 1e6


def prepare_workdir(path: Path | None) -> Path:
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="emfuse-soak-"))
    path = path.absolute()
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        sys.exit(f"soak: {path} is not empty and was not made by this script; give an empty or new --workdir.")
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    for sub in ("incoming", "results"):
        shutil.rmtree(path / sub, ignore_errors=True)
    return path


def make_datasets(args: argparse.Namespace, incoming: Path) -> list[Dataset]:
    """Write every synthetic dataset; returns their descriptions."""
    incoming.mkdir(parents=True)
    materials = list(MATERIALS)
    plan: list[Dataset] = []
    for i in range(args.n_fuse):
        specimen = list(SPECIMENS)[i % 3]
        size = args.size[i % len(args.size)]
        plan.append(Dataset(f"si-{specimen}-{i:03d}", "spectrum-image", "fuse", (size, size),
                            len(SPECIMENS[specimen]), f"si-{specimen}"))
    for i in range(args.n_restore):
        size = args.size[i % len(args.size)]
        plan.append(Dataset(f"movie-{i:03d}", "movie", "restore", (size, size), args.frames, "movie"))
    for i in range(args.n_tem):
        material = materials[i % len(materials)]
        size = args.size[i % len(args.size)]
        plan.append(Dataset(f"tem-{material}-{i:03d}", "tem-modes", "tem-fuse", (size, size), 1, "tem"))
    for i, d in enumerate(plan):
        options: dict[str, Any] = {}
        if d.kind == "spectrum-image":
            specimen = d.family.removeprefix("si-")
            options = {"elements": SPECIMENS[specimen], "specimen": specimen}
        elif d.kind == "movie":
            options = {"frames": args.frames}
        else:
            options = {"material": d.name.split("-")[1]}
        write_synthetic(d.kind, incoming / f"{d.name}.zarr", shape=d.shape, seed=args.seed * 1000 + i, **options)
    return plan


def write_catalog(args: argparse.Namespace, workdir: Path, datasets: list[Dataset], cluster: Any) -> Path:
    lam = "auto" if args.auto_lambda else None
    fusion = {"tile": args.tile, "halo": args.halo, "n_iter": args.n_iter,
              "lambda_chem": lam or 0.05, "lambda_tv": lam or 0.02}
    entries = []
    for specimen, elements in SPECIMENS.items():
        if any(d.family == f"si-{specimen}" for d in datasets):
            entries.append({"path": f"incoming/si-{specimen}-*.zarr", "jobs": ["fuse"],
                            "elements": list(elements), "params": dict(fusion)})  # flat parameters
    if any(d.job == "restore" for d in datasets):
        entries.append({"path": "incoming/movie-*.zarr", "jobs": ["restore"],  # per-job parameters
                        "params": {"restore": {"tile": args.tile, "overlap": args.halo}}})
    if any(d.job == "tem-fuse" for d in datasets):
        entries.append({"path": "incoming/tem-*.zarr", "jobs": ["tem-fuse"],
                        "params": {"tem-fuse": {"tile": args.tile, "halo": args.halo}}})
    catalog = {"output": "results", "cluster": cluster, "data_root": "incoming", "datasets": entries}
    path = workdir / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False, default_flow_style=None))
    return path


# --------------------------------------------------------------------------------------------
# Watching a run
# --------------------------------------------------------------------------------------------
@dataclass
class Watch:
    """Samples of one run: worker RSS, driver and child high-water marks, load average."""

    worker_rss: dict[str, list[int]] = field(default_factory=dict)
    driver_hwm: int = -1
    children_hwm: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (name, bytes)
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (role, CPU s at the last sample)
    load: list[tuple[float, float, float]] = field(default_factory=list)
    samples: int = 0


class Sampler(threading.Thread):
    def __init__(self, client: Any, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.client, self.pid, self.interval = client, pid, interval
        self.watch = Watch()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        w = self.watch
        try:
            for addr, rss in self.client.run(current_rss, wait=True).items():
                w.worker_rss.setdefault(addr, []).append(rss)
        except Exception:  # a worker between restarts; the next sample will tell
            pass
        w.driver_hwm = max(w.driver_hwm, peak_rss(self.pid))
        try:
            driver = psutil.Process(self.pid)
            children = driver.children(recursive=True)
            w.cpu[self.pid] = ("driver", _cpu(driver))
        except psutil.Error:
            children = []
        for child in children:
            try:
                command = child.cmdline()
                name = " ".join(command[:3])[-80:]
                w.cpu[child.pid] = (process_role(command), _cpu(child))
            except psutil.Error:
                continue
            hwm = peak_rss(child.pid)
            if hwm > w.children_hwm.get(child.pid, ("", -1))[1]:
                w.children_hwm[child.pid] = (name, hwm)
        w.load.append(os.getloadavg())
        w.samples += 1

    def stop(self) -> Watch:
        self._halt.set()
        self.join()
        return self.watch


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def process_role(command: list[str]) -> str:
    """What a process of the ``emfuse run`` tree is, from its command line: the Prefect server
    (uvicorn), a spawned child (the report figures' process; a cluster's workers when ``emfuse
    run`` starts its own), or another helper."""
    text = " ".join(command)
    if "uvicorn" in text:
        return "prefect_server"
    if "spawn_main" in text:
        return "figures"
    return "other"


def cpu_by_role(cpu: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role, summed over its processes (as last sampled: a process's final
    interval before it exits is not counted)."""
    out: dict[str, float] = {}
    for role, seconds in cpu.values():
        out[role] = out.get(role, 0.0) + seconds
    return out


def stage_seconds(prefect_db: Path, since: datetime) -> dict[str, Any] | None:
    """Seconds per stage and job kind of the batch run started after ``since``, from Prefect's records.

    Reads the task runs of the batch flow in the run's private Prefect database (sqlite,
    read-only): each dataset's ingest (``"<dataset>: ingest"``, under ``"datasets"``) and each job's
    stages (``"<dataset> <job>: <stage>"``: plan, compute, finalise). None when the database
    cannot be read (another Prefect version, a server elsewhere).
    """
    def ts(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None

    try:
        db = sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True)
        batches = [(i, ts(a), ts(b)) for i, a, b in db.execute(
            "select r.id, r.start_time, r.end_time from flow_run r join flow f on r.flow_id = f.id "
            "where f.name = 'emfuse-batch' and r.parent_task_run_id is null order by r.start_time")]
        batches = [b for b in batches if b[1] and b[1] >= since]
        if not batches:
            return None
        batch_id, b0, b1 = batches[-1]
        out: dict[str, Any] = {}
        tasks = db.execute("select name, start_time, end_time from task_run where flow_run_id = ?", [batch_id])
        in_tasks = 0.0
        for name, a, b in tasks:
            label, _, stage = name.rpartition(": ")
            if not (a and b and label):
                continue
            kind = "datasets" if stage == "ingest" else label.rsplit(" ", 1)[-1]
            seconds = (ts(b) - ts(a)).total_seconds()
            out.setdefault(kind, {})[stage] = out.get(kind, {}).get(stage, 0.0) + seconds
            in_tasks += seconds
        out["batch"] = {"batch_flow": (b1 - b0).total_seconds() if b1 else None, "tasks": in_tasks}
        return out
    except (sqlite3.Error, KeyError, ValueError, TypeError):
        return None


def emfuse_command() -> list[str]:
    script = Path(sys.executable).parent / "emfuse"
    return [str(script)] if script.exists() else [sys.executable, "-m", "emfuse.flows.cli"]


def run_batch(label: str, catalog: Path, workdir: Path, client: Any, env: dict[str, str],
              interval: float) -> dict[str, Any]:
    """``emfuse run catalog --no-progress`` in a subprocess, watched; the run's figures."""
    command = [*emfuse_command(), "run", str(catalog), "--no-progress"]
    client.run(reset_peak_rss)
    pids_before = client.run(process_id)
    cpu_before = client.run(cpu_seconds)
    log_path = workdir / f"{label}.log"
    load_start = os.getloadavg()
    since = datetime.now(UTC)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(client, proc.pid, interval)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        watch = sampler.stop()
    load_end = os.getloadavg()
    peaks = client.run(peak_rss)
    pids_after = client.run(process_id)
    cpu_after = client.run(cpu_seconds)
    report = workdir / "results" / "report.json"
    info = json.loads(report.read_text()) if report.exists() else {}
    loads = [x[0] for x in watch.load] or [load_start[0]]
    peak_values = sorted(peaks.values(), reverse=True)
    restarted = sorted(set(pids_before.items()) ^ set(pids_after.items()))
    prefect = [hwm for name, hwm in watch.children_hwm.values()]
    return {
        "label": label, "command": " ".join(command), "exit_status": proc.returncode, "wall_s": wall,
        "batch_s": info.get("seconds"), "log": str(log_path),
        "overhead_s": wall - info["seconds"] if "seconds" in info else None,
        "n_done": info.get("n_done"), "n_failed": info.get("n_failed"), "records": info.get("records", []),
        "report_started": info.get("started"),
        "worker_peak_bytes": dict(peaks), "worker_peak_max": max(peak_values, default=-1),
        "worker_peak_median": statistics.median(peak_values) if peak_values else -1,
        "worker_sampled_max": {a: max(v) for a, v in watch.worker_rss.items()},
        "worker_sampled_median": {a: statistics.median(v) for a, v in watch.worker_rss.items()},
        "worker_restarts": len(restarted) // 2 if restarted else 0,
        "worker_cpu_s": sum(cpu_after[a] - cpu_before.get(a, cpu_after[a]) for a in cpu_after),
        "driver_peak_bytes": watch.driver_hwm,
        "driver_children_peak_bytes": {str(pid): {"command": n, "bytes": b} for pid, (n, b) in watch.children_hwm.items()},
        "prefect_server_peak_bytes": max(prefect, default=-1),
        "wait4_maxrss_bytes": usage.ru_maxrss * 1024,  # the driver or a child it reaped, whichever was larger
        "driver_cpu_s": usage.ru_utime + usage.ru_stime,  # with the children it reaped
        "cpu_s_by_process": cpu_by_role(watch.cpu),  # sampled: driver, figures, prefect_server, other
        "load_1min": {"start": load_start[0], "end": load_end[0], "min": min(loads), "max": max(loads),
                      "mean": statistics.fmean(loads), "load_5min_end": load_end[1]},
        "samples": watch.samples,
        "stages_s": stage_seconds(Path(env["PREFECT_HOME"]) / "prefect.db", since),
    }


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def output_digest(store: str, job: str) -> str:
    values = np.ascontiguousarray(open_dataset(store)[MAIN_OUTPUT[job]].values)
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def check_store(d: Dataset, store: str) -> list[str]:
    """Problems of one output store (empty when it is complete and sound)."""
    if not is_complete(store):
        return [f"{d.name}: {store} is not complete"]
    ds = open_dataset(store)
    problems = []
    for name in OUTPUTS[d.job]:
        if name not in ds:
            problems.append(f"{d.name}: variable {name} missing")
            continue
        values = ds[name].values
        if not np.isfinite(values).all():
            problems.append(f"{d.name}: {name} has {int((~np.isfinite(values)).sum())} non-finite values")
        if "y" in ds[name].dims and (ds.sizes["y"], ds.sizes["x"]) != d.shape:
            problems.append(f"{d.name}: {name} is {ds.sizes['y']} x {ds.sizes['x']}, input {d.shape}")
    if problems:
        return problems
    if d.job == "fuse":
        if ds.sizes["element"] != d.depth:
            problems.append(f"{d.name}: {ds.sizes['element']} fused elements, expected {d.depth}")
        if float(ds[layout.FUSED].min()) < 0:
            problems.append(f"{d.name}: negative fused values")
    elif d.job == "restore" and ds.sizes["frame"] != d.depth:
        problems.append(f"{d.name}: {ds.sizes['frame']} restored frames, expected {d.depth}")
    elif d.job == "tem-fuse":
        total = ds[layout.ATTENTION].sum("mode").values
        if np.abs(total - 1).max() > 1e-3:
            problems.append(f"{d.name}: attention sums to {total.min():.4f}..{total.max():.4f} over the modes")
    return problems


def quality(datasets: list[Dataset], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Against the truth: fused vs raw NRMSE, restored vs raw PSNR, tem-fused vs HRTEM PSNR."""
    out: dict[str, Any] = {}
    fuse = [(d, records[d.name]["summary"]) for d in datasets if d.job == "fuse" and "summary" in records[d.name]]
    if fuse:
        raw = [statistics.fmean(s["nrmse_raw"].values()) for _, s in fuse]
        fused = [statistics.fmean(s["nrmse_fused"].values()) for _, s in fuse]
        pairs = [(s["nrmse_raw"][e], s["nrmse_fused"][e]) for _, s in fuse for e in s["nrmse_raw"]]
        worse = [f"{d.name} {e}: {s['nrmse_raw'][e]:.3f} -> {s['nrmse_fused'][e]:.3f}"
                 for d, s in fuse for e in s["nrmse_raw"] if not s["nrmse_fused"][e] < s["nrmse_raw"][e]]
        out["fuse"] = {"n": len(fuse), "nrmse_raw_median": statistics.median(raw),
                       "nrmse_fused_median": statistics.median(fused),
                       "ratio_median": statistics.median(f / r for f, r in zip(fused, raw)),
                       "ratio_max": max(f / r for f, r in zip(fused, raw)),
                       "elements_improved": sum(f < r for r, f in pairs), "elements": len(pairs),
                       "datasets_improved": len(fuse) - len({w.split()[0] for w in worse}), "not_improved": worse}
    restore = [(d, records[d.name]["summary"]) for d in datasets if d.job == "restore" and "summary" in records[d.name]]
    if restore:
        raw = [s["psnr_raw_db"] for _, s in restore]
        rest = [s["psnr_restored_db"] for _, s in restore]
        out["restore"] = {"n": len(restore), "psnr_raw_median_db": statistics.median(raw),
                          "psnr_restored_median_db": statistics.median(rest),
                          "gain_min_db": min(b - a for a, b in zip(raw, rest)),
                          "improved": sum(b > a for a, b in zip(raw, rest)),
                          "not_improved": [d.name for (d, _), a, b in zip(restore, raw, rest) if not b > a]}
    tem = [(d, records[d.name]["summary"]["quality"]) for d in datasets
           if d.job == "tem-fuse" and "quality" in records[d.name].get("summary", {})]
    if tem:
        fused = [q["tem_fused"]["psnr"] for _, q in tem]
        hrtem = [q["hrtem"]["psnr"] for _, q in tem]
        out["tem-fuse"] = {"n": len(tem), "psnr_tem_fused_median_db": statistics.median(fused),
                           "psnr_hrtem_median_db": statistics.median(hrtem),
                           "ssim_tem_fused_median": statistics.median(q["tem_fused"]["ssim"] for _, q in tem),
                           "ssim_hrtem_median": statistics.median(q["hrtem"]["ssim"] for _, q in tem),
                           "fused_better_than_hrtem": sum(f > h for f, h in zip(fused, hrtem)),
                           "by_dataset": {d.name: {"tem_fused": q["tem_fused"], "hrtem": q["hrtem"]} for d, q in tem}}
    return out


def per_kind(datasets: list[Dataset], records: dict[str, dict[str, Any]],
             stages: dict[str, Any] | None) -> dict[str, Any]:
    """Per job kind: pixels, job seconds (report.json), stage seconds (Prefect), throughputs."""
    out = {}
    for job in OUTPUTS:
        mine = [d for d in datasets if d.job == job and d.name in records]
        if not mine:
            continue
        seconds = [records[d.name].get("seconds", 0.0) for d in mine]
        mpx = sum(d.mpx for d in mine)
        out[job] = {"jobs": len(mine), "mpx": mpx, "unit": PX_UNIT[job], "job_s_sum": sum(seconds),
                    "job_s_median": statistics.median(seconds), "mpx_per_s": mpx / sum(seconds) if sum(seconds) else None,
                    "tiles_computed": sum(records[d.name].get("tiles_computed", 0) for d in mine)}
        stage = (stages or {}).get(job)
        if stage:
            out[job]["stages_s"] = stage
            if stage.get("compute"):
                out[job]["mpx_per_compute_s"] = mpx / stage["compute"]
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def gib(value: float) -> str:
    return f"{value / GIB:.2f}" if value is not None and value >= 0 else "-"


def print_run(r: dict[str, Any], n_datasets: int, n_jobs: int) -> None:
    load = r["load_1min"]
    print(f"{r['label']:<6} exit {r['exit_status']}  wall {r['wall_s']:7.1f} s (batch {r['batch_s'] or 0:7.1f} s)  "
          f"{n_datasets / r['wall_s'] * 60:6.1f} datasets/min  {n_jobs / r['wall_s'] * 60:6.1f} jobs/min  "
          f"done {r['n_done']} failed {r['n_failed']}  tiles {sum(x.get('tiles_computed', 0) for x in r['records'])}")
    print(f"       worker peak RSS max {gib(r['worker_peak_max'])} GiB, median {gib(r['worker_peak_median'])} GiB "
          f"(restarts {r['worker_restarts']}, worker CPU {r['worker_cpu_s']:.0f} s); driver peak "
          f"{gib(r['driver_peak_bytes'])} GiB (CPU {r['driver_cpu_s']:.0f} s), Prefect server "
          f"{gib(r['prefect_server_peak_bytes'])} GiB; load 1-min {load['min']:.1f}-{load['max']:.1f} "
          f"(mean {load['mean']:.1f})")
    roles = r.get("cpu_s_by_process") or {}
    if roles:
        total = sum(roles.values()) + r["worker_cpu_s"]
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in sorted(roles.items(), key=lambda kv: -kv[1]))
        print(f"       CPU s: {parts}, workers {r['worker_cpu_s']:.1f}; total {total:.1f} of "
              f"{os.cpu_count()} cores x wall = {os.cpu_count() * r['wall_s']:.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cluster == "local-threads":
        sys.exit("soak: local-threads cannot be shared with the `emfuse run` process; use local or an address.")
    workdir = prepare_workdir(args.workdir)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"soak: workdir {workdir}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    t0 = time.perf_counter()
    datasets = make_datasets(args, workdir / "incoming")
    generate_s = time.perf_counter() - t0
    jobs = {job: sum(d.job == job for d in datasets) for job in OUTPUTS}
    print(f"generated {len(datasets)} datasets in {generate_s:.1f} s: "
          + ", ".join(f"{n} {job}" for job, n in jobs.items()))

    if args.cluster is None:
        profile = {"profile": "local", "n_workers": args.workers, "threads_per_worker": 1,
                   "memory_limit": args.memory_limit}
        (workdir / "cluster.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
        spec = as_spec(str(workdir / "cluster.yaml"))
    else:
        spec = as_spec(args.cluster)
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(args.prefect_home or workdir / "prefect")
    env.setdefault("PYTHONUNBUFFERED", "1")

    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with connect(spec) as client:
        cluster_s = time.perf_counter() - t0
        address = client.scheduler.address
        tls = {k: v for k, v in spec.options.items() if k.startswith("tls_") or k == "require_encryption"}
        catalog_cluster: Any = {"address": address, **tls} if tls else address
        catalog = write_catalog(args, workdir, datasets, catalog_cluster)
        workers = client.scheduler_info()["workers"]
        print(f"cluster {spec.describe()}: {len(workers)} workers at {address} (started in {cluster_s:.1f} s)")
        print(f"catalog {catalog}")
        runs.append(run_batch("first", catalog, workdir, client, env, args.interval))
        digests = {}
        for d in datasets:
            store = workdir / "results" / f"{d.name}.{d.job}.zarr"
            digests[d.name] = output_digest(str(store), d.job) if is_complete(store) else None
        if args.rerun:
            runs.append(run_batch("rerun", catalog, workdir, client, env, args.interval))

    # ---- checks
    first = runs[0]
    records = {r["dataset"]: r for r in first["records"]}
    problems: list[str] = []
    if first["exit_status"] != 0:
        problems.append(f"first run: exit status {first['exit_status']} (see {first['log']})")
    if first["n_failed"] != 0:
        problems.append(f"first run: n_failed = {first['n_failed']}")
    for r in first["records"]:
        if r["status"] != "done":
            problems.append(f"{r['dataset']} {r['job']}: {r.get('error')}")
    missing = [d.name for d in datasets if d.name not in records]
    if missing:
        problems.append(f"not in report.json: {missing}")
    for d in datasets:
        problems += check_store(d, str(workdir / "results" / f"{d.name}.{d.job}.zarr"))
    q = quality(datasets, records)
    if q.get("fuse", {}).get("not_improved"):
        problems.append(f"fused NRMSE not below raw: {q['fuse']['not_improved']}")
    if q.get("restore", {}).get("not_improved"):
        problems.append(f"restored PSNR not above raw: {q['restore']['not_improved']}")
    for job, key in (("fuse", "n"), ("restore", "n"), ("tem-fuse", "n")):
        if jobs[job] and q.get(job, {}).get(key) != jobs[job]:
            problems.append(f"{job}: quality figures for {q.get(job, {}).get(key, 0)} of {jobs[job]} datasets")
    rerun_checks: dict[str, Any] = {}
    if args.rerun:
        rerun = runs[1]
        again = {r["dataset"]: r for r in rerun["records"]}
        not_skipped = [n for n, r in again.items() if r.get("state") != "complete" or r.get("tiles_computed", 0) != 0]
        changed = [d.name for d in datasets
                   if digests.get(d.name) is None or output_digest(str(workdir / "results" / f"{d.name}.{d.job}.zarr"), d.job) != digests[d.name]]
        rerun_checks = {"exit_status": rerun["exit_status"], "n_failed": rerun["n_failed"],
                        "all_already_complete": not not_skipped and len(again) == len(datasets),
                        "tiles_computed": sum(r.get("tiles_computed", 0) for r in again.values()),
                        "outputs_changed": changed, "wall_s": rerun["wall_s"]}
        if rerun["exit_status"] != 0 or rerun["n_failed"]:
            problems.append(f"rerun: exit status {rerun['exit_status']}, n_failed {rerun['n_failed']}")
        if not_skipped:
            problems.append(f"rerun computed again: {not_skipped}")
        if changed:
            problems.append(f"rerun changed the outputs of {changed}")
    locks = sorted(str(p) for p in (workdir / "results").glob(f"*{LOCK_SUFFIX}"))
    if locks:
        problems.append(f"lock files left: {locks}")

    # ---- report
    n_jobs = sum(jobs.values())
    print()
    print(f"soak: {len(datasets)} datasets, {n_jobs} jobs ({', '.join(f'{n} {j}' for j, n in jobs.items())}), "
          f"sizes {args.size} px, cluster {spec.describe()}")
    for r in runs:
        print_run(r, len(datasets), n_jobs)
    kinds = per_kind(datasets, records, first["stages_s"])
    print(f"\n{'first run':<9} {'jobs':>4} {'Mpx':>7} {'unit':<15} {'job s':>7} {'median':>7} {'Mpx/s':>7} "
          f"{'plan s':>7} {'compute':>8} {'Mpx/s':>7} {'final.':>7} {'report':>7} {'tiles':>6}")
    for job, k in kinds.items():
        st = k.get("stages_s", {})
        print(f"{job:<9} {k['jobs']:>4} {k['mpx']:>7.3f} {k['unit']:<15} {k['job_s_sum']:>7.1f} "
              f"{k['job_s_median']:>7.2f} {k['mpx_per_s'] or 0:>7.4f} {st.get('plan', 0):>7.1f} "
              f"{st.get('compute', 0):>8.1f} {k.get('mpx_per_compute_s', 0):>7.4f} {st.get('finalise', 0):>7.1f} "
              f"{st.get('report', 0):>7.1f} {k['tiles_computed']:>6}")
    for r in runs:
        b = (r["stages_s"] or {}).get("batch")
        if b:
            print(f"{r['label']:<6} Prefect records: batch flow {b['batch_flow']:.1f} s, of which in its tasks "
                  f"(ingest and the jobs' stages) {b['tasks']:.1f} s; figures are drawn outside them")
    print()
    if "fuse" in q:
        f = q["fuse"]
        print(f"fuse     NRMSE raw {f['nrmse_raw_median']:.3f} -> fused {f['nrmse_fused_median']:.3f} (medians; "
              f"fused/raw median {f['ratio_median']:.2f}, worst {f['ratio_max']:.2f}); lower for "
              f"{f['elements_improved']}/{f['elements']} element maps, {f['datasets_improved']}/{f['n']} datasets")
    if "restore" in q:
        r = q["restore"]
        print(f"restore  PSNR raw {r['psnr_raw_median_db']:.1f} dB -> restored {r['psnr_restored_median_db']:.1f} dB "
              f"(medians; smallest gain {r['gain_min_db']:.1f} dB); higher for {r['improved']}/{r['n']}")
    if "tem-fuse" in q:
        t = q["tem-fuse"]
        print(f"tem-fuse PSNR vs truth: tem_fused {t['psnr_tem_fused_median_db']:.1f} dB, HRTEM alone "
              f"{t['psnr_hrtem_median_db']:.1f} dB (medians; SSIM {t['ssim_tem_fused_median']:.2f} vs "
              f"{t['ssim_hrtem_median']:.2f}); fused better in {t['fused_better_than_hrtem']}/{t['n']}")
    if rerun_checks:
        print(f"rerun    {'every job already complete' if rerun_checks['all_already_complete'] else 'NOT all complete'}, "
              f"{rerun_checks['tiles_computed']} tiles computed, {len(rerun_checks['outputs_changed'])} outputs changed, "
              f"{rerun_checks['wall_s']:.1f} s")
    print("checks   " + ("all passed" if not problems else f"{len(problems)} FAILED:"))
    for p in problems:
        print(f"  - {p}")
    print(f"report   {workdir / 'results' / 'report.html'}")

    if args.json_path:
        result = {
            "command": " ".join([sys.executable, *sys.argv]), "started": started, "host": platform.node(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "workdir": str(workdir),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "datasets": len(datasets), "jobs": jobs, "generate_s": generate_s,
            "cluster": {"spec": spec.describe(), "address": address, "workers": len(workers), "startup_s": cluster_s},
            "runs": [{k: v for k, v in r.items() if k != "records"} | {
                "datasets_per_min": len(datasets) / r["wall_s"] * 60, "jobs_per_min": n_jobs / r["wall_s"] * 60}
                for r in runs],
            "per_kind": kinds, "quality": q, "rerun": rerun_checks, "problems": problems, "ok": not problems,
            "benchmark_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        args.json_path.write_text(json.dumps(result, indent=2, default=str))
        print(f"json     {args.json_path}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
