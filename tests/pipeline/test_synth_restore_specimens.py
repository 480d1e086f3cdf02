"""Synthetic specimens and training pairs for the restoration networks: lattices where they were
drawn, positive Z-contrast peaks, TEM contrast from the lens, non-overlapping amorphous atoms,
shapes, units, speed and reproducibility."""

from __future__ import annotations

import doctest
import json
import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

import emfuse.pipeline.synth.restore_specimens as specimens_module
from emfuse.pipeline.synth.restore_specimens import (
    KINDS,
    amorphous_positions,
    crystal_positions,
    electron_wavelength,
    lattice_vectors,
    make_batch,
    make_pair,
    make_specimen,
    render_stem,
    render_tem,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def fourier_peaks(img: np.ndarray, n: int) -> np.ndarray:
    """The n strongest local maxima of the windowed power spectrum (no DC), in cycles/px (ky, kx)."""
    ny, nx = img.shape
    window = np.outer(np.hanning(ny), np.hanning(nx))
    power = np.abs(np.fft.fftshift(np.fft.fft2((img - img.mean()) * window))) ** 2
    cy, cx = ny // 2, nx // 2
    power[cy - 3:cy + 4, cx - 3:cx + 4] = 0  # DC and the window's leakage around it
    peaks = (power == ndimage.maximum_filter(power, size=5)) & (power > 0)
    idx = np.argwhere(peaks)
    order = np.argsort(power[peaks])[::-1][:n]
    return (idx[order] - [cy, cx]) / [ny, nx]


def on_reciprocal_lattice(k: np.ndarray, vectors: np.ndarray, shape) -> np.ndarray:
    """Whether each frequency k (cycles/px) is a reciprocal-lattice point, within FFT resolution:
    k . a_i must be an integer for both lattice vectors a_i."""
    h = k @ np.asarray(vectors).T  # (n, 2): k . a1, k . a2
    tol = np.linalg.norm(vectors, axis=1) / min(shape) * 1.2 + 0.05
    return np.all(np.abs(h - np.round(h)) <= tol, axis=1)


# --------------------------------------------------------------------------------------------
# Specimens
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["stem", "tem"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crystal_periodicity_is_the_drawn_lattice(modality, seed):
    shape = (256, 256)
    img, info = make_specimen(shape, modality, "low", rng(seed), kind="crystalline", particle=False)
    vectors = np.array(info["vectors_px"])
    k = fourier_peaks(img, 6)
    assert np.all(on_reciprocal_lattice(k, vectors, shape)), (k, vectors)
    # the lattice is really there: an image of random atoms has its peaks anywhere
    amorphous, _ = make_specimen(shape, modality, "low", rng(seed), kind="amorphous")
    assert not np.all(on_reciprocal_lattice(fourier_peaks(amorphous, 6), vectors, shape))


def test_stem_columns_are_positive_peaks_at_lattice_positions():
    for seed in range(4):
        img, info = make_specimen((128, 128), "stem", "high", rng(seed), kind="crystalline",
                                  particle=False)
        assert img.min() >= 0 and img.max() == pytest.approx(1.0)
        # columns of the heaviest basis site: at its lattice positions, near the image maximum
        heaviest = int(np.argmax(info["z_sites"]))
        vectors = np.array(info["vectors_px"])
        offset = np.array(info["basis"][heaviest]) @ vectors
        pos, _ = crystal_positions((128, 128), vectors, np.zeros((1, 2)),
                                   origin=np.array(info["origin_px"]) + offset)
        inside = np.all((pos >= 2) & (pos < 126), axis=1)
        values = ndimage.map_coordinates(img, pos[inside].T, order=1)
        assert values.size > 0 and values.min() > 0.5
        assert values.min() > np.quantile(img, 0.9)


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_render_stem_peak_heights_follow_weights(sigma):
    """Column intensity ~ Z**gamma whatever the sub-pixel position (exact or splatted gaussians)."""
    pos = np.array([[20.3, 20.0], [20.0, 60.7], [60.5, 40.2], [60.0, 80.0]])
    z = np.array([14, 38, 79, 79])
    img = render_stem((90, 100), pos, z ** 1.7, sigma)
    peaks = np.array([img[int(round(y)) - 2:int(round(y)) + 3,
                           int(round(x)) - 2:int(round(x)) + 3].max() for y, x in pos])
    expected = (z / 79.0) ** 1.7
    # a pixel grid sees the top of a narrow gaussian only where a pixel centre falls near it
    sampled = np.exp(-0.5 * ((pos - np.round(pos)) ** 2).sum(axis=1) / sigma ** 2)
    np.testing.assert_allclose(peaks / 79.0 ** 1.7, expected * sampled, rtol=0.03)
    assert img.sum() == pytest.approx((z ** 1.7).sum() * 2 * np.pi * sigma ** 2, rel=0.01)


def test_tem_contrast_sign_follows_defocus():
    """Weak phase object, I ~ 1 + 2 phi (*) F^-1[sin chi]: underfocus gives dark atoms,
    overfocus bright ones (no Cs), and Scherzer underfocus with Cs gives dark atoms."""
    lam = electron_wavelength(300.0)
    y, x = np.mgrid[:128, :128]

    def blob(sigma_a):  # a gaussian phase of 0.1 rad, width in Å at 0.1 Å per pixel
        return 0.1 * np.exp(-0.5 * ((y - 64) ** 2 + (x - 64) ** 2) / (sigma_a / 0.1) ** 2)

    dark = render_tem(blob(0.5), 0.1, lam, -100.0, 0.0, 30.0)
    bright = render_tem(blob(0.5), 0.1, lam, 100.0, 0.0, 30.0)
    assert dark[64, 64] < 0.95 and bright[64, 64] > 1.05
    cs = 1.2e7  # Å
    scherzer = render_tem(blob(3.0), 0.1, lam, -1.2 * np.sqrt(cs * lam), cs, 30.0)
    assert scherzer[64, 64] < 0.98
    assert render_tem(np.zeros((32, 32)), 0.1, lam, -500.0, cs, 30.0) == pytest.approx(1.0)


def test_amorphous_atoms_do_not_overlap():
    for d in (3.0, 6.5):
        pos = amorphous_positions((200, 150), d, rng(5))
        assert len(cKDTree(pos).query_pairs(d * (1 - 1e-6))) == 0
        assert pos[:, 0].min() >= 0 and pos[:, 0].max() < 200 and pos[:, 1].max() < 150
        assert len(pos) * d * d / (200 * 150) > 0.4  # dense: near jamming, not a few atoms


def test_lattice_helpers():
    v = lattice_vectors(3.0, 3.0, 2 * np.pi / 3, 0.3)
    assert np.linalg.norm(v, axis=1) == pytest.approx([3.0, 3.0])
    cos = v[0] @ v[1] / 9.0
    assert cos == pytest.approx(-0.5)
    pos, site = crystal_positions((40, 40), v * 4, np.array([[0, 0], [0.5, 0.5]]))
    assert set(site.tolist()) == {0, 1}
    assert np.all((pos >= 0) & (pos < 40))
    assert len(pos) == pytest.approx(2 * 1600 / abs(np.linalg.det(v * 4)), rel=0.15)


# --------------------------------------------------------------------------------------------
# Pairs and batches
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["stem", "tem"])
@pytest.mark.parametrize("resolution", ["high", "low"])
def test_make_pair_shapes_units_and_kinds(modality, resolution):
    for i, kind in enumerate(KINDS):
        clean, degraded, info = make_pair((48, 64), modality, resolution, rng(10 + i), kind=kind)
        assert clean.shape == degraded.shape == (48, 64)
        assert clean.dtype == degraded.dtype == np.float32
        assert np.isfinite(clean).all() and np.isfinite(degraded).all()
        assert info["kind"] == kind and info["distortion"]["modality"] == modality
        assert json.loads(json.dumps(info)) == info  # a log record
        dose = info["distortion"]["dose"]
        if modality == "stem":  # clean is dose * image with image max 1, positive
            assert clean.min() >= 0 and clean.max() == pytest.approx(dose, rel=1e-5)
        else:  # TEM image has mean 1
            assert clean.mean() == pytest.approx(dose, rel=1e-4) and clean.min() > 0
        # the distorted input lives in the same units (counts) as the target
        ratio = degraded.mean() / clean.mean()
        assert 0.3 < ratio < 3.0, (kind, info["distortion"])


def test_make_batch_is_torch_ready_and_reproducible():
    c1, d1 = make_batch(3, (32, 32), "stem", "high", rng(7))
    c2, d2 = make_batch(3, (32, 32), "stem", "high", rng(7))
    assert c1.shape == d1.shape == (3, 1, 32, 32) and c1.dtype == np.float32
    assert c1.flags["C_CONTIGUOUS"] and d1.flags["C_CONTIGUOUS"]
    assert np.array_equal(c1, c2) and np.array_equal(d1, d2)
    assert not np.array_equal(c1[0], c1[1])  # every pair its own specimen
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(d1)
    assert t.dtype == torch.float32 and tuple(t.shape) == (3, 1, 32, 32)


def test_random_kinds_cover_all_and_pairs_are_fast():
    kinds = {make_specimen((32, 32), "stem", "high", rng(s))[1]["kind"] for s in range(30)}
    assert kinds == set(KINDS)
    for modality in ("stem", "tem"):
        make_pair((256, 256), modality, "high", rng(0))  # warm-up
        cpu = []
        for s in range(5):
            t = time.process_time()
            make_pair((256, 256), modality, "high" if s % 2 else "low", rng(s))
            cpu.append(time.process_time() - t)
        assert np.median(cpu) < 0.1, (modality, cpu)  # CPU time: not slowed by other processes


def test_invalid_arguments():
    with pytest.raises(ValueError, match="shape"):
        make_pair((4, 64), "stem", "high", rng())
    with pytest.raises(ValueError, match="shape"):
        make_specimen((32,), "stem", "high", rng())
    with pytest.raises(ValueError, match="modality"):
        make_pair((32, 32), "sem", "high", rng())
    with pytest.raises(ValueError, match="resolution"):
        make_pair((32, 32), "tem", "ultra", rng())
    with pytest.raises(ValueError, match="kind"):
        make_specimen((32, 32), "tem", "high", rng(), kind="liquid")
    with pytest.raises(ValueError, match="batch size"):
        make_batch(0, (32, 32), "tem", "high", rng())
    with pytest.raises(TypeError, match="default_rng"):
        make_pair((32, 32), "tem", "high", 3)


def test_doctests():
    result = doctest.testmod(specimens_module)
    assert result.failed == 0 and result.attempted > 0
