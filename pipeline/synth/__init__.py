"""Synthetic datasets with ground truth, for the demo, the tests and the benchmarks.

Examples
--------
>>> from pipeline.synth import make_spectrum_image
>>> data = make_spectrum_image((32, 32), n_channels=256, seed=1)
>>> data.spectrum.shape, data.true_maps.shape
((32, 32, 256), (3, 32, 32))
"""

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
    "SyntheticSpectrumImage",
    "dataset_nbytes",
    "make_spectrum_image",
    "specimen_maps",
]
