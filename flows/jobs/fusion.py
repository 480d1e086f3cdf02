"""The fusion job as plain functions: canonical store in, output store out, resumable.

Stages (each skipped on a rerun once recorded as done in the output store):

1. ``plan``: open the input, choose the maps (stored maps, or maps integrated
   from the spectrum image), create the output store from a template;
2. ``write_inputs``: the HAADF and raw maps (and the truth of synthetic data)
   are copied into the output store, so it is self-contained, with ``haadf_valid``:
   False where the HAADF is saturated (:func:`emfuse.flows.jobs.inputs.haadf_saturation`), those
   pixels being left out of the HAADF term; the ``haadf-saturated`` warning goes
   with it;
3. ``normalise``: one pass for the dataset-wide min/max (the HAADF's over its
   valid pixels; and the NaN/Inf and negative-count checks) that every tile then shares;
4. ``choose_lambdas``: when ``lambda_chem``/``lambda_tv`` are ``"auto"``, the
   weights are chosen once for the dataset on held-out data (count splitting for
   counts, recorrupted pairs with the noise measured on the maps for other maps;
   :mod:`emfuse.pipeline.fusion.auto`) on the dataset-wide normalisation, and stored
   (attributes ``params`` and ``lambda_choice``, variable ``lambda_score``)
   before any tile runs;
5. the tiles (:data:`SPEC`, run by :mod:`emfuse.flows.jobs.runner`): one Dask task per
   unfinished tile reads its window from the output store, fuses it on the worker's device
   and writes its core, then records it as done;
6. ``finalise``: the cost curves are summed over tiles, checked for levelling
   off and oscillation (the messages go to the log and to the ``convergence``
   attribute, empty when all is well), and ``complete = true`` is set.

:mod:`emfuse.flows.jobs.flows` wraps these stages as Prefect tasks; tests and
notebooks can call :func:`emfuse.flows.jobs.run_job` (``"fuse"``) without Prefect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm

from emfuse.errors import InputError
from emfuse.pipeline import elements as periodic
from emfuse.pipeline import spectra, tiles
from emfuse.pipeline.fusion import (
    COST_TERMS,
    FusionInputError,
    FusionParams,
    Normalisation,
    auto,
    diagnose_convergence,
    memory,
    tiled,
)
from emfuse.pipeline.fusion.haadf_fit import GAMMAS, PROBE_SIGMAS, HaadfFit
from emfuse.pipeline.fusion.model import POOR_HAADF_FIT, haadf_unexplained
from emfuse.stores import layout
from emfuse.stores.errors import StoreError, on_disk_full
from emfuse.stores.outputs import empty_like, prepare_output, write_region, write_variable
from emfuse.stores.progress import TileRecord
from emfuse.stores.warn import add_warnings, make_warning, read_warnings
from emfuse.stores.zarrio import (
    add_variables,
    open_arrays,
    open_dataset,
    read_attrs,
    timed,
    update_attrs,
)

from .checks import (
    HAADF_MODELS,
    check_haadf_model,
    listed_elements,
    no_elements_message,
    no_haadf_message,
    no_maps_message,
)
from .inputs import SATURATED, haadf_saturation
from .runner import (
    DeviceError,
    TiledJob,
    Unit,
    UnitOutput,
    check_device_option,
    gpu_free_bytes,
    worker_device,
)

if TYPE_CHECKING:  # distributed loads in a second: not for a command line that only checks its arguments
    from distributed import Client

log = logging.getLogger(__name__)
JOB = "fuse"
LAMBDAS = ("lambda_chem", "lambda_tv")  # the weights that may be "auto"
HAADF_MODEL_Z, HAADF_MODEL_FIT = HAADF_MODELS  # checks.HAADF_MODELS: the HAADF model's weights and gamma
CRITERION_FALLBACK = "defaults:no-noise-model"  # "auto" on non-count maps whose noise cannot be measured
TILE_AUTO = "auto"  # tile: chosen from the workers' free GPU memory (memory.choose_tile)
INPUT_WARNINGS = (SATURATED,)  # warnings of the input store that concern a fusion of it, copied to the output


@dataclass(frozen=True)
class FusionJob:
    """Everything that defines one fusion run (stored as the output's ``params``)."""

    source: str
    out: str
    elements: tuple[str, ...]
    z: tuple[int, ...]
    params: FusionParams
    tile: int = memory.DEFAULT_TILE
    halo: int = 32
    windows: dict[str, tuple[float, float]] | None = None
    auto: tuple[str, ...] = ()  # the lambdas chosen by the search ("lambda_chem", "lambda_tv")
    resolved: bool = True  # False until the auto lambdas are chosen (params then hold placeholders)
    maps_from: str = "file"  # "file": the maps stored in the input; "spectrum": integrated from it
    windows_used: dict[str, dict[str, Any]] | None = None  # per element: eV windows and background model
    device: str = "auto"  # where tiles run: "auto" (the worker's GPU when it has one, with CuPy), "cpu", "cuda"
    haadf_model: str = HAADF_MODEL_Z  # "z": w_i = Z_i / mean(Z), gamma as given; "fit": both fitted (with "auto")

    def record(self) -> dict[str, Any]:
        """The parameters written to (and compared with) the output store.

        Auto lambdas read ``"auto"`` until they are chosen, then their numbers;
        ``lambda_auto`` lists them, so the store says both what was used and
        that it was chosen automatically.
        """
        record = {
            **self.params.to_dict(),
            "elements": list(self.elements),
            "z": list(self.z),
            "tile": self.tile,
            "halo": self.halo,
            "windows": self.windows,
            "maps_from": self.maps_from,
            "windows_used": self.windows_used,
        }
        if self.haadf_model != HAADF_MODEL_Z:  # absent for the Z weights: earlier stores compare as before
            record["haadf_model"] = self.haadf_model
        if self.auto:  # absent otherwise, so stores written with numbers compare as before
            record["lambda_auto"] = list(self.auto)
            if not self.resolved:
                record.update({name: auto.AUTO for name in self.auto})
        return record

    def with_lambdas(self, lambda_chem: float, lambda_tv: float) -> FusionJob:
        """This job with its lambdas chosen."""
        return self.with_choice(lambda_chem=float(lambda_chem), lambda_tv=float(lambda_tv))

    def with_choice(self, **params: Any) -> FusionJob:
        """This job with what the automatic choice set (:meth:`~emfuse.pipeline.fusion.auto.LambdaChoice.fusion_params`:
        the lambdas, one number or one per element, and for a fitted HAADF model ``gamma`` and
        ``haadf_weights``)."""
        return dataclasses.replace(self, params=dataclasses.replace(self.params, **params), resolved=True)

    @property
    def grid(self) -> list[tiles.Tile]:
        # the image's shape from the HAADF's metadata: opening the store with xarray took 20-100 ms
        # and the runner asks for the grid twice per job
        shape = zarr.open_array(self.out, path=layout.HAADF, mode="r", zarr_format=3).shape
        return tiles.tile_grid(shape, self.tile, self.halo)


@contextlib.contextmanager
def naming(source: str | Path) -> Iterator[None]:
    """Put the dataset's name in front of a bad-input message that does not name it yet
    (the checks in :mod:`pipeline` see arrays, not files), keeping the exception's type."""
    try:
        yield
    except (FusionInputError, spectra.SpectrumError, periodic.ElementError) as exc:
        if str(source) in str(exc):
            raise
        try:
            named = type(exc)(f"{source}: {exc}")
        except Exception:  # an exception class with its own constructor: leave it as it is
            raise exc from None
        raise named from exc


MAPS_FROM = ("spectrum", "file")  # --maps-from; not given: the spectrum image where there is one


def maps_source(ds: xr.Dataset, maps_from: str | None = None) -> str:
    """Where a job's maps come from: ``"spectrum"`` (integrated) or ``"file"`` (stored maps).

    ``maps_from`` None chooses the spectrum image where the dataset has one: its
    windows and background are then known and recorded, which maps made by the
    acquisition software do not say.
    """
    if maps_from is None:
        return "spectrum" if layout.SPECTRUM in ds else "file"
    choice = str(maps_from).strip().lower()
    if choice not in MAPS_FROM:
        raise FusionInputError(f"maps_from must be one of {', '.join(MAPS_FROM)}, got {maps_from!r}.")
    return choice


def default_elements(ds: xr.Dataset) -> list[str] | None:
    """The elements a dataset is mapped for when none are named: those asked for at ingest,
    else those of its stored maps."""
    if ds.attrs.get(layout.ATTR_ELEMENTS):
        return [str(e) for e in ds.attrs[layout.ATTR_ELEMENTS]]
    if layout.MAPS in ds:
        return [str(e) for e in ds[layout.MAPS].element.values]
    return None


def input_maps(
    ds: xr.Dataset,
    elements: Sequence[str] | None,
    windows: dict[str, tuple[float, float]] | None = None,
    maps_from: str | None = None,
) -> xr.DataArray:
    """The raw elemental maps (element, y, x) of a canonical dataset, lazily.

    ``maps_from="file"`` takes the stored ``maps`` (they must hold the elements);
    ``"spectrum"`` integrates them from the ``spectrum`` with ``windows``; None takes
    the spectrum image where there is one. Without ``elements``: those asked for at
    ingest, else those of the stored maps.
    """
    source = maps_source(ds, maps_from)
    wanted = periodic.validate_elements(elements) if elements else default_elements(ds)
    if source == "file":
        return _stored_maps(ds, wanted, windows, asked=maps_from is not None)
    if layout.SPECTRUM not in ds:
        have = sorted(ds[layout.MAPS].element.values) if layout.MAPS in ds else []
        raise FusionInputError(
            f"maps from the spectrum image were asked for (--maps-from spectrum), but the dataset has "
            f"no spectrum image (maps present: {have}); use --maps-from file, or ingest the file "
            "with its EDX/EELS spectrum image."
        )
    if wanted is None:
        raise FusionInputError(no_elements_message(listed_elements(ds.attrs.get(layout.ATTR_METADATA))))
    spectrum = ds[layout.SPECTRUM].transpose("y", "x", "energy")
    data = _spectrum_to_maps(ds, wanted, windows)(spectrum.data)
    return xr.DataArray(
        data,
        dims=("element", "y", "x"),
        coords={"element": list(wanted), "z": ("element", [periodic.atomic_number(e) for e in wanted]),
                "y": ds["y"], "x": ds["x"]},
        attrs={"units": _integrated_units(ds[layout.SPECTRUM])},
    )


def _integrated_units(spectrum: xr.DataArray) -> str:
    """Maps integrated from a spectrum image are counts only when the spectrum holds counts."""
    units = spectrum.attrs.get("units")
    return units if units else "counts" if spectrum.dtype.kind in "iu" else "a.u."


def maps_record(ds: xr.Dataset, source: str, windows: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The output's ``maps_from`` attribute: which variable the maps came from, their units and,
    for maps integrated from the spectrum image, the windows actually used (:func:`windows_used`)."""
    if source == "file":
        return {"variable": layout.MAPS, "units": ds[layout.MAPS].attrs.get("units")}
    signal = _signal_type(ds)
    return {"variable": layout.SPECTRUM, "signal_type": signal,
            "units": _integrated_units(ds[layout.SPECTRUM]), "windows": windows}


def _stored_maps(
    ds: xr.Dataset, wanted: Sequence[str] | None, windows: dict[str, tuple[float, float]] | None,
    asked: bool,
) -> xr.DataArray:
    """The stored maps of ``wanted`` (all of them when None), refused where they cannot serve;
    ``asked``: the user chose them (--maps-from file), else the dataset has no spectrum image."""
    have = [str(e) for e in ds[layout.MAPS].element.values] if layout.MAPS in ds else []
    spectrum = layout.SPECTRUM in ds
    if windows:
        raise FusionInputError(
            f"--window {', '.join(windows)} applies to maps integrated from the spectrum image, but "
            + ("the stored maps were asked for (--maps-from file); drop --window or use --maps-from spectrum."
               if spectrum else "the dataset has no spectrum image and its stored maps are used as they "
               "are; drop --window.")
        )
    missing = [e for e in wanted or [] if e not in have]
    if have and not missing:
        maps = ds[layout.MAPS]
        return maps.sel(element=list(wanted)) if wanted else maps
    if not asked:
        raise FusionInputError(no_maps_message(wanted, have))
    fix = "use --maps-from spectrum to integrate them from the spectrum image" if spectrum else (
        "ingest a file with elemental maps")
    raise FusionInputError(
        f"maps from the file were asked for (--maps-from file), but the dataset has no maps "
        f"{'of ' + str(missing) if have else 'at all'} (maps present: {have}); choose --elements "
        f"among the maps present, or {fix}."
    )


def windows_used(
    ds: xr.Dataset, elements: Sequence[str], windows: dict[str, tuple[float, float]] | None
) -> dict[str, dict[str, Any]]:
    """The integration windows of each element as the spectrum is mapped (eV, background model)."""
    signal = _signal_type(ds)
    energy = np.asarray(ds["energy"].values, dtype=np.float64)
    found = spectra.map_windows(energy, list(elements), signal_type=signal, windows=windows)
    keep = ("signal_type", "line", "line_ev", "signal_ev", "background_ev", "background_model", "source")
    return {w.element: {k: v for k, v in w.to_dict().items() if k in keep} for w in found}


def _signal_type(ds: xr.Dataset) -> str:
    """The spectrum image's signal type ("EDX" or "EELS"): the dataset's, else the variable's, else EDX."""
    return str(ds.attrs.get(layout.ATTR_SIGNAL, ds[layout.SPECTRUM].attrs.get(layout.ATTR_SIGNAL, "EDX")))


def _spectrum_to_maps(
    ds: xr.Dataset, elements: Sequence[str], windows: dict[str, tuple[float, float]] | None
) -> Callable[[Any], Any]:
    """spectrum (y, x, energy) -> maps (element, y, x) with this dataset's windows (numpy or dask)."""
    signal = _signal_type(ds)
    energy = np.asarray(ds["energy"].values, dtype=np.float64)

    def to_maps(data: Any) -> Any:
        return spectra.elemental_maps(data, energy, elements, signal_type=signal, windows=windows)[0]

    return to_maps


def _split_lambdas(params: dict[str, Any] | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(numeric parameters, names of the lambdas given as "auto")."""
    params = dict(params or {})
    chosen = []
    for name in LAMBDAS:
        value = params.get(name)
        if isinstance(value, str):
            if value.strip().lower() != auto.AUTO:
                raise FusionInputError(f"{name} must be a number or 'auto', got {value!r}.")
            chosen.append(name)
            del params[name]  # the FusionParams default stands in until the choice is made
    return params, tuple(chosen)


def _stored_choice(job: FusionJob, overwrite: bool) -> FusionJob:
    """The job with the lambdas already chosen for its output store, if there are any.

    A rerun must neither be refused as "other parameters" nor search again: when
    the store holds a choice made with the same auto lambdas, its numbers are used.
    """
    if job.resolved or overwrite or not Path(job.out).exists():
        return job
    try:
        attrs = read_attrs(job.out)
    except StoreError:
        return job  # not a store: prepare_output names the problem
    stored = attrs.get(layout.ATTR_PARAMS, {})
    if (layout.ATTR_LAMBDA_CHOICE not in attrs or stored.get("lambda_auto") != list(job.auto)
            or stored.get("haadf_model", HAADF_MODEL_Z) != job.haadf_model):
        return job
    chosen = ("lambda_chem", "lambda_tv") + (("gamma", "haadf_weights") if job.haadf_model == HAADF_MODEL_FIT else ())
    return job.with_choice(**{name: stored[name] for name in chosen})


def _maps_are_counts(ds: xr.Dataset, job: FusionJob) -> bool:
    """True when "auto" can split the job's counts: a spectrum image, or integer-count stored maps."""
    if job.maps_from != "file":
        return True
    maps = ds[layout.MAPS].sel(element=list(job.elements))
    ys, xs = auto.central_crop((ds.sizes["y"], ds.sizes["x"]), auto.SearchSettings().crop)
    return auto.is_counts(maps.isel(y=ys, x=xs).values)


def plan(
    source: str | Path,
    out: str | Path,
    *,
    elements: Sequence[str] | None = None,
    params: dict[str, Any] | None = None,
    tile: int | str = TILE_AUTO,
    halo: int = 32,
    windows: dict[str, tuple[float, float]] | None = None,
    maps_from: str | None = None,
    device: str = "auto",
    haadf_model: str = HAADF_MODEL_Z,
    overwrite: bool = False,
    free_memory: Sequence[float | None] | None = None,
) -> tuple[FusionJob, str]:
    """Define the job and create (or reopen) its output store.

    ``haadf_model`` ``"fit"`` (with automatic lambdas): the HAADF model's weights and ``gamma``
    are fitted to the data, and the weakest element's own weights chosen on held-out counts,
    by the automatic choice (:func:`search_settings`); ``"z"`` (the default): ``Z_i / mean(Z)``
    and ``gamma`` as given.

    ``maps_from`` (``"spectrum"`` or ``"file"``; None: the spectrum image where there is
    one) says where the maps come from (:func:`input_maps`); the output's ``params``
    record it as ``maps_from`` and, for maps integrated from the spectrum, the windows
    actually used as ``windows_used`` (per element: eV, background windows and model).

    ``params`` may give ``lambda_chem`` and/or ``lambda_tv`` as ``"auto"``:
    the job is then unresolved until :func:`choose_lambdas` (or resolved at
    once from a choice already stored in the output).

    ``device``: where the tiles are fused, ``"auto"`` (on the worker's GPU, with CuPy, when it
    has one; else its CPU), ``"cpu"`` or ``"cuda"``; the store's ``devices`` attribute says where
    they ran. The results agree to rounding, so the device is not part of ``params``.

    ``tile`` ``"auto"`` (the default) is chosen from ``free_memory``, the free GPU memory of
    one task of each worker (None for a CPU worker; :func:`workers_free_memory`), by
    :func:`emfuse.pipeline.fusion.memory.choose_tile`: the CPU default without a GPU, else the
    largest tile the memory model lets every GPU hold (one tile when the image fits). The
    choice goes to the store's ``tile_choice`` attribute, the tile to ``params``; a store
    already started keeps its tile (its grid and chunks), whatever the memory now.

    Returns the job and the output's state: ``"new"``, ``"resume"`` or ``"complete"``.
    """
    check_device_option(device)
    ds = open_dataset(source)
    if layout.HAADF not in ds:
        raise FusionInputError(no_haadf_message(source))
    with naming(source):
        maps = input_maps(ds, elements, windows, maps_from)
        used_from = maps_source(ds, maps_from)
        names = tuple(str(e) for e in maps.element.values)
        used = windows_used(ds, names, windows) if used_from == "spectrum" else None
    if len(set(names)) != len(names):
        raise FusionInputError(f"element listed twice in {list(names)}; name each element once.")
    z = tuple(int(v) for v in maps["z"].values)
    numeric, auto_names = _split_lambdas(params)
    try:
        check_haadf_model(haadf_model, params)
    except InputError as exc:
        raise FusionInputError(str(exc)) from None
    fusion_params = FusionParams(**numeric)
    tile, tile_choice = resolve_tile(tile, out, (ds.sizes["y"], ds.sizes["x"]), len(names), halo,
                                     fusion_params, None if device == "cpu" else free_memory, overwrite)
    job = FusionJob(str(source), str(out), names, z, fusion_params, tile, halo, windows,
                    auto=auto_names, resolved=not auto_names, maps_from=used_from, windows_used=used,
                    device=device, haadf_model=haadf_model)
    job = _stored_choice(job, overwrite)
    with on_disk_full(out), naming(source):
        state = prepare_output(out, _template(ds, maps, job), job.record(), source=source, overwrite=overwrite,
                               attrs={layout.ATTR_MAPS_FROM: maps_record(ds, used_from, used),
                                      **({layout.ATTR_TILE_CHOICE: tile_choice} if tile_choice else {})})
        if state != "complete":
            grid = tiles.tile_grid((ds.sizes["y"], ds.sizes["x"]), tile, halo)
            shape = (grid[-1].index[0] + 1, grid[-1].index[1] + 1)
            TileRecord.create(out, JOB, shape, payload_shape=(len(COST_TERMS), job.params.n_iter))
    return job, state


def stored_tile(out: str | Path) -> int | None:
    """The tile of an output store already started (its grid and chunks), None for no store."""
    if not Path(out).exists():
        return None
    try:
        tile = read_attrs(out).get(layout.ATTR_PARAMS, {}).get("tile")
    except StoreError:
        return None  # not a store: prepare_output names the problem
    return int(tile) if tile is not None else None


def resolve_tile(tile: int | str, out: str | Path, shape: tuple[int, int], n_elements: int, halo: int,
                 params: FusionParams, free_memory: Sequence[float | None] | None,
                 overwrite: bool = False) -> tuple[int, dict[str, Any] | None]:
    """The job's tile and, when chosen now, the ``tile_choice`` record (None otherwise).

    A number is used as it is; ``"auto"`` keeps the tile of a store already started (a resumed
    or finished job must not re-cut its grid), else :func:`memory.choose_tile` picks it from
    ``free_memory`` (None: no GPU asked about, the CPU default), with the model
    :func:`check_window_fits` applies (``haadf_valid`` is always written before the tiles run).
    """
    if tile != TILE_AUTO:
        return int(tile), None
    started = None if overwrite else stored_tile(out)
    if started is not None:
        return started, None
    choice = memory.choose_tile(list(free_memory or [None]), shape, n_elements, halo,
                                momentum=bool(params.tv_momentum), masked=True)
    log.info("tile %d px chosen (%s)", choice.tile, choice.rule)
    return choice.tile, {**choice.record(), "halo": halo, "n_elements": n_elements}


def needs_free_memory(out: str | Path, options: dict[str, Any]) -> bool:
    """True when planning this job will choose its tile from the workers' GPUs (``tile`` auto on a
    new store, a device that may be a GPU): the driver asks them first (:func:`workers_free_memory`)."""
    if options.get("tile", TILE_AUTO) != TILE_AUTO or options.get("device", "auto") == "cpu":
        return False
    return bool(options.get("overwrite")) or stored_tile(out) is None


def worker_free_share(device: str = "auto", dask_worker: Any = None) -> dict[str, Any] | None:
    """On a worker (``client.run``, which passes ``dask_worker``): its GPU's free bytes, which GPU,
    and how many tasks it runs at once; None when this worker fuses on its CPU."""
    if worker_device(device, "xp") == "cpu":
        return None
    import socket

    import cupy

    threads = dask_worker.state.nthreads if dask_worker is not None else 1
    return {"host": socket.gethostname(), "gpu": cupy.cuda.Device().pci_bus_id, "free": gpu_free_bytes(),
            "threads": int(threads)}


def free_per_task(reports: Sequence[dict[str, Any] | None]) -> list[float | None]:
    """Each worker's share of its GPU: the free bytes over every task that may run on that GPU at
    once (all threads of all workers on one host and GPU: they may each hold a tile).

    Examples
    --------
    >>> gpu = {"host": "n1", "gpu": "0000:01:00.0", "free": 80e9, "threads": 1}
    >>> free_per_task([gpu, {**gpu, "threads": 3}, None])
    [20000000000.0, 20000000000.0, None]
    """
    tasks: Counter[tuple[str, str]] = Counter()
    for r in reports:
        if r is not None:
            tasks[(r["host"], r["gpu"])] += r["threads"]
    return [None if r is None else r["free"] / tasks[(r["host"], r["gpu"])] for r in reports]


def workers_free_memory(client: Client, device: str = "auto") -> list[float | None]:
    """Free GPU memory per task of every worker of ``client`` (None for CPU workers): the input of
    ``plan(free_memory=...)`` for ``tile="auto"``."""
    return free_per_task(list(client.run(worker_free_share, device).values()))


#: Largest Zarr chunk side of a fusion store: a chunk of 8 maps of 2048^2 float32 is 128 MB, which
#: a CPU worker reading the store (the report, the HAADF fit) holds at ease; a GPU tile may be larger
MAX_CHUNK = 2048


def chunk_side(tile: int, shape: tuple[int, int]) -> int:
    """The store's chunk side for tiles of ``tile`` px: the tile itself up to :data:`MAX_CHUNK`, else
    the largest divisor of the tile not above it (tile cores then start on chunk boundaries, so no
    two tiles write one chunk); one tile covering the image has no neighbour to share a chunk with.

    Examples
    --------
    >>> chunk_side(512, (4096, 4096)), chunk_side(12608, (30000, 30000)), chunk_side(9001, (9001, 9001))
    (512, 1576, 2048)
    """
    if tile <= MAX_CHUNK:
        return tile
    if tile >= max(shape):
        return MAX_CHUNK
    divisor = max(d for d in range(1, MAX_CHUNK + 1) if tile % d == 0)
    return divisor if divisor >= 64 else tile  # a tile with no usable divisor: its own chunk, as before


def _template(ds: xr.Dataset, maps: xr.DataArray, job: FusionJob) -> xr.Dataset:
    ny, nx, n_el = ds.sizes["y"], ds.sizes["x"], len(job.elements)
    t = chunk_side(job.tile, (ny, nx))
    el_chunks, yx_chunks = (n_el, t, t), (t, t)
    variables = {
        layout.HAADF: (("y", "x"), empty_like((ny, nx), yx_chunks)),
        layout.MAPS: (("element", "y", "x"), empty_like((n_el, ny, nx), el_chunks)),
        layout.FUSED: (("element", "y", "x"), empty_like((n_el, ny, nx), el_chunks)),
        layout.HAADF_MODEL: (("y", "x"), empty_like((ny, nx), yx_chunks)),
        layout.COST: (("term", "iteration"),
                      empty_like((len(COST_TERMS), job.params.n_iter), (len(COST_TERMS), job.params.n_iter), np.float64)),
    }
    if layout.TRUE_MAPS in ds and set(job.elements) <= set(ds[layout.TRUE_MAPS].element.values):
        variables[layout.TRUE_MAPS] = (("element", "y", "x"), empty_like((n_el, ny, nx), el_chunks))
    template = xr.Dataset(
        variables,
        coords={
            "y": ds["y"], "x": ds["x"],
            "element": list(job.elements), "z": ("element", list(job.z)),
            "term": list(COST_TERMS), "iteration": np.arange(1, job.params.n_iter + 1),
        },
    )
    template[layout.FUSED].attrs.update(units="normalised", description="fused maps, min-max normalised units")
    template[layout.MAPS].attrs.update(units=maps.attrs.get("units", "a.u."), description="raw elemental maps")
    template[layout.HAADF].attrs.update(units=ds[layout.HAADF].attrs.get("units", "a.u."))
    template[layout.HAADF_MODEL].attrs.update(units="normalised",
                                              description="sum_i w_i x_i^gamma, min-max normalised units")
    template[layout.COST].attrs.update(
        description="unweighted terms after each iteration, summed over tiles: "
        "haadf = 1/2||b_H - sum w_i x_i^gamma||^2, chem = sum(x - b log(x + bkg)), tv = sum TV_iso(x_i)"
    )
    return template


def write_inputs(job: FusionJob) -> None:
    """Copy the HAADF and raw maps (and any truth) into the output store (runs on the active Dask client)."""
    record = TileRecord.open(job.out, JOB)
    if record.stage_done("inputs"):
        return
    ds = open_dataset(job.source)
    write_variable(job.out, layout.HAADF, ds[layout.HAADF].transpose("y", "x").data)
    _write_haadf_valid(job, ds)
    add_warnings(job.out, *shortened_window_warnings(job.windows_used or {}),
                 *unlisted_element_warnings(job.elements, listed_elements(ds.attrs.get(layout.ATTR_METADATA))),
                 *not_haadf_warnings(ds[layout.HAADF].attrs))
    write_variable(job.out, layout.MAPS, input_maps(ds, job.elements, job.windows, job.maps_from).data)
    out_vars = zarr.open_group(job.out, mode="r", zarr_format=3)
    if layout.TRUE_MAPS in out_vars:
        truth = ds[layout.TRUE_MAPS].sel(element=list(job.elements)).transpose("element", "y", "x")
        write_variable(job.out, layout.TRUE_MAPS, truth.data)
    record.mark_stage("inputs")


def unlisted_element_warnings(elements: Sequence[str], listed: Sequence[str]) -> list[dict[str, Any]]:
    """An ``element-not-listed`` warning when elements are mapped that the instrument file's own
    element list (``Sample.elements``, what the operator set in the acquisition software) leaves
    out: often a slip of one letter (Pt for Pd) that would still give a map, of background counts.

    Examples
    --------
    >>> (w,) = unlisted_element_warnings(["Fe", "Pt"], ["Cu", "O", "Pd", "Ti"])
    >>> w["code"], w["elements"]
    ('element-not-listed', ['Fe', 'Pt'])
    >>> unlisted_element_warnings(["Cu", "O"], ["Cu", "O", "Pd", "Ti"]) + unlisted_element_warnings(["Fe"], [])
    []
    """
    unlisted = [e for e in elements if listed and e not in listed]
    if not unlisted:
        return []
    hints = [f"{e} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(e, listed, n=1, cutoff=0.5))
             else e for e in unlisted]
    return [make_warning(
        "element-not-listed",
        f"{', '.join(hints)} {'is' if len(unlisted) == 1 else 'are'} not among the elements the instrument "
        f"file lists ({' '.join(listed)}): the map{'' if len(unlisted) == 1 else 's'} may hold background "
        "counts only. Check the elements (--elements; in a catalog: elements: [...])",
        stage="inputs", elements=unlisted, listed=list(listed))]


def not_haadf_warnings(haadf_attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """An ``image-not-haadf`` warning when ingest could not say the image fused as the HAADF is one
    (``image_kind`` ``"image"``: the electron image beside an SEM's EDX spectrum image). Fusion
    takes its brightness to grow with the atomic number (HAADF, or a backscattered-electron image);
    a secondary-electron image shows topography, which the fused maps would take for chemistry.

    Examples
    --------
    >>> [w["code"] for w in not_haadf_warnings({"image_kind": "image", "source_title": "Ch 1"})]
    ['image-not-haadf']
    >>> not_haadf_warnings({"image_kind": "haadf"}) + not_haadf_warnings({})
    []
    """
    if haadf_attrs.get(layout.ATTR_IMAGE_KIND) != "image":
        return []
    title = haadf_attrs.get("source_title") or haadf_attrs.get("title")
    return [make_warning(
        "image-not-haadf",
        f"the image fused as the HAADF{f' ({title!r})' if title else ''} is not known to be a HAADF: fusion "
        "takes its brightness to grow with the atomic number (HAADF, or backscattered electrons in an "
        "SEM), and a secondary-electron image's topography would enter the fused maps as chemistry. "
        "Check that the detector gives Z contrast, and the HAADF-model figure (haadf.png)",
        stage="inputs", image=title)]


def shortened_window_warnings(windows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A ``window-shortened`` warning per element whose edge window was cut at the spectrum's end.

    Examples
    --------
    >>> used = {"Co": {"line": "L2,3", "line_ev": 779.0, "signal_ev": [779.0, 826.4],
    ...                "source": spectra.SHORTENED}, "O": {"source": "table"}}
    >>> [w["code"] for w in shortened_window_warnings(used)]
    ['window-shortened']
    """
    out = []
    for element, w in windows.items():
        if w.get("source") != spectra.SHORTENED:
            continue
        low, high = w["signal_ev"]
        out.append(make_warning(
            "window-shortened",
            f"the {element} map integrates {low:g}-{high:g} eV: its {w['line']} edge at {w['line_ev']:g} eV lies "
            f"so near the spectrum's end that the usual window was cut there, so the map has fewer "
            f"counts and more noise than the edge would give; check it, or set the window yourself "
            f"({periodic.window_hint(element)})", stage="inputs", element=element, window_ev=[low, high]))
    return out


def _write_haadf_valid(job: FusionJob, ds: xr.Dataset) -> None:
    """``haadf_valid`` into the output store, and the ``haadf-saturated`` warning when some pixel is not.

    The mask comes from the input's HAADF in its own dtype (the output's copy is float32, which
    has no ceiling). Appended (created or replaced) rather than declared in the template, so a
    store planned by an earlier version gets it too: no tile ever runs without its mask.
    """
    valid, saturated = haadf_saturation(ds[layout.HAADF].transpose("y", "x").values)
    group = zarr.open_group(job.out, mode="r+", zarr_format=3)
    array = group.create_array(
        layout.HAADF_VALID, shape=valid.shape, dtype=bool, chunks=(chunk_side(job.tile, valid.shape),) * 2,
        dimension_names=layout.DIMS[layout.HAADF_VALID], overwrite=True,
        attributes={"description": "False where the HAADF is saturated: those pixels are left out of the "
                                   "HAADF term"})
    array[...] = valid
    inherited = [w for w in read_warnings(job.source) if w["code"] in INPUT_WARNINGS]
    add_warnings(job.out, *inherited, *([saturated] if saturated else []))


def normalise(job: FusionJob) -> Normalisation:
    """Dataset-wide min-max ranges, with the checks that need a pass over the data."""
    attrs = zarr.open_group(job.out, mode="r", zarr_format=3).attrs
    if layout.ATTR_NORMALISATION in attrs:
        return Normalisation(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in attrs[layout.ATTR_NORMALISATION].items()})
    out = open_arrays(job.out, layout.HAADF, layout.MAPS, layout.HAADF_VALID)
    haadf, maps = out[layout.HAADF], out[layout.MAPS]
    if layout.HAADF_VALID in out:  # saturated pixels out of the range (a NaN or Inf elsewhere still shows)
        valid = out[layout.HAADF_VALID]
        if not bool(valid.any().compute()):
            raise FusionInputError(f"{job.source}: every HAADF pixel is saturated; there is no HAADF to fuse "
                                   "with. Check the detector gain/offset.")
        haadf = (da.where(valid, haadf, np.inf).min(), da.where(valid, haadf, -np.inf).max())
    else:
        haadf = (haadf.min(), haadf.max())
    h_lo, h_hi, m_lo, m_hi = da.compute(*haadf, maps.min(axis=(1, 2)), maps.max(axis=(1, 2)))
    if not np.isfinite([h_lo, h_hi]).all():
        raise FusionInputError("the HAADF contains NaN or Inf values; mask or interpolate the bad pixels first.")
    for name, lo, hi in zip(job.elements, m_lo, m_hi):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise FusionInputError(f"the map of {name} contains NaN or Inf values; mask or interpolate the bad pixels first.")
        if lo < 0:
            raise FusionInputError(
                f"the map of {name} has negative counts (min {lo:g}); the Poisson model needs counts >= 0. "
                "Clip background-subtracted maps at zero."
            )
    _check_dose(job, (h_lo, h_hi), m_hi)
    norm = Normalisation.from_ranges((h_lo, h_hi), list(zip(m_lo, m_hi)), job.elements)
    update_attrs(job.out, **{layout.ATTR_NORMALISATION: dataclasses.asdict(norm)})
    return norm


def _check_dose(job: FusionJob, haadf_range: tuple[float, float], map_max: Sequence[float]) -> None:
    """Zero dose: no counts in any map, or no signal on the HAADF (the beam was blanked, the
    spectrum image or the detector was not recorded). One map without counts is an element's
    problem (see :meth:`Normalisation.from_ranges`), not the dataset's."""
    if all(hi == 0 for hi in map_max):
        elsewhere = _counts_outside_windows(job) if job.maps_from == "spectrum" else None
        if elsewhere:
            raise FusionInputError(
                f"{job.source}: every elemental map ({', '.join(job.elements)}) is zero, but {elsewhere}. "
                "Check the elements, the energy axis's calibration (offset and scale) and the windows "
                "(--window EL=LO:HI in eV); in these windows there is nothing to fuse."
            )
        raise FusionInputError(
            f"{job.source}: every elemental map ({', '.join(job.elements)}) is zero: the dataset "
            "holds no counts (zero dose: the beam was blanked or the spectrum image was not "
            "recorded). Check the acquisition; there is nothing to fuse."
        )
    if haadf_range[0] == haadf_range[1] == 0:
        raise FusionInputError(
            f"{job.source}: the HAADF is zero everywhere: no signal reached the detector (zero "
            "dose, or the detector was not inserted). Check the acquisition; fusion needs a HAADF "
            "with contrast."
        )


def _counts_outside_windows(job: FusionJob) -> str | None:
    """Where the counts of a spectrum image whose maps are all zero are (a phrase), or None
    when it holds none: a pass over the spectrum, made only on this error's path."""
    ds = open_dataset(job.source)
    per_channel = np.asarray(ds[layout.SPECTRUM].sum(dim=[d for d in ds[layout.SPECTRUM].dims if d != "energy"]))
    total = float(per_channel.sum())
    if total <= 0:
        return None
    energy = ds["energy"]
    units = energy.attrs.get("units", "eV")
    return (f"its spectrum image holds {total:.6g} counts outside these elements' windows "
            f"(the most at {float(energy.values[int(np.argmax(per_channel))]):.4g} {units})")


def search_settings(job: FusionJob) -> auto.SearchSettings:
    """The automatic choice's settings for ``job``: with ``haadf_model="fit"`` the HAADF model's
    weights and gamma fitted on independent halves of the data, and the weakest element's own
    weights chosen on held-out counts (``docs/methods/fusion.md``, "Fitting the HAADF model")."""
    if job.haadf_model == HAADF_MODEL_FIT:
        return auto.SearchSettings(haadf_weights="fit", refine_weakest=True)
    return auto.SearchSettings()


def choose_lambdas(job: FusionJob, norm: Normalisation,
                   settings: auto.SearchSettings | None = None, *, progress: bool = False) -> FusionJob:
    """Choose the auto lambdas once for the dataset and store them; returns the resolved job.

    Runs on the central crop of the dataset (:class:`emfuse.pipeline.fusion.auto.SearchSettings`),
    on the dataset-wide normalisation ``norm`` that the tiles use. The score grid is
    written as ``lambda_score`` and the choice into the attributes (``params`` with
    the numbers, ``lambda_choice`` with the criterion and settings), in that order:
    the attributes mark the choice as made, so a rerun reuses it (the search is
    deterministic, so one interrupted before they were written finds the same).
    """
    if job.resolved:
        return job
    stored = _stored_choice(job, overwrite=False)
    if stored.resolved:
        return stored
    settings = settings or search_settings(job)
    ds = open_dataset(job.source)
    out = open_dataset(job.out, require_complete=False)
    ys, xs = auto.central_crop((out.sizes["y"], out.sizes["x"]), settings.crop)
    fixed = {name: getattr(job.params, name) for name in LAMBDAS if name not in job.auto}
    data: dict[str, Any] = {}
    if job.maps_from == "file":
        data["maps"] = out[layout.MAPS].isel(y=ys, x=xs).values
        if not _maps_are_counts(ds, job):
            # the noise model is measured on more pixels than the search uses (sparse vendor
            # maps have few pixels away from their exact zeros)
            ny, nx = auto.central_crop((out.sizes["y"], out.sizes["x"]), NOISE_CROP)
            try:
                data["noise"] = auto.estimate_map_noise(out[layout.MAPS].isel(y=ny, x=nx).values)
            except auto.AutoLambdaError as exc:
                return _fall_back_to_defaults(job, str(exc))
    else:
        spectrum = ds[layout.SPECTRUM].transpose("y", "x", "energy").isel(y=ys, x=xs)
        data["spectrum"] = spectrum.values
        data["to_maps"] = _spectrum_to_maps(ds, job.elements, job.windows)
    if layout.HAADF_VALID in out:
        data["haadf_valid"] = out[layout.HAADF_VALID].isel(y=ys, x=xs).values
    # the crop is already cut: search on all of it
    def search(settings: auto.SearchSettings) -> auto.LambdaChoice:
        with tqdm(desc="choosing lambdas", unit=" candidates", disable=not progress) as bar:
            return auto.choose_lambdas(
                out[layout.HAADF].isel(y=ys, x=xs).values, job.z, normalisation=norm, params=job.params,
                settings=settings, callback=lambda *_: bar.update(), **fixed, **data,
            )

    try:
        choice = search(settings)
    except auto.AutoLambdaError as exc:
        if settings.haadf_weights != "fit":
            raise
        # maps the fit cannot split (sparse vendor maps): the Z weights, said and stored
        add_warnings(job.out, make_warning(
            "haadf-fit-refused", f"the HAADF model could not be fitted ({exc}); the Z weights "
            f"(w_i = Z_i / mean(Z), gamma {job.params.gamma:g}) were used.", stage="choose_lambdas"))
        choice = search(auto.SearchSettings())
    log.info("lambdas chosen: lambda_chem %.4g, lambda_tv %.4g (%d candidates, %.1f s, %s)",
             choice.lambda_chem, choice.lambda_tv, choice.n_candidates, choice.seconds, choice.criterion)
    resolved = job.with_choice(**choice.fusion_params())
    _write_lambda_score(job.out, choice)
    update_attrs(job.out, **{layout.ATTR_PARAMS: _jsonable(resolved.record()),
                            layout.ATTR_LAMBDA_CHOICE: _jsonable(choice.record())})
    add_warnings(job.out, *_search_warnings(choice), *haadf_fit_warnings(choice.haadf_fit))
    return resolved


#: Side of the central crop the noise model of non-count maps is measured on.
NOISE_CROP = 1024


def haadf_fit_warnings(fit: HaadfFit | None) -> list[dict[str, Any]]:
    """A ``haadf-fit-at-edge`` warning when the fitted HAADF model's ``gamma`` or probe width is the
    largest tried: the misfit was still falling there, and a larger one may describe the HAADF better.

    Examples
    --------
    >>> fit = HaadfFit(weights=(2.0, 0.3), gamma=1.6, probe_sigma=0.5)
    >>> [w["code"] for w in haadf_fit_warnings(fit)], haadf_fit_warnings(None)
    (['haadf-fit-at-edge'], [])
    """
    if fit is None:
        return []
    edges = [f"{name} {value:g} (the largest tried)" for name, value, grid in
             (("gamma", fit.gamma, GAMMAS), ("probe sigma (px)", fit.probe_sigma, PROBE_SIGMAS))
             if value >= max(grid)]
    if not edges:
        return []
    return [make_warning(
        "haadf-fit-at-edge",
        f"the fitted HAADF model chose {' and '.join(edges)}: its misfit was still falling there, so a "
        "larger value may describe this HAADF better; check the fused maps against the Z weights "
        "(--haadf-model z).", stage="choose_lambdas")]


#: The held-out check says the maps are nearly pure noise when its best candidate leaves at least
#: this fraction of the held-out counts' variance unexplained ...
NOISE_ONLY_SCORE = 0.95
#: ... and every candidate scores within this relative spread of the best (synthetic maps down to
#: one count per pixel spread 4 % or more; a 16 x 16 Velox map 0.9 %, test_TEM.bcf 0.3 %)
FLAT_SCORE_SPREAD = 0.02


def noise_only_warning(choice: auto.LambdaChoice) -> dict[str, Any] | None:
    """A ``maps-mostly-noise`` warning when the held-out counts carry almost no signal of their own.

    The automatic weights still do better than fixed ones there (synthetic maps at 0.1-0.3 counts
    per pixel: better than the defaults in 22 of 24 cases, docs/methods/fusion.md "Maps that are
    nearly pure noise"), so they are kept; but the fused maps then come mostly from the HAADF, and
    the user should know it.

    Examples
    --------
    >>> class Choice:
    ...     score = np.array([[0.9840, 0.9845], [0.9838, 0.9901]])
    >>> noise_only_warning(Choice())["code"]
    'maps-mostly-noise'
    >>> Choice.score = np.array([[0.60, 0.70], [0.55, 0.90]])
    >>> noise_only_warning(Choice()) is None
    True
    """
    scores = np.asarray(choice.score, dtype=float)
    scores = scores[np.isfinite(scores)]
    if scores.size < 2:
        return None
    best, spread = float(scores.min()), float((scores.max() - scores.min()) / scores.min())
    if best < NOISE_ONLY_SCORE or spread >= FLAT_SCORE_SPREAD:
        return None
    return make_warning(
        "maps-mostly-noise",
        f"the element maps are nearly pure noise at this dose: on held-out counts the best fused maps "
        f"explain only {100 * (1 - best):.1f} % of the variance, and the {scores.size} weights tried differ "
        f"by {100 * spread:.1f} %. The fused maps come mostly from the HAADF, so the chemistry they show "
        "is only as good as the HAADF model: check them against the raw maps, or bin the data or "
        "record longer", stage="choose_lambdas", explained=round(1 - best, 4), spread=round(spread, 4))


def _search_warnings(choice: auto.LambdaChoice) -> list[dict[str, Any]]:
    """A ``lambda-at-edge`` warning for each weight the widened search still left on an end, and
    :func:`noise_only_warning`."""
    noise = noise_only_warning(choice)
    return ([noise] if noise else []) + [
        make_warning(
            "lambda-at-edge",
            f"the automatic choice put {edge} even after widening the range {choice.widened} "
            "time(s); the held-out score still falls beyond it, so check the fused maps against "
            "the raw maps and consider giving that weight as a number.",
            stage="choose_lambdas", edge=edge, widened=choice.widened,
        )
        for edge in choice.at_edge
    ]


def _fall_back_to_defaults(job: FusionJob, reason: str) -> FusionJob:
    """Auto lambdas on maps whose noise cannot be measured: the embedded defaults, said and stored.

    Maps that are not counts are recorrupted with the noise measured on them
    (:mod:`emfuse.pipeline.fusion.noise`); when too few pixels lie away from exact zeros to
    measure it, the maps are fused with the defaults of :class:`FusionParams`
    instead of being refused, so that the CLI's default ("auto") works on every
    input; the output says so (``lambda_choice`` and a ``lambda-defaults`` warning).
    """
    defaults = FusionParams()
    resolved = job.with_lambdas(
        defaults.lambda_chem if "lambda_chem" in job.auto else job.params.lambda_chem,
        defaults.lambda_tv if "lambda_tv" in job.auto else job.params.lambda_tv,
    )
    choice = {"lambda_chem": resolved.params.lambda_chem, "lambda_tv": resolved.params.lambda_tv,
              "criterion": CRITERION_FALLBACK, "reason": reason}
    update_attrs(job.out, **{layout.ATTR_PARAMS: _jsonable(resolved.record()),
                            layout.ATTR_LAMBDA_CHOICE: choice})
    add_warnings(job.out, make_warning(
        "lambda-defaults",
        f"lambda 'auto' could not choose the weights ({reason}); the embedded defaults "
        f"lambda_chem {resolved.params.lambda_chem:g} and lambda_tv {resolved.params.lambda_tv:g} "
        "were used, so check the fused maps or fuse the raw spectrum image.",
        stage="choose_lambdas"))
    return resolved


def _write_lambda_score(out: str, choice: auto.LambdaChoice) -> None:
    """The score of every candidate as ``lambda_score`` (lambda_chem, lambda_tv), NaN where not tried."""
    score = xr.DataArray(
        choice.score,
        dims=layout.DIMS[layout.LAMBDA_SCORE],
        coords={"lambda_chem": choice.lambda_chem_axis, "lambda_tv": choice.lambda_tv_axis},
        attrs={"long_name": "held-out score (lower is better)", "better": "lower",
               "criterion": choice.criterion,
               "description": "fraction of the held-out counts' variance unexplained by the fused "
                              "training part (affine-calibrated), mean over elements and folds; "
                              "lambdas in full-data units; NaN: not tried"},
    )
    add_variables(out, xr.Dataset({layout.LAMBDA_SCORE: score}))  # keeps the store's attributes


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _check_resolved(job: FusionJob) -> None:
    if not job.resolved:
        raise RuntimeError(f"the lambdas {', '.join(job.auto)} of {job.out} are 'auto' and not chosen "
                           "yet; run choose_lambdas(job, norm) first.")


def _finalise(job: FusionJob, record: TileRecord) -> None:
    """Write the summed cost curves, the convergence checks and the HAADF fit (then the runner
    marks the store complete)."""
    payloads = record.payloads().reshape(-1, len(COST_TERMS), job.params.n_iter)
    per_tile = [p[:, : int(np.sum(~np.isnan(p[0])))] for p in payloads]
    costs = tiled.sum_tile_costs(per_tile, job.params.n_iter)
    # the check users are taught to make by eye on the cost plot, made on the summed curves
    diagnosis = diagnose_convergence(costs, COST_TERMS)
    fit = haadf_fit(job)
    write_region(job.out, layout.COST, (slice(None), slice(None)), costs)
    update_attrs(job.out, **{layout.ATTR_CONVERGENCE: diagnosis, "haadf_unexplained": fit})
    add_warnings(job.out, *(make_warning("not-converged", with_weights_note(m), stage="finalise") for m in diagnosis))
    if fit > POOR_HAADF_FIT:
        add_warnings(job.out, make_warning(
            "poor-haadf-fit",
            f"the fused maps explain only {100 * (1 - fit):.0f} % of the HAADF's variance "
            f"(model vs normalised HAADF after an affine fit; below {100 * (1 - POOR_HAADF_FIT):.0f} % "
            "is flagged), so the HAADF term pulled the maps towards contrast these elements may not "
            "make: check for an element missing from the list, the atomic numbers and the registration "
            "of HAADF and maps.",
            stage="finalise", unexplained=round(fit, 4), threshold=POOR_HAADF_FIT))


#: what raising ``n_iter`` means for the weights. On the published Co3O4/Mn3O4 maps the automatic
#: weights (chosen for 50 iterations) still move at 50; at 200 iterations with the same weights the
#: O map correlates 0.40 with the tutorial's fusion (0.92 at 50), with weights chosen again for 200
#: 0.93 (docs/methods/fusion.md, "Convergence checks").
N_ITER_NOTE = ("; keep the weights 'auto' (the default) when you do, so that they are chosen for the new "
               "n_iter: weights chosen for fewer iterations can over-fit the HAADF at more")


def with_weights_note(message: str) -> str:
    """A convergence message with :data:`N_ITER_NOTE` where it says to raise ``n_iter``.

    Examples
    --------
    >>> with_weights_note("the tv cost has not levelled off (...); raise n_iter").endswith("fit the HAADF at more")
    True
    >>> with_weights_note("it oscillates; raise n_iter_tv, or lower lambda_chem")
    'it oscillates; raise n_iter_tv, or lower lambda_chem'
    """
    return message + N_ITER_NOTE if message.endswith("raise n_iter") else message


def haadf_fit(job: FusionJob) -> float:
    """Fraction of the normalised HAADF's variance the fused maps' HAADF model leaves unexplained
    (:func:`emfuse.pipeline.fusion.model.haadf_unexplained`), over the whole image."""
    out = open_arrays(job.out, layout.HAADF, layout.HAADF_MODEL)
    norm = normalise(job)
    haadf = (out[layout.HAADF] - norm.haadf_offset) / norm.haadf_scale
    return float(da.compute(haadf_unexplained(haadf, out[layout.HAADF_MODEL]))[0])


def summary(job: FusionJob) -> dict[str, Any]:
    """Final costs and, for synthetic data, the error of raw and fused maps against the truth."""
    from emfuse.pipeline.metrics import nrmse

    out = open_arrays(job.out, layout.COST, layout.TRUE_MAPS, layout.MAPS, layout.FUSED, require_complete=True)
    attrs = read_attrs(job.out)
    info: dict[str, Any] = {"store": job.out, "elements": list(job.elements),
                            "final_cost": dict(zip(COST_TERMS, out[layout.COST][:, -1].compute().tolist())),
                            "lambda_chem": job.params.lambda_chem, "lambda_tv": job.params.lambda_tv,
                            "lambda_auto": list(job.auto)}
    if layout.ATTR_LAMBDA_CHOICE in attrs:
        info["lambda_choice"] = attrs[layout.ATTR_LAMBDA_CHOICE]
    info["convergence"] = list(attrs.get(layout.ATTR_CONVERGENCE, []))
    info["devices"] = list(attrs.get(layout.ATTR_DEVICES, []))
    info["tile"] = job.tile
    if layout.ATTR_TILE_CHOICE in attrs:
        info["tile_choice"] = attrs[layout.ATTR_TILE_CHOICE]
    info["warnings"] = read_warnings(job.out)
    if layout.TRUE_MAPS in out:
        # the three stacks in one pass (a read and a compute per element and stack cost 10 times more
        # than the metric on a small dataset); the store's elements are the job's, in its order
        elements = list(job.elements)
        truth, raw, fused = da.compute(*(out[name] for name in (layout.TRUE_MAPS, layout.MAPS, layout.FUSED)))
        info["nrmse_raw"] = {el: nrmse(raw[i], truth[i]) for i, el in enumerate(elements)}
        info["nrmse_fused"] = {el: nrmse(fused[i], truth[i]) for i, el in enumerate(elements)}
    return json.loads(json.dumps(info))


def check_window_fits(job: FusionJob, tile: tiles.Tile, free_bytes: float, device: str = "cuda") -> None:
    """Refuse a tile whose window the GPU cannot hold, by the solver's memory model
    (:mod:`emfuse.pipeline.fusion.memory`), naming the largest tile that fits: a clear error
    instead of a CUDA out-of-memory in the middle of the night.

    Examples
    --------
    >>> check_window_fits(job, job.grid[0], free_bytes=4e9)  # doctest: +SKIP
    """
    masked = layout.HAADF_VALID in zarr.open_group(job.out, mode="r", zarr_format=3)  # as read() finds it
    model = dict(momentum=bool(job.params.tv_momentum), masked=masked)
    ys, xs = tile.window
    need = (ys.stop - ys.start) * (xs.stop - xs.start) * memory.fusion_bytes_per_pixel(len(job.elements), **model)
    if need <= memory.SAFETY * free_bytes:
        return
    fits = memory.largest_tile(free_bytes, len(job.elements), job.halo, **model)
    raise DeviceError(
        f"{job.out}: a tile of {job.tile} px with a {job.halo} px halo needs {need / 1e9:.2f} GB on {device}, "
        f"which has {free_bytes / 1e9:.2f} GB free ({memory.SAFETY:.0%} planned for); rerun with "
        + (f"--tile {fits} (the largest that fits)" if fits else "--device cpu") + ".")


class FusionSpec(TiledJob):
    """The fusion job for the runner (:mod:`emfuse.flows.jobs.runner`): tiles of the image, each
    fused on its window (core + halo) with the dataset-wide normalisation, on CuPy arrays when
    the worker has a GPU."""

    def prepare(self, job: FusionJob, client: Client, *, progress: bool) -> tuple[FusionJob, Normalisation]:
        """Inputs, normalisation and the weights search, each timed; the normalisation is every tile's context."""
        with naming(job.source):
            with timed(job.out, "write_inputs"):
                write_inputs(job)
            with timed(job.out, "normalise"):
                norm = normalise(job)
            with timed(job.out, "choose_lambdas"):
                job = choose_lambdas(job, norm, progress=progress)
        return job, norm

    def n_units(self, job: FusionJob) -> int:
        return len(job.grid)

    def units(self, job: FusionJob) -> list[Unit]:
        _check_resolved(job)  # tiles fused with the placeholders of "auto" weights would be wrong
        return [Unit(tile.index, tile) for tile in job.grid]

    def read(self, job: FusionJob, unit: Unit) -> dict[str, Any]:
        group = zarr.open_group(job.out, mode="r", zarr_format=3)
        ys, xs = unit.region.window
        return {"haadf": group[layout.HAADF][ys, xs], "maps": group[layout.MAPS][:, ys, xs],
                "haadf_valid": group[layout.HAADF_VALID][ys, xs] if layout.HAADF_VALID in group else None}

    def check_memory(self, job: FusionJob, unit: Unit, device: str) -> None:
        check_window_fits(job, unit.region, gpu_free_bytes(), device)

    def process(self, job: FusionJob, unit: Unit, window: dict[str, Any], context: Normalisation,
                device: str) -> UnitOutput:
        tile = unit.region
        result = tiled.fuse_tile(window["haadf"], window["maps"], job.z, tile, context, job.params,
                                 window["haadf_valid"])
        return UnitOutput({layout.FUSED: ((slice(None), *tile.core), result.fused),
                           layout.HAADF_MODEL: (tile.core, result.haadf_model)}, payload=result.costs)

    def finalise(self, job: FusionJob, record: TileRecord) -> None:
        _finalise(job, record)

    def summary(self, job: FusionJob) -> dict[str, Any]:
        return summary(job)


SPEC = FusionSpec(name=JOB, desc="fusing tiles")
