"""The restoration job as plain functions: a movie (or image) in, a restored movie out, resumable.

Stages (each skipped on a rerun once recorded as done in the output store):

1. ``plan``: open the input (``movie`` (frame, y, x), or ``haadf`` (y, x) as a one-frame
   movie), resolve ``model="auto"`` from its metadata (:func:`choose_model`), check the model
   and the device, create the output store from a template:
   ``restored`` (frame, y, x) float32 in chunks of one block of frames, and with
   ``register`` also ``drift`` (frame, axis) and ``average`` (y, x);
2. ``adapt`` (with ``adapt_steps``, ``emfuse restore --adapt STEPS``): one task fine-tunes the
   model on the movie itself (Noise2Noise between its frames, :mod:`emfuse.pipeline.restore.adapt`)
   and keeps the result only when a held-out-frame check says it restores better; the
   adapted model is saved beside the output store (``out.adapted.safetensors``) and the
   blocks load it;
3. the blocks (:data:`SPEC`, run by :mod:`emfuse.flows.jobs.runner`): one Dask task per unfinished block of frames reads its frames
   from the input store, restores them (:func:`emfuse.pipeline.restore.inference.restore`, tiles of
   all its frames batched together), checks each frame's residual (``guard``, on by default:
   :mod:`emfuse.pipeline.restore.guard` puts back what the network removed of a lattice the input
   shows, or keeps the raw frame; per frame ``guard_decision`` and its figures) and writes its
   chunk-aligned region, then records the block as done. Each worker process loads the network once and keeps it
   (:func:`worker_model`). On a GPU worker one block is restored at a time while the worker's
   other thread reads the next block's frames and writes the last one's (the runner's device
   lock, :func:`emfuse.flows.jobs.runner.device_gate`): a movie goes Zarr to Zarr with its
   reads and writes beside the network;
4. ``register``: with ``register``, the drift of every restored frame against the first is
   measured (:mod:`emfuse.pipeline.register`, one task per block) and the drift-corrected mean
   of the restored frames is written as ``average``;
5. ``finalise``: the warnings (``restored-clipped``, ``restore-guard``), ``complete = true``.

:mod:`emfuse.flows.jobs.flows` wraps these stages as Prefect tasks; tests and notebooks can call
:func:`emfuse.flows.jobs.run_job` (``"restore"``) without Prefect.

Example
-------
>>> from emfuse.cluster import connect  # doctest: +SKIP
>>> with connect("local") as client:  # doctest: +SKIP
...     job = run_job("restore", "movie.zarr", "restored.zarr", client, model="r_em:sfr_hrstem")
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr
import zarr

from emfuse.errors import EmfuseError
from emfuse.pipeline.metrics import psnr
from emfuse.pipeline.register import estimate_shift, shift_image
from emfuse.stores import layout
from emfuse.stores.errors import on_disk_full
from emfuse.stores.outputs import empty_like, prepare_output, write_region
from emfuse.stores.progress import TileRecord
from emfuse.stores.warn import add_warnings, make_warning, read_warnings
from emfuse.stores.zarrio import (
    jsonable,
    open_dataset,
    read_attrs,
    sha256_file,
    timed,
    update_attrs,
)

from .checks import check_restore_tiling
from .gather import gather
from .inputs import SATURATED
from .runner import (
    TiledJob,
    Unit,
    UnitOutput,
    torch_threads_share,
    worker_cached,
    worker_device,
)

if TYPE_CHECKING:  # distributed loads in a second: not for a command line that only checks its arguments
    from distributed import Client

    from emfuse.pipeline.restore.select import ModelChoice

log = logging.getLogger(__name__)
JOB = "restore"
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BLOCK_BYTES = 32 * 2**20  # default frames per block: about this much float32 data
MAX_BLOCK = 64
MIN_TASKS = 8  # default blocks are small enough to give at least this many tasks
CHUNK_YX = 2048  # frames larger than this are split in (y, x) chunks too
SUMMARY_FRAMES = 8  # frames compared with the truth in the summary of a synthetic movie
NEGATIVE_TOLERANCE = 0.01  # more negative pixels than this fraction: the input is not counts
#: how the network sees the data (emfuse.pipeline.restore.inference.restore, stats="image")
NORMALISATION = {"method": "per-frame standardisation",
                 "description": "each frame minus its mean, divided by its standard deviation (floored), "
                                "before the network; the result is returned in the input's units"}
ATTR_VALUE_RANGE = "value_range"  # [low, high] (None: unbounded) the restored values are clipped to
ATTR_MODEL_CHOICE = "model_choice"  # how --model was resolved: {"asked", "model", "modality", "resolution", "reason", ...}
ATTR_BATCH_CHOICE = "batch_choice"  # --batch auto: the rule each worker applies (emfuse.pipeline.restore.memory)
BATCH_AUTO = "auto"  # batch: the most tiles the worker's free GPU memory holds, the default on the CPU
ATTR_ADAPTATION = "adaptation"  # --adapt: {"steps", "frames_used", "holdout_frames", "score_before", "score_after", "used", "reason", ...}
ADAPTED_MODEL_SUFFIX = ".adapted.safetensors"  # the adapted network, beside the store: out.zarr -> out.adapted.safetensors
ADAPT_MAX_FRAMES = 16  # --adapt learns from (and checks on) at most the first so many frames with signal
MIN_ADAPT_FRAMES = 4  # 2 to train on, 2 held out for the check (emfuse.pipeline.restore.adapt)


class RestoreInputError(EmfuseError, ValueError):
    """The input, the model or the device cannot be used; the message names the fix."""


@dataclass(frozen=True)
class RestoreJob:
    """Everything that defines one restoration run (its ``record`` is the output's ``params``)."""

    source: str
    out: str
    model: str  # a published name ("r_em:sfr_hrstem"), an absolute .safetensors path, or an own name ("default", "stem-high", ...)
    variable: str  # the input variable: "movie" or "haadf"
    n_frames: int
    device: str = "auto"  # "auto": the worker's GPU when it has one; "cpu"; "cuda"
    tile: int = 256
    overlap: int = 32
    batch: int | str = BATCH_AUTO  # tiles per forward pass, or "auto" (worker_batch)
    precision: str = "fp32"
    channels_last: bool = False
    register: bool = False
    block: int = 8  # frames per task (and per Zarr chunk along frame)
    model_sha256: str | None = None  # of a model file
    value_range: tuple[float | None, float | None] = (None, None)  # the input's physical range (clipping)
    guard: bool = True  # check each frame's residual and fall back where the network removed signal
    adapt_steps: int = 0  # Noise2Noise fine-tuning steps on the movie itself before restoring (0: off)
    compile: bool = False  # torch.compile (CUDA graphs) of the network on CUDA workers; a no-op on the CPU

    def record(self) -> dict[str, Any]:
        """The parameters written to (and compared with) the output store."""
        record = {name: getattr(self, name) for name in
                  ("model", "device", "tile", "overlap", "batch", "precision", "channels_last",
                   "register", "block", "guard")}
        if self.model_sha256:
            record["model_sha256"] = self.model_sha256
        if self.adapt_steps:  # only when asked: stores written before --adapt existed still match
            record["adapt_steps"] = self.adapt_steps
        if self.compile:  # likewise: only when asked
            record["compile"] = True
        return record

    @property
    def blocks(self) -> list[slice]:
        """The frames of each block."""
        return [slice(f, min(f + self.block, self.n_frames)) for f in range(0, self.n_frames, self.block)]


def default_block(n_frames: int, ny: int, nx: int) -> int:
    """Frames per block: about :data:`BLOCK_BYTES` of float32 frames, at most an eighth of the
    movie (so that at least 8 tasks share the work when there are 8 frames), 1 to :data:`MAX_BLOCK`.

    Example
    -------
    >>> default_block(1000, 1024, 1024), default_block(100, 64, 64), default_block(3, 64, 64)
    (8, 12, 1)
    """
    return max(1, min(n_frames // MIN_TASKS, MAX_BLOCK, BLOCK_BYTES // (4 * ny * nx)))


def _input_variable(ds: xr.Dataset, source: str | Path) -> str:
    if layout.MOVIE in ds:
        return layout.MOVIE
    if layout.HAADF in ds:
        return layout.HAADF
    raise RestoreInputError(
        f"{source} has no movie (frame, y, x) and no image (haadf) to restore (it holds "
        f"{', '.join(map(str, ds.data_vars)) or 'nothing'}); ingest a file with a movie or an image."
    )


def image_kind(ds: xr.Dataset, variable: str) -> str:
    """What the input is (attribute ``image_kind`` of the output): ``"movie"``; the image's own
    ``image_kind`` when it has one; ``"haadf"`` beside a spectrum image or maps (the ingest takes
    the HAADF/ADF/DF image of the acquisition there); else ``"image"``.

    The canonical store keeps a lone image (a TEM frame from .emi or .dm3 too) in ``haadf``, so
    the variable's name alone does not say it is a HAADF; ingest marks it ``image_kind = "image"``.
    """
    if variable == layout.MOVIE:
        return "movie"
    if layout.ATTR_IMAGE_KIND in ds[variable].attrs:
        return str(ds[variable].attrs[layout.ATTR_IMAGE_KIND])
    return "haadf" if layout.SPECTRUM in ds or layout.MAPS in ds else "image"


def value_range(dtype: np.dtype, count_like: bool) -> tuple[float | None, float | None]:
    """The physical range of an input's values: [0 for counts, the detector's maximum for integers].

    >>> value_range(np.dtype("uint16"), True), value_range(np.dtype("float32"), False)
    ((0.0, 65535.0), (None, None))
    """
    low = 0.0 if count_like or dtype.kind == "u" else None
    high = float(np.iinfo(dtype).max) if dtype.kind in "iu" else None
    if dtype.kind == "i" and low is None:
        low = float(np.iinfo(dtype).min)
    return low, high


def _check_model(model: str | os.PathLike | None) -> tuple[str, str | None, int]:
    """(model as recorded, sha256 of its file, smallest image side it restores); loads it once
    to fail here rather than on the workers."""
    from emfuse.pipeline.restore import MODEL_FILES, MODEL_NAMES, load_model
    from emfuse.pipeline.restore.inference import min_image_size

    name = "default" if model is None else str(model)
    sha = None
    if name.startswith("r_em:"):
        if name not in MODEL_NAMES:
            raise RestoreInputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)} "
                                    "or give the path of a .safetensors model")
    elif name not in MODEL_FILES:  # not an own model ("default", "stem-high", ...): a file
        path = Path(name).expanduser()
        if not path.is_file():
            raise RestoreInputError(f"model {name!r} is neither a published name ({', '.join(MODEL_NAMES)}) "
                                    "nor an existing .safetensors file; check --model")
        name, sha = str(path.resolve()), sha256_file(path)
    try:
        net = load_model(None if name == "default" else name)
    except (ImportError, ValueError, OSError) as exc:
        raise RestoreInputError(f"cannot load model {name!r}: {exc}") from exc
    return name, sha, min_image_size(net)


def _device_name(device: str) -> str:
    """``device`` as recorded: ``"auto"`` (the worker's GPU when it has one, else its CPU), or a torch
    device (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    if device == "auto":
        return device
    import torch

    try:
        return str(torch.device(device))
    except RuntimeError as exc:
        raise RestoreInputError(f"unknown device {device!r} ({exc}); use auto, cpu or cuda") from exc


def _check_device(device: str) -> None:
    from emfuse.pipeline.restore.inference import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as exc:
        raise RestoreInputError(str(exc)) from exc


def plan(
    source: str | Path,
    out: str | Path,
    *,
    model: str | os.PathLike | None,
    device: str = "auto",
    tile: int = 256,
    overlap: int = 32,
    batch: int | str = BATCH_AUTO,
    precision: str = "fp32",
    channels_last: bool = False,
    register: bool = False,
    block: int | None = None,
    adapt: int = 0,
    overwrite: bool = False,
    check_device: bool = True,
    guard: bool = True,
    compile: bool = False,
) -> tuple[RestoreJob, str]:
    """Define the job and create (or reopen) its output store.

    ``adapt`` > 0 fine-tunes the model on the movie itself for that many steps before the
    frames are restored (:func:`adapt`; a movie of at least :data:`MIN_ADAPT_FRAMES` frames).
    ``check_device=False`` leaves the device check to the workers (a scheduler on a
    machine without the workers' GPU). ``guard=False`` keeps every network output as it is
    (:mod:`emfuse.pipeline.restore.guard` is not run). ``batch="auto"`` (the default) lets each
    worker take the most tiles its free GPU memory holds (:func:`worker_batch`; 8 on the CPU); a
    store already started keeps the batch it was started with. ``compile`` runs the network
    through :func:`torch.compile` with CUDA graphs on CUDA workers (a no-op, with a note, on the
    CPU). Returns the job and the output's state: ``"new"``, ``"resume"`` or ``"complete"``.
    """
    ds = open_dataset(source)
    variable = _input_variable(ds, source)
    data = ds[variable]
    n_frames = data.sizes.get("frame", 1)
    ny, nx = data.sizes["y"], data.sizes["x"]
    if 0 in (n_frames, ny, nx):
        raise RestoreInputError(f"the {variable} of {source} is empty ({n_frames} x {ny} x {nx}); "
                                "check the acquisition was saved completely.")
    if precision not in PRECISIONS:
        raise RestoreInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    try:
        check_restore_tiling(tile, overlap, batch, block)
    except ValueError as exc:
        raise RestoreInputError(str(exc)) from None
    if batch == BATCH_AUTO and not overwrite:
        batch = _stored_param(out, "batch", batch)  # a store started with a number keeps it
    device = _device_name(device)
    if check_device and device != "auto":
        _check_device(device)
    _check_adapt(adapt, variable, int(n_frames), source)
    choice = choose_model(model, ds, variable, out, overwrite=overwrite)
    name, sha, smallest = _check_model(choice.model)
    kind = image_kind(ds, variable)
    if min(ny, nx) < smallest:
        raise RestoreInputError(
            f"the {kind} of {source} is {ny} x {nx} px, smaller than the network {name} can use: it "
            f"needs at least {smallest} x {smallest} px. Restore a larger field of view (or bin the "
            "image less).")
    first = overwrite or not Path(out).exists()
    negative = _check_dose(data, source) if first else 0.0  # checked once, on the first run
    limits = value_range(data.dtype, negative <= NEGATIVE_TOLERANCE) if first else _stored_range(out)
    job = RestoreJob(str(source), str(out), name, variable, int(n_frames), device, tile, overlap, batch,
                     precision, channels_last, register, block or default_block(n_frames, ny, nx), sha,
                     limits, guard, int(adapt), bool(compile))
    with on_disk_full(out):
        state = prepare_output(out, _template(ds, data, job, negative <= NEGATIVE_TOLERANCE), job.record(), source=source, overwrite=overwrite,
                               attrs={layout.ATTR_IMAGE_KIND: kind, ATTR_VALUE_RANGE: list(limits),
                                      layout.ATTR_NORMALISATION: NORMALISATION,
                                      ATTR_MODEL_CHOICE: {**choice.record(), "model": name,
                                                          "model_sha256": sha or own_model_sha256(name)},
                                      **({ATTR_BATCH_CHOICE: BATCH_RULE} if batch == BATCH_AUTO else {})})
        if state == "new":
            _note_model_choice(out, choice, name)
        if state != "complete":
            TileRecord.create(out, JOB, (len(job.blocks), 1), payload_shape=(2,))
        if state == "new" and variable == layout.HAADF:
            add_warnings(out, *saturated_input_warnings(source))
        if state == "new" and negative > NEGATIVE_TOLERANCE:
            add_warnings(out, make_warning(
                "not-count-like",
                f"{negative:.1%} of the {kind}'s pixels are negative: the input is not counts (dark- or "
                "background-subtracted, or processed), unlike the data the network was trained on. "
                "Check the restored image against the raw one, or restore the raw detector counts.",
                stage="plan", negative_fraction=round(float(negative), 6)))
    if job.adapt_steps and state != "new":  # a rerun restores with the model adapted before
        job = stored_adaptation(job)[1]
    return job, state


def saturated_input_warnings(source: str | Path) -> list[dict[str, Any]]:
    """An ``input-saturated`` warning when the input store's image is saturated (ingest found it:
    its ``haadf-saturated`` warning), worded for a restoration: the network saw clipped values there.

    Examples
    --------
    >>> [w["code"] for w in saturated_input_warnings("test_TEM.input.zarr")]  # doctest: +SKIP
    ['input-saturated']
    """
    return [make_warning(
        "input-saturated",
        f"{100 * w['fraction']:.1f} % of the image's pixels are saturated (values "
        f"{', '.join(f'{v:g}' for v in w.get('values', []))}): the detector did not record what lies "
        "beyond, and the network restored the clipped values as they are; check the detector gain/offset",
        stage="plan", fraction=w["fraction"], values=w.get("values", []), counts=w.get("counts", []))
        for w in read_warnings(source) if w["code"] == SATURATED]


def choose_model(model: str | os.PathLike | None, ds: xr.Dataset, variable: str, out: str | Path, *,
                 overwrite: bool = False) -> ModelChoice:
    """The model ``model`` stands for (:func:`emfuse.pipeline.restore.select.resolve_model`).

    ``"auto"`` is decided from the input's metadata (the dataset's and the image's attributes,
    the pixel size of its y/x coordinates) once: a rerun on an output store begun with ``auto``
    takes the stored decision (``model_choice``), so that it resumes with the same model even
    if this version has other models.
    """
    from emfuse.pipeline.restore import select

    if str(model).strip().lower() != select.AUTO:
        return select.resolve_model(model)
    if not overwrite and Path(out).exists():
        try:
            stored = read_attrs(out).get(ATTR_MODEL_CHOICE)
        except Exception:  # not a store: prepare_output names the problem
            stored = None
        if isinstance(stored, dict) and stored.get("asked") == select.AUTO:
            return select.ModelChoice.from_record(stored)
    guess = select.infer_modality(ds.attrs, ds[variable].attrs, select.pixel_size_nm(ds.coords))
    return select.resolve_model(select.AUTO, guess)


def _note_model_choice(out: str | Path, choice: ModelChoice, name: str) -> None:
    """Log what ``auto`` chose; store a warning when the guess was not sure."""
    if choice.asked != "auto":
        return
    log.info("model %s (auto): %s", name, choice.reason)
    if not choice.confident:
        add_warnings(out, make_warning(
            "model-auto-unsure",
            f"--model auto could not tell the modality and resolution for sure and used {name} "
            f"({choice.reason}). Check the restored image; if the model does not fit the data, pass "
            "--model stem-high|stem-low|tem-high|tem-low|sem or a published network (r_em:sfr_hrtem, ...).",
            stage="plan", model=name, modality=choice.modality, resolution=choice.resolution))


def _stored_range(out: str | Path) -> tuple[float | None, float | None]:
    """The clipping range a first run recorded (a rerun neither scans the input again nor changes it)."""
    try:
        low, high = read_attrs(out).get(ATTR_VALUE_RANGE, (None, None))
    except Exception:  # not a store: prepare_output names the problem
        return None, None
    return low, high


def flat_frames(data: np.ndarray) -> np.ndarray:
    """Which frames of a (frame, y, x) stack are flat (every pixel the same value).

    >>> flat_frames(np.stack([np.zeros((2, 2)), np.eye(2)])).tolist()
    [True, False]
    """
    return data.max(axis=(-2, -1)) == data.min(axis=(-2, -1))


def _check_dose(data: xr.DataArray, source: str | Path) -> float:
    """Zero dose: frames without signal (one pass over the input, chunk by chunk); returns the
    fraction of negative pixels (counts are never negative).

    A flat frame (all pixels equal; all zero when the beam was blanked or the camera not read
    out) holds nothing to restore. When every frame is flat the job is refused; when only
    some are (blanked frames at the start of a movie, say), a warning names them and they are
    copied to the output unchanged (:func:`restore_block_in_store`).
    """
    stack = data if "frame" in data.dims else data.expand_dims("frame")
    lo, hi, negative = dask.compute(stack.min(("y", "x"), skipna=False).data,
                                    stack.max(("y", "x"), skipna=False).data, (stack < 0).mean().data)
    lo, hi = np.atleast_1d(lo), np.atleast_1d(hi)
    flat = np.flatnonzero(lo == hi)
    what = f"the {data.name} of {source}"
    if flat.size == lo.size:
        values = sorted({float(v) for v in lo[flat]})
        level = "0" if values == [0.0] else "constant (" + ", ".join(f"{v:g}" for v in values[:3]) + ")"
        raise RestoreInputError(
            f"{what} has no signal: every one of its {lo.size} frame(s) is {level} (zero dose: the beam "
            "was blanked, the shutter closed or the camera not read out). Check the acquisition; "
            "there is nothing to restore."
        )
    if flat.size:
        listing = ", ".join(map(str, flat[:10].tolist())) + (", ..." if flat.size > 10 else "")
        log.warning("%s: %d of %d frames are flat, with no signal (zero dose: frames %s); they are "
                    "copied to the output unchanged, not restored.", what, flat.size, lo.size, listing)
    return float(negative)


def _template(ds: xr.Dataset, data: xr.DataArray, job: RestoreJob, count_like: bool = True) -> xr.Dataset:
    ny, nx = data.sizes["y"], data.sizes["x"]
    yx = (min(ny, CHUNK_YX), min(nx, CHUNK_YX))
    frames = ds["frame"] if "frame" in data.dims else xr.DataArray([0], dims="frame")
    variables = {layout.RESTORED: (layout.DIMS[layout.RESTORED],
                                   empty_like((job.n_frames, ny, nx), (job.block, *yx)))}
    coords: dict[str, Any] = {"frame": frames, "y": ds["y"], "x": ds["x"]}
    if job.register:
        variables[layout.DRIFT] = (layout.DIMS[layout.DRIFT],
                                   empty_like((job.n_frames, 2), (job.n_frames, 2), np.float64))
        variables[layout.AVERAGE] = (layout.DIMS[layout.AVERAGE], empty_like((ny, nx), yx))
        coords["axis"] = ["y", "x"]
    variables.update(_guard_template(job))
    template = xr.Dataset(variables, coords=coords)
    units = data.attrs.get("units", "input units")
    if units == "counts" and not count_like:  # integers, but offset-subtracted: not counts (not-count-like)
        units = layout.ARBITRARY_UNITS
    kind = image_kind(ds, job.variable)
    template[layout.RESTORED].attrs.update(units=units, image_kind=kind, description=f"{kind} restored by {job.model}")
    if job.register:
        template[layout.DRIFT].attrs.update(units="px", description="drift (dy, dx) of each restored "
                                            "frame against the first (the specimen moved by +drift)")
        template[layout.AVERAGE].attrs.update(units=units, description="mean of the restored frames, "
                                              "each moved back by its drift (bicubic)")
    return template


def _stored_param(out: str | Path, name: str, default: Any) -> Any:
    """Parameter ``name`` of an output store already started, else ``default``."""
    if not Path(out).exists():
        return default
    try:
        return read_attrs(out).get(layout.ATTR_PARAMS, {}).get(name, default)
    except Exception:  # not a store: prepare_output names the problem
        return default


#: the store's ``batch_choice`` for ``--batch auto``: each worker applies it to its own device
BATCH_RULE = {"asked": BATCH_AUTO, "rule": "each worker, once per job: the largest batch (at most 64) with "
              "batch x tile^2 x bytes_per_pixel + 2 x weights <= 0.8 x its free GPU memory per task, "
              "bytes_per_pixel from the CGRDN's activations (emfuse.pipeline.restore.memory); 8 on the "
              "CPU and for networks without a memory model"}


# -- worker side ------------------------------------------------------------------------------


def own_model_sha256(name: str) -> str | None:
    """SHA-256 of the file of an own model name (``"default"``, ``"stem-high"``, ...), or None for
    other names (paths, ``r_em:``) and own models this version does not have."""
    from emfuse.pipeline.restore import MODEL_FILES

    path = MODEL_FILES.get(name)
    return sha256_file(path) if path is not None and path.is_file() else None


def weights_sha256(job: RestoreJob) -> str | None:
    """What identifies the job's weights in a worker's cache: the recorded sha256 of a model file,
    else that of the own model's file as the worker finds it. A package update (or a test) that
    replaces ``stem-high.safetensors`` then gives a new network, not the one a worker still holds."""
    return job.model_sha256 or own_model_sha256(job.model)


def worker_model(job: RestoreJob, device: str) -> Any:
    """The job's network on ``device``, loaded once per worker process and kept
    (:func:`emfuse.flows.jobs.runner.worker_cached`, keyed by model, sha256, device and memory format).

    The first network a worker loads gives torch the worker's share of the cores
    (:func:`emfuse.flows.jobs.runner.torch_threads_share`), so concurrent tasks do not oversubscribe them.

    Example
    -------
    >>> net = worker_model(job, "cpu")  # doctest: +SKIP
    >>> worker_model(job, "cpu") is net  # doctest: +SKIP
    True
    """
    def load() -> Any:
        import torch

        from emfuse.pipeline.restore import load_model

        share = torch_threads_share() if device == "cpu" else None
        if share:
            torch.set_num_threads(share)
        model = load_model(None if job.model == "default" else job.model, device=device)
        return model.to(memory_format=torch.channels_last) if job.channels_last else model

    return worker_cached(("restore", job.model, weights_sha256(job), device, job.channels_last), load)


def _tasks_on_this_worker() -> int:
    """Tasks this worker runs at once (its threads; 1 outside a worker): they share its GPU."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except (ImportError, ValueError):  # not in a worker
        return 1


def worker_batch(job: RestoreJob, model: Any, device: str) -> int:
    """The job's batch on this worker: the number given, or for ``"auto"`` the most tiles its free
    GPU memory (shared by the worker's tasks) holds by :func:`emfuse.pipeline.restore.memory.choose_batch`,
    :data:`~emfuse.pipeline.restore.memory.DEFAULT_BATCH` on the CPU.

    Chosen once per worker and job, then kept (:func:`~emfuse.flows.jobs.runner.worker_cached`):
    the free memory changes as blocks run, and a compiled network's CUDA graphs serve one batch
    shape only.

    Examples
    --------
    >>> worker_batch(replace(job, batch=4), model, "cpu")  # doctest: +SKIP
    4
    """
    if job.batch != BATCH_AUTO:
        return int(job.batch)

    def choose() -> int:
        from emfuse.pipeline.restore import memory

        free = None
        if device.startswith("cuda"):
            free = memory.cuda_free_bytes(device) / _tasks_on_this_worker()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        choice = memory.choose_batch(free, job.tile, getattr(model, "cfg", None), weight_bytes=weights,
                                     itemsize=2 if job.precision in ("bf16", "fp16") else 4)
        log.info("batch %d on %s (%s)", choice.batch, device, choice.rule)
        return choice.batch

    return worker_cached(("restore-batch", job.out, job.model, job.tile, job.precision, device), choose)


def worker_network(job: RestoreJob, model: Any, device: str) -> Any:
    """With ``compile``: the network :func:`~emfuse.pipeline.restore.inference.restore` runs per batch,
    compiled once per worker (:func:`~emfuse.pipeline.restore.inference.compile_network`); else None."""
    if not job.compile:
        return None
    from emfuse.pipeline.restore.inference import compile_network, tile_network

    key = ("restore-compiled", job.model, weights_sha256(job), device, job.channels_last)
    return worker_cached(key, lambda: compile_network(tile_network(model, "image"), device))


def read_frames(job: RestoreJob, frames: slice) -> np.ndarray:
    """Frames ``frames`` of the input, (frame, y, x) float32 (an image is frame 0)."""
    array = zarr.open_array(str(Path(job.source) / job.variable), mode="r", zarr_format=3)
    data = array[frames] if job.variable == layout.MOVIE else array[...][None][frames]
    return np.asarray(data, dtype=np.float32)


def restore_frames(job: RestoreJob, frames: slice, data: np.ndarray, device: str) -> UnitOutput:
    """Restore one block of frames on ``device``: the network, the flat frames kept, the guard, the
    clipping to the input's range; what to write and the clipped counts (the payload)."""
    from emfuse.pipeline.restore.inference import restore

    bad = np.flatnonzero(~np.isfinite(data).all(axis=(1, 2)))
    if bad.size:
        raise RestoreInputError(
            f"{job.source}: frame(s) {(bad + frames.start).tolist()[:10]} of the {job.variable} contain "
            "NaN or Inf values; mask or interpolate the bad pixels first."
        )
    model = worker_model(job, device)
    restored = restore(data, model, tile=job.tile, overlap=job.overlap, batch=worker_batch(job, model, device),
                       device=device, dtype=PRECISIONS[job.precision], channels_last=job.channels_last,
                       network=worker_network(job, model, device))
    flat = flat_frames(data)  # zero dose (see _check_dose): nothing to restore, kept as they are
    restored[flat] = data[flat]
    checked = guard_frames(data, restored, flat) if job.guard else _unchecked(len(data))
    clipped = clip_to_range(restored, job.value_range, CLIP_TOLERANCE * _span(data))
    writes = {layout.RESTORED: ((frames, slice(None), slice(None)), restored)}
    writes.update({name: ((frames,), values) for name, values in checked.items()})
    return UnitOutput(writes, payload=np.array(clipped, dtype=np.float64))


#: Restored values further outside the input's range than this fraction of the input's own span
#: (max - min) count as an overshoot to flag; all values outside are clipped. A network's
#: noise-level undershoot near zero (synthetic low-dose movies: 11-12 % of the pixels, at most
#: 2 % of the span) is clipped but not flagged; test_TEM.bcf's restored HAADF, 14 % over the
#: detector maximum, is flagged.
CLIP_TOLERANCE = 0.02
#: ... and only when more than this fraction of the pixels overshoots (a few isolated pixels just
#: past the tolerance, on a low-dose movie, are not worth a "check")
CLIP_FLAG_FRACTION = 0.001


def _span(data: np.ndarray) -> float:
    finite = data[np.isfinite(data)]
    return float(finite.max() - finite.min()) if finite.size else 0.0


def clip_to_range(restored: np.ndarray, limits: tuple[float | None, float | None],
                  tolerance: float = 0.0) -> tuple[int, int]:
    """Clip ``restored`` in place to the input's physical range; returns the pixels that were more
    than ``tolerance`` (in the image's units) below and above it: the overshoots worth a warning.

    A network can overshoot: values below 0 for counts, or above the detector's maximum for
    an integer input, are not physical.

    >>> a = np.array([-1.0, -0.1, 0.5, 300.0]); clip_to_range(a, (0.0, 255.0), 0.5), a.tolist()
    ((1, 1), [0.0, 0.0, 0.5, 255.0])
    """
    low, high = limits
    below = int(np.count_nonzero(restored < low - tolerance)) if low is not None else 0
    above = int(np.count_nonzero(restored > high + tolerance)) if high is not None else 0
    if low is not None or high is not None:
        np.clip(restored, low, high, out=restored)
    return below, above


# -- the residual guard (emfuse.pipeline.restore.guard) ------------------------------------------------

GUARD_DECISION = layout.GUARD_DECISION  # (frame,) int8: the codes of emfuse.pipeline.restore.guard.DECISIONS
#: the guard's figures stored per frame: variable -> GuardResult field
GUARD_FIGURES = {"guard_lattice_excess": "lattice_excess", "guard_lattice_kept": "lattice_kept",
                 "guard_residual_corr": "residual_corr"}
GUARD_LISTED = 10  # frames named in the restore-guard warning


def _guard_template(job: RestoreJob) -> dict[str, Any]:
    """The per-frame guard variables of the output (chunked along frame like ``restored``)."""
    from emfuse.pipeline.restore.guard import DECISIONS

    codes = ", ".join(f"{code}: {name}" for name, code in DECISIONS.items())
    variables: dict[str, Any] = {GUARD_DECISION: (("frame",), empty_like((job.n_frames,), (job.block,), np.int8), {
        "description": "what was kept of each frame after checking the residual (raw - network output) "
                       "for structure the input shows (emfuse.pipeline.restore.guard)", "codes": codes})}
    described = {"lattice_excess": "power of the input's lattice peaks above the noise floor, over the floor's",
                 "lattice_kept": "fraction of the input's lattice power in the network's output",
                 "residual_corr": "correlation of the residual with the network's output (9 px local means removed)"}
    for name, field in GUARD_FIGURES.items():
        variables[name] = (("frame",), empty_like((job.n_frames,), (job.block,)), {"description": described[field]})
    return variables


def guard_frames(data: np.ndarray, restored: np.ndarray, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Check each frame's residual; replace ``restored`` in place where the network removed signal.

    Returns the per-frame variables of the output (:data:`GUARD_DECISION`, :data:`GUARD_FIGURES`).
    Flat frames (zero dose, copied unchanged) are not checked.
    """
    from emfuse.pipeline.restore.guard import DECISIONS, guard

    checked = _unchecked(len(data))
    for k in range(len(data)):
        if flat[k]:
            checked[GUARD_DECISION][k] = DECISIONS["flat"]
            continue
        image, result = guard(data[k], restored[k])
        restored[k] = image
        checked[GUARD_DECISION][k] = DECISIONS[result.decision]
        for name, field in GUARD_FIGURES.items():
            checked[name][k] = getattr(result, field)
    return checked


def _unchecked(n: int) -> dict[str, np.ndarray]:
    """The guard's variables for ``n`` frames not checked (``guard=False``): code 0, no figures."""
    return {GUARD_DECISION: np.zeros(n, np.int8), **{name: np.full(n, np.nan, np.float32) for name in GUARD_FIGURES}}


def guard_counts(out: str | Path) -> dict[str, int]:
    """Frames of each guard decision in an output store ({} for a store without the guard's variables).

    >>> guard_counts("/nonexistent.zarr")
    {}
    """
    from emfuse.pipeline.restore.guard import DECISIONS

    try:
        codes = zarr.open_array(str(Path(out) / GUARD_DECISION), mode="r", zarr_format=3)[...]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.ArrayNotFoundError):
        return {}
    return {name: int(np.count_nonzero(codes == code)) for name, code in DECISIONS.items()
            if np.any(codes == code)}


def _warn_guard(job: RestoreJob) -> None:
    """One ``restore-guard`` warning naming the frames whose network output was not kept."""
    from emfuse.pipeline.restore.guard import DECISIONS

    if not job.guard:
        return
    codes = zarr.open_array(str(Path(job.out) / GUARD_DECISION), mode="r", zarr_format=3)[...]
    reinjected = np.flatnonzero(codes == DECISIONS["reinjected"])
    kept_raw = np.flatnonzero(codes == DECISIONS["input"])
    changed = np.union1d(reinjected, kept_raw)
    if not changed.size:
        return
    listing = ", ".join(map(str, changed[:GUARD_LISTED].tolist())) + (", ..." if changed.size > GUARD_LISTED else "")
    done = ([f"{reinjected.size} got the structure put back (residual reinjected)"] if reinjected.size else []) + \
           ([f"{kept_raw.size} kept raw (noise-free, or still harmed after the reinjection)"] if kept_raw.size else [])
    add_warnings(job.out, make_warning(
        "restore-guard",
        f"the network removed structure the input shows (a lattice or particles) in {changed.size} of "
        f"{job.n_frames} frame(s) (frames {listing}): {' and '.join(done)}. Check these frames; try a model "
        "for this modality (--model) or keep the raw frames.",
        stage="finalise", frames=changed[:GUARD_LISTED].tolist(), count=int(changed.size),
        reinjected=int(reinjected.size), input=int(kept_raw.size)))


def drift_of_block(job: RestoreJob, index: int, reference: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Worker task: drift of each restored frame of a block, and the sum of the frames moved back."""
    frames = job.blocks[index]
    restored = zarr.open_array(str(Path(job.out) / layout.RESTORED), mode="r", zarr_format=3)[frames]
    shifts = np.array([estimate_shift(reference, frame) for frame in restored])
    total = np.zeros(reference.shape, dtype=np.float64)
    for frame, shift in zip(restored, shifts):
        total += shift_image(frame, tuple(-shift))
    return index, shifts, total


# -- driver side ------------------------------------------------------------------------------


def register(job: RestoreJob, client: Client, *, progress: bool = True) -> None:
    """Drift of every restored frame against the first, and the drift-corrected ``average``."""
    record = TileRecord.open(job.out, JOB)
    if not job.register or record.stage_done("register"):
        return
    restored = zarr.open_array(str(Path(job.out) / layout.RESTORED), mode="r", zarr_format=3)
    reference = client.scatter(np.asarray(restored[0]), broadcast=True)
    indices = list(range(len(job.blocks)))
    futures = client.map(drift_of_block, [job] * len(indices), indices, reference=reference, pure=False)
    sizes = {f.key: job.blocks[b].stop - job.blocks[b].start for f, b in zip(futures, indices)}
    drift = np.zeros((job.n_frames, 2))
    total = np.zeros(restored.shape[1:])
    for index, shifts, block_total in gather(client, futures, desc="registering", unit="frame",
                                                 progress=progress, sizes=sizes):
        drift[job.blocks[index]] = shifts
        total += block_total
    write_region(job.out, layout.DRIFT, (slice(None), slice(None)), drift)
    write_region(job.out, layout.AVERAGE, (slice(None), slice(None)), total / job.n_frames)
    record.mark_stage("register")


def _check_adapt(adapt: Any, variable: str, n_frames: int, source: str | Path) -> None:
    """``adapt`` is a number of steps, and a positive one needs a movie of enough frames."""
    if isinstance(adapt, bool) or not isinstance(adapt, (int, np.integer)) or adapt < 0:
        raise RestoreInputError(f"--adapt takes a number of fine-tuning steps (0: off), got {adapt!r}")
    if adapt and (variable != layout.MOVIE or n_frames < MIN_ADAPT_FRAMES):
        what = "an image" if variable != layout.MOVIE else f"a movie of {n_frames} frame(s)"
        raise RestoreInputError(
            f"--adapt needs a movie of at least {MIN_ADAPT_FRAMES} frames of the same region (it learns "
            f"from pairs of frames and checks on {MIN_ADAPT_FRAMES - 2} held-out ones); {source} holds {what}. "
            "Restore it without --adapt.")


def adapt_in_store(job: RestoreJob) -> dict[str, Any]:
    """Worker task: fine-tune the job's model on the movie (Noise2Noise between its frames).

    Reads the first :data:`ADAPT_MAX_FRAMES` frames (those with signal and finite values),
    runs :func:`emfuse.pipeline.restore.adapt.adapt_model` on the job's device and, when the
    held-out-frame check says the adapted model restores better, writes it to
    :func:`adapted_model_path` (beside the store: Zarr warns about foreign files inside it,
    and a model is not part of the dataset). Returns the record stored as ``adaptation``
    (frame numbers are the movie's).
    """
    from emfuse.pipeline.restore import save_model
    from emfuse.pipeline.restore.adapt import adapt_model

    data = read_frames(job, slice(0, min(job.n_frames, ADAPT_MAX_FRAMES)))
    usable = np.flatnonzero(np.isfinite(data).all(axis=(1, 2)) & ~flat_frames(data))
    record: dict[str, Any] = {"steps": job.adapt_steps, "base_model": job.model}
    if usable.size < MIN_ADAPT_FRAMES:
        return {**record, "used": False, "frames_used": usable.tolist(), "holdout_frames": [],
                "score_before": None, "score_after": None,
                "reason": f"only {usable.size} of the first {len(data)} frames have signal (need {MIN_ADAPT_FRAMES})"}
    device = worker_device(job.device, "torch")
    model = worker_model(job, device)
    result = adapt_model(model, data[usable], steps=job.adapt_steps, device=device,
                         restore_kwargs=dict(tile=job.tile, overlap=job.overlap,
                                             batch=worker_batch(job, model, device)))
    record.update(result.record())
    record.update(frames_used=usable.tolist(), train_frames=usable[result.frames_train].tolist(),
                  holdout_frames=usable[result.frames_holdout].tolist())
    if result.used:
        path = save_model(result.adapted, adapted_model_path(job.out), metadata={
            "adaptation": json.dumps({k: v for k, v in record.items() if k != "drift_px"})})
        record.update(model_path=str(path.resolve()), model_sha256=sha256_file(path))
    return record


def adapted_model_path(out: str | Path) -> Path:
    """Where ``--adapt`` saves the adapted model: beside the store, ``out.zarr`` -> ``out.adapted.safetensors``.

    >>> adapted_model_path("results/night.zarr").as_posix()
    'results/night.adapted.safetensors'
    """
    out = Path(out)
    return out.with_name(out.name.removesuffix(".zarr") + ADAPTED_MODEL_SUFFIX)


def stored_adaptation(job: RestoreJob) -> tuple[bool, RestoreJob]:
    """(whether the adaptation has run, the job restoring with its outcome) from the output store.

    When the adapted model was used, the job's model becomes its file (and sha256), so that
    every worker loads it (:func:`worker_model` is keyed by both).
    """
    try:
        record = read_attrs(job.out).get(ATTR_ADAPTATION)
    except Exception:  # not a store yet
        return False, job
    if not isinstance(record, dict):
        return False, job
    if not record.get("used"):
        return True, job
    path = Path(record["model_path"])
    if not path.is_file() or sha256_file(path) != record["model_sha256"]:
        raise RestoreInputError(f"{job.out}: the adapted model {path} is missing or was changed since it was "
                                "made; rerun with --overwrite to adapt and restore again.")
    return True, replace(job, model=str(path), model_sha256=record["model_sha256"])


def adapt(job: RestoreJob, client: Client) -> RestoreJob:
    """With ``adapt_steps``: fine-tune the model on the movie once (one worker), before the blocks.

    The outcome goes to the attribute ``adaptation``; an adaptation that did not pass the
    held-out-frame check stores the warning ``adapt-not-improved`` and the original model is
    used. A rerun takes the stored outcome (and the saved model) instead of adapting again.
    """
    if not job.adapt_steps:
        return job
    done, adapted = stored_adaptation(job)
    if done:
        return adapted
    record = client.submit(adapt_in_store, job, pure=False).result()
    update_attrs(job.out, **{ATTR_ADAPTATION: jsonable(record)})
    if record["used"]:
        log.info("adapted %s on the movie: %s", job.model, record["reason"])
    else:
        add_warnings(job.out, make_warning(
            "adapt-not-improved",
            f"fine-tuning {job.model} on this movie ({job.adapt_steps} steps) did not improve the held-out-frame "
            f"check ({record['reason']}); the frames were restored with the original model. More steps "
            "or more frames may help; otherwise restore without --adapt.",
            stage="adapt", score_before=record.get("score_before"), score_after=record.get("score_after")))
    return stored_adaptation(job)[1]


def _finalise(job: RestoreJob, record: TileRecord) -> None:
    """The warnings summed over blocks (then the runner marks the store complete)."""
    if job.register and not record.stage_done("register"):
        raise RuntimeError(f"{job.out}: the drift registration has not run; rerun to complete it.")
    _warn_clipped(job, record)
    _warn_guard(job)


def _warn_clipped(job: RestoreJob, record: TileRecord) -> None:
    """One warning with the fraction of restored pixels clipped to the input's range (summed over blocks)."""
    try:
        below, above = np.nansum(record.payloads().reshape(-1, 2), axis=0)
    except KeyError:  # a store begun before clipping was counted
        return
    total = job.n_frames * int(np.prod(zarr.open_array(str(Path(job.out) / layout.RESTORED), mode="r",
                                                       zarr_format=3).shape[1:]))
    if (below + above) <= CLIP_FLAG_FRACTION * total:
        return
    low, high = job.value_range
    parts = ([f"{below / total:.2%} below {low:g}"] if below else []) + \
            ([f"{above / total:.2%} above {high:g}"] if above else [])
    span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
    add_warnings(job.out, make_warning(
        "restored-clipped",
        f"restored values outside the input's physical range {span} were clipped to it; beyond it by more "
        f"than {CLIP_TOLERANCE:.0%} of the input's span: {' and '.join(parts)} (fractions of the pixels). "
        "The network overshoots there; "
        "check those regions, or use a network trained for this kind of data.",
        stage="finalise", clipped_fraction=round(float((below + above) / total), 6),
        below=int(below), above=int(above)))


def summary(job: RestoreJob) -> dict[str, Any]:
    """Shape, model, drift and, for a synthetic movie, the PSNR of raw and restored frames."""
    out = open_dataset(job.out)
    info: dict[str, Any] = {"store": job.out, "frames": job.n_frames, "shape": list(out[layout.RESTORED].shape),
                            "model": job.model, "device": job.device, "precision": job.precision,
                            "batch": job.batch, "compile": job.compile,
                            "devices": list(out.attrs.get(layout.ATTR_DEVICES, []))}
    if layout.DRIFT in out:
        drift = out[layout.DRIFT].values
        info["drift_max_px"] = float(np.abs(drift).max())
    source = open_dataset(job.source)
    if layout.TRUE_MOVIE in source and job.variable == layout.MOVIE:
        n = min(job.n_frames, SUMMARY_FRAMES)
        truth = source[layout.TRUE_MOVIE].isel(frame=slice(0, n)).values
        raw = source[layout.MOVIE].isel(frame=slice(0, n)).values
        restored = out[layout.RESTORED].isel(frame=slice(0, n)).values
        info["psnr_raw_db"] = float(np.mean([psnr(r, t) for r, t in zip(raw, truth)]))
        info["psnr_restored_db"] = float(np.mean([psnr(r, t) for r, t in zip(restored, truth)]))
        if layout.DRIFT in out and layout.TRUE_DRIFT in source:
            info["drift_error_px"] = float(np.abs(out[layout.DRIFT].values - source[layout.TRUE_DRIFT].values).max())
    if ATTR_MODEL_CHOICE in out.attrs:
        info[ATTR_MODEL_CHOICE] = out.attrs[ATTR_MODEL_CHOICE]
    info["guard"] = guard_counts(job.out) if job.guard else "off"
    if ATTR_ADAPTATION in out.attrs:
        info[ATTR_ADAPTATION] = out.attrs[ATTR_ADAPTATION]
    info["warnings"] = read_warnings(job.out)
    return info


class RestoreSpec(TiledJob):
    """The restoration job for the runner (:mod:`emfuse.flows.jobs.runner`): blocks of frames, each
    restored by the network on the worker's device (its GPU when it has one and ``device`` allows)."""

    def prepare(self, job: RestoreJob, client: Client, *, progress: bool) -> tuple[RestoreJob, None]:
        if job.adapt_steps:
            with timed(job.out, "adapt"):
                job = adapt(job, client)
        return job, None

    def units(self, job: RestoreJob) -> list[Unit]:
        return [Unit((index, 0), frames, frames.stop - frames.start) for index, frames in enumerate(job.blocks)]

    def read(self, job: RestoreJob, unit: Unit) -> dict[str, np.ndarray]:
        return {"frames": read_frames(job, unit.region)}

    def process(self, job: RestoreJob, unit: Unit, window: dict[str, Any], context: None, device: str) -> UnitOutput:
        return restore_frames(job, unit.region, window["frames"], device)

    def merge(self, job: RestoreJob, client: Client, *, progress: bool) -> None:
        with timed(job.out, "register"):
            register(job, client, progress=progress)

    def finalise(self, job: RestoreJob, record: TileRecord) -> None:
        _finalise(job, record)

    def summary(self, job: RestoreJob) -> dict[str, Any]:
        return summary(job)


SPEC = RestoreSpec(name=JOB, desc="restoring", unit="frame", stage="restore", array_kind="torch")

__all__ = [
    "JOB", "SPEC", "RestoreInputError", "RestoreJob", "adapt", "adapt_in_store", "adapted_model_path", "choose_model",
    "stored_adaptation", "clip_to_range", "default_block", "image_kind", "value_range", "drift_of_block", "plan",
    "read_frames", "register", "restore_frames", "summary", "guard_counts", "guard_frames", "worker_model",
]
