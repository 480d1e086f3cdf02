"""Paired bright-field, dark-field and HRTEM images of polycrystalline specimens, with their truth.

The simulator makes what the AVAE fuses: three images of the same region, recorded in the three
TEM modes, and the ground truth they are all transforms of, the specimen's **projected
potential** at the full sampling (the "projected structure"). It is a fast physical model, not a
multislice simulation; every step is one line of physics:

specimen
    A Voronoi tessellation into grains (mean size from the material class), separated by an
    amorphous intergranular film; a fraction of the area amorphous. Every crystalline grain has
    an in-plane rotation ``theta`` and a tilt off its zone axis; its atomic columns (a 2-D
    projected lattice with a basis, :data:`MATERIALS`) are gaussians whose contrast falls with the
    tilt as ``a = exp(-(tilt / tilt0)^2)`` (a tilted grain's columns blur into their mean).
    The local thickness ``t`` varies smoothly (a wedge plus bumps). Truth:
    ``V = (t / t0) * rho * [(1 - a) + a * C(r)]`` in crystals (``C``: columns, mean 1; ``rho``:
    mean inner potential of the class) and ``(t / t0) * rho_am * (1 + texture)`` in amorphous
    material.
HRTEM (phase contrast)
    The exit wave of a phase object ``psi = exp((i - mu) sigma V)`` through the objective lens:
    ``I = |F^-1[F[psi] A(k) E_t(k) E_s(k) exp(-i chi(k))]|^2`` with
    ``chi = pi lambda df k^2 + pi/2 Cs lambda^3 k^4``, the temporal-coherence envelope
    ``E_t = exp(-(pi lambda Delta k^2)^2 / 2)`` (focal spread ``Delta``), the spatial-coherence
    envelope ``E_s = exp(-(pi alpha / lambda)^2 (Cs lambda^3 k^3 + df lambda k)^2)``
    (convergence ``alpha``) and the objective aperture ``A``. Fringes of the lattice, with
    contrast reversals set by the defocus; little of the low-frequency mass-thickness.
BF (mass-thickness and diffraction contrast)
    ``I = exp(-kappa (t / t0) rho) * (1 - sum_g m_g D_g sin^2(pi t / xi))``: absorption by
    mass-thickness and loss to Bragg beams (``D_g`` large for grains near their zone axis or
    in a two-beam condition; thickness fringes with the extinction distance ``xi``), blurred by
    the small objective aperture (gaussian PSF of ``bf_sigma`` px): no lattice fringes.
DF (one reflection)
    The objective aperture on one reflection at azimuth ``phi``: a grain lights when one of its
    symmetry-equivalent reflections lies within the aperture, ``exp(-(dtheta / w)^2)``, and it
    diffracts (near zone axis or two-beam); ``sin^2(pi t / xi)`` thickness fringes, a weak
    diffuse background from all material, the same low-resolution PSF.
recording
    Each mode is drifted against the HRTEM by a random sub-pixel shift (the HRTEM frame is
    the truth's frame), multiplied by its own uneven illumination (an off-centre gaussian beam
    and a gradient), and recorded with the TEM camera models of :mod:`emfuse.pipeline.synth.distortions`:
    shot noise at the mode's dose, dark current, flicker (1/f) and readout noise. The result is
    in counts.

randomised
    The three classes are fixed projections seen by one instrument. ``simulate_regions(...,
    randomised=True)`` (:func:`random_region`) draws each region's crystal from nine structure
    families of real compounds down random zone axes (:mod:`.crystals`) and its instrument,
    optics, pixel size, thickness, tilts, doses and camera from wide ranges (:func:`random_scope`).

Units: lengths in nm, images in pixels of ``pixel_nm``; the truth in units of the metal
class's mean projected potential at the mean thickness (about 1 in a metal grain).

Examples
--------
>>> import numpy as np
>>> region = simulate_region((64, 64), "metal", np.random.default_rng(0))
>>> region.modes.shape, region.truth.shape, region.material
((3, 64, 64), (64, 64), 'metal')
>>> MODES
('bf', 'df', 'hrtem')
>>> bool(np.all(region.drift[MODES.index("hrtem")] == 0))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage
from scipy.spatial import cKDTree

from ...errors import InputError
from ..avae.modes import HRTEM, MODES  # noqa: F401  (the order of the ``mode`` axis of every array and store)
from .crystals import FAMILIES, random_material
from .distortions import (
    dark_current_noise,
    flicker_noise,
    readout_noise,
    shot_noise,
)
from .restore_specimens import (
    crystal_positions,
    electron_wavelength,
    lattice_vectors,
    render_stem,
)

__all__ = ["MATERIALS", "MODES", "VARIED", "Material", "ModeImages", "Microscope", "ctf",
           "random_region", "random_scope", "simulate_region", "simulate_regions"]

_PAD = 16  # px simulated around the field: room for the drift and the HRTEM delocalisation


@dataclass(frozen=True)
class Material:
    """A material class: its projected lattice, grains and scattering strength.

    ``basis`` lists the columns of the unit cell as (fractional a1, fractional a2, weight),
    the weight being the column's projected potential relative to the others; ``alloy``
    is the relative spread of column weights (random site occupancy).
    """

    name: str
    a_nm: float  # lattice constants of the projected cell
    b_nm: float
    angle_deg: float  # between a1 and a2
    basis: tuple[tuple[float, float, float], ...]
    symmetry_deg: float  # rotation that maps the projected lattice on itself
    rho: float  # mean inner potential (relative), sets phase and mass-thickness
    grain_nm: tuple[float, float]  # range of mean grain diameters
    amorphous: tuple[float, float]  # range of the amorphous area fraction
    column_nm: float  # gaussian width of a projected column
    alloy: float = 0.0
    extinction_nm: float = 30.0
    compound: str = ""  # what it is, where made by :mod:`.crystals` (e.g. "GaAs")
    zone: tuple[int, ...] = ()  # the zone axis [u v w] it is seen down


#: Three material classes, each seen down a low-index zone axis.
MATERIALS: dict[str, Material] = {
    # fcc Ni-Cr-Fe alloy along [001]: a square net of mixed columns, a/2 = 0.176 nm apart
    "metal": Material("metal", 0.249, 0.249, 90.0, ((0.0, 0.0, 1.0), (0.5, 0.5, 1.0)), 90.0,
                      rho=1.0, grain_nm=(2.5, 4.5), amorphous=(0.0, 0.1), column_nm=0.045,
                      alloy=0.25, extinction_nm=25.0),
    # Si along [110]: dumbbells (0.136 nm) on a centred rectangular net 0.384 x 0.543 nm
    "semiconductor": Material("semiconductor", 0.384, 0.543, 90.0,
                              ((0.0, 0.0, 1.0), (0.0, 0.25, 1.0), (0.5, 0.5, 1.0), (0.5, 0.75, 1.0)),
                              180.0, rho=0.55, grain_nm=(3.5, 6.0), amorphous=(0.05, 0.2),
                              column_nm=0.05, extinction_nm=60.0),
    # perovskite SrTiO3 along [001]: Sr and TiO columns on a 0.39 nm square net
    "ceramic": Material("ceramic", 0.3905, 0.3905, 90.0, ((0.0, 0.0, 1.0), (0.5, 0.5, 0.6)), 90.0,
                        rho=0.7, grain_nm=(1.8, 3.0), amorphous=(0.1, 0.3), column_nm=0.055,
                        extinction_nm=45.0),
}


@dataclass(frozen=True)
class Microscope:
    """Ranges of the acquisition parameters, drawn per region (lengths in nm, angles in rad).

    The defaults describe an uncorrected 300 kV instrument (Cs 1.2 mm, defocus around
    Scherzer, -53 nm) or, with probability ``p_corrected``, an aberration-corrected one
    (Cs 5 um, a few nm of defocus); doses are mean electrons per pixel of each mode.
    """

    kv: float = 300.0
    cs_nm: float = 1.2e6
    defocus_nm: tuple[float, float] = (-75.0, -35.0)
    p_corrected: float = 0.3
    cs_corrected_nm: float = 5e3
    defocus_corrected_nm: tuple[float, float] = (-8.0, 8.0)
    focal_spread_nm: tuple[float, float] = (2.5, 4.5)
    convergence_rad: tuple[float, float] = (0.1e-3, 0.3e-3)
    aperture_inv_nm: float = 9.0
    thickness_nm: tuple[float, float] = (15.0, 40.0)
    bf_sigma_px: tuple[float, float] = (1.6, 2.6)
    df_sigma_px: tuple[float, float] = (1.6, 2.6)
    dose: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "bf": (150.0, 600.0), "df": (150.0, 600.0), "hrtem": (15.0, 120.0)})
    max_drift_px: float = 3.0
    illumination: tuple[float, float] = (0.7, 1.5)  # beam radius / field size
    gradient: float = 0.15  # largest relative intensity change across the field
    # -- per-region variation of mode quality (off by default; see :data:`VARIED`) --
    distortion_px: float = 0.0  # rms of a smooth non-rigid displacement of BF and DF (px)
    distortion_scale: float = 0.25  # its correlation length / field size
    contamination: tuple[float, float] = (0.0, 0.0)  # range of the HRTEM area fraction covered
    contamination_phase: tuple[float, float] = (0.3, 0.8)  # mean extra phase of a patch (rad)
    # -- further ranges of the randomised simulator (:func:`random_scope`); the defaults draw nothing --
    tilt_sigma_deg: float = 4.0  # grains' tilt off the zone axis, half-normal
    camera_mtf_px: tuple[float, float] = (0.0, 0.0)  # gaussian blur of the recorded counts (px)


#: The acquisition ranges with per-region variation of mode quality switched on:
#:
#: ``distortion_px = 1.5``
#:     BF and DF are recorded at a lower magnification than the HRTEM, with other projector-lens
#:     excitations, and some time before it: projector distortion (0.5-2 % is common) and the
#:     specimen's bending or charging between exposures leave a smooth, position-dependent
#:     displacement between the modes that a rigid registration cannot remove. Each of BF and DF
#:     gets its own random displacement field (correlation length a quarter of the field, rms
#:     ``distortion_px`` times U(0.5, 1)), so a mode is well aligned in one part of the field and
#:     off by several pixels in another. Only a comparison with the other modes can tell where.
#: ``contamination = (0, 0.4)``
#:     Hydrocarbon contamination grows where the intense, focused HRTEM beam sits (BF and DF are
#:     taken with a spread beam, first): patches covering up to 40 % of the HRTEM field carry a
#:     few nm of amorphous carbon, an extra phase of mean U(0.3, 0.8) rad with a granular texture
#:     (its own speckle through the CTF, on top of the lattice fringes). The truth (the specimen)
#:     is unchanged; from the HRTEM alone a contaminated crystal looks like amorphous material,
#:     BF and DF show the grain.
#:
#: The defaults of :class:`Microscope` leave both off (0), so every earlier result is unchanged.
VARIED = Microscope(distortion_px=1.5, contamination=(0.0, 0.4))


@dataclass
class ModeImages:
    """One simulated region: the recorded modes, the truth and how they were made.

    Attributes
    ----------
    modes : ndarray (3, H, W) float32
        BF, DF, HRTEM in counts (order :data:`MODES`), drifted, unevenly lit and noisy.
    truth : ndarray (H, W) float32
        Projected potential in the HRTEM frame.
    material : str
    drift : ndarray (3, 2)
        Drift ``(dy, dx)`` of each mode against the HRTEM, in px, as
        :func:`emfuse.pipeline.register.estimate_shift` (HRTEM, mode) measures it.
    params : dict
        JSON-able record of every parameter drawn.
    illumination : ndarray (3, H, W) float32 or None
        Each mode's illumination (mean 1): what a flat (vacuum) reference recorded with the
        same beam would show, without its noise.
    """

    modes: np.ndarray
    truth: np.ndarray
    material: str
    drift: np.ndarray
    params: dict[str, Any]
    illumination: np.ndarray | None = None


def _smooth_field(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field, zero mean and unit standard deviation, correlated over ``scale_px``."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), scale_px, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-12)


def _grains(shape: tuple[int, int], mean_px: float, film_px: float,
            rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Voronoi grain labels (0..n-1), -1 on the intergranular film of width ``film_px``."""
    ny, nx = shape
    n = max(2, int(round(ny * nx / (math.pi * (mean_px / 2) ** 2))))
    seeds = rng.random((n, 2)) * [ny, nx]
    yy, xx = np.mgrid[0:ny, 0:nx]
    d, idx = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2)
    labels = idx[:, 0].reshape(shape).astype(np.int64)
    # distance to the bisector with the second nearest grain: (d2^2 - d1^2) / (2 |s2 - s1|)
    sep = np.linalg.norm(seeds[idx[:, 1]] - seeds[idx[:, 0]], axis=1)
    to_boundary = ((d[:, 1] ** 2 - d[:, 0] ** 2) / (2 * np.maximum(sep, 1e-9))).reshape(shape)
    labels[to_boundary < film_px / 2] = -1
    return labels, n


def _columns(shape: tuple[int, int], labels: np.ndarray, grain: int, mat: Material, theta: float,
             pixel_nm: float, rng: np.random.Generator) -> np.ndarray:
    """The columns of one grain, gaussians of mean 1 over the grain (zero elsewhere)."""
    rows, cols = np.nonzero(labels == grain)
    if rows.size == 0:
        return np.zeros(shape)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = (y1 - y0, x1 - x0)
    vectors = lattice_vectors(mat.a_nm / pixel_nm, mat.b_nm / pixel_nm, math.radians(mat.angle_deg), theta)
    basis = np.array([b[:2] for b in mat.basis])
    sigma = mat.column_nm / pixel_nm
    pos, site = crystal_positions(box, vectors, basis, origin=tuple(rng.random(2) * 10), margin=3 * sigma)
    weights = np.array([b[2] for b in mat.basis])[site]
    if mat.alloy:
        weights = weights * (1 + mat.alloy * rng.uniform(-1, 1, weights.shape))
    cell_area = abs(np.linalg.det(vectors))
    mean = sum(b[2] for b in mat.basis) * 2 * math.pi * sigma**2 / cell_area
    image = np.zeros(shape)
    image[y0:y1, x0:x1] = render_stem(box, pos, weights / mean, sigma)
    return image * (labels == grain)


def _structure(shape: tuple[int, int], mat: Material, pixel_nm: float, scope: Microscope,
               rng: np.random.Generator) -> dict[str, Any]:
    """The specimen: truth (projected potential), its ingredients, and per-grain parameters."""
    grain_px = rng.uniform(*mat.grain_nm) / pixel_nm
    labels, n = _grains(shape, grain_px, film_px=rng.uniform(0.1, 0.3) / pixel_nm, rng=rng)
    amorphous_grains = rng.random(n) < rng.uniform(*mat.amorphous)
    theta = rng.uniform(0, 2 * math.pi, n)
    tilt_deg = np.abs(rng.normal(0, scope.tilt_sigma_deg, n))
    zone = np.exp(-((tilt_deg / 2.5) ** 2))  # column contrast surviving the tilt
    two_beam = rng.random(n) * (rng.random(n) < 0.4)  # strong single reflection, off zone
    zone[amorphous_grains], two_beam[amorphous_grains] = 0.0, 0.0
    crystal = (labels >= 0) & ~amorphous_grains[np.maximum(labels, 0)]
    t0 = rng.uniform(*scope.thickness_nm)
    field_px = max(shape)
    thick = 1 + 0.15 * _smooth_field(shape, field_px / 6, rng)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / field_px
    wedge = rng.uniform(-0.25, 0.25, 2)
    thick = np.clip(thick + wedge[0] * (yy - 0.5) + wedge[1] * (xx - 0.5), 0.35, None)
    columns = np.ones(shape)
    for g in np.unique(labels[crystal]):
        inside = labels == g
        c = _columns(shape, labels, g, mat, theta[g], pixel_nm, rng)
        columns[inside] = (1 - zone[g]) + zone[g] * c[inside]
    rho_am = 0.8 * mat.rho
    texture = 0.15 * _smooth_field(shape, 0.6, rng)
    rho = np.where(crystal, mat.rho, rho_am)
    truth = thick * np.where(crystal, mat.rho * columns, rho_am * (1 + texture))
    return dict(truth=truth, labels=labels, crystal=crystal, thick=thick, t0=t0, rho=rho,
                theta=theta, zone=zone, two_beam=two_beam, n_grains=n, grain_px=grain_px)


def ctf(shape: tuple[int, int], pixel_nm: float, *, kv: float, cs_nm: float, defocus_nm: float,
        focal_spread_nm: float, convergence_rad: float, aperture_inv_nm: float) -> np.ndarray:
    """The objective lens's wave transfer function ``A E_t E_s exp(-i chi)`` on the FFT grid.

    Examples
    --------
    >>> t = ctf((32, 32), 0.05, kv=300, cs_nm=1.2e6, defocus_nm=-53, focal_spread_nm=3,
    ...         convergence_rad=1e-4, aperture_inv_nm=9)
    >>> t.shape, complex(t[0, 0]) == 1
    ((32, 32), True)
    """
    lam = electron_wavelength(kv) / 10  # Å -> nm
    ky = np.fft.fftfreq(shape[0], d=pixel_nm)[:, None]
    kx = np.fft.fftfreq(shape[1], d=pixel_nm)[None, :]
    k2 = ky**2 + kx**2
    k = np.sqrt(k2)
    chi = math.pi * lam * defocus_nm * k2 + 0.5 * math.pi * cs_nm * lam**3 * k2**2
    temporal = np.exp(-0.5 * (math.pi * lam * focal_spread_nm * k2) ** 2)
    spatial = np.exp(-((math.pi * convergence_rad / lam) ** 2) * (cs_nm * lam**3 * k**3 + defocus_nm * lam * k) ** 2)
    aperture = k <= aperture_inv_nm
    return aperture * temporal * spatial * np.exp(-1j * chi)


def _hrtem(truth: np.ndarray, pixel_nm: float, scope: Microscope, rng: np.random.Generator,
           params: dict) -> np.ndarray:
    corrected = bool(rng.random() < scope.p_corrected)
    lens = dict(kv=scope.kv,
                cs_nm=scope.cs_corrected_nm if corrected else scope.cs_nm,
                defocus_nm=float(rng.uniform(*(scope.defocus_corrected_nm if corrected else scope.defocus_nm))),
                focal_spread_nm=float(rng.uniform(*scope.focal_spread_nm)),
                convergence_rad=float(rng.uniform(*scope.convergence_rad)),
                aperture_inv_nm=scope.aperture_inv_nm)
    sigma = rng.uniform(0.5, 0.9)  # phase (rad) per unit projected potential
    phase = sigma * truth
    if scope.contamination[1] > 0:  # amorphous carbon patches (drawn only when switched on)
        fraction = float(rng.uniform(*scope.contamination))
        carbon = float(rng.uniform(*scope.contamination_phase))
        blobs = _smooth_field(truth.shape, max(truth.shape) / 8, rng)
        texture = _smooth_field(truth.shape, 0.7, rng)
        level = np.quantile(blobs, 1 - fraction) if fraction > 0 else np.inf
        patch = ndimage.gaussian_filter((blobs > level).astype(float), 2.0)
        phase = phase + carbon * patch * (1 + 0.5 * texture)
        params["contamination"] = {"fraction": float((blobs > level).mean()), "phase_rad": carbon}
    wave = np.exp((1j - 0.07) * phase)
    image = sp_fft.ifft2(sp_fft.fft2(wave) * ctf(truth.shape, pixel_nm, **lens))
    params["hrtem"] = {**lens, "corrected": corrected, "phase_per_unit": float(sigma), "absorption": 0.07}
    return np.abs(image) ** 2


def _low_resolution(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma_px, mode="nearest")


def _bf_df(spec: dict, mat: Material, scope: Microscope, rng: np.random.Generator,
           params: dict) -> tuple[np.ndarray, np.ndarray]:
    labels, crystal = spec["labels"], spec["crystal"]
    t = spec["thick"] * spec["t0"]
    fringes = np.sin(math.pi * t / mat.extinction_nm) ** 2
    g = np.maximum(labels, 0)
    diffracting = np.clip(0.6 * spec["zone"] + 0.5 * spec["two_beam"], 0, 0.8)[g] * crystal
    mass = spec["thick"] * spec["rho"]
    kappa = rng.uniform(0.3, 0.6)
    bf = np.exp(-kappa * mass) * (1 - diffracting * (0.35 + 0.65 * fringes))
    phi = rng.uniform(0, 2 * math.pi)
    sym = math.radians(mat.symmetry_deg)
    dtheta = np.abs((spec["theta"] - phi + sym / 2) % sym - sym / 2)
    width = math.radians(rng.uniform(8, 14))
    lit = np.exp(-((dtheta / width) ** 2)) * np.clip(0.2 + 0.8 * spec["zone"] + 0.6 * spec["two_beam"], 0, 1)
    df = 0.5 * lit[g] * crystal * (0.3 + 0.7 * fringes) + 0.04 * mass
    sig_bf, sig_df = rng.uniform(*scope.bf_sigma_px), rng.uniform(*scope.df_sigma_px)
    params["bf"] = {"kappa": float(kappa), "psf_sigma_px": float(sig_bf)}
    params["df"] = {"reflection_azimuth_deg": math.degrees(phi), "aperture_width_deg": math.degrees(width),
                    "psf_sigma_px": float(sig_df)}
    return _low_resolution(bf, sig_bf), _low_resolution(df, sig_df)


def _illumination(shape: tuple[int, int], scope: Microscope, rng: np.random.Generator) -> np.ndarray:
    """An off-centre gaussian beam times a linear gradient, mean 1."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx] / max(shape)
    radius = rng.uniform(*scope.illumination)
    cy, cx = rng.uniform(0.2, 0.8, 2) * [ny / max(shape), nx / max(shape)]
    beam = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    slope = rng.uniform(-1, 1, 2) * scope.gradient
    lit = beam * (1 + slope[0] * (yy - 0.5) + slope[1] * (xx - 0.5))
    return lit / lit.mean()


def _record(image: np.ndarray, dose: float, rng: np.random.Generator,
            mtf_px: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, dict]:
    """Camera: shot noise, dark current, flicker and readout noise (counts); optionally its MTF.

    The MTF (a scintillator's spread, ``mtf_px`` a range of gaussian sigmas) blurs the shot
    noise with the signal, so neighbouring pixels' noise is correlated, as on a CCD.
    """
    dark, flicker, readout = rng.uniform(0, 2), rng.uniform(0, 1.5), rng.uniform(0.5, 2.5)
    counts = shot_noise(np.clip(image, 0, None), dose, rng)
    record = {"dose": float(dose), "dark": float(dark), "flicker_sigma": float(flicker),
              "readout_sigma": float(readout)}
    if mtf_px[1] > 0:  # drawn only when switched on, so default regions are unchanged
        sigma = float(rng.uniform(*mtf_px))
        counts = ndimage.gaussian_filter(counts, sigma, mode="nearest")
        record["mtf_sigma_px"] = sigma
    counts = dark_current_noise(counts, dark, rng)
    counts = flicker_noise(counts, flicker, rng)
    counts = readout_noise(counts, readout, rng)
    return counts, record


def _shifted_crop(image: np.ndarray, drift: np.ndarray, pad: int,
                  displacement: np.ndarray | None = None) -> np.ndarray:
    """Crop the field out of the padded canvas, the content moved by ``drift`` (dy, dx).

    ``displacement`` (2, H, W) of the canvas, px: a further position-dependent move of the content.
    """
    if displacement is None:
        moved = ndimage.shift(image, drift, order=3, mode="nearest")
    else:
        yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float64)
        coords = np.stack([yy - drift[0] - displacement[0], xx - drift[1] - displacement[1]])
        moved = ndimage.map_coordinates(image, coords, order=3, mode="nearest")
    return moved[pad:-pad, pad:-pad]


def _displacement(shape: tuple[int, int], scope: Microscope, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A smooth random displacement field (2, H, W) in px, zero mean, rms ``distortion_px * U(0.5, 1)``."""
    rms = scope.distortion_px * float(rng.uniform(0.5, 1.0))
    scale = scope.distortion_scale * max(shape)
    field_ = np.stack([_smooth_field(shape, scale, rng) for _ in range(2)]) * rms
    return field_, rms


def simulate_region(
    shape: Sequence[int],
    material: str | Material,
    rng: np.random.Generator,
    *,
    pixel_nm: float = 0.05,
    scope: Microscope | None = None,
    hrtem_dose: float | None = None,
    record: bool = True,
) -> ModeImages:
    """Simulate BF, DF and HRTEM images of one region of a ``material`` specimen, and its truth.

    Parameters
    ----------
    shape : (int, int)
        Field of view (H, W) in pixels.
    material : {"metal", "semiconductor", "ceramic"} or Material
        A class of :data:`MATERIALS`, or any :class:`Material` (e.g. from
        :func:`emfuse.pipeline.synth.crystals.random_material`).
    rng : numpy.random.Generator
    pixel_nm : float
        Pixel size in nm (0.05 nm resolves the metal's 0.176 nm columns).
    scope : Microscope, optional
        Ranges of the acquisition parameters (default :class:`Microscope`).
    hrtem_dose : float, optional
        Fix the HRTEM dose (electrons per pixel) instead of drawing it.
    record : bool
        False: return the drifted noise-free intensities, evenly lit (for pictures and tests);
        the same parameters are drawn either way.

    Returns
    -------
    ModeImages

    Examples
    --------
    >>> r = simulate_region((48, 40), "ceramic", np.random.default_rng(1), hrtem_dose=50)
    >>> r.modes.dtype, r.params["hrtem"]["dose"]
    (dtype('float32'), 50.0)
    """
    if isinstance(material, Material):
        mat = material
    elif material in MATERIALS:
        mat = MATERIALS[material]
    else:
        raise InputError(f"material must be one of {sorted(MATERIALS)} or a Material, got {material!r}")
    ny, nx = (int(n) for n in shape)
    if min(ny, nx) < 8:
        raise InputError(f"the field must be at least 8 x 8 px, got {tuple(shape)}")
    if not pixel_nm > 0:
        raise InputError(f"pixel_nm must be > 0, got {pixel_nm}")
    scope = scope or Microscope()
    if not 0 <= scope.max_drift_px + 3 * scope.distortion_px <= _PAD - 4:
        raise InputError(f"max_drift_px + 3 distortion_px must be at most {_PAD - 4} px")
    if not 0 <= scope.max_drift_px <= _PAD - 8:
        raise InputError(f"max_drift_px must be in [0, {_PAD - 8}], got {scope.max_drift_px}")
    pad = _PAD
    canvas = (ny + 2 * pad, nx + 2 * pad)
    params: dict[str, Any] = {"material": mat.name, "pixel_nm": pixel_nm, "shape": [ny, nx]}
    if mat.compound:
        params["crystal"] = {"compound": mat.compound, "zone": list(mat.zone), "a_nm": mat.a_nm, "b_nm": mat.b_nm,
                             "angle_deg": mat.angle_deg, "columns": len(mat.basis), "rho": mat.rho}
    spec = _structure(canvas, mat, pixel_nm, scope, rng)
    params["specimen"] = {"grains": int(spec["n_grains"]), "grain_nm": float(spec["grain_px"] * pixel_nm),
                          "thickness_nm": float(spec["t0"]),
                          "crystalline_fraction": float(spec["crystal"].mean())}
    hrtem = _hrtem(spec["truth"], pixel_nm, scope, rng, params)
    bf, df = _bf_df(spec, mat, scope, rng, params)
    drift = np.zeros((len(MODES), 2))
    drift[:HRTEM] = rng.uniform(-scope.max_drift_px, scope.max_drift_px, (HRTEM, 2))
    clean = {"bf": bf, "df": df, "hrtem": hrtem}
    displacement: dict[int, np.ndarray] = {}
    if scope.distortion_px > 0:  # drawn only when switched on, so default regions are unchanged
        for i in range(HRTEM):
            displacement[i], rms = _displacement(canvas, scope, rng)
            params.setdefault("distortion_rms_px", {})[MODES[i]] = rms
    modes, beams = [], []
    for i, mode in enumerate(MODES):
        image = (_shifted_crop(clean[mode], drift[i], pad, displacement.get(i)) if i != HRTEM
                 else clean[mode][pad:-pad, pad:-pad])
        beams.append(_illumination((ny, nx), scope, rng))
        lit = image * beams[-1]
        dose = hrtem_dose if (mode == "hrtem" and hrtem_dose) else rng.uniform(*scope.dose[mode])
        counts, camera = _record(lit, dose, rng, scope.camera_mtf_px)
        if not record:
            counts = image
        params[mode] = {**params.get(mode, {}), **camera, "drift_px": drift[i].tolist()}
        modes.append(counts)
    truth = spec["truth"][pad:-pad, pad:-pad]
    return ModeImages(np.stack(modes).astype(np.float32), truth.astype(np.float32), mat.name, drift, params,
                      np.stack(beams).astype(np.float32))


def simulate_regions(
    n: int,
    shape: Sequence[int],
    seed: int,
    *,
    materials: Sequence[str] | None = None,
    randomised: bool = False,
    **kwargs: Any,
) -> list[ModeImages]:
    """``n`` independent regions from ``seed``, the material classes taken in turn.

    Region ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so any subset can be
    regenerated alone and the result does not depend on ``n``.

    ``randomised``: the material classes are the structure families of
    :data:`emfuse.pipeline.synth.crystals.FAMILIES` (``materials`` picks some), each region
    a random compound down a random zone axis (:func:`~.crystals.random_material`), recorded
    by a random instrument at its pixel size (:func:`random_scope`); ``ModeImages.material``
    is the family, ``params["crystal"]`` and ``params["scope"]`` say the rest.

    Examples
    --------
    >>> regions = simulate_regions(3, (32, 32), seed=7)
    >>> [r.material for r in regions]
    ['metal', 'semiconductor', 'ceramic']
    >>> [r.material for r in simulate_regions(2, (32, 32), seed=7, randomised=True, materials=["bcc", "hcp"])]
    ['bcc', 'hcp']
    """
    known = FAMILIES if randomised else MATERIALS
    names = tuple(materials or known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InputError(f"unknown {'families' if randomised else 'materials'} {unknown}; "
                         f"choose from {sorted(known)}")
    make = random_region if randomised else simulate_region
    return [make(shape, names[i % len(names)], np.random.default_rng([seed, i]), **kwargs) for i in range(int(n))]


def random_region(shape: Sequence[int], family: str, rng: np.random.Generator, **kwargs: Any) -> ModeImages:
    """One region of the randomised simulator: a random compound of ``family`` down a random zone
    axis (:func:`~.crystals.random_material`), recorded by a random instrument at its pixel size
    (:func:`random_scope`); ``kwargs`` go to :func:`simulate_region` (e.g. ``hrtem_dose``).

    Examples
    --------
    >>> r = random_region((32, 32), "wurtzite", np.random.default_rng(0))
    >>> r.material, sorted(r.params["crystal"])[:2]
    ('wurtzite', ['a_nm', 'angle_deg'])
    """
    material = random_material(family, rng)
    scope, pixel_nm = random_scope(rng)
    region = simulate_region(shape, material, rng, pixel_nm=pixel_nm, scope=scope, **kwargs)
    region.params["scope"] = asdict(scope)
    return region


def random_scope(rng: np.random.Generator) -> tuple[Microscope, float]:
    """An instrument and recording drawn at random, and the pixel size (nm) it records at.

    The randomised simulator (``simulate_regions(..., randomised=True)``) draws one per region:

    - 200 or 300 kV; uncorrected Cs 0.5-2 mm with the defocus drawn between 0.3 and 1.8 times
      Scherzer's (``-sqrt(4/3 Cs lambda)``), or (35 %) corrected, Cs -15 to +25 um and a
      defocus within +-2 to +-15 nm;
    - focal spread 1.5-6 nm, convergence 0.05-0.5 mrad, objective aperture 7-14 nm^-1, and a
      pixel size of 0.5-0.95 of the aperture's Nyquist sampling ``1 / (2 k_max)``;
    - thickness from 4-30 nm up to 1.2-3 times that, grains' tilt sigma 1.5-10 deg;
    - BF/DF resolution (PSF sigma 1-3.5 px), doses log-uniform (HRTEM 8-200, BF and DF 60-1000
      electrons per pixel, each +-50 %), drift up to 0-4 px, beam radius and gradient;
    - each with probability 1/2: non-rigid distortion of BF and DF (0-2 px), contamination of
      the HRTEM (up to 0-40 % of the field), a camera MTF (sigma up to 0-1 px).
    """
    def chance(value: Any, off: Any) -> Any:
        return value if rng.random() < 0.5 else off

    def around(centre: float) -> tuple[float, float]:
        return (centre / 1.5, centre * 1.5)

    kv = float(rng.choice([200.0, 300.0]))
    lam = electron_wavelength(kv) / 10
    cs = float(rng.uniform(0.5e6, 2.0e6))
    scherzer = -math.sqrt(4 / 3 * cs * lam)
    near, far = sorted(scherzer * rng.uniform(0.3, 1.8, 2), reverse=True)
    corrected_df = float(rng.uniform(2.0, 15.0))
    aperture = float(rng.uniform(7.0, 14.0))
    thin = float(rng.uniform(4.0, 30.0))
    scope = Microscope(
        kv=kv, cs_nm=cs, defocus_nm=(far, near), p_corrected=0.35,
        cs_corrected_nm=float(rng.uniform(-15e3, 25e3)), defocus_corrected_nm=(-corrected_df, corrected_df),
        focal_spread_nm=(1.5, 6.0), convergence_rad=(0.05e-3, 0.5e-3), aperture_inv_nm=aperture,
        thickness_nm=(thin, thin * float(rng.uniform(1.2, 3.0))),
        bf_sigma_px=(1.0, 3.5), df_sigma_px=(1.0, 3.5),
        dose={"hrtem": around(float(np.exp(rng.uniform(np.log(8), np.log(200))))),
              "bf": around(float(np.exp(rng.uniform(np.log(60), np.log(1000))))),
              "df": around(float(np.exp(rng.uniform(np.log(60), np.log(1000)))))},
        max_drift_px=float(rng.uniform(0.0, 4.0)),
        illumination=(float(rng.uniform(0.5, 1.0)), float(rng.uniform(1.2, 3.0))),
        gradient=float(rng.uniform(0.0, 0.3)),
        distortion_px=chance(float(rng.uniform(0.0, 2.0)), 0.0),
        distortion_scale=float(rng.uniform(0.15, 0.4)),
        contamination=chance((0.0, float(rng.uniform(0.0, 0.4))), (0.0, 0.0)),
        tilt_sigma_deg=float(rng.uniform(1.5, 10.0)),
        camera_mtf_px=chance((0.0, float(rng.uniform(0.0, 1.0))), (0.0, 0.0)),
    )
    pixel_nm = float(rng.uniform(0.5, 0.95)) / (2 * aperture)
    return scope, pixel_nm
