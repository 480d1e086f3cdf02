"""Tests of the ingest layer (stores/ingest.py, stores/formats/): real facility files,
round trips through canonical stores, bad inputs, and lazy (chunk-by-chunk) reading."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from emfuse.stores import zarrio
from emfuse.stores.errors import IngestError, OutputNotWritable, StoreError
from emfuse.stores.formats import FileArray, IngestWarning
from emfuse.stores.ingest import SUPPORTED_SUFFIXES, chunk_canonical, ingest, read

DATA = Path(os.environ.get("EMFUSE_SHARED_DATA")
            or Path(__file__).resolve().parents[2].parent / "shared" / "data")
VELOX_16 = "Test SI 16x16 215 kx.emd"
VELOX_PRUNED = "Test SI 16x16 ReducedData 215 kx.emd"


@pytest.fixture(scope="module")
def fusion() -> Path:
    folder = DATA / "fusion"
    if not folder.is_dir():
        pytest.skip(
            f"fusion tutorial data not found at {folder} (clone ../shared beside the checkout)"
        )
    return folder


def _quiet_read(path, **kw):
    """read() with the expected 'not ingested' warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        return read(path, **kw)


def _rsciio(path):
    """What RosettaSciIO itself returns, eagerly, to compare values with."""
    import rsciio.bruker
    import rsciio.digitalmicrograph
    import rsciio.emd

    module = {".bcf": rsciio.bruker, ".dm4": rsciio.digitalmicrograph, ".emd": rsciio.emd}
    return module[path.suffix].file_reader(str(path))


def _step(coord) -> float:
    return float(coord[1] - coord[0])


def _truncated(src: Path, tmp_path: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst = tmp_path / f"truncated_{src.name}"
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# -- real instrument files ------------------------------------------------------------


def test_bruker_tem_bcf(formats):
    ds = read(formats / "test_TEM.bcf")
    assert ds.haadf.shape == (64, 64) and ds.haadf.dtype == np.uint16
    assert ds.spectrum.dims == ("y", "x", "energy")
    assert ds.spectrum.shape == (64, 64, 2048) and ds.spectrum.dtype == np.uint8
    assert isinstance(ds.spectrum.data, da.Array)
    assert ds.y.attrs["units"] == "nm" and ds.energy.attrs["units"] == "eV"
    assert _step(ds.y) == pytest.approx(0.8, abs=0.05)
    assert _step(ds.energy) == pytest.approx(10.0, rel=1e-3)  # 0.01 keV per channel
    assert ds.attrs["signal_type"] == "EDX"
    assert ds.attrs["source_sha256"] == zarrio.sha256_file(formats / "test_TEM.bcf")
    raw = _rsciio(formats / "test_TEM.bcf")
    np.testing.assert_array_equal(ds.spectrum.values, raw[1]["data"])
    np.testing.assert_array_equal(ds.haadf.values, raw[0]["data"])


def test_bruker_sem_bcf_reports_the_overview_image(formats):
    with pytest.warns(IngestWarning) as record:
        ds = read(formats / "bcf_v2_50x50px.bcf")
    messages = [str(w.message) for w in record]
    assert any("not ingested: image 'Ch 1' (825, 1100)" in m for m in messages)
    assert any("'Ch 1' was taken as haadf" in m for m in messages)  # an SEM image, not HAADF
    assert ds.spectrum.shape == (50, 50, 2048) and ds.haadf.shape == (50, 50)
    assert ds.attrs["signal_type"] == "EDX"
    assert any("825, 1100" in item for item in ds.attrs["unmapped"])


def test_dm4_eels_si_energy_axis_moved_last(formats):
    ds = read(formats / "EELS_SI.dm4")
    assert ds.spectrum.dims == ("y", "x", "energy") and ds.spectrum.shape == (2, 2, 2048)
    assert ds.spectrum.dtype == np.float32
    assert float(ds.energy[0]) == 300.0 and _step(ds.energy) == 1.0
    assert ds.attrs["signal_type"] == "EELS"
    assert ds.x.attrs["units"] == "nm" and _step(ds.x) == pytest.approx(1.992, abs=1e-3)  # µm
    raw = _rsciio(formats / "EELS_SI.dm4")[0]["data"]  # (energy, y, x)
    np.testing.assert_array_equal(ds.spectrum.values, np.moveaxis(raw, 0, -1))


def test_velox_si_with_maps(formats):
    with pytest.warns(IngestWarning, match=r"4 single spectra"):
        ds = read(formats / VELOX_16)
    assert ds.haadf.shape == (16, 16) and ds.haadf.dtype == np.uint16
    assert _step(ds.y) == pytest.approx(3.6, abs=0.01) and ds.y.attrs["units"] == "nm"
    assert ds.spectrum.shape == (16, 16, 4096) and ds.spectrum.dtype == np.uint16
    assert _step(ds.energy) == pytest.approx(10.0)
    assert ds.maps.dims == ("element", "y", "x") and ds.maps.dtype == np.float32
    assert ds.element.values.tolist() == ["C", "Ca", "O", "Cu"]
    assert ds.z.values.tolist() == [6, 20, 8, 29]
    assert ds.attrs["signal_type"] == "EDX"
    only = _quiet_read(formats / VELOX_16, elements=["Cu", "O"])
    assert only.element.values.tolist() == ["Cu", "O"]
    np.testing.assert_array_equal(only.maps.values[0], ds.maps.sel(element="Cu").values)


def test_pruned_velox_says_there_is_no_spectrum_image(formats):
    with pytest.warns(IngestWarning) as record:
        ds = read(formats / VELOX_PRUNED)
    messages = [str(w.message) for w in record]
    assert any("RosettaSciIO: No spectrum stream" in m for m in messages)
    assert any("the file holds no spectrum image (y, x, energy)" in m for m in messages)
    assert "spectrum" not in ds and ds.haadf.shape == (16, 16)
    assert ds.element.values.tolist() == ["C", "Ca", "O", "Cu"]


def test_velox_eels_and_eds_choice_by_signal(formats):
    """Four spectrum images (three EELS ranges, one EDS): none is picked silently; the message
    lists them with their index, shape, type and energy range, and --signal chooses."""
    path = formats / "example_velox_EELS_EDS.emd"
    with pytest.raises(IngestError) as info:
        _quiet_read(path)
    message = str(info.value)
    assert "it holds 4 spectrum images" in message and "--signal INDEX" in message
    assert "[17] 'EDS' (128, 128, 4096) EDX" in message
    assert "[15] 'EELS' (16, 20, 2048) EELS, 480 to 826.35 eV" in message
    with pytest.raises(IngestError, match=r"3 spectrum images of type EELS"):
        _quiet_read(path, signal_type="EELS")
    with pytest.raises(IngestError, match=r"3 spectrum images are titled 'EELS'"):
        _quiet_read(path, signal="EELS")
    with pytest.raises(IngestError, match=r"--signal 0 is spectrum 'EDS' \(4096,\), neither a spectrum image"):
        _quiet_read(path, signal=0)
    with pytest.raises(IngestError, match=r"--signal 40: it has signals 0 to 17"):
        _quiet_read(path, signal=40)
    eds = _quiet_read(path, signal="EDS")
    assert eds.spectrum.shape == (128, 128, 4096) and eds.attrs["signal_type"] == "EDX"
    with pytest.warns(IngestWarning, match=r"one spectrum image per store \(this is signal 14: choose it with --signal 14\)"):
        eels = read(path, signal=15, signal_type="EELS")
    assert eels.spectrum.shape == (16, 20, 2048) and eels.attrs["signal_type"] == "EELS"
    assert _step(eels.energy) == pytest.approx(0.1692) and float(eels.energy[0]) == pytest.approx(480.0)
    assert eels.haadf.shape == (16, 20)  # the DF-S image on the EELS grid
    assert _step(eels.y) == pytest.approx(158.658, abs=1e-3)  # 0.1587 µm
    assert sorted(eels.element.values.tolist()) == ["Co", "Fe", "O"]
    with pytest.raises(IngestError, match=r"signal '17' is a EDX spectrum image, but signal_type 'EELS'"):
        _quiet_read(path, signal="17", signal_type="EELS")


def test_tia_image(formats):
    for name in ("128x128_TEM_acquire-sum1.emi", "128x128_TEM_acquire-sum1_1.ser"):
        ds = read(formats / name)
        assert ds.haadf.shape == (128, 128) and ds.haadf.dtype == np.int32
        assert _step(ds.x) == pytest.approx(21.5, abs=0.05) and ds.x.attrs["units"] == "nm"
        assert ds.haadf.attrs["image_kind"] == "image"  # a lone TEM camera frame is not called a HAADF


@pytest.mark.parametrize("name, kind", [("test_TEM.bcf", "haadf"), ("Test SI 16x16 215 kx.emd", "haadf"),
                                        ("test-1.dm3", "image"), ("example_image.emd", "image"),
                                        ("bcf_v2_50x50px.bcf", "image")])
def test_the_image_says_whether_it_is_a_haadf(formats, name, kind):
    """Stored as ``haadf``, an image says what it is: beside a spectrum image of a (S)TEM (or titled
    HAADF/ADF/DF) it is the acquisition's HAADF; alone and untitled it is only an ``image``, and so
    is the SEM's electron image beside its EDX spectrum image (``bcf_v2``'s 'Ch 1', 20 kV)."""
    assert _quiet_read(formats / name).haadf.attrs["image_kind"] == kind


def test_a_signal_that_is_an_image_is_read_alone(formats):
    """``--signal`` naming an image (by index, or a title no spectrum image has) reads that image
    alone: what ``emfuse restore FILE --signal 13`` restores. The file's four spectrum images would
    otherwise stop the ingest; its metadata come with the image."""
    path = formats / "example_velox_EELS_EDS.emd"
    image = _quiet_read(path, signal=13)
    assert list(image.data_vars) == ["haadf"] and image.haadf.shape == (128, 128)
    assert image.haadf.attrs["image_kind"] == "image" and image.haadf.attrs["source_title"] == "a"
    assert _step(image.y) == pytest.approx(158.658, abs=1e-3)
    assert image.attrs["ingest_options"]["signal"] == "13"
    df = _quiet_read(path, signal="DF-S")
    assert df.haadf.shape == (16, 20) and df.haadf.attrs["image_kind"] == "haadf"  # its title says DF
    co = _quiet_read(path, signal=9)  # an element map, as an image
    assert list(co.data_vars) == ["haadf"] and co.haadf.attrs["source_title"] == "Co"
    assert "spectrum" in _quiet_read(path, signal="EDS")  # a title spectrum images have: the spectrum image
    # a name that fits nothing: the message lists the images too, since they can be taken alone
    with pytest.raises(IngestError, match=r"no spectrum image or image is titled 'Foo'.*or an image, taken "
                                          r"alone: \[6\] 'Fe-EELS' \(16, 20\)"):
        _quiet_read(path, signal="Foo")


def test_velox_movie_stack(formats):
    ds = read(formats / "fei_example_tem_stack.emd")
    assert ds.movie.dims == ("frame", "y", "x") and ds.movie.shape == (2, 3, 3)
    assert ds.movie.dtype == np.int16
    assert ds.frame.values.tolist() == [0, 1]
    assert ds.time.values.tolist() == pytest.approx([0.0, 0.8]) and ds.time.attrs["units"] == "s"
    assert _step(ds.y) == pytest.approx(8.1729e-3, rel=1e-4)  # pm -> nm


@pytest.mark.parametrize(
    "name, shape, dtype",
    [("test-1.dm3", (2, 2), np.int16), ("test-1.dm4", (2, 2), np.int16),
     ("example_image.emd", (3, 3), np.int32)],
)  # fmt: skip
def test_plain_images_get_pixel_coordinates(formats, name, shape, dtype):
    ds = read(formats / name)
    assert ds.haadf.shape == shape and ds.haadf.dtype == dtype
    assert ds.y.attrs["units"] == "px" and ds.x.values.tolist() == list(range(shape[1]))


@pytest.mark.parametrize("name", ["test-EDS_spectrum.dm3", "test-EELS_spectrum.dm3"])
def test_single_spectrum_is_refused(formats, name):
    with pytest.raises(IngestError, match=r"spectrum image \(y, x, energy\) is needed") as info:
        read(formats / name)
    assert name in str(info.value)


def test_tutorial_files(fusion):
    pto = read(fusion / "PTO_Trilayer_dataset.npz")  # layout (b)
    with np.load(fusion / "PTO_Trilayer_dataset.npz", allow_pickle=False) as raw:
        np.testing.assert_array_equal(pto.haadf.values, raw["HAADF"])
        np.testing.assert_array_equal(pto.maps.sel(element="Dy").values, raw["Dy"])
    assert pto.element.values.tolist() == ["Sc", "Dy", "O"] and pto.z.values.tolist() == [21, 66, 8]
    assert pto.maps.dtype == np.float64 and pto.y.attrs["units"] == "px"

    bundle = read(fusion / "dysco3_edx_tutorial.npz")  # layout (a): chem + elements + z
    np.testing.assert_array_equal(bundle.maps.values, pto.maps.values)

    h5 = read(fusion / "Co3O4_Mn3O4.h5")
    assert h5.maps.shape == (3, 400, 400) and h5.maps.dtype == np.float32
    assert h5.element.values.tolist() == ["Co", "Mn", "O"] and h5.z.values.tolist() == [27, 25, 8]
    with h5py.File(fusion / "Co3O4_Mn3O4.h5", "r") as raw:
        np.testing.assert_array_equal(h5.maps.sel(element="Mn").values, raw["Mn"][()])

    tif = read(fusion / "msa_em_fig_crops" / "original_images" / "HAADF.tiff")
    assert tif.haadf.shape == (60, 60) and tif.haadf.dtype == np.float64


def test_real_spectrum_image_store_is_chunked_over_yx(formats, tmp_path):
    out = ingest(formats / "test_TEM.bcf", tmp_path / "bcf.zarr")
    array = zarr.open_array(str(out / "spectrum"), mode="r")
    assert array.chunks == (64, 64, 2048)
    ds = zarrio.open_dataset(out)
    assert ds.attrs["complete"] is True and ds.attrs["signal_type"] == "EDX"
    np.testing.assert_array_equal(ds.spectrum.values, _rsciio(formats / "test_TEM.bcf")[1]["data"])


def test_a_velox_file_ingests_while_a_dask_client_is_the_default(formats, tmp_path, client):
    # The batch ingests with its cluster's client as Dask's default scheduler. RosettaSciIO's lazy
    # Velox arrays cannot be pickled to it: the ingest reads on the driver's own threads.
    out = ingest(formats / VELOX_16, tmp_path / "velox.zarr", elements=["Ca", "O", "Cu"])
    ds = zarrio.open_dataset(out)
    assert ds.attrs["complete"] is True and ds.spectrum.shape == (16, 16, 4096)
    spectrum_image = next(s for s in _rsciio(formats / VELOX_16) if np.ndim(s["data"]) == 3)
    np.testing.assert_array_equal(ds.spectrum.values, np.asarray(spectrum_image["data"]))


# -- round trips through stores -------------------------------------------------------


def _roundtrip(src: Path, tmp_path: Path, **kw):
    out = ingest(src, tmp_path / "out.zarr", **kw)
    ds = zarrio.open_dataset(out)
    assert ds.attrs["complete"] is True
    assert ds.attrs["source_sha256"] == zarrio.sha256_file(src)
    assert ds.attrs["source_path"] == str(src.resolve())
    return ds


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_layout_a_maps_with_element_names(tmp_path, rng, compressed):
    haadf = rng.random((40, 30))
    maps = rng.poisson(3.0, (2, 40, 30)).astype(np.uint16)
    src = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(
        src, haadf=haadf, maps=maps, pixel_size_nm=0.25
    )
    ds = _roundtrip(src, tmp_path, elements=["Sc", "Dy"])
    assert ds.haadf.dtype == haadf.dtype and np.array_equal(ds.haadf.values, haadf)
    assert ds.maps.dtype == np.uint16 and np.array_equal(ds.maps.values, maps)
    assert ds.element.values.tolist() == ["Sc", "Dy"] and ds.z.values.tolist() == [21, 66]
    assert ds.x.attrs["units"] == "nm" and ds.x.values[:3].tolist() == [0.0, 0.25, 0.5]


def test_npz_layout_b_one_array_per_element(tmp_path, rng):
    arrays = {"HAADF": rng.random((16, 16)), "Co": rng.random((16, 16)), "O": rng.random((16, 16))}
    src = tmp_path / "b.npz"
    np.savez(src, **arrays, gamma=1.6)  # scalar parameters are ignored
    ds = _roundtrip(src, tmp_path)
    assert ds.element.values.tolist() == ["Co", "O"] and ds.z.values.tolist() == [27, 8]
    np.testing.assert_array_equal(ds.maps.sel(element="O").values, arrays["O"])
    np.testing.assert_array_equal(ds.haadf.values, arrays["HAADF"])
    assert ds.y.attrs["units"] == "px"


@pytest.mark.parametrize("energy_first", [False, True])
def test_npz_layout_c_spectrum_image(tmp_path, rng, energy_first):
    spectrum = rng.poisson(2.0, (20, 24, 50)).astype(np.uint16)
    energy = 100.0 + 0.5 * np.arange(50)
    stored = np.moveaxis(spectrum, -1, 0) if energy_first else spectrum
    src = tmp_path / "c.npz"
    np.savez(src, spectrum=stored, energy=energy, haadf=rng.random((20, 24)))
    ds = _roundtrip(src, tmp_path, signal_type="EELS")
    assert ds.spectrum.dims == ("y", "x", "energy") and ds.spectrum.dtype == np.uint16
    assert np.array_equal(ds.spectrum.values, spectrum)
    assert ds.energy.values.tolist() == energy.tolist() and ds.energy.attrs["units"] == "eV"
    assert ds.attrs["signal_type"] == "EELS"


def test_hdf5_spectrum_maps_in_a_group(tmp_path, rng):
    spectrum = rng.poisson(1.0, (12, 10, 40)).astype(np.uint32)
    maps = rng.random((2, 12, 10)).astype(np.float32)
    src = tmp_path / "si.h5"
    with h5py.File(src, "w") as fh:
        grp = fh.create_group("scan1")
        grp.attrs["pixel_size_nm"] = [0.5, 0.4]
        grp.attrs["signal_type"] = "EDS_TEM"
        grp.create_dataset("spectrum", data=spectrum, chunks=(4, 4, 40), compression="gzip")
        grp.create_dataset("energy", data=np.arange(40) * 0.01).attrs["units"] = "keV"
        grp.create_dataset("maps", data=maps).attrs["elements"] = ["Fe", "O"]
        grp.create_dataset("haadf", data=rng.random((12, 10)))
    ds = _roundtrip(src, tmp_path)
    assert np.array_equal(ds.spectrum.values, spectrum) and ds.spectrum.dtype == np.uint32
    assert np.array_equal(ds.maps.values, maps)
    assert ds.energy.values[:3] == pytest.approx([0.0, 10.0, 20.0])  # keV -> eV
    assert ds.element.values.tolist() == ["Fe", "O"] and ds.attrs["signal_type"] == "EDX"
    assert _step(ds.y) == 0.5 and _step(ds.x) == pytest.approx(0.4)


def test_hdf5_several_groups_needs_a_choice(tmp_path, rng):
    src = tmp_path / "maps.h5"
    with h5py.File(src, "w") as fh:
        for name in ("map4", "map7"):
            for key in ("HAADF", "Co", "S", "O"):
                fh.create_dataset(f"{name}/{key}", data=rng.random((8, 8)))
    with pytest.raises(IngestError, match=r"several groups.*map4.*map7.*group="):
        read(src)
    ds = read(src, group="map7")
    assert sorted(ds.element.values.tolist()) == ["Co", "O", "S"]  # HDF5 lists names sorted
    ordered = read(src, group="map7", elements=["Co", "S", "O"])
    assert ordered.element.values.tolist() == ["Co", "S", "O"]


def test_tiff_2d_with_resolution(tmp_path, rng):
    image = rng.integers(0, 60000, (30, 20), dtype=np.uint16)
    src = tmp_path / "img.tif"
    # 0.5 nm x 0.25 nm pixels, as pixels per centimetre
    tifffile.imwrite(src, image, resolution=(1e7 / 0.25, 1e7 / 0.5), resolutionunit="CENTIMETER")
    ds = _roundtrip(src, tmp_path)
    assert np.array_equal(ds.haadf.values, image) and ds.haadf.dtype == np.uint16
    assert _step(ds.y) == pytest.approx(0.5) and _step(ds.x) == pytest.approx(0.25)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_3d_stack_is_a_movie(tmp_path, rng, compression):
    movie = rng.random((5, 9, 7)).astype(np.float32)
    src = tmp_path / "stack.tif"
    if compression:
        tifffile.imwrite(src, movie, compression=compression, photometric="minisblack")
    else:
        tifffile.imwrite(
            src, movie, imagej=True, resolution=(1 / 0.2, 1 / 0.2),
            metadata={"unit": "nm", "axes": "TYX", "finterval": 0.5},
        )  # fmt: skip
    ds = _roundtrip(src, tmp_path)
    assert ds.movie.dims == ("frame", "y", "x") and np.array_equal(ds.movie.values, movie)
    assert ds.frame.values.tolist() == [0, 1, 2, 3, 4]
    if not compression:
        assert _step(ds.x) == pytest.approx(0.2) and ds.x.attrs["units"] == "nm"
        assert ds.time.values.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_overwrite(tmp_path, rng):
    src = tmp_path / "b.npz"
    np.savez(src, HAADF=rng.random((4, 4)), O=rng.random((4, 4)))
    out = ingest(src, tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        ingest(src, out)
    assert ingest(src, out, overwrite=True) == out


# -- bad input -------------------------------------------------------------------------


def test_npy_image_and_movie_from_a_notebook(tmp_path, rng):
    image = rng.poisson(30, (40, 48)).astype(np.uint16)
    np.save(tmp_path / "frame.npy", image)
    ds = _roundtrip(tmp_path / "frame.npy", tmp_path)
    assert ds.haadf.dims == ("y", "x") and ds.y.attrs["units"] == "px"
    np.testing.assert_array_equal(ds.haadf.values, image)
    frames = np.asfortranarray(rng.normal(size=(3, 20, 24)).astype(">f4"))  # big-endian, Fortran order
    np.save(tmp_path / "movie.npy", frames)
    movie = read(tmp_path / "movie.npy").movie
    assert movie.dims == ("frame", "y", "x") and movie.dtype == np.float32
    np.testing.assert_array_equal(movie.values, frames.astype(np.float32))
    np.save(tmp_path / "spectrum.npy", np.ones((4, 5, 6, 7)))
    with pytest.raises(IngestError, match=r"\(4, 5, 6, 7\).*Save other data with names: np\.savez"):
        read(tmp_path / "spectrum.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IngestError, match="Python objects"):
        read(tmp_path / "objects.npy")
    with pytest.raises(IngestError, match="no element or spectrum names"):
        read(tmp_path / "frame.npy", elements=["Fe"])


def test_an_archive_without_emfuse_names_says_which_names_to_use(tmp_path, rng):
    np.savez(tmp_path / "image.npz", image=rng.normal(size=(16, 16)))
    with (pytest.warns(IngestWarning, match=r"'image' \(16, 16\): not a canonical name"),
          pytest.raises(IngestError, match=r"haadf \(y, x\) for an image.*np\.savez\(path, haadf=image\)")):
        read(tmp_path / "image.npz")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read(tmp_path / "nothing.npz")
    other = tmp_path / "data.xyz"
    other.write_bytes(b"1234")
    with pytest.raises(IngestError, match=r"data\.xyz.*'\.xyz' is not a supported format.*\.npz"):
        read(other)
    assert ".bcf" in SUPPORTED_SUFFIXES and ".tiff" in SUPPORTED_SUFFIXES


@pytest.mark.parametrize(
    "folder, name",
    [("fusion", "PTO_Trilayer_dataset.npz"), ("fusion", "Co3O4_Mn3O4.h5"),
     ("formats", "test_TEM.bcf"), ("formats", VELOX_16), ("formats", "EELS_SI.dm4")],
)  # fmt: skip
def test_truncated_files(tmp_path, folder, name):
    src = DATA / folder / name
    if not src.is_file():
        pytest.skip(f"{src} not found")
    bad = _truncated(src, tmp_path)
    with pytest.raises(IngestError, match=r"truncated") as info:
        ingest(bad, tmp_path / "out.zarr")
    assert bad.name in str(info.value)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".h5", ".tif", ".bcf", ".emd", ".dm4", ".ser"])
def test_garbage_bytes(tmp_path, suffix):
    bad = tmp_path / f"garbage{suffix}"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(IngestError, match=rf"garbage\{suffix}"):
        read(bad)


def test_corrupt_data_found_while_writing(tmp_path, rng):
    """A member whose header reads fine but whose compressed data are damaged fails at
    write time; the error still names the file and no partial store is left."""
    src = tmp_path / "c.npz"
    np.savez_compressed(src, HAADF=rng.random((200, 200)), O=rng.random((200, 200)))
    data = bytearray(src.read_bytes())
    for i in range(150_000, 150_400):  # deep in the first member's data, past its header
        data[i] ^= 0xFF
    src.write_bytes(bytes(data))
    with pytest.raises(IngestError, match=r"c\.npz.*failed while writing"):
        ingest(src, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_unknown_elements(tmp_path, rng):
    src = tmp_path / "a.npz"
    np.savez(src, haadf=rng.random((8, 8)), maps=rng.random((2, 8, 8)))
    with pytest.raises(IngestError, match=r"'Xx' is not a known element symbol"):
        read(src, elements=["Sc", "Xx"])
    with pytest.raises(IngestError, match=r"no element names.*elements="):
        read(src)
    with pytest.raises(IngestError, match=r"3 element names .* for 2 element maps"):
        read(src, elements="Sc,Dy,O")
    src_b = tmp_path / "b.npz"
    np.savez(src_b, HAADF=rng.random((8, 8)), Qq=rng.random((8, 8)))
    with pytest.raises(IngestError, match=r"'Qq' is not a known element symbol"):
        read(src_b)


def test_shape_mismatch_and_wrong_dimensions(tmp_path, rng):
    src = tmp_path / "mismatch.npz"
    np.savez(src, haadf=rng.random((8, 8)), maps=rng.random((2, 8, 9)))
    with pytest.raises(IngestError, match=r"mismatch\.npz.*\(y, x\) shape \(8, 9\).*\(8, 8\)"):
        read(src, elements=["Sc", "O"])
    flat = tmp_path / "flat.npz"
    np.savez(flat, haadf=rng.random(64))
    with pytest.raises(IngestError, match=r"shape \(64,\) \(1 dimension\(s\)\); a 2D image"):
        read(flat)
    cube = tmp_path / "cube.tif"
    tifffile.imwrite(cube, np.zeros((2, 3, 4, 5), np.uint8), photometric="minisblack")
    with pytest.raises(IngestError, match=r"4 dimension\(s\)"):
        read(cube)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(IngestError, match=r"multi-sample \(colour\) image"):
        read(rgb)


def test_bad_signal_type(tmp_path, rng, formats):
    src = tmp_path / "b.npz"
    np.savez(src, HAADF=rng.random((4, 4)), O=rng.random((4, 4)))
    with pytest.raises(IngestError, match=r"signal_type 'XPS' is not known.*EDX"):
        read(src, signal_type="XPS")
    with pytest.raises(IngestError, match=r"'EELS' was asked for.*\['EDX'\]"):
        read(formats / "test_TEM.bcf", signal_type="EELS")


def test_unwritable_output(tmp_path, rng):
    src = tmp_path / "b.npz"
    np.savez(src, HAADF=rng.random((4, 4)), O=rng.random((4, 4)))
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a directory")
    with pytest.raises(OutputNotWritable, match="afile"):
        ingest(src, blocker / "out.zarr")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a 0o500 directory stays writable")
        with pytest.raises(OutputNotWritable, match="not writable"):
            ingest(src, locked / "out.zarr")
    finally:
        locked.chmod(0o700)


# -- lazy reading ------------------------------------------------------------------------


def _record_reads(monkeypatch) -> list[int]:
    """Bytes of every slice the lazy file arrays hand to Dask."""
    sizes: list[int] = []
    original = FileArray.__getitem__

    def recording(self, key):
        out = original(self, key)
        sizes.append(out.nbytes)
        return out

    monkeypatch.setattr(FileArray, "__getitem__", recording)
    return sizes


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_spectrum_image_streams_chunk_by_chunk(tmp_path, monkeypatch, suffix):
    shape = (256, 192, 64)  # 12 chunks of (64, 64, 64)
    spectrum = (np.arange(np.prod(shape)) % 251).astype(np.uint16).reshape(shape)
    energy = np.arange(64) * 10.0
    src = tmp_path / f"big{suffix}"
    if suffix == ".h5":
        with h5py.File(src, "w") as fh:
            fh["spectrum"], fh["energy"] = spectrum, energy
    else:
        np.savez(src, spectrum=spectrum, energy=energy)
    ds = read(src)
    assert isinstance(ds.spectrum.data, da.Array)
    assert ds.spectrum.data.chunksize == (64, 64, 64)
    assert chunk_canonical(ds).spectrum.data.chunks == ds.spectrum.data.chunks
    reads = _record_reads(monkeypatch)
    out = ingest(src, tmp_path / "big.zarr")
    assert len(reads) == 12 and max(reads) == 64 * 64 * 64 * 2  # one chunk per read
    assert zarr.open_array(str(out / "spectrum"), mode="r").chunks == (64, 64, 64)
    np.testing.assert_array_equal(zarrio.open_dataset(out).spectrum.values, spectrum)


def test_truncated_bcf_copy_is_not_left_behind(formats, tmp_path):
    bad = tmp_path / "copy.bcf"
    shutil.copy(formats / "test_TEM.bcf", bad)
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size - 1)
    with pytest.raises(IngestError, match=r"header declares"):
        read(bad)


def test_tiff_fei_pixel_size(tmp_path):
    src = tmp_path / "sem.tif"
    fei = "[Scan]\nPixelWidth=2.5e-009\nPixelHeight=2.6e-009\n"  # metres, as FEI software writes
    tifffile.imwrite(src, np.zeros((6, 5), np.uint16), extratags=[(34682, "s", 0, fei, True)])
    ds = read(src)
    assert _step(ds.x) == pytest.approx(2.5) and _step(ds.y) == pytest.approx(2.6)


def test_compressed_npz_is_read_in_canonical_chunks(tmp_path, rng):
    src = tmp_path / "z.npz"
    np.savez_compressed(src, spectrum=rng.integers(0, 9, (130, 70, 16)), energy=np.arange(16.0))
    ds = read(src, elements=["Fe"])  # element names for a later quantification: not an error
    assert ds.spectrum.data.chunks == ((64, 64, 2), (64, 6), (16,))


def test_npz_bundle_element_selection_and_z_check(fusion, tmp_path, rng):
    ds = read(fusion / "dysco3_edx_tutorial.npz", elements=["O", "Sc"])
    assert ds.element.values.tolist() == ["O", "Sc"] and ds.z.values.tolist() == [8, 21]
    with np.load(fusion / "dysco3_edx_tutorial.npz", allow_pickle=False) as raw:
        np.testing.assert_array_equal(ds.maps.values[0], raw["chem"][2])
    with pytest.raises(IngestError, match=r"no map for element\(s\) \['Fe'\]|\['Fe'\] asked for"):
        read(fusion / "dysco3_edx_tutorial.npz", elements=["Fe"])
    src = tmp_path / "wrong_z.npz"
    np.savez(
        src, haadf=rng.random((4, 4)), maps=rng.random((2, 4, 4)), elements=["Sc", "O"], z=[8, 21]
    )
    with pytest.raises(IngestError, match=r"stored z \[8, 21\] disagree"):
        read(src)
