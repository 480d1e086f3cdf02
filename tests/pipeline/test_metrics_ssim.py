"""SSIM in emfuse.pipeline.metrics against its definition and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from emfuse.pipeline.metrics import psnr, ssim


def test_ssim_identity_and_range():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 50))
    assert ssim(truth, truth) == pytest.approx(1.0)
    noisy = truth + 0.3 * rng.standard_normal(truth.shape)
    worse = truth + 1.0 * rng.standard_normal(truth.shape)
    assert 0 < ssim(worse, truth) < ssim(noisy, truth) < 1


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    truth = rng.random((64, 80)) * 100
    est = truth + 20 * rng.standard_normal(truth.shape)
    expected = skm.structural_similarity(est, truth, data_range=float(truth.max() - truth.min()),
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(est, truth) == pytest.approx(expected, rel=1e-10)


def test_ssim_sees_structure_psnr_misses():
    # a constant offset costs PSNR but keeps the structure term; SSIM penalises it less than noise of equal MSE
    rng = np.random.default_rng(2)
    truth = rng.random((48, 48))
    offset = truth + 0.1
    noise = truth + 0.1 * rng.choice([-1.0, 1.0], truth.shape)
    assert psnr(offset, truth) == pytest.approx(psnr(noise, truth), abs=1e-9)
    assert ssim(offset, truth) > ssim(noise, truth)


def test_ssim_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        ssim(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="constant"):
        ssim(np.zeros((20, 20)), np.zeros((20, 20)))
    with pytest.raises(ValueError, match="too small"):
        ssim(np.ones((8, 8)), np.arange(64.0).reshape(8, 8))
