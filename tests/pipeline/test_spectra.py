"""Spectrum image -> elemental maps: window integrals, background models, dask laziness and
the validation errors."""

from __future__ import annotations

import doctest
import json
import math

import dask
import dask.array as da
import numpy as np
import pytest
from scipy.special import erf

import emfuse.pipeline.spectra as spectra_module
from emfuse.pipeline.elements import UnknownElement
from emfuse.pipeline.spectra import (
    SpectrumError,
    WindowError,
    channel_edges_ev,
    detector_fwhm_ev,
    elemental_maps,
    fit_power_law,
    map_windows,
    window_weights,
)

ENERGY_EV = np.arange(1024) * 20.0  # a typical EDX axis: 0-20.48 keV, 20 eV channels


def gaussian_counts(energy_ev, total, centre_ev, fwhm_ev):
    """`total` counts in a gaussian line, integrated over each channel."""
    edges = channel_edges_ev(energy_ev)
    scale = fwhm_ev / (2 * math.sqrt(2 * math.log(2))) * math.sqrt(2)
    return total * 0.5 * np.diff(erf((edges - centre_ev) / scale))


def fraction_inside(window, centre_ev, fwhm_ev):
    scale = fwhm_ev / (2 * math.sqrt(2 * math.log(2))) * math.sqrt(2)
    return 0.5 * (erf((window[1] - centre_ev) / scale) - erf((window[0] - centre_ev) / scale))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def test_detector_fwhm_follows_fano_model():
    assert detector_fwhm_ev(5898.75) == pytest.approx(130.0)
    assert detector_fwhm_ev(5898.75, fwhm_mnka_ev=125.0) == pytest.approx(125.0)
    # FWHM^2 is linear in energy.
    e = np.array([500.0, 3000.0, 8000.0])
    f2 = detector_fwhm_ev(e) ** 2
    assert (f2[2] - f2[1]) / 5000 == pytest.approx((f2[1] - f2[0]) / 2500)
    assert 55 < detector_fwhm_ev(525.0) < 75


def test_window_weights_are_fractional():
    edges = channel_edges_ev(ENERGY_EV)
    w = window_weights(edges, (95.0, 145.0))
    # Channels centred at 100 (90-110: half in), 120 (in), 140 (130-150: 3/4 in).
    assert w[5] == pytest.approx(0.75) and w[6] == 1 and w[7] == pytest.approx(0.75)
    assert (w @ np.diff(edges)) == pytest.approx(50.0)


# --------------------------------------------------------------------------------------------
# EDX
# --------------------------------------------------------------------------------------------
def test_edx_net_counts_of_a_known_peak():
    line_ev = 6403.8  # Fe Ka
    fwhm = float(detector_fwhm_ev(line_ev))
    peak = gaussian_counts(ENERGY_EV, 5000.0, line_ev, fwhm)
    continuum = 40.0 + 0.002 * ENERGY_EV  # sloped, counts per channel
    spectrum = np.broadcast_to(peak + continuum, (3, 4, ENERGY_EV.size))
    maps, info = elemental_maps(spectrum, ENERGY_EV, ["Fe"])
    window = info[0]["signal_ev"]
    assert window[1] - window[0] == pytest.approx(1.2 * fwhm)
    expected = 5000.0 * fraction_inside(window, line_ev, fwhm)
    assert 0.8 < expected / 5000 < 0.9
    np.testing.assert_allclose(maps[0], expected, rtol=0.01)
    # A user window wide enough to hold the whole peak gives all 5000 counts back.
    maps, info = elemental_maps(spectrum, ENERGY_EV, ["Fe"], windows={"Fe": (6000, 6800)})
    assert info[0]["source"] == "user" and info[0]["signal_ev"] == [6000.0, 6800.0]
    np.testing.assert_allclose(maps[0], 5000.0, rtol=0.01)


def test_edx_net_counts_with_poisson_noise_are_unbiased():
    rng = np.random.default_rng(1)
    lines = {"Ti": 4510.8, "Sr": 1806.6, "O": 524.9}
    edges = channel_edges_ev(ENERGY_EV)
    # A linear continuum: the side windows then see exactly the background under the peak, and
    # any bias would come from the estimator itself.
    expected_spectrum = 2.0 + 0.001 * ENERGY_EV
    peaks = {}
    for symbol, line_ev in lines.items():
        peaks[symbol] = gaussian_counts(ENERGY_EV, 400.0, line_ev, float(detector_fwhm_ev(line_ev)))
        expected_spectrum = expected_spectrum + peaks[symbol]
    counts = rng.poisson(expected_spectrum, (64, 64, ENERGY_EV.size)).astype(np.uint16)
    maps, info = elemental_maps(counts, ENERGY_EV, list(lines), clip_negative=False)
    for k, (symbol, line_ev) in enumerate(lines.items()):
        # The peak's counts in the window's channels (a window edge takes its share of a
        # channel): what the map measures once the background is gone.
        truth = window_weights(edges, info[k]["signal_ev"]) @ peaks[symbol]
        assert maps[k].mean() == pytest.approx(truth, rel=0.01), symbol
        # ... and within a few % of the continuous peak's share of the window (O Ka spans
        # only ~3.4 channels per FWHM, so the channel edges cost ~2 % there).
        fwhm = float(detector_fwhm_ev(line_ev))
        share = 400.0 * fraction_inside(info[k]["signal_ev"], line_ev, fwhm)
        assert maps[k].mean() == pytest.approx(share, rel=0.04), symbol


@pytest.mark.parametrize("elements", [["Fe", "Ti", "O"], ["Sr", "Dy", "Au"], ["B", "Cu"]])
def test_linear_background_removed_exactly(elements):
    continuum = 55.0 + 0.0031 * ENERGY_EV
    spectrum = np.broadcast_to(continuum, (2, 3, ENERGY_EV.size))
    maps, info = elemental_maps(spectrum, ENERGY_EV, elements, clip_negative=False)
    assert all(i["background_model"] == "linear" for i in info)
    assert np.abs(maps).max() < 1e-6


def test_linear_background_exact_on_a_nonuniform_axis():
    # The kernel works with each channel's own width (counts = width * density at its centre).
    energy = np.linspace(20.0, 120.0, 700) ** 2  # 400 eV .. 14.4 keV, widening channels
    width = np.diff(channel_edges_ev(energy))
    spectrum = np.broadcast_to(width * (3.0 + 0.01 * energy), (2, 2, energy.size))
    maps, _ = elemental_maps(spectrum, energy, ["Fe", "Cu", "Si"], clip_negative=False)
    assert np.abs(maps).max() < 1e-6


def test_one_sided_background_near_the_end_of_the_axis():
    energy = np.arange(420.0, 6000.0, 20.0)  # no room left of O Ka
    spectrum = np.full((2, 2, energy.size), 7.0)
    maps, info = elemental_maps(spectrum, energy, ["O"], clip_negative=False)
    assert info[0]["background_model"] == "constant"
    assert len(info[0]["background_ev"]) == 1
    assert np.abs(maps).max() < 1e-9


def test_user_background_windows_and_no_background():
    spectrum = np.broadcast_to(10.0 + 0.01 * ENERGY_EV, (1, 2, ENERGY_EV.size))
    windows = {"Fe": {"signal": (6300, 6500), "background": [(5800, 6000), (6800, 7000)]},
               "Cu": {"signal": (7950, 8150), "background": []}}
    maps, info = elemental_maps(spectrum, ENERGY_EV, ["Fe", "Cu"], windows=windows,
                                clip_negative=False)
    assert info[0]["background_ev"] == [[5800.0, 6000.0], [6800.0, 7000.0]]
    assert abs(maps[0]).max() < 1e-9
    assert info[1]["background_model"] == "none"
    # No background: the plain integral, 200 eV * density at 8050 eV per eV (channel = 20 eV).
    np.testing.assert_allclose(maps[1], 200 / 20 * (10 + 0.01 * 8050), rtol=1e-9)


def test_line_override_and_info_is_json():
    spectrum = np.ones((2, 2, ENERGY_EV.size))
    maps, info = elemental_maps(spectrum, ENERGY_EV, ["au", "O"], lines={"Au": "Ma"})
    text = json.dumps(info)
    back = json.loads(text)
    assert back[0]["element"] == "Au" and back[0]["z"] == 79 and back[0]["line"] == "Ma"
    assert back[0]["line_ev"] == pytest.approx(2122.9)
    assert back[1]["line"] == "Ka" and back[1]["source"] == "table"
    assert maps.dtype == np.float32 and maps.shape == (2, 2, 2)


def test_clip_negative():
    rng = np.random.default_rng(0)
    spectrum = rng.poisson(5.0, (16, 16, ENERGY_EV.size))
    clipped, _ = elemental_maps(spectrum, ENERGY_EV, ["Fe"])
    raw, _ = elemental_maps(spectrum, ENERGY_EV, ["Fe"], clip_negative=False)
    assert raw.min() < 0 and clipped.min() == 0
    np.testing.assert_array_equal(clipped, np.maximum(raw, 0))


def test_map_windows_matches_elemental_maps_info():
    wins = map_windows(ENERGY_EV, ["Sr", "Ti", "O"])
    _, info = elemental_maps(np.ones((1, 1, ENERGY_EV.size)), ENERGY_EV, ["Sr", "Ti", "O"])
    assert [w.to_dict() for w in wins] == info


# --------------------------------------------------------------------------------------------
# EELS
# --------------------------------------------------------------------------------------------
EELS_EV = np.arange(300.0, 1300.0, 0.5)


@pytest.mark.parametrize("a, r", [(1e10, 3.0), (3.7e8, 2.4), (5e12, 4.1)])
def test_power_law_fit_recovers_a_and_r(a, r):
    width = np.diff(channel_edges_ev(EELS_EV))
    spectrum = np.stack([a * EELS_EV**-r * width, 2 * a * EELS_EV**-r * width])
    fit_a, fit_r = fit_power_law(spectrum, EELS_EV, (400.0, 520.0))
    np.testing.assert_allclose(fit_r, r, rtol=1e-9)
    np.testing.assert_allclose(fit_a, [a, 2 * a], rtol=1e-7)


def test_power_law_fit_with_poisson_noise():
    rng = np.random.default_rng(3)
    width = np.diff(channel_edges_ev(EELS_EV))
    counts = rng.poisson(2e10 * EELS_EV**-3.0 * width, (200, EELS_EV.size))
    _, r = fit_power_law(counts, EELS_EV, (400.0, 520.0))
    assert np.median(r) == pytest.approx(3.0, abs=0.03)


def test_eels_net_edge_counts_on_noise_free_data():
    width = np.diff(channel_edges_ev(EELS_EV))
    background = 4e10 * EELS_EV**-3.2 * width
    onset = 532.0  # O K
    edge = np.where(EELS_EV >= onset, 800.0 * (EELS_EV / onset) ** -2.5, 0.0) * width
    amounts = np.array([[0.0, 0.5], [1.0, 2.0]])
    spectrum = background[None, None, :] + amounts[..., None] * edge[None, None, :]
    maps, info = elemental_maps(spectrum, EELS_EV, ["O"], signal_type="EELS",
                                clip_negative=False)
    assert info[0]["line"] == "K" and info[0]["background_model"] == "power-law"
    lo, hi = info[0]["signal_ev"]
    _, fit_hi = info[0]["background_ev"][0]
    assert lo == onset and fit_hi < onset and hi - lo == pytest.approx(53.2)
    w = window_weights(channel_edges_ev(EELS_EV), (lo, hi))
    np.testing.assert_allclose(maps[0], amounts * (edge @ w), rtol=1e-6, atol=1e-6)


def test_an_eels_edge_near_the_spectrums_end_is_integrated_up_to_the_end():
    # O K at 532 eV wants 532-585.2 eV; a spectrum ending at about 570 eV still records 38 eV of it
    energy = np.arange(300.0, 570.0, 0.5)
    top = float(channel_edges_ev(energy)[-1])
    (win,) = map_windows(energy, ["O"], signal_type="EELS")
    assert win.source == spectra_module.SHORTENED and win.line == "K"
    assert win.signal_ev == (532.0, top) and win.background_ev[0][1] < 532.0
    # less than 30 eV of the edge recorded: refused, with the ways to go on
    with pytest.raises(WindowError, match=r"O window 532-585.2 eV \(the K line at 532 eV\) lies outside"):
        map_windows(np.arange(300.0, 555.0, 0.5), ["O"], signal_type="EELS")
    # a window the user gave is never changed
    with pytest.raises(WindowError, match="the user window"):
        map_windows(energy, ["O"], signal_type="EELS", windows={"O": (532, 585)})


def test_eels_user_window():
    width = np.diff(channel_edges_ev(EELS_EV))
    spectrum = np.broadcast_to(1e11 * EELS_EV**-3.5 * width, (2, 2, EELS_EV.size))
    maps, info = elemental_maps(spectrum, EELS_EV, ["Mn"], signal_type="EELS",
                                windows={"Mn": (640, 680)}, clip_negative=False)
    assert info[0]["signal_ev"] == [640.0, 680.0]
    assert info[0]["background_ev"][0][1] < 640
    assert np.abs(maps).max() < 1e-6 * spectrum.max()


# --------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------
def _counting_dask(array, chunks, counter):
    """A dask array that counts how often its blocks are computed."""

    def touch(block):
        counter.append(1)
        return block

    return da.from_array(array, chunks=chunks).map_blocks(
        touch, dtype=array.dtype, meta=np.empty((0, 0, 0), dtype=array.dtype)
    )


@pytest.mark.parametrize("signal_type", ["EDX", "EELS"])
def test_dask_matches_numpy_and_stays_lazy(signal_type):
    rng = np.random.default_rng(7)
    energy = ENERGY_EV if signal_type == "EDX" else EELS_EV
    elements = ["Fe", "Ti", "O"] if signal_type == "EDX" else ["O", "Mn", "Fe"]
    base = 3.0 + 2e4 / np.maximum(energy, 100.0) if signal_type == "EDX" else 4e10 * energy**-3.0
    spectrum = rng.poisson(base * rng.uniform(0.5, 1.5, (30, 22, 1)))
    counter: list[int] = []
    lazy = _counting_dask(spectrum, (8, 11, 256), counter)  # energy in several chunks
    maps, info = elemental_maps(lazy, energy, elements, signal_type=signal_type)
    assert isinstance(maps, da.Array)
    assert counter == []  # nothing computed yet
    assert maps.shape == (3, 30, 22) and maps.dtype == np.float32
    assert maps.chunks[1:] == ((8, 8, 8, 6), (11, 11))
    with dask.config.set(scheduler="sync"):
        result = maps.compute()
    assert counter
    expected, expected_info = elemental_maps(spectrum, energy, elements, signal_type=signal_type)
    assert info == expected_info
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "bad, match",
    [(np.nan, "NaN or Inf .* pixel y=13, x=17"), (-2.0, "negative counts .* pixel y=13, x=17")],
)
def test_dask_value_errors_are_raised_on_compute(bad, match):
    spectrum = np.ones((20, 20, ENERGY_EV.size))
    spectrum[13, 17, 500] = bad
    maps, _ = elemental_maps(da.from_array(spectrum, chunks=(10, 10, -1)), ENERGY_EV, ["Fe"])
    with pytest.raises(SpectrumError, match=match), dask.config.set(scheduler="sync"):
        maps.compute()


def test_xarray_input():
    xr = pytest.importorskip("xarray")
    spectrum = xr.DataArray(np.ones((2, 3, ENERGY_EV.size)), dims=("y", "x", "energy"))
    maps, _ = elemental_maps(spectrum, ENERGY_EV, ["Fe"])
    assert maps.shape == (1, 2, 3)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
GOOD = np.ones((2, 3, ENERGY_EV.size))


@pytest.mark.parametrize(
    "spectrum, energy, elements, kwargs, error, match",
    [
        (np.ones((5, ENERGY_EV.size)), ENERGY_EV, ["Fe"], {}, SpectrumError,
         r"3D .*spectrum\[None\]"),
        (np.ones(ENERGY_EV.size), ENERGY_EV, ["Fe"], {}, SpectrumError, r"3D .*None, None"),
        (np.ones((0, 3, ENERGY_EV.size)), ENERGY_EV, ["Fe"], {}, SpectrumError, "empty"),
        (GOOD, np.array([]), ["Fe"], {}, SpectrumError, "empty"),
        (GOOD, ENERGY_EV[:100], ["Fe"], {}, SpectrumError, "100 values .* 1024 channels"),
        (np.ones((ENERGY_EV.size, 2, 3)), ENERGY_EV, ["Fe"], {}, SpectrumError, "moveaxis"),
        (GOOD, ENERGY_EV[::-1], ["Fe"], {}, SpectrumError, "reverse the energy axis"),
        (GOOD, np.r_[ENERGY_EV[:500], ENERGY_EV[499:1023]], ["Fe"], {}, SpectrumError,
         "strictly increasing"),
        (GOOD, ENERGY_EV, ["Fe", "Xx"], {}, UnknownElement, "'Xx'"),
        (GOOD, ENERGY_EV, ["Fe"], {"windows": {"Fe": (20000, 21000)}}, WindowError,
         r"Fe window 20000-21000 eV .* outside .* energy range .*: pass a window inside the range "
         r"\(--window Fe=LOW:HIGH in eV; in a catalog's params: windows: \{Fe: \[LOW, HIGH\]\}; "
         r"windows=\{'Fe': \(low, high\)\} in Python\)"),
        (GOOD, ENERGY_EV, ["Fe"], {"windows": {"Fe": (6500, 6300)}}, WindowError, "low < high"),
        (GOOD, ENERGY_EV, ["Fe"], {"windows": {"Mn": (5800, 6000)}}, WindowError,
         r"\['Mn'\], which is not in elements"),
        (GOOD[..., 150:250], ENERGY_EV[150:250], ["Sr", "Fe"], {}, WindowError,
         "Sr has no usable EDX line inside 2990-4990 eV"),
        (GOOD, ENERGY_EV, ["Fe"], {"signal_type": "XRF"}, SpectrumError, "'EDX' or 'EELS'"),
        (GOOD[..., :400], EELS_EV[:400], ["Fe"], {"signal_type": "EELS"}, WindowError,
         "Fe has no EELS edge"),
        (GOOD, EELS_EV[:1024] + 225, ["O"], {"signal_type": "EELS"}, WindowError,
         "pre-edge fit window of O"),
    ],
)
def test_bad_input_raises_named_error(spectrum, energy, elements, kwargs, error, match):
    with pytest.raises(error, match=match):
        elemental_maps(spectrum, energy, elements, **kwargs)


def test_window_error_is_a_spectrum_error_and_value_error():
    assert issubclass(WindowError, SpectrumError) and issubclass(SpectrumError, ValueError)


@pytest.mark.parametrize(
    "bad, match", [(np.nan, "NaN or Inf .*y=1, x=2"), (np.inf, "NaN or Inf"),
                   (-1.0, r"negative counts \(min -1, first at pixel y=1, x=2")],
)
def test_numpy_value_errors(bad, match):
    spectrum = GOOD.copy()
    spectrum[1, 2, 7] = bad
    with pytest.raises(SpectrumError, match=match):
        elemental_maps(spectrum, ENERGY_EV, ["Fe"])


def test_signed_integer_negative_counts():
    spectrum = np.ones((2, 3, ENERGY_EV.size), dtype=np.int32)
    spectrum[0, 0, 0] = -5
    with pytest.raises(SpectrumError, match="negative"):
        elemental_maps(spectrum, ENERGY_EV, ["Fe"])


def test_doctests():
    result = doctest.testmod(spectra_module)
    assert result.attempted > 0 and result.failed == 0
