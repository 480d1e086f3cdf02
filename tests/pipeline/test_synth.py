"""The synthetic spectrum-image generator: ground truth, dose, noise, reproducibility, and that
the maps `elemental_maps` extracts from it follow the truth."""

from __future__ import annotations

import doctest
import json
import time

import numpy as np
import pytest

import emfuse.pipeline.synth as synth_package
import emfuse.pipeline.synth.spectrum_image as synth_module
from emfuse.pipeline.elements import UnknownElement
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import (
    DEFAULT_DOSE,
    SPECIMENS,
    dataset_nbytes,
    make_spectrum_image,
    specimen_maps,
)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def z_contrast(data) -> np.ndarray:
    return np.tensordot(data.z.astype(float) ** 1.7, data.true_maps, axes=1)


@pytest.fixture(scope="module")
def default_128():
    """The default specimen and dose on a 128 x 128 field (a quarter of the default size)."""
    return make_spectrum_image((128, 128))


def test_fields_types_and_ranges(default_128):
    d = default_128
    assert d.elements == ("Sr", "Ti", "O")
    assert d.z.tolist() == [38, 22, 8]
    assert d.haadf.shape == d.true_haadf.shape == (128, 128)
    assert d.haadf.dtype == d.true_haadf.dtype == np.float32
    assert d.spectrum.shape == (128, 128, 1024) and d.spectrum.dtype == np.uint16
    assert d.true_maps.shape == (3, 128, 128) and d.true_maps.dtype == np.float32
    assert d.true_maps.min() >= 0 and d.true_maps.max() <= 1
    assert all(m.max() > 0.8 for m in d.true_maps)  # every element is there, near full columns
    np.testing.assert_allclose(d.energy_ev[:3], [0, 20, 40])
    assert d.energy_ev[-1] == 20460 and d.signal_type == "EDX" and d.specimen == "columns"
    assert d.dose == DEFAULT_DOSE["EDX"] and d.pixel_size_nm == 0.025
    json.dumps(d.params)
    assert d.nbytes == dataset_nbytes((128, 128), 1024, 3)


def test_dose_is_mean_total_counts_per_pixel(default_128):
    totals = default_128.spectrum.sum(axis=-1, dtype=np.int64)
    assert totals.mean() == pytest.approx(default_128.dose, rel=0.02)
    d = make_spectrum_image((64, 64), specimen="particles", dose=500.0, n_channels=512)
    assert d.spectrum.sum(axis=-1, dtype=np.int64).mean() == pytest.approx(500.0, rel=0.01)


def test_counts_are_poisson(default_128):
    # Poisson: the variance over pixels of a background channel far from any line is about its
    # mean where the specimen is uniform enough; check the dispersion over all pixels of a
    # high-energy channel sum, which is ~ a Poisson mixture: variance >= mean, not << mean.
    band = default_128.spectrum[..., 600:700].sum(axis=-1, dtype=np.int64)
    assert band.mean() > 0.1
    assert band.var() >= 0.9 * band.mean()


def test_seeds_are_reproducible():
    a = make_spectrum_image((48, 40), n_channels=256, seed=3)
    b = make_spectrum_image((48, 40), n_channels=256, seed=3)
    c = make_spectrum_image((48, 40), n_channels=256, seed=4)
    for name in ("haadf", "spectrum", "true_maps", "true_haadf", "energy_ev"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.spectrum, c.spectrum)
    assert not np.array_equal(a.true_maps, c.true_maps)


def test_changing_dose_keeps_the_specimen():
    a = make_spectrum_image((48, 48), n_channels=256, dose=5.0, seed=9)
    b = make_spectrum_image((48, 48), n_channels=256, dose=50.0, seed=9)
    np.testing.assert_array_equal(a.true_maps, b.true_maps)
    np.testing.assert_array_equal(a.true_haadf, b.true_haadf)


def test_extracted_maps_follow_the_truth_and_improve_with_dose(default_128):
    maps, _ = elemental_maps(default_128.spectrum, default_128.energy_ev, default_128.elements)
    at_default = [corr(m, t) for m, t in zip(maps, default_128.true_maps)]
    assert min(at_default) > 0.7, at_default
    previous = at_default
    for dose in (40.0, 160.0):
        d = make_spectrum_image((128, 128), dose=dose)
        maps, _ = elemental_maps(d.spectrum, d.energy_ev, d.elements)
        now = [corr(m, t) for m, t in zip(maps, d.true_maps)]
        assert all(n > p for n, p in zip(now, previous)), (dose, now, previous)
        previous = now
    assert min(previous) > 0.97


def test_low_dose_maps_are_noisy(default_128):
    # The default must leave something for fusion to do.
    maps, _ = elemental_maps(default_128.spectrum, default_128.energy_ev, default_128.elements)
    assert max(corr(m, t) for m, t in zip(maps, default_128.true_maps)) < 0.97


def test_haadf_has_high_snr_and_z_contrast(default_128):
    d = default_128
    maps, _ = elemental_maps(d.spectrum, d.energy_ev, d.elements)
    haadf_corr = corr(d.haadf, z_contrast(d))
    assert haadf_corr > 0.95
    assert haadf_corr > max(corr(m, t) for m, t in zip(maps, d.true_maps))
    # The noise is centred on true_haadf with the requested SNR.
    noise = d.haadf - d.true_haadf
    assert abs(noise.mean()) < 0.05 * noise.std()
    assert d.true_haadf.mean() / noise.std() == pytest.approx(20.0, rel=0.1)
    # Sr (Z=38) columns are brighter than Ti-O columns in Z-contrast.
    sr, ti = d.true_maps[0] > 0.8, d.true_maps[1] > 0.8
    assert d.true_haadf[sr].mean() > d.true_haadf[ti].mean()


def test_haadf_snr_parameter():
    d = make_spectrum_image((64, 64), n_channels=128, haadf_snr=5.0, specimen="particles")
    noise = d.haadf - d.true_haadf
    assert d.true_haadf.mean() / noise.std() == pytest.approx(5.0, rel=0.1)


def test_spectrum_has_lines_at_the_tabulated_energies(default_128):
    total = default_128.spectrum.sum(axis=(0, 1), dtype=np.int64)
    e = default_128.energy_ev
    for line_ev in (1806.6, 4510.8, 524.9):  # Sr La, Ti Ka, O Ka
        near = (e > line_ev - 40) & (e < line_ev + 40)
        far = (e > line_ev + 300) & (e < line_ev + 400)
        assert total[near].max() > 5 * total[far].max(), line_ev
    # A secondary line is there too: Ti Kb at 4931.8 eV.
    kb = total[(e > 4900) & (e < 4960)].max()
    assert kb > 2 * total[(e > 5200) & (e < 5300)].max()


@pytest.mark.parametrize("specimen", SPECIMENS)
@pytest.mark.parametrize("elements", [("Fe", "O"), ("Sc", "Dy", "O"), ("Co", "Mn", "O", "Au")])
def test_every_specimen_with_2_to_4_elements(specimen, elements):
    d = make_spectrum_image((48, 56), elements, specimen=specimen, n_channels=512, seed=1)
    n = len(elements)
    assert d.true_maps.shape == (n, 48, 56) and d.spectrum.shape == (48, 56, 512)
    assert d.true_maps.min() >= 0 and d.true_maps.max() <= 1
    assert all(m.max() > 0.2 for m in d.true_maps), [float(m.max()) for m in d.true_maps]
    maps, _ = elemental_maps(d.spectrum, d.energy_ev, d.elements)
    scores = [corr(m, t) for m, t in zip(maps, d.true_maps)]
    assert min(scores) > 0.7, scores  # at the default dose
    assert corr(d.haadf, z_contrast(d)) > 0.9


def test_specimen_maps_layers_sum_to_one():
    maps, support = specimen_maps((64, 64), 3, "layers", seed=5)
    np.testing.assert_allclose(maps.sum(axis=0) + support, 1.0, atol=1e-5)
    # Layers run along x: the profile along y varies far more than along x.
    assert maps.std(axis=1).mean() > 3 * maps.std(axis=2).mean()


def test_eels_spectrum_image():
    d = make_spectrum_image((48, 48), ("Ti", "O"), signal_type="EELS", n_channels=512,
                            specimen="particles")
    assert d.signal_type == "EELS"
    assert d.energy_ev[0] < 456 * 0.8 and d.energy_ev[-1] > 532
    assert np.allclose(np.diff(d.energy_ev), d.energy_ev[1] - d.energy_ev[0])
    maps, info = elemental_maps(d.spectrum, d.energy_ev, d.elements, signal_type="EELS")
    assert [i["line"] for i in info] == ["L2,3", "K"]
    scores = [corr(m, t) for m, t in zip(maps, d.true_maps)]
    assert min(scores) > 0.7, scores


def test_default_size_is_fast():
    start = time.perf_counter()
    d = make_spectrum_image()
    elapsed = time.perf_counter() - start
    assert d.spectrum.shape == (256, 256, 1024)
    assert elapsed < 15.0, elapsed  # ~1.5 s on a 2-core laptop


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"elements": ("Fe",)}, ValueError, "2 to 4 elements"),
        ({"elements": ("Fe", "O", "Ti", "Sr", "Au")}, ValueError, "2 to 4 elements"),
        ({"elements": ("Fe", "Qq")}, UnknownElement, "'Qq'"),
        ({"specimen": "crystal"}, ValueError, "specimen must be one of"),
        ({"dose": 0.0}, ValueError, "dose must be a positive"),
        ({"dose": 1e9}, ValueError, "too high for 16-bit counts"),
        ({"signal_type": "XRF"}, ValueError, "'EDX' or 'EELS'"),
        ({"shape": (4, 4)}, ValueError, "at least"),
        ({"energy_range_ev": (5000, 1000)}, ValueError, "low < high"),
        ({"background_fraction": 1.0}, ValueError, "background_fraction"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    args = {"shape": (16, 16), "n_channels": 64} | kwargs
    with pytest.raises(error, match=match):
        make_spectrum_image(**args)


def test_dataset_nbytes():
    assert dataset_nbytes((256, 256), 1024, 3) == 256 * 256 * (2 * 1024 + 4 * 5) + 8 * 1027


@pytest.mark.parametrize("module", [synth_module, synth_package])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_the_simulators_import_without_dask():
    """The package holds the simulators of the three methods; importing one (restoration
    training, the AVAE's preprocessing) loads no Dask: the chunked generators load at first use."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import emfuse.pipeline.synth.scenes, emfuse.pipeline.synth.restore_specimens, "
            "emfuse.pipeline.synth.distortions, emfuse.pipeline.synth.tem_modes, emfuse.pipeline.avae.preprocess; "
            "before = 'dask' in sys.modules; from emfuse.pipeline.synth import lazy_spectrum_image; "
            "print(before, 'dask' in sys.modules, lazy_spectrum_image.__module__)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.split() == ["False", "True", "emfuse.pipeline.synth.lazy"]
    assert set(synth_package.__all__) <= set(dir(synth_package))
