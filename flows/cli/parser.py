"""The ``emfuse`` command line's arguments: one subcommand per :mod:`.commands` function."""

from __future__ import annotations

import argparse
from pathlib import Path

from emfuse.pipeline.fusion import FusionParams
from emfuse.pipeline.synth.crystals import FAMILIES

from .commands import (
    cmd_demo,
    cmd_export,
    cmd_fuse,
    cmd_ingest,
    cmd_ingest_modes,
    cmd_report,
    cmd_restore,
    cmd_run,
    cmd_serve,
    cmd_synth,
    cmd_tem_fuse,
    cmd_train_avae,
    cmd_train_restore,
)
from .console import AUTO

DEFAULTS = FusionParams()
#: ``synth tem-modes --material``: the default simulator's classes (``tem_modes.MATERIALS``, not
#: imported here: it loads scipy) and the randomised simulator's structure families
TEM_FAMILIES = tuple(FAMILIES)
TEM_MATERIALS = ("metal", "semiconductor", "ceramic", *TEM_FAMILIES)


def lambda_value(text: str) -> float | str:
    """A regularisation weight on the command line: a number >= 0 or ``auto``.

    Examples
    --------
    >>> lambda_value("AUTO"), lambda_value("0.05")
    ('auto', 0.05)
    """
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a weight must be >= 0, got {text!r}")
    return value


def size_value(text: str) -> int | str:
    """A size on the command line (``--tile``, ``--batch``): an integer >= 1 or ``auto``.

    Examples
    --------
    >>> size_value("Auto"), size_value("1024")
    ('auto', 1024)
    """
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be >= 1 or auto, got {text!r}")
    return value


def frame_value(text: str) -> int | str:
    """``--frame``: ``sum`` or a frame index >= 0.

    Examples
    --------
    >>> frame_value("SUM"), frame_value("3")
    ('sum', 3)
    """
    if text.strip().lower() == "sum":
        return "sum"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'sum' or a frame number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"frames count from 0, got {text!r}")
    return value

def _fusion_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("fusion parameters (normalised units; see docs/methods/fusion.md)")
    p.add_argument("--elements", nargs="+", metavar="EL", help="elements to map and fuse, e.g. Sr Ti O")
    p.add_argument("--gamma", type=float, default=DEFAULTS.gamma, help="Z-contrast exponent (default %(default)s)")
    p.add_argument("--lambda-chem", type=lambda_value, default=AUTO, metavar="NUM|auto",
                   help="weight of the Poisson fidelity to the raw maps, or 'auto': chosen for the "
                        "dataset on held-out data: split counts, or recorrupted maps with the noise measured "
                        "on them for maps that are not counts (default %(default)s; maps whose noise "
                        f"cannot be measured get the embedded {DEFAULTS.lambda_chem}, with a warning)")
    p.add_argument("--lambda-tv", type=lambda_value, default=AUTO, metavar="NUM|auto",
                   help="weight of the total-variation prior, or 'auto' (default %(default)s; "
                        f"embedded fallback {DEFAULTS.lambda_tv})")
    p.add_argument("--n-iter", type=int, default=DEFAULTS.n_iter, help="iterations (default %(default)s)")
    p.add_argument("--n-iter-tv", type=int, default=DEFAULTS.n_iter_tv,
                   help="FGP iterations per TV step (default %(default)s)")
    p.add_argument("--bkg", type=float, default=DEFAULTS.bkg, help="background in the Poisson log (default %(default)s)")
    p.add_argument("--init-threshold", type=float, default=DEFAULTS.init_threshold,
                   help="zero the initial maps below this normalised value (default %(default)s)")
    p.add_argument("--tol", type=float, default=None, help="stop when the relative change falls below this")
    p.add_argument("--window", action="append", default=[], metavar="EL=LO:HI",
                   help="integration window in eV for an element, e.g. Fe=6250:6550 (repeatable)")
    run = parser.add_argument_group("execution")
    run.add_argument("--tile", type=size_value, default=AUTO, metavar="auto|N",
                     help="tile size in pixels; auto (the default): on GPU workers the largest tile their free "
                          "memory holds by the solver's memory model (one tile when the image fits), on CPU "
                          "workers 512; a store already started keeps its tile")
    run.add_argument("--halo", type=int, default=32, help="halo around each tile in pixels (default %(default)s)")
    _job_run_arguments(run)


def _job_run_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options every job command shares: where it runs, overwriting, the report."""
    parser.add_argument("--cluster", default="auto",
                        help="cluster profile (local, local-threads, local-gpu, slurm), YAML file, or scheduler "
                             "address (default auto: threads in this process for a job of one tile or block, "
                             "else local)")
    parser.add_argument("--prefect", action="store_true",
                        help="run as a Prefect flow (default only when PREFECT_API_URL names a Prefect server; "
                             "otherwise the same stages run directly, without starting a Prefect server)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    parser.add_argument("--no-report", action="store_true", help="do not write the PNG report")


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the work runs: auto (each worker's GPU when it has one, e.g. --cluster "
                             "local-gpu; else its CPU), cpu or cuda (default %(default)s); the store's "
                             "'devices' attribute says where it ran")


def _signal_argument(parser: argparse.ArgumentParser, what: str = "the spectrum image to take from a file "
                     "that holds several (or an image, to take it alone)") -> None:
    parser.add_argument("--signal", default=None, metavar="INDEX|TITLE",
                        help=f"{what}: its index (emfuse ingest FILE --list) or its title")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emfuse", description="Overnight EM pipeline: fused chemical maps from spectrum images and HAADF."
    )
    from emfuse.stores.version import emfuse_version

    parser.add_argument("--version", action="version", version=f"%(prog)s {emfuse_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show log messages")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthesise a dataset, fuse it, write a report")
    p.add_argument("--out", type=Path, default=Path("emfuse-demo"), help="directory for everything (default %(default)s)")
    p.add_argument("--size", type=int, default=256,
                   help="side of the spectrum image and of the TEM modes, in pixels (default %(default)s)")
    p.add_argument("--dose", type=float, default=None, help="mean counts per pixel (default: the generator's)")
    p.add_argument("--cluster", default="local", help="cluster profile (default %(default)s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic dataset with ground truth")
    p.add_argument("kind", choices=["spectrum-image", "tem-modes", "movie"], help="what to synthesise")
    p.add_argument("--out", type=Path, required=True, help="output store (.zarr)")
    p.add_argument("--shape", type=int, nargs=2, default=[256, 256], metavar=("NY", "NX"))
    p.add_argument("--elements", nargs="+", default=None, help="2-4 elements (default Sr Ti O)")
    p.add_argument("--specimen", default="columns", choices=["columns", "particles", "layers"])
    p.add_argument("--dose", type=float, default=None,
                   help="mean counts per pixel (tem-modes: HRTEM electrons per pixel)")
    p.add_argument("--material", default=None, choices=TEM_MATERIALS, metavar="MATERIAL",
                   help="tem-modes: material class of the polycrystalline specimen (metal, semiconductor, "
                        "ceramic; default metal), or a structure family of the randomised simulator "
                        f"({', '.join(TEM_FAMILIES)}): compound, zone axis and instrument drawn from --seed")
    p.add_argument("--frames", type=int, default=None, help="movie: number of frames (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="read a facility file into a canonical Zarr store")
    p.add_argument("file", type=Path, help=".dm3 .dm4 .emd .bcf .emi .ser .hspy .h5 .npz .tif")
    p.add_argument("--out", type=Path, help="output store (.zarr)")
    p.add_argument("--elements", nargs="+",
                   help="names of unnamed maps (npz), or the elements to keep: their maps in the file, the "
                        "others integrated from the spectrum image by fuse (recorded as the store's elements)")
    _signal_argument(p)
    p.add_argument("--list", action="store_true", help="list the file's signals (index, title, shape, type) and exit")
    p.add_argument("--overwrite", action="store_true", help="replace the output store if it exists")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ingest-modes", help="BF, DF and HRTEM images of one region (and flat references) "
                                            "into a modes store for tem-fuse")
    files = p.add_argument_group("images (each any file ingest reads: .dm3 .dm4 .emd .emi .ser .bcf .hspy .tif ...)")
    for mode, what in (("bf", "bright-field image (TEM or STEM BF detector)"),
                       ("df", "dark-field image (TEM DF or STEM ADF/DF detector)"),
                       ("hrtem", "high-resolution TEM image (camera); BF and DF are registered to it")):
        files.add_argument(f"--{mode}", type=Path, metavar="FILE", help=what)
    flats = p.add_argument_group("flat (vacuum) references: the beam without specimen, same illumination and "
                                 "detector settings; all three or none (none: the illumination is fitted)")
    for mode in ("bf", "df"):
        flats.add_argument(f"--flat-{mode}", metavar="FILE|uniform",
                           help=f"{mode.upper()} reference, or 'uniform' for an evenly lit STEM detector image")
    flats.add_argument("--flat-hrtem", metavar="FILE", help="HRTEM reference: the camera's vacuum image")
    p.add_argument("--signal", action="append", default=[], metavar="MODE=INDEX|TITLE",
                   help="which image of a file that holds several (emfuse ingest FILE --list), e.g. --signal bf=BF "
                        "--signal df=3; flat-bf=... for a reference (repeatable)")
    p.add_argument("--frame", type=frame_value, default="sum", metavar="sum|N",
                   help="a stack (a camera's frames) becomes its sum (default) or its frame N, from 0; "
                        "references are always summed")
    p.add_argument("--bin", action="append", default=[], metavar="MODE=N",
                   help="sum N x N pixels of a mode's image (and its reference) into one, e.g. hrtem=4 to "
                        "match a 4096 px HRTEM to 1024 px BF and DF of the same field (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output store (.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace the output store if it exists")
    p.set_defaults(func=cmd_ingest_modes)

    p = sub.add_parser("export", help="write a store's variable as a HyperSpy file (needs emfuse[hyperspy])")
    p.add_argument("store", type=Path, help="canonical or output store (.zarr)")
    p.add_argument("--to", default="hspy", choices=["hspy"], help="file format (default %(default)s)")
    p.add_argument("--variable", default=None,
                   help="variable to export (default: fused, else spectrum, maps, haadf, movie, ...)")
    p.add_argument("--out", type=Path, required=True, help="output file (.hspy)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fuse", help="fused multi-modal chemical mapping of a store or raw file")
    p.add_argument("source", type=Path, help="canonical store or raw file (ingested first)")
    p.add_argument("--out", type=Path, required=True, help="output store (.zarr)")
    _fusion_arguments(p)
    p.add_argument("--maps-from", choices=["spectrum", "file"], default=None,
                   help="integrate the maps from the spectrum image (with --window), or use the maps stored "
                        "in the file (default: the spectrum image where there is one)")
    p.add_argument("--haadf-model", choices=["z", "fit"], default="z",
                   help="the HAADF model's element weights and gamma: 'z' (Z_i / mean(Z) and --gamma; the "
                        "default) or 'fit' (both fitted to the data with the automatic weights, and the "
                        "weakest element's own weights chosen on held-out counts; docs/methods/fusion.md)")
    _signal_argument(p)
    _device_argument(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("restore", help="restore a movie or image with a network (r_em), optionally register it")
    p.add_argument("source", type=Path, help="canonical store or raw file (ingested first) with a movie or image")
    p.add_argument("--out", type=Path, required=True, help="output store (.zarr)")
    _signal_argument(p, "of a raw file that holds several signals, the image or image stack to restore (or a "
                        "spectrum image, whose HAADF is restored)")
    p.add_argument("--model", default="auto", metavar="NAME|PATH",
                   help="'auto' (the default: emfuse's own model for the modality and resolution the file's "
                        "metadata and pixel size say, else 'default'), an own model (default: HR-STEM; "
                        "stem-high, stem-low, tem-high, tem-low, sem), a published network "
                        "(r_em:sfr_hrstem, r_em:sfr_lrstem, r_em:sfr_hrtem, r_em:sfr_lrtem, r_em:sfr_hrsem, "
                        "r_em:sfr_lrsem; needs tk-r-em) or a .safetensors model")
    _device_argument(p)
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels (default %(default)s)")
    p.add_argument("--overlap", type=int, default=32, help="overlap of tiles in pixels (default %(default)s)")
    p.add_argument("--batch", type=size_value, default=AUTO, metavar="auto|N",
                   help="tiles per forward pass; auto (the default): on a GPU the most its free memory holds by "
                        "the network's activation model (at most 64), on the CPU 8")
    p.add_argument("--compile", action="store_true",
                   help="compile the network with torch.compile (CUDA graphs) on CUDA workers: faster batches "
                        "after a first compiling one; a no-op on the CPU")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="arithmetic: bf16/fp16 run under autocast (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (CPU speed)")
    p.add_argument("--register", action="store_true",
                   help="also measure the drift of every frame and write the drift-corrected average")
    p.add_argument("--block", type=int, default=None, help="frames per task (default: about 32 MiB of frames, at most 1/8 of the movie)")
    p.add_argument("--no-guard", action="store_true",
                   help="keep every network output as it is (default: check each frame's residual and put back, "
                        "or keep raw, what the network removed of a lattice the input shows)")
    p.add_argument("--adapt", type=int, default=0, metavar="STEPS",
                   help="first fine-tune the model on the movie itself for STEPS steps (Noise2Noise between "
                        "its frames, e.g. 200; a movie of at least 4 frames), used only when a held-out-frame "
                        "check says it restores better (default 0: off)")
    _job_run_arguments(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("train-restore", help="train or fine-tune a restoration network on synthetic pairs")
    p.add_argument("--out", type=Path, required=True, help="directory for checkpoints, log and model.safetensors")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps in all (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="pairs per step (default %(default)s)")
    p.add_argument("--patch", type=int, default=128, help="patch size in pixels, a multiple of 16 (default %(default)s)")
    p.add_argument("--data", default="specimens", choices=["specimens", "scenes"],
                   help="training pairs: specimens (HR-STEM-like columns, the first generator) or scenes (the "
                        "broad distribution of docs/methods/restoration.md; default %(default)s)")
    p.add_argument("--modality", default="stem", choices=["stem", "tem", "sem", "all"],
                   help="distortion models and contrast; sem and all need --data scenes (default %(default)s)")
    p.add_argument("--resolution", default="high", choices=["high", "low", "all"],
                   help="specimens' pixel size; all needs --data scenes (default %(default)s)")
    p.add_argument("--hold-out", action="store_true",
                   help="with --data scenes: never draw the held-out families (emfuse.pipeline.synth.scenes.HELD_OUT), "
                        "so that they measure generalisation")
    p.add_argument("--noise-only", type=float, default=0.0, metavar="FRACTION",
                   help="with --data scenes: the fraction of pairs from a clean scan, the detector's noise their "
                        "only distortion, so that the network learns to keep what a clean frame shows (default 0)")
    p.add_argument("--max-jitter-angstrom", type=float, default=None, metavar="A",
                   help="with --data scenes: the S(T)EM scan jitter at most this many Å (with the scene's pixel "
                        "size); default: the tables' amplitudes in pixels, up to 1 px whatever the pixel size")
    p.add_argument("--init", default="scratch", metavar="scratch|NAME|PATH",
                   help="start from random weights (default), a published network (r_em:sfr_hrstem, ...) "
                        "or a .safetensors model, to fine-tune")
    p.add_argument("--config", default=None, choices=["small", "medium", "paper"],
                   help="architecture from scratch: small (0.18 M parameters, the default), medium (1.46 M) "
                        "or paper (7.0 M); medium and paper want --device cuda")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3 from scratch, 1e-4 fine-tuning)")
    p.add_argument("--adversarial", action="store_true", help="also train a patch discriminator (RaGAN)")
    p.add_argument("--balance", default="mean", choices=["mean", "relative"],
                   help="how a batch's images count in the loss: mean (by the size of their errors) or relative "
                        "(each by its relative error, so high-dose images are not drowned by low-dose ones; "
                        "default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and every batch (default %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default %(default)s")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    p.add_argument("--data-workers", type=int, default=None, metavar="N",
                   help="processes that make the training pairs ahead of the steps; the weights are the same "
                        "either way (default: 0 on the CPU, the pairs made between steps; with --device cuda "
                        "all cores but two, at most 8)")
    p.set_defaults(func=cmd_train_restore)

    p = sub.add_parser("tem-fuse", help="fuse BF, DF and HRTEM images with the AVAE (tiled, resumable)")
    p.add_argument("source", type=Path, help="canonical store with modes (mode, y, x): bf, df, hrtem")
    p.add_argument("--out", type=Path, required=True, help="output store (.zarr)")
    p.add_argument("--model", type=Path, default=None, help="AVAE weights (.safetensors; default: the committed ones)")
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels (default %(default)s)")
    p.add_argument("--halo", type=int, default=32, help="halo around each tile in pixels (default %(default)s)")
    _device_argument(p)
    _job_run_arguments(p)
    p.set_defaults(func=cmd_tem_fuse)

    p = sub.add_parser("train-avae", help="train the AVAE on modes stores with a truth (emfuse synth tem-modes)")
    p.add_argument("stores", type=Path, nargs="+", help="modes stores with true_structure")
    p.add_argument("--out", type=Path, required=True, help="model file (.safetensors)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="crops per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default %(default)s)")
    p.add_argument("--beta", type=float, default=1e-3, help="weight of the KL term (default %(default)s)")
    p.add_argument("--crop", type=int, default=48, help="training crop in pixels, even (default %(default)s)")
    p.add_argument("--region", type=int, default=192, help="stores are cut into regions of this size (default %(default)s)")
    p.add_argument("--features", type=int, default=16, help="channels of the convolutions (default %(default)s)")
    p.add_argument("--latent", type=int, default=8, help="latent channels per mode (default %(default)s)")
    p.add_argument("--no-attention", action="store_true", help="equal weights instead of attention (the vae baseline)")
    p.add_argument("--attention-from", choices=("z", "stats"), default="z",
                   help="attention scores from the latents (z, the paper's a'[z]) or from every mode's mean "
                        "and log-variance with 3x3 context (stats) (default %(default)s)")
    p.add_argument("--base", choices=("none", "restored_hrtem"), default="restored_hrtem",
                   help="restored_hrtem: a residual on the HRTEM restored by --base-model, which the network "
                        "starts from, as tem-fuse's default weights; none: the plain AVAE "
                        "(docs/methods/avae.md) (default %(default)s)")
    p.add_argument("--base-model", default="wiener",
                   help="the restoration network of the base: 'wiener' (the Wiener-filtered HRTEM, no weights "
                        "to install), a name of `emfuse restore --model` or a .safetensors file "
                        "(default %(default)s)")
    p.add_argument("--no-mode-gains", dest="mode_gains", action="store_false",
                   help="without the gain-map path from every mode to the output (AVAEConfig.mode_gains, on "
                        "by default for a residual network)")
    p.add_argument("--mode-dropout", type=float, default=0.25,
                   help="fraction of the training crops fused from a random subset of the modes, so the "
                        "network copes with a missing mode (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    p.set_defaults(func=cmd_train_avae)

    p = sub.add_parser("report", help="PNG figures of an output store")
    p.add_argument("store", type=Path)
    p.add_argument("--report-dir", type=Path, default=None, help="default: <store>.report/ beside it")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="the overnight batch: every dataset and job of a catalog, one HTML report")
    p.add_argument("catalog", type=Path, help="catalog YAML (output, cluster, datasets; see docs/user-guide.md)")
    p.add_argument("--cluster", default=None, help="replace the catalog's cluster profile or scheduler address")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and cron)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="run the catalog's batch on a cron schedule (Prefect deployment)")
    p.add_argument("catalog", type=Path)
    p.add_argument("--cron", required=True, help='schedule, e.g. "0 22 * * *" for 22:00 every night')
    p.add_argument("--name", default=None, help="deployment name (default nightly-<catalog stem>)")
    p.add_argument("--timezone", default=None, help="IANA time zone of the cron times, e.g. Europe/Brussels "
                                                    "(default: this machine's)")
    p.add_argument("--cluster", default=None, help="replace the catalog's cluster profile or scheduler address")
    p.set_defaults(func=cmd_serve)
    return parser
