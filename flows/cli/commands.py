"""The ``emfuse`` subcommands, one function each: a thin layer over a flow or a store function.

Each returns the exit status; errors from the data raise an :class:`emfuse.errors.EmfuseError`,
which :func:`emfuse.flows.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emfuse.errors import InputError, InputFileNotFound

from .console import (
    print_adaptation,
    print_model_choice,
    print_summary,
    print_tem_summary,
    print_warnings,
    quiet_prefect,
    use_prefect,
)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "gamma": args.gamma, "lambda_chem": args.lambda_chem, "lambda_tv": args.lambda_tv,
        "n_iter": args.n_iter, "n_iter_tv": args.n_iter_tv, "bkg": args.bkg,
        "init_threshold": args.init_threshold, "tol": args.tol,
    }


def _windows(specs: Sequence[str]) -> dict[str, list[float]] | None:
    windows = {}
    for spec in specs:
        try:
            element, span = spec.split("=")
            lo, hi = (float(v) for v in span.split(":"))
        except ValueError:
            raise InputError(f"bad --window {spec!r}; write it as EL=LO:HI in eV, e.g. Fe=6250:6550") from None
        windows[element] = [lo, hi]
    return windows or None


def _as_flow(args: argparse.Namespace, flow: str, *call: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a job as its Prefect flow (``flow``, a name in :mod:`emfuse.flows.jobs.flows`).

    Without a configured server, Prefect's temporary one is launched first
    (:func:`~emfuse.flows._prefect_env.start_server_early`), so that its start overlaps the
    import of the flow's modules instead of following it, as in ``emfuse run``."""
    from .._prefect_env import start_server_early

    server = start_server_early()
    from ..jobs import flows

    quiet_prefect(args.verbose)
    with server.serving():
        return getattr(flows, flow)(*call, **kwargs)


def _require(path: Path) -> None:
    """Fail in a second rather than after starting Prefect and a cluster."""
    if not path.exists():
        raise InputFileNotFound(f"{path} does not exist; give a canonical store (.zarr) or a raw file.")


def cmd_fuse(args: argparse.Namespace) -> int:
    from ..jobs.checks import check_fuse

    windows = _windows(args.window)
    # arguments, files and the output checked before Prefect, Dask and the cluster are loaded
    check_fuse(args.source, args.out, elements=args.elements, params=_params(args), tile=args.tile,
               halo=args.halo, windows=windows, overwrite=args.overwrite, haadf_model=args.haadf_model)
    kwargs = dict(elements=args.elements, params=_params(args), tile=args.tile, halo=args.halo, windows=windows,
                  maps_from=args.maps_from, device=args.device, haadf_model=args.haadf_model,
                  overwrite=args.overwrite)
    if use_prefect(args):
        result = _as_flow(args, "fuse_flow", str(args.source), str(args.out), cluster=args.cluster,
                          signal=args.signal, report=not args.no_report, **kwargs)
    else:
        from ..jobs.registry import fuse_options, run_job_stages

        result = run_job_stages("fuse", str(args.source), str(args.out), fuse_options(**kwargs),
                                cluster=args.cluster, elements=args.elements, signal=args.signal,
                                report=not args.no_report)
    print_summary(result)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ..jobs.checks import check_restore

    check_restore(args.source, args.out, model=args.model, overwrite=args.overwrite, options=dict(
        device=args.device, tile=args.tile, overlap=args.overlap, batch=args.batch, precision=args.precision,
        channels_last=args.channels_last, register=args.register, block=args.block, guard=not args.no_guard,
        adapt_steps=args.adapt or None, compile=args.compile))
    kwargs = dict(model=args.model, device=args.device, tile=args.tile, overlap=args.overlap, batch=args.batch,
                  precision=args.precision, channels_last=args.channels_last, block=args.block,
                  adapt=args.adapt, overwrite=args.overwrite, guard=not args.no_guard, compile=args.compile)
    if use_prefect(args):
        result = _as_flow(args, "restore_flow", str(args.source), str(args.out), cluster=args.cluster,
                          register_drift=args.register, report=not args.no_report, signal=args.signal, **kwargs)
    else:
        from ..jobs.registry import restore_options, run_job_stages

        options = restore_options(cluster=args.cluster, register=args.register, **kwargs)
        result = run_job_stages("restore", str(args.source), str(args.out), options, cluster=args.cluster,
                                report=not args.no_report, signal=args.signal)
    print(f"output store: {result['store']}")
    if result.get("figures"):
        print(f"report:       {Path(result['figures'][0]).parent}")
    print(f"restored:     {result['frames']} frame(s) of {result['shape'][1]} x {result['shape'][2]} "
          f"with {result['model']} on {', '.join(result.get('devices') or [result['device']])} "
          f"({result['precision']})")
    print_model_choice(result)
    print_adaptation(result)
    if "drift_max_px" in result and result["frames"] == 1:
        print("drift:        one frame, nothing to register it against (drift 0; average: the frame)")
    elif "drift_max_px" in result:
        print(f"drift:        up to {result['drift_max_px']:.2f} px (variables drift, average)")
    if "psnr_raw_db" in result:
        print(f"PSNR vs truth: raw {result['psnr_raw_db']:.2f} dB, restored {result['psnr_restored_db']:.2f} dB")
    print_warnings(result)
    return 0


def cmd_train_restore(args: argparse.Namespace) -> int:
    from ..tools.train_restore import run_training

    summary = run_training(
        args.out, steps=args.steps, batch=args.batch, patch=args.patch, modality=args.modality,
        resolution=args.resolution, init=args.init, config=args.config, lr=args.lr,
        adversarial=args.adversarial, checkpoint_every=args.checkpoint_every, seed=args.seed,
        device=args.device, resume=args.resume, max_minutes=args.max_minutes, data=args.data,
        hold_out=args.hold_out, data_workers=args.data_workers, balance=args.balance,
        noise_only=args.noise_only, max_jitter_angstrom=args.max_jitter_angstrom,
    )
    print(f"model:        {summary['model']}")
    print(f"steps:        {summary['step']} of {summary['steps']} ({summary['seconds']:.0f} s this run)")
    if summary["val"]:
        print(f"validation:   loss {summary['val']['loss']:.4g}, PSNR {summary['val']['psnr']:.2f} dB")
    if summary["step"] < summary["steps"]:
        print(f"stopped early; continue with: emfuse train-restore --out {args.out} --resume (same options)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from dask.diagnostics import ProgressBar

    from emfuse.stores.ingest import describe
    from emfuse.stores.warn import read_warnings
    from emfuse.stores.zarrio import open_dataset

    from ..jobs.inputs import ingest_file

    if args.list:
        print("\n".join(describe(args.file)))
        return 0
    if args.out is None:
        raise InputError("emfuse ingest needs --out STORE.zarr (or --list to see what the file holds).")
    with ProgressBar(minimum=2.0):  # shown only when the copy takes more than 2 s
        path = ingest_file(args.file, args.out, elements=args.elements, signal=args.signal,
                           overwrite=args.overwrite)
    print(f"wrote {path}")
    print(open_dataset(path))
    print_warnings({"warnings": read_warnings(path)})
    return 0


def _per_mode(specs: Sequence[str], option: str, example: str) -> dict[str, str]:
    """``["bf=3", "df=DF"]`` as ``{"bf": "3", "df": "DF"}``, or an error showing the form.

    >>> _per_mode(["bf=3", "hrtem=HAADF"], "--signal", "bf=3")
    {'bf': '3', 'hrtem': 'HAADF'}
    """
    out = {}
    for spec in specs:
        mode, sep, value = spec.partition("=")
        if not sep or not mode.strip() or not value.strip():
            raise InputError(f"bad {option} {spec!r}; write it as MODE=VALUE, e.g. {option} {example}")
        out[mode.strip().lower()] = value.strip()
    return out


def cmd_ingest_modes(args: argparse.Namespace) -> int:
    from emfuse.stores.modes import ingest_modes
    from emfuse.stores.warn import read_warnings
    from emfuse.stores.zarrio import open_dataset

    bins = {}
    for mode, text in _per_mode(args.bin, "--bin", "hrtem=4").items():
        if not text.isdigit() or int(text) < 1:
            raise InputError(f"bad --bin {mode}={text}; the factor is a whole number >= 1, e.g. --bin hrtem=4")
        bins[mode] = int(text)
    images = {m: getattr(args, m) for m in ("bf", "df", "hrtem") if getattr(args, m) is not None}
    flats = {m: getattr(args, f"flat_{m}") for m in ("bf", "df", "hrtem") if getattr(args, f"flat_{m}")}
    path = ingest_modes(images, args.out, flats=flats, signals=_per_mode(args.signal, "--signal", "bf=3"),
                        frame=args.frame, bins=bins, overwrite=args.overwrite)
    print(f"wrote {path}")
    print(open_dataset(path))
    print_warnings({"warnings": read_warnings(path)})
    print(f"next: emfuse tem-fuse {path} --out fused.zarr  (the default weights were trained on simulated "
          "data only: check the fused image against the recorded ones)")
    return 0

def cmd_export(args: argparse.Namespace) -> int:
    from ..tools.export import export

    path = export(args.store, args.out, to=args.to, variable=args.variable, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ..tools.synth import write_synthetic

    path = write_synthetic(
        args.kind, args.out, shape=tuple(args.shape), elements=args.elements, specimen=args.specimen,
        dose=args.dose, seed=args.seed, overwrite=args.overwrite, material=args.material,
        frames=args.frames,
    )
    print(f"wrote {path}")
    return 0


def cmd_tem_fuse(args: argparse.Namespace) -> int:
    from ..jobs.checks import check_tem_fuse

    check_tem_fuse(args.source, args.out, model=args.model, tile=args.tile, halo=args.halo,
                   overwrite=args.overwrite)
    kwargs = dict(model=str(args.model) if args.model else None, tile=args.tile, halo=args.halo,
                  device=args.device, overwrite=args.overwrite)
    if use_prefect(args):
        result = _as_flow(args, "tem_fuse_flow", str(args.source), str(args.out), cluster=args.cluster,
                          report=not args.no_report, **kwargs)
    else:
        from ..jobs.registry import run_job_stages, tem_fuse_options

        result = run_job_stages("tem-fuse", str(args.source), str(args.out), tem_fuse_options(**kwargs),
                                cluster=args.cluster, report=not args.no_report)
    print_tem_summary(result)
    return 0


def cmd_train_avae(args: argparse.Namespace) -> int:
    from emfuse.pipeline.avae.model import AVAEConfig
    from emfuse.pipeline.avae.train import TrainSettings

    from ..tools.train_avae import train_from_stores

    for store in args.stores:
        _require(store)
    settings = TrainSettings(steps=args.steps, batch=args.batch, lr=args.lr, beta=args.beta, crop=args.crop,
                             seed=args.seed, threads=args.threads, mode_dropout=args.mode_dropout)
    cfg = AVAEConfig(features=args.features, latent=args.latent, attention=not args.no_attention,
                     attention_from=args.attention_from, base=args.base, base_model=args.base_model,
                     mode_gains=args.mode_gains and args.base != "none")
    if cfg.has_base:
        from emfuse.pipeline.avae.base import load_base_network

        load_base_network(cfg.base_model)  # a mistyped name fails here, naming it, before the regions are cut

    def progress(step: int, rec: dict[str, float]) -> None:
        val = f", validation MSE {rec['validation_mse']:.4f}" if "validation_mse" in rec else ""
        print(f"step {step}: reconstruction {rec['recon']:.4f}, KL {rec['kl']:.3f}{val}", flush=True)

    path, history = train_from_stores([str(s) for s in args.stores], args.out, region=args.region,
                                      settings=settings, cfg=cfg, progress=progress)
    print(f"model:        {path} (best step {history['best_step']}, {history['seconds']:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    for path in write_report(args.store, args.report_dir):
        print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from emfuse.cluster import discard_early, start_early

    from .._prefect_env import start_server_early
    from ..batch.catalog import load_catalog

    # Prefect's server starts while the catalog is checked and the batch's modules load (a bad
    # catalog stops it again at exit), the local cluster once the catalog names it
    server = start_server_early()
    catalog = load_catalog(args.catalog, cluster=args.cluster)
    start_early(catalog.cluster)
    try:
        from ..batch import batch_flow

        quiet_prefect(args.verbose)
        with server.serving():
            info = batch_flow(str(args.catalog), cluster=args.cluster, progress=not args.no_progress)
    finally:
        discard_early()  # a cluster the batch did not take (no dataset could run)
    print(f"{info['n_done']} done, {info['n_failed']} failed in {info['seconds'] / 60:.1f} min")
    for record in info["records"]:
        if record["status"] == "failed":
            print(f"  failed: {record['error']}", file=sys.stderr)
    print(f"report: {info['report']}")
    print(f"log:    {info['log']}")
    return 1 if info["n_failed"] else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..batch import batch_deployment, serve_batch

    deployment = batch_deployment(args.catalog, args.cron, name=args.name, cluster=args.cluster,
                                  timezone=args.timezone)
    print(f"serving {deployment.name!r}: {args.catalog} on cron {args.cron!r} "
          f"({deployment.schedules[0].schedule.timezone}; Ctrl-C stops)")
    serve_batch(args.catalog, args.cron, name=args.name, cluster=args.cluster, timezone=args.timezone)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .._prefect_env import start_server_early

    server = start_server_early()  # Prefect's server starts while the input is synthesised
    from .demo import run_demo

    quiet_prefect(args.verbose)

    run_demo(args.out, size=args.size, dose=args.dose, cluster=args.cluster, serving=server.serving())
    return 0
