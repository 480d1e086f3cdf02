"""Preprocessing of TEM modes: flat field, equalisation, registration (error on simulated drift), denoising."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
from scipy import ndimage

from emfuse.pipeline.avae.preprocess import (
    Preprocessing,
    align_modes,
    denoise,
    equalise,
    estimate_mode_drift,
    fit_flat,
    flat_field,
    flat_surface,
    mode_quantiles,
)
from emfuse.pipeline.register import shift_image
from emfuse.pipeline.synth.tem_modes import simulate_regions


def _beam(shape, centre=(0.1, -0.2), width=0.3):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / (max(shape) - 1) - 0.5
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width**2))


def test_flat_field_removes_an_uneven_beam_and_keeps_the_texture():
    rng = np.random.default_rng(0)
    texture = 1 + 0.3 * ndimage.gaussian_filter(rng.standard_normal((128, 160)), 2)
    lit = 200 * texture * _beam((128, 160))
    corrected = flat_field(lit)
    blocks = corrected.reshape(8, 16, 10, 16).mean(axis=(1, 3))
    assert blocks.std() / blocks.mean() < 0.03  # flat to 3% (from a beam falling to 30%)
    assert np.corrcoef(corrected.ravel(), texture.ravel())[0, 1] > 0.99
    # a flat reference is used as given
    np.testing.assert_allclose(flat_field(lit, flat=_beam((128, 160))), lit / (_beam((128, 160)) / _beam((128, 160)).mean()))
    with pytest.raises(ValueError, match="differ in shape"):
        flat_field(lit, flat=np.ones((4, 4)))


def test_flat_fitted_on_a_block_average_matches_the_full_fit():
    image = 50 * _beam((256, 192)) * (1 + 0.1 * np.random.default_rng(1).random((256, 192)))
    full = fit_flat(image)
    small = image.reshape(64, 4, 48, 4).mean(axis=(1, 3))
    coarse = fit_flat(small, full_shape=image.shape, factor=4)
    window = (slice(100, 140), slice(30, 90))
    np.testing.assert_allclose(flat_surface(coarse, image.shape, window), flat_surface(full, image.shape, window), rtol=2e-3)


def test_equalise_flattens_the_histogram_and_keeps_the_order():
    image = np.random.default_rng(2).gamma(2.0, 30.0, (100, 100))
    out = equalise(image)
    assert out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(np.histogram(out, bins=10, range=(0, 1))[0] / out.size, 0.1, atol=0.005)
    order = np.argsort(image.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= -1e-12)
    # with another image's quantiles: the same map, values outside clipped to [0, 1]
    q = mode_quantiles(image)
    assert equalise(np.array([-1.0, 1e9]), q).tolist() == [0.0, 1.0]


def test_registration_recovers_a_known_shift_to_a_hundredth_of_a_pixel():
    base = ndimage.gaussian_filter(np.random.default_rng(3).random((128, 128)), 3)
    drift = np.array([[2.37, -1.62], [0.0, 0.0], [-0.81, 3.05]])
    stack = np.stack([shift_image(base, d, method="fourier") for d in drift])
    found = estimate_mode_drift(stack, reference=1, sigma=1.0, upsample=100)
    np.testing.assert_allclose(found, drift, atol=0.02)
    aligned = align_modes(stack, found)
    assert np.abs(aligned[0] - aligned[1])[10:-10, 10:-10].max() < 0.01 * np.ptp(base)


def test_registration_error_on_simulated_drift():
    """Cross-modal registration of simulated BF and DF to the HRTEM (256 x 256 fields).

    What is measured here is quoted in docs/methods/avae.md: BF to a fraction of a pixel,
    DF (a few lit grains) worse; both better than not registering.
    """
    regions = simulate_regions(6, (256, 256), seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        errors = np.array([[np.linalg.norm(Preprocessing.fit(r.modes).drift[i] - r.drift[i]) for i in (0, 1)]
                           for r in regions])
    unregistered = np.array([[np.linalg.norm(r.drift[i]) for i in (0, 1)] for r in regions])
    assert np.median(errors[:, 0]) < 1.0
    assert np.median(errors[:, 0]) < 0.5 * np.median(unregistered[:, 0])
    assert np.median(errors[:, 1]) < np.median(unregistered[:, 1])


def test_a_failed_match_is_not_applied():
    rng = np.random.default_rng(4)
    with pytest.warns(RuntimeWarning, match="taken as failed"):
        drift = estimate_mode_drift(rng.random((2, 64, 64)), reference=1, max_shift=0.001)
    assert np.all(drift == 0)


def test_denoise_lowers_the_noise_and_keeps_the_mean():
    noisy = np.random.default_rng(5).normal(10.0, 2.0, (128, 128))
    out = denoise(noisy, 1.5)
    assert abs(out.mean() - 10) < 0.05 and out.std() < 0.3 * noisy.std()
    np.testing.assert_array_equal(denoise(noisy, 0), noisy)
    with pytest.raises(ValueError, match=">= 0"):
        denoise(noisy, -1)


def test_preprocessing_by_windows_equals_the_whole_image():
    region = simulate_regions(1, (128, 128), seed=8)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the DF match may fail on so small a field
        prep = Preprocessing.fit(region.modes)
    whole = prep.apply(region.modes)
    assert whole.shape == (3, 128, 128) and whole.min() >= 0 and whole.max() <= 1
    window, core = (slice(40, 128), slice(0, 90)), (slice(56, 112), slice(0, 74))
    part = prep.apply(region.modes[:, window[0], window[1]], window)
    np.testing.assert_allclose(part[:, 16:72, 0:74], whole[:, core[0], core[1]], atol=1e-5)
    again = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    np.testing.assert_array_equal(again.apply(region.modes), whole)


def test_linear_modes_keep_their_values_proportional_and_survive_json():
    """A mode in ``linear`` is stretched (a linear map of its 1st and 99th percentiles to 0 and 1)
    instead of equalised: inside that range, equal steps of the input stay equal steps; the other
    modes are equalised as before, and the choice is kept through ``to_dict``/``from_dict``."""
    region = simulate_regions(1, (96, 96), seed=3)[0]
    modes = region.modes / region.illumination
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = Preprocessing.fit(modes, order=0, register=False)
        linear = Preprocessing.fit(modes, order=0, register=False, linear=[0])
    prep = dataclasses.replace(linear, denoise=(0.0, 0.0, 0.0))  # the values themselves, not smoothed
    out = prep.apply(modes)
    inside = (out[0] > 0.05) & (out[0] < 0.95)
    slope, offset = np.polyfit(modes[0][inside], out[0][inside], 1)
    np.testing.assert_allclose(out[0][inside], slope * modes[0][inside] + offset, atol=1e-5)
    np.testing.assert_array_equal(out[1:], dataclasses.replace(plain, denoise=(0.0, 0.0, 0.0)).apply(modes)[1:])
    assert not np.allclose(out[0], dataclasses.replace(plain, denoise=(0.0, 0.0, 0.0)).apply(modes)[0], atol=0.02)
    again = Preprocessing.from_dict(json.loads(json.dumps(linear.to_dict())))
    assert again.linear == (0,)
    np.testing.assert_array_equal(again.apply(modes), linear.apply(modes))
