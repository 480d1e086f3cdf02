"""``emfuse ingest-modes`` (stores/modes.py): BF, DF and HRTEM images from real instrument files
(../shared/data/formats) into a modes store, its refusals, and the store through ``tem-fuse``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emfuse.flows.cli import main
from emfuse.flows.jobs import run_job
from emfuse.stores.errors import IngestError, ModesInputError, StoreError
from emfuse.stores.ingest import read
from emfuse.stores.modes import _stage_warnings, ingest_modes, read_mode
from emfuse.stores.warn import read_warnings
from emfuse.stores.zarrio import is_complete, open_dataset, sha256_file

EMI = "128x128_TEM_acquire-sum1.emi"  # a 128 x 128 int32 Ceta TEM frame, 21.5 nm pixels, with zeros and negatives
SER = "128x128_TEM_acquire-sum1_1.ser"  # the same frame through its .ser
BRUKER = "bcf_v2_50x50px.bcf"  # images 'Ch 1' (50, 50) > 0 and (825, 1100), a spectrum image
STACK = "fei_example_tem_stack.emd"  # a Ceta stack (2, 3, 3)


@pytest.fixture(scope="module")
def frame_store(formats, tmp_path_factory) -> Path:
    """The TEM frame as all three modes: bf and hrtem from the .emi, df from the .ser."""
    images = {"bf": formats / EMI, "df": formats / SER, "hrtem": formats / EMI}
    return ingest_modes(images, tmp_path_factory.mktemp("modes") / "modes.zarr")


def test_the_store_has_the_modes_their_pixel_size_and_each_files_record(formats, frame_store):
    ds = open_dataset(frame_store)
    assert is_complete(frame_store) and ds.modes.dims == ("mode", "y", "x")
    assert list(ds.mode.values) == ["bf", "df", "hrtem"] and ds.modes.shape == (3, 128, 128)
    frame = read(formats / EMI).haadf.values
    np.testing.assert_array_equal(ds.modes.sel(mode="hrtem").values, frame.astype(np.float32))
    assert ds.y.attrs["units"] == "nm" and float(ds.x[1] - ds.x[0]) == pytest.approx(21.479, abs=1e-3)
    assert ds.modes.attrs["units"] == "counts" and "flat_reference" not in ds
    sources = ds.modes.attrs["sources"]
    assert sources["df"]["source_path"].endswith(SER) and sources["bf"]["source_path"].endswith(EMI)
    assert sources["bf"]["source_sha256"] == sha256_file(formats / EMI)
    assert sources["df"]["source_sha256"] == sha256_file(formats / SER)
    bf = sources["bf"]
    assert bf["detector"] == "BM-Ceta" and bf["beam_energy_kev"] == 200.0 and bf["reduced"] == "image"
    assert bf["pixel_nm"] == pytest.approx([21.479, 21.479], abs=1e-3)
    assert json.loads(bf["metadata"])["Acquisition_instrument"]["TEM"]["acquisition_mode"] == "TEM"
    assert ds.attrs["source_label"] == f"BF {EMI}, DF {SER}, HRTEM {EMI}"
    assert [w["code"] for w in read_warnings(frame_store)] == ["modes-same-file"]  # bf and hrtem: one image


def test_images_of_different_shapes_are_refused_with_the_shapes_and_the_fix(formats, tmp_path):
    images = {"bf": formats / EMI, "df": formats / EMI, "hrtem": formats / "test_TEM.bcf"}  # HAADF 64 x 64
    with pytest.raises(ModesInputError, match=r"differ in shape: bf 128 x 128 px \(.*hrtem 64 x 64 px "
                                              r"\(test_TEM.bcf\).*--bin bf=2 --bin df=2"):
        ingest_modes(images, tmp_path / "m.zarr")
    # binned, the shapes agree, but the files say 43 nm against 0.77 nm pixels
    with pytest.raises(ModesInputError, match=r"pixel sizes differ: bf \(.*\) 42.96 x 42.96 nm, hrtem "
                                              r"\(test_TEM.bcf\) 0.771 x 0.771 nm"):
        ingest_modes(images, tmp_path / "m.zarr", bins={"bf": 2, "df": 2})
    assert not (tmp_path / "m.zarr").exists()


def test_a_flat_reference_with_zeros_and_negatives_is_refused(formats, tmp_path):
    images = {m: formats / EMI for m in ("bf", "df", "hrtem")}
    flats = {"bf": formats / EMI, "df": "uniform", "hrtem": "uniform"}  # the frame is dark-subtracted: <= 0 at places
    with pytest.raises(ModesInputError, match=r"flat reference of bf \(128x128.*\) has \d+ pixels <= 0 .*"
                                              r"smallest -473.*must be > 0 everywhere"):
        ingest_modes(images, tmp_path / "m.zarr", flats=flats)
    with pytest.raises(ModesInputError, match=r"flat reference of bf \(test_TEM.bcf\) is 64 x 64 px, its image "
                                              r"\(128x128.*\) 128 x 128 px: record the reference with the same"):
        ingest_modes(images, tmp_path / "m.zarr", flats={**flats, "bf": formats / "test_TEM.bcf"})


def test_flat_references_some_modes_only_and_a_missing_mode_are_refused(formats, tmp_path):
    images = {m: formats / EMI for m in ("bf", "df", "hrtem")}
    with pytest.raises(ModesInputError, match="flat references for bf but not for df, hrtem.*--flat-df uniform"):
        ingest_modes(images, tmp_path / "m.zarr", flats={"bf": formats / EMI})
    with pytest.raises(ModesInputError, match="no DF image.*Give --df FILE"):
        ingest_modes({"bf": formats / EMI, "hrtem": formats / EMI}, tmp_path / "m.zarr")
    with pytest.raises(ModesInputError, match=r"unknown mode\(s\) \['haadf'\] for --bin"):
        ingest_modes(images, tmp_path / "m.zarr", bins={"haadf": 2})


def test_a_file_with_several_images_needs_signal_and_a_flat_reference_is_kept(formats, tmp_path):
    images = {m: formats / BRUKER for m in ("bf", "df", "hrtem")}
    with pytest.raises(IngestError, match=r"holds 2 images .*\[0\] 'Ch 1' \(50, 50\); \[1\] 'Ch 1' \(825, 1100\)"
                                          r".*--signal MODE=INDEX"):
        ingest_modes(images, tmp_path / "m.zarr")
    with pytest.raises(IngestError, match=r"2 images are titled 'Ch 1'"):
        ingest_modes(images, tmp_path / "m.zarr", signals={"bf": "Ch 1"})
    signals = {"bf": 0, "df": "0", "hrtem": 0, "flat-bf": 0}
    out = ingest_modes(images, tmp_path / "m.zarr", signals=signals,
                       flats={"bf": formats / BRUKER, "df": "uniform", "hrtem": "uniform"})
    ds = open_dataset(out)
    assert ds.flat_reference.dims == ("mode", "y", "x") and ds.flat_reference.shape == (3, 50, 50)
    np.testing.assert_array_equal(ds.flat_reference.sel(mode="bf").values, ds.modes.sel(mode="bf").values)
    assert (ds.flat_reference.sel(mode=["df", "hrtem"]).values == 1).all()
    flat_sources = ds.flat_reference.attrs["sources"]
    assert flat_sources["df"]["uniform"] and flat_sources["bf"]["source_sha256"] == sha256_file(formats / BRUKER)
    assert ds.modes.attrs["sources"]["df"]["signal"] == 0 and ds.modes.attrs["sources"]["df"]["title"] == "Ch 1"
    with pytest.raises(StoreError, match="already exists"):
        ingest_modes(images, out, signals=signals)


def test_a_stack_is_summed_or_one_frame_taken(formats, tmp_path):
    images = {m: formats / STACK for m in ("bf", "df", "hrtem")}
    movie = read(formats / STACK).movie.values
    out = ingest_modes(images, tmp_path / "sum.zarr")
    np.testing.assert_array_equal(open_dataset(out).modes.sel(mode="df").values, movie.sum(0))
    assert open_dataset(out).modes.attrs["sources"]["df"]["reduced"] == "sum of 2 frames"
    out = ingest_modes(images, tmp_path / "one.zarr", frame=1)
    np.testing.assert_array_equal(open_dataset(out).modes.sel(mode="hrtem").values, movie[1])
    with pytest.raises(ModesInputError, match=r"--frame 2, but the stack has frames 0 to 1"):
        ingest_modes(images, tmp_path / "two.zarr", frame=2)


def test_nan_pixels_and_a_blank_image_are_refused(formats, tmp_path):
    frame = read(formats / EMI).haadf.values.astype(np.float32)
    bad, blank = frame.copy(), np.zeros_like(frame)
    bad[3, 5] = np.nan
    tifffile.imwrite(tmp_path / "bad.tif", bad)
    tifffile.imwrite(tmp_path / "blank.tif", blank)
    images = {"bf": tmp_path / "bad.tif", "df": formats / EMI, "hrtem": formats / EMI}
    with pytest.raises(ModesInputError, match=r"bf image \(bad.tif\) has 1 NaN or Inf pixels of 16384"):
        ingest_modes(images, tmp_path / "m.zarr")
    with pytest.raises(ModesInputError, match=r"df image \(blank.tif\) is 0 everywhere: no signal"):
        ingest_modes({**images, "bf": formats / EMI, "df": tmp_path / "blank.tif"}, tmp_path / "m.zarr")
    tifffile.imwrite(tmp_path / "good.tif", frame)  # no pixel size: a warning, not an error
    out = ingest_modes({**images, "bf": tmp_path / "good.tif"}, tmp_path / "m.zarr")
    (warning,) = [w for w in read_warnings(out) if w["code"] == "modes-uncalibrated"]
    assert warning["message"].startswith("bf (good.tif): no pixel size in the file")


def test_stage_positions_far_apart_are_a_warning(formats):
    bf, hrtem = read_mode("bf", formats / EMI), read_mode("hrtem", formats / EMI)
    assert _stage_warnings([bf, bf, hrtem]) == []  # the same position
    metadata = json.loads(bf.source["metadata"])
    metadata["Acquisition_instrument"]["TEM"]["Stage"]["x"] += 0.005  # mm: 5 um, the field is 2.7 um
    bf.source["metadata"] = json.dumps(metadata)
    (warning,) = _stage_warnings([bf, hrtem, hrtem])
    assert warning["code"] == "modes-stage-apart" and warning["distance_nm"] == pytest.approx(5000)
    assert "within 8 px (172 nm here)" in warning["message"]


def test_the_command_line_writes_the_store_and_names_a_bad_option(formats, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    argv = ["ingest-modes", "--bf", str(formats / EMI), "--df", str(formats / SER), "--hrtem", str(formats / EMI),
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "check: hrtem" in printed and "trained on simulated data only" in printed
    assert list(open_dataset(out).mode.values) == ["bf", "df", "hrtem"]
    assert main([*argv[:-2], "--bin", "hrtem", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "bad --bin 'hrtem'; write it as MODE=VALUE" in capsys.readouterr().err
    assert main([*argv[:-2], "--flat-bf", "uniform", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "flat references for bf but not for df, hrtem" in capsys.readouterr().err
    assert main([*argv[:-2], *(f"--flat-{m}=uniform" for m in ("bf", "df", "hrtem")), "--signal", "HRTEM=0",
                 "--out", str(tmp_path / "flat.zarr")]) == 0
    assert (open_dataset(tmp_path / "flat.zarr").flat_reference.values == 1).all()


def test_tem_fuse_completes_on_the_store_of_real_files(formats, frame_store, tmp_path, client):
    job = run_job("tem-fuse", str(frame_store), str(tmp_path / "fused.zarr"), client, progress=False, tile=64,
                  halo=16)
    result = open_dataset(job.out)
    assert is_complete(job.out) and result.tem_fused.shape == (128, 128) and not job.flat_reference
    assert np.isfinite(result.tem_fused.values).all()
    np.testing.assert_allclose(result.attention.sum("mode").values, 1, atol=1e-5)
    assert result.modes.attrs["sources"]["hrtem"]["source_sha256"] == sha256_file(formats / EMI)


def test_tem_fuse_refuses_modes_too_small_naming_the_minimum(formats, tmp_path, capsys):
    images = {m: formats / STACK for m in ("bf", "df", "hrtem")}  # the Ceta stack: 3 x 3 px
    store = ingest_modes(images, tmp_path / "tiny.zarr")
    assert main(["tem-fuse", str(store), "--out", str(tmp_path / "t.zarr"), "--cluster", "local-threads"]) == 2
    err = capsys.readouterr().err
    assert "are 3 x 3 px, smaller than tem-fuse can use: it needs at least 16 x 16 px" in err
    assert "wiener_filter" not in err and not (tmp_path / "t.zarr").exists()
