"""The BF/DF/HRTEM simulator: shapes, reproducibility, the physics of each mode, the synth command."""

from __future__ import annotations

import numpy as np
import pytest

from emfuse.flows.cli import main
from emfuse.pipeline.synth.tem_modes import (
    MATERIALS,
    MODES,
    VARIED,
    Microscope,
    ctf,
    simulate_region,
    simulate_regions,
)
from emfuse.stores.zarrio import open_dataset


def _high_frequency_fraction(image: np.ndarray, k: float = 0.12) -> float:
    """Fraction of the (mean-removed) power above ``k`` cycles per pixel."""
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None, :]
    return float(power[np.hypot(ky, kx) > k].sum() / power.sum())


@pytest.fixture(scope="module")
def clean():
    """Noise-free, evenly lit modes of one region of each class."""
    return {m: simulate_region((96, 96), m, np.random.default_rng(3), record=False) for m in MATERIALS}


def test_shapes_reproducibility_and_records():
    a = simulate_region((40, 56), "semiconductor", np.random.default_rng(5))
    b = simulate_region((40, 56), "semiconductor", np.random.default_rng(5))
    assert a.modes.shape == (3, 40, 56) and a.truth.shape == (40, 56)
    np.testing.assert_array_equal(a.modes, b.modes)
    np.testing.assert_array_equal(a.truth, b.truth)
    assert np.all(a.drift[MODES.index("hrtem")] == 0) and np.abs(a.drift).max() <= 3.0
    assert a.params["bf"]["drift_px"] == a.drift[0].tolist() and a.params["hrtem"]["dose"] > 0
    regions = simulate_regions(4, (24, 24), seed=1)
    assert [r.material for r in regions] == ["metal", "semiconductor", "ceramic", "metal"]
    # region i depends only on (seed, i)
    np.testing.assert_array_equal(simulate_regions(2, (24, 24), seed=1)[1].modes, regions[1].modes)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="material must be one of"):
        simulate_region((32, 32), "glass", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 8 x 8"):
        simulate_region((4, 32), "metal", np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_drift_px"):
        simulate_region((32, 32), "metal", np.random.default_rng(0), scope=Microscope(max_drift_px=20))


def test_ctf_is_unity_at_zero_frequency_and_damped_by_the_envelopes():
    t = ctf((64, 64), 0.05, kv=300, cs_nm=1.2e6, defocus_nm=-53, focal_spread_nm=4,
            convergence_rad=2e-4, aperture_inv_nm=9)
    assert t[0, 0] == 1 and np.abs(t).max() <= 1
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(64, 0.05), np.fft.fftfreq(64, 0.05)))
    assert np.all(t[k > 9] == 0)  # the objective aperture
    assert np.abs(t[0, 20]) < np.abs(t[0, 10]) < 1  # envelopes fall with spatial frequency


def test_each_mode_carries_what_its_physics_says(clean):
    for name, r in clean.items():
        bf, df, hrtem = r.modes
        # HRTEM resolves the columns, BF and DF (small aperture, blurred) do not
        assert _high_frequency_fraction(hrtem) > 10 * _high_frequency_fraction(bf), name
        assert _high_frequency_fraction(hrtem) > 10 * _high_frequency_fraction(df), name
        assert _high_frequency_fraction(r.truth) > 0.05, name
        # BF is an attenuated beam; DF a weak signal
        assert 0 < bf.mean() < 1 and 0 < df.mean() < 0.3, name
    # DF lights the grains in the reflection (where a region has one) over a diffuse background
    assert sum(r.modes[1].max() > 3 * np.median(r.modes[1]) for r in clean.values()) >= 2
    # heavier material: lower BF transmission at the same thickness range, higher truth
    assert clean["metal"].truth.mean() > clean["semiconductor"].truth.mean()


def test_noise_follows_the_dose():
    dim = simulate_region((64, 64), "metal", np.random.default_rng(9), hrtem_dose=10)
    bright = simulate_region((64, 64), "metal", np.random.default_rng(9), hrtem_dose=1000)
    h = MODES.index("hrtem")
    assert dim.params[MODES[h]]["dose"] == 10

    def rel_noise(region, dose):
        return np.std(region.modes[h] / dose - simulate_region(
            (64, 64), "metal", np.random.default_rng(9), hrtem_dose=dose, record=False).modes[h])

    assert rel_noise(dim, 10) > 4 * rel_noise(bright, 1000)


def test_synth_tem_modes_writes_a_canonical_store(tmp_path, capsys):
    out = tmp_path / "tem.zarr"
    assert main(["synth", "tem-modes", "--out", str(out), "--shape", "48", "64", "--material", "ceramic",
                 "--seed", "4"]) == 0
    ds = open_dataset(out)
    assert ds.modes.dims == ("mode", "y", "x") and ds.modes.shape == (3, 48, 64)
    assert list(ds.mode.values) == ["bf", "df", "hrtem"]
    assert ds.true_structure.shape == (48, 64) and ds.x.attrs["units"] == "nm"
    assert ds.attrs["synthetic"]["material"] == "ceramic" and ds.attrs["synthetic"]["seed"] == 4
    assert set(ds.modes.attrs["drift_px"]) == {"bf", "df", "hrtem"}
    expected = simulate_region((48, 64), "ceramic", np.random.default_rng(4))
    np.testing.assert_array_equal(ds.modes.values, expected.modes)


def test_per_region_variation_is_off_by_default_and_explicit_when_on():
    plain = simulate_region((64, 64), "ceramic", np.random.default_rng(8), record=False)
    varied = simulate_region((64, 64), "ceramic", np.random.default_rng(8), record=False, scope=VARIED)
    assert "contamination" not in plain.params and "distortion_rms_px" not in plain.params
    assert VARIED.distortion_px > 0 and VARIED.contamination[1] > 0
    assert Microscope().distortion_px == 0 and Microscope().contamination == (0.0, 0.0)
    # the specimen is drawn first: the same truth, only the recording differs
    np.testing.assert_array_equal(plain.truth, varied.truth)
    rms = varied.params["distortion_rms_px"]
    assert set(rms) == {"bf", "df"} and all(0.5 * 1.5 <= v <= 1.5 for v in rms.values())
    # with the variation's ranges at zero the region is bit-for-bit the default one
    off = Microscope(distortion_px=0.0, contamination=(0.0, 0.0))
    np.testing.assert_array_equal(simulate_region((64, 64), "ceramic", np.random.default_rng(8), scope=off).modes,
                                  simulate_region((64, 64), "ceramic", np.random.default_rng(8)).modes)


def test_contamination_changes_the_hrtem_in_patches_only():
    scope = Microscope(contamination=(0.3, 0.3))
    plain = simulate_region((128, 128), "metal", np.random.default_rng(2), record=False)
    dirty = simulate_region((128, 128), "metal", np.random.default_rng(2), record=False, scope=scope)
    h = MODES.index("hrtem")
    assert dirty.params["contamination"]["fraction"] == pytest.approx(0.3, abs=0.02)
    # same lens and phase draws before the patches: the HRTEM differs only where there is carbon
    # (plus the CTF's delocalisation of a few px around it)
    changed = np.abs(dirty.modes[h] - plain.modes[h]) > 0.02 * plain.modes[h].std()
    assert 0.15 < changed.mean() < 0.6


def test_distortion_moves_the_content_by_the_displacement_field():
    from scipy import ndimage

    from emfuse.pipeline.synth.tem_modes import _shifted_crop

    image = ndimage.gaussian_filter(np.random.default_rng(0).random((64, 64)), 2)
    drift = np.array([1.25, -0.5])
    rigid = _shifted_crop(image, drift + [0.5, 1.0], 8)
    constant = np.stack([np.full((64, 64), 0.5), np.full((64, 64), 1.0)])
    np.testing.assert_allclose(_shifted_crop(image, drift, 8, constant), rigid, atol=1e-6)
    # a displacement that grows along x: the left edge is unmoved, the right edge moved
    ramp = np.stack([np.zeros((64, 64)), np.tile(np.linspace(0, 3, 64), (64, 1))])
    moved = _shifted_crop(image, np.zeros(2), 8, ramp)
    still = _shifted_crop(image, np.zeros(2), 8)
    assert np.abs(moved[:, :4] - still[:, :4]).max() < 0.2 * np.abs(moved[:, -8:] - still[:, -8:]).max()


def test_the_illumination_is_recorded_and_a_flat_reference_keeps_the_thickness_in_bf():
    """Dividing by the recorded illumination gives back the unlit image; fitting a smooth surface
    instead also removes BF's thickness wedge, which a flat (vacuum) reference keeps."""
    from scipy import ndimage

    from emfuse.pipeline.avae.evaluate import prepare_regions

    lit = simulate_region((96, 96), "ceramic", np.random.default_rng(1))
    unlit = simulate_region((96, 96), "ceramic", np.random.default_rng(1), record=False)
    assert lit.illumination.shape == (3, 96, 96)
    np.testing.assert_allclose(lit.illumination.mean(axis=(1, 2)), 1.0, rtol=1e-5)
    smooth = lambda a: ndimage.gaussian_filter(a, 4).ravel()  # noqa: E731
    for i in range(3):
        corrected = np.corrcoef(smooth(lit.modes[i] / lit.illumination[i]), smooth(unlit.modes[i]))[0, 1]
        raw = np.corrcoef(smooth(lit.modes[i]), smooth(unlit.modes[i]))[0, 1]
        assert corrected > max(raw, 0.9)
    regions = simulate_regions(6, (128, 128), 3)

    def bf_follows_truth(flat_reference):
        p = prepare_regions(regions, flat_reference=flat_reference)
        return np.mean([abs(np.corrcoef(ndimage.gaussian_filter(x[0], 16).ravel(),
                                        ndimage.gaussian_filter(t, 16).ravel())[0, 1])
                        for x, t in zip(p.inputs, p.truths)])

    assert bf_follows_truth(True) > bf_follows_truth(False) + 0.2
