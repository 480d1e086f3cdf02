"""``--model auto``: the modality and resolution read from the metadata ingest keeps, and the model
they pick (emfuse.pipeline.restore.select), on attribute dicts and on the real instrument files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from emfuse.pipeline.restore import MODEL_FILES
from emfuse.pipeline.restore.select import (
    HIGH_RESOLUTION_MAX_PIXEL_NM,
    SEM_MAX_BEAM_ENERGY_KEV,
    ModalityGuess,
    ModelChoice,
    infer_modality,
    pixel_size_nm,
    resolve_model,
)


def _guess(attrs=None, image=None, pixel=0.02):
    return infer_modality(attrs or {}, image or {}, pixel)


# -- the rules, on attribute dicts ------------------------------------------------------------


@pytest.mark.parametrize(("attrs", "image", "modality", "word"), [
    ({"acquisition_mode": "STEM"}, {}, "stem", "acquisition_mode 'STEM'"),
    ({"acquisition_mode": "TEM"}, {}, "tem", "acquisition_mode 'TEM'"),
    ({}, {"acquisition_mode": "SEM"}, "sem", "acquisition_mode 'SEM'"),
    ({}, {"title": "HAADF"}, "stem", "title 'HAADF'"),
    ({}, {"title": "DF4"}, "stem", "title 'DF4'"),
    ({}, {"detector": "ABF"}, "stem", "detector 'ABF'"),
    ({}, {"title": "BF-S"}, "stem", "title 'BF-S'"),
    ({"detector": "BM-Ceta"}, {}, "tem", "detector 'BM-Ceta'"),
    ({}, {"detector": "K3"}, "tem", "a camera"),
    ({}, {"title": "US1000 CCD"}, "tem", "a camera"),
    ({}, {"detector": "BSE"}, "sem", "an SEM detector"),
    ({}, {"title": "SE2"}, "sem", "an SEM detector"),
    ({"metadata": json.dumps({"Acquisition_instrument": {"SEM": {"beam_energy": 15}}})}, {}, "sem",
     "Acquisition_instrument.SEM"),
    ({"metadata": {"Signal": {"signal_type": "EDS_SEM"}}}, {}, "sem", "'EDS_SEM'"),
    ({"microscope": "Helios 5 UX"}, {}, "sem", "'Helios 5 UX' is an SEM"),
    ({"beam_energy_kev": 5.0}, {}, "sem", "beam energy 5 kV"),
    ({}, {"image_kind": "haadf"}, "stem", "beside a spectrum image"),
])
def test_each_rule_decides_and_says_so(attrs, image, modality, word):
    guess = _guess(attrs, image)
    assert guess.modality == modality and guess.confident
    assert guess.reason.startswith(modality.upper() + ":") and word in guess.reason


def test_names_that_say_nothing_about_the_modality_do_not_decide():
    # EDS detectors and spectrometers, an (S)TEM's name, a 300 kV beam, "TEM" in a HyperSpy tree
    # (a transmission microscope, STEM included): none of them tells STEM from TEM
    attrs = {"detector": "SuperX", "microscope": "Titan", "beam_energy_kev": 300.0, "signal_type": "EDX",
             "metadata": json.dumps({"Acquisition_instrument": {"TEM": {}}, "Signal": {"signal_type": "EDS_TEM"}})}
    guess = _guess(attrs, {"title": "Ch 1", "detector": "GIF Quantum ER"})
    assert (guess.modality, guess.resolution, guess.confident) == ("stem", "high", False)
    assert "nothing in the metadata says STEM, TEM or SEM" in guess.reason


def test_the_acquisition_mode_comes_first_and_a_disagreement_makes_the_guess_unsure():
    guess = _guess({"acquisition_mode": "TEM"}, {"title": "HAADF"})
    assert guess.modality == "tem" and not guess.confident
    assert "(but the image's title 'HAADF' names a scanned transmission (STEM) detector: STEM)" in guess.reason
    # the image's own mode wins over the file's
    assert _guess({"acquisition_mode": "TEM"}, {"acquisition_mode": "STEM"}).modality == "stem"


def test_a_low_beam_energy_is_an_sem_only_without_a_transmission_detector():
    assert _guess({"beam_energy_kev": SEM_MAX_BEAM_ENERGY_KEV}).modality == "sem"
    assert _guess({"beam_energy_kev": 60.0}).modality == "stem" and not _guess({"beam_energy_kev": 60.0}).confident
    low_kv_stem = _guess({"beam_energy_kev": 30.0}, {"title": "HAADF"})
    assert low_kv_stem.modality == "stem" and low_kv_stem.confident and "kV" not in low_kv_stem.reason
    # an image ingest took as the HAADF beside an SEM's spectrum image is still an SEM image
    assert _guess({"beam_energy_kev": 20.0}, {"image_kind": "haadf", "title": "Ch 1"}).modality == "sem"


@pytest.mark.parametrize(("pixel", "resolution", "sentence"), [
    (0.012, "high", "pixel 0.012 nm <= 0.05 nm: high resolution"),
    (HIGH_RESOLUTION_MAX_PIXEL_NM, "high", "<= 0.05 nm"),
    (0.0501, "low", "pixel 0.0501 nm > 0.05 nm: low resolution"),
    (21.5, "low", "pixel 21.5 nm > 0.05 nm"),
])
def test_the_pixel_size_sets_the_resolution(pixel, resolution, sentence):
    guess = _guess({"acquisition_mode": "STEM"}, {}, pixel)
    assert guess.resolution == resolution and sentence in guess.reason and guess.confident


def test_without_a_pixel_size_high_resolution_is_assumed_and_unsure_except_for_sem():
    stem = _guess({"acquisition_mode": "STEM"}, {}, None)
    assert stem.resolution == "high" and not stem.confident and "no pixel size in nm" in stem.reason
    sem = _guess({"acquisition_mode": "SEM"}, {}, None)
    assert sem.confident and "pixel" not in sem.reason  # one SEM model for every resolution


def test_pixel_size_from_the_coordinates():
    def coords(step, units):
        return xr.Dataset(coords={"y": ("y", np.arange(4) * step, {"units": units}),
                                  "x": ("x", np.arange(5) * step / 2, {"units": units})}).coords
    assert pixel_size_nm(coords(0.04, "nm")) == pytest.approx(0.04)  # the coarser of y and x
    assert pixel_size_nm(coords(40.0, "pm")) == pytest.approx(0.04)
    assert pixel_size_nm(coords(1.0, "px")) is None
    assert pixel_size_nm(xr.Dataset(coords={"y": ("y", [0.0], {"units": "nm"})}).coords) is None


# -- from --model to a model -------------------------------------------------------------------


def test_auto_picks_the_own_model_of_the_modality_and_falls_back_to_default():
    everything = set(MODEL_FILES)
    for modality, resolution, name in [("stem", "high", "stem-high"), ("stem", "low", "stem-low"),
                                       ("tem", "high", "tem-high"), ("tem", "low", "tem-low"),
                                       ("sem", "high", "sem"), ("sem", "low", "sem")]:
        guess = ModalityGuess(modality, resolution, "because", True)
        choice = resolve_model("auto", guess, available=everything)
        assert (choice.model, choice.wanted, choice.modality, choice.resolution) == (name, name, modality, resolution)
    missing = resolve_model("auto", ModalityGuess("tem", "low", "TEM: ...", False), available={"default"})
    assert missing.model == "default" and missing.wanted == "tem-low" and not missing.confident
    assert "no model of its own for tem-low" in missing.reason
    assert ModelChoice.from_record(json.loads(json.dumps(missing.record()))) == missing


def test_other_names_are_kept_as_they_are():
    assert resolve_model(None).model == resolve_model("default").model == "default"
    for name in ("r_em:sfr_hrtem", "/models/mine.safetensors", "tem-low"):
        choice = resolve_model(name, ModalityGuess("sem", "low", "x", True))
        assert choice.model == choice.asked == name and choice.modality is None
    with pytest.raises(ValueError, match="needs a guess"):
        resolve_model("auto")


def test_what_this_version_has_is_what_auto_can_pick():
    choice = resolve_model("auto", _guess({"acquisition_mode": "STEM"}, {}, 0.01))
    assert choice.model == ("stem-high" if MODEL_FILES["stem-high"].is_file() else "default")


# -- the real instrument files -------------------------------------------------------------------


def _guess_file(path: Path, out: Path) -> ModalityGuess:
    from emfuse.flows.jobs.restore import _input_variable
    from emfuse.stores.ingest import ingest
    from emfuse.stores.zarrio import open_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(path, out)
    ds = open_dataset(out)
    variable = _input_variable(ds, out)
    return infer_modality(ds.attrs, ds[variable].attrs, pixel_size_nm(ds.coords))


@pytest.mark.parametrize(("name", "modality", "resolution", "word"), [
    ("test_TEM.bcf", "stem", "low", "title 'HAADF'"),  # Bruker Esprit: HAADF beside the EDX map
    ("128x128_TEM_acquire-sum1.emi", "tem", "low", "acquisition_mode 'TEM'"),  # TIA, Ceta camera
    ("fei_example_tem_stack.emd", "tem", "high", "title 'Ceta'"),  # Velox Ceta movie, 0.008 nm
    ("bcf_v2_50x50px.bcf", "sem", "low", "Acquisition_instrument.SEM"),  # Bruker on an SEM, 20 kV
    pytest.param("Test SI 16x16 215 kx.emd", "stem", "low", "title 'HAADF'", marks=pytest.mark.slow),
])
def test_real_files(formats, tmp_path, name, modality, resolution, word):
    guess = _guess_file(formats / name, tmp_path / "in.zarr")
    assert (guess.modality, guess.resolution, guess.confident) == (modality, resolution, True), guess.reason
    assert word in guess.reason


def test_a_real_file_without_metadata_is_an_unsure_stem(formats, tmp_path):
    guess = _guess_file(formats / "test-1.dm3", tmp_path / "in.zarr")
    assert (guess.modality, guess.resolution, guess.confident) == ("stem", "high", False)
