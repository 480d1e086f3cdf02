"""Where the fused maps come from (``--maps-from spectrum|file``), the windows recorded as used,
``--signal`` and ``--elements`` through the flows, on real Velox files that hold both element maps
and a spectrum image."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from emfuse.flows.batch.catalog import load_catalog
from emfuse.flows.cli import build_parser, main
from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs.inputs import resolve_store
from emfuse.pipeline import spectra
from emfuse.pipeline.fusion import FusionInputError
from emfuse.stores.formats import IngestWarning
from emfuse.stores.ingest import ingest
from emfuse.stores.warn import read_warnings
from emfuse.stores.zarrio import open_dataset, read_attrs

DATA = Path(os.environ.get("EMFUSE_SHARED_DATA")
            or Path(__file__).resolve().parents[2].parent / "shared" / "data")
VELOX = "Test SI 16x16 215 kx.emd"
PRUNED = "Test SI 16x16 ReducedData 215 kx.emd"
PARAMS = {"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 5}


def _file(name: str) -> Path:
    path = DATA / "formats" / name
    if not path.is_file():
        pytest.skip(f"real instrument file not found: {path} (clone ../shared beside the checkout)")
    return path


def _ingest(name: str, out: Path, **options) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        return ingest(_file(name), out, **options)


@pytest.fixture(scope="module")
def velox(tmp_path_factory) -> Path:
    return _ingest(VELOX, tmp_path_factory.mktemp("velox") / "velox.zarr")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    return _ingest(PRUNED, tmp_path_factory.mktemp("pruned") / "pruned.zarr")


def _plan(store, out, **kw):
    return fusion_job.plan(store, out, params=PARAMS, tile=16, halo=4, **kw)


def test_default_integrates_the_spectrum_and_records_the_windows(velox, tmp_path):
    job, _ = _plan(velox, tmp_path / "o.zarr", elements=["Cu", "O"])
    params = read_attrs(job.out)["params"]
    assert params["maps_from"] == "spectrum" and job.maps_from == "spectrum"
    ds = open_dataset(velox)
    expected = spectra.map_windows(ds.energy.values, ["Cu", "O"], signal_type="EDX")
    for w in expected:
        used = params["windows_used"][w.element]
        assert used["signal_ev"] == pytest.approx(list(w.signal_ev))
        assert used["background_ev"] == [list(b) for b in w.background_ev]
        assert used["background_model"] == w.background_model and used["source"] == "table"
    fusion_job.write_inputs(job)
    written = open_dataset(job.out, require_complete=False).maps.values
    integrated = spectra.elemental_maps(ds.spectrum.values, ds.energy.values, ["Cu", "O"], signal_type="EDX")[0]
    np.testing.assert_allclose(written, integrated, rtol=1e-6)
    assert not np.allclose(written, ds.maps.sel(element=["Cu", "O"]).values)  # not Velox's own maps


def test_window_given_is_the_window_used(velox, tmp_path):
    job, _ = _plan(velox, tmp_path / "o.zarr", elements=["Cu", "O"], windows={"Cu": (7900.0, 8200.0)})
    used = read_attrs(job.out)["params"]["windows_used"]
    assert used["Cu"]["signal_ev"] == [7900.0, 8200.0] and used["Cu"]["source"] == "user"
    assert used["O"]["source"] == "table"


def test_maps_from_file_uses_the_stored_maps(velox, tmp_path):
    job, _ = _plan(velox, tmp_path / "o.zarr", elements=["Cu", "O"], maps_from="file")
    params = read_attrs(job.out)["params"]
    assert params["maps_from"] == "file" and params["windows_used"] is None
    fusion_job.write_inputs(job)
    written = open_dataset(job.out, require_complete=False).maps.values
    np.testing.assert_array_equal(written, open_dataset(velox).maps.sel(element=["Cu", "O"]).values)


def test_windows_with_stored_maps_are_refused(velox, pruned, tmp_path):
    with pytest.raises(FusionInputError, match=r"--window Cu applies to maps integrated from the spectrum "
                                               r"image, but the stored maps were asked for \(--maps-from file\)"):
        _plan(velox, tmp_path / "o.zarr", elements=["Cu"], maps_from="file", windows={"Cu": (7900, 8200)})
    with pytest.raises(FusionInputError, match=r"the dataset has no spectrum image and its stored maps are used"):
        _plan(pruned, tmp_path / "p.zarr", elements=["Cu"], windows={"Cu": (7900, 8200)})


def test_without_a_spectrum_image_the_file_maps_are_used(pruned, tmp_path):
    job, _ = _plan(pruned, tmp_path / "o.zarr")
    assert job.maps_from == "file" and job.elements == ("C", "Ca", "O", "Cu")
    with pytest.raises(FusionInputError, match=r"--maps-from spectrum\), but the dataset has no spectrum image"):
        _plan(pruned, tmp_path / "p.zarr", maps_from="spectrum")
    with pytest.raises(FusionInputError, match=r"--maps-from file\), but the dataset has no maps of \['Fe'\]"):
        _plan(pruned, tmp_path / "q.zarr", elements=["Fe"], maps_from="file")


def test_elements_asked_at_ingest_are_the_default(tmp_path):
    store = _ingest(VELOX, tmp_path / "v.zarr", elements=["Cu", "Fe"])
    job, _ = _plan(store, tmp_path / "o.zarr")
    assert job.elements == ("Cu", "Fe") and job.maps_from == "spectrum"
    with pytest.raises(FusionInputError, match=r"no maps of \['Fe'\].*use --maps-from spectrum"):
        _plan(store, tmp_path / "p.zarr", maps_from="file")


def test_resolve_store_reingests_when_the_options_differ(tmp_path):
    velox = _file(VELOX)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        first = resolve_store(velox, tmp_path)
        stamp = (first / "zarr.json").stat().st_mtime_ns
        assert resolve_store(velox, tmp_path) == first and (first / "zarr.json").stat().st_mtime_ns == stamp
        again = resolve_store(velox, tmp_path, elements=["Cu"])
    assert again == first and read_attrs(again)["ingest_options"]["elements"] == ["Cu"]
    assert open_dataset(again).element.values.tolist() == ["Cu"]


def test_signal_reaches_the_ingest_of_a_raw_file(tmp_path):
    path = _file("example_velox_EELS_EDS.emd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        store = resolve_store(path, tmp_path, signal="15")
    ds = open_dataset(store)
    assert ds.attrs["signal_type"] == "EELS" and float(ds.energy[0]) == pytest.approx(480.0)
    assert read_attrs(store)["ingest_options"]["signal"] == "15"
    assert resolve_store(store, tmp_path, signal=15) == store  # the store holds that one
    with pytest.raises(ValueError, match=r"ingested with --signal 15; --signal 17 chooses among a raw file"):
        resolve_store(store, tmp_path, signal=17)


def test_command_line_and_catalog_take_maps_from_and_signal(tmp_path, capsys):
    args = build_parser().parse_args(["fuse", "in.zarr", "--out", "o.zarr", "--maps-from", "file", "--signal", "17"])
    assert args.maps_from == "file" and args.signal == "17"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fuse", "in.zarr", "--out", "o.zarr", "--maps-from", "maps"])
    assert "invalid choice: 'maps'" in capsys.readouterr().err
    catalog = tmp_path / "c.yaml"
    catalog.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "datasets": [
        {"path": str(_file(VELOX)), "jobs": ["fuse"], "params": {"maps_from": "file"}}]}))
    entry = load_catalog(catalog).datasets[0]
    assert entry.error is None and entry.options["fuse"]["maps_from"] == "file"


def test_ingest_command_list_and_signal(tmp_path, capsys):
    path = _file("example_velox_EELS_EDS.emd")
    assert main(["ingest", str(path), "--list"]) == 0
    assert "[15] spectrum image 'EELS' (16, 20, 2048) EELS, 480 to 826.35 eV" in capsys.readouterr().out
    assert main(["ingest", str(path), "--out", str(tmp_path / "a.zarr")]) == 2
    err = capsys.readouterr().err
    assert "it holds 4 spectrum images" in err and "Choose one with --signal INDEX" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        assert main(["ingest", str(path), "--out", str(tmp_path / "b.zarr"), "--signal", "17"]) == 0
    assert open_dataset(tmp_path / "b.zarr").spectrum.shape == (128, 128, 4096)
    assert main(["ingest", str(path)]) == 2
    assert "needs --out STORE.zarr (or --list" in capsys.readouterr().err


def test_auto_lambdas_keep_the_output_provenance(velox, tmp_path):
    """Writing the lambda score grid used to replace the output's attributes (source_path,
    emfuse_version, ...), and with them the way back to the instrument metadata."""
    job, _ = fusion_job.plan(velox, tmp_path / "o.zarr", elements=["Cu", "O"], tile=16, halo=4,
                             params={"lambda_chem": "auto", "lambda_tv": "auto", "n_iter": 5})
    before = read_attrs(job.out)
    fusion_job.write_inputs(job)
    fusion_job.choose_lambdas(job, fusion_job.normalise(job))
    after = read_attrs(job.out)
    assert "lambda_score" in open_dataset(job.out, require_complete=False)
    for key in ("source_path", "source_sha256", "emfuse_version", "created"):
        assert after[key] == before[key]
    assert after["params"]["lambda_chem"] != "auto" and "lambda_choice" in after


def test_no_elements_names_those_the_file_lists(tmp_path):
    store = _ingest("test_TEM.bcf", tmp_path / "tem.zarr")
    with pytest.raises(FusionInputError, match=r"no elements were named; pass the elements to map, e\.g\. "
                                               r"--elements Fe O \(in a catalog: elements: \[Fe, O\]\)\. The file's "
                                               r"metadata lists Cu O Pd Ti\."):
        _plan(store, tmp_path / "o.zarr")


def test_zero_maps_from_a_spectrum_with_counts_elsewhere_say_where_the_counts_are(tmp_path):
    """The Velox example's EDS spectrum image holds 11093 counts, none in the O, Fe and Co windows
    (the file was pruned: nearly all sit at the zero-energy peak). The error says so instead of
    calling the dataset empty, and points at the elements, the calibration and the windows."""
    store = _ingest("example_velox_EELS_EDS.emd", tmp_path / "eds.zarr", signal=17)
    job, _ = _plan(store, tmp_path / "o.zarr", elements=["O", "Fe", "Co"])
    fusion_job.write_inputs(job)
    with pytest.raises(FusionInputError, match=r"is zero, but its spectrum image holds 11093 counts outside "
                                               r"these elements' windows \(the most at [-\d.]+ eV\)\. Check the "
                                               r"elements, the energy axis's calibration"):
        fusion_job.normalise(job)


def _choose(store, out, elements):
    job, _ = fusion_job.plan(store, out, elements=elements, tile=64, halo=8,
                             params={"lambda_chem": "auto", "lambda_tv": "auto", "n_iter": 5})
    fusion_job.write_inputs(job)
    fusion_job.choose_lambdas(job, fusion_job.normalise(job))
    return [w for w in read_warnings(job.out) if w["code"] == "maps-mostly-noise"]


def test_maps_that_are_nearly_pure_noise_are_flagged(velox, tmp_path):
    # the 16 x 16 Velox EDS map: a few counts per pixel, so the held-out counts tell the weights
    # tried apart by under 1 % and the fused maps follow the HAADF
    (warning,) = _choose(velox, tmp_path / "velox.zarr", ["Ca", "O", "Cu"])
    assert warning["explained"] < 0.05 and warning["spread"] < 0.02
    assert "nearly pure noise" in warning["message"] and "come mostly from the HAADF" in warning["message"]


def test_maps_with_signal_of_their_own_are_not_flagged(tmp_path):
    from emfuse.flows.tools.synth import write_synthetic

    store = write_synthetic("spectrum-image", tmp_path / "si.zarr", shape=(48, 48), elements=["Sr", "Ti", "O"],
                            dose=20, seed=3)
    assert _choose(store, tmp_path / "si.fuse.zarr", ["Sr", "Ti", "O"]) == []


def test_elements_the_instrument_file_does_not_list_are_flagged(tmp_path):
    # test_TEM.bcf lists Cu O Pd Ti (Sample.elements); Pt is one letter from Pd
    store = _ingest("test_TEM.bcf", tmp_path / "tem.zarr")

    def warned(elements, out):
        job, _ = _plan(store, tmp_path / out, elements=elements)
        fusion_job.write_inputs(job)
        return [w for w in read_warnings(job.out) if w["code"] == "element-not-listed"]

    (warning,) = warned(["Fe", "Pt"], "a.zarr")
    assert warning["elements"] == ["Fe", "Pt"] and warning["listed"] == ["Cu", "O", "Pd", "Ti"]
    assert "Pt (did you mean Pd?)" in warning["message"]
    assert warned(["Cu", "Ti"], "b.zarr") == []
