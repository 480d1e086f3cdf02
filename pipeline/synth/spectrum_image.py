"""A synthetic EDX/EELS spectrum image with its HAADF and the ground truth.

The specimen is a set of concentration maps ``c_i(y, x)`` in [0, 1] (the projected amount of
element i per pixel, 1 being the most a pixel can hold: a full column centre, the thickest
part of a particle, a pure layer) plus a carbon support/cap ``s(y, x)``.

EDX spectrum, expected counts per pixel and channel::

    lambda(y, x, E) = k_c * sum_i c_i(y, x) * sigma_i * P_i(E)  +  k_b * t(y, x) * B(E)

* ``P_i``: gaussian lines at the element's tabulated energies (the alpha line of the family
  :func:`emfuse.pipeline.elements.xray_line` picks, plus its beta line), FWHM from the detector's Fano
  model, integrated over each channel;
* ``sigma_i``: a relative line strength (family factor times detector efficiency at the line),
  a crude stand-in for k-factors;
* ``B(E)``: Kramers' continuum ``(E0 - E) / E`` times the detector efficiency (window
  absorption below ~1 keV, thin sensor above ~20 keV), normalised to sum to 1;
* ``t = sum_i Z_i c_i + Z_C s``: the local mass thickness weighted by Z, as in Kramers' law.

``k_c`` and ``k_b`` are set so that the bremsstrahlung is `background_fraction` of all counts
and the mean total is `dose`. The counts are Poisson samples of lambda.

EELS (``signal_type="EELS"``): a power-law background ``t(y, x) * E**-3`` plus, per element,
an edge (an onset broadened by the energy resolution, decaying as ``E**-2.5``, with white
lines at L3/L2 or M5/M4), scaled the same way.

HAADF: Z-contrast ``sum_i Z_i**1.7 c_i + Z_C**1.7 s``, blurred by a gaussian probe
(sigma = 1 px), normalised to a maximum of 1, plus a 0.02 offset; the measured image adds
Poisson and gaussian noise at `haadf_snr`.

Definition of ``dose``: the mean, over all pixels, of the expected total counts per pixel in
the recorded spectrum (all channels, characteristic plus background).

Examples
--------
>>> data = make_spectrum_image((32, 32), ("Fe", "O"), specimen="particles", n_channels=512)
>>> data.spectrum.dtype, data.true_maps.shape, data.elements
(dtype('uint16'), (2, 32, 32), ('Fe', 'O'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import erf

from ...errors import InputError
from ...signals import signal_type as canonical_signal_type
from ..elements import (
    EELS_SECONDARY_EV,
    XRAY_FAMILIES,
    atomic_number,
    eels_edge,
    validate_elements,
    xray_line,
    xray_lines,
)
from ..spectra import FWHM_MNKA_EV, channel_edges_ev, detector_fwhm_ev

__all__ = [
    "DEFAULT_DOSE",
    "DEFAULT_PIXEL_SIZE_NM",
    "SPECIMENS",
    "SyntheticSpectrumImage",
    "dataset_nbytes",
    "make_spectrum_image",
    "specimen_maps",
]

SPECIMENS = ("columns", "particles", "layers")

#: Default pixel sizes: ~6 nm field for atomic columns, ~64 nm for particles, ~26 nm for layers
#: (at 256 px), the usual fields of view for each kind of specimen.
DEFAULT_PIXEL_SIZE_NM: Mapping[str, float] = MappingProxyType(
    {"columns": 0.025, "particles": 0.25, "layers": 0.1}
)

#: Default dose (mean counts per pixel over the whole spectrum). EDX: the order of what an
#: atomic-resolution STEM-EDX map collects, so that the raw maps are visibly noisy (the case
#: fusion is for: on the default specimen they correlate ~0.83-0.92 with the truth). EELS: a
#: short-dwell core-loss spectrum image, dominated by the background (correlation ~0.8-0.95).
DEFAULT_DOSE: Mapping[str, float] = MappingProxyType({"EDX": 10.0, "EELS": 2.0e4})

HAADF_EXPONENT = 1.7
_Z_SUPPORT = 6  # amorphous carbon film / protective cap
_HAADF_OFFSET = 0.02
_PROBE_SIGMA_PX = 1.0
_BACKGROUND_FRACTION = {"EDX": 0.3, "EELS": 0.85}
# Relative strength of each X-ray family's alpha line and the beta/alpha ratio (typical values:
# Kb1/Ka ~ 0.13 for the 3d metals, Lb1/La1 ~ 0.5, Mb/Ma ~ 0.6).
_FAMILY_STRENGTH = {"K": 1.0, "L": 0.6, "M": 0.4}
_BETA_RATIO = {"K": 0.13, "L": 0.5, "M": 0.6}
# EELS model.
_EELS_BACKGROUND_R = 3.0
_EELS_EDGE_S = 2.5
_EELS_RESOLUTION_EV = 1.0
_EELS_WHITE_LINE_FWHM_EV = 4.0
_COUNT_LIMIT = 60_000  # uint16 holds 65535; stop well before Poisson tails reach it
_SLAB_VALUES = 4_000_000


@dataclass(frozen=True, eq=False)
class SyntheticSpectrumImage:
    """A synthetic spectrum image, its HAADF and the ground truth.

    Attributes
    ----------
    haadf : ndarray (y, x) float32
        Noisy HAADF image.
    spectrum : ndarray (y, x, energy) uint16
        Counts.
    energy_ev : ndarray (energy,) float64
        Channel-centre energies, eV.
    elements : tuple of str
        Element symbols, in map order.
    z : ndarray (element,) int64
        Atomic numbers.
    true_maps : ndarray (element, y, x) float32
        Concentration maps in [0, 1] (see the module notes).
    true_haadf : ndarray (y, x) float32
        Noise-free HAADF (the mean of `haadf`).
    pixel_size_nm : float
    signal_type : str
        'EDX' or 'EELS'.
    dose : float
        Mean expected counts per pixel over the whole spectrum.
    specimen : str
        'columns', 'particles' or 'layers'.
    seed : int
    params : dict
        Every generator parameter (JSON-able), for provenance.
    """

    haadf: np.ndarray
    spectrum: np.ndarray
    energy_ev: np.ndarray
    elements: tuple[str, ...]
    z: np.ndarray
    true_maps: np.ndarray
    true_haadf: np.ndarray
    pixel_size_nm: float
    signal_type: str
    dose: float
    specimen: str = "columns"
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (y, x)."""
        return tuple(self.haadf.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(a.nbytes for a in (self.haadf, self.spectrum, self.energy_ev, self.z,
                                      self.true_maps, self.true_haadf))


# --------------------------------------------------------------------------------------------
# Specimens: concentration maps in [0, 1] and a carbon support map
# --------------------------------------------------------------------------------------------
def _render_gaussians(maps: np.ndarray, centres_px: np.ndarray, amounts: np.ndarray,
                      sigma_px: float) -> None:
    """Add a gaussian column (peak 1 x amount) per centre into maps (n, y, x), in place."""
    _, ny, nx = maps.shape
    half = math.ceil(4 * sigma_px)
    for (cy, cx), amount in zip(centres_px, amounts):
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 2, ny)
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 2, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - cy) / sigma_px) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - cx) / sigma_px) ** 2)
        maps[:, y0:y1, x0:x1] += amount[:, None, None] * (gy[:, None] * gx[None, :])


def _columns(shape, n_el, pixel_nm, rng):
    """An ABX3 perovskite seen along [001]: A at the corners, B-X columns at the centre and pure
    X columns at the edge centres; with 4 elements the 4th substitutes on some A columns."""
    ny, nx = shape
    a_px = 0.3905 / pixel_nm  # SrTiO3 lattice parameter
    sigma_px = max(0.05 / pixel_nm, 0.6)
    theta = rng.uniform(-0.1, 0.1)  # a small in-plane rotation, as on a real specimen
    origin = rng.uniform(0, a_px, 2)
    reach = math.ceil(math.hypot(ny, nx) / a_px) + 2
    ii, jj = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1),
                         indexing="ij")
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    sites = {"A": (0.0, 0.0), "B": (0.5, 0.5), "X1": (0.5, 0.0), "X2": (0.0, 0.5)}
    maps = np.zeros((n_el, ny, nx))
    margin = 4 * sigma_px
    for site, (fy, fx) in sites.items():
        if site.startswith("X") and n_el < 3:
            continue
        frac = np.stack([(ii + fy).ravel(), (jj + fx).ravel()], axis=1) * a_px
        pos = origin + frac @ rot.T
        inside = ((pos[:, 0] > -margin) & (pos[:, 0] < ny + margin)
                  & (pos[:, 1] > -margin) & (pos[:, 1] < nx + margin))
        pos = pos[inside]
        # Columns differ a little in length/occupancy (thickness, vacancies).
        fill = rng.uniform(0.85, 1.0, len(pos))
        amounts = np.zeros((len(pos), n_el))
        if site == "A":
            amounts[:, 0] = fill
            if n_el >= 4:
                doped = rng.random(len(pos)) < 0.35
                share = np.where(doped, rng.uniform(0.3, 1.0, len(pos)), 0.0)
                amounts[:, 0] = fill * (1 - share)
                amounts[:, 3] = fill * share
        elif site == "B":
            amounts[:, 1] = fill
            if n_el >= 3:
                amounts[:, 2] = fill  # the B column of a perovskite holds as many X as B
        else:
            amounts[:, 2] = fill
        _render_gaussians(maps, pos, amounts, sigma_px)
    support = np.full(shape, 0.1)  # amorphous surface layers
    return maps, support


def _particles(shape, n_el, pixel_nm, rng):
    """Spherical particles on a thin carbon film: pure particles and core-shell particles."""
    ny, nx = shape
    field_nm = min(ny, nx) * pixel_nm
    r_max_nm = min(7.0, 0.22 * field_nm)
    r_min_nm = min(2.5, 0.5 * r_max_nm)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    placed: list[tuple[float, float, float]] = []
    kinds: list[tuple[int, int | None, float]] = []  # (core element, shell element, core/R)
    coverage, target = 0.0, 0.3 * ny * nx

    def fits(cy, cx, r):
        return all(math.hypot(cy - py, cx - px) > r + pr + 1.0 for py, px, pr in placed)

    attempts = 0
    while (coverage < target or len(placed) < n_el) and attempts < 4000:
        attempts += 1
        first = len(placed) < n_el
        shrink = 0.85 ** (attempts // 60) if first else 1.0  # the first n_el must be placed
        r = rng.uniform(r_min_nm, r_max_nm) / pixel_nm * shrink
        r = max(r, 1.5)
        cy, cx = rng.uniform(0.5 * r, ny - 0.5 * r), rng.uniform(0.5 * r, nx - 0.5 * r)
        if not fits(cy, cx, r):
            continue
        k = len(placed)
        if first:  # element k in the core of the k-th particle, so every element shows up
            kind = (k, (k + 1) % n_el, rng.uniform(0.45, 0.7))
        elif rng.random() < 0.5:
            core, shell = rng.choice(n_el, 2, replace=False)
            kind = (int(core), int(shell), rng.uniform(0.45, 0.7))
        else:
            kind = (int(rng.integers(n_el)), None, 0.0)
        placed.append((cy, cx, r))
        kinds.append(kind)
        coverage += math.pi * r * r
    maps = np.zeros((n_el, ny, nx))
    for (cy, cx, r), (core, shell, core_frac) in zip(placed, kinds):
        # Only the particle's bounding box is touched, so large fields stay cheap.
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, ny)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, nx)
        box = (slice(y0, y1), slice(x0, x1))
        rho2 = (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2
        outer = 2 * np.sqrt(np.clip(r * r - rho2, 0, None))
        if shell is None:
            maps[(core, *box)] += outer
        else:
            rc = core_frac * r
            inner = 2 * np.sqrt(np.clip(rc * rc - rho2, 0, None))
            maps[(core, *box)] += inner
            maps[(shell, *box)] += outer - inner
    maps /= 2 * r_max_nm / pixel_nm  # 1 = through the centre of the largest possible particle
    # A carbon film of slightly uneven thickness.
    # (smooth noise: a coarse random grid interpolated up, cheaper than a wide gaussian filter)
    coarse = rng.standard_normal((6, 6))
    wobble = ndimage.zoom(coarse, (ny / 6, nx / 6), order=3, mode="nearest", grid_mode=True)
    wobble /= max(np.abs(wobble).max(), 1e-12)
    support = 0.15 + 0.03 * wobble
    return maps, support


def _layers(shape, n_el, pixel_nm, rng):
    """A multilayer on a substrate (element 0) under a carbon cap, growth direction -y, with
    rough, interdiffused interfaces."""
    ny, nx = shape
    n_layers = 2 * n_el  # above the substrate
    cap_px, substrate_px = 0.08 * ny, 0.25 * ny
    widths = rng.uniform(0.7, 1.3, n_layers)
    widths *= (ny - cap_px - substrate_px) / widths.sum()
    # Interfaces from the top (y = 0) down: cap | layer n-1 | ... | layer 0 | substrate.
    interfaces = cap_px + np.concatenate([[0.0], np.cumsum(widths)])  # n_layers + 1 positions
    sequence = [(k + 1) % n_el for k in range(n_layers)][::-1]  # top layer first
    materials = [-1, *sequence, 0]  # -1: the carbon cap
    x = np.arange(nx)
    yy = np.arange(ny)[:, None].astype(np.float64)
    below = [np.ones((ny, nx))]
    for pos in interfaces:
        thin = min(widths.min(), cap_px)
        rough = np.zeros(nx)
        for _ in range(3):  # smooth interface roughness along x
            period = rng.uniform(0.2, 1.0) * nx
            rough += np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))
        rough *= min(0.3 / pixel_nm, 0.08 * thin) / 3
        sigma = max(min(rng.uniform(0.2, 0.8) / pixel_nm, 0.25 * thin), 0.3)
        edge = pos + rough[None, :]
        below.append(0.5 * (1 + erf((yy - edge) / (math.sqrt(2) * sigma))))
    below.append(np.zeros((ny, nx)))
    maps = np.zeros((n_el, ny, nx))
    support = np.zeros((ny, nx))
    for layer, material in enumerate(materials):
        frac = np.clip(below[layer] - below[layer + 1], 0, None)
        if material < 0:
            support += frac
        else:
            maps[material] += frac
    total = maps.sum(axis=0) + support
    maps /= total
    support /= total
    return maps, support


def specimen_maps(
    shape: tuple[int, int] = (256, 256),
    n_elements: int = 3,
    specimen: str = "columns",
    *,
    pixel_size_nm: float | None = None,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Concentration maps of a synthetic specimen.

    Parameters
    ----------
    shape : (int, int)
        Image shape (y, x).
    n_elements : int
        2 to 4.
    specimen : {'columns', 'particles', 'layers'}
        'columns': a perovskite-like lattice of atomic columns (A, B-X and X sublattices; a 4th
        element substitutes on A); 'particles': pure and core-shell nanoparticles on a carbon
        film; 'layers': a multilayer on a substrate with rough, interdiffused interfaces.
    pixel_size_nm : float, optional
        Default per specimen: :data:`DEFAULT_PIXEL_SIZE_NM`.
    seed : int or numpy Generator

    Returns
    -------
    maps : ndarray (n_elements, y, x) float32
        Amounts in [0, 1].
    support : ndarray (y, x) float32
        Amount of carbon (film, surface layers or cap), which adds to HAADF and background.

    Examples
    --------
    >>> maps, support = specimen_maps((64, 64), 2, "layers", seed=3)
    >>> bool(np.allclose(maps.sum(axis=0) + support, 1, atol=1e-5))
    True
    """
    if specimen not in SPECIMENS:
        raise InputError(f"specimen must be one of {SPECIMENS}, got {specimen!r}")
    if not 2 <= int(n_elements) <= 4:
        raise InputError(f"a synthetic specimen has 2 to 4 elements, got {n_elements}")
    ny, nx = _check_shape(shape)
    pixel_nm = DEFAULT_PIXEL_SIZE_NM[specimen] if pixel_size_nm is None else float(pixel_size_nm)
    if not pixel_nm > 0:
        raise InputError(f"pixel_size_nm must be > 0, got {pixel_size_nm}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    build = {"columns": _columns, "particles": _particles, "layers": _layers}[specimen]
    maps, support = build((ny, nx), int(n_elements), pixel_nm, rng)
    return (np.clip(maps, 0, 1).astype(np.float32), np.clip(support, 0, None).astype(np.float32))


def _check_shape(shape) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (ny, nx), got {shape!r}") from None
    if ny < 8 or nx < 8:
        raise InputError(f"shape must be at least (8, 8), got {shape!r}")
    return ny, nx


# --------------------------------------------------------------------------------------------
# Spectra
# --------------------------------------------------------------------------------------------
def _detector_efficiency(energy_ev: np.ndarray) -> np.ndarray:
    """Relative EDX detection efficiency: window/dead-layer absorption cuts in below ~0.5 keV,
    a 0.5 mm silicon sensor lets photons through above ~20 keV."""
    e = np.maximum(np.asarray(energy_ev, dtype=np.float64), 1.0)
    return np.exp(-((300.0 / e) ** 2.5)) * (1 - np.exp(-((25_000.0 / e) ** 3)))


def _gaussian_counts(edges: np.ndarray, centre: float, fwhm: float) -> np.ndarray:
    """A unit-area gaussian integrated over each channel."""
    scale = fwhm / (2 * math.sqrt(2 * math.log(2))) * math.sqrt(2)
    return 0.5 * np.diff(erf((edges - centre) / scale))


def _edx_profiles(symbols, energy, edges, fwhm_mnka_ev):
    """Per element: the line profile (counts per channel per unit amount, before scaling)."""
    lo, hi = float(edges[0]), float(edges[-1])
    out = np.zeros((len(symbols), energy.size))
    lines_used = {}
    for i, symbol in enumerate(symbols):
        alpha, alpha_ev = xray_line(symbol, energy_range_ev=(lo, hi))
        family = alpha[0]
        beta = dict(XRAY_FAMILIES)[alpha]
        strength = _FAMILY_STRENGTH[family]
        used = {alpha: alpha_ev}
        out[i] = strength * _detector_efficiency(alpha_ev) * _gaussian_counts(
            edges, alpha_ev, float(detector_fwhm_ev(alpha_ev, fwhm_mnka_ev)))
        beta_ev = xray_lines(symbol).get(beta)
        if beta_ev is not None and lo < beta_ev < hi:
            used[beta] = beta_ev
            out[i] += strength * _BETA_RATIO[family] * _detector_efficiency(beta_ev) * \
                _gaussian_counts(edges, beta_ev, float(detector_fwhm_ev(beta_ev, fwhm_mnka_ev)))
        lines_used[symbol] = used
    return out, lines_used


def _bremsstrahlung(energy, edges, beam_energy_kev):
    e0 = beam_energy_kev * 1000.0
    e = np.maximum(energy, 1.0)
    shape = np.where(energy > 0, np.clip(e0 - e, 0, None) / e, 0.0)
    density = shape * _detector_efficiency(energy)
    counts = density * np.diff(edges)
    return counts / counts.sum()


def _eels_profiles(symbols, energy, edges):
    width = np.diff(edges)
    out = np.zeros((len(symbols), energy.size))
    edges_used = {}
    res = _EELS_RESOLUTION_EV / (2 * math.sqrt(2 * math.log(2)))
    for i, symbol in enumerate(symbols):
        name, onset = eels_edge(symbol, energy_range_ev=(float(edges[0]), float(edges[-1])))
        step = 0.5 * (1 + erf((energy - onset) / (math.sqrt(2) * res)))
        density = step * (np.maximum(energy, onset) / onset) ** -_EELS_EDGE_S
        if name != "K":  # white lines at L3/L2 (M5/M4)
            wl = _EELS_WHITE_LINE_FWHM_EV / (2 * math.sqrt(2 * math.log(2)))
            second = EELS_SECONDARY_EV.get(symbol, onset + 0.02 * onset)
            for where, height in ((onset + 2.0, 2.5), (second + 2.0, 1.25)):
                density = density + height * np.exp(-0.5 * ((energy - where) / wl) ** 2)
        counts = density * width
        # Cross-sections fall steeply with the onset energy.
        out[i] = counts / counts.sum() * (500.0 / onset) ** 1.5
        edges_used[symbol] = {name: onset}
    return out, edges_used


def _eels_energy_axis(symbols, n_channels):
    onsets = [eels_edge(s)[1] for s in symbols]
    lo = min(onsets) - max(0.25 * min(onsets), 60.0)
    hi = max(onsets) + max(0.3 * max(onsets), 200.0)
    lo = max(10.0, 10.0 * math.floor(lo / 10.0))
    for dispersion in (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0):
        if dispersion * n_channels >= hi - lo:
            break
    return lo + dispersion * np.arange(n_channels)


def _haadf_signal(maps, support, z):
    """Z-contrast blurred by the probe (before normalisation), float64 (y, x)."""
    signal = np.tensordot(np.asarray(z, dtype=np.float64) ** HAADF_EXPONENT, maps, axes=1)
    signal = signal + _Z_SUPPORT**HAADF_EXPONENT * support
    return ndimage.gaussian_filter(signal, _PROBE_SIGMA_PX, mode="nearest")


def _haadf_noise(true, mean, snr, rng):
    """Noisy HAADF (float64) around `true` with standard deviation `mean` / `snr`.

    80 % of the variance from electron counting (Poisson), 20 % from the detector electronics
    (gaussian). `mean` is the dataset's mean true HAADF (passed in, so that a tile of a larger
    image gets the noise level of the whole image).
    """
    var = (mean / snr) ** 2
    electrons = mean / (0.8 * var)
    return rng.poisson(true * electrons) / electrons + rng.normal(0, math.sqrt(0.2 * var),
                                                                   true.shape)


def _haadf(maps, support, z, snr, rng):
    blurred = _haadf_signal(maps, support, z)
    true = blurred / max(blurred.max(), 1e-12) + _HAADF_OFFSET
    noisy = _haadf_noise(true, true.mean(), snr, rng)
    return noisy.astype(np.float32), true.astype(np.float32)


def _pixel_features(maps, support, z):
    """Per-pixel features of the spectrum model: concentrations (n_px, n_el) float64 and the
    Z-weighted mass thickness (y, x) that scales the background."""
    thickness = np.tensordot(np.asarray(z).astype(np.float64), maps, axes=1) + _Z_SUPPORT * support
    flat_maps = maps.reshape(maps.shape[0], -1).T.astype(np.float64)
    return flat_maps, thickness


def _draw_spectrum(features_px, weights, shape, rng, dose):
    """Poisson counts (y, x, energy) uint16 of expected ``features_px @ weights``, in slabs of
    rows so that the float64 expectation stays near ``_SLAB_VALUES`` values."""
    ny, nx = shape
    n_channels = weights.shape[1]
    spectrum = np.empty((ny, nx, n_channels), dtype=np.uint16)
    rows = max(1, _SLAB_VALUES // (nx * n_channels))
    for start in range(0, ny, rows):
        stop = min(ny, start + rows)
        expected = features_px[start * nx:stop * nx] @ weights
        peak = float(expected.max())
        if peak > _COUNT_LIMIT:
            raise InputError(
                f"dose {dose:g} is too high for 16-bit counts: the brightest channel would hold "
                f"~{peak:.0f} counts (limit {_COUNT_LIMIT}); lower the dose or use more channels"
            )
        spectrum[start:stop] = rng.poisson(expected).reshape(stop - start, nx, -1)
    return spectrum


def dataset_nbytes(shape: tuple[int, int] = (256, 256), n_channels: int = 1024,
                   n_elements: int = 3) -> int:
    """Bytes a :func:`make_spectrum_image` result holds (uint16 spectrum, float32 images).

    Examples
    --------
    >>> dataset_nbytes((256, 256), 1024, 3) // 2**20
    129
    """
    ny, nx = _check_shape(shape)
    return ny * nx * (2 * n_channels + 4 * (2 + n_elements)) + 8 * n_channels + 8 * n_elements


def _check_parameters(shape, elements, specimen, dose, n_channels, signal_type, haadf_snr,
                      background_fraction):
    """Validate the generator's parameters (shared by the eager and the lazy generator).

    Returns (symbols, mode, (ny, nx), dose, n_channels, background_fraction).
    """
    symbols = validate_elements(elements)
    if not 2 <= len(symbols) <= 4:
        raise InputError(f"give 2 to 4 elements, got {len(symbols)}: {list(symbols)}")
    mode = canonical_signal_type(signal_type)
    if mode is None:
        raise InputError(f"signal_type must be 'EDX' or 'EELS', got {signal_type!r}")
    if specimen not in SPECIMENS:
        raise InputError(f"specimen must be one of {SPECIMENS}, got {specimen!r}")
    ny, nx = _check_shape(shape)
    dose = DEFAULT_DOSE[mode] if dose is None else float(dose)
    if not (math.isfinite(dose) and dose > 0):
        raise InputError(f"dose must be a positive number of counts per pixel, got {dose}")
    if int(n_channels) < 16:
        raise InputError(f"n_channels must be at least 16, got {n_channels}")
    n_channels = int(n_channels)
    if not (math.isfinite(haadf_snr) and haadf_snr > 0):
        raise InputError(f"haadf_snr must be > 0, got {haadf_snr}")
    fb = _BACKGROUND_FRACTION[mode] if background_fraction is None else float(background_fraction)
    if not 0 <= fb < 1:
        raise InputError(f"background_fraction must be in [0, 1), got {background_fraction}")
    return symbols, mode, (ny, nx), dose, n_channels, fb


@dataclass(frozen=True, eq=False)
class _SpectralModel:
    """The energy axis and the per-unit-amount spectra of the elements and the background."""

    energy: np.ndarray  # (n_channels,) channel centres, eV
    energy_range_ev: tuple[float, float]
    profiles: np.ndarray  # (n_elements, n_channels), before scaling by k_signal
    background: np.ndarray  # (n_channels,), sums to 1
    features: dict  # the lines / edges used, per element


def _spectral_model(symbols, mode, n_channels, energy_range_ev, fwhm_mnka_ev,
                    beam_energy_kev) -> _SpectralModel:
    if energy_range_ev is None:
        if mode == "EDX":
            energy_range_ev = (0.0, 20480.0)
        else:
            axis = _eels_energy_axis(symbols, n_channels)
            energy_range_ev = (float(axis[0]), float(axis[0] + (axis[1] - axis[0]) * n_channels))
    lo, hi = (float(v) for v in energy_range_ev)
    if not hi > lo:
        raise InputError(
            f"energy_range_ev must be (low, high) with low < high, got {energy_range_ev}"
        )
    energy = lo + (hi - lo) / n_channels * np.arange(n_channels)
    edges = channel_edges_ev(energy)
    if mode == "EDX":
        profiles, features = _edx_profiles(symbols, energy, edges, fwhm_mnka_ev)
        background = _bremsstrahlung(energy, edges, beam_energy_kev)
    else:
        profiles, features = _eels_profiles(symbols, energy, edges)
        background = energy ** -_EELS_BACKGROUND_R * np.diff(edges)
        background /= background.sum()
    return _SpectralModel(energy, (lo, hi), profiles, background, features)


def _spectrum_weights(model: _SpectralModel, dose, fb, mean_signal, mean_background):
    """(n_elements + 1, n_channels) expected counts per unit of each pixel feature, scaled so
    that the background holds `fb` of the counts and the mean total per pixel is `dose`."""
    k_signal = dose * (1 - fb) / mean_signal
    k_background = dose * fb / mean_background if fb > 0 else 0.0
    return np.vstack([k_signal * model.profiles, k_background * model.background[None, :]])


def make_spectrum_image(
    shape: tuple[int, int] = (256, 256),
    elements: Sequence[str] | str = ("Sr", "Ti", "O"),
    *,
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
) -> SyntheticSpectrumImage:
    """Make a synthetic spectrum image, its HAADF and the ground-truth maps.

    Parameters
    ----------
    shape : (int, int)
        Image shape (y, x).
    elements : sequence of str
        2 to 4 element symbols.
    specimen : {'columns', 'particles', 'layers'}
        See :func:`specimen_maps`.
    dose : float, optional
        Mean expected counts per pixel over the whole recorded spectrum (characteristic plus
        background). Default :data:`DEFAULT_DOSE` (10 for EDX, 2e4 for EELS).
    n_channels : int
        Number of energy channels.
    energy_range_ev : (float, float), optional
        (first channel's energy, end of the last channel), eV; the channel width is
        ``(high - low) / n_channels`` and channel i is centred on ``low + i * width``.
        Default: (0, 20480) for EDX (20 eV channels at 1024 channels); for EELS, a range
        around the elements' edges with a round dispersion.
    signal_type : {'EDX', 'EELS'}
    haadf_snr : float
        Mean of the HAADF over its noise standard deviation.
    pixel_size_nm : float, optional
        Default per specimen: :data:`DEFAULT_PIXEL_SIZE_NM`.
    seed : int
        The same seed gives the same data. The specimen, the spectrum noise and the HAADF noise
        use independent streams, so changing `dose` keeps the same specimen.
    fwhm_mnka_ev : float
        EDX detector resolution at Mn Ka, eV.
    beam_energy_kev : float
        Beam energy (sets the end of the bremsstrahlung continuum).
    background_fraction : float, optional
        Share of all counts in the background (bremsstrahlung or EELS power law); default 0.3
        for EDX, 0.85 for EELS.

    Returns
    -------
    SyntheticSpectrumImage

    Examples
    --------
    >>> d = make_spectrum_image((32, 32), n_channels=256, seed=0)
    >>> d.spectrum.shape, float(d.energy_ev[1] - d.energy_ev[0])
    ((32, 32, 256), 80.0)
    """
    symbols, mode, (ny, nx), dose, n_channels, fb = _check_parameters(
        shape, elements, specimen, dose, n_channels, signal_type, haadf_snr, background_fraction)
    model = _spectral_model(symbols, mode, n_channels, energy_range_ev, fwhm_mnka_ev,
                            beam_energy_kev)
    lo, hi = model.energy_range_ev
    energy, profiles, features = model.energy, model.profiles, model.features
    z = np.array([atomic_number(s) for s in symbols], dtype=np.int64)

    specimen_rng, spectrum_rng, haadf_rng = np.random.default_rng(seed).spawn(3)
    pixel_nm = DEFAULT_PIXEL_SIZE_NM[specimen] if pixel_size_nm is None else float(pixel_size_nm)
    maps, support = specimen_maps((ny, nx), len(symbols), specimen, pixel_size_nm=pixel_nm,
                                  seed=specimen_rng)

    flat_maps, thickness = _pixel_features(maps, support, z)
    mean_signal = float((flat_maps @ profiles.sum(axis=1)).mean())
    mean_background = float(thickness.mean())
    weights = _spectrum_weights(model, dose, fb, mean_signal, mean_background)
    features_px = np.hstack([flat_maps, thickness.reshape(-1, 1)])
    spectrum = _draw_spectrum(features_px, weights, (ny, nx), spectrum_rng, dose)

    haadf, true_haadf = _haadf(maps, support, z, haadf_snr, haadf_rng)
    params = {
        "generator": "emfuse.pipeline.synth.make_spectrum_image",
        "specimen": specimen,
        "elements": list(symbols),
        "shape": [ny, nx],
        "dose": dose,
        "dose_definition": "mean expected counts per pixel over the whole recorded spectrum",
        "n_channels": n_channels,
        "energy_range_ev": [lo, hi],
        "signal_type": mode,
        "haadf_snr": float(haadf_snr),
        "haadf_exponent": HAADF_EXPONENT,
        "pixel_size_nm": pixel_nm,
        "seed": int(seed),
        "fwhm_mnka_ev": float(fwhm_mnka_ev),
        "beam_energy_kev": float(beam_energy_kev),
        "background_fraction": fb,
        "features_ev": {s: {k: float(v) for k, v in f.items()} for s, f in features.items()},
    }
    return SyntheticSpectrumImage(
        haadf=haadf,
        spectrum=spectrum,
        energy_ev=energy,
        elements=symbols,
        z=z,
        true_maps=maps,
        true_haadf=true_haadf,
        pixel_size_nm=pixel_nm,
        signal_type=mode,
        dose=dose,
        specimen=specimen,
        seed=int(seed),
        params=params,
    )
