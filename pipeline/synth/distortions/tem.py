"""TEM camera noise: dark current (thermal), reset (kTC) and flicker (1/f) noise.

Lobato, Friedrich & Van Aert, npj Comput. Mater. (2024), arXiv:2303.17025 (*r_em*), Methods,
TEM distortions. A TEM image is recorded in one shot by a pixelated camera; its noise is the
sum of shot noise (:func:`emfuse.pipeline.synth.distortions.detector.shot_noise`), dark-current noise
(thermally generated electrons), and readout noise, which r_em splits into the noise of the
sense-node reset (kTC), flicker (1/f) noise of the output amplifier and white gaussian noise
(:func:`emfuse.pipeline.synth.distortions.detector.readout_noise`). The decomposition of readout noise
and the log-normal reset noise follow the CCD/CMOS sensor model of Konnik & Welsh,
"High-level numerical simulations of noise in CCD and CMOS photosensors", arXiv:1412.4031
(2014), on which the camera models of r_em build.

All amplitudes are in counts (electrons per pixel), the units of the shot-noise output.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> img = dark_current_noise(np.zeros((64, 64)), dark=9.0, rng=rng)
>>> abs(float(img.mean())) < 0.2, round(float(img.std()))
(True, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .detector import check_image, check_number, check_rng

__all__ = ["dark_current_noise", "flicker_noise", "reset_noise"]


def dark_current_noise(image: Any, dark: float, rng: np.random.Generator,
                       subtract: bool = True) -> np.ndarray:
    """Dark-current (thermal) noise: ``Poisson(dark)`` thermal electrons added to each pixel.

    r_em, Methods: thermally generated electrons in the sensor follow Poisson statistics
    with a mean ``dark`` set by the exposure time and the sensor temperature. Cameras
    subtract a dark reference, which removes the mean but not the noise; with ``subtract``
    (default) the mean ``dark`` is subtracted, leaving zero-mean noise of variance ``dark``.

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
        Counts.
    dark : float
        Mean thermal electrons per pixel, >= 0.
    rng : numpy.random.Generator
    subtract : bool
        Subtract the mean dark signal (dark-reference correction).

    Examples
    --------
    >>> d = dark_current_noise(np.zeros((100, 100)), 4.0, np.random.default_rng(1), subtract=False)
    >>> abs(float(d.mean()) - 4) < 0.1, abs(float(d.var()) - 4) < 0.2
    (True, True)
    """
    a = check_image(image)
    dark = check_number(dark, "dark", low=0.0, fix=" (mean thermal electrons per pixel)")
    check_rng(rng)
    noise = rng.poisson(dark, a.shape).astype(a.dtype)
    if subtract:
        noise -= a.dtype.type(dark)
    return a + noise


def reset_noise(image: Any, sigma: float, rng: np.random.Generator,
                shape: float = 0.5) -> np.ndarray:
    """Reset (kTC) noise of the sense node: a skewed, zero-mean per-pixel offset.

    r_em, Methods (readout noise); model of Konnik & Welsh (2014, section on sense-node reset
    noise): the voltage left on the sense-node capacitor after its reset fluctuates with
    variance ``kT/C``, with a log-normal distribution. Here the log-normal ``exp(shape * Z)``
    (Z standard normal) is shifted to zero mean and scaled to standard deviation ``sigma``
    counts; ``shape`` sets the skewness (a larger value, a longer tail of bright pixels).

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
    sigma : float
        Standard deviation, counts, >= 0.
    rng : numpy.random.Generator
    shape : float
        Log-normal shape parameter, > 0 (0.5 by default: skewness about 1.75).

    Examples
    --------
    >>> r = reset_noise(np.zeros((200, 200)), 2.0, np.random.default_rng(2))
    >>> round(float(r.mean()), 1) == 0.0, round(float(r.std()), 1)
    (True, 2.0)
    """
    a = check_image(image)
    sigma = check_number(sigma, "sigma", low=0.0, fix=" (a standard deviation in counts)")
    shape = check_number(shape, "shape", low=0.0, high=3.0, low_open=True,
                         fix=" (log-normal shape parameter)")
    check_rng(rng)
    s2 = shape * shape
    mean, std = np.exp(s2 / 2), np.sqrt((np.exp(s2) - 1) * np.exp(s2))
    z = np.exp(shape * rng.standard_normal(a.shape))
    return a + ((z - mean) * (sigma / std)).astype(a.dtype)


def flicker_noise(image: Any, sigma: float, rng: np.random.Generator,
                  exponent: float = 1.0) -> np.ndarray:
    """Flicker (1/f) noise of the readout amplifier, along the pixel readout sequence.

    r_em, Methods (readout noise): the output amplifier adds noise whose power spectral
    density falls as ``1/f**exponent`` (``exponent`` 1: pink noise). The camera reads its
    pixels one after the other in raster order (rows of the image), so the noise is a 1/f
    time series over the ``H * W`` pixels reshaped to the image: slow components show as
    bands across rows, fast ones as pixel noise. Each image of a stack gets its own series,
    drawn in Fourier space (random phases, gaussian amplitudes scaled by
    ``f**(-exponent / 2)``, no DC term) and scaled to standard deviation ``sigma``.

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
    sigma : float
        Standard deviation, counts, >= 0.
    rng : numpy.random.Generator
    exponent : float
        Spectral exponent in [0, 2] (0 white, 1 pink, 2 brown).

    Examples
    --------
    >>> f = flicker_noise(np.zeros((64, 64)), 1.5, np.random.default_rng(3))
    >>> round(float(f.std()), 2), abs(float(f.mean())) < 1e-9
    (1.5, True)
    """
    a = check_image(image)
    sigma = check_number(sigma, "sigma", low=0.0, fix=" (a standard deviation in counts)")
    exponent = check_number(exponent, "exponent", low=0.0, high=2.0,
                            fix=" (the spectral exponent: 1 for 1/f noise)")
    check_rng(rng)
    *lead, ny, nx = a.shape
    n_images, n = (int(np.prod(lead)) if lead else 1), ny * nx
    f = np.fft.rfftfreq(n)
    amplitude = np.zeros_like(f)
    amplitude[1:] = f[1:] ** (-exponent / 2)
    spectrum = amplitude * (rng.standard_normal((n_images, f.size))
                            + 1j * rng.standard_normal((n_images, f.size)))
    series = np.fft.irfft(spectrum, n=n, axis=-1)
    series -= series.mean(axis=-1, keepdims=True)
    std = series.std(axis=-1, keepdims=True)
    series *= sigma / np.where(std > 0, std, 1.0)
    return a + series.reshape(a.shape).astype(a.dtype)
