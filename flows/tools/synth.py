"""``emfuse synth``: synthetic datasets with ground truth, written as canonical stores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from emfuse.errors import InputError
from emfuse.pipeline.synth import (
    SyntheticMovie,
    SyntheticSpectrumImage,
    make_movie,
    make_spectrum_image,
)
from emfuse.pipeline.synth.crystals import FAMILIES
from emfuse.pipeline.synth.tem_modes import MODES, ModeImages, random_region, simulate_region
from emfuse.stores import layout
from emfuse.stores.formats import canonical_dataset
from emfuse.stores.ingest import chunk_canonical
from emfuse.stores.zarrio import provenance, write_dataset

KINDS = ("spectrum-image", "tem-modes", "movie")


def spectrum_image_dataset(data: SyntheticSpectrumImage) -> xr.Dataset:
    """The canonical Dataset of a synthetic spectrum image, its HAADF and its truth."""
    label = f"synthetic {data.specimen} spectrum image (seed {data.seed})"
    ds = canonical_dataset(
        label, haadf=data.haadf, spectrum=data.spectrum, energy=data.energy_ev,
        maps=data.true_maps, elements=data.elements,
        pixel_nm=(data.pixel_size_nm, data.pixel_size_nm), signal_type=data.signal_type,
    )
    # the maps given above are the truth: keep them under the truth's name only
    ds = ds.rename({layout.MAPS: layout.TRUE_MAPS})
    ds[layout.TRUE_HAADF] = (layout.DIMS[layout.TRUE_HAADF], data.true_haadf)
    ds[layout.TRUE_MAPS].attrs["description"] = "concentration used to draw the counts, in [0, 1]"
    ds.attrs.update(provenance(None))
    ds.attrs["synthetic"] = data.params
    ds.attrs[layout.ATTR_ELEMENTS] = list(data.elements)  # what was simulated: fuse maps them by default
    return chunk_canonical(ds)


def tem_modes_dataset(data: ModeImages, seed: int) -> xr.Dataset:
    """The canonical Dataset of simulated BF/DF/HRTEM modes (drifted, raw counts), their flat
    references and their truth."""
    ny, nx = data.truth.shape
    step = float(data.params["pixel_nm"])
    coords = {"mode": list(MODES), "y": ("y", np.arange(ny) * step, {"units": "nm"}),
              "x": ("x", np.arange(nx) * step, {"units": "nm"})}
    ds = xr.Dataset({layout.MODES: (layout.DIMS[layout.MODES], data.modes),
                     layout.TRUE_STRUCTURE: (layout.DIMS[layout.TRUE_STRUCTURE], data.truth)}, coords=coords)
    ds[layout.MODES].attrs.update(units="counts", description="recorded modes: drifted, unevenly lit, noisy")
    ds[layout.MODES].attrs["drift_px"] = {m: data.drift[i].tolist() for i, m in enumerate(MODES)}
    ds[layout.TRUE_STRUCTURE].attrs.update(units="relative", description="projected potential, HRTEM frame")
    if data.illumination is not None:  # what a vacuum reference with each mode's beam records
        ds[layout.FLAT_REFERENCE] = (layout.DIMS[layout.FLAT_REFERENCE], data.illumination)
        ds[layout.FLAT_REFERENCE].attrs.update(units="relative", description="each mode's illumination "
                                               "without specimen (flat / vacuum reference), mean 1")
    ds.attrs.update(provenance(None))
    ds.attrs["source_label"] = f"synthetic {data.material} TEM modes (seed {seed})"
    ds.attrs["synthetic"] = {**data.params, "seed": seed}
    return chunk_canonical(ds)


def movie_dataset(data: SyntheticMovie) -> xr.Dataset:
    """The canonical Dataset of a synthetic movie (counts), its noise-free frames and its drift."""
    label = f"synthetic HR-STEM movie (seed {data.seed})"
    ds = canonical_dataset(label, movie=data.movie, pixel_nm=(data.pixel_size_nm, data.pixel_size_nm))
    # what ingest keeps of a real file's image, so that `--model auto` knows it as it would a real
    # HAADF movie (instead of guessing STEM from nothing and warning)
    ds[layout.MOVIE].attrs.update(units="counts", acquisition_mode="STEM", detector="HAADF")
    ds[layout.TRUE_MOVIE] = (layout.DIMS[layout.TRUE_MOVIE], data.true_movie,
                             {"units": "counts", "description": "expected counts (noise-free frames)"})
    ds[layout.TRUE_DRIFT] = (layout.DIMS[layout.TRUE_DRIFT], data.drift,
                             {"units": "px", "description": "specimen drift against frame 0, (dy, dx)"})
    ds = ds.assign_coords(axis=["y", "x"])
    ds.attrs.update(provenance(None))
    ds.attrs["synthetic"] = data.params
    return chunk_canonical(ds)


def write_synthetic(
    kind: str,
    out: str | Path,
    *,
    shape: Sequence[int] = (256, 256),
    elements: Sequence[str] | None = None,
    specimen: str = "columns",
    dose: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Generate a synthetic dataset of ``kind`` and write it as a canonical store.

    Examples
    --------
    >>> write_synthetic("spectrum-image", "si.zarr", shape=(64, 64), elements=["Sr", "Ti", "O"])  # doctest: +SKIP
    >>> write_synthetic("tem-modes", "tem.zarr", shape=(256, 256), material="ceramic")  # doctest: +SKIP

    For ``movie``, ``frames`` (option, default 8) sets the number of frames.
    For ``tem-modes``, ``material`` (option) picks the class of
    :data:`emfuse.pipeline.synth.tem_modes.MATERIALS` (default metal), or a structure family of
    :data:`emfuse.pipeline.synth.crystals.FAMILIES` (the randomised simulator: the seed draws the
    compound, zone axis, instrument and pixel size), and ``dose`` fixes the HRTEM dose.
    """
    if kind not in KINDS:
        raise InputError(f"unknown synthetic dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    material = options.pop("material", None)  # tem-modes only
    frames = options.pop("frames", None)  # movie only
    if kind == "movie":
        data = make_movie(tuple(shape), n_frames=frames or 8, dose=dose, seed=seed)
        return write_dataset(movie_dataset(data), out, overwrite=overwrite)
    if kind == "tem-modes":
        material = material or "metal"
        rng = np.random.default_rng(seed)
        data = (random_region(tuple(shape), material, rng, hrtem_dose=dose) if material in FAMILIES
                else simulate_region(tuple(shape), material, rng, hrtem_dose=dose))
        return write_dataset(tem_modes_dataset(data, seed), out, overwrite=overwrite)
    kwargs: dict[str, Any] = dict(specimen=specimen, dose=dose, seed=seed, **options)
    if elements:
        kwargs["elements"] = tuple(elements)
    data = make_spectrum_image(tuple(shape), **kwargs)
    return write_dataset(spectrum_image_dataset(data), out, overwrite=overwrite)
