"""A broad distribution of clean images for restoration networks that must generalise.

:mod:`emfuse.pipeline.synth.restore_specimens` draws one kind of picture per modality (bright columns tens
of pixels apart for HR-STEM), and a network trained on it alone erased fine lattices, dark-atom
contrast and particles it had never seen. This module draws scenes from **families** that
cover what a facility images, in **contrasts** for each modality, at column spacings from about
2 to 40 px, so that whole families can be held out of training and reported on
(``exclude=``):

families
    ``lattice`` one crystal over the field; ``defects`` a crystal with vacancies, substitutions
    and an edge dislocation; ``interface`` two crystals meeting along a line (with an amorphous
    layer at times); ``polycrystal`` 2-8 Voronoi grains, each its own orientation;
    ``particles`` 1-6 crystalline particles on an amorphous support film; ``amorphous``
    random non-overlapping atoms; ``points`` isolated atoms and clusters on a film;
    ``shapes`` mass-thickness objects without atoms (polygons, ellipses and stripes with
    intensity gradients, fibres): the low-resolution and SEM picture.
contrasts
    S(T)EM: ``haadf`` (bright columns, ``Z**gamma``), ``bf`` (dark columns on a bright
    background), ``abf`` (dark cores with a faint bright ring; light elements visible); TEM:
    ``phase`` (phase contrast through the lens, :func:`~emfuse.pipeline.synth.restore_specimens.render_tem`,
    plus mass-thickness absorption); SEM: ``topography`` (material contrast, edge brightening
    and shading by the surface slope).

Any scene may also get a smooth thickness wedge, a vacuum region (a polygon where the
specimen stops) and a background level. Resolution ``high`` puts lattice periods at 2-40 px
(log-uniform), ``low`` at 0.7-2.5 px, where columns blur into texture and particles and
shapes dominate. Images follow the units of :mod:`emfuse.pipeline.synth.restore_specimens` (S(T)EM and
SEM: maximum 1; TEM: mean 1), so :func:`emfuse.pipeline.synth.distortions.random_distortion` applies
unchanged (SEM takes the scanned-probe chain).

Examples
--------
>>> import numpy as np
>>> img, info = make_scene((64, 64), "stem", "high", np.random.default_rng(0))
>>> img.shape, bool(img.min() >= 0), round(float(img.max()), 6), info["family"] in FAMILIES
((64, 64), True, 1.0, True)
>>> clean, noisy = make_scene_batch(2, (32, 32), "sem", "low", np.random.default_rng(1))
>>> clean.shape, noisy.dtype
((2, 1, 32, 32), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from emfuse.errors import InputError

from .distortions import SETTINGS, Draw, random_distortion
from .distortions.detector import check_rng
from .restore_specimens import (
    _amorphous,
    _crystal,
    _gaussian_spots,
    _points,
    _support,
    electron_wavelength,
    render_tem,
)

__all__ = ["CONTRASTS", "DETECTOR_NOISE", "FAMILIES", "HELD_OUT", "JITTER_AMPLITUDES", "MODALITIES", "cap_jitter",
           "held_out", "held_out_settings", "make_scene", "make_scene_batch", "make_scene_pair",
           "noise_only_settings", "training_settings"]

FAMILIES = ("lattice", "defects", "interface", "polycrystal", "particles", "amorphous", "points",
            "shapes")
MODALITIES = ("stem", "tem", "sem")
CONTRASTS = {"stem": ("haadf", "bf", "abf"), "tem": ("phase",), "sem": ("topography",)}
#: families that make sense in SEM (atoms are far below an SEM pixel)
_SEM_FAMILIES = ("polycrystal", "particles", "amorphous", "shapes")
#: lattice period in px (log-uniform): resolved columns at high resolution, texture at low
_SPACING_PX = {"high": (2.0, 40.0), "low": (0.7, 2.5)}
_MEAN_LATTICE_A = 4.5  # Å: the middle of specimens' 2.5-6.5 Å, sets the pixel size from the period
#: what the shipped models never see in training, so that the held-out report means something:
#: a specimen family, a contrast (modality) and one distortion per chain
HELD_OUT = {"family": ("polycrystal",), "contrast": ("abf",),
            "distortion": ("row_line_rel", "flicker_sigma")}


# --------------------------------------------------------------------------------------------
# Geometry: masks and mass-thickness maps on the canvas
# --------------------------------------------------------------------------------------------
def _grid(shape):
    return np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)


def _polygon_mask(shape, rng, centre=None, radius=None, sides=None):
    """A random convex-ish polygon (star-shaped around ``centre``)."""
    yy, xx = _grid(shape)
    c = np.asarray(centre if centre is not None else rng.uniform(0, 1, 2) * shape)
    r = radius if radius is not None else rng.uniform(0.1, 0.5) * min(shape)
    n = sides or int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = r * rng.uniform(0.6, 1.0, n)
    theta = np.arctan2(yy - c[0], xx - c[1]) % (2 * math.pi)
    # radius of the polygon's boundary along each pixel's direction (linear between vertices)
    edge = np.interp(theta, np.concatenate([angles - 2 * math.pi, angles, angles + 2 * math.pi]),
                     np.tile(radii, 3))
    return np.hypot(yy - c[0], xx - c[1]) <= edge


def _half_plane(shape, rng, through=None):
    yy, xx = _grid(shape)
    p = np.asarray(through if through is not None else rng.uniform(0.3, 0.7, 2) * shape)
    angle = rng.uniform(0, 2 * math.pi)
    return (yy - p[0]) * math.cos(angle) - (xx - p[1]) * math.sin(angle) > 0


def _gradient(shape, rng, low=0.3):
    """A linear ramp from ``low``..1 to 1 in a random direction."""
    yy, xx = _grid(shape)
    angle = rng.uniform(0, 2 * math.pi)
    t = yy * math.sin(angle) + xx * math.cos(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return rng.uniform(low, 1.0) + (1 - rng.uniform(low, 1.0)) * t


def _fibres(shape, rng, n):
    """Thin smooth curves (random walks with inertia), as a mass map in [0, 1]."""
    img = np.zeros(shape)
    for _ in range(n):
        p = rng.uniform(0, 1, 2) * shape
        angle = rng.uniform(0, 2 * math.pi)
        steps = int(2 * max(shape))
        turn = np.cumsum(rng.normal(0, 0.05, steps)) + angle
        path = p + np.cumsum(np.stack([np.sin(turn), np.cos(turn)], 1), 0)
        keep = (path[:, 0] >= 0) & (path[:, 0] < shape[0]) & (path[:, 1] >= 0) & (path[:, 1] < shape[1])
        idx = path[keep].astype(int)
        img[idx[:, 0], idx[:, 1]] = rng.uniform(0.3, 1.0)
    width = rng.uniform(0.5, 2.5)
    return np.clip(ndimage.gaussian_filter(img, width) * (2 * math.pi * width * width) ** 0.5, 0, 1)


def _shapes_mass(shape, rng):
    """Polygons, ellipses and stripes with intensity gradients, and fibres: mass-thickness in [0, 1]."""
    mass = np.zeros(shape)
    for _ in range(int(rng.integers(1, 9))):
        what = rng.choice(["polygon", "ellipse", "stripes"], p=[0.5, 0.3, 0.2])
        if what == "polygon":
            mask = _polygon_mask(shape, rng)
        elif what == "ellipse":
            yy, xx = _grid(shape)
            c = rng.uniform(0, 1, 2) * shape
            a, b = rng.uniform(0.03, 0.3, 2) * min(shape)
            t = rng.uniform(0, math.pi)
            u = (yy - c[0]) * math.cos(t) + (xx - c[1]) * math.sin(t)
            v = -(yy - c[0]) * math.sin(t) + (xx - c[1]) * math.cos(t)
            mask = (u / a) ** 2 + (v / b) ** 2 <= 1
        else:
            yy, xx = _grid(shape)
            t = rng.uniform(0, math.pi)
            period = rng.uniform(0.05, 0.4) * min(shape)
            phase = (yy * math.sin(t) + xx * math.cos(t)) / period
            mask = (phase % 1.0) < rng.uniform(0.2, 0.7)
        level = rng.uniform(0.2, 1.0) * _gradient(shape, rng)
        mass = np.where(mask, level, mass) if rng.random() < 0.5 else mass + mask * level
    if rng.random() < 0.4:
        mass += _fibres(shape, rng, int(rng.integers(1, 12)))
    if rng.random() < 0.5:  # soft edges (defocus, a thickness taper)
        mass = ndimage.gaussian_filter(mass, rng.uniform(0.5, 4.0))
    return np.clip(mass / max(mass.max(), 1e-9), 0, 1)


# --------------------------------------------------------------------------------------------
# Families: atoms (positions px, Z) and a mass map on the canvas
# --------------------------------------------------------------------------------------------
def _at(mask, pos):
    """``mask`` at each position (px, rounded down and clamped into the canvas)."""
    iy = np.clip(pos[:, 0].astype(int), 0, mask.shape[0] - 1)
    ix = np.clip(pos[:, 1].astype(int), 0, mask.shape[1] - 1)
    return mask[iy, ix]


def _crystal_in(canvas, pixel, rng, mask=None):
    pos, z, info = _crystal(canvas, pixel, "high", rng, particle=False)
    if mask is not None:
        keep = _at(mask, pos)
        pos, z = pos[keep], z[keep]
    return pos, z, info


def _film_atoms(canvas, pixel, rng, mask=None):
    """Amorphous carbon-like support: light atoms at random, non-overlapping."""
    pos, _, _ = _amorphous(canvas, pixel, rng)
    if mask is not None and len(pos):
        pos = pos[_at(mask, pos)]
    return pos, np.full(len(pos), 6)


def _defects(pos, z, info, pixel, rng):
    n = len(z)
    keep = rng.random(n) >= rng.uniform(0.0, 0.1)  # vacancies
    sub = rng.random(n) < rng.uniform(0.0, 0.1)  # substitutions
    z = np.where(sub, rng.integers(3, 84, n), z)
    if rng.random() < 0.6 and n:  # an edge dislocation: the isotropic displacement field
        core = pos[rng.integers(n)]
        b = np.asarray(info["vectors_px"])[int(rng.integers(2))]
        d = pos - core
        theta = np.arctan2(d[:, 0], d[:, 1]) - math.atan2(b[0], b[1])
        r2 = np.maximum((d * d).sum(1), 1e-6)
        nu = 0.3
        along = (theta + np.sin(2 * theta) / (4 * (1 - nu))) / (2 * math.pi)
        normal = -((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) / 2
                   + np.cos(2 * theta) / (4 * (1 - nu))) / (2 * math.pi)
        unit = b / max(np.linalg.norm(b), 1e-9)
        perp = np.array([unit[1], -unit[0]])
        norm_b = np.linalg.norm(b)
        pos = pos + norm_b * (along[:, None] * unit + normal[:, None] * perp)
    return pos[keep], z[keep], {"vacancies": int((~keep).sum()), "substitutions": int(sub.sum())}


def _voronoi(canvas, rng, n):
    seeds = rng.uniform(0, 1, (n, 2)) * canvas
    yy, xx = _grid(canvas)
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return d.argmin(0)


def _family_content(family, canvas, pixel, rng):
    """Atoms ``(pos, z)`` and a mass map for one family; what was drawn goes in ``info``."""
    empty = (np.zeros((0, 2)), np.zeros(0, int))
    mass = np.zeros(canvas)
    info: dict[str, Any] = {}
    if family in ("lattice", "defects"):
        pos, z, info = _crystal_in(canvas, pixel, rng)
        if family == "defects":
            pos, z, extra = _defects(pos, z, info, pixel, rng)
            info.update(extra)
    elif family == "interface":
        side = _half_plane(canvas, rng)
        a = _crystal_in(canvas, pixel, rng, side)
        b = _crystal_in(canvas, pixel, rng, ~side)
        pos, z = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
        if rng.random() < 0.4:  # an amorphous layer along the boundary
            band = ndimage.distance_transform_edt(side) + ndimage.distance_transform_edt(~side)
            layer = band < rng.uniform(1.0, 4.0) / pixel + 1
            keep = ~_at(layer, pos)
            fpos, fz = _film_atoms(canvas, pixel, rng, layer)
            pos, z = np.concatenate([pos[keep], fpos]), np.concatenate([z[keep], fz])
        info = {"lattices": [a[2]["lattice"], b[2]["lattice"]]}
    elif family == "polycrystal":
        grains = _voronoi(canvas, rng, int(rng.integers(2, 9)))
        parts = [_crystal_in(canvas, pixel, rng, grains == g) for g in range(grains.max() + 1)]
        pos = np.concatenate([p[0] for p in parts])
        z = np.concatenate([p[1] for p in parts])
        mass = (rng.uniform(0.3, 1.0, grains.max() + 1))[grains]  # thickness per grain
        info = {"grains": len(parts)}
    elif family == "particles":
        film_pos, film_z = _film_atoms(canvas, pixel, rng)
        pos, z = [film_pos], [film_z]
        mass += 0.2 * _support(canvas, 1.0, rng)
        n = int(rng.integers(1, 7))
        for _ in range(n):
            r = rng.uniform(0.05, 0.35) * min(canvas)
            shape = _polygon_mask(canvas, rng, radius=r, sides=int(rng.integers(5, 12)))
            p, zz, _ = _crystal_in(canvas, pixel, rng, shape)
            pos.append(p)
            z.append(zz)
            mass += shape * rng.uniform(0.5, 1.0)
        pos, z = np.concatenate(pos), np.concatenate(z)
        info = {"particles": n}
    elif family == "amorphous":
        pos, z, info = _amorphous(canvas, pixel, rng)
        mass += _support(canvas, rng.uniform(1.0, 8.0), rng)
    elif family == "points":
        pos, z, info = _points(canvas, pixel, rng)
        mass += 0.3 * _support(canvas, 1.0, rng)
    else:  # shapes
        pos, z = empty
        mass = _shapes_mass(canvas, rng)
    return np.asarray(pos, float).reshape(-1, 2), np.asarray(z, int), np.clip(mass, 0, None), info


# --------------------------------------------------------------------------------------------
# Contrast
# --------------------------------------------------------------------------------------------
def _normalised(img):
    top = float(img.max())
    return img / top if top > 0 else img


def _stem_image(contrast, pos, z, mass, sigma_px, rng):
    gamma = rng.uniform(1.4, 2.0)
    if contrast == "haadf":
        cols = _normalised(_gaussian_spots(mass.shape, pos, z.astype(float) ** gamma, sigma_px))
        level = rng.uniform(0.0, 0.6) if len(z) else rng.uniform(0.5, 1.0)  # no atoms: mass is the image
        img = cols + level * mass + rng.uniform(0.0, 0.05)
    elif contrast == "bf":
        cols = _normalised(_gaussian_spots(mass.shape, pos, z.astype(float) ** 1.0, 1.2 * sigma_px))
        img = 1.0 - rng.uniform(0.2, 0.8) * cols - rng.uniform(0.0, 0.5) * mass
    else:  # abf: dark cores, a faint bright ring; light elements show (Z**0.5)
        w = z.astype(float) ** 0.5
        core = _gaussian_spots(mass.shape, pos, w, sigma_px)
        ring = _gaussian_spots(mass.shape, pos, w, 2.0 * sigma_px)
        cols = _normalised(core - 0.4 * ring + 0.4 * ring.max())
        img = 1.0 - rng.uniform(0.2, 0.7) * cols - rng.uniform(0.0, 0.4) * mass
    return np.clip(img, 0.02, None)


def _tem_image(pos, z, mass, pixel, rng):
    kv = (80.0, 200.0, 300.0)[int(rng.integers(3))]
    lam = electron_wavelength(kv)
    cs = rng.uniform(-3e5, 3e5) if rng.random() < 0.5 else rng.uniform(5e6, 1.5e7)
    defocus = -1.2 * math.sqrt(abs(cs) * lam) * rng.uniform(-1.5, 1.5) + rng.uniform(-100, 100)
    sigma_px = max(rng.uniform(0.25, 0.45) / pixel, 0.5)
    v = _gaussian_spots(mass.shape, pos, z.astype(float) ** 0.75, sigma_px)
    phase = _normalised(v) * rng.uniform(0.1, 1.0) + mass * rng.uniform(0.0, 1.0)
    shape = mass.shape
    fast = (sp_fft.next_fast_len(shape[0]), sp_fft.next_fast_len(shape[1]))
    padded = np.pad(phase, [(0, fast[0] - shape[0]), (0, fast[1] - shape[1])], mode="reflect")
    img = render_tem(padded, pixel, lam, defocus, cs, rng.uniform(20, 60), rng.uniform(0, 0.1))
    img = img[:shape[0], :shape[1]] * np.exp(-rng.uniform(0.0, 1.5) * mass)  # mass-thickness
    return img / img.mean(), {"voltage_kv": kv, "defocus": defocus, "cs": cs}


def _sem_image(mass, rng):
    height = ndimage.gaussian_filter(mass, rng.uniform(0.7, 3.0))
    gy, gx = np.gradient(height)
    slope = np.hypot(gy, gx)
    angle = rng.uniform(0, 2 * math.pi)
    shading = gy * math.sin(angle) + gx * math.cos(angle)  # towards the detector
    img = (rng.uniform(0.1, 0.4) + rng.uniform(0.2, 0.6) * mass
           + rng.uniform(1.0, 6.0) * slope + rng.uniform(0.0, 3.0) * shading)
    return _normalised(np.clip(img, 0.02, None))


# --------------------------------------------------------------------------------------------
# Public
# --------------------------------------------------------------------------------------------
def _choose(options: tuple[str, ...], exclude: Collection[str], what: str, rng) -> str:
    allowed = [o for o in options if o not in exclude]
    if not allowed:
        raise InputError(f"every {what} is excluded ({', '.join(options)}); leave at least one")
    return allowed[int(rng.integers(len(allowed)))]


def make_scene(shape: tuple[int, int], modality: str, resolution: str, rng: np.random.Generator,
               *, family: str | None = None, contrast: str | None = None,
               exclude: Collection[str] = ()) -> tuple[np.ndarray, dict]:
    """A random clean image (float64, >= 0) from the broad distribution, and what was drawn.

    Parameters
    ----------
    shape : (int, int)
        Image size (H, W), at least 8 x 8.
    modality : {"stem", "tem", "sem"}
    resolution : {"high", "low"}
        Lattice periods of 2-40 px or 0.7-2.5 px.
    rng : numpy.random.Generator
    family, contrast : str, optional
        Fix the family (:data:`FAMILIES`) or the contrast (:data:`CONTRASTS`); random when None.
    exclude : collection of str
        Families and contrasts never drawn (held out of training).

    Returns
    -------
    image : ndarray (H, W)
        S(T)EM and SEM: maximum 1; TEM: mean 1.
    info : dict
        family, contrast, modality, resolution, spacing_px, pixel_size (Å), and the family's
        parameters.

    Examples
    --------
    >>> img, info = make_scene((48, 48), "stem", "high", np.random.default_rng(3),
    ...                        family="polycrystal", contrast="bf")
    >>> info["family"], info["contrast"], info["grains"] >= 2
    ('polycrystal', 'bf', True)
    """
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if resolution not in _SPACING_PX:
        raise InputError(f"resolution must be 'high' or 'low', got {resolution!r}")
    if len(shape) != 2 or min(shape) < 8:
        raise InputError(f"shape must be (H, W) with sizes >= 8, got {shape!r}")
    check_rng(rng)
    families = _SEM_FAMILIES if modality == "sem" else FAMILIES
    family = family or _choose(families, exclude, "family", rng)
    contrast = contrast or _choose(CONTRASTS[modality], exclude, "contrast", rng)
    lo, hi = _SPACING_PX[resolution]
    spacing = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    pixel = _MEAN_LATTICE_A / spacing  # Å per px
    sigma_px = max(rng.uniform(0.35, 0.7) / pixel, 0.5)
    pad = 8 if modality == "sem" else min(64, math.ceil(4 * sigma_px) + 8)
    canvas = (int(shape[0]) + 2 * pad, int(shape[1]) + 2 * pad)
    pos, z, mass, info = _family_content(family, canvas, pixel, rng)
    if modality != "sem" and rng.random() < 0.3:  # a thickness wedge
        mass = mass * _gradient(canvas, rng, 0.5)
    info = {"family": family, "contrast": contrast, "modality": modality, "resolution": resolution,
            "spacing_px": spacing, "pixel_size": pixel, "n_atoms": int(len(z)), **info}
    if modality == "stem":
        img = _stem_image(contrast, pos, z, mass, sigma_px, rng)
    elif modality == "tem":
        img, optics = _tem_image(pos, z, mass, pixel, rng)
        info.update(optics)
    else:
        img = _sem_image(mass, rng)
    if rng.random() < 0.2:  # vacuum: the specimen stops along a polygon's edge
        vacuum = _polygon_mask(canvas, rng, radius=rng.uniform(0.3, 0.8) * min(canvas))
        level = float(np.quantile(img, 0.02 if contrast in ("haadf", "topography") else 0.98))
        img = np.where(vacuum, img, level)
        info["vacuum"] = True
    img = img[pad:pad + shape[0], pad:pad + shape[1]]
    img = np.clip(img, 0, None)
    img = img / img.mean() if modality == "tem" else _normalised(img)
    return img, info


def _distortion_table(modality: str, resolution: str) -> dict[str, Draw]:
    """A copy of the distortion table for ``modality`` (SEM: the scanned S(T)EM chain)."""
    return dict(SETTINGS["tem" if modality == "tem" else "stem", resolution])


def training_settings(modality: str, resolution: str, *, exclude: Collection[str] = ()
                      ) -> Mapping[str, Draw]:
    """The training distortion table, with the distortions in ``exclude`` switched off.

    The table of :data:`emfuse.pipeline.synth.distortions.SETTINGS` with those distortions at
    probability 0; SEM uses the S(T)EM table.

    Parameters
    ----------
    modality : {"stem", "tem", "sem"}
        The modality (SEM uses the S(T)EM table).
    resolution : {"high", "low"}
        The resolution of the table.
    exclude : collection of str
        Distortions switched off (held out of training); other names are ignored.

    Returns
    -------
    mapping of str to Draw
        The distortion table.

    Examples
    --------
    >>> training_settings("stem", "high", exclude=["row_line_rel"])["row_line_rel"].p
    0.0
    """
    table = _distortion_table(modality, resolution)
    for name in exclude:
        if name in table:
            table[name] = dataclasses.replace(table[name], p=0.0)
    return table


#: the distortions of a frame whose scan and optics are perfect: the detector's noise alone
DETECTOR_NOISE = ("dose", "dark", "reset_sigma", "flicker_sigma", "readout_sigma", "pmt_rel")


def noise_only_settings(modality: str, resolution: str, *, exclude: Collection[str] = ()
                        ) -> Mapping[str, Draw]:
    """The training table with everything but the detector's noise switched off.

    A frame from a clean scan: shot noise always, and the :data:`DETECTOR_NOISE` of the
    modality's chain with their usual probabilities (those in ``exclude`` stay off); no scan
    jitter, fast-scan PSF, row-line noise, defects, clipping, quantisation, interpolation or
    blur. Whatever such a frame shows, the truth shows too.

    Parameters
    ----------
    modality, resolution, exclude
        As :func:`training_settings`.

    Returns
    -------
    mapping of str to Draw
        The distortion table.

    Examples
    --------
    >>> table = noise_only_settings("stem", "high")
    >>> table["jitter_line_x"].p, table["psf_gamma"].p, table["pmt_rel"].p
    (0.0, 0.0, 1.0)
    """
    table = dict(training_settings(modality, resolution, exclude=exclude))
    for name in table:
        if name not in DETECTOR_NOISE:
            table[name] = dataclasses.replace(table[name], p=0.0)
    return table


#: the scan jitter's amplitudes (px) in the S(T)EM tables
JITTER_AMPLITUDES = ("jitter_line_x", "jitter_line_y", "jitter_pixel_x")


def cap_jitter(table: Mapping[str, Draw], max_px: float) -> dict[str, Draw]:
    """``table`` with the scan jitter's amplitudes drawn up to ``max_px`` at most.

    Parameters
    ----------
    table : mapping of str to Draw
        A distortion table (:func:`training_settings`).
    max_px : float
        The largest amplitude, px (an amplitude in Å over the scene's pixel size).

    Returns
    -------
    dict of str to Draw
        The table with :data:`JITTER_AMPLITUDES` drawn in ``[min(low, max_px), min(high, max_px)]``.

    Examples
    --------
    >>> capped = cap_jitter(training_settings("stem", "high"), 0.25)
    >>> capped["jitter_line_x"].high, capped["jitter_pixel_x"].high
    (0.25, 0.25)
    """
    out = dict(table)
    for name in JITTER_AMPLITUDES:
        if name in out:
            high = min(out[name].high, max_px)
            out[name] = dataclasses.replace(out[name], low=min(out[name].low, high), high=high)
    return out


def make_scene_pair(shape: tuple[int, int], modality: str, resolution: str, rng: np.random.Generator,
                    *, exclude: Collection[str] = (), settings: Mapping[str, Draw] | None = None,
                    max_jitter_angstrom: float | None = None,
                    **scene: Any) -> tuple[np.ndarray, np.ndarray, dict]:
    """(clean, distorted, info) in counts, float32, as :func:`emfuse.pipeline.synth.restore_specimens.make_pair`.

    Parameters
    ----------
    shape : (int, int)
        Image size (H, W).
    modality, resolution, rng
        As :func:`make_scene`.
    exclude : collection of str
        Families, contrasts and distortions never drawn.
    settings : mapping of str to Draw, optional
        The distortion table; default :func:`training_settings` with ``exclude``.
    max_jitter_angstrom : float, optional
        S(T)EM and SEM: the scan jitter's amplitude at most this many Å, converted with the
        scene's pixel size (:func:`cap_jitter`). The tables give jitter in pixels (up to 1 px
        at high resolution), chosen for pixels of 0.03-0.4 Å; on a scene of 1.5 Å pixels
        (a lattice period of 3 px) 1 px is 1.5 Å, a third of the period, which no frame that
        shows atoms has, and which leaves the lattice's phase unknowable.
    **scene
        Passed to :func:`make_scene` (``family``, ``contrast``).

    Returns
    -------
    clean, distorted : numpy.ndarray
        (H, W) float32 in counts.
    info : dict
        What :func:`make_scene` drew, with the distortions drawn under ``"distortion"``.

    Examples
    --------
    >>> c, d, info = make_scene_pair((32, 32), "tem", "low", np.random.default_rng(0))
    >>> c.dtype, d.shape, "dose" in info["distortion"]
    (dtype('float32'), (32, 32), True)
    """
    image, info = make_scene(shape, modality, resolution, rng, exclude=exclude, **scene)
    table = settings if settings is not None else training_settings(modality, resolution, exclude=exclude)
    chain = "tem" if modality == "tem" else "stem"
    if max_jitter_angstrom is not None and chain == "stem":
        table = cap_jitter(table, max_jitter_angstrom / info["pixel_size"])
    degraded, params = random_distortion(image, chain, rng, resolution=resolution, settings=table)
    info["distortion"] = params
    return (params["dose"] * image).astype(np.float32), degraded.astype(np.float32), info


def make_scene_batch(n: int, shape: tuple[int, int], modality: str | tuple[str, ...],
                     resolution: str | tuple[str, ...], rng: np.random.Generator, *,
                     exclude: Collection[str] = (), noise_only: float = 0.0,
                     max_jitter_angstrom: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (n, 1, H, W) float32; ``modality``/``resolution`` may be tuples to draw from.

    The signature fits :func:`emfuse.pipeline.restore.train.train`'s ``data`` (with
    :func:`functools.partial` for ``exclude``).

    Parameters
    ----------
    n : int
        The number of pairs.
    shape : (int, int)
        Image size (H, W).
    modality : str or tuple of str
        The modality, or modalities to draw one from per pair.
    resolution : str or tuple of str
        The resolution, or resolutions to draw one from per pair.
    rng : numpy.random.Generator
        The random generator.
    exclude : collection of str
        Families, contrasts and distortions never drawn.
    noise_only : float
        The probability that a pair's only distortion is the detector's noise
        (:func:`noise_only_settings`). Under the full table fewer than 1 % of S(T)EM pairs
        have a clean scan (no line jitter, no PSF), so a network never learns to keep a
        fine lattice that a clean frame plainly shows. With 0 (the default) the random
        stream is that of the full table alone.
    max_jitter_angstrom : float, optional
        As :func:`make_scene_pair` (None: the tables' jitter in pixels).

    Returns
    -------
    clean, degraded : numpy.ndarray
        (n, 1, H, W) float32.
    """
    clean = np.empty((n, 1, *shape), np.float32)
    degraded = np.empty_like(clean)
    for i in range(n):
        mod = modality if isinstance(modality, str) else modality[int(rng.integers(len(modality)))]
        res = resolution if isinstance(resolution, str) else resolution[int(rng.integers(len(resolution)))]
        settings = None
        if noise_only and rng.random() < noise_only:
            settings = noise_only_settings(mod, res, exclude=exclude)
        clean[i, 0], degraded[i, 0], _ = make_scene_pair(shape, mod, res, rng, exclude=exclude, settings=settings,
                                                         max_jitter_angstrom=max_jitter_angstrom)
    return clean, degraded


def held_out(kind: str) -> tuple[str, ...]:
    """Everything in :data:`HELD_OUT` (``kind="all"``) or one of its keys.

    Parameters
    ----------
    kind : str
        ``"all"`` or a key of :data:`HELD_OUT` (``"family"``, ``"contrast"``, ``"distortion"``).

    Returns
    -------
    tuple of str
        The held-out names.
    """
    if kind == "all":
        return tuple(v for values in HELD_OUT.values() for v in values)
    return HELD_OUT[kind]


def held_out_settings(modality: str, resolution: str, distortion: str) -> Mapping[str, Draw]:
    """A table where the held-out ``distortion`` is always applied (for the held-out report).

    Parameters
    ----------
    modality, resolution : str
        As :func:`training_settings`.
    distortion : str
        The held-out distortion: always applied, at no less than a third of its largest value.

    Returns
    -------
    mapping of str to Draw
        The distortion table.
    """
    table = _distortion_table(modality, resolution)
    old: Draw = table[distortion]
    table[distortion] = Draw(p=1.0, low=max(old.low, old.high / 3), high=old.high, log=old.log)
    return table

