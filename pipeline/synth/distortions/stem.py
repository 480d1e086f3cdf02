"""S(T)EM distortions: scan jitter, PMT noise, the fast-scan PSF and row-line noise.

Lobato, Friedrich & Van Aert, npj Comput. Mater. (2024), arXiv:2303.17025 (*r_em*), Methods,
S(T)EM distortions. A S(T)EM image is recorded pixel by pixel while the probe scans the
specimen: fast along x (the last axis, one row per scan line), slow along y. Because the
pixels are recorded at different times, instabilities during the scan appear as

* **scan jitter**: the probe is not where the scan generator puts it (mechanical vibration,
  stray fields, specimen drift); r_em models the X and Y displacements as first-order
  autoregressive (AR(1)) series in scan time, :func:`ar1_series`, and resamples the image at
  the displaced positions (bicubic), :func:`scan_jitter`;
* **fast-scan distortion**: the detector and its readout electronics respond with a delay
  and a finite bandwidth, so each pixel mixes with the pixels recorded just before it; r_em
  models the response as a Lorentzian (detector, scintillator) convolved with the impulse
  response of a damped harmonic oscillator (readout electronics), applied along the fast-scan
  direction, :func:`fast_scan_psf`, :func:`fast_scan_blur`;
* **row-line noise**: the offset of the signal changes from one scan line to the next,
  :func:`row_line_noise`;

besides the detector noise shared with TEM (:mod:`emfuse.pipeline.synth.distortions.detector`): shot
noise at the scintillator (Poisson) and the gaussian noise of the photomultiplier tube,
:func:`pmt_noise`.

Examples
--------
>>> import numpy as np
>>> psf = fast_scan_psf(gamma=0.5, decay=1.0)
>>> round(float(psf.sum()), 6), psf.size % 2
(1.0, 1)
>>> x = ar1_series(100_000, phi=0.8, sigma=1.0, rng=np.random.default_rng(0))
>>> round(float(np.corrcoef(x[:-1], x[1:])[0, 1]), 2), round(float(x.std()), 2)
(0.8, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.signal import lfilter

from emfuse.errors import InputError

from .detector import check_image, check_number, check_rng, readout_noise

__all__ = [
    "JITTER_MODES",
    "apply_displacement",
    "ar1_series",
    "fast_scan_blur",
    "fast_scan_psf",
    "jitter_field",
    "pmt_noise",
    "row_line_noise",
    "scan_jitter",
]

#: "line": one displacement per scan line (AR(1) over the lines; the line is shifted as a
#: whole). "pixel": one displacement per pixel (AR(1) over the pixels in scan order, the fast
#: scan running along each row and on into the next).
JITTER_MODES = ("line", "pixel")
_MAX_PSF_HALF = 64  # px; the PSF is cut there (a Lorentzian's tail beyond holds < 2 gamma / (pi 64))


def ar1_series(n: int, phi: float, sigma: float, rng: np.random.Generator,
               size: tuple[int, ...] = ()) -> np.ndarray:
    """A stationary AR(1) series ``x[k] = phi * x[k-1] + e[k]`` with standard deviation ``sigma``.

    r_em, Methods (scan jitter): the displacement of the probe at one scan step remembers a
    fraction ``phi`` of the previous one, plus a new gaussian kick. ``phi`` is the lag-1
    autocorrelation; the innovations have standard deviation ``sigma * sqrt(1 - phi**2)`` and
    the series starts in its stationary distribution, so every sample has standard deviation
    ``sigma`` (the jitter amplitude) whatever ``phi`` is.

    Parameters
    ----------
    n : int
        Length (scan steps).
    phi : float
        AR coefficient in (-1, 1); 0 is white jitter, close to 1 a slow wander.
    sigma : float
        Stationary standard deviation (px), >= 0.
    rng : numpy.random.Generator
    size : tuple of int
        Leading shape: independent series, output ``(*size, n)``.

    Examples
    --------
    >>> ar1_series(5, 0.5, 0.0, np.random.default_rng(0)).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer (number of scan steps), got {n!r}")
    phi = check_number(phi, "phi", low=-1.0, high=1.0, low_open=True, high_open=True,
                       fix=" (the AR(1) coefficient; |phi| < 1 for a stationary series)")
    sigma = check_number(sigma, "sigma", low=0.0, fix=" (a standard deviation in pixels)")
    check_rng(rng)
    size = tuple(int(s) for s in size)
    e = rng.standard_normal((*size, n)) * (sigma * math.sqrt(1.0 - phi * phi))
    e[..., 0] *= 1.0 / math.sqrt(1.0 - phi * phi)  # x[0] ~ N(0, sigma^2): stationary start
    return lfilter([1.0], [1.0, -phi], e, axis=-1)


def jitter_field(shape: tuple[int, int], sigma: float, phi: float, rng: np.random.Generator,
                 mode: str = "line") -> np.ndarray:
    """A displacement map (H, W), px, along one scan axis, from an AR(1) series in scan time.

    ``mode="line"``: one AR(1) value per scan line, the same along the line (the line is
    displaced as a whole; lag-1 autocorrelation ``phi`` between successive lines).
    ``mode="pixel"``: one AR(1) value per pixel in raster order (lag-1 autocorrelation ``phi``
    between successive pixels of a line).

    Examples
    --------
    >>> d = jitter_field((4, 3), 1.0, 0.5, np.random.default_rng(0), mode="line")
    >>> d.shape, bool(np.all(d == d[:, :1]))
    ((4, 3), True)
    """
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape must be (H, W) with positive sizes, got {shape!r}")
    ny, nx = (int(s) for s in shape)
    if mode == "line":
        return np.repeat(ar1_series(ny, phi, sigma, rng)[:, None], nx, axis=1)
    if mode == "pixel":
        return ar1_series(ny * nx, phi, sigma, rng).reshape(ny, nx)
    raise InputError(f"mode must be one of {JITTER_MODES}, got {mode!r}")


def apply_displacement(image: Any, dy: Any, dx: Any, order: int = 3) -> np.ndarray:
    """Resample ``image`` where the probe really was: ``out[i, j] = image(i + dy, j + dx)``.

    Bicubic (cubic B-spline, ``order=3``) interpolation with reflecting borders. ``dy`` and
    ``dx`` are (H, W) (one field for every image) or the image's shape (one per image).

    Examples
    --------
    >>> img = np.arange(16.0).reshape(4, 4)
    >>> apply_displacement(img, np.zeros((4, 4)), np.ones((4, 4)))[1, :3].round(6).tolist()
    [5.0, 6.0, 7.0]
    """
    a = check_image(image)
    if isinstance(order, bool) or order not in (0, 1, 2, 3, 4, 5):
        raise InputError(f"order must be a spline order 0..5, got {order!r}")
    dy = np.broadcast_to(check_image(dy, "dy"), a.shape)
    dx = np.broadcast_to(check_image(dx, "dx"), a.shape)
    ny, nx = a.shape[-2:]
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    stack, sdy, sdx = (v.reshape(-1, ny, nx) for v in (a, dy, dx))
    out = np.empty_like(stack)
    for k in range(stack.shape[0]):
        coords = np.stack([yy + sdy[k], xx + sdx[k]])
        out[k] = ndimage.map_coordinates(stack[k], coords, order=order, mode="reflect")
    return out.reshape(a.shape)


def scan_jitter(image: Any, sigma_x: float, sigma_y: float, rng: np.random.Generator,
                phi_x: float = 0.9, phi_y: float = 0.9, mode: str = "line",
                return_field: bool = False):
    """X/Y scan jitter: AR(1) probe displacements resampled bicubically (r_em, Methods).

    X jitter displaces the probe along the fast-scan direction (rows shift sideways), Y
    jitter across it (rows move up or down). Each image of a stack gets its own fields.

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
    sigma_x, sigma_y : float
        Jitter amplitudes: standard deviations of the displacements, px, >= 0.
    rng : numpy.random.Generator
    phi_x, phi_y : float
        AR(1) coefficients in (-1, 1) (lag-1 autocorrelation of successive lines or pixels).
    mode : {"line", "pixel"}
        One displacement per scan line or per pixel (see :func:`jitter_field`).
    return_field : bool
        Also return the displacement maps ``dy, dx`` (the image's shape).

    Examples
    --------
    >>> img = np.random.default_rng(0).random((32, 32))
    >>> out, dy, dx = scan_jitter(img, 0.5, 0.0, np.random.default_rng(1), return_field=True)
    >>> out.shape, float(np.abs(dy).max())
    ((32, 32), 0.0)
    """
    a = check_image(image)
    check_rng(rng)
    ny, nx = a.shape[-2:]
    n_images = a.shape[0] if a.ndim == 3 else 1
    dx = np.stack([jitter_field((ny, nx), sigma_x, phi_x, rng, mode) for _ in range(n_images)])
    dy = np.stack([jitter_field((ny, nx), sigma_y, phi_y, rng, mode) for _ in range(n_images)])
    dx, dy = dx.reshape(a.shape), dy.reshape(a.shape)
    out = apply_displacement(a, dy, dx)
    return (out, dy, dx) if return_field else out


def pmt_noise(image: Any, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of the photomultiplier tube (PMT), standard deviation ``sigma`` counts.

    r_em, Methods (S(T)EM detector noise): the scintillator's photons are amplified by a PMT
    whose gain fluctuations and dark emission add gaussian noise to the Poisson counts.

    Examples
    --------
    >>> round(float(pmt_noise(np.zeros((200, 200)), 0.5, np.random.default_rng(0)).std()), 2)
    0.5
    """
    return readout_noise(image, sigma, rng)


def _dho_step(t: np.ndarray, beta: float, omega: float) -> np.ndarray:
    """Step response of a unit-gain damped harmonic oscillator (decay rate beta, frequency omega)."""
    if omega == 0.0:  # critically damped limit
        return 1.0 - np.exp(-beta * t) * (1.0 + beta * t)
    return 1.0 - np.exp(-beta * t) * (np.cos(omega * t) + (beta / omega) * np.sin(omega * t))


def fast_scan_psf(gamma: float, decay: float, omega: float = 0.0) -> np.ndarray:
    """The 1-D PSF along the fast scan: Lorentzian detector PSF (*) damped-oscillator readout.

    r_em, Methods (fast-scan distortion). Along the fast scan, time and position are the
    same axis (one pixel per dwell time), so the detector's response is a PSF in x:

    * detector: a Lorentzian ``L(x) = gamma / (pi (x**2 + gamma**2))`` (half width at half
      maximum ``gamma`` px), integrated over each pixel;
    * readout electronics: the impulse response of a damped harmonic oscillator of unit DC
      gain, ``h(t) = (omega**2 + beta**2) / omega * exp(-beta t) sin(omega t)`` for ``t >= 0``,
      ``beta = 1 / decay`` (critically damped, ``beta**2 t exp(-beta t)``, for ``omega = 0``),
      integrated over each dwell time (exactly, through its step response): it is causal,
      so a bright pixel streaks towards +x, with ringing when ``omega > beta``.

    The PSF is their discrete convolution, normalised to sum 1 (it redistributes signal and
    keeps the mean), and centred on its centroid (nearest pixel): a constant delay of the
    signal only shifts the whole image, which nobody can tell in an experimental image, so a
    training pair must not contain it.

    Parameters
    ----------
    gamma : float
        Lorentzian HWHM, px, >= 0 (0: no detector blur).
    decay : float
        Decay time ``1 / beta`` of the readout response, px (dwell times), > 0.
    omega : float
        Angular frequency of the readout ringing, rad per px, >= 0.

    Returns
    -------
    ndarray (2 m + 1,) float64
        Kernel: index ``m + k`` weighs the pixel recorded ``k`` steps earlier.

    Examples
    --------
    >>> fast_scan_psf(0.0, 1e-3).tolist()
    [1.0]
    """
    gamma = check_number(gamma, "gamma", low=0.0, high=50.0, fix=" (Lorentzian HWHM, px)")
    decay = check_number(decay, "decay", low=0.0, high=50.0, low_open=True,
                         fix=" (decay time of the readout, in dwell times)")
    omega = check_number(omega, "omega", low=0.0, high=math.pi,
                         fix=" (ringing frequency, rad per pixel, at most pi)")
    if gamma > 0:
        half = min(_MAX_PSF_HALF, max(3, math.ceil(50 * gamma)))
        edges = np.arange(-half, half + 2) - 0.5
        lorentz = np.diff(np.arctan(edges / gamma)) / math.pi
    else:
        half, lorentz = 0, np.ones(1)
    n_t = min(_MAX_PSF_HALF, max(1, math.ceil(15 * decay)))
    step = _dho_step(np.arange(n_t + 1, dtype=np.float64), 1.0 / decay, omega)
    readout = np.diff(step)  # pixel k >= 0 after the signal; sums to step(n_t) ~ 1
    psf = np.convolve(lorentz, readout)  # index i is offset i - half
    offsets = np.arange(psf.size) - half
    shift = int(round(float((offsets * psf).sum() / psf.sum())))
    offsets -= shift
    m = int(max(-offsets[0], offsets[-1]))
    kernel = np.zeros(2 * m + 1)
    kernel[offsets + m] = psf
    return kernel / kernel.sum()


def fast_scan_blur(image: Any, gamma: float, decay: float, omega: float = 0.0) -> np.ndarray:
    """Convolve every scan line (row, along x) with :func:`fast_scan_psf` (reflecting ends).

    Examples
    --------
    >>> img = np.zeros((2, 40)); img[:, 10] = 1.0
    >>> out = fast_scan_blur(img, 0.5, 2.0)
    >>> round(float(out[0].sum()), 2), round(float((out[0] * np.arange(40)).sum()))
    (1.0, 10)
    """
    a = check_image(image)
    kernel = fast_scan_psf(gamma, decay, omega).astype(a.dtype)
    return ndimage.convolve1d(a, kernel, axis=-1, mode="reflect")


def row_line_noise(image: Any, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Row-line noise: one gaussian offset per scan line, standard deviation ``sigma``.

    r_em, Methods: the signal level of the detector electronics changes between scan lines
    (drifting offset, line-synchronous interference), so whole rows are brighter or darker.

    Examples
    --------
    >>> r = row_line_noise(np.zeros((3, 5)), 1.0, np.random.default_rng(0))
    >>> bool(np.all(r == r[:, :1]))
    True
    """
    a = check_image(image)
    sigma = check_number(sigma, "sigma", low=0.0, fix=" (a standard deviation in counts)")
    check_rng(rng)
    offsets = rng.normal(0.0, sigma, (*a.shape[:-1], 1)).astype(a.dtype)
    return a + offsets
