"""The chunk-wise (lazy) synthetic generators: laziness, determinism by position, the same
physics as the eager generator, and the map set's counting statistics."""

from __future__ import annotations

import doctest

import dask
import dask.array as da
import numpy as np
import pytest

import emfuse.pipeline.synth.lazy as lazy_module
from emfuse.pipeline.elements import UnknownElement
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import (
    lazy_map_set,
    lazy_spectrum_image,
    make_spectrum_image,
    specimen_maps,
    tile_rng,
)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def compute(*arrays):
    with dask.config.set(scheduler="threads"):
        return dask.compute(*arrays)


@pytest.fixture(scope="module")
def pair():
    """An eager and a lazy dataset of the same size and parameters (lazy: 4 specimen tiles)."""
    eager = make_spectrum_image((128, 128), seed=1)
    lazy = lazy_spectrum_image((128, 128), seed=1, chunks=32, specimen_tile=64)
    spectrum, haadf, true_haadf, true_maps = compute(lazy.spectrum, lazy.haadf, lazy.true_haadf,
                                                     lazy.true_maps)
    return eager, lazy, {"spectrum": spectrum, "haadf": haadf, "true_haadf": true_haadf,
                         "true_maps": true_maps}


def test_arrays_are_lazy_with_the_canonical_chunks():
    calls = []

    def counting(block):
        if block.size:
            calls.append(1)
        return block

    si = lazy_spectrum_image((1024, 1024), ("Sr", "Ti", "O", "Ca"), n_channels=2048)
    assert isinstance(si.spectrum, da.Array) and si.spectrum.dtype == np.uint16
    assert si.spectrum.shape == (1024, 1024, 2048) and si.spectrum.chunksize == (64, 64, 2048)
    assert si.haadf.chunksize == si.true_haadf.chunksize == (512, 512)
    assert si.true_maps.shape == (4, 1024, 1024) and si.true_maps.chunksize == (4, 512, 512)
    assert si.nbytes == 1024 * 1024 * (2 * 2048 + 4 * 6) + 8 * 2048 + 8 * 4
    counted = si.spectrum[:64, :64].map_blocks(counting, dtype=np.uint16)
    assert calls == []  # building the graph draws nothing
    counted.compute(scheduler="synchronous")
    assert len(calls) == 1  # one chunk asked for, one chunk drawn


def test_same_seed_same_data_other_seed_other_data():
    a = lazy_spectrum_image((96, 80), n_channels=128, chunks=32, specimen_tile=48, seed=3)
    b = lazy_spectrum_image((96, 80), n_channels=128, chunks=32, specimen_tile=48, seed=3)
    c = lazy_spectrum_image((96, 80), n_channels=128, chunks=32, specimen_tile=48, seed=4)
    for name in ("spectrum", "haadf", "true_maps", "true_haadf"):
        x, y, w = compute(getattr(a, name), getattr(b, name), getattr(c, name))
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, w), name


def test_a_chunk_computed_alone_equals_the_same_chunk_of_the_whole():
    si = lazy_spectrum_image((96, 96), n_channels=128, chunks=32, specimen_tile=64, seed=2)
    whole = si.spectrum.compute(scheduler="threads")
    alone = si.spectrum[32:64, 64:96].compute(scheduler="synchronous")
    np.testing.assert_array_equal(alone, whole[32:64, 64:96])


def test_specimen_and_haadf_do_not_depend_on_the_spectrum_chunks():
    a = lazy_spectrum_image((96, 96), n_channels=128, chunks=32, specimen_tile=64, seed=5)
    b = lazy_spectrum_image((96, 96), n_channels=128, chunks=48, specimen_tile=64, seed=5)
    for name in ("haadf", "true_maps", "true_haadf"):
        x, y = compute(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(x, y)
    # the counts do (they are keyed by chunk position) but their statistics do not
    sa, sb = compute(a.spectrum, b.spectrum)
    assert not np.array_equal(sa, sb)
    assert sa.sum(dtype=np.int64) == pytest.approx(sb.sum(dtype=np.int64), rel=0.02)


def test_each_tile_is_the_eager_specimen_of_its_seed_cropped_to_the_image():
    si = lazy_spectrum_image((100, 70), ("Fe", "O"), specimen="particles", n_channels=64,
                             chunks=16, specimen_tile=48, seed=7)
    truth = si.true_maps.compute()
    for row, col in [(0, 0), (1, 1), (2, 0), (2, 1)]:  # tiles of the last row/column are cropped
        maps, _ = specimen_maps((48, 48), 2, "particles", seed=tile_rng(7, 0, row, col))
        part = truth[:, row * 48:(row + 1) * 48, col * 48:(col + 1) * 48]
        np.testing.assert_array_equal(part, maps[:, : part.shape[1], : part.shape[2]])
    # so a larger image holds the smaller one's specimen
    larger = lazy_spectrum_image((150, 150), ("Fe", "O"), specimen="particles", n_channels=64,
                                 chunks=16, specimen_tile=48, seed=7)
    np.testing.assert_array_equal(larger.true_maps[:, :100, :70].compute(), truth)


def test_same_physics_as_the_eager_generator(pair):
    eager, lazy, got = pair
    assert lazy.elements == eager.elements and lazy.z.tolist() == eager.z.tolist()
    np.testing.assert_array_equal(lazy.energy_ev, eager.energy_ev)
    assert lazy.params["features_ev"] == eager.params["features_ev"]
    spectra = {"eager": eager.spectrum, "lazy": got["spectrum"]}
    truths = {"eager": eager.true_maps, "lazy": got["true_maps"]}
    stats = {}
    for name, spectrum in spectra.items():
        totals = spectrum.sum(axis=-1, dtype=np.int64)
        maps, _ = elemental_maps(spectrum, eager.energy_ev, eager.elements)
        band = spectrum[..., 600:700].sum(axis=-1, dtype=np.int64)
        stats[name] = {
            "dose": totals.mean(),
            # net counts per unit of concentration: the X-ray yield of each element
            "yield": maps.sum(axis=(1, 2)) / truths[name].sum(axis=(1, 2)),
            "corr": np.array([corr(m, t) for m, t in zip(maps, truths[name])]),
            "mean_spectrum": spectrum.mean(axis=(0, 1), dtype=np.float64),
            "dispersion": band.var() / band.mean(),
        }
    e, g = stats["eager"], stats["lazy"]
    assert e["dose"] == pytest.approx(10.0, rel=0.02) and g["dose"] == pytest.approx(10.0, rel=0.02)
    np.testing.assert_allclose(g["yield"], e["yield"], rtol=0.08)
    np.testing.assert_allclose(g["corr"], e["corr"], atol=0.03)
    assert corr(g["mean_spectrum"], e["mean_spectrum"]) > 0.995
    assert g["dispersion"] >= 0.9 and e["dispersion"] >= 0.9  # Poisson counts


def test_haadf_matches_the_eager_model(pair):
    eager, _, got = pair
    for haadf, true in ((eager.haadf, eager.true_haadf), (got["haadf"], got["true_haadf"])):
        noise = haadf - true
        assert abs(noise.mean()) < 0.05 * noise.std()
        assert true.mean() / noise.std() == pytest.approx(20.0, rel=0.1)
        # every tile is calibrated here, so the normalisation is the eager one: max 1 + offset
        assert float(true.max()) == pytest.approx(1.02, abs=1e-6)
    z_contrast = np.tensordot(eager.z.astype(float) ** 1.7, got["true_maps"], axes=1)
    assert corr(got["haadf"], z_contrast) > 0.95


def test_eels_lazy():
    si = lazy_spectrum_image((64, 64), ("Ti", "O"), signal_type="EELS", n_channels=512,
                             specimen="particles", chunks=32, specimen_tile=64)
    eager = make_spectrum_image((64, 64), ("Ti", "O"), signal_type="EELS", n_channels=512,
                                specimen="particles")
    np.testing.assert_array_equal(si.energy_ev, eager.energy_ev)
    spectrum, truth = compute(si.spectrum, si.true_maps)
    assert spectrum.sum(axis=-1, dtype=np.int64).mean() == pytest.approx(2.0e4, rel=0.01)
    maps, _ = elemental_maps(spectrum, si.energy_ev, si.elements, signal_type="EELS")
    assert min(corr(m, t) for m, t in zip(maps, truth)) > 0.7


def test_lazy_maps_from_the_lazy_spectrum_equal_the_eager_extraction():
    si = lazy_spectrum_image((64, 96), n_channels=256, chunks=32, specimen_tile=64, seed=8)
    lazy_maps, _ = elemental_maps(si.spectrum, si.energy_ev, si.elements)
    assert isinstance(lazy_maps, da.Array)
    spectrum, maps = compute(si.spectrum, lazy_maps)
    np.testing.assert_array_equal(maps, elemental_maps(spectrum, si.energy_ev, si.elements)[0])


def test_calibration_on_a_sample_of_tiles():
    si = lazy_spectrum_image((256, 256), n_channels=128, chunks=64, specimen_tile=32,
                             calibration_tiles=5)
    assert si.params["calibration_tiles"] == 5  # of 64 tiles
    totals = si.spectrum.sum(axis=-1, dtype=np.int64).compute(scheduler="threads")
    assert totals.mean() == pytest.approx(10.0, rel=0.05)  # exact in expectation only


def test_dose_too_high_for_uint16_is_found_when_computed():
    si = lazy_spectrum_image((16, 16), n_channels=64, chunks=8, specimen_tile=16, dose=1e9)
    with pytest.raises(ValueError, match="too high for 16-bit counts"):
        si.spectrum.compute(scheduler="synchronous")


def test_map_set_counts_are_poisson_around_dose_times_truth():
    ms = lazy_map_set((256, 192), ("Sr", "Ti", "O", "Ca"), specimen_tile=64, dose=10.0,
                      background=1.0, seed=4)
    assert ms.maps.chunksize == (4, 64, 64) and ms.haadf.chunksize == (64, 64)
    maps, truth, haadf, true_haadf = compute(ms.maps, ms.true_maps, ms.haadf, ms.true_haadf)
    assert maps.dtype == np.float32 and (maps == np.round(maps)).all() and maps.min() >= 0
    expected = 10.0 * truth.astype(np.float64) + 1.0
    assert maps.mean() == pytest.approx(expected.mean(), rel=0.01)
    z_scores = (maps - expected) / np.sqrt(expected)
    assert abs(z_scores.mean()) < 0.01 and z_scores.std() == pytest.approx(1.0, abs=0.02)
    noise = haadf - true_haadf
    assert true_haadf.mean() / noise.std() == pytest.approx(20.0, rel=0.1)
    # the same specimen as the spectrum image of the same seed and tiling
    si = lazy_spectrum_image((256, 192), ("Sr", "Ti", "O", "Ca"), n_channels=64,
                             specimen_tile=64, seed=4)
    np.testing.assert_array_equal(si.true_maps.compute(), truth)
    np.testing.assert_array_equal(si.true_haadf.compute(), true_haadf)


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (lazy_spectrum_image, {"elements": ("Fe",)}, ValueError, "2 to 4 elements"),
        (lazy_spectrum_image, {"elements": ("Fe", "Qq")}, UnknownElement, "'Qq'"),
        (lazy_spectrum_image, {"specimen": "crystal"}, ValueError, "specimen must be one of"),
        (lazy_spectrum_image, {"chunks": 4}, ValueError, "chunks must be an integer"),
        (lazy_spectrum_image, {"specimen_tile": 2.5}, ValueError, "specimen_tile must be"),
        (lazy_spectrum_image, {"calibration_tiles": 0}, ValueError, "calibration_tiles"),
        (lazy_spectrum_image, {"signal_type": "XRF"}, ValueError, "'EDX' or 'EELS'"),
        (lazy_spectrum_image, {"shape": (4, 4)}, ValueError, "at least"),
        (lazy_map_set, {"dose": 0.0}, ValueError, "dose must be a positive"),
        (lazy_map_set, {"background": -1.0}, ValueError, "background must be"),
        (lazy_map_set, {"elements": ("Fe", "O", "Ti", "Sr", "Au")}, ValueError, "2 to 4 elements"),
        (lazy_map_set, {"pixel_size_nm": 0.0}, ValueError, "pixel_size_nm"),
    ],
)
def test_bad_parameters(make, kwargs, error, match):
    args = {"shape": (32, 32)} | ({"n_channels": 64} if make is lazy_spectrum_image else {})
    with pytest.raises(error, match=match):
        make(**(args | kwargs))


def test_doctests():
    result = doctest.testmod(lazy_module)
    assert result.attempted > 0 and result.failed == 0
