"""Synthetic specimens and training pairs (clean, distorted) for the restoration networks.

After Lobato, Friedrich & Van Aert, npj Comput. Mater. (2024), arXiv:2303.17025 (*r_em*),
Methods, training data: the networks learn from random specimens of three kinds, imaged at
high and low resolution in TEM and S(T)EM and then distorted by the physical models of
:mod:`emfuse.pipeline.synth.distortions`. r_em simulates its images with MULTEM; here the imaging is a
fast stand-in, so that pairs can be made on the fly during training (a 256 x 256 pair takes
a few tens of milliseconds of CPU):

* **specimens** (positions of atomic columns, in pixels, and their atomic numbers):
  ``crystalline``: a random 2-D lattice (square, rectangular, hexagonal or oblique; lattice
  constants 2.5-6.5 Å, any in-plane rotation) with a basis of 1-4 columns of random species,
  optionally cut out as a particle (a disc) on an amorphous support film;
  ``amorphous``: random non-overlapping atoms (random sequential addition with a minimum
  distance), :func:`amorphous_positions`;
  ``points``: isolated atoms and small clusters on an optional support film;
* **S(T)EM** (incoherent Z-contrast): every column is a gaussian probe image of height
  ``occupancy * Z**gamma`` (gamma 1.4-2.0, the HAADF exponent), plus a small background;
  normalised to a maximum of 1, so all peaks are positive;
* **TEM** (coherent phase contrast): the projected potential (gaussian atoms of height
  ``Z**0.75``) is a phase object with a little absorption, propagated through the objective
  lens: ``I = |F^-1[F[exp((i - mu) phi)] exp(-i chi(k)) E(k)]|**2`` with
  ``chi = pi lambda df k**2 + pi/2 Cs lambda**3 k**4`` and the temporal-coherence envelope
  ``E = exp(-(pi lambda delta k**2)**2 / 2)``; random defocus around Scherzer and random Cs
  (corrected or not) give bright- or dark-atom contrast; normalised to a mean of 1.

Resolution: ``high`` has pixels of 0.05-0.2 Å (columns tens of pixels apart), ``low``
0.25-0.8 Å (a few pixels apart, more particles).

Examples
--------
>>> import numpy as np
>>> clean, degraded, info = make_pair((64, 64), "stem", "high", np.random.default_rng(0))
>>> clean.shape, degraded.dtype, info["modality"], "dose" in info["distortion"]
((64, 64), dtype('float32'), 'stem', True)
>>> x, y = make_batch(2, (32, 32), "tem", "low", np.random.default_rng(1))
>>> x.shape, y.shape, x.dtype
((2, 1, 32, 32), (2, 1, 32, 32), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from emfuse.errors import InputError

from .distortions import MODALITIES, RESOLUTIONS, Draw, random_distortion
from .distortions.detector import check_number, check_rng

__all__ = [
    "KINDS",
    "amorphous_positions",
    "crystal_positions",
    "electron_wavelength",
    "lattice_vectors",
    "make_batch",
    "make_pair",
    "make_specimen",
    "render_stem",
    "render_tem",
    "splat",
]

KINDS = ("crystalline", "amorphous", "points")
_KIND_P = (0.6, 0.2, 0.2)
_PIXEL_SIZE = {"high": (0.05, 0.2), "low": (0.25, 0.8)}  # Å, log-uniform
_PARTICLE_P = {"high": 0.3, "low": 0.7}  # chance a crystal is a particle on a support film
_LATTICE = (2.5, 6.5)  # Å
_MIN_COLUMN_DIST = 1.2  # Å, between the columns of a basis
_Z_RANGE = (3, 83)
_SUPPORT_Z = 6  # amorphous carbon
_VOLTAGES_KV = (80.0, 200.0, 300.0)


# --------------------------------------------------------------------------------------------
# Specimens: positions (n, 2) in pixels (y, x) and atomic numbers (n,)
# --------------------------------------------------------------------------------------------
def lattice_vectors(a: float, b: float, angle: float, rotation: float) -> np.ndarray:
    """Rows a1, a2 (y, x) of a 2-D lattice: lengths a, b, angle between them, rotated.

    Examples
    --------
    >>> lattice_vectors(2.0, 3.0, np.pi / 2, 0.0).round(6).tolist()
    [[0.0, 2.0], [3.0, 0.0]]
    """
    a1 = a * np.array([math.sin(rotation), math.cos(rotation)])
    a2 = b * np.array([math.sin(rotation + angle), math.cos(rotation + angle)])
    return np.stack([a1, a2])


def crystal_positions(shape: tuple[int, int], vectors: np.ndarray, basis: np.ndarray,
                      origin: tuple[float, float] = (0.0, 0.0),
                      margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Every column ``origin + n1 a1 + n2 a2 + basis_k`` inside the field (plus a margin).

    Parameters
    ----------
    shape : (int, int)
        Field (H, W), px.
    vectors : array (2, 2)
        Lattice vectors a1, a2 as rows (y, x), px.
    basis : array (m, 2)
        Fractional coordinates of the columns in the unit cell.
    origin : (float, float)
        Position of the lattice point (0, 0), px.
    margin : float
        Also keep columns up to this far outside the field, px.

    Returns
    -------
    positions : ndarray (n, 2) float64
    site : ndarray (n,) int
        Index of the basis column each position belongs to.

    Examples
    --------
    >>> pos, site = crystal_positions((4, 4), np.eye(2) * 2, np.zeros((1, 2)))
    >>> sorted(map(tuple, pos.tolist()))
    [(0.0, 0.0), (0.0, 2.0), (2.0, 0.0), (2.0, 2.0)]
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    basis = np.atleast_2d(np.asarray(basis, dtype=np.float64))
    ny, nx = shape
    corners = np.array([[-margin, -margin], [-margin, nx + margin], [ny + margin, -margin],
                        [ny + margin, nx + margin]]) - np.asarray(origin)
    frac = corners @ np.linalg.inv(vectors)  # lattice coordinates of the corners
    lo, hi = np.floor(frac.min(axis=0)) - 1, np.ceil(frac.max(axis=0)) + 1
    n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1),
                         indexing="ij")
    cells = np.stack([n1.ravel(), n2.ravel()], axis=1)
    frac_all = (cells[:, None, :] + basis[None, :, :]).reshape(-1, 2)
    site = np.tile(np.arange(len(basis)), len(cells))
    pos = frac_all @ vectors + np.asarray(origin)
    keep = ((pos[:, 0] >= -margin) & (pos[:, 0] < ny + margin)
            & (pos[:, 1] >= -margin) & (pos[:, 1] < nx + margin))
    return pos[keep], site[keep]


def amorphous_positions(shape: tuple[int, int], min_dist: float, rng: np.random.Generator,
                        rounds: int = 3) -> np.ndarray:
    """Random non-overlapping positions: random sequential addition on a background grid.

    The field is cut into cells of side ``min_dist / sqrt(2)`` (at most one point each). In
    each round every empty cell proposes a uniform point; a proposal is kept when no kept
    point and no proposal of higher (random) priority lies within ``min_dist``. All in
    array operations. Three rounds place about 90% of the points that many more would (cells
    that stay empty are mostly covered by their neighbours' exclusion discs).

    Examples
    --------
    >>> p = amorphous_positions((50, 50), 4.0, np.random.default_rng(0))
    >>> d = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1))
    >>> bool(d[np.triu_indices(len(p), 1)].min() >= 4.0), len(p) > 70
    (True, True)
    """
    min_dist = check_number(min_dist, "min_dist", low=0.5, low_open=False,
                            fix=" (the minimum distance between atoms, px)")
    check_rng(rng)
    ny, nx = shape
    cell = min_dist / math.sqrt(2.0)
    gy, gx = math.ceil(ny / cell), math.ceil(nx / cell)
    md2 = np.float32(min_dist * min_dist)
    # flat padded grid (2 empty cells around): y, x of the point in each cell and its priority
    # (2 for a kept point: it blocks every proposal; -1 for an empty cell)
    width = gx + 4
    ys = np.full((gy + 4) * width, np.nan, np.float32)
    xs = np.full_like(ys, np.nan)
    prio_all = np.full_like(ys, -1.0)
    iy, ix = np.meshgrid(np.arange(gy), np.arange(gx), indexing="ij")
    free = ((iy + 2) * width + (ix + 2)).ravel()  # inner cells still empty
    offsets = [dy * width + dx for dy in range(-2, 3) for dx in range(-2, 3) if dy or dx]
    for _ in range(rounds):
        if free.size == 0:
            break
        row, col = free // width - 2, free % width - 2
        cy = ((row + rng.random(free.size)) * cell).astype(np.float32)
        cx = ((col + rng.random(free.size)) * cell).astype(np.float32)
        prio = rng.random(free.size).astype(np.float32)
        ys[free], xs[free], prio_all[free] = cy, cx, prio
        ok = (cy < ny) & (cx < nx)
        for off in offsets:
            j = free + off
            dy, dx = cy - ys[j], cx - xs[j]
            ok &= ~((dy * dy + dx * dx < md2) & (prio_all[j] > prio))
        prio_all[free[ok]] = 2.0
        lost = free[~ok]
        ys[lost], xs[lost], prio_all[lost] = np.nan, np.nan, -1.0
        free = lost  # every cell still empty proposes again
    have = prio_all == 2.0
    return np.stack([ys[have], xs[have]], axis=1).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------------
def splat(shape: tuple[int, int], positions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Deposit each weight at its sub-pixel position by bilinear splatting (one bincount).

    Examples
    --------
    >>> splat((2, 3), np.array([[0.5, 1.0]]), np.array([4.0])).tolist()
    [[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]]
    """
    ny, nx = shape
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    w = np.asarray(weights, dtype=np.float64)
    y0, x0 = np.floor(pos[:, 0]).astype(np.int64), np.floor(pos[:, 1]).astype(np.int64)
    fy, fx = pos[:, 0] - y0, pos[:, 1] - x0
    idx, val = [], []
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + oy, x0 + ox
            ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            idx.append(yy[ok] * nx + xx[ok])
            val.append((w * wy * wx)[ok])
    flat = np.bincount(np.concatenate(idx), np.concatenate(val), minlength=ny * nx)
    return flat.reshape(ny, nx)


_EXACT_BELOW_PX = 2.5  # narrower gaussians are drawn exactly, wider ones by splat + filter
_EXACT_BLOCK = 4096  # atoms per block of the exact renderer (bounds its memory)


def _gaussian_spots(shape, positions, weights, sigma_px):
    """Sum of gaussians (peak value = weight, centred at the sub-pixel positions) of width sigma_px.

    Narrow gaussians (sigma < 2.5 px) are evaluated exactly on a window of +-4 sigma around
    each atom; wide ones are splatted bilinearly and filtered (fast whatever the width), with
    the splat's mean variance (1/6 px^2) taken off the filter: their peak heights then depend
    on the sub-pixel position by less than 3%.
    """
    ny, nx = shape
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    w = np.asarray(weights, dtype=np.float64)
    if sigma_px >= _EXACT_BELOW_PX:
        sigma_f = math.sqrt(sigma_px * sigma_px - 1.0 / 6.0)
        img = ndimage.gaussian_filter(splat(shape, pos, w), sigma_f, mode="constant")
        return img * (2.0 * math.pi * sigma_px * sigma_px)
    half = math.ceil(4.0 * sigma_px)
    off = np.arange(-half, half + 1)
    flat = np.zeros(ny * nx)
    for start in range(0, len(w), _EXACT_BLOCK):
        p, wb = pos[start:start + _EXACT_BLOCK], w[start:start + _EXACT_BLOCK]
        yy = np.round(p[:, :1]).astype(np.int64) + off  # (n, 2 half + 1)
        xx = np.round(p[:, 1:]).astype(np.int64) + off
        gy = np.exp(-0.5 * ((yy - p[:, :1]) / sigma_px) ** 2) * ((yy >= 0) & (yy < ny))
        gx = np.exp(-0.5 * ((xx - p[:, 1:]) / sigma_px) ** 2) * ((xx >= 0) & (xx < nx))
        vals = wb[:, None, None] * gy[:, :, None] * gx[:, None, :]
        idx = np.clip(yy, 0, ny - 1)[:, :, None] * nx + np.clip(xx, 0, nx - 1)[:, None, :]
        flat += np.bincount(idx.ravel(), vals.ravel(), minlength=ny * nx)
    return flat.reshape(ny, nx)


def render_stem(shape: tuple[int, int], positions: np.ndarray, weights: np.ndarray,
                sigma_px: float) -> np.ndarray:
    """Incoherent Z-contrast image: a gaussian probe image of height ``weight`` per column.

    Examples
    --------
    >>> img = render_stem((21, 21), np.array([[10.0, 10.0]]), np.array([1.0]), 2.0)
    >>> round(float(img.max()), 1), bool(img.min() >= 0)
    (1.0, True)
    """
    sigma_px = check_number(sigma_px, "sigma_px", low=0.0, low_open=True)
    return _gaussian_spots(shape, positions, weights, sigma_px)


def electron_wavelength(kv: float) -> float:
    """Relativistic electron wavelength (Å) at an accelerating voltage in kV.

    Examples
    --------
    >>> round(electron_wavelength(300.0), 5)
    0.01969
    """
    v = check_number(kv, "kv", low=0.0, low_open=True) * 1e3
    return 12.264259 / math.sqrt(v * (1.0 + 0.97848e-6 * v))


def render_tem(potential: np.ndarray, pixel_size: float, wavelength: float, defocus: float,
               cs: float, focal_spread: float, absorption: float = 0.0) -> np.ndarray:
    """Coherent TEM image of a phase object ``phi`` (rad) through the objective lens.

    ``I = |F^-1[F[exp((i - absorption) phi)] exp(-i chi) E]|**2``, ``chi(k) = pi lambda df
    k**2 + pi/2 Cs lambda**3 k**4``, ``E(k) = exp(-(pi lambda delta k**2)**2 / 2)``; lengths
    in Å (pixel size, wavelength, defocus ``df``, ``cs``, focal spread ``delta``). Periodic
    (FFT): pad the specimen by the delocalisation and crop.

    Examples
    --------
    >>> flat = render_tem(np.zeros((16, 16)), 0.1, 0.0197, -500.0, 1e7, 40.0)
    >>> bool(np.allclose(flat, 1.0))
    True
    """
    ny, nx = potential.shape
    ky = np.fft.fftfreq(ny, d=pixel_size)[:, None]
    kx = np.fft.fftfreq(nx, d=pixel_size)[None, :]
    k2 = ky * ky + kx * kx
    chi = math.pi * wavelength * defocus * k2 + 0.5 * math.pi * cs * wavelength ** 3 * k2 * k2
    envelope = np.exp(-0.5 * (math.pi * wavelength * focal_spread * k2) ** 2)
    transfer = (envelope * np.exp(-1j * chi)).astype(np.complex64)
    wave = np.exp((1j - absorption) * np.asarray(potential, np.float32))  # complex64
    image_wave = sp_fft.ifft2(sp_fft.fft2(wave) * transfer)
    return (image_wave.real ** 2 + image_wave.imag ** 2).astype(np.float64)


def _support(shape, sigma_px, rng):
    """An amorphous film as a texture: filtered uniform noise rescaled to [0, 1]."""
    tex = ndimage.gaussian_filter(rng.random(shape), max(sigma_px, 0.7), mode="wrap")
    lo, hi = tex.min(), tex.max()
    return (tex - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def _random_basis(vectors_a: np.ndarray, rng) -> np.ndarray:
    """1-4 fractional positions, columns at least _MIN_COLUMN_DIST apart (periodic images too)."""
    n = int(rng.integers(1, 5))
    basis = [np.zeros(2)]
    images = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64)
    for _ in range(60 * n):
        if len(basis) == n:
            break
        f = rng.random(2)
        d = ((f - np.array(basis))[:, None, :] + images[None]) @ vectors_a
        if np.hypot(d[..., 0], d[..., 1]).min() >= _MIN_COLUMN_DIST:
            basis.append(f)
    return np.array(basis)


def _crystal(canvas, pixel, resolution, rng, particle):
    kind = ("square", "rectangular", "hexagonal", "oblique")[int(rng.integers(4))]
    a = rng.uniform(*_LATTICE)
    b = {"square": a, "hexagonal": a}.get(kind, rng.uniform(*_LATTICE))
    angle = {"hexagonal": 2 * math.pi / 3, "oblique": rng.uniform(math.radians(60),
                                                                  math.radians(120))
             }.get(kind, math.pi / 2)
    rotation = rng.uniform(0, 2 * math.pi)
    vec_a = lattice_vectors(a, b, angle, rotation)  # Å
    basis = _random_basis(vec_a, rng)
    z_sites = rng.integers(_Z_RANGE[0], _Z_RANGE[1] + 1, len(basis))
    vectors = vec_a / pixel
    origin = rng.uniform(0, 1, 2) @ vectors
    pos, site = crystal_positions(canvas, vectors, basis, origin)
    z = z_sites[site]
    if particle is None:
        particle = bool(rng.random() < _PARTICLE_P[resolution])
    info = {"lattice": kind, "a": a, "b": b, "angle": angle, "rotation": rotation,
            "vectors_px": vectors.tolist(), "origin_px": origin.tolist(), "basis": basis.tolist(),
            "z_sites": z_sites.tolist(), "particle": particle}
    if particle:  # a disc of crystal; the film elsewhere
        centre = rng.uniform(0.25, 0.75, 2) * np.array(canvas)
        radius = rng.uniform(0.2, 0.5) * min(canvas)
        inside = np.hypot(*(pos - centre).T) < radius
        pos, z = pos[inside], z[inside]
        info.update(particle_centre=centre.tolist(), particle_radius=float(radius))
    return pos, z, info


def _amorphous(canvas, pixel, rng):
    d_min = max(rng.uniform(1.4, 2.5) / pixel, 3.0)  # px (coarse grains at large pixels)
    pos = amorphous_positions(canvas, d_min, rng)
    keep = rng.random(len(pos)) < rng.uniform(0.6, 1.0)
    species = rng.integers(_Z_RANGE[0], _Z_RANGE[1] + 1, int(rng.integers(1, 4)))
    z = species[rng.integers(len(species), size=int(keep.sum()))]
    return pos[keep], z, {"min_dist_px": d_min, "z_species": species.tolist()}


def _points(canvas, pixel, rng):
    d_min = max(6.0 / pixel, 6.0)  # px; isolated: at least 6 Å apart
    pos = amorphous_positions(canvas, d_min, rng, rounds=2)
    n = min(len(pos), int(rng.integers(1, 41)))
    pos = pos[rng.choice(len(pos), n, replace=False)]
    z = rng.integers(30, _Z_RANGE[1] + 1, n)
    cluster = rng.random(n) < 0.5  # small clusters of 2-6 atoms around some points
    extra_pos, extra_z = [], []
    for p, zz in zip(pos[cluster], z[cluster]):
        m = int(rng.integers(1, 6))
        offsets = rng.normal(0, 1.2 / pixel, (m, 2))
        extra_pos.append(p + offsets)
        extra_z.append(np.full(m, zz))
    if extra_pos:
        pos = np.concatenate([pos, *extra_pos])
        z = np.concatenate([z, *extra_z])
    return pos, z, {"n_points": n}


def make_specimen(shape: tuple[int, int], modality: str, resolution: str,
                  rng: np.random.Generator, kind: str | None = None,
                  particle: bool | None = None) -> tuple[np.ndarray, dict]:
    """A random clean image (float64) and what was drawn (JSON-able).

    Parameters
    ----------
    shape : (int, int)
        Image size (H, W), at least 8 x 8.
    modality : {"tem", "stem"}
    resolution : {"high", "low"}
    rng : numpy.random.Generator
    kind : {"crystalline", "amorphous", "points"}, optional
        Random (0.6, 0.2, 0.2) when None.
    particle : bool, optional
        For crystals: cut as a particle on a support film (random when None).

    Returns
    -------
    image : ndarray (H, W) float64
        STEM: >= 0, maximum 1; TEM: > 0, mean 1.
    info : dict
        kind, modality, resolution, pixel_size (Å), the specimen's parameters (a crystal's
        lattice vectors ``vectors_px`` (rows a1, a2; y, x) and the position ``origin_px`` of
        its basis column 0, in pixels of the image), the imaging parameters.

    Examples
    --------
    >>> img, info = make_specimen((64, 64), "stem", "high", np.random.default_rng(0),
    ...                           kind="crystalline", particle=False)
    >>> img.shape, round(float(img.max()), 6), info["kind"]
    ((64, 64), 1.0, 'crystalline')
    """
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(isinstance(s, (int, np.integer)) and s >= 8 for s in shape)):
        raise InputError(f"shape must be (H, W) with integer sizes >= 8, got {shape!r}")
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if resolution not in RESOLUTIONS:
        raise InputError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS} or None (random), got {kind!r}")
    check_rng(rng)
    ny, nx = int(shape[0]), int(shape[1])
    if kind is None:
        kind = KINDS[int(rng.choice(len(KINDS), p=_KIND_P))]
    pixel = Draw(low=_PIXEL_SIZE[resolution][0], high=_PIXEL_SIZE[resolution][1],
                 log=True).value(rng)
    info: dict[str, Any] = {"kind": kind, "modality": modality, "resolution": resolution,
                            "pixel_size": pixel}

    # imaging parameters first: they set how much the canvas is padded
    if modality == "stem":
        sigma_px = max(rng.uniform(0.35, 0.7) / pixel, 0.6)
        gamma = rng.uniform(1.4, 2.0)
        pad = math.ceil(4 * sigma_px) + 2
        info.update(probe_sigma_px=sigma_px, z_exponent=gamma)
    else:
        kv = _VOLTAGES_KV[int(rng.integers(len(_VOLTAGES_KV)))]
        lam = electron_wavelength(kv)
        corrected = bool(rng.random() < 0.5)
        cs = rng.uniform(-3e5, 3e5) if corrected else rng.uniform(5e6, 1.5e7)  # Å
        scherzer = -1.2 * math.sqrt(abs(cs) * lam)
        defocus = scherzer * rng.uniform(-1.5, 1.5) + rng.uniform(-100.0, 100.0)  # Å
        spread = rng.uniform(20.0, 60.0)  # Å
        atom_sigma_px = max(rng.uniform(0.25, 0.45) / pixel, 0.5)
        k_max = min(0.5 / pixel, math.sqrt(2.0 / (math.pi * lam * spread)))
        reach = abs(defocus) * lam * k_max + abs(cs) * lam ** 3 * k_max ** 3  # Å
        pad = min(96, math.ceil(reach / pixel) + math.ceil(4 * atom_sigma_px) + 4)
        info.update(voltage_kv=kv, wavelength=lam, cs=cs, defocus=defocus, focal_spread=spread,
                    corrected=corrected, atom_sigma_px=atom_sigma_px,
                    phase_max=rng.uniform(0.1, 1.0), absorption=rng.uniform(0.0, 0.1))
    # FFT-friendly sizes for TEM (the extra rows and columns fall outside the crop)
    fit = sp_fft.next_fast_len if modality == "tem" else int
    canvas = (fit(ny + 2 * pad), fit(nx + 2 * pad))

    if kind == "crystalline":
        pos, z, extra = _crystal(canvas, pixel, resolution, rng, particle)
        film = extra["particle"]
    elif kind == "amorphous":
        pos, z, extra = _amorphous(canvas, pixel, rng)
        film = False
    else:
        pos, z, extra = _points(canvas, pixel, rng)
        film = bool(rng.random() < 0.7)
    info.update(extra, n_atoms=len(z), support_film=film)
    occupancy = rng.uniform(0.85, 1.0, len(z))  # thickness / occupancy variation per column
    film_level = rng.uniform(0.02, 0.1) if film else 0.0

    if modality == "stem":
        weights = occupancy * z.astype(np.float64) ** gamma
        img = render_stem(canvas, pos, weights, sigma_px)
        top = max(float(img.max()), float(_SUPPORT_Z ** gamma))
        if film:
            img += film_level * top * _support(canvas, sigma_px, rng)
        img += rng.uniform(0.0, 0.05) * top  # detector offset / diffuse background
        img = img[pad:pad + ny, pad:pad + nx]
        img /= img.max()
    else:
        weights = occupancy * z.astype(np.float64) ** 0.75
        v = _gaussian_spots(canvas, pos, weights, info["atom_sigma_px"])
        top = max(float(v.max()), float(_SUPPORT_Z ** 0.75))
        if film:
            v += film_level * top * _support(canvas, info["atom_sigma_px"], rng)
        phase = v * (info["phase_max"] / top)
        img = render_tem(phase, pixel, info["wavelength"], info["defocus"], info["cs"],
                         info["focal_spread"], info["absorption"])
        img = img[pad:pad + ny, pad:pad + nx]
        img /= img.mean()
    if "origin_px" in info:  # into the coordinates of the cropped image
        info["origin_px"] = [c - pad for c in info["origin_px"]]
        if info.get("particle"):
            info["particle_centre"] = [c - pad for c in info["particle_centre"]]
    return img, info


def make_pair(shape: tuple[int, int], modality: str, resolution: str,
              rng: np.random.Generator, kind: str | None = None,
              settings: Mapping[str, Draw] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A training pair: clean target and distorted input, both float32 in detector counts.

    The specimen comes from :func:`make_specimen`, the distortion from
    :func:`emfuse.pipeline.synth.distortions.random_distortion`; the clean target is the specimen image
    times the drawn dose (expected counts), so both are in the same units.

    Returns
    -------
    clean, degraded : ndarray (H, W) float32
    info : dict
        The specimen's parameters with the distortion's under ``"distortion"``.

    Examples
    --------
    >>> c, d, info = make_pair((32, 32), "tem", "high", np.random.default_rng(5))
    >>> bool(abs(c.mean() / info["distortion"]["dose"] - 1) < 1e-3)
    True
    """
    image, info = make_specimen(shape, modality, resolution, rng, kind=kind)
    degraded, params = random_distortion(image, modality, rng, resolution=resolution,
                                         settings=settings)
    clean = (params["dose"] * image).astype(np.float32)
    info["distortion"] = params
    return clean, degraded.astype(np.float32), info


def make_batch(n: int, shape: tuple[int, int], modality: str, resolution: str,
               rng: np.random.Generator, kind: str | None = None,
               settings: Mapping[str, Draw] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs as float32 arrays (n, 1, H, W): ``(clean, degraded)``, ready for torch.

    ``torch.from_numpy`` takes them without a copy. Every pair has its own specimen and its
    own distortion parameters.

    Examples
    --------
    >>> c, d = make_batch(3, (16, 16), "stem", "low", np.random.default_rng(0))
    >>> c.shape, d.shape, str(c.dtype)
    ((3, 1, 16, 16), (3, 1, 16, 16), 'float32')
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer (the batch size), got {n!r}")
    clean = np.empty((n, 1, *shape), np.float32)
    degraded = np.empty((n, 1, *shape), np.float32)
    for i in range(n):
        clean[i, 0], degraded[i, 0], _ = make_pair(shape, modality, resolution, rng, kind,
                                                   settings)
    return clean, degraded
