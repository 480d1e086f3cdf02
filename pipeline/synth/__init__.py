"""The simulators: synthetic data with ground truth for the three methods, their tests and benchmarks.

One package holds every generator of synthetic data, so that what the methods are trained,
tested and benchmarked on is found in one place:

=========================  ===================  ==================================================
module                     method               simulates
=========================  ===================  ==================================================
``spectrum_image``         fusion (EDX/EELS)    a spectrum image with its HAADF and the true
                                                concentration maps (columns, particles, layers)
``lazy``                   fusion (EDX/EELS)    the same physics chunk by chunk as Dask arrays,
                                                for datasets larger than memory; map sets
``movie``                  restoration          a drifting low-dose HR-STEM movie with its
                                                noise-free frames and drift (Noise2Noise
                                                adaptation, registration)
``restore_specimens``      restoration          the first training pairs: random HR-STEM/TEM
                                                specimens (crystals, amorphous, points), imaged
                                                and distorted (``make_pair``, ``make_batch``)
``scenes``                 restoration          the broad training distribution: scene families
                                                in S(T)EM, TEM and SEM contrasts; its held-out
                                                families are declared in ``scenes.HELD_OUT``
``distortions``            restoration, AVAE    the physical distortion models of TEM cameras and
                                                S(T)EM scans (``.detector``, ``.tem``, ``.stem``,
                                                ``.post``) and their random composition
                                                (``random_distortion``, ``SETTINGS``)
``tem_modes``              AVAE (TEM modes)     paired BF, DF and HRTEM images of polycrystals
                                                with their projected potential (``MODES``,
                                                ``MATERIALS``, ``simulate_region``)
=========================  ===================  ==================================================

Held out of training: the restoration's families, contrast and distortions in
:data:`emfuse.pipeline.synth.scenes.HELD_OUT` (``emfuse train-restore --hold-out``); the AVAE
holds out whole regions instead (the 70/15/15 split of :mod:`emfuse.pipeline.avae.evaluate`).
Every generator draws from the ``numpy.random.Generator`` or seed it is given, so a seed
gives the same data. The names below are importable from this package; the restoration and
AVAE simulators are imported from their modules. The Dask generators (:mod:`.lazy`) load at
first use, so that importing one simulator does not import Dask.

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

from emfuse._lazy import on_first_use

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

#: The chunked generators (:mod:`.lazy`), loaded at first use: they import dask, which would add
#: seconds to every import of a simulator (restoration training, the AVAE's preprocessing).
_LAZY = ("LazyMapSet", "LazySpectrumImage", "SpecimenMosaic", "lazy_map_set", "lazy_spectrum_image",
         "tile_rng")

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


__getattr__, __dir__ = on_first_use(__name__, {name: (".lazy", name) for name in _LAZY}, globals())
