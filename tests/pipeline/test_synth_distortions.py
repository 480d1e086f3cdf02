"""Distortion models of TEM and S(T)EM images (r_em, Lobato et al. 2024): statistics of every
noise model, the scan-jitter and fast-scan PSF geometry, the random composition, validation."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from scipy import ndimage

import emfuse.pipeline.synth.distortions as noise_module
import emfuse.pipeline.synth.distortions.detector as detector_module
import emfuse.pipeline.synth.distortions.post as post_module
import emfuse.pipeline.synth.distortions.stem as stem_module
import emfuse.pipeline.synth.distortions.tem as tem_module
from emfuse.pipeline.synth.distortions import (
    SETTINGS,
    Draw,
    apply_displacement,
    ar1_series,
    black_pixels,
    dark_current_noise,
    fast_scan_blur,
    fast_scan_psf,
    flicker_noise,
    gaussian_blur,
    interpolation_distortion,
    jitter_field,
    pmt_noise,
    quantise,
    random_distortion,
    readout_noise,
    reset_noise,
    row_line_noise,
    scan_jitter,
    shot_noise,
    upper_clip,
    zingers,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def texture(shape=(128, 128), sigma=2.0, seed=0) -> np.ndarray:
    """A smooth random image in [0, 1] with structure at every position (for shift estimates)."""
    t = ndimage.gaussian_filter(rng(seed).random(shape), sigma, mode="wrap")
    return (t - t.min()) / (t.max() - t.min())


def high_freq_power(img: np.ndarray, cut: float = 0.25) -> float:
    """Power of the image's Fourier components above `cut` cycles per pixel (mean removed)."""
    f = np.abs(np.fft.fft2(img - img.mean())) ** 2
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    return float(f[np.hypot(ky, kx) > cut].sum())


# --------------------------------------------------------------------------------------------
# Shared detector noise
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dose", [0.5, 40.0])
def test_shot_noise_is_poisson_at_the_dose(dose):
    img = np.full((256, 256), 0.5)
    c = shot_noise(img, dose, rng(1))
    lam = 0.5 * dose
    assert np.all(c == np.round(c)) and c.min() >= 0  # counts
    assert c.mean() == pytest.approx(lam, rel=0.02)
    assert c.var() == pytest.approx(lam, rel=0.04)  # Fano factor 1
    # and pixel by pixel: the mean follows the intensity (two levels in one image)
    two = np.concatenate([np.full((128, 256), 0.2), np.full((128, 256), 1.0)])
    c2 = shot_noise(two, 50.0, rng(2))
    assert c2[:128].mean() == pytest.approx(10.0, rel=0.03)
    assert c2[128:].var() == pytest.approx(50.0, rel=0.05)


def test_readout_and_pmt_noise_are_gaussian_with_sigma():
    base = np.full((256, 256), 7.0)
    for fn in (readout_noise, pmt_noise):
        n = fn(base, 2.5, rng(3)) - 7.0
        assert n.mean() == pytest.approx(0.0, abs=0.03)
        assert n.std() == pytest.approx(2.5, rel=0.02)
        # gaussian: kurtosis 3, skewness 0
        z = n / n.std()
        assert (z ** 4).mean() == pytest.approx(3.0, abs=0.1)
        assert abs((z ** 3).mean()) < 0.05


def test_black_pixels_and_zingers_hit_the_drawn_fraction():
    img = np.ones((2, 256, 256))
    b = black_pixels(img, 0.01, rng(4))
    assert (b == 0).mean() == pytest.approx(0.01, rel=0.1)
    assert set(np.unique(b)) == {0.0, 1.0}
    z = zingers(img, 0.005, 99.0, rng(5))
    assert (z == 99.0).mean() == pytest.approx(0.005, rel=0.1)
    assert set(np.unique(z)) == {1.0, 99.0}
    # squares of side 1..3: mean area (1 + 4 + 9) / 3 pixels per zinger (few overlaps)
    z3 = zingers(img, 0.002, 99.0, rng(6), max_size=3)
    assert (z3 == 99.0).mean() == pytest.approx(0.002 * 14 / 3, rel=0.1)
    labels, n = ndimage.label(z3[0] == 99.0)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() <= 9 * 2 and n > 50  # compact clusters, not scattered pixels
    assert np.array_equal(img, np.ones((2, 256, 256)))  # input untouched


def test_upper_clip_and_quantisation_levels():
    x = np.linspace(-1.0, 3.0, 400).reshape(20, 20)
    c = upper_clip(x, 2.0)
    assert c.max() == 2.0 and np.array_equal(c[x <= 2.0], x[x <= 2.0])
    for bits in (1, 3, 8):
        q = quantise(x, bits)
        step = 4.0 / (2 ** bits - 1)
        assert len(np.unique(q)) == min(2 ** bits, x.size)
        assert np.abs(q - x).max() <= step / 2 + 1e-12
        levels = np.unique(q)
        np.testing.assert_allclose(np.diff(levels), step, rtol=1e-9)
    q = quantise(x, 2, vmin=0.0, vmax=1.0)  # a converter range narrower than the signal
    np.testing.assert_allclose(np.unique(q), [0, 1 / 3, 2 / 3, 1])
    # per-image range in a stack
    stack = np.stack([x, 10 * x])
    qs = quantise(stack, 4)
    assert qs[0].max() == 3.0 and qs[1].max() == 30.0


# --------------------------------------------------------------------------------------------
# TEM camera noise
# --------------------------------------------------------------------------------------------
def test_dark_current_is_poisson_and_subtracted():
    d = dark_current_noise(np.zeros((256, 256)), 6.0, rng(7))
    assert d.mean() == pytest.approx(0.0, abs=0.05)
    assert d.var() == pytest.approx(6.0, rel=0.04)
    raw = dark_current_noise(np.zeros((256, 256)), 6.0, rng(7), subtract=False)
    assert raw.mean() == pytest.approx(6.0, rel=0.02) and np.all(raw == np.round(raw))


def test_reset_noise_is_zero_mean_skewed_with_sigma():
    r = reset_noise(np.zeros((256, 256)), 1.5, rng(8))
    assert r.mean() == pytest.approx(0.0, abs=0.02)
    assert r.std() == pytest.approx(1.5, rel=0.03)
    skew = ((r - r.mean()) ** 3).mean() / r.std() ** 3
    assert skew == pytest.approx(1.75, abs=0.3)  # log-normal with shape 0.5


def test_flicker_noise_has_a_one_over_f_spectrum():
    n = flicker_noise(np.zeros((4, 128, 128)), 2.0, rng(9))
    np.testing.assert_allclose(n.std(axis=(1, 2)), 2.0, rtol=1e-6)
    series = n.reshape(4, -1)
    power = (np.abs(np.fft.rfft(series, axis=-1)) ** 2).mean(axis=0)
    f = np.fft.rfftfreq(series.shape[1])
    band = (f > 1e-3) & (f < 0.4)
    slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)
    white = flicker_noise(np.zeros((4, 128, 128)), 2.0, rng(9), exponent=0.0).reshape(4, -1)
    power = (np.abs(np.fft.rfft(white, axis=-1)) ** 2).mean(axis=0)
    assert np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0] == pytest.approx(0.0, abs=0.1)


# --------------------------------------------------------------------------------------------
# S(T)EM: jitter, fast-scan PSF, row-line noise
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_ar1_lag_one_autocorrelation_is_phi(phi):
    x = ar1_series(20_000, phi, 1.3, rng(10), size=(10,))
    lag1 = np.mean([np.corrcoef(s[:-1], s[1:])[0, 1] for s in x])
    lag2 = np.mean([np.corrcoef(s[:-2], s[2:])[0, 1] for s in x])
    assert lag1 == pytest.approx(phi, abs=0.015)
    assert lag2 == pytest.approx(phi ** 2, abs=0.02)  # AR(1), not just any correlated series
    assert x.std() == pytest.approx(1.3, rel=0.03)  # stationary from the first sample
    assert x[:, 0].std() == pytest.approx(1.3, rel=0.3)


def test_jitter_field_modes():
    line = jitter_field((400, 50), 1.0, 0.7, rng(11), mode="line")
    assert np.all(line == line[:, :1])
    assert np.corrcoef(line[:-1, 0], line[1:, 0])[0, 1] == pytest.approx(0.7, abs=0.1)
    pixel = jitter_field((200, 200), 1.0, 0.7, rng(12), mode="pixel")
    flat = pixel.ravel()
    assert np.corrcoef(flat[:-1], flat[1:])[0, 1] == pytest.approx(0.7, abs=0.03)
    with pytest.raises(ValueError, match="mode"):
        jitter_field((4, 4), 1.0, 0.5, rng(), mode="column")


def _row_shift(row: np.ndarray, ref: np.ndarray) -> float:
    """Sub-pixel shift s such that row(x) ~ ref(x + s), from the cross-correlation peak."""
    a, b = row - row.mean(), ref - ref.mean()
    cc = np.fft.irfft(np.fft.rfft(a) * np.conj(np.fft.rfft(b)), n=a.size)
    k = int(np.argmax(cc))
    y0, y1, y2 = cc[k - 1], cc[k], cc[(k + 1) % a.size]
    k = k + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)  # parabolic peak
    return -(k if k < a.size / 2 else k - a.size)


def test_x_jitter_magnitude_from_row_cross_correlation():
    img = texture((96, 1024), sigma=3.0, seed=13)
    out, dy, dx = scan_jitter(img, 1.5, 0.0, rng(14), phi_x=0.5, return_field=True)
    assert np.all(dy == 0) and np.all(dx == dx[:, :1])
    est = np.array([_row_shift(out[i, 64:-64], img[i, 64:-64]) for i in range(img.shape[0])])
    true = dx[:, 0]
    np.testing.assert_allclose(est, true, atol=0.15)  # each row moved by its drawn amount
    assert est.std() == pytest.approx(true.std(), rel=0.05)
    assert true.std() == pytest.approx(1.5, rel=0.35)  # 96 lines of an AR(1) with sigma 1.5


def test_y_jitter_moves_lines_by_the_drawn_displacement():
    ny, nx = 200, 64
    ramp = np.repeat(np.arange(ny, dtype=float)[:, None], nx, axis=1)
    out, dy, _ = scan_jitter(ramp, 0.0, 0.8, rng(15), phi_y=0.3, return_field=True)
    inner = slice(20, ny - 20)  # the reflecting border bends the ramp (decays as 0.27**n)
    # bicubic spline resampling reproduces a linear ramp: the row reads y + dy
    np.testing.assert_allclose(out[inner] - ramp[inner], dy[inner], atol=1e-4)
    assert dy[:, 0].std() == pytest.approx(0.8, rel=0.25)


def test_apply_displacement_is_bicubic_and_exact_for_zero_shift():
    img = texture((32, 32), seed=16)
    zero = np.zeros((32, 32))
    np.testing.assert_allclose(apply_displacement(img, zero, zero), img, atol=1e-10)
    half = apply_displacement(img, zero, np.full((32, 32), 0.5))
    linear = 0.5 * (img[:, 1:] + img[:, :-1])
    cubic_gain = np.abs(half[:, 4:-4] - linear[:, 4:-3]).max()
    assert 0 < cubic_gain < 0.05  # not linear interpolation, but close to it on smooth data


@pytest.mark.parametrize("gamma,decay,omega", [(0.0, 0.5, 0.0), (0.7, 1.0, 0.0), (1.5, 2.0, 1.0),
                                               (0.3, 3.0, 2.0), (5.0, 0.01, 0.0)])
def test_fast_scan_psf_is_normalised_and_centred(gamma, decay, omega):
    k = fast_scan_psf(gamma, decay, omega)
    assert k.ndim == 1 and k.size % 2 == 1
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    offsets = np.arange(k.size) - k.size // 2
    assert abs((offsets * k).sum()) <= 0.5 + 1e-9  # centred on its centroid (nearest pixel)


def _fwhm(k: np.ndarray) -> float:
    half = k.max() / 2
    above = np.flatnonzero(k >= half)
    lo, hi = above[0], above[-1]
    left = lo - (k[lo] - half) / (k[lo] - k[lo - 1])
    right = hi + (k[hi] - half) / (k[hi] - k[hi + 1])
    return float(right - left)


def test_fast_scan_psf_width_scales_with_gamma_and_decay():
    # readout much faster than a pixel: the PSF is the Lorentzian, FWHM 2 gamma
    for gamma in (2.0, 4.0, 8.0):
        assert _fwhm(fast_scan_psf(gamma, 0.01)) == pytest.approx(2 * gamma, rel=0.08)
    # no detector blur: a slower readout spreads the signal further (second moment ~ decay)
    spreads = []
    for decay in (0.5, 1.0, 2.0, 4.0):
        k = fast_scan_psf(0.0, decay)
        x = np.arange(k.size) - k.size // 2
        mean = (x * k).sum()
        spreads.append(np.sqrt(((x - mean) ** 2 * k).sum()))
    assert np.all(np.diff(spreads) > 0)
    # critically damped: variance 2 decay^2 (gamma distribution of shape 2), plus pixel effects
    assert spreads[-1] == pytest.approx(np.sqrt(2) * 4.0, rel=0.1)
    # ringing: an under-damped readout overshoots (negative lobes)
    assert fast_scan_psf(0.0, 4.0, 1.5).min() < -0.01
    assert fast_scan_psf(0.0, 4.0, 0.0).min() >= 0


def test_fast_scan_blur_streaks_along_the_fast_scan_only():
    img = np.zeros((9, 101))
    img[4, 40] = 1.0
    out = fast_scan_blur(img, 0.2, 3.0)
    assert np.all(out[[3, 5]] == 0)  # rows do not mix
    row = out[4]
    assert row.sum() == pytest.approx(1.0, abs=1e-6)
    x = np.arange(101) - (row * np.arange(101)).sum()
    assert (x ** 3 * row).sum() > 0  # the tail trails after the signal (+x)
    assert abs((row * np.arange(101)).sum() - 40) <= 0.5


def test_row_line_noise_offsets_whole_lines():
    out = row_line_noise(np.zeros((2000, 16)), 0.3, rng(17))
    assert np.all(out == out[:, :1])
    assert out[:, 0].std() == pytest.approx(0.3, rel=0.05)


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------
def test_blur_and_interpolation_reduce_high_frequency_power():
    img = rng(18).normal(size=(128, 128))
    p0 = high_freq_power(img)
    assert high_freq_power(gaussian_blur(img, 1.0)) < 0.05 * p0
    for order in (1, 3):
        down_up = interpolation_distortion(img, 2.0, order=order)
        assert down_up.shape == img.shape
        assert high_freq_power(down_up) < 0.3 * p0
    # a smooth image survives (the low frequencies are kept)
    smooth = texture((128, 128), sigma=6.0)
    back = interpolation_distortion(smooth, 2.0, order=3)
    assert np.corrcoef(back.ravel(), smooth.ravel())[0, 1] > 0.99
    assert gaussian_blur(img, 0.0) is not img and np.array_equal(gaussian_blur(img, 0.0), img)


# --------------------------------------------------------------------------------------------
# Random composition
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["tem", "stem"])
@pytest.mark.parametrize("resolution", ["high", "low"])
def test_random_distortion_is_reproducible_and_logged(modality, resolution):
    clean = texture((64, 64), seed=19).astype(np.float32)
    a, pa = random_distortion(clean, modality, rng(20), resolution=resolution)
    b, pb = random_distortion(clean, modality, rng(20), resolution=resolution)
    c, _ = random_distortion(clean, modality, rng(21), resolution=resolution)
    assert np.array_equal(a, b) and pa == pb and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert json.loads(json.dumps(pa)) == pa
    assert pa["modality"] == modality and pa["resolution"] == resolution
    lo, hi = SETTINGS[modality, resolution]["dose"].low, SETTINGS[modality, resolution]["dose"].high
    assert lo <= pa["dose"] <= hi


@pytest.mark.parametrize("modality", ["tem", "stem"])
def test_random_distortion_applies_everything_when_forced(modality):
    forced = {k: Draw(p=1.0, low=d.low, high=d.high, log=d.log, choices=d.choices)
              for k, d in SETTINGS[modality, "high"].items()}
    clean = texture((64, 64), seed=22)
    out, p = random_distortion(clean, modality, rng(23), settings=forced)
    common = {"black_pixels", "clip_level", "quantise_bits", "interp_factor", "interp_order",
              "blur_sigma", "zingers", "zinger_level", "zinger_size"}
    specific = ({"dark", "reset_sigma", "flicker_sigma", "readout_sigma"} if modality == "tem" else
                {"jitter_line_x", "jitter_line_y", "jitter_pixel_x", "psf_gamma", "psf_decay",
                 "psf_omega", "pmt_sigma", "row_line_sigma"})
    assert common | specific <= set(p)
    assert np.isfinite(out).all()


def test_random_distortion_with_only_shot_noise_matches_the_clean_target():
    none = {k: Draw(p=0.0, low=d.low, high=d.high, log=d.log, choices=d.choices)
            for k, d in SETTINGS["tem", "high"].items()}
    none["dose"] = Draw(low=30.0, high=30.0)
    clean = np.full((4, 128, 128), 1.0)
    clean[:, :64] = 2.0
    out, p = random_distortion(clean, "tem", rng(24), settings=none)
    assert set(p) == {"modality", "resolution", "dose"}
    target = p["dose"] * clean  # the training target, in counts
    assert (out - target).mean() == pytest.approx(0.0, abs=0.1)
    assert ((out - target) ** 2).mean() == pytest.approx(target.mean(), rel=0.03)
    assert not np.array_equal(out[0], out[1])  # independent noise per image of a stack


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def test_invalid_inputs_say_what_to_fix():
    good = np.ones((8, 8))
    bad_nan = good.copy()
    bad_nan[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf.*nan_to_num"):
        shot_noise(bad_nan, 10.0, rng())
    with pytest.raises(ValueError, match=r"\(H, W\) or a stack \(N, H, W\)"):
        readout_noise(np.ones(8), 1.0, rng())
    with pytest.raises(ValueError, match=r"\(H, W\) or a stack"):
        gaussian_blur(np.ones((2, 2, 8, 8)), 1.0)
    with pytest.raises(ValueError, match="dose must be in.*positive dose"):
        shot_noise(good, -1.0, rng())
    with pytest.raises(ValueError, match="non-negative intensity.*clip"):
        shot_noise(-good, 1.0, rng())
    with pytest.raises(ValueError, match="fraction"):
        black_pixels(good, 1.5, rng())
    with pytest.raises(ValueError, match="bits"):
        quantise(good, 0)
    with pytest.raises(ValueError, match="phi"):
        ar1_series(10, 1.0, 1.0, rng())
    with pytest.raises(ValueError, match="decay"):
        fast_scan_psf(1.0, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        readout_noise(good, float("nan"), rng())
    with pytest.raises(ValueError, match="modality"):
        random_distortion(good, "sem", rng())
    with pytest.raises(ValueError, match="resolution"):
        random_distortion(good, "tem", rng(), resolution="medium")
    with pytest.raises(ValueError, match="settings lacks"):
        random_distortion(good, "tem", rng(), settings={"dose": Draw(low=1, high=2)})
    with pytest.raises(TypeError, match="default_rng"):
        shot_noise(good, 1.0, 42)
    with pytest.raises(ValueError, match="real numeric"):
        readout_noise(np.ones((4, 4), complex), 1.0, rng())


@pytest.mark.parametrize("module", [noise_module, detector_module, tem_module, stem_module,
                                    post_module])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0
