"""Drift registration: known subpixel drifts of a textured specimen are found to < 0.05 px."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from emfuse.pipeline.register import estimate_shift, register_stack, shift_image


@pytest.fixture(scope="module")
def specimen() -> np.ndarray:
    """A large band-limited texture: crops of it drifted by Fourier shifts are exact and not periodic."""
    big = gaussian_filter(np.random.default_rng(0).random((320, 320)), 2)
    return big / big.std()


def field_of_view(specimen, drift, shape, noise=0.0, seed=0):
    """What the microscope sees after the specimen drifted by ``drift`` (px), with gaussian noise."""
    moved = shift_image(specimen, drift, method="fourier")[100:100 + shape[0], 90:90 + shape[1]]
    return moved + noise * np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("shape", [(128, 128), (101, 77)])
def test_known_subpixel_drifts_are_found(specimen, shape):
    ref = field_of_view(specimen, (0, 0), shape)
    for drift in np.random.default_rng(1).uniform(-6, 6, size=(6, 2)):
        found = estimate_shift(ref, field_of_view(specimen, drift, shape))
        assert np.abs(np.array(found) - drift).max() < 0.05, (drift, found)


def test_noisy_frames(specimen):
    # signal-to-noise ratio 5 in both images: a few hundredths of a pixel
    ref = field_of_view(specimen, (0, 0), (128, 128), noise=0.2, seed=2)
    drift = (2.37, -4.81)
    found = estimate_shift(ref, field_of_view(specimen, drift, (128, 128), noise=0.2, seed=3))
    assert np.abs(np.array(found) - drift).max() < 0.1


def test_refinement_removes_the_window_bias(specimen):
    ref = field_of_view(specimen, (0, 0), (96, 96))
    moving = field_of_view(specimen, (5.3, -4.6), (96, 96))
    raw = np.array(estimate_shift(ref, moving, refine=0))
    refined = np.array(estimate_shift(ref, moving))
    assert np.abs(refined - (5.3, -4.6)).max() < 0.02 < np.abs(raw - (5.3, -4.6)).max()


def test_phase_correlation_and_whole_pixels():
    image = np.zeros((40, 52))
    image[10:15, 20:24] = 1.0
    image[25:27, 5:9] = 2.0
    rolled = np.roll(image, (-7, 3), axis=(0, 1))
    assert estimate_shift(image, rolled, window=False, upsample=1, refine=0) == (-7.0, 3.0)
    found = estimate_shift(image, rolled, window=False, normalization="phase", refine=0)
    np.testing.assert_allclose(found, (-7, 3), atol=0.01)


@pytest.mark.parametrize("reference", ["first", "mean"])
def test_register_stack(specimen, reference):
    drifts = np.array([[0, 0], [0.4, -0.3], [1.1, -0.45], [1.6, -1.2], [2.35, -1.5]])
    stack = np.stack([field_of_view(specimen, d, (96, 112), noise=0.05, seed=k) for k, d in enumerate(drifts)])
    shifts, aligned = register_stack(stack, reference=reference)
    assert shifts.shape == (5, 2) and aligned.shape == stack.shape
    np.testing.assert_array_equal(shifts[0], 0)
    np.testing.assert_allclose(shifts, drifts, atol=0.05)
    # aligned frames agree with the first one inside (the borders are filled by the nearest pixel)
    inner = (slice(0, None), slice(8, -8), slice(8, -8))
    residual = (aligned[inner] - aligned[0][inner[1:]]).std()
    assert residual < 0.1  # the noise (0.05 per frame) dominates
    assert (stack[inner] - stack[0][inner[1:]]).std() > 3 * residual


def test_shift_image_round_trip_and_direction():
    image = gaussian_filter(np.random.default_rng(4).random((63, 81)), 3)  # odd: no Nyquist bin
    there = shift_image(image, (1.25, -2.5), method="fourier")
    np.testing.assert_allclose(shift_image(there, (-1.25, 2.5), method="fourier"), image, atol=1e-10)
    # content moves by +shift: a bright pixel at (10, 10) ends up at (12, 13)
    dot = np.zeros((20, 20))
    dot[10, 10] = 1
    moved = shift_image(dot, (2, 3))
    assert np.unravel_index(np.argmax(moved), moved.shape) == (12, 13)


def test_bad_inputs_are_named():
    a = np.zeros((8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        estimate_shift(a, np.zeros((8, 9)))
    b = a.copy()
    b[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_shift(a, b)
    with pytest.raises(ValueError, match="2D image"):
        estimate_shift(np.zeros(8), np.zeros(8))
    with pytest.raises(ValueError, match="reference must be"):
        register_stack(np.zeros((2, 8, 8)), reference="last")
