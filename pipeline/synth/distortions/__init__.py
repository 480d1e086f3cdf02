"""Physical distortion models of TEM and S(T)EM images, and a random composition of them.

Lobato, Friedrich & Van Aert, "Deep convolutional neural networks to restore single-shot
electron microscopy images", npj Comput. Mater. (2024), arXiv:2303.17025 (*r_em*). The
restoration networks of r_em are trained on pairs (distorted image, clean image) where the
distorted image is made from the clean one by physical models of what happens between the
specimen and the saved file. This module gathers those models (one small function each, in
:mod:`.detector`, :mod:`.tem`, :mod:`.stem` and :mod:`.post`) and
composes them at random with :func:`random_distortion`:

========================  ===========================================================
TEM (one-shot camera)     shot noise, dark current, reset (kTC), flicker (1/f), readout
                          (gaussian), zingers, black pixels, upper clip, quantisation
S(T)EM (scanned probe)    X/Y scan jitter (AR(1), bicubic resampling), shot noise, fast-scan
                          PSF (Lorentzian (*) damped oscillator), PMT (gaussian), row-line
                          noise, zingers, black pixels, upper clip, quantisation
post-processing (both)    interpolation (down/up resampling), gaussian blur
========================  ===========================================================

Units. The clean image is a noise-free intensity >= 0; the distorted image is in detector
counts. Shot noise turns intensity ``I`` into ``Poisson(dose * I)`` counts, so the clean
image in the same units, the training target, is ``params["dose"] * image``.

The probabilities and ranges of the random composition are in :data:`SETTINGS`, one table
per (modality, resolution); docs/methods/restoration.md ("Distortion models") lists them and
says which come from r_em and which were chosen here.

Examples
--------
>>> import numpy as np
>>> clean = np.random.default_rng(0).random((64, 64))
>>> noisy, params = random_distortion(clean, "stem", np.random.default_rng(1))
>>> noisy.shape, params["modality"], params["dose"] > 0
((64, 64), 'stem', True)
>>> again, _ = random_distortion(clean, "stem", np.random.default_rng(1))
>>> bool(np.array_equal(noisy, again))
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from emfuse.errors import InputError

from .detector import (
    black_pixels,
    check_image,
    check_nonnegative_image,
    check_rng,
    quantise,
    readout_noise,
    shot_noise,
    upper_clip,
    zingers,
)
from .post import gaussian_blur, interpolation_distortion
from .stem import (
    JITTER_MODES,
    apply_displacement,
    ar1_series,
    fast_scan_blur,
    fast_scan_psf,
    jitter_field,
    pmt_noise,
    row_line_noise,
    scan_jitter,
)
from .tem import dark_current_noise, flicker_noise, reset_noise

__all__ = [
    "JITTER_MODES",
    "MODALITIES",
    "RESOLUTIONS",
    "SETTINGS",
    "Draw",
    "apply_displacement",
    "ar1_series",
    "black_pixels",
    "check_image",
    "dark_current_noise",
    "fast_scan_blur",
    "fast_scan_psf",
    "flicker_noise",
    "gaussian_blur",
    "interpolation_distortion",
    "jitter_field",
    "pmt_noise",
    "quantise",
    "random_distortion",
    "readout_noise",
    "reset_noise",
    "row_line_noise",
    "scan_jitter",
    "shot_noise",
    "upper_clip",
    "zingers",
]

MODALITIES = ("tem", "stem")
#: "high": atomic resolution (small pixels); "low": larger pixels (r_em trains separate
#: high- and low-resolution networks for each modality).
RESOLUTIONS = ("high", "low")


@dataclass(frozen=True)
class Draw:
    """How one parameter of :func:`random_distortion` is drawn.

    The distortion is applied with probability ``p``; its parameter is then uniform in
    [low, high] (log-uniform when ``log``), or one of ``choices`` when they are given.

    Examples
    --------
    >>> d = Draw(p=1.0, low=1.0, high=100.0, log=True)
    >>> 1.0 <= d.value(np.random.default_rng(0)) <= 100.0
    True
    >>> Draw(choices=(8, 12)).value(np.random.default_rng(0)) in (8, 12)
    True
    """

    p: float = 1.0
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def applies(self, rng: np.random.Generator) -> bool:
        """Whether the distortion is applied this time (always one draw, for reproducibility)."""
        return bool(rng.random() < self.p)

    def value(self, rng: np.random.Generator) -> Any:
        """One value of the parameter."""
        if self.choices:
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


# Post-processing and detector defects common to both modalities (probabilities and ranges
# chosen here; r_em draws each distortion with some probability, see the docs).
_COMMON = {
    "black_pixels": Draw(p=0.3, low=1e-4, high=1e-3, log=True),  # fraction of pixels
    "clip_quantile": Draw(p=0.2, low=0.95, high=0.999),  # saturation at this quantile
    "quantise_bits": Draw(p=0.5, choices=(8, 10, 12, 14, 16)),
    "interp_factor": Draw(p=0.2, low=1.0, high=2.0),  # down then up by this factor
    "interp_order": Draw(choices=(0, 1, 3)),  # nearest, bilinear, bicubic
    "blur_sigma": Draw(p=0.2, low=0.3, high=1.0),  # px
}

_TEM = {
    # TEM images are normalised to mean intensity 1: dose = mean electrons per pixel.
    "dose": Draw(low=2.0, high=2000.0, log=True),
    "dark": Draw(p=0.5, low=0.0, high=5.0),  # mean thermal electrons per pixel (subtracted)
    "reset_sigma": Draw(p=0.3, low=0.0, high=2.0),  # electrons
    "flicker_sigma": Draw(p=0.3, low=0.0, high=2.0),  # electrons
    "readout_sigma": Draw(p=1.0, low=0.0, high=4.0),  # electrons
    "zingers": Draw(p=0.3, low=1e-4, high=1e-3, log=True),  # fraction of pixels (corners)
    "zinger_size": Draw(choices=(1, 2, 3)),  # largest side of a zinger, px
    "zinger_level": Draw(low=1.0, high=2.0),  # times the image maximum
    **_COMMON,
}

_STEM = {
    # STEM images are normalised to maximum intensity 1: dose = counts at the brightest column.
    "jitter_line_x": Draw(p=0.8, low=0.0, high=1.0),  # px, one value per scan line
    "jitter_line_y": Draw(p=0.8, low=0.0, high=0.6),  # px
    "jitter_line_phi": Draw(low=0.0, high=0.95),  # AR(1) coefficient between lines
    "jitter_pixel_x": Draw(p=0.3, low=0.0, high=0.3),  # px, one value per pixel
    "jitter_pixel_phi": Draw(low=0.5, high=0.99),  # AR(1) coefficient between pixels
    "dose": Draw(low=2.0, high=1000.0, log=True),
    "zingers": Draw(p=0.2, low=1e-4, high=5e-4, log=True),
    "zinger_size": Draw(choices=(1,)),
    "zinger_level": Draw(low=1.0, high=2.0),
    "psf_gamma": Draw(p=0.7, low=0.0, high=1.0),  # Lorentzian HWHM, px
    "psf_decay": Draw(low=0.1, high=2.0),  # readout decay time, dwell times
    "psf_omega": Draw(low=0.0, high=1.0),  # readout ringing, rad per px
    "pmt_rel": Draw(p=1.0, low=0.0, high=1.0),  # PMT sigma / sqrt(dose)
    "row_line_rel": Draw(p=0.5, low=0.0, high=0.05),  # row offset sigma / dose
    **_COMMON,
}

# Low resolution: larger pixels, so the same physical jitter is a smaller fraction of a pixel.
_STEM_LOW = dict(_STEM, **{
    "jitter_line_x": Draw(p=0.8, low=0.0, high=0.5),
    "jitter_line_y": Draw(p=0.8, low=0.0, high=0.3),
    "jitter_pixel_x": Draw(p=0.3, low=0.0, high=0.15),
})

#: Probabilities and ranges of :func:`random_distortion`, per (modality, resolution).
SETTINGS: Mapping[tuple[str, str], Mapping[str, Draw]] = MappingProxyType({
    ("tem", "high"): MappingProxyType(_TEM),
    ("tem", "low"): MappingProxyType(dict(_TEM)),
    ("stem", "high"): MappingProxyType(_STEM),
    ("stem", "low"): MappingProxyType(_STEM_LOW),
})


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InputError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _stack_jitter(a: np.ndarray, s: Mapping[str, Draw], rng: np.random.Generator,
                  params: dict) -> np.ndarray:
    """Line jitter (X and Y) and pixel jitter (X), summed into one displacement, one resampling."""
    line = s["jitter_line_x"].applies(rng), s["jitter_line_y"].applies(rng)
    pixel = s["jitter_pixel_x"].applies(rng)
    if not (any(line) or pixel):
        return a
    sx = s["jitter_line_x"].value(rng) if line[0] else 0.0
    sy = s["jitter_line_y"].value(rng) if line[1] else 0.0
    phi = s["jitter_line_phi"].value(rng)
    spx = s["jitter_pixel_x"].value(rng) if pixel else 0.0
    phi_px = s["jitter_pixel_phi"].value(rng)
    params.update(jitter_line_x=sx, jitter_line_y=sy, jitter_line_phi=phi,
                  jitter_pixel_x=spx, jitter_pixel_phi=phi_px)
    shape = a.shape[-2:]
    n = a.shape[0] if a.ndim == 3 else 1
    dx = np.stack([jitter_field(shape, sx, phi, rng, "line")
                   + jitter_field(shape, spx, phi_px, rng, "pixel") for _ in range(n)])
    dy = np.stack([jitter_field(shape, sy, phi, rng, "line") for _ in range(n)])
    return apply_displacement(a, dy.reshape(a.shape), dx.reshape(a.shape))


def _detector_defects(a: np.ndarray, s: Mapping[str, Draw], rng: np.random.Generator,
                      params: dict) -> np.ndarray:
    """Black pixels, upper clip and quantisation (the end of the detector chain)."""
    if s["black_pixels"].applies(rng):
        params["black_pixels"] = s["black_pixels"].value(rng)
        a = black_pixels(a, params["black_pixels"], rng)
    if s["clip_quantile"].applies(rng):
        q = s["clip_quantile"].value(rng)
        params["clip_level"] = float(np.quantile(a, q))
        a = upper_clip(a, params["clip_level"])
    if s["quantise_bits"].applies(rng):
        params["quantise_bits"] = int(s["quantise_bits"].value(rng))
        a = quantise(a, params["quantise_bits"])
    return a


def _post_processing(a: np.ndarray, s: Mapping[str, Draw], rng: np.random.Generator,
                     params: dict) -> np.ndarray:
    if s["interp_factor"].applies(rng):
        params["interp_factor"] = s["interp_factor"].value(rng)
        params["interp_order"] = int(s["interp_order"].value(rng))
        a = interpolation_distortion(a, params["interp_factor"], params["interp_order"])
    if s["blur_sigma"].applies(rng):
        params["blur_sigma"] = s["blur_sigma"].value(rng)
        a = gaussian_blur(a, params["blur_sigma"])
    return a


def _zingers(a: np.ndarray, s: Mapping[str, Draw], rng: np.random.Generator,
             params: dict) -> np.ndarray:
    if not s["zingers"].applies(rng):
        return a
    params["zingers"] = s["zingers"].value(rng)
    params["zinger_size"] = int(s["zinger_size"].value(rng))
    params["zinger_level"] = float(a.max()) * s["zinger_level"].value(rng)
    return zingers(a, params["zingers"], params["zinger_level"], rng, params["zinger_size"])


def _tem_chain(a: np.ndarray, s: Mapping[str, Draw], rng: np.random.Generator,
               params: dict) -> np.ndarray:
    a = shot_noise(a, params["dose"], rng)
    if s["dark"].applies(rng):
        params["dark"] = s["dark"].value(rng)
        a = dark_current_noise(a, params["dark"], rng)
    if s["reset_sigma"].applies(rng):
        params["reset_sigma"] = s["reset_sigma"].value(rng)
        a = reset_noise(a, params["reset_sigma"], rng)
    if s["flicker_sigma"].applies(rng):
        params["flicker_sigma"] = s["flicker_sigma"].value(rng)
        a = flicker_noise(a, params["flicker_sigma"], rng)
    if s["readout_sigma"].applies(rng):
        params["readout_sigma"] = s["readout_sigma"].value(rng)
        a = readout_noise(a, params["readout_sigma"], rng)
    return _zingers(a, s, rng, params)


def _stem_chain(a: np.ndarray, s: Mapping[str, Draw], rng: np.random.Generator,
                params: dict) -> np.ndarray:
    a = _stack_jitter(a, s, rng, params)
    a = shot_noise(np.clip(a, 0, None), params["dose"], rng)  # bicubic can undershoot 0
    # zingers before the PSF: a spike on the detector is streaked by its response like any signal
    a = _zingers(a, s, rng, params)
    if s["psf_gamma"].applies(rng):
        params.update(psf_gamma=s["psf_gamma"].value(rng), psf_decay=s["psf_decay"].value(rng),
                      psf_omega=s["psf_omega"].value(rng))
        a = fast_scan_blur(a, params["psf_gamma"], params["psf_decay"], params["psf_omega"])
    if s["pmt_rel"].applies(rng):
        params["pmt_sigma"] = s["pmt_rel"].value(rng) * math.sqrt(params["dose"])
        a = pmt_noise(a, params["pmt_sigma"], rng)
    if s["row_line_rel"].applies(rng):
        params["row_line_sigma"] = s["row_line_rel"].value(rng) * params["dose"]
        a = row_line_noise(a, params["row_line_sigma"], rng)
    return a


def random_distortion(image: Any, modality: str, rng: np.random.Generator,
                      resolution: str = "high",
                      settings: Mapping[str, Draw] | None = None) -> tuple[np.ndarray, dict]:
    """Distort a clean image with randomly drawn physical distortions (r_em, Methods).

    Order (the order in which they happen on the microscope):

    * TEM: shot noise (dose), dark current, reset noise, flicker noise, readout noise,
      zingers, black pixels, upper clip, quantisation, interpolation, gaussian blur;
    * S(T)EM: X/Y scan jitter (line-wise AR(1) in X and Y, pixel-wise AR(1) in X, one bicubic
      resampling), shot noise (dose), zingers, fast-scan PSF, PMT noise, row-line noise,
      black pixels, upper clip, quantisation, interpolation, gaussian blur.

    Each distortion is applied with the probability in ``settings`` (default
    ``SETTINGS[modality, resolution]``) and its parameters drawn from their ranges; shot noise
    is always applied. A stack (N, H, W) gets one draw of the parameters and independent noise
    (and jitter) per image.

    Parameters
    ----------
    image : array (H, W) or (N, H, W)
        Clean intensity, >= 0 (TEM: normalised to mean 1; STEM: to maximum 1, for the
        default dose ranges to mean what they say).
    modality : {"tem", "stem"}
    rng : numpy.random.Generator
    resolution : {"high", "low"}
    settings : mapping of str to Draw, optional
        Replaces the default table (for instance ``dict(SETTINGS["stem", "high"], dose=...)``).

    Returns
    -------
    degraded : ndarray, same shape and float dtype as ``image`` (counts)
    params : dict
        JSON-able record: modality, resolution, dose, and the value of every distortion that
        was applied (absent keys were not applied). The clean target in counts is
        ``params["dose"] * image``.

    Examples
    --------
    >>> clean = np.ones((32, 32))
    >>> _, p = random_distortion(clean, "tem", np.random.default_rng(3), resolution="low")
    >>> sorted(k for k in ("modality", "resolution", "dose") if k in p)
    ['dose', 'modality', 'resolution']
    """
    a = check_nonnegative_image(image)
    _check_choice(modality, "modality", MODALITIES)
    _check_choice(resolution, "resolution", RESOLUTIONS)
    check_rng(rng)
    s = SETTINGS[modality, resolution] if settings is None else settings
    if not isinstance(s, Mapping):
        raise InputError("settings must be a mapping of parameter names to Draw, e.g. "
                         "dict(SETTINGS['stem', 'high'], dose=Draw(low=10, high=100, log=True))")
    reference = SETTINGS[modality, resolution]
    missing = sorted(set(reference) - set(s))
    if missing:
        raise InputError(f"settings lacks {missing}; start from dict(SETTINGS[{modality!r}, "
                         f"{resolution!r}]) and replace entries")
    params: dict[str, Any] = {"modality": modality, "resolution": resolution,
                              "dose": s["dose"].value(rng)}
    chain = _tem_chain if modality == "tem" else _stem_chain
    a = chain(a, s, rng, params)
    a = _detector_defects(a, s, rng, params)
    a = _post_processing(a, s, rng, params)
    return a, params
