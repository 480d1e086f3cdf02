"""HyperSpy both ways: .hspy files ingested, stores converted back to HyperSpy signals
(``emfuse.flows.tools.export.to_hyperspy``, ``emfuse export``). Real HyperSpy, real files, no mocks."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

from emfuse.flows.cli import main
from emfuse.flows.tools.export import HyperSpyMissing, export, to_hyperspy
from emfuse.stores.errors import IngestError
from emfuse.stores.ingest import ingest, read
from emfuse.stores.zarrio import open_dataset, write_dataset

hs = pytest.importorskip("hyperspy.api", reason="needs HyperSpy (pip install 'emfuse[hyperspy]')")
pytest.importorskip("exspy", reason="needs exspy (pip install 'emfuse[hyperspy]')")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _axes(ny=6, nx=5, n=64, energy_units="keV"):
    return [
        {"name": "y", "size": ny, "scale": 0.5, "offset": 10.0, "units": "nm", "navigate": True},
        {"name": "x", "size": nx, "scale": 0.25, "offset": -3.0, "units": "nm", "navigate": True},
        {"name": "Energy", "size": n, "scale": 0.01, "offset": -0.2, "units": energy_units, "navigate": False},
    ]


def _eds_signal(rng):
    data = rng.poisson(3.0, size=(6, 5, 64)).astype(np.uint16)
    s = hs.signals.Signal1D(data, axes=_axes())
    s.set_signal_type("EDS_TEM")
    s.metadata.General.title = "EDS map"
    s.metadata.General.date = "2025-03-04"
    s.metadata.General.time = "21:15:00"
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200.0)
    s.metadata.set_item("Acquisition_instrument.TEM.magnification", 450000.0)
    s.metadata.set_item("Acquisition_instrument.TEM.camera_length", 115.0)
    s.metadata.set_item("Acquisition_instrument.TEM.microscope", "Titan")
    s.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.elevation_angle", 18.0)
    s.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.azimuth_angle", 45.0)
    s.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.live_time", 12.5)
    s.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.real_time", 14.0)
    s.metadata.set_item("Acquisition_instrument.TEM.Detector.EDS.energy_resolution_MnKa", 128.0)
    s.original_metadata.set_item("Vendor.Detector", "SuperX")
    return s


def _hspy(signal, path):
    signal.save(path, overwrite=True)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_eds_round_trip_keeps_data_axes_and_metadata(tmp_path, rng):
    """hyperspy signal -> .hspy -> emfuse ingest -> store -> to_hyperspy."""
    original = _eds_signal(rng)
    store = ingest(_hspy(original, tmp_path / "eds.hspy"), tmp_path / "eds.zarr")
    ds = open_dataset(store)
    # the store: canonical units (energy in eV), offsets kept, key figures as attributes
    np.testing.assert_array_equal(ds.spectrum.values, original.data)
    np.testing.assert_allclose(ds.y.values, 10.0 + 0.5 * np.arange(6))
    np.testing.assert_allclose(ds.x.values, -3.0 + 0.25 * np.arange(5))
    np.testing.assert_allclose(ds.energy.values, (-0.2 + 0.01 * np.arange(64)) * 1000)
    assert ds.attrs["signal_type"] == "EDX" and ds.attrs["acquired"] == "2025-03-04T21:15:00"
    assert ds.attrs["beam_energy_kev"] == 200.0 and ds.attrs["magnification"] == 450000.0
    assert ds.attrs["camera_length_mm"] == 115.0 and ds.attrs["microscope"] == "Titan"
    assert (ds.attrs["eds_elevation_deg"], ds.attrs["eds_azimuth_deg"]) == (18.0, 45.0)
    assert (ds.attrs["live_time_s"], ds.attrs["real_time_s"]) == (12.5, 14.0)
    assert ds.attrs["energy_resolution_mnka_ev"] == 128.0 and ds.attrs["dispersion_ev"] == pytest.approx(10.0)
    assert json.loads(ds.attrs["original_metadata"])["Vendor"]["Detector"] == "SuperX"

    back = to_hyperspy(store, "spectrum")
    assert type(back).__name__ == "EDSTEMSpectrum"
    np.testing.assert_array_equal(back.data, original.data)
    for name, (scale, offset, units) in {"y": (0.5, 10.0, "nm"), "x": (0.25, -3.0, "nm"),
                                          "energy": (10.0, -200.0, "eV")}.items():
        axis = back.axes_manager[name]
        assert (axis.scale, axis.offset, axis.units) == (pytest.approx(scale), pytest.approx(offset), units)
    assert [a.name for a in back.axes_manager.navigation_axes] == ["x", "y"]
    tem = back.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == 200.0 and tem.magnification == 450000.0 and tem.camera_length == 115.0
    assert tem.Detector.EDS.live_time == 12.5 and tem.Detector.EDS.elevation_angle == 18.0
    assert back.metadata.General.date == "2025-03-04" and back.metadata.General.time == "21:15:00"
    assert back.original_metadata.Vendor.Detector == "SuperX"
    assert back.original_metadata.emfuse.store.beam_energy_kev == 200.0  # the store's own record
    # the same energies in the original's keV, whatever the units
    np.testing.assert_allclose(back.axes_manager["energy"].axis / 1000, original.axes_manager[-1].axis)


def test_eels_and_image_round_trip(tmp_path, rng):
    eels = hs.signals.Signal1D(rng.random((4, 3, 32)).astype(np.float32),
                               axes=_axes(4, 3, 32, energy_units="eV"))
    eels.set_signal_type("EELS")
    eels.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 300.0)
    eels.metadata.set_item("Acquisition_instrument.TEM.convergence_angle", 21.0)
    eels.metadata.set_item("Acquisition_instrument.TEM.Detector.EELS.collection_angle", 62.0)
    store = ingest(_hspy(eels, tmp_path / "eels.hspy"), tmp_path / "eels.zarr")
    ds = open_dataset(store)
    assert ds.attrs["signal_type"] == "EELS" and ds.attrs["eels_collection_angle_mrad"] == 62.0
    assert ds.attrs["eels_convergence_angle_mrad"] == 21.0 and ds.attrs["dispersion_ev"] == 0.01
    back = to_hyperspy(store)  # the spectrum is the default variable of an input store
    assert type(back).__name__ == "EELSSpectrum"
    np.testing.assert_array_equal(back.data, eels.data)
    assert back.metadata.Acquisition_instrument.TEM.Detector.EELS.collection_angle == 62.0

    image = hs.signals.Signal2D(rng.integers(0, 1000, (8, 9)).astype(np.int32),
                                axes=[{"name": "y", "size": 8, "scale": 0.2, "offset": 1.0, "units": "µm"},
                                      {"name": "x", "size": 9, "scale": 0.2, "offset": 2.0, "units": "µm"}])
    store = ingest(_hspy(image, tmp_path / "haadf.hspy"), tmp_path / "haadf.zarr")
    ds = open_dataset(store)
    np.testing.assert_allclose(ds.y.values, 1000 + 200 * np.arange(8))  # µm -> nm
    back = to_hyperspy(store, "haadf")
    assert type(back).__name__ == "Signal2D" and back.metadata.Signal.signal_type == ""
    np.testing.assert_array_equal(back.data, image.data)
    assert back.axes_manager["x"].scale == pytest.approx(200.0) and back.axes_manager["x"].offset == 2000.0


def test_fused_output_gets_the_input_metadata(tmp_path, rng):
    """An output store has no instrument tree: the one of the input store it names is used."""
    store = ingest(_hspy(_eds_signal(rng), tmp_path / "eds.hspy"), tmp_path / "eds.zarr")
    src = open_dataset(store)
    fused = xr.Dataset({"fused": (("element", "y", "x"), rng.random((2, 6, 5)))},
                       coords={"element": ["Cu", "O"], "z": ("element", [29, 8]), "y": src.y, "x": src.x})
    fused.attrs["source_path"] = str(store)
    out = write_dataset(fused, tmp_path / "out.zarr")
    signal = to_hyperspy(out)
    assert type(signal).__name__ == "Signal2D" and signal.axes_manager.navigation_shape == (2,)
    assert signal.metadata.Sample.elements == ["Cu", "O"] and signal.metadata.General.title == "fused"
    assert signal.metadata.Acquisition_instrument.TEM.beam_energy == 200.0
    assert signal.axes_manager["y"].offset == pytest.approx(10.0)


def test_export_command_writes_a_file_hyperspy_loads(tmp_path, rng, capsys):
    store = ingest(_hspy(_eds_signal(rng), tmp_path / "eds.hspy"), tmp_path / "eds.zarr")
    out = tmp_path / "exported.hspy"
    assert main(["export", str(store), "--to", "hspy", "--variable", "spectrum", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    loaded = hs.load(out)
    assert type(loaded).__name__ == "EDSTEMSpectrum"
    np.testing.assert_array_equal(loaded.data, open_dataset(store).spectrum.values)
    assert loaded.axes_manager["energy"].units == "eV"
    assert main(["export", str(store), "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(store), "--variable", "spectrum", "--out", str(out), "--overwrite"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and type(hs.load(out)).__name__ == "EDSTEMSpectrum"
    assert main(["export", str(store), "--variable", "fused", "--out", str(tmp_path / "f.hspy")]) == 2
    assert "has no variable 'fused'; it has spectrum. Choose one with --variable" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"must end in \.hspy"):
        export(store, tmp_path / "x.h5")


def test_an_export_that_fails_midway_leaves_the_earlier_file(tmp_path, rng):
    """The file is written beside its name and renamed at the end: an export that fails while
    writing (here a damaged chunk of the store, read as the file is written) leaves the file of an
    earlier export as it was, and no partial file."""
    import hashlib

    store = ingest(_hspy(_eds_signal(rng), tmp_path / "eds.hspy"), tmp_path / "eds.zarr")
    out = export(store, tmp_path / "exported.hspy", variable="spectrum")
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    chunks = [p for p in (store / "spectrum").rglob("*") if p.is_file() and p.name != "zarr.json"]
    chunks[0].write_bytes(b"not a zstd frame" * 8)
    with pytest.raises(Exception):  # noqa: B017  (whatever the codec raises)
        export(store, out, variable="spectrum", overwrite=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.glob("*.hspy")) == ["eds.hspy", "exported.hspy"]
    assert not list(tmp_path.glob(".*partial*"))


def test_missing_hyperspy_names_the_extra(tmp_path, rng, monkeypatch):
    store = ingest(_hspy(_eds_signal(rng), tmp_path / "eds.hspy"), tmp_path / "eds.zarr")
    monkeypatch.setitem(sys.modules, "hyperspy.api", None)  # what Python does when it is not installed
    with pytest.raises(HyperSpyMissing, match=r"pip install 'emfuse\[hyperspy\]'"):
        to_hyperspy(store)
    assert main(["export", str(store), "--out", str(tmp_path / "x.hspy")]) == 2


def test_zspy_is_refused_naming_the_fix(tmp_path):
    folder = tmp_path / "signal.zspy"
    folder.mkdir()
    (folder / ".zgroup").write_text('{"zarr_format": 2}')
    with pytest.raises(IngestError, match=r"RosettaSciIO's zspy plugin needs zarr 2.*Save the signal as \.hspy"):
        read(folder)


def test_the_export_command_of_a_small_store_prints_only_what_it_wrote(formats, tmp_path):
    # as users run it, in a fresh process: no progress bars for a 16 x 16 store, and none of the
    # deprecation warnings exspy's imports raise in HyperSpy 2
    import os
    import subprocess
    from pathlib import Path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = ingest(formats / "Test SI 16x16 215 kx.emd", tmp_path / "velox.zarr")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "emfuse.flows.cli", "export", str(store), "--out",
                           str(tmp_path / "v.hspy")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.strip() == f"wrote {tmp_path / 'v.hspy'}"
    assert hs.load(tmp_path / "v.hspy").data.shape == (16, 16, 4096)
