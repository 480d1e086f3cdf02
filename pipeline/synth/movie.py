"""A synthetic HR-STEM movie: a drifting crystal imaged at low dose, with its ground truth.

The specimen is an SrTiO3-like [001] projection: a square lattice of bright columns
(spacing ``lattice_nm``) with a dimmer column at the centre of each cell, every column a
gaussian probe image; its thickness varies smoothly (a few broad gaussian mounds), so the
image is not periodic and drift can be measured beyond a lattice period. Each frame sees
the specimen moved by that frame's drift (a steady drift plus a small random walk),
rendered exactly at subpixel positions (sums of separable gaussians), and is recorded as
Poisson counts, ``Poisson(dose * I)`` with ``I`` at most about 1.

Examples
--------
>>> data = make_movie((64, 80), n_frames=3, seed=1)
>>> data.movie.shape, data.true_movie.shape, data.drift.shape
((3, 64, 80), (3, 64, 80), (3, 2))
>>> data.drift[0].tolist()
[0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InputError

DEFAULT_MOVIE_DOSE = 20.0  # counts at the brightest columns
DEFAULT_MOVIE_PIXEL_NM = 0.02
DEFAULT_DRIFT_PX = (0.3, -0.2)  # steady drift per frame, (dy, dx) pixels


@dataclass(frozen=True)
class SyntheticMovie:
    """A movie (frame, y, x) of counts, its noise-free expectation and each frame's drift."""

    movie: np.ndarray  # float32 counts
    true_movie: np.ndarray  # float32, dose * I: the expected counts
    drift: np.ndarray  # (frame, 2) float64, specimen displacement (dy, dx) in px against frame 0
    pixel_size_nm: float
    dose: float
    seed: int
    params: dict[str, Any] = field(default_factory=dict)


def _comb(n: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i exp(-(p - c_i)^2 / 2 sigma^2) at pixel centres p = 0..n-1 (only nearby c_i)."""
    p = np.arange(n, dtype=np.float64)[:, None]
    c = centres[(centres > -5 * sigma) & (centres < n + 5 * sigma)][None, :]
    return np.exp(-0.5 * ((p - c) / sigma) ** 2).sum(axis=1)


def _frame(shape: tuple[int, int], shift: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The noise-free image, in [0, ~1], of the specimen moved by ``shift`` (dy, dx) px."""
    ny, nx = shape
    a, sigma = spec["period_px"], spec["sigma_px"]
    dy, dx = shift
    ky = np.arange(-2, int(ny / a) + 3) * a + spec["origin"][0] + dy
    kx = np.arange(-2, int(nx / a) + 3) * a + spec["origin"][1] + dx
    corners = np.outer(_comb(ny, ky, sigma), _comb(nx, kx, sigma))
    centres = np.outer(_comb(ny, ky + a / 2, sigma), _comb(nx, kx + a / 2, sigma))
    lattice = corners + spec["centre_weight"] * centres
    thickness = np.full(shape, 0.55)
    for (cy, cx), width, height in zip(spec["mounds"], spec["widths"], spec["heights"]):
        # only within 5 widths of the mound's centre (exp(-12.5) ~ 4e-6 beyond)
        y0, y1 = max(0, int(cy + dy - 5 * width)), min(ny, int(cy + dy + 5 * width) + 1)
        x0, x1 = max(0, int(cx + dx - 5 * width)), min(nx, int(cx + dx + 5 * width) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - cy - dy) / width) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - cx - dx) / width) ** 2)
        thickness[y0:y1, x0:x1] += height * np.outer(gy, gx)
    return lattice * thickness


def make_movie(
    shape: tuple[int, int] = (256, 256),
    n_frames: int = 8,
    *,
    dose: float | None = None,
    drift_per_frame: tuple[float, float] = DEFAULT_DRIFT_PX,
    drift_jitter: float = 0.05,
    pixel_size_nm: float = DEFAULT_MOVIE_PIXEL_NM,
    lattice_nm: float = 0.3905,
    column_sigma_nm: float = 0.05,
    seed: int = 0,
) -> SyntheticMovie:
    """Draw a drifting low-dose HR-STEM movie of ``n_frames`` frames of ``shape`` (y, x).

    Parameters
    ----------
    dose
        Expected counts at the brightest column (default 20): the noise level.
    drift_per_frame
        Steady specimen drift (dy, dx) in pixels per frame.
    drift_jitter
        Standard deviation (px) of the random-walk step added to the drift each frame.
    pixel_size_nm, lattice_nm, column_sigma_nm
        Sampling, lattice spacing and column width (gaussian sigma).

    Examples
    --------
    >>> d = make_movie((32, 32), n_frames=2, dose=50, seed=0)
    >>> bool(d.movie.min() >= 0 and d.true_movie.max() <= 50 * 1.2)
    True
    """
    ny, nx = (int(v) for v in shape)
    if ny < 1 or nx < 1 or n_frames < 1:
        raise InputError(f"a movie needs at least one frame of 1 x 1 pixels, got {n_frames} x {shape}")
    dose = DEFAULT_MOVIE_DOSE if dose is None else float(dose)
    if not dose > 0:
        raise InputError(f"dose must be > 0 counts, got {dose}")
    rng = np.random.default_rng(seed)
    steps = np.asarray(drift_per_frame, dtype=np.float64) + drift_jitter * rng.standard_normal((n_frames, 2))
    steps[0] = 0.0
    drift = np.cumsum(steps, axis=0)
    n_mounds = max(2, round(ny * nx / 96**2))
    spec = {
        "period_px": lattice_nm / pixel_size_nm,
        "sigma_px": column_sigma_nm / pixel_size_nm,
        "origin": rng.uniform(0, lattice_nm / pixel_size_nm, size=2),
        "centre_weight": 0.45,
        "mounds": rng.uniform(0, 1, size=(n_mounds, 2)) * (ny, nx),
        "widths": rng.uniform(12, 40, size=n_mounds),
        "heights": rng.uniform(0.2, 0.45, size=n_mounds),
    }
    true = np.stack([_frame((ny, nx), d, spec) for d in drift])
    true = (dose * true / max(float(true.max()), 1e-12)).astype(np.float32)
    movie = rng.poisson(true).astype(np.float32)
    params = {"kind": "movie", "shape": [ny, nx], "n_frames": int(n_frames), "dose": dose,
              "drift_per_frame": [float(v) for v in drift_per_frame], "drift_jitter": drift_jitter,
              "pixel_size_nm": pixel_size_nm, "lattice_nm": lattice_nm,
              "column_sigma_nm": column_sigma_nm, "seed": seed}
    return SyntheticMovie(movie, true, drift, pixel_size_nm, dose, seed, params)
