"""The multi-mode TEM fusion job (AVAE) as plain functions: modes store in, output store out, resumable.

Stages (each skipped on a rerun once recorded as done in the output store):

1. ``plan``: open the input, check it has ``modes`` (mode, y, x) with bf, df and hrtem, create
   the output store from a template (``modes``, ``tem_fused``, ``attention`` and, for synthetic
   data, ``true_structure``; chunks equal the tile);
2. ``write_inputs``: the recorded modes (and any flat reference and truth) are copied into the
   output store;
3. ``fit_preprocessing``: the flat field (on a block average of the whole dataset), the
   histograms and the drift of BF and DF against the HRTEM (on the central crop) are fitted
   once (:class:`emfuse.pipeline.avae.preprocess.Preprocessing`) and stored in the attribute
   ``preprocessing``. With a ``flat_reference`` (mode, y, x) in the input (each mode's beam
   recorded without specimen) every mode is divided by it first and no smooth surface is fitted,
   so BF keeps the specimen's own slow contrast (its thickness). The default model
   (:data:`emfuse.pipeline.avae.model.RESIDUAL_WIENER_WEIGHTS`) was trained on both kinds. For a model that is a
   residual on a restored HRTEM (``AVAEConfig.base``) the statistics of its base are fitted here
   too, on the same central crop (:class:`emfuse.pipeline.avae.base.BaseFit`: the restoration
   network's standardisation and the restored image's), and stored in the attribute ``base``;
4. the tiles (:data:`SPEC`, run by :mod:`emfuse.flows.jobs.runner`): one Dask task per unfinished tile reads its window (core + halo) of the
   recorded modes, preprocesses it with the stored parameters, runs the AVAE (loaded once per
   worker process) and writes the core of ``tem_fused`` and ``attention``, then its ``done`` flag.
   A residual model's base is made on the same window: its flat-fielded HRTEM restored by the
   model's ``base_model`` (by :func:`emfuse.pipeline.restore.inference.restore`, in one piece up to
   512 px, with the dataset's fitted statistics, so a window is restored as inside the whole image
   up to the restoration's reach beyond the halo) and standardised;
5. ``finalise``: ``complete = true``.

:mod:`emfuse.flows.jobs.flows` wraps these stages as Prefect tasks; tests and notebooks call
:func:`emfuse.flows.jobs.run_job` (``"tem-fuse"``) without Prefect.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr
import zarr

from emfuse.errors import EmfuseError
from emfuse.pipeline import tiles
from emfuse.pipeline.avae.base import WIENER, BaseFit, flat_hrtem, load_base_network
from emfuse.pipeline.avae.baselines import WIENER_MIN_PX
from emfuse.pipeline.avae.fuse import fuse_tile
from emfuse.pipeline.avae.model import AVAE, RESIDUAL_WIENER_WEIGHTS, load_avae, model_info
from emfuse.pipeline.avae.modes import MODES
from emfuse.pipeline.avae.preprocess import Preprocessing
from emfuse.pipeline.restore.select import pixel_size_nm
from emfuse.stores import layout
from emfuse.stores.outputs import empty_like, prepare_output, write_variable
from emfuse.stores.progress import TileRecord
from emfuse.stores.warn import add_warnings, make_warning, read_warnings
from emfuse.stores.zarrio import (
    open_dataset,
    read_attrs,
    sha256_file,
    timed,
    update_attrs,
)

from .runner import TiledJob, Unit, UnitOutput, check_device_option, worker_cached

if TYPE_CHECKING:  # distributed loads in a second: not for a command line that only checks its arguments
    from distributed import Client

log = logging.getLogger(__name__)
JOB = "tem-fuse"
ATTR_PREPROCESSING = "preprocessing"
ATTR_BASE = "base"  # the BaseFit of a residual model
FIT_CROP = 512  # px: the central crop on which histograms and drift are fitted
FLAT_PX = 256  # px: the block average of the whole dataset on which the flat field is fitted


MIN_MODES_PX = WIENER_MIN_PX  # the smallest side tem-fuse takes: its Wiener base's minimum


class TemFuseInputError(EmfuseError, ValueError):
    """The input cannot be fused: no modes, or not the three modes."""


@dataclass(frozen=True)
class TemFuseJob:
    """Everything that defines one run (stored as the output's ``params``)."""

    source: str
    out: str
    model: str
    model_sha256: str
    tile: int = 256
    halo: int = 32
    torch_threads: int = 1
    flat_reference: bool = False  # the input has one: modes are divided by it
    device: str = "auto"  # where tiles run: "auto" (the worker's GPU when it has one), "cpu", "cuda"

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "model_sha256": self.model_sha256, "tile": self.tile, "halo": self.halo,
                "flat_reference": self.flat_reference}

    @property
    def grid(self) -> list[tiles.Tile]:
        # the image's shape from the fused image's metadata, not by opening the store with xarray
        shape = zarr.open_array(self.out, path=layout.TEM_FUSED, mode="r", zarr_format=3).shape
        return tiles.tile_grid(shape, self.tile, self.halo)


def check_modes(ds: xr.Dataset, source: str | Path) -> xr.DataArray:
    """The ``modes`` of a dataset in the order bf, df, hrtem, or a named error."""
    if layout.MODES not in ds:
        raise TemFuseInputError(
            f"{source} has no '{layout.MODES}' (mode, y, x); tem-fuse needs BF, DF and HRTEM images "
            "of the same region: write the store from your files with `emfuse ingest-modes --bf FILE --df FILE "
            "--hrtem FILE --out STORE`, or a simulated one with `emfuse synth tem-modes`.")
    have = [str(m) for m in ds[layout.MODES]["mode"].values]
    missing = [m for m in MODES if m not in have]
    if missing:
        raise TemFuseInputError(f"{source}: modes {have} lack {missing}; tem-fuse needs {list(MODES)}.")
    return _in_mode_order(ds[layout.MODES])


def _in_mode_order(a: xr.DataArray) -> xr.DataArray:
    return a.sel(mode=list(MODES)).transpose("mode", "y", "x")


def recorded_modes(ds: xr.Dataset, flat_reference: bool) -> xr.DataArray:
    """The (lazy) modes of a store, divided by its flat reference when the job uses one."""
    modes = _in_mode_order(ds[layout.MODES])
    return modes / _in_mode_order(ds[layout.FLAT_REFERENCE]) if flat_reference else modes


def check_flat(ds: xr.Dataset, source: str | Path) -> xr.DataArray | None:
    """The ``flat_reference`` of a dataset (bf, df, hrtem order), None without one, or a named error."""
    if layout.FLAT_REFERENCE not in ds:
        return None
    flat = ds[layout.FLAT_REFERENCE]
    have = [str(m) for m in flat["mode"].values] if "mode" in flat.dims else []
    if flat.ndim != 3 or set(flat.dims) != {"mode", "y", "x"} or any(m not in have for m in MODES):
        raise TemFuseInputError(f"{source}: '{layout.FLAT_REFERENCE}' must be (mode, y, x) with {list(MODES)}, "
                                f"got dims {flat.dims} and modes {have}; write one reference image per mode.")
    flat = _in_mode_order(flat)  # shares the modes' y and x
    low = float(dask.compute(flat.min(skipna=False).data)[0])
    if not low > 0:  # NaN fails this too
        raise TemFuseInputError(f"{source}: '{layout.FLAT_REFERENCE}' must be finite and > 0 everywhere "
                                f"(its smallest value is {low:g}); replace dead pixels, or drop the reference "
                                "to have the illumination fitted instead.")
    return flat


def _check_signal(modes: xr.DataArray, source: str | Path) -> None:
    """NaN/Inf, and zero dose: a mode whose image is flat (all zero when its detector was not
    inserted or read out) carries nothing to fuse, and the AVAE needs all three."""
    lo, hi = (np.asarray(v) for v in dask.compute(modes.min(("y", "x"), skipna=False).data,
                                                   modes.max(("y", "x"), skipna=False).data))
    for mode, a, b in zip(MODES, lo, hi):
        if not (np.isfinite(a) and np.isfinite(b)):
            raise TemFuseInputError(f"{source}: the {mode} image contains NaN or Inf values; mask or "
                                    "interpolate the bad pixels first.")
        if a == b:
            raise TemFuseInputError(
                f"{source}: the {mode} image is {'0' if a == 0 else f'constant ({a:g})'} everywhere: "
                "no signal (zero dose: the beam was blanked or the detector not inserted or read out). "
                f"tem-fuse needs {', '.join(MODES)} images with signal; acquire the {mode} image again.")


def plan(source: str | Path, out: str | Path, *, model: str | Path | None = None, tile: int = 256,
         halo: int = 32, torch_threads: int = 1, device: str = "auto",
         overwrite: bool = False) -> tuple[TemFuseJob, str]:
    """Define the job and create (or reopen) its output store; returns the job and ``new``/``resume``/``complete``.

    ``device``: where the tiles run, ``"auto"`` (the worker's GPU when it has one), ``"cpu"`` or
    ``"cuda"``; the store's ``devices`` attribute says where they ran.
    """
    check_device_option(device)
    ds = open_dataset(source)
    modes = check_modes(ds, source)
    if min(modes.sizes["y"], modes.sizes["x"]) < MIN_MODES_PX:
        raise TemFuseInputError(
            f"the modes of {source} are {modes.sizes['y']} x {modes.sizes['x']} px, smaller than tem-fuse can use: "
            f"it needs at least {MIN_MODES_PX} x {MIN_MODES_PX} px (the Wiener filter of the HRTEM measures its "
            "noise from the image's spectrum). Record a larger field of view (or bin the images less).")
    _check_signal(modes, source)
    flat = check_flat(ds, source)
    if tile < 16 or tile % 2:
        raise TemFuseInputError(f"--tile must be even and at least 16, got {tile}")
    weights = Path(model) if model is not None else RESIDUAL_WIENER_WEIGHTS
    cfg = load_avae(weights).cfg  # fail here, naming the file, rather than in every worker
    if cfg.has_base:
        load_base_network(cfg.base_model)  # and its restoration network (r_em needs emfuse[r_em])
    job = TemFuseJob(str(source), str(out), str(weights.resolve()), sha256_file(weights), tile, halo, torch_threads,
                     flat is not None, device)
    ny, nx = modes.sizes["y"], modes.sizes["x"]
    t = tile
    variables = {
        layout.MODES: (layout.DIMS[layout.MODES], empty_like((len(MODES), ny, nx), (len(MODES), t, t))),
        layout.TEM_FUSED: (layout.DIMS[layout.TEM_FUSED], empty_like((ny, nx), (t, t))),
        layout.ATTENTION: (layout.DIMS[layout.ATTENTION], empty_like((len(MODES), ny, nx), (len(MODES), t, t))),
    }
    if layout.TRUE_STRUCTURE in ds:
        variables[layout.TRUE_STRUCTURE] = (layout.DIMS[layout.TRUE_STRUCTURE], empty_like((ny, nx), (t, t)))
    if flat is not None:
        variables[layout.FLAT_REFERENCE] = (layout.DIMS[layout.FLAT_REFERENCE],
                                            empty_like((len(MODES), ny, nx), (len(MODES), t, t)))
    template = xr.Dataset(variables, coords={"mode": list(MODES), "y": ds["y"], "x": ds["x"]})
    template[layout.TEM_FUSED].attrs.update(
        units="standardised", description="AVAE fusion of BF, DF and HRTEM: the projected structure, "
        "zero mean and unit standard deviation (affine-calibrate to compare with a truth)"
        + ("; a residual on the HRTEM " + ("Wiener-filtered" if cfg.base_model == WIENER else "restored by "
           + cfg.base_model) + ", in its contrast (which may be inverted against the projected potential)"
           if cfg.has_base else ""))
    template[layout.ATTENTION].attrs.update(
        units="1", description="attention weight of each mode in the fused latent (sums to 1 over mode)")
    template[layout.MODES].attrs.update(ds[layout.MODES].attrs)
    if flat is not None:
        template[layout.FLAT_REFERENCE].attrs.update(flat.attrs)
    state = prepare_output(out, template, job.record(), source=source, overwrite=overwrite, attrs={
        layout.ATTR_NORMALISATION: {"method": "preprocessing", "description": "flat field"
                                    + (" (divided by flat_reference)" if job.flat_reference else "")
                                    + ", histogram equalisation and registration fitted once for the "
                                    "dataset: attribute 'preprocessing'"}})
    if state != "complete":
        grid = tiles.tile_grid((ny, nx), tile, halo)
        TileRecord.create(out, JOB, (grid[-1].index[0] + 1, grid[-1].index[1] + 1))
    if state == "new" and model is None:
        for warning in unlike_training(ds, model_info(weights)):
            add_warnings(out, warning)
    return job, state


#: Pixel size (nm) of the default simulator's regions (:func:`emfuse.pipeline.synth.tem_modes.simulate_region`'s
#: default), which the plain committed weights were trained on: the range for weights without ``pixel_nm``.
TRAINING_PIXEL_NM = 0.05
#: A pixel size within this factor of :data:`TRAINING_PIXEL_NM` draws no warning.
PIXEL_FACTOR = 1.5


def unlike_training(ds: xr.Dataset, info: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Warnings for modes unlike the data the weights were trained on (simulated regions): real
    data, and another pixel size. ``info`` is the weights' metadata
    (:func:`~emfuse.pipeline.avae.model.model_info`): its
    ``pixel_nm`` range (the randomised simulator's) where it has one, else
    :data:`TRAINING_PIXEL_NM` within :data:`PIXEL_FACTOR`.

    A store from ``emfuse synth tem-modes`` (it has ``true_structure``) at the training pixel
    size draws none. The fused image of a real dataset may be worse than its HRTEM (see
    ``docs/methods/avae.md``): the result is marked "check", not silently trusted.
    """
    found = []
    if layout.TRUE_STRUCTURE not in ds:
        found.append(make_warning(
            "avae-simulated-training",
            "the AVAE's weights were trained on simulated BF/DF/HRTEM regions only (crystals of the "
            "simulators), not on data from an instrument: compare tem_fused "
            "with the HRTEM (modes, mode hrtem) before relying on it, or train weights on your own "
            "simulations (emfuse train-avae).", stage="plan"))
    pixel = pixel_size_nm(ds.coords)
    low, high = (info or {}).get("pixel_nm") or (TRAINING_PIXEL_NM / PIXEL_FACTOR, TRAINING_PIXEL_NM * PIXEL_FACTOR)
    if pixel is not None and not low <= pixel <= high:
        found.append(make_warning(
            "avae-pixel-size",
            f"the modes' pixel size is {pixel:g} nm and the AVAE's weights were trained at "
            f"{low:.3g}-{high:.3g} nm: lattice fringes and columns span other numbers of pixels than "
            "in training. Bin or resample the modes into that range, or train weights at yours "
            "(emfuse synth tem-modes and emfuse train-avae).", stage="plan", pixel_nm=round(pixel, 6)))
    return found


def write_inputs(job: TemFuseJob) -> None:
    """Copy the recorded modes (and any truth) into the output store (on the active Dask client)."""
    record = TileRecord.open(job.out, JOB)
    if record.stage_done("inputs"):
        return
    ds = open_dataset(job.source)
    modes = check_modes(ds, job.source)
    write_variable(job.out, layout.MODES, modes.data)
    if job.flat_reference:  # checked by plan
        write_variable(job.out, layout.FLAT_REFERENCE, _in_mode_order(ds[layout.FLAT_REFERENCE]).data)
    if layout.TRUE_STRUCTURE in ds:
        write_variable(job.out, layout.TRUE_STRUCTURE, ds[layout.TRUE_STRUCTURE].transpose("y", "x").data)
    record.mark_stage("inputs")


def central_window(shape: tuple[int, int], size: int = FIT_CROP) -> tuple[slice, slice]:
    """The central ``size`` x ``size`` window (or the whole axis where it is shorter).

    Examples
    --------
    >>> central_window((1000, 300), 512)
    (slice(244, 756, None), slice(0, 300, None))
    """
    return tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in shape)  # type: ignore[return-value]


def fit_store_preprocessing(modes: xr.DataArray, flat_referenced: bool = False) -> Preprocessing:
    """Fit :class:`Preprocessing` on a (lazy) ``modes`` array of any size.

    Flat field on a block average of the whole image (at most :data:`FLAT_PX` a side, computed
    chunk by chunk), histograms and drift on the central :data:`FIT_CROP` window. Modes already
    divided by their flat reference (``flat_referenced``, :func:`recorded_modes`) get a constant
    surface instead of a fitted one.
    """
    order = 0 if flat_referenced else 2
    ny, nx = modes.sizes["y"], modes.sizes["x"]
    factor = max(1, math.ceil(max(ny, nx) / FLAT_PX))
    # factor 1: the image is no larger than the crop, which then is the whole image
    coarse = modes.coarsen(y=factor, x=factor, boundary="trim").mean().values if factor > 1 else None
    ys, xs = central_window((ny, nx))
    crop = modes.isel(y=ys, x=xs).values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        prep = Preprocessing.fit(crop, full_shape=(ny, nx), offset=(ys.start, xs.start),
                                 coarse=coarse, factor=factor, order=order)
    for w in caught:
        log.warning("%s", w.message)
    return prep


def fit_preprocessing(job: TemFuseJob) -> Preprocessing:
    """Fit the preprocessing once for the dataset and store it (attribute ``preprocessing``)."""
    attrs = read_attrs(job.out)
    if ATTR_PREPROCESSING in attrs:
        return Preprocessing.from_dict(attrs[ATTR_PREPROCESSING])
    out = open_dataset(job.out, require_complete=False)
    prep = fit_store_preprocessing(recorded_modes(out, job.flat_reference), job.flat_reference)
    update_attrs(job.out, **{ATTR_PREPROCESSING: prep.to_dict()})
    log.info("drift against the HRTEM (px): %s", dict(zip(MODES, prep.drift.round(2).tolist())))
    return prep


def fit_base(job: TemFuseJob, prep: Preprocessing) -> BaseFit | None:
    """For a residual model: fit its base's statistics once (central crop) and store them (attribute ``base``)."""
    cfg = load_avae(job.model).cfg
    if not cfg.has_base:
        return None
    attrs = read_attrs(job.out)
    if ATTR_BASE in attrs:
        return BaseFit.from_dict(attrs[ATTR_BASE])
    out = open_dataset(job.out, require_complete=False)
    modes = recorded_modes(out, job.flat_reference)
    window = central_window((modes.sizes["y"], modes.sizes["x"]))
    crop = modes.isel(y=window[0], x=window[1]).values
    fit, _ = BaseFit.fit(flat_hrtem(prep, crop, window), load_base_network(cfg.base_model))
    update_attrs(job.out, **{ATTR_BASE: {**fit.to_dict(), "model": cfg.base_model}})
    return fit


@dataclass(frozen=True)
class FuseContext:
    """What every tile gets: the fitted preprocessing and, for a residual model, its base's fit."""

    prep: Preprocessing
    base: BaseFit | None = None


def fit_context(job: TemFuseJob) -> FuseContext:
    """The preprocessing and any base fit of a job, fitted once and stored (or read back)."""
    prep = fit_preprocessing(job)
    return FuseContext(prep, fit_base(job, prep))


def worker_model(job: TemFuseJob, device: str) -> AVAE:
    """The model on ``device``, loaded once per worker process (and per weights file)
    (:func:`emfuse.flows.jobs.runner.worker_cached`)."""
    def load() -> AVAE:
        import torch

        if job.torch_threads and device == "cpu":
            torch.set_num_threads(job.torch_threads)
        return load_avae(job.model, device=device)

    return worker_cached(("tem-fuse", job.model, job.model_sha256, device), load)


def worker_base_network(name: str, device: str) -> Any:
    """A residual model's restoration network on ``device``, loaded once per worker process."""
    return worker_cached(("tem-fuse-base", name, device), lambda: load_base_network(name, device=device))


class TemFuseSpec(TiledJob):
    """The TEM-fusion job for the runner (:mod:`emfuse.flows.jobs.runner`): tiles of the image, each
    window (core + halo) preprocessed with the stored fit and fused by the AVAE on the worker's device."""

    def prepare(self, job: TemFuseJob, client: Client, *, progress: bool) -> tuple[TemFuseJob, FuseContext]:
        with timed(job.out, "write_inputs"):
            write_inputs(job)
        with timed(job.out, "preprocessing"):
            return job, fit_context(job)

    def units(self, job: TemFuseJob) -> list[Unit]:
        return [Unit(tile.index, tile) for tile in job.grid]

    def read(self, job: TemFuseJob, unit: Unit) -> dict[str, np.ndarray]:
        import zarr

        group = zarr.open_group(job.out, mode="r", zarr_format=3)
        ys, xs = unit.region.window
        recorded = group[layout.MODES][:, ys, xs]
        if job.flat_reference:
            recorded = recorded / group[layout.FLAT_REFERENCE][:, ys, xs]
        return {"modes": recorded}

    def process(self, job: TemFuseJob, unit: Unit, window: dict[str, Any], context: FuseContext,
                device: str) -> UnitOutput:
        tile = unit.region
        model = worker_model(job, device)
        base = None
        if context.base is not None:  # the residual model's base, made on the same window
            net = worker_base_network(model.cfg.base_model, device)
            base = context.base.apply(flat_hrtem(context.prep, window["modes"], tile.window), net)
        fused, attention = fuse_tile(model, context.prep.apply(window["modes"], tile.window), tile, base=base)
        return UnitOutput({layout.TEM_FUSED: (tile.core, fused), layout.ATTENTION: ((slice(None), *tile.core), attention)})

    def summary(self, job: TemFuseJob) -> dict[str, Any]:
        return summary(job)


def summary(job: TemFuseJob, max_px: int = 4096) -> dict[str, Any]:
    """Mean attention per mode and, for synthetic data, PSNR/SSIM of the fused image and the HRTEM."""
    from emfuse.pipeline.avae.baselines import score

    out = open_dataset(job.out)
    info: dict[str, Any] = {"store": job.out, "model": job.model,
                            "mean_attention": dict(zip(MODES, out[layout.ATTENTION].mean(("y", "x")).values.tolist())),
                            "drift_px": dict(zip(MODES, np.asarray(out.attrs[ATTR_PREPROCESSING]["drift"]).tolist()))}
    if layout.TRUE_STRUCTURE in out and max(out.sizes["y"], out.sizes["x"]) <= max_px:
        truth = out[layout.TRUE_STRUCTURE].values
        prep = Preprocessing.from_dict(out.attrs[ATTR_PREPROCESSING])
        hrtem = prep.apply(recorded_modes(out, job.flat_reference).values)[MODES.index("hrtem")]
        info["quality"] = {"tem_fused": score(out[layout.TEM_FUSED].values, truth), "hrtem": score(hrtem, truth)}
    info["devices"] = list(out.attrs.get(layout.ATTR_DEVICES, []))
    info["warnings"] = read_warnings(job.out)
    return json.loads(json.dumps(info))


SPEC = TemFuseSpec(name=JOB, desc="fusing TEM modes", array_kind="torch")
