"""Instrument metadata and axis calibration kept at ingest, compared with RosettaSciIO's own
reading of every real file in ../shared/data/formats (and with HyperSpy's, which applies
RosettaSciIO's mapping from original_metadata)."""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from emfuse.stores import metadata as md
from emfuse.stores.errors import IngestError
from emfuse.stores.formats import IngestWarning
from emfuse.stores.ingest import describe, ingest, read
from emfuse.stores.zarrio import open_dataset

DATA = Path(os.environ.get("EMFUSE_SHARED_DATA")
            or Path(__file__).resolve().parents[2].parent / "shared" / "data")

# every real microscope file emfuse ingests, with the options it needs (one spectrum image each)
REAL = [
    ("test_TEM.bcf", {}),
    ("bcf_v2_50x50px.bcf", {}),
    ("Test SI 16x16 215 kx.emd", {}),
    ("Test SI 16x16 ReducedData 215 kx.emd", {}),
    ("example_velox_EELS_EDS.emd", {"signal": 17}),
    ("example_velox_EELS_EDS.emd", {"signal": 15}),
    ("fei_example_tem_stack.emd", {}),
    ("example_image.emd", {}),
    ("EELS_SI.dm4", {}),
    ("test-1.dm3", {}),
    ("test-1.dm4", {}),
    ("128x128_TEM_acquire-sum1.emi", {}),
    ("128x128_TEM_acquire-sum1_1.ser", {}),
]
IDS = [f"{name}{'-' + str(opts['signal']) if opts else ''}" for name, opts in REAL]

# key figure -> where HyperSpy's metadata tree holds it, below Acquisition_instrument.<TEM|SEM>
# (written out here, apart from emfuse.stores.metadata, so the test does not check the code with itself)
INSTRUMENT = {
    "beam_energy_kev": ["beam_energy"],
    "magnification": ["magnification"],
    "camera_length_mm": ["camera_length"],
    "microscope": ["microscope"],
    "acquisition_mode": ["acquisition_mode"],
    "eds_elevation_deg": ["Detector", "EDS", "elevation_angle"],
    "eds_azimuth_deg": ["Detector", "EDS", "azimuth_angle"],
    "live_time_s": ["Detector", "EDS", "live_time"],
    "real_time_s": ["Detector", "EDS", "real_time"],
    "energy_resolution_mnka_ev": ["Detector", "EDS", "energy_resolution_MnKa"],
    "eels_collection_angle_mrad": ["Detector", "EELS", "collection_angle"],
    "eels_convergence_angle_mrad": ["convergence_angle"],
}
NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "pm": 1e-3, "m": 1e9}
EV = {"eV": 1.0, "keV": 1e3}


def _read(path: Path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        return read(path, **options)


def _rsciio(path: Path) -> list[dict]:
    import rsciio.bruker
    import rsciio.digitalmicrograph
    import rsciio.emd
    import rsciio.tia

    module = {".bcf": rsciio.bruker, ".emd": rsciio.emd, ".dm3": rsciio.digitalmicrograph,
              ".dm4": rsciio.digitalmicrograph, ".emi": rsciio.tia, ".ser": rsciio.tia}[path.suffix]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.file_reader(str(path), lazy=True)


def _hyperspy_trees(path: Path) -> list[dict]:
    """RosettaSciIO's metadata of every signal of the file with its mapping applied by
    HyperSpy's own tree class, as ``hyperspy.io`` does on load (``hs.load`` itself is not
    used: with exspy installed it adds defaults, e.g. a 130 eV energy resolution, that the
    file never held)."""
    pytest.importorskip("hyperspy")
    from hyperspy.misc.utils import DictionaryTreeBrowser

    trees = []
    for raw in _rsciio(path):
        tree = DictionaryTreeBrowser(raw["metadata"])
        original = DictionaryTreeBrowser(raw.get("original_metadata") or {})
        for source, (target, function) in (raw.get("mapping") or {}).items():
            if source in original:
                value = original.get_item(source)
                value = function(value) if function is not None else value
                if value is not None:
                    tree.set_item(target, value)
        trees.append(tree.as_dictionary())
    return trees


def _sources(ds) -> dict:
    return json.loads(ds.attrs["metadata_sources"])


def _signal_index(ds, variable: str) -> int:
    index = ds[variable].attrs["source_signal"]
    return index[0] if isinstance(index, list) else index


def _expected_figures(tree: dict) -> dict:
    """The key figures as the test reads them from a HyperSpy tree (values as numbers or text)."""
    branch = tree.get("Acquisition_instrument", {})
    branch = branch.get("TEM") or branch.get("SEM") or {}
    out = {}
    for name, keys in INSTRUMENT.items():
        node = branch
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            out[name] = node
    general = tree.get("General", {})
    if general.get("date"):
        out["date"] = general["date"]
    if general.get("time"):
        out["time"] = general["time"]
    return out


def _same(stored, expected) -> bool:
    try:
        return float(stored) == pytest.approx(float(expected), rel=1e-12)
    except (TypeError, ValueError):
        return str(stored) == str(expected).strip()


@pytest.mark.parametrize("name, options", REAL, ids=IDS)
def test_key_figures_equal_what_rosettasciio_reads(formats, name, options):
    """Every key figure of every variable equals HyperSpy's reading of that variable's signal
    (RosettaSciIO's metadata with its mapping applied), and none is invented."""
    path = formats / name
    ds = _read(path, **options)
    trees = _hyperspy_trees(path)
    for variable in ds.data_vars:
        expected = _expected_figures(trees[_signal_index(ds, variable)])
        attrs = ds[variable].attrs
        for figure in INSTRUMENT:
            if figure in expected:
                assert _same(attrs[figure], expected[figure]), (variable, figure, attrs.get(figure), expected[figure])
            else:
                assert figure not in attrs, (variable, figure)
        if "date" in expected:
            assert attrs["acquired"].startswith(expected["date"] + ("T" + expected["time"] if "time" in expected else ""))
        else:
            assert "acquired" not in attrs
    # the Dataset's figures: each from the variable metadata_sources names, equal to its own
    origin = _sources(ds)["key_figures"]
    for figure, variable in origin.items():
        assert ds.attrs[figure] == ds[variable].attrs[figure]
    primary = _sources(ds)["metadata_from"]
    assert json.loads(ds.attrs["metadata"])["General"].get("title") == trees[_signal_index(ds, primary)]["General"].get("title")


@pytest.mark.parametrize("name, options", REAL, ids=IDS)
def test_axes_scale_and_offset_equal_what_rosettasciio_reads(formats, name, options):
    """y/x coordinates are offset + i * scale of the primary signal, in nm; energy in eV; every
    variable records its own signal's pixel size and offset (nm)."""
    path = formats / name
    ds = _read(path, **options)
    raw = _rsciio(path)
    primary = _sources(ds)["metadata_from"]
    for variable in ds.data_vars:
        axes = raw[_signal_index(ds, variable)]["axes"]
        spatial = [a for a in axes if a.get("units") not in EV and str(a.get("units")) != "s"]
        spatial = spatial[-2:]
        for dim, axis, pixel, offset in zip("yx", spatial, ds[variable].attrs["pixel_nm"],
                                            ds[variable].attrs["offset_nm"]):
            factor = NM.get(axis.get("units"))
            if factor is None:  # uncalibrated: pixels
                assert pixel is None and offset is None
                if variable == primary:
                    np.testing.assert_array_equal(ds[dim].values, np.arange(int(axis["size"])))
                    assert ds[dim].attrs["units"] == "px"
                continue
            assert pixel == pytest.approx(float(axis["scale"]) * factor, rel=1e-12)
            assert offset == pytest.approx(float(axis["offset"]) * factor, rel=1e-12, abs=1e-12)
            if variable == primary:
                want = (float(axis["offset"]) + np.arange(int(axis["size"])) * float(axis["scale"])) * factor
                np.testing.assert_allclose(ds[dim].values, want, rtol=1e-12, atol=1e-9)
                assert ds[dim].attrs["units"] == "nm"
        if variable == "spectrum":
            energy = next(a for a in axes if a.get("units") in EV)
            want = (float(energy["offset"]) + np.arange(int(energy["size"])) * float(energy["scale"])) * EV[energy["units"]]
            np.testing.assert_allclose(ds.energy.values, want, rtol=1e-12, atol=1e-9)
            assert ds.attrs["dispersion_ev"] == pytest.approx(float(energy["scale"]) * EV[energy["units"]], rel=1e-12)


def test_velox_offsets_are_kept(formats):
    """Velox writes the spectrum image and maps at the stage position, the HAADF at 0: the
    coordinates follow the spectrum image (the offset was dropped before)."""
    ds = _read(formats / "Test SI 16x16 215 kx.emd")
    assert float(ds.y[0]) == pytest.approx(-32.393243303653215)
    assert float(ds.x[0]) == pytest.approx(-39.59174181557615)
    assert ds.haadf.attrs["offset_nm"] == [0.0, 0.0]
    assert ds.maps.attrs["offset_nm"] == pytest.approx([-32.393243303653215, -39.59174181557615])
    assert ds.maps.attrs["source_title"] == ["C", "Ca", "O", "Cu"]


def test_figures_per_file(formats):
    """A few figures spelled out, so a wrong mapping cannot pass unnoticed."""
    bcf = _read(formats / "test_TEM.bcf")
    assert bcf.attrs["beam_energy_kev"] == 200.0 and bcf.attrs["magnification"] == 225000.0
    assert bcf.attrs["eds_elevation_deg"] == 18.0 and bcf.attrs["eds_azimuth_deg"] == 45.0
    assert bcf.attrs["real_time_s"] == pytest.approx(5.8112) and bcf.attrs["detector"] == "SuperX"
    assert bcf.attrs["acquired"] == "2016-08-09T14:48:10" and bcf.attrs["dispersion_ev"] == pytest.approx(10.001)
    velox = _read(formats / "Test SI 16x16 215 kx.emd")
    assert velox.attrs["beam_energy_kev"] == 300.0 and velox.attrs["camera_length_mm"] == pytest.approx(115.9)
    assert velox.attrs["microscope"] == "Titan" and velox.attrs["acquired"] == "2024-02-29T06:58:04+00:00"
    dm4 = _read(formats / "EELS_SI.dm4")
    assert dm4.attrs["eels_collection_angle_mrad"] == 62.0 and dm4.attrs["eels_convergence_angle_mrad"] == 21.0
    assert dm4.attrs["detector"] == "GIF Quantum ER" and dm4.attrs["acquisition_mode"] == "STEM"
    eels = _read(formats / "example_velox_EELS_EDS.emd", signal=15)
    # the EELS spectrum image carries no instrument tree: the figures come from the DF-S image
    assert "beam_energy_kev" not in eels.spectrum.attrs
    assert eels.attrs["beam_energy_kev"] == 300.0 and _sources(eels)["key_figures"]["beam_energy_kev"] == "haadf"


def test_metadata_survives_the_store(formats, tmp_path):
    """Attributes and JSON trees read back from the Zarr store as they were read from the file."""
    path = ingest(formats / "EELS_SI.dm4", tmp_path / "eels.zarr")
    ds = open_dataset(path)
    assert ds.attrs["beam_energy_kev"] == 200.0 and ds.attrs["camera_length_mm"] == 550.0
    tree = json.loads(ds.attrs["metadata"])
    assert tree["Acquisition_instrument"]["TEM"]["Detector"]["EELS"]["collection_angle"] == 62.0
    original = json.loads(ds.attrs["original_metadata"])
    assert "ImageList" in original
    assert ds.spectrum.attrs["source_signal"] == 0 and ds.spectrum.attrs["source_title"] == "EELS_SI"
    assert ds.attrs["ingest_options"] == {"elements": None, "signal": None, "signal_type": None}


def test_velox_element_list_through_the_mapping(formats):
    """Velox's element list reaches Sample.elements through RosettaSciIO's converter (which
    indexes keys() as HyperSpy's tree allows): no 'not mapped' warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read(formats / "Test SI 16x16 215 kx.emd")
    assert not [w for w in caught if "not mapped" in str(w.message)]
    assert json.loads(ds.attrs["metadata"])["Sample"]["elements"] == ["C", "O", "Ca", "Cu"]


def test_describe_lists_signals_and_elements(formats):
    lines = describe(formats / "example_velox_EELS_EDS.emd")
    assert lines[0].startswith("example_velox_EELS_EDS.emd: 18 signal(s)")
    assert "  [17] spectrum image 'EDS' (128, 128, 4096) EDX, -200 to 40750 eV, pixel 158.7 nm" in lines
    assert "  [9] element map 'Co' (16, 20), pixel 158.7 nm" in lines
    assert lines[-1] == "elements listed in the file's metadata: O Fe Co"
    assert describe(DATA / "fusion" / "Co3O4_Mn3O4.h5")[-1] == "elements: Co Mn O"
    # the Bruker image's pixels are not square as RosettaSciIO reads them: both sides are listed
    bruker = describe(formats / "bcf_v2_50x50px.bcf")
    assert "  [0] image 'Ch 1' (50, 50), pixel 11.81 x 12.73 nm (y x x)" in bruker
    assert "  [2] spectrum image 'EDX' (50, 50, 2048) EDX, -473.16 to 19989 eV, pixel 11.81 nm" in bruker


def test_what_was_left_out_is_stored_as_warnings(formats, tmp_path):
    from emfuse.stores.warn import read_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        store = ingest(formats / "bcf_v2_50x50px.bcf", tmp_path / "sem.zarr")
    records = {(w["code"], w["message"]) for w in read_warnings(store)}
    assert ("not-ingested", "bcf_v2_50x50px.bcf: not ingested: image 'Ch 1' (825, 1100): its (y, x) grid "
            "differs from (50, 50)") in records
    assert any(code == "ingest-check" and "'Ch 1' was taken as haadf" in message for code, message in records)
    assert all(w["stage"] == "ingest" for w in read_warnings(store))


# -- ingest --elements ----------------------------------------------------------------------


def test_elements_with_a_spectrum_image_keep_maps_and_record_the_rest(formats):
    ds = _read(formats / "Test SI 16x16 215 kx.emd", elements=["Cu", "Fe"])
    assert ds.element.values.tolist() == ["Cu"]  # Fe has no map: fuse integrates it
    assert ds.attrs["elements"] == ["Cu", "Fe"] and "spectrum" in ds
    bcf = _read(formats / "test_TEM.bcf", elements="Cu, Ti")
    assert bcf.attrs["elements"] == ["Cu", "Ti"] and "maps" not in bcf


def test_elements_that_cannot_be_had_are_refused(formats):
    with pytest.raises(IngestError, match=r"element\(s\) \['Fe'\] asked for, but the file has maps of "
                                          r"\['C', 'Ca', 'O', 'Cu'\] on the chosen grid and no spectrum image"):
        _read(formats / "Test SI 16x16 ReducedData 215 kx.emd", elements=["Cu", "Fe"])
    with pytest.raises(IngestError, match=r"has no element maps and no spectrum image to integrate them from"):
        _read(formats / "test-1.dm3", elements=["Fe"])


# -- JSON-safe trees -----------------------------------------------------------------------


def test_jsonable_makes_every_type_safe():
    tree = {
        "f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True), "nan": float("nan"),
        "text": b"Titan\x00", "binary": b"\xff\xfe", "when": dt.datetime(2024, 2, 29, 6, 58, 4),
        "small": np.arange(3, dtype=np.uint16), "big": np.arange(10000.0).reshape(100, 100),
        "strings": np.array([b"a", b"b"]), 7: {"nested": (1, 2)}, "obj": object,
    }
    out = md.jsonable(tree)
    json.dumps(out, allow_nan=False)  # raises if anything is left unsafe
    assert out["f"] == 0.5 and out["i"] == 3 and out["b"] is True and out["nan"] == "nan"
    assert out["text"] == "Titan" and out["binary"].startswith("base64:")
    assert out["when"] == "2024-02-29T06:58:04" and out["small"] == [0, 1, 2]
    assert out["big"] == {"array": "summary", "shape": [100, 100], "dtype": "float64", "min": 0.0, "max": 9999.0}
    assert out["strings"] == ["a", "b"] and out["7"] == {"nested": [1, 2]}


def test_complete_metadata_skips_a_failing_converter():
    tree, failed = md.complete_metadata(
        {"General": {"title": "t"}},
        {"A": {"kV": "200000"}, "B": "x"},
        {"A.kV": ("Acquisition_instrument.TEM.beam_energy", lambda v: float(v) / 1e3),
         "B": ("General.date", float), "C.missing": ("General.time", None)},
    )
    assert tree == {"General": {"title": "t"}, "Acquisition_instrument": {"TEM": {"beam_energy": 200.0}}}
    assert failed == ["B -> General.date (ValueError: could not convert string to float: 'x')"]


def test_acquired_iso_8601():
    assert md.acquired({"date": "2024-02-29", "time": "06:58:04", "time_zone": "+01:00"}) == "2024-02-29T06:58:04+01:00"
    assert md.acquired({"date": "2024-02-29", "time": "06:58:04", "time_zone": "Europe/Brussels"}) == "2024-02-29T06:58:04"
    assert md.acquired({"time": "06:58:04"}) is None
