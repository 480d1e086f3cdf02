"""Bad input, one case at a time: every case gets one error that names the file or dataset, the
problem and the fix, and leaves no store behind or none marked complete (docs/errors.md).

Covered here: truncated and corrupt copies of the real instrument files (.bcf .emd .dm3 .dm4
.emi/.ser .tif .h5 .npz), a spectrum image without a (calibrated) energy axis, zero dose for
each job, model names that do not exist, a full disk (simulated) during a job and an ingest,
and an unwritable output for all three jobs. The command-line cases are in test_cli.py, the
array checks in test_fusion.py, test_spectra.py and test_elements.py.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import restore as restore_job
from emfuse.flows.jobs import run_job, runner
from emfuse.flows.jobs import tem_fuse as tem_fuse_job
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.elements import DuplicateElement
from emfuse.pipeline.fusion import FusionInputError
from emfuse.pipeline.spectra import SpectrumError, WindowError
from emfuse.stores.errors import DiskFull, IngestError, OutputNotWritable
from emfuse.stores.formats import IngestWarning
from emfuse.stores.ingest import ingest
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import is_complete, open_dataset, write_dataset

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FORMATS = DATA / "formats"
FUSION = DATA / "fusion"
TIA = ("128x128_TEM_acquire-sum1.emi", "128x128_TEM_acquire-sum1_1.ser")  # a pair: .emi names the .ser
FIX = re.compile(r"copy|export|acquire|save|store|calibrate", re.IGNORECASE)  # every message ends with a fix


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not found (clone ../shared beside the checkout)")
    return path


def _damaged_copy(src: Path, folder: Path, *, keep: float | None = None,
                  at: int | None = None, fill: bytes | None = None) -> Path:
    """A copy of ``src`` in ``folder``: the first ``keep`` fraction of its bytes (truncated), or
    64 bytes at ``at`` replaced by ``fill`` (corrupt). A TIA .emi/.ser keeps its partner beside it."""
    if src.name in TIA:
        for name in TIA:
            shutil.copy(src.parent / name, folder / name)
    data = bytearray(src.read_bytes())
    if keep is not None:
        data = data[: int(len(data) * keep)]
    if at is not None:
        data[at : at + 64] = (fill or b"\xff" * 64)[:64]
    bad = folder / src.name
    bad.write_bytes(bytes(data))
    return bad


def _assert_refused(bad: Path, out: Path, problem: str) -> str:
    """ingest(bad) raises an IngestError naming the file, the problem and a fix; no store is left."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)
        with pytest.raises(IngestError) as info:
            ingest(bad, out)
    message = str(info.value)
    assert message.startswith(f"cannot ingest {bad}: "), message
    assert re.search(problem, message), message
    assert FIX.search(message.split(": ", 1)[1]), message
    assert not out.exists(), "a partial store was left behind"
    return message


@pytest.fixture(scope="module")
def real_tiffs(tmp_path_factory) -> dict[str, Path]:
    """TIFFs of a real HAADF (the PTO tutorial's): an image, an ImageJ stack, a compressed stack."""
    with np.load(_need(FUSION / "PTO_Trilayer_dataset.npz")) as f:
        haadf = f["HAADF"].astype(np.float32)
    folder = tmp_path_factory.mktemp("tiff")
    stack = np.stack([haadf, np.roll(haadf, 3, axis=1), np.roll(haadf, 6, axis=1)])
    paths = {"image": folder / "haadf.tif", "imagej": folder / "stack_imagej.tif",
             "zlib": folder / "stack_zlib.tif"}
    tifffile.imwrite(paths["image"], haadf)
    tifffile.imwrite(paths["imagej"], stack, imagej=True)
    tifffile.imwrite(paths["zlib"], stack, compression="zlib", photometric="minisblack")
    return paths


# -- truncated and corrupt instrument files -------------------------------------------------------

# a file with several spectrum images is refused until one is chosen: choose, so its data are read
INGEST_OPTIONS = {"example_velox_EELS_EDS.emd": {"signal": 17}}
INSTRUMENT_FILES = [
    "test_TEM.bcf", "bcf_v2_50x50px.bcf", "Test SI 16x16 215 kx.emd", "example_velox_EELS_EDS.emd",
    "fei_example_tem_stack.emd", "example_image.emd", "EELS_SI.dm4", "test-1.dm3", "test-1.dm4", *TIA,
]


@pytest.mark.parametrize("name", [*INSTRUMENT_FILES, "Co3O4_Mn3O4.h5", "PTO_Trilayer_dataset.npz"])
def test_truncated_instrument_file(tmp_path, name):
    src = _need((FUSION if name.endswith((".h5", ".npz")) else FORMATS) / name)
    bad = _damaged_copy(src, tmp_path, keep=0.5)
    _assert_refused(bad, tmp_path / "out.zarr", "truncated")


@pytest.mark.parametrize("name", [n for n in INSTRUMENT_FILES if n != TIA[0]] + ["Co3O4_Mn3O4.h5",
                                                                                  "PTO_Trilayer_dataset.npz"])
def test_corrupt_header(tmp_path, name):
    """The first 64 bytes overwritten (the .emi is left out: RosettaSciIO reads the image from
    the .ser and does not need the .emi's header)."""
    src = _need((FUSION if name.endswith((".h5", ".npz")) else FORMATS) / name)
    bad = _damaged_copy(src, tmp_path, at=0)
    _assert_refused(bad, tmp_path / "out.zarr", "corrupt")


@pytest.mark.parametrize("kind", ["image", "imagej", "zlib"])
def test_truncated_tiff(tmp_path, real_tiffs, kind):
    """A stack cut short loses its last pages' directories; tifffile then shows the first page
    alone, which used to be ingested silently as one image (the ImageJ header says 3)."""
    bad = _damaged_copy(real_tiffs[kind], tmp_path, keep=0.5)
    message = _assert_refused(bad, tmp_path / "out.zarr", "truncated or corrupt")
    if kind == "imagej":
        assert "declares 3 images, but the file holds only 1" in message


def test_corrupt_tiff_header(tmp_path, real_tiffs):
    bad = _damaged_copy(real_tiffs["image"], tmp_path, at=0)
    _assert_refused(bad, tmp_path / "out.zarr", r"tifffile cannot read it \(TiffFileError: not a TIFF file.*\); "
                                                r"the file is truncated or corrupt\. Copy or export the file again")


def test_corrupt_tiff_data_found_while_writing(tmp_path, real_tiffs):
    src = real_tiffs["zlib"]
    bad = _damaged_copy(src, tmp_path, at=src.stat().st_size // 2)  # inside the compressed page data
    _assert_refused(bad, tmp_path / "out.zarr", r"reading its data failed while writing .*corrupt")


def _random_corruption(src: Path, folder: Path, position: int, draw: int) -> Path:
    """64 random bytes (draw number ``draw`` of default_rng(0)) at ``position``."""
    rng = np.random.default_rng(0)
    fills = [rng.integers(0, 256, 64, dtype=np.uint8).tobytes() for _ in range(draw + 1)]
    return _damaged_copy(src, folder, at=position, fill=fills[draw])


@pytest.mark.parametrize("name, position, draw, raw", [
    ("Co3O4_Mn3O4.h5", 1024, 4, RuntimeError),  # HDF5: "bad symbol table node signature"
    ("PTO_Trilayer_dataset.npz", 1049061, 6, Exception),  # a mangled .npy header: tokenize.TokenError
])  # fmt: skip
def test_reader_library_errors_are_named(tmp_path, name, position, draw, raw):
    """Damage that made h5py / numpy raise their own exceptions (RuntimeError, TokenError), which
    used to leak from ingest unnamed; now they are an IngestError naming the file."""
    src = _need(FUSION / name)
    bad = _random_corruption(src, tmp_path, position, draw)
    module = importlib.import_module(f"emfuse.stores.formats.{'hdf5' if name.endswith('.h5') else 'npz'}")
    with pytest.raises(raw) as info:  # the reader alone: what the library raises
        module.read(bad)
    assert not isinstance(info.value, IngestError)
    _assert_refused(bad, tmp_path / "out.zarr", r"reader failed \(\w+: .*\); the file is truncated or corrupt")


BCF_CRASH = 0.75  # 64 bytes of 0xFF here make rsciio's compiled decoder write outside its array


def test_corrupt_bcf_that_crashes_the_decoder_is_an_error(tmp_path):
    """Corrupt pixel headers in a Bruker hypermap make RosettaSciIO's compiled decoder (no bounds
    checks) kill its process with SIGBUS/SIGSEGV: in a batch that would end the whole night. The
    decoder runs in a child process, so the same file is one IngestError."""
    from emfuse.stores.ingest import read

    src = _need(FORMATS / "test_TEM.bcf")
    bad = _damaged_copy(src, tmp_path, at=int(src.stat().st_size * BCF_CRASH))
    control = subprocess.run(  # RosettaSciIO alone, in a process of its own: it dies
        [sys.executable, "-c", "import sys; from rsciio.bruker import file_reader; "
         "file_reader(sys.argv[1], select_type='spectrum_image', lazy=False)", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    if control.returncode >= 0:
        pytest.skip(f"this corruption does not crash the decoder here (exit {control.returncode})")
    # the spectrum image must come from the child-process decoder (emfuse.stores.formats.FileArray graphs are
    # named emfuse-read-*), else the ingest below would take pytest down with it
    graph = read(bad).spectrum.data.__dask_graph__()
    assert any(str(k[0] if isinstance(k, tuple) else k).startswith("emfuse-read-") for k in graph)
    message = _assert_refused(bad, tmp_path / "out.zarr", "decoding its spectrum image crashed RosettaSciIO's "
                                                          r"Bruker decoder \(SIG\w+\): the file is corrupt")
    assert message.endswith("Copy the file again from the acquisition PC (or export it again from Esprit)")


def test_corrupt_bcf_data_is_named(tmp_path):
    """Damage inside a compressed hypermap block: found when the data are decoded (at write time)."""
    src = _need(FORMATS / "bcf_v2_50x50px.bcf")
    bad = _random_corruption(src, tmp_path, 3 * src.stat().st_size // 4, 7)
    _assert_refused(bad, tmp_path / "out.zarr", r"decoding its spectrum image failed \(.*\); the file is "
                                                r"truncated or corrupt")


def test_bcf_still_reads_the_same_through_the_child_decoder():
    from rsciio.bruker import file_reader

    from emfuse.stores.ingest import read

    src = _need(FORMATS / "test_TEM.bcf")
    np.testing.assert_array_equal(read(src).spectrum.values, file_reader(str(src))[1]["data"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [*INSTRUMENT_FILES, "Co3O4_Mn3O4.h5", "PTO_Trilayer_dataset.npz"])
def test_damage_anywhere_is_read_or_named(tmp_path, name):
    """64 random bytes at ten places: the file is read (damage in raw pixel data cannot be seen)
    or refused with an IngestError naming it; never another exception, a crash or a partial store."""
    src = _need((FUSION if name.endswith((".h5", ".npz")) else FORMATS) / name)
    n = src.stat().st_size
    for draw, position in enumerate((0, 16, 64, 256, 1024, n // 4, n // 2, 3 * n // 4, n - 512, n - 64)):
        folder = tmp_path / str(draw)
        folder.mkdir()
        bad = _random_corruption(src, folder, max(0, min(position, n - 64)), draw)
        out = folder / "out.zarr"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", IngestWarning)
                ingest(bad, out, **INGEST_OPTIONS.get(name, {}))
        except IngestError as exc:
            assert str(exc).startswith(f"cannot ingest {bad}: ") and FIX.search(str(exc)), exc
            assert not out.exists()
        else:
            assert is_complete(out)


# -- a spectrum image without a (calibrated) energy axis -------------------------------------------


def test_spectrum_without_energy_axis(tmp_path):
    src = tmp_path / "si.npz"
    np.savez(src, haadf=np.ones((8, 8)), spectrum=np.ones((8, 8, 32), np.uint16))
    _assert_refused(src, tmp_path / "out.zarr", r"the spectrum image \(8, 8, 32\) has no 'energy' array\. "
                                                r"Store 'energy' \(eV, one value per channel\)")


def test_dm_spectrum_image_with_uncalibrated_energy_axis(tmp_path):
    """EELS_SI.dm4 with its energy unit ('eV', UTF-16 in the DM tags) changed to 'xx': the file
    still says EELS, but none of its axes is in eV. It used to be ingested as a 2048-frame movie."""
    from rsciio.digitalmicrograph import file_reader

    src = _need(FORMATS / "EELS_SI.dm4")
    data = src.read_bytes()
    at = data.index("eV".encode("utf-16-le"))  # the first one is the energy axis' unit
    bad = tmp_path / "EELS_SI.dm4"
    bad.write_bytes(data[:at] + "xx".encode("utf-16-le") + data[at + 4 :])
    signal = file_reader(str(bad))[0]
    assert signal["axes"][0]["units"] == "xx" and signal["metadata"]["Signal"]["signal_type"] == "EELS"
    message = _assert_refused(bad, tmp_path / "out.zarr", "has no calibrated energy axis")
    assert "EELS spectrum image 'EELS_SI' (2048, 2, 2)" in message and "'z' in 'xx'" in message
    assert "Calibrate the energy axis (eV)" in message


def test_energy_axis_in_unknown_units():
    """An axis named like energy, in a unit that is not eV or keV (it used to fail with a bare
    TypeError: the unit's factor was None)."""
    from emfuse.stores.formats import rsciio

    raw = {"data": np.zeros((4, 5, 16)), "metadata": {"General": {"title": "SI"}, "Signal": {"signal_type": "EELS"}},
           "axes": [{"name": "y", "size": 4, "units": "nm"}, {"name": "x", "size": 5, "units": "nm"},
                    {"name": "Energy loss", "size": 16, "units": "channel"}]}
    path = Path("si.dm4")
    with pytest.raises(IngestError, match=r"^cannot ingest si\.dm4: its EELS spectrum image 'SI' \(4, 5, 16\) has no "
                                          r"calibrated energy axis: its energy axis 'Energy loss' has the unit "
                                          r"'channel', not eV or keV, .*Calibrate the energy axis \(eV\)"):
        rsciio._assemble(path, [rsciio._classify(path, raw)], None, None)


def _si_store(tmp_path: Path, energy: np.ndarray, spectrum: np.ndarray | None = None,
              name: str = "si") -> Path:
    spectrum = np.ones((16, 16, energy.size), np.uint16) if spectrum is None else spectrum
    src = tmp_path / f"{name}.npz"
    np.savez(src, haadf=np.random.default_rng(0).random((16, 16)) + 1, spectrum=spectrum, energy=energy)
    return ingest(src, tmp_path / f"{name}.zarr")


@pytest.mark.parametrize("case, elements, error, message", [
    ("uncalibrated", ["Fe"], SpectrumError, r"energy_ev is constant \(0 eV in every channel\): the energy "
                                            r"axis is not calibrated; give the energy \(eV\)"),
    ("descending", ["Fe"], SpectrumError, r"energy_ev is decreasing: reverse the energy axis"),
    ("out of range", ["Au"], WindowError, r"Au has no usable EDX line inside -5-635 eV \(lines in the table: "
                                          r"\{.*\}\); pass an explicit energy window for it"),
    ("duplicated", ["Fe", "Fe"], DuplicateElement, r"element 'Fe' is given more than once"),
])  # fmt: skip
def test_energy_axis_problems_name_the_dataset(tmp_path, case, elements, error, message):
    energy = {"uncalibrated": np.zeros(64), "descending": np.arange(64)[::-1] * 20.0,
              "out of range": np.arange(64) * 10.0, "duplicated": np.arange(64) * 200.0}[case]
    store = _si_store(tmp_path, energy)
    out = tmp_path / "out.zarr"
    with pytest.raises(error, match=message) as info:
        fusion_job.plan(store, out, elements=elements)
    assert str(info.value).startswith(f"{store}: ")  # the dataset, then the problem and its fix
    assert not out.exists()


# -- zero dose ----------------------------------------------------------------------------------------

FAST = dict(params=dict(lambda_chem=0.05, lambda_tv=0.02, n_iter=10), tile=32, halo=8)


def _maps_store(path: Path, haadf: np.ndarray, maps: np.ndarray) -> Path:
    ny, nx = haadf.shape
    elements = ["Sc", "Dy", "O"][: len(maps)]
    ds = xr.Dataset({"haadf": (("y", "x"), haadf), "maps": (("element", "y", "x"), maps)},
                    coords={"y": np.arange(ny) * 0.1, "x": np.arange(nx) * 0.1, "element": elements,
                            "z": ("element", [21, 66, 8][: len(maps)])})
    return write_dataset(ds, path)


def _good_fusion_input(shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.stack([(np.sin(xx / 5) > 0), (np.cos(yy / 7) > 0.3), np.ones(shape, bool)]).astype(float)
    haadf = 21 * truth[0] + 66 * truth[1] + 8 + rng.normal(0, 1, shape)
    return haadf, rng.poisson(3 * truth + 0.5).astype(np.float64)


@pytest.mark.parametrize("case", ["maps", "spectrum image", "haadf"])
def test_zero_dose_fusion(tmp_path, client, case):
    haadf, maps = _good_fusion_input((48, 48))
    elements = None
    if case == "maps":
        store = _maps_store(tmp_path / "zero.zarr", haadf, np.zeros_like(maps))
    elif case == "haadf":
        store = _maps_store(tmp_path / "zero.zarr", np.zeros_like(haadf), maps)
    else:
        src = tmp_path / "zero.npz"
        np.savez(src, haadf=haadf, spectrum=np.zeros((48, 48, 256), np.uint16), energy=np.arange(256) * 40.0)
        store, elements = ingest(src, tmp_path / "zero.zarr"), ["Fe", "O"]
    out = tmp_path / "out.zarr"
    with pytest.raises(FusionInputError) as info:
        run_job("fuse", store, out, client, progress=False, elements=elements, **FAST)
    message = str(info.value)
    assert message.startswith(f"{store}: ") and "zero dose" in message and "Check the acquisition" in message
    assert ("the HAADF is zero everywhere" if case == "haadf" else "holds no counts") in message
    assert not is_complete(out)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from emfuse.pipeline.restore import save_model
    from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig

    torch.manual_seed(0)
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2))
    return str(save_model(net, tmp_path_factory.mktemp("models") / "tiny.safetensors"))


def _movie_store(path: Path, movie: np.ndarray) -> Path:
    n, ny, nx = movie.shape
    ds = xr.Dataset({"movie": (("frame", "y", "x"), movie)},
                    coords={"frame": np.arange(n), "y": np.arange(ny) * 1.0, "x": np.arange(nx) * 1.0})
    return write_dataset(ds, path)


RESTORE = dict(tile=32, overlap=8, block=2)


def test_zero_dose_movie_is_refused(tmp_path, client, tiny_model):
    store = _movie_store(tmp_path / "dark.zarr", np.zeros((4, 32, 32), np.float32))
    out = tmp_path / "out.zarr"
    with pytest.raises(restore_job.RestoreInputError) as info:
        run_job("restore", store, out, client, progress=False, model=tiny_model, **RESTORE)
    assert str(info.value) == (
        f"the movie of {store} has no signal: every one of its 4 frame(s) is 0 (zero dose: the beam was "
        "blanked, the shutter closed or the camera not read out). Check the acquisition; there is nothing "
        "to restore.")
    assert not out.exists()


def test_dark_frames_are_a_warning_and_kept(tmp_path, client, tiny_model, caplog):
    """Blanked frames in a movie are legitimate: the job goes on, says which, and copies them."""
    movie = np.random.default_rng(0).poisson(50, (5, 32, 32)).astype(np.float32)
    movie[0], movie[3] = 0, 7  # blanked beam; a constant offset
    store = _movie_store(tmp_path / "blanked.zarr", movie)
    with caplog.at_level(logging.WARNING, logger="emfuse.flows.jobs.restore"):
        job = run_job("restore", store, tmp_path / "out.zarr", client, progress=False, model=tiny_model, **RESTORE)
    assert f"the movie of {store}: 2 of 5 frames are flat, with no signal (zero dose: frames 0, 3); they are " \
           "copied to the output unchanged, not restored." in caplog.text
    restored = open_dataset(job.out).restored.values
    assert is_complete(job.out)
    np.testing.assert_array_equal(restored[[0, 3]], movie[[0, 3]])
    assert not np.array_equal(restored[1], movie[1])  # the others are restored


@pytest.fixture(scope="module")
def avae_model(tmp_path_factory):
    import torch

    from emfuse.pipeline.avae.model import AVAE, AVAEConfig, save_avae

    torch.manual_seed(0)
    return save_avae(AVAE(AVAEConfig(features=4, latent=2)), tmp_path_factory.mktemp("avae") / "tiny.safetensors")


@pytest.fixture(scope="module")
def tem_store(tmp_path_factory):
    return write_synthetic("tem-modes", tmp_path_factory.mktemp("tem") / "tem.zarr", shape=(64, 64),
                           material="metal", seed=2)


def test_zero_dose_mode_for_tem_fuse(tmp_path, tem_store, avae_model):
    modes = open_dataset(tem_store)["modes"]
    data = modes.values.copy()
    data[list(modes["mode"].values).index("df")] = 0  # the DF detector was not inserted
    store = write_dataset(xr.Dataset({"modes": (modes.dims, data)}, coords=modes.coords), tmp_path / "nodf.zarr")
    out = tmp_path / "out.zarr"
    with pytest.raises(tem_fuse_job.TemFuseInputError) as info:
        tem_fuse_job.plan(store, out, model=avae_model, tile=32, halo=16)
    assert str(info.value) == (
        f"{store}: the df image is 0 everywhere: no signal (zero dose: the beam was blanked or the detector "
        "not inserted or read out). tem-fuse needs bf, df, hrtem images with signal; acquire the df image again.")
    assert not out.exists()


def test_nan_in_a_mode_for_tem_fuse(tmp_path, tem_store, avae_model):
    modes = open_dataset(tem_store)["modes"]
    data = modes.values.copy()
    data[list(modes["mode"].values).index("hrtem"), 5, 7] = np.nan
    store = write_dataset(xr.Dataset({"modes": (modes.dims, data)}, coords=modes.coords), tmp_path / "nan.zarr")
    with pytest.raises(tem_fuse_job.TemFuseInputError) as info:
        tem_fuse_job.plan(store, tmp_path / "out.zarr", model=avae_model, tile=32, halo=16)
    assert str(info.value) == (f"{store}: the hrtem image contains NaN or Inf values; mask or interpolate the "
                               "bad pixels first.")
    assert not (tmp_path / "out.zarr").exists()


# -- model names that do not exist -------------------------------------------------------------------


def _model_cases(tmp_path: Path) -> list[tuple[str, str]]:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model")
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    names = r"r_em:sfr_hrstem, r_em:sfr_lrstem, .*r_em:sfr_lrsem"
    return [
        ("r_em:nope", rf"unknown r_em model 'r_em:nope'; choose one of {names}, or give the path of a "
                      r"\.safetensors model"),
        ("r_em:sfr_hrstm", r"unknown r_em model 'r_em:sfr_hrstm' \(did you mean 'r_em:sfr_hrstem'\?\)"),
        ("nope", rf"'nope' is neither a model name \({names}\) nor an existing \.safetensors file\. Name a "
                 r"published model, or give the path of a model saved by emfuse\.pipeline\.restore\.save_model"),
        ("sfr_hrstem", r"'sfr_hrstem' \(did you mean 'r_em:sfr_hrstem'\?\) is neither a model name"),
        (str(tmp_path / "missing.safetensors"), rf"nor an existing \.safetensors file; there is no file "
                                                rf"{re.escape(str(tmp_path / 'missing.safetensors'))}\."),
        (str(tmp_path), rf"nor an existing \.safetensors file; {re.escape(str(tmp_path))} is a directory\."),
        (str(junk), rf"{re.escape(str(junk))}: not a readable safetensors file \(.*\); give a model written "
                    rf"by emfuse\.pipeline\.restore\.save_model \(emfuse train-restore\), or a published name"),
        (str(pickle), r"not a readable safetensors file \(.*\) \(a PyTorch pickle: emfuse never unpickles "
                      r"weights; load it yourself and save it with save_model\)"),
    ]


def test_model_names_that_do_not_exist(tmp_path):
    from emfuse.pipeline.restore import load_model

    for name, message in _model_cases(tmp_path):
        with pytest.raises(ValueError, match=message):
            load_model(name)


def test_restore_job_with_a_model_that_does_not_exist(tmp_path):
    store = _movie_store(tmp_path / "movie.zarr", np.random.default_rng(0).random((2, 16, 16), np.float32))
    cases = [("r_em:nope", r"unknown model 'r_em:nope'; choose one of r_em:sfr_hrstem.*or give the path"),
             ("nope", r"model 'nope' is neither a published name \(r_em:sfr_hrstem.*\) nor an existing "
                      r"\.safetensors file; check --model")]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model")
    cases.append((str(junk), rf"cannot load model '{re.escape(str(junk))}': .*not a readable safetensors "
                             r"file.*give a model written by emfuse\.pipeline\.restore\.save_model"))
    for model, message in cases:
        out = tmp_path / "out.zarr"
        with pytest.raises(restore_job.RestoreInputError, match=message):
            restore_job.plan(store, out, model=model, **RESTORE)
        assert not out.exists()


# -- a full disk (simulated) -------------------------------------------------------------------------


class FullDisk:
    """Fault injection: the disk holding ``store`` fills up after ``room`` chunk files of
    ``variable`` are written; from then on *every* file zarr writes into the store fails as the
    OS fails it, with ``OSError(ENOSPC)``, until :meth:`free` is called.

    The hook replaces ``zarr.storage._local._put``, the one function through which zarr's
    LocalStore writes a key's bytes to a file (into a temporary file renamed into place, so a
    failed write leaves no half chunk, as with a real full disk). The jobs run on a
    ``local-threads`` cluster, so the workers' writes go through it too.
    (``RLIMIT_FSIZE`` would be the other honest way, but it limits the size of each file,
    not their sum: it cannot let the first tiles through and stop the next ones.)
    """

    def __init__(self, monkeypatch, store: Path, variable: str, room: int) -> None:
        import zarr.storage._local as local

        self._real = local._put
        self.store, self.variable, self.room = Path(store).resolve(), variable, room
        self.written, self.full, self.refused = 0, False, 0
        self._lock = threading.Lock()
        monkeypatch.setattr(local, "_put", self._put)

    def _put(self, path, value, exclusive=False):
        path = Path(path).resolve()
        if self.store in path.parents:
            parts = path.relative_to(self.store).parts
            with self._lock:
                if not self.full and parts[:2] == (self.variable, "c"):
                    self.written += 1
                    self.full = self.written > self.room
                if self.full:
                    self.refused += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return self._real(path, value, exclusive=exclusive)

    def free(self) -> None:
        with self._lock:
            self.full, self.room = False, float("inf")


def _settle(client, timeout: float = 60) -> None:
    """Wait until no task of the failed run is still executing on a worker (a cancelled task that
    had started runs to its end; the scheduler no longer lists it), so the rerun does not race it.
    With the command line there is nothing to wait for: the job's cluster closes with the error."""
    def executing(dask_worker) -> int:
        return dask_worker.state.executing_count

    deadline = time.monotonic() + timeout
    while sum(client.run(executing).values()) and time.monotonic() < deadline:
        time.sleep(0.05)


def _assert_disk_full(exc: DiskFull, out: Path) -> None:
    message = str(exc)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert message.startswith(f"the disk holding {out} is full (No space left on device while writing {out}/")
    assert f"{out} is kept and not marked complete" in message
    assert "Free space on that disk (or choose another --out), then rerun the same command" in message
    assert not is_complete(out)


@pytest.fixture(scope="module")
def fusion_store(tmp_path_factory):
    haadf, maps = _good_fusion_input()
    return _maps_store(tmp_path_factory.mktemp("fusion") / "in.zarr", haadf, maps)


def test_full_disk_during_fusion_then_rerun(tmp_path, client, fusion_store, monkeypatch):
    reference = run_job("fuse", fusion_store, tmp_path / "ref.zarr", client, progress=False, **FAST)
    out = tmp_path / "cut.zarr"
    disk = FullDisk(monkeypatch, out, "fused", room=3)  # 3 of 9 tiles fit
    with pytest.raises(DiskFull) as info:
        run_job("fuse", fusion_store, out, client, progress=False, **FAST)
    _assert_disk_full(info.value, out)
    _settle(client)
    done = len(TileRecord.open(out, fusion_job.JOB).done_tiles())
    assert disk.refused > 0 and 0 < done < 9, (done, disk.refused)
    disk.free()  # space freed: the same command again
    job, state = fusion_job.plan(fusion_store, out, **FAST)
    assert state == "resume"
    norm = fusion_job.normalise(job)
    assert runner.run_units(fusion_job.SPEC, job, norm, client, progress=False) == 9 - done  # only the rest
    runner.finalise(fusion_job.SPEC, job)
    assert is_complete(out)
    a, b = open_dataset(reference.out), open_dataset(out)
    for name in ("fused", "haadf_model", "cost"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_full_disk_during_restore_then_rerun(tmp_path, client, tiny_model, monkeypatch):
    movie = np.random.default_rng(2).poisson(40, (6, 32, 32)).astype(np.float32)
    store = _movie_store(tmp_path / "movie.zarr", movie)
    reference = run_job("restore", store, tmp_path / "ref.zarr", client, progress=False, model=tiny_model, **RESTORE)
    out = tmp_path / "cut.zarr"
    disk = FullDisk(monkeypatch, out, "restored", room=1)  # one of three blocks fits
    with pytest.raises(DiskFull) as info:
        run_job("restore", store, out, client, progress=False, model=tiny_model, **RESTORE)
    _assert_disk_full(info.value, out)
    _settle(client)
    assert len(TileRecord.open(out, restore_job.JOB).done_tiles()) < 3
    disk.free()
    run_job("restore", store, out, client, progress=False, model=tiny_model, **RESTORE)
    assert is_complete(out)
    np.testing.assert_array_equal(open_dataset(out).restored.values, open_dataset(reference.out).restored.values)


def test_full_disk_during_ingest(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    src = tmp_path / "big.npz"
    np.savez(src, haadf=rng.random((1100, 1100)).astype(np.float32))  # 9 chunks of 512 x 512
    out = tmp_path / "big.zarr"
    disk = FullDisk(monkeypatch, out, "haadf", room=2)
    with pytest.raises(DiskFull) as info:
        ingest(src, out)
    message = str(info.value)
    assert message.startswith(f"the disk holding {out} is full (No space left on device while writing {out}/")
    assert f"the partial {out} was removed. Free space on that disk (or choose another --out)" in message
    assert "truncated" not in message and "corrupt" not in message  # the file is fine: not blamed
    assert not out.exists()
    disk.free()
    assert is_complete(ingest(src, out))


# -- an unwritable output directory, for every job ------------------------------------------------------


@pytest.mark.parametrize("kind", ["fuse", "restore", "tem-fuse"])
def test_unwritable_output_for_every_job(tmp_path, client, kind, fusion_store, tiny_model, tem_store, avae_model):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output directory should be")
    out = blocker / f"run.{kind}.zarr"
    source, options = {
        "fuse": (fusion_store, FAST),
        "restore": (_movie_store(tmp_path / "movie.zarr", np.ones((2, 16, 16), np.float32)),
                    dict(model=tiny_model, **RESTORE)),
        "tem-fuse": (tem_store, dict(model=avae_model, tile=32, halo=16)),
    }[kind]
    with pytest.raises(OutputNotWritable) as info:
        run_job(kind, source, out, client, progress=False, **options)
    assert re.fullmatch(rf"cannot create the output directory {re.escape(str(blocker))}: (File exists|Not a "
                        r"directory)\. Choose an output path in a directory you can write \(--out\)\.",
                        str(info.value)), str(info.value)
    assert blocker.read_text().startswith("a file")  # nothing written, nothing removed


# -- in a batch, the other datasets still complete --------------------------------------------------


@pytest.mark.slow
@pytest.mark.prefect
def test_bad_datasets_in_a_batch_fail_alone(prefect_harness, tmp_path, real_tiffs, tiny_model):
    """The overnight batch with the bad inputs of this file beside good ones: each bad dataset
    fails with one message naming it and its problem, and the good ones complete (a corrupt .bcf
    used to kill the whole process, and with it every dataset after it)."""
    import yaml

    from emfuse.flows.batch import batch_flow

    data = tmp_path / "incoming"
    data.mkdir()
    haadf, maps = _good_fusion_input((64, 64))
    np.savez(data / "good.npz", haadf=haadf, maps=maps)
    np.savez(data / "dark.npz", haadf=haadf, maps=np.zeros_like(maps))
    movie = np.random.default_rng(4).poisson(40, (4, 32, 32)).astype(np.float32)
    np.savez(data / "movie.npz", movie=movie)
    np.savez(data / "movie2.npz", movie=movie)
    src = _need(FORMATS / "test_TEM.bcf")
    crash = _damaged_copy(src, data, at=int(src.stat().st_size * BCF_CRASH)).rename(data / "crash.bcf")
    _damaged_copy(real_tiffs["imagej"], data, keep=0.5).rename(data / "cut.tif")
    dm = _need(FORMATS / "EELS_SI.dm4").read_bytes()
    at = dm.index("eV".encode("utf-16-le"))
    (data / "uncal.dm4").write_bytes(dm[:at] + "xx".encode("utf-16-le") + dm[at + 4 :])
    fuse = {"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 10, "tile": 32, "halo": 8}
    restore = {"model": tiny_model, **RESTORE}
    catalog = {"output": "results", "cluster": "local-threads", "datasets": [
        {"path": "incoming/good.npz", "jobs": ["fuse"], "elements": ["Sc", "Dy", "O"], "params": fuse},
        {"path": "incoming/dark.npz", "jobs": ["fuse"], "elements": ["Sc", "Dy", "O"], "params": fuse},
        {"path": "incoming/crash.bcf", "jobs": ["fuse"], "elements": ["Fe"], "params": fuse},
        {"path": "incoming/uncal.dm4", "jobs": ["fuse"], "elements": ["O"], "params": fuse},
        {"path": "incoming/cut.tif", "jobs": ["restore"], "params": restore},
        {"path": "incoming/movie2.npz", "jobs": ["restore"], "params": {**restore, "model": "r_em:nope"}},
        {"path": "incoming/movie.npz", "jobs": ["restore"], "params": restore},
    ]}  # fmt: skip
    path = tmp_path / "tonight.yaml"
    path.write_text(yaml.safe_dump(catalog))
    info = batch_flow(str(path), progress=False)
    records = {r["dataset"]: r for r in info["records"]}
    assert records["good"]["status"] == "done" and records["movie"]["status"] == "done"
    assert is_complete(tmp_path / "results" / "good.fuse.zarr")
    assert is_complete(tmp_path / "results" / "movie.restore.zarr")
    expected = {
        "dark": "every elemental map (Sc, Dy, O) is zero",
        "crash": f"cannot ingest {crash}: decoding its spectrum image crashed RosettaSciIO's Bruker decoder",
        "uncal": "has no calibrated energy axis",
        "cut": "declares 3 images, but the file holds only 1",
        "movie2": "unknown model 'r_em:nope'",
    }
    for name, problem in expected.items():
        record = records[name]
        assert record["status"] == "failed" and record["error"].startswith(f"dataset {name}"), record
        assert problem in record["error"], record["error"]
    assert info["n_done"] == 2 and info["n_failed"] == 5
