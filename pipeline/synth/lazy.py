"""Synthetic datasets of any size, generated chunk by chunk as lazy Dask arrays.

:func:`make_spectrum_image` builds a whole dataset in memory; that stops at a few GB. The
generators here build the same physics one tile at a time, so a 1024 x 1024 x 2048 spectrum
image (4 GiB) or an 8192 x 8192 map set streams into a Zarr store with a few tens of MB per
task, on any Dask scheduler.

The specimen is a *mosaic*: the image is cut into square specimen tiles of ``specimen_tile``
pixels, and tile (row, col) holds its own specimen, ``specimen_maps((tile, tile), ...)`` drawn
from a seed derived from ``(seed, row, col)`` (neighbouring tiles are independent specimens,
so there are seams at tile borders). Every random draw is keyed by where it is, never by the
order in which chunks are computed:

* specimen of a tile: ``(seed, "specimen", row, col)``; HAADF noise of a tile:
  ``(seed, "haadf", row, col)``; map noise of a tile: ``(seed, "maps", row, col)``. Each is
  drawn for the whole tile and then cropped to the image, so the truth does not depend on the
  image size and nothing depends on the Dask chunks.
* spectrum counts of a chunk: ``(seed, "spectrum", y0, x0)`` where (y0, x0) is the chunk's
  first pixel; the counts therefore depend on the spectrum chunks (same chunks, same counts).

What :func:`make_spectrum_image` computes from the whole image, the lazy generators calibrate
once, on up to ``calibration_tiles`` specimen tiles spread over the image (all of them when
there are no more): the mean characteristic signal and mean mass thickness that set the dose
scales, and the maximum and mean of the HAADF that set its normalisation and noise level. With
every tile calibrated the dose is exact; with a sample it is exact in expectation.

Physics per chunk is the eager generator's own code (:mod:`emfuse.pipeline.synth.spectrum_image`): the
same line profiles, bremsstrahlung or EELS background, dose scaling, Poisson draws in row slabs,
probe blur and HAADF noise model.

Examples
--------
>>> si = lazy_spectrum_image((256, 256), n_channels=512, chunks=64, specimen_tile=128, seed=1)
>>> si.spectrum.chunksize, si.haadf.chunksize
((64, 64, 512), (128, 128))
>>> ms = lazy_map_set((1024, 1024), ("Sr", "Ti", "O", "Ca"), specimen_tile=512, seed=2)
>>> ms.maps.shape, ms.maps.chunksize, str(ms.maps.dtype)
((4, 1024, 1024), (4, 512, 512), 'float32')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ...errors import InputError
from ..elements import atomic_number, validate_elements
from ..spectra import FWHM_MNKA_EV
from .spectrum_image import (
    _HAADF_OFFSET,
    DEFAULT_PIXEL_SIZE_NM,
    SPECIMENS,
    _check_parameters,
    _check_shape,
    _draw_spectrum,
    _haadf_noise,
    _haadf_signal,
    _pixel_features,
    _spectral_model,
    _spectrum_weights,
    specimen_maps,
)

__all__ = [
    "DEFAULT_CALIBRATION_TILES",
    "DEFAULT_SPECIMEN_TILE",
    "LazyMapSet",
    "LazySpectrumImage",
    "SpecimenMosaic",
    "lazy_map_set",
    "lazy_spectrum_image",
    "tile_rng",
]

#: Default size of a specimen tile (px); also the (y, x) chunk of the images (the canonical
#: image chunk of emfuse stores).
DEFAULT_SPECIMEN_TILE = 512
#: Default number of specimen tiles the dose and HAADF scales are calibrated on.
DEFAULT_CALIBRATION_TILES = 16

# Independent random streams, keyed with a position (see the module notes).
_STREAM_SPECIMEN, _STREAM_SPECTRUM, _STREAM_HAADF, _STREAM_MAPS = 0, 1, 2, 3


def tile_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """The random generator of one stream at one position: ``SeedSequence(seed, (stream, *key))``.

    Examples
    --------
    >>> a = tile_rng(1, 0, 2, 3).random()
    >>> a == tile_rng(1, 0, 2, 3).random(), a == tile_rng(1, 0, 3, 2).random()
    (True, False)
    """
    spawn_key = (int(stream), *(int(k) for k in key))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=spawn_key))


@dataclass(frozen=True)
class SpecimenMosaic:
    """A specimen made of independent square tiles; any tile can be rebuilt anywhere from this.

    Attributes
    ----------
    shape : (int, int)
        Image shape (y, x).
    tile : int
        Specimen tile size, px (the last row/column of tiles is cropped to the image).
    z : tuple of int
        Atomic numbers, in map order.
    specimen : str
        'columns', 'particles' or 'layers' (see :func:`emfuse.pipeline.synth.specimen_maps`).
    pixel_size_nm : float
    seed : int
    """

    shape: tuple[int, int]
    tile: int
    z: tuple[int, ...]
    specimen: str
    pixel_size_nm: float
    seed: int

    @property
    def grid(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return (math.ceil(self.shape[0] / self.tile), math.ceil(self.shape[1] / self.tile))

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (y, x) chunks of an image chunked by tile."""
        return tuple(
            tuple(min(self.tile, n - start) for start in range(0, n, self.tile)) for n in self.shape
        )  # type: ignore[return-value]

    def crop(self, row: int, col: int) -> tuple[slice, slice]:
        """The part of the full tile (row, col) that lies inside the image, tile coordinates."""
        return (slice(0, min(self.tile, self.shape[0] - row * self.tile)),
                slice(0, min(self.tile, self.shape[1] - col * self.tile)))

    def specimen_tile(self, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Full-size (uncropped) concentration maps (element, t, t) and support (t, t) of a tile."""
        return specimen_maps((self.tile, self.tile), len(self.z), self.specimen,
                             pixel_size_nm=self.pixel_size_nm,
                             seed=tile_rng(self.seed, _STREAM_SPECIMEN, row, col))

    def sample(self, max_tiles: int) -> list[tuple[int, int]]:
        """Up to `max_tiles` tiles spread evenly over the grid (all of them if no more)."""
        rows, cols = self.grid
        n = rows * cols
        flat = range(n) if n <= max_tiles else np.unique(np.linspace(0, n - 1, max_tiles).round())
        return [divmod(int(i), cols) for i in flat]


@dataclass(frozen=True)
class _Calibration:
    """Whole-image quantities that the eager generator computes from the full arrays."""

    haadf_scale: float  # max of the probe-blurred Z-contrast (normalises the HAADF to ~1)
    haadf_mean: float  # mean of the true HAADF (sets the noise level)
    mean_signal: float  # mean of sum_i c_i * sum(profile_i) (sets the signal dose scale)
    mean_thickness: float  # mean Z-weighted mass thickness (sets the background dose scale)
    tiles: int  # how many tiles the numbers come from


def _calibrate(mosaic: SpecimenMosaic, max_tiles: int,
               profile_sums: np.ndarray | None = None) -> _Calibration:
    """Calibrate on a sample of tiles, one tile in memory at a time."""
    n_px = 0
    blurred_max, blurred_sum, signal_sum, thickness_sum = 0.0, 0.0, 0.0, 0.0
    sample = mosaic.sample(max_tiles)
    for row, col in sample:
        maps, support = mosaic.specimen_tile(row, col)
        ys, xs = mosaic.crop(row, col)
        blurred = _haadf_signal(maps, support, mosaic.z)[ys, xs]
        maps, support = maps[:, ys, xs], support[ys, xs]
        n_px += blurred.size
        blurred_max = max(blurred_max, float(blurred.max()))
        blurred_sum += float(blurred.sum())
        if profile_sums is not None:
            flat_maps, thickness = _pixel_features(maps, support, mosaic.z)
            signal_sum += float((flat_maps @ profile_sums).sum())
            thickness_sum += float(thickness.sum())
    scale = max(blurred_max, 1e-12)
    return _Calibration(
        haadf_scale=scale,
        haadf_mean=blurred_sum / n_px / scale + _HAADF_OFFSET,
        mean_signal=signal_sum / n_px,
        mean_thickness=thickness_sum / n_px,
        tiles=len(sample),
    )


def _haadf_tile(mosaic: SpecimenMosaic, calib: _Calibration, snr: float, row: int, col: int,
                maps: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noisy and true HAADF of a full tile (float64), scaled with the whole image's numbers."""
    true = _haadf_signal(maps, support, mosaic.z) / calib.haadf_scale + _HAADF_OFFSET
    noisy = _haadf_noise(true, calib.haadf_mean, snr,
                         tile_rng(mosaic.seed, _STREAM_HAADF, row, col))
    return noisy, true


def _si_tile_block(mosaic: SpecimenMosaic, calib: _Calibration, snr: float,
                   block_info: dict | None = None) -> np.ndarray:
    """Planes (true maps..., support, haadf, true haadf) float32 of one tile, cropped."""
    _, row, col = block_info[None]["chunk-location"]
    maps, support = mosaic.specimen_tile(row, col)
    haadf, true_haadf = _haadf_tile(mosaic, calib, snr, row, col, maps, support)
    ys, xs = mosaic.crop(row, col)
    planes = np.concatenate([maps, support[None], haadf[None], true_haadf[None]])
    return np.ascontiguousarray(planes[:, ys, xs], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class _SpectrumKernel:
    """Everything a spectrum chunk needs besides its specimen (held once in the graph)."""

    z: tuple[int, ...]
    weights: np.ndarray  # (n_elements + 1, n_channels)
    dose: float
    seed: int


def _spectrum_block(planes: np.ndarray, kernel: _SpectrumKernel,
                    block_info: dict | None = None) -> np.ndarray:
    """Counts (y, x, energy) uint16 of one chunk from its planes (true maps..., support)."""
    y0, x0 = (loc[0] for loc in block_info[0]["array-location"][1:])
    n = len(kernel.z)
    maps, support = planes[:n], planes[n]
    flat_maps, thickness = _pixel_features(maps, support, kernel.z)
    features_px = np.hstack([flat_maps, thickness.reshape(-1, 1)])
    rng = tile_rng(kernel.seed, _STREAM_SPECTRUM, y0, x0)
    return _draw_spectrum(features_px, kernel.weights, support.shape, rng, kernel.dose)


def _check_tile(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 8:
        raise InputError(f"{name} must be an integer of at least 8 pixels, got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class LazySpectrumImage:
    """A synthetic spectrum image as Dask arrays (fields as :class:`SyntheticSpectrumImage`).

    Attributes
    ----------
    haadf, true_haadf : dask array (y, x) float32, chunked by specimen tile
    spectrum : dask array (y, x, energy) uint16, chunked (chunks, chunks, n_channels)
    energy_ev : ndarray (energy,) float64
    elements : tuple of str
    z : ndarray (element,) int64
    true_maps : dask array (element, y, x) float32, chunked by specimen tile
    pixel_size_nm, signal_type, dose, specimen, seed, params
        As for :class:`emfuse.pipeline.synth.SyntheticSpectrumImage`; ``params`` adds the tiling
        and the calibration.
    """

    haadf: da.Array
    spectrum: da.Array
    energy_ev: np.ndarray
    elements: tuple[str, ...]
    z: np.ndarray
    true_maps: da.Array
    true_haadf: da.Array
    pixel_size_nm: float
    signal_type: str
    dose: float
    specimen: str = "columns"
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (y, x)."""
        return tuple(self.haadf.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes the arrays hold once computed."""
        return sum(int(a.nbytes) for a in (self.haadf, self.spectrum, self.energy_ev, self.z,
                                           self.true_maps, self.true_haadf))


def lazy_spectrum_image(
    shape: tuple[int, int] = (256, 256),
    elements: Sequence[str] | str = ("Sr", "Ti", "O"),
    *,
    chunks: int = 64,
    specimen_tile: int = DEFAULT_SPECIMEN_TILE,
    specimen: str = "columns",
    dose: float | None = None,
    n_channels: int = 1024,
    energy_range_ev: tuple[float, float] | None = None,
    signal_type: str = "EDX",
    haadf_snr: float = 20.0,
    pixel_size_nm: float | None = None,
    seed: int = 0,
    fwhm_mnka_ev: float = FWHM_MNKA_EV,
    beam_energy_kev: float = 200.0,
    background_fraction: float | None = None,
    calibration_tiles: int = DEFAULT_CALIBRATION_TILES,
) -> LazySpectrumImage:
    """A synthetic spectrum image of any size, generated chunk by chunk when computed.

    Parameters are those of :func:`emfuse.pipeline.synth.make_spectrum_image`, plus:

    Parameters
    ----------
    chunks : int
        (y, x) chunk of the spectrum, px (the energy axis is one chunk; 64 is the canonical
        spectrum chunk: 64 x 64 x 2048 uint16 = 16 MiB).
    specimen_tile : int
        Size of a specimen tile, px (>= 8), and the (y, x) chunk of the images. The specimen
        of each tile is independent (see the module notes).
    calibration_tiles : int
        The dose and HAADF scales are calibrated on this many tiles at most (in this process,
        one tile at a time; a 512 px tile takes ~0.1 s).

    Returns
    -------
    LazySpectrumImage
        Nothing but the calibration tiles is computed until the arrays are.

    Raises
    ------
    ValueError
        Bad parameters (as for :func:`make_spectrum_image`); a dose too high for 16-bit counts
        is found chunk by chunk, when the spectrum is computed.

    Examples
    --------
    >>> si = lazy_spectrum_image((64, 64), n_channels=256, chunks=32, specimen_tile=64)
    >>> spectrum = si.spectrum.compute()
    >>> spectrum.shape, spectrum.dtype, round(float(spectrum.sum(axis=-1).mean()))
    ((64, 64, 256), dtype('uint16'), 10)
    """
    symbols, mode, (ny, nx), dose, n_channels, fb = _check_parameters(
        shape, elements, specimen, dose, n_channels, signal_type, haadf_snr, background_fraction)
    chunks = _check_tile(chunks, "chunks")
    tile = _check_tile(specimen_tile, "specimen_tile")
    if int(calibration_tiles) < 1:
        raise InputError(f"calibration_tiles must be >= 1, got {calibration_tiles}")
    model = _spectral_model(symbols, mode, n_channels, energy_range_ev, fwhm_mnka_ev,
                            beam_energy_kev)
    z = np.array([atomic_number(s) for s in symbols], dtype=np.int64)
    pixel_nm = DEFAULT_PIXEL_SIZE_NM[specimen] if pixel_size_nm is None else float(pixel_size_nm)
    if not pixel_nm > 0:
        raise InputError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    mosaic = SpecimenMosaic((ny, nx), tile, tuple(int(v) for v in z), specimen, pixel_nm, int(seed))
    calib = _calibrate(mosaic, int(calibration_tiles), model.profiles.sum(axis=1))
    kernel = _SpectrumKernel(mosaic.z, _spectrum_weights(model, dose, fb, calib.mean_signal,
                                                         calib.mean_thickness), dose, int(seed))

    n = len(symbols)
    token = tokenize(mosaic, calib, float(haadf_snr))
    planes = da.map_blocks(
        _si_tile_block, mosaic, calib, float(haadf_snr), chunks=((n + 3,), *mosaic.chunks),
        dtype=np.float32, meta=np.empty((0, 0, 0), np.float32), name=f"synth-si-tiles-{token}",
    )
    spectrum_chunks = tuple(
        tuple(min(chunks, size - start) for start in range(0, size, chunks)) for size in (ny, nx)
    )
    specimen_planes = planes[: n + 1].rechunk(((n + 1,), *spectrum_chunks))
    spectrum = da.map_blocks(
        _spectrum_block, specimen_planes, kernel, drop_axis=0, new_axis=2,
        chunks=(*spectrum_chunks, (n_channels,)), dtype=np.uint16,
        meta=np.empty((0, 0, 0), np.uint16),
        name=f"synth-si-spectrum-{tokenize(token, kernel.weights, dose, chunks)}",
    )
    lo, hi = model.energy_range_ev
    params = {
        "generator": "emfuse.pipeline.synth.lazy_spectrum_image",
        "specimen": specimen,
        "elements": list(symbols),
        "shape": [ny, nx],
        "dose": dose,
        "dose_definition": "mean expected counts per pixel over the whole recorded spectrum",
        "n_channels": n_channels,
        "energy_range_ev": [lo, hi],
        "signal_type": mode,
        "haadf_snr": float(haadf_snr),
        "pixel_size_nm": pixel_nm,
        "seed": int(seed),
        "fwhm_mnka_ev": float(fwhm_mnka_ev),
        "beam_energy_kev": float(beam_energy_kev),
        "background_fraction": fb,
        "features_ev": {s: {k: float(v) for k, v in f.items()} for s, f in model.features.items()},
        "chunks": chunks,
        "specimen_tile": tile,
        "calibration_tiles": calib.tiles,
    }
    return LazySpectrumImage(
        haadf=planes[n + 1], spectrum=spectrum, energy_ev=model.energy, elements=symbols, z=z,
        true_maps=planes[:n], true_haadf=planes[n + 2], pixel_size_nm=pixel_nm,
        signal_type=mode, dose=dose, specimen=specimen, seed=int(seed), params=params,
    )


# --------------------------------------------------------------------------------------------
# Map sets: HAADF and noisy elemental maps without a spectrum
# --------------------------------------------------------------------------------------------
def _map_tile_block(mosaic: SpecimenMosaic, calib: _Calibration, snr: float, dose: float,
                    background: float, block_info: dict | None = None) -> np.ndarray:
    """Planes (maps..., true maps..., haadf, true haadf) float32 of one tile, cropped."""
    _, row, col = block_info[None]["chunk-location"]
    truth, support = mosaic.specimen_tile(row, col)
    haadf, true_haadf = _haadf_tile(mosaic, calib, snr, row, col, truth, support)
    expected = dose * truth.astype(np.float64) + background
    counts = tile_rng(mosaic.seed, _STREAM_MAPS, row, col).poisson(expected)
    ys, xs = mosaic.crop(row, col)
    planes = np.concatenate([counts, truth, haadf[None], true_haadf[None]])
    return np.ascontiguousarray(planes[:, ys, xs], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class LazyMapSet:
    """A synthetic HAADF and elemental-map set as Dask arrays (chunked by specimen tile).

    Attributes
    ----------
    haadf, true_haadf : dask array (y, x) float32
    maps : dask array (element, y, x) float32
        Counts: Poisson draws of ``dose * true_maps + background``.
    true_maps : dask array (element, y, x) float32
        Concentrations in [0, 1].
    elements : tuple of str
    z : ndarray (element,) int64
    pixel_size_nm, dose, background, specimen, seed
    params : dict
        Every generator parameter (JSON-able).
    """

    haadf: da.Array
    maps: da.Array
    elements: tuple[str, ...]
    z: np.ndarray
    true_maps: da.Array
    true_haadf: da.Array
    pixel_size_nm: float
    dose: float
    background: float
    specimen: str = "columns"
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (y, x)."""
        return tuple(self.haadf.shape)  # type: ignore[return-value]


def lazy_map_set(
    shape: tuple[int, int] = (2048, 2048),
    elements: Sequence[str] | str = ("Sr", "Ti", "O"),
    *,
    specimen_tile: int = DEFAULT_SPECIMEN_TILE,
    specimen: str = "columns",
    dose: float = 10.0,
    background: float = 1.0,
    haadf_snr: float = 20.0,
    pixel_size_nm: float | None = None,
    seed: int = 0,
    calibration_tiles: int = DEFAULT_CALIBRATION_TILES,
) -> LazyMapSet:
    """A HAADF and noisy elemental maps of any size, generated tile by tile when computed.

    The specimen and HAADF are those of :func:`lazy_spectrum_image`; instead of a spectrum,
    each map holds Poisson counts with mean ``dose * c_i + background`` (c_i the concentration
    in [0, 1]): the gross counts of an element's energy window, as from a spectrum image
    integrated at acquisition. Fusion takes such maps directly.

    Parameters
    ----------
    shape : (int, int)
        Image shape (y, x), at least (8, 8).
    elements : sequence of str
        2 to 4 element symbols.
    specimen_tile : int
        Specimen tile size and (y, x) chunk, px (>= 8).
    specimen : {'columns', 'particles', 'layers'}
    dose : float
        Expected counts where an element's concentration is 1 (> 0).
    background : float
        Expected counts added everywhere (>= 0).
    haadf_snr : float
        Mean of the HAADF over its noise standard deviation.
    pixel_size_nm : float, optional
        Default per specimen: :data:`emfuse.pipeline.synth.DEFAULT_PIXEL_SIZE_NM`.
    seed : int
    calibration_tiles : int
        The HAADF scale is calibrated on this many tiles at most.

    Returns
    -------
    LazyMapSet

    Examples
    --------
    >>> ms = lazy_map_set((64, 96), ("Fe", "O"), specimen="particles", specimen_tile=32)
    >>> maps = ms.maps.compute()
    >>> maps.shape, bool((maps >= 0).all()), bool((maps == maps.round()).all())
    ((2, 64, 96), True, True)
    """
    symbols = validate_elements(elements)
    if not 2 <= len(symbols) <= 4:
        raise InputError(f"give 2 to 4 elements, got {len(symbols)}: {list(symbols)}")
    if specimen not in SPECIMENS:
        raise InputError(f"specimen must be one of {SPECIMENS}, got {specimen!r}")
    ny, nx = _check_shape(shape)
    tile = _check_tile(specimen_tile, "specimen_tile")
    dose, background, haadf_snr = float(dose), float(background), float(haadf_snr)
    if not (math.isfinite(dose) and dose > 0):
        raise InputError(f"dose must be a positive number of counts, got {dose}")
    if not (math.isfinite(background) and background >= 0):
        raise InputError(f"background must be a number of counts >= 0, got {background}")
    if not (math.isfinite(haadf_snr) and haadf_snr > 0):
        raise InputError(f"haadf_snr must be > 0, got {haadf_snr}")
    if int(calibration_tiles) < 1:
        raise InputError(f"calibration_tiles must be >= 1, got {calibration_tiles}")
    pixel_nm = DEFAULT_PIXEL_SIZE_NM[specimen] if pixel_size_nm is None else float(pixel_size_nm)
    if not pixel_nm > 0:
        raise InputError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    z = np.array([atomic_number(s) for s in symbols], dtype=np.int64)
    mosaic = SpecimenMosaic((ny, nx), tile, tuple(int(v) for v in z), specimen, pixel_nm, int(seed))
    calib = _calibrate(mosaic, int(calibration_tiles))
    n = len(symbols)
    planes = da.map_blocks(
        _map_tile_block, mosaic, calib, haadf_snr, dose, background,
        chunks=((2 * n + 2,), *mosaic.chunks), dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
        name=f"synth-mapset-tiles-{tokenize(mosaic, calib, haadf_snr, dose, background)}",
    )
    params = {
        "generator": "emfuse.pipeline.synth.lazy_map_set",
        "specimen": specimen,
        "elements": list(symbols),
        "shape": [ny, nx],
        "dose": dose,
        "background": background,
        "dose_definition": "expected counts of a map where the concentration is 1, plus background",
        "haadf_snr": haadf_snr,
        "pixel_size_nm": pixel_nm,
        "seed": int(seed),
        "specimen_tile": tile,
        "calibration_tiles": calib.tiles,
    }
    return LazyMapSet(
        haadf=planes[2 * n], maps=planes[:n], elements=symbols, z=z, true_maps=planes[n:2 * n],
        true_haadf=planes[2 * n + 1], pixel_size_nm=pixel_nm, dose=dose, background=background,
        specimen=specimen, seed=int(seed), params=params,
    )
