"""Synthetic datasets with ground truth, for the demo, the tests and the benchmarks.

Examples
--------
>>> from emfuse.pipeline.synth import make_spectrum_image
>>> data = make_spectrum_image((32, 32), n_channels=256, seed=1)
>>> data.spectrum.shape, data.true_maps.shape
((32, 32, 256), (3, 32, 32))

Datasets larger than memory are generated chunk by chunk as Dask arrays:

>>> from emfuse.pipeline.synth import lazy_spectrum_image
>>> lazy_spectrum_image((1024, 1024), n_channels=2048).spectrum.chunksize
(64, 64, 2048)

A drifting low-dose HR-STEM movie with its noise-free frames and drift:

>>> from emfuse.pipeline.synth import make_movie
>>> make_movie((64, 64), n_frames=4).movie.shape
(4, 64, 64)
"""

from .lazy import (
    LazyMapSet,
    LazySpectrumImage,
    SpecimenMosaic,
    lazy_map_set,
    lazy_spectrum_image,
    tile_rng,
)
from .movie import SyntheticMovie, make_movie
from .spectrum_image import (
    DEFAULT_DOSE,
    DEFAULT_PIXEL_SIZE_NM,
    SPECIMENS,
    SyntheticSpectrumImage,
    dataset_nbytes,
    make_spectrum_image,
    specimen_maps,
)

__all__ = [
    "DEFAULT_DOSE",
    "DEFAULT_PIXEL_SIZE_NM",
    "SPECIMENS",
    "LazyMapSet",
    "LazySpectrumImage",
    "SpecimenMosaic",
    "SyntheticMovie",
    "SyntheticSpectrumImage",
    "dataset_nbytes",
    "lazy_map_set",
    "lazy_spectrum_image",
    "make_movie",
    "make_spectrum_image",
    "specimen_maps",
    "tile_rng",
]
