"""The broad training distribution (emfuse.pipeline.synth.scenes): families, contrasts, hold-outs."""

import numpy as np
import pytest

from emfuse.pipeline.synth.scenes import (
    CONTRASTS,
    DETECTOR_NOISE,
    FAMILIES,
    HELD_OUT,
    held_out,
    held_out_settings,
    make_scene,
    make_scene_batch,
    make_scene_pair,
    noise_only_settings,
    training_settings,
)


def _period_px(img: np.ndarray) -> float:
    """The strongest non-DC period of an image, from its power spectrum (px)."""
    f = np.abs(np.fft.fft2(img - img.mean())) ** 2
    f[0, 0] = 0
    ky, kx = np.unravel_index(np.argmax(f), f.shape)
    fy = np.fft.fftfreq(img.shape[0])[ky]
    fx = np.fft.fftfreq(img.shape[1])[kx]
    return 1.0 / np.hypot(fy, fx)


@pytest.mark.parametrize("modality", ["stem", "tem", "sem"])
@pytest.mark.parametrize("resolution", ["high", "low"])
def test_units_and_shape(modality, resolution):
    rng = np.random.default_rng(1)
    for _ in range(6):
        img, info = make_scene((40, 56), modality, resolution, rng)
        assert img.shape == (40, 56) and np.isfinite(img).all() and img.min() >= 0
        if modality == "tem":
            assert abs(img.mean() - 1) < 1e-9
        else:
            assert abs(img.max() - 1) < 1e-9
        assert info["contrast"] in CONTRASTS[modality]
        lo, hi = (2.0, 40.0) if resolution == "high" else (0.7, 2.5)
        assert lo <= info["spacing_px"] <= hi


def test_lattice_period_follows_the_drawn_spacing():
    """A one-column-basis square crystal shows its period in the spectrum (within the lattice
    constant's spread around the mean 4.5 Å: a/4.5 in 0.56..1.44)."""
    rng = np.random.default_rng(4)
    seen = 0
    for _ in range(40):
        img, info = make_scene((128, 128), "stem", "high", rng, family="lattice", contrast="haadf")
        if info["lattice"] != "square" or len(info["basis"]) != 1 or info["spacing_px"] > 20:
            continue
        a = info["a"] / info["pixel_size"]  # the (10) or the (11) reflection is the strongest
        period = _period_px(img)
        assert min(abs(period / a - 1), abs(period / (a / np.sqrt(2)) - 1)) < 0.1, (period, a)
        seen += 1
    assert seen >= 2


def test_bright_field_columns_are_dark():
    """HAADF columns are peaks, BF columns dips: the image at the columns vs its median."""
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    haadf, info = make_scene((96, 96), "stem", "high", rng_a, family="lattice", contrast="haadf")
    bf, _ = make_scene((96, 96), "stem", "high", rng_b, family="lattice", contrast="bf")
    origin = np.round(info["origin_px"]).astype(int)
    assert info["spacing_px"] > 3
    # the same drawn crystal: the brightest HAADF pixels are among the darkest BF pixels
    top = haadf >= np.quantile(haadf, 0.98)
    assert bf[top].mean() < np.median(bf)
    assert haadf[top].mean() > np.median(haadf)
    assert origin.shape == (2,)


def test_families_and_exclusion():
    rng = np.random.default_rng(0)
    seen = {make_scene((32, 32), "stem", "high", rng)[1]["family"] for _ in range(120)}
    assert seen == set(FAMILIES)
    ex = held_out("all")
    for _ in range(60):
        _, info = make_scene((32, 32), "stem", "high", rng, exclude=ex)
        assert info["family"] not in HELD_OUT["family"] and info["contrast"] not in HELD_OUT["contrast"]
    with pytest.raises(ValueError, match="every contrast is excluded"):
        make_scene((32, 32), "tem", "high", rng, exclude=["phase"])
    with pytest.raises(ValueError, match="modality"):
        make_scene((32, 32), "xray", "high", rng)


def test_distortion_hold_out():
    assert training_settings("stem", "high", exclude=held_out("distortion"))["row_line_rel"].p == 0.0
    assert training_settings("tem", "low", exclude=held_out("distortion"))["flicker_sigma"].p == 0.0
    assert training_settings("stem", "high")["row_line_rel"].p > 0
    forced = held_out_settings("stem", "high", "row_line_rel")
    rng = np.random.default_rng(2)
    for _ in range(5):
        _, _, info = make_scene_pair((32, 32), "stem", "high", rng, settings=forced)
        assert info["distortion"]["row_line_sigma"] > 0
    for _ in range(10):
        _, _, info = make_scene_pair((32, 32), "stem", "high", rng, exclude=held_out("all"))
        assert "row_line_sigma" not in info["distortion"]


def test_batch_and_reproducibility():
    a = make_scene_batch(3, (32, 32), ("stem", "sem"), ("high", "low"), np.random.default_rng(5))
    b = make_scene_batch(3, (32, 32), ("stem", "sem"), ("high", "low"), np.random.default_rng(5))
    assert a[0].shape == (3, 1, 32, 32) and a[1].dtype == np.float32
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0][0], a[0][1])


@pytest.mark.parametrize("modality", ["stem", "tem"])
def test_noise_only_pairs_carry_the_detector_noise_alone(modality):
    table = noise_only_settings(modality, "high", exclude=held_out("distortion"))
    full = training_settings(modality, "high", exclude=held_out("distortion"))
    assert table.keys() == full.keys()
    for name, draw in table.items():
        # the detector's noise as in training (a held-out one stays off), every other distortion off
        assert draw.p == (full[name].p if name in DETECTOR_NOISE else 0.0), name
    rng = np.random.default_rng(4)
    for _ in range(10):
        _, _, info = make_scene_pair((64, 64), modality, "high", rng, settings=table)
        assert set(info["distortion"]) <= {"modality", "resolution", "dose", "dark", "reset_sigma",
                                           "readout_sigma", "pmt_sigma"}, info["distortion"]


def test_noise_only_fraction_draws_clean_scans_and_zero_keeps_the_old_stream():
    shape, mods, res = (48, 48), ("stem",), ("high",)
    plain = make_scene_batch(16, shape, mods, res, np.random.default_rng(8))
    zero = make_scene_batch(16, shape, mods, res, np.random.default_rng(8), noise_only=0.0)
    np.testing.assert_array_equal(plain[1], zero[1])  # runs trained before the option are unchanged

    def truth_correlation(fraction: float) -> float:
        # a clean scan leaves the truth's geometry: the degraded frame correlates with it as noise allows
        clean, degraded = make_scene_batch(32, shape, mods, res, np.random.default_rng(9), noise_only=fraction)
        return float(np.mean([np.corrcoef(c.ravel(), d.ravel())[0, 1] for c, d in zip(clean[:, 0], degraded[:, 0])]))

    assert truth_correlation(1.0) > truth_correlation(0.0) + 0.05


def test_jitter_capped_in_angstrom_by_the_scene_pixel_size():
    rng = np.random.default_rng(12)
    seen = 0
    for _ in range(40):
        _, _, info = make_scene_pair((32, 32), "stem", "high", rng, max_jitter_angstrom=0.3)
        cap = 0.3 / info["pixel_size"]
        d = info["distortion"]
        for name in ("jitter_line_x", "jitter_line_y", "jitter_pixel_x"):
            assert d.get(name, 0.0) <= min(cap, 1.0) + 1e-12, (name, d.get(name), cap)
        seen += "jitter_line_x" in d
    assert seen > 10  # the jitter is still drawn, only smaller
    # without the cap a coarse-pixel scene gets jitter far above 0.3 A
    big = []
    for _ in range(40):
        _, _, info = make_scene_pair((32, 32), "stem", "high", rng)
        big.append(info["distortion"].get("jitter_line_x", 0.0) * info["pixel_size"])
    assert max(big) > 0.6
    # TEM frames have no scan: the cap changes nothing there
    a = make_scene_pair((32, 32), "tem", "high", np.random.default_rng(3), max_jitter_angstrom=0.3)[1]
    b = make_scene_pair((32, 32), "tem", "high", np.random.default_rng(3))[1]
    np.testing.assert_array_equal(a, b)
