"""The fusion job as plain functions: canonical store in, output store out, resumable.

Stages (each skipped on a rerun once recorded as done in the output store):

1. ``plan``: open the input, choose the maps (stored maps, or maps integrated
   from the spectrum image), create the output store from a template;
2. ``write_inputs``: the HAADF and raw maps (and the truth of synthetic data)
   are copied into the output store, so it is self-contained;
3. ``normalise``: one pass for the dataset-wide min/max (and the NaN/Inf and
   negative-count checks) that every tile then shares;
4. ``fuse_tiles``: one Dask task per unfinished tile reads its window from the
   output store, fuses it and writes its core, then records it as done;
5. ``finalise``: the cost curves are assembled and ``complete = true`` is set.

:mod:`flows.fusion_flow` wraps these stages as Prefect tasks; tests and
notebooks can call :func:`run_fusion` without Prefect.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from distributed import Client, as_completed
from tqdm.auto import tqdm

from pipeline import elements as periodic
from pipeline import spectra, tiles
from pipeline.fusion import COST_TERMS, FusionInputError, FusionParams, Normalisation
from stores import layout
from stores.outputs import empty_like, prepare_output, write_region, write_variable
from stores.progress import TileRecord
from stores.zarrio import mark_complete, open_dataset, update_attrs

log = logging.getLogger(__name__)
JOB = "fuse"


@dataclass(frozen=True)
class FusionJob:
    """Everything that defines one fusion run (stored as the output's ``params``)."""

    source: str
    out: str
    elements: tuple[str, ...]
    z: tuple[int, ...]
    params: FusionParams
    tile: int = 512
    halo: int = 32
    windows: dict[str, tuple[float, float]] | None = None

    def record(self) -> dict[str, Any]:
        """The parameters written to (and compared with) the output store."""
        return {
            **self.params.to_dict(),
            "elements": list(self.elements),
            "z": list(self.z),
            "tile": self.tile,
            "halo": self.halo,
            "windows": self.windows,
        }

    @property
    def grid(self) -> list[tiles.Tile]:
        ds = open_dataset(self.out, require_complete=False)
        return tiles.tile_grid((ds.sizes["y"], ds.sizes["x"]), self.tile, self.halo)


def input_maps(
    ds: xr.Dataset,
    elements: Sequence[str] | None,
    windows: dict[str, tuple[float, float]] | None = None,
) -> xr.DataArray:
    """The raw elemental maps (element, y, x) of a canonical dataset, lazily.

    Stored ``maps`` are used when they hold the requested elements; otherwise
    the maps are integrated from the ``spectrum`` (which needs ``elements``).
    """
    wanted = periodic.validate_elements(elements) if elements else None
    if layout.MAPS in ds and (wanted is None or set(wanted) <= set(ds[layout.MAPS].element.values)):
        maps = ds[layout.MAPS]
        return maps.sel(element=list(wanted)) if wanted else maps
    if layout.SPECTRUM not in ds:
        have = sorted(ds[layout.MAPS].element.values) if layout.MAPS in ds else []
        raise FusionInputError(
            f"the dataset has no spectrum image and no maps for {list(wanted or [])} "
            f"(maps present: {have}); ingest a file with an EDX/EELS spectrum image or "
            "elemental maps, or choose --elements among the maps present."
        )
    if wanted is None:
        raise FusionInputError(
            "the dataset holds a spectrum image but no elements were named; "
            "pass the elements to map, e.g. --elements Fe O."
        )
    spectrum = ds[layout.SPECTRUM].transpose("y", "x", "energy")
    signal = str(ds.attrs.get(layout.ATTR_SIGNAL, spectrum.attrs.get(layout.ATTR_SIGNAL, "EDX")))
    data, _info = spectra.elemental_maps(
        spectrum.data, np.asarray(ds["energy"].values, dtype=np.float64), wanted,
        signal_type=signal, windows=windows,
    )
    return xr.DataArray(
        data,
        dims=("element", "y", "x"),
        coords={"element": list(wanted), "z": ("element", [periodic.atomic_number(e) for e in wanted]),
                "y": ds["y"], "x": ds["x"]},
        attrs={"units": "counts"},
    )


def plan(
    source: str | Path,
    out: str | Path,
    *,
    elements: Sequence[str] | None = None,
    params: dict[str, Any] | None = None,
    tile: int = 512,
    halo: int = 32,
    windows: dict[str, tuple[float, float]] | None = None,
    overwrite: bool = False,
) -> tuple[FusionJob, str]:
    """Define the job and create (or reopen) its output store.

    Returns the job and the output's state: ``"new"``, ``"resume"`` or ``"complete"``.
    """
    ds = open_dataset(source)
    if layout.HAADF not in ds:
        raise FusionInputError(
            f"{source} has no HAADF image; fusion needs a HAADF (or other Z-contrast image) "
            "of the same pixels as the maps."
        )
    maps = input_maps(ds, elements, windows)
    names = tuple(str(e) for e in maps.element.values)
    if len(set(names)) != len(names):
        raise FusionInputError(f"element listed twice in {list(names)}; name each element once.")
    z = tuple(int(v) for v in maps["z"].values)
    job = FusionJob(str(source), str(out), names, z, FusionParams(**(params or {})), tile, halo, windows)
    state = prepare_output(out, _template(ds, maps, job), job.record(), source=source, overwrite=overwrite)
    if state != "complete":
        grid = tiles.tile_grid((ds.sizes["y"], ds.sizes["x"]), tile, halo)
        shape = (grid[-1].index[0] + 1, grid[-1].index[1] + 1)
        TileRecord.create(out, JOB, shape, payload_shape=(len(COST_TERMS), job.params.n_iter))
    return job, state


def _template(ds: xr.Dataset, maps: xr.DataArray, job: FusionJob) -> xr.Dataset:
    ny, nx, n_el = ds.sizes["y"], ds.sizes["x"], len(job.elements)
    t = job.tile
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
    template[layout.MAPS].attrs.update(units="counts", description="raw elemental maps")
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
    write_variable(job.out, layout.MAPS, input_maps(ds, job.elements, job.windows).data)
    out_vars = zarr.open_group(job.out, mode="r", zarr_format=3)
    if layout.TRUE_MAPS in out_vars:
        truth = ds[layout.TRUE_MAPS].sel(element=list(job.elements)).transpose("element", "y", "x")
        write_variable(job.out, layout.TRUE_MAPS, truth.data)
    record.mark_stage("inputs")


def normalise(job: FusionJob) -> Normalisation:
    """Dataset-wide min-max ranges, with the checks that need a pass over the data."""
    attrs = zarr.open_group(job.out, mode="r", zarr_format=3).attrs
    if "normalisation" in attrs:
        return Normalisation(**{k: tuple(v) if isinstance(v, list) else v for k, v in attrs["normalisation"].items()})
    out = open_dataset(job.out, require_complete=False)
    haadf, maps = out[layout.HAADF].data, out[layout.MAPS].data
    h_lo, h_hi, m_lo, m_hi = da.compute(haadf.min(), haadf.max(), maps.min(axis=(1, 2)), maps.max(axis=(1, 2)))
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
    norm = Normalisation.from_ranges((h_lo, h_hi), list(zip(m_lo, m_hi)), job.elements)
    update_attrs(job.out, normalisation=dataclasses.asdict(norm))
    return norm


def fuse_tile_in_store(job: FusionJob, tile: tiles.Tile, norm: Normalisation) -> tuple[int, int]:
    """Worker task: fuse one tile's window from the output store and write its core."""
    group = zarr.open_group(job.out, mode="r", zarr_format=3)
    ys, xs = tile.window
    result = tiles.fuse_tile(
        group[layout.HAADF][ys, xs], group[layout.MAPS][:, ys, xs], job.z, tile, norm, job.params
    )
    write_region(job.out, layout.FUSED, (slice(None), *tile.core), result.fused)
    write_region(job.out, layout.HAADF_MODEL, tile.core, result.haadf_model)
    TileRecord.open(job.out, JOB).mark(tile.index, result.costs)
    return tile.index


def fuse_tiles(job: FusionJob, norm: Normalisation, client: Client, *, progress: bool = True) -> int:
    """Fuse every unfinished tile on the cluster; returns how many were computed now."""
    done = TileRecord.open(job.out, JOB).done_tiles()
    todo = [t for t in job.grid if t.index not in done]
    if not todo:
        return 0
    futures = client.map(fuse_tile_in_store, [job] * len(todo), todo, [norm] * len(todo), pure=False)
    with tqdm(total=len(todo), desc="fusing tiles", unit="tile", disable=not progress) as bar:
        for future in as_completed(futures):
            future.result()  # re-raises a worker's error here, naming it
            bar.update()
    return len(todo)


def finalise(job: FusionJob) -> None:
    """Write the summed cost curves, then mark the store complete."""
    record = TileRecord.open(job.out, JOB)
    grid_shape = record.grid_shape
    if len(record.done_tiles()) != grid_shape[0] * grid_shape[1]:
        raise RuntimeError(f"{job.out}: not every tile is finished; rerun to complete it.")
    payloads = record.payloads().reshape(-1, len(COST_TERMS), job.params.n_iter)
    per_tile = [p[:, : int(np.sum(~np.isnan(p[0])))] for p in payloads]
    write_region(job.out, layout.COST, (slice(None), slice(None)), tiles.sum_tile_costs(per_tile, job.params.n_iter))
    mark_complete(job.out)


def summary(job: FusionJob) -> dict[str, Any]:
    """Final costs and, for synthetic data, the error of raw and fused maps against the truth."""
    from pipeline.metrics import nrmse

    out = open_dataset(job.out)
    info: dict[str, Any] = {"store": job.out, "elements": list(job.elements),
                            "final_cost": dict(zip(COST_TERMS, out[layout.COST].values[:, -1].tolist()))}
    if layout.TRUE_MAPS in out:
        info["nrmse_raw"], info["nrmse_fused"] = {}, {}
        for el in job.elements:
            truth = out[layout.TRUE_MAPS].sel(element=el).values
            info["nrmse_raw"][el] = nrmse(out[layout.MAPS].sel(element=el).values, truth)
            info["nrmse_fused"][el] = nrmse(out[layout.FUSED].sel(element=el).values, truth)
    return json.loads(json.dumps(info))


def run_fusion(
    source: str | Path,
    out: str | Path,
    client: Client,
    *,
    progress: bool = True,
    **plan_kwargs: Any,
) -> FusionJob:
    """Run every stage of the fusion job on ``client`` (no Prefect involved)."""
    job, state = plan(source, out, **plan_kwargs)
    if state == "complete":
        log.info("%s is already complete with these parameters; nothing to do", out)
        return job
    write_inputs(job)
    norm = normalise(job)
    fuse_tiles(job, norm, client, progress=progress)
    finalise(job)
    return job
