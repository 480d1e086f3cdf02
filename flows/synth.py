"""``emfuse synth``: synthetic datasets with ground truth, written as canonical stores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from pipeline.synth import SyntheticSpectrumImage, make_spectrum_image
from stores import layout
from stores.formats import canonical_dataset
from stores.ingest import chunk_canonical
from stores.zarrio import provenance, write_dataset

KINDS = ("spectrum-image",)


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
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    kwargs: dict[str, Any] = dict(specimen=specimen, dose=dose, seed=seed, **options)
    if elements:
        kwargs["elements"] = tuple(elements)
    data = make_spectrum_image(tuple(shape), **kwargs)
    return write_dataset(spectrum_image_dataset(data), out, overwrite=overwrite)
