"""The ``emfuse`` command line, run in process under the Prefect test harness."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

import emfuse
from emfuse.errors import EmfuseError
from emfuse.flows.cli import main
from emfuse.flows.jobs import fusion as fusion_job
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import is_complete, mark_complete, open_dataset, write_dataset

pytestmark = pytest.mark.prefect

FAST = ["--cluster", "local-threads", "--n-iter", "5", "--n-iter-tv", "3", "--tile", "32", "--halo", "8"]


@pytest.mark.slow  # kept out of the default suite's 10 minutes; make test-all runs it
def test_synth_fuse_report(prefect_harness, tmp_path, capsys):
    store, out = tmp_path / "si.zarr", tmp_path / "fused.zarr"
    assert main(["synth", "spectrum-image", "--out", str(store), "--shape", "64", "48", "--dose", "20"]) == 0
    ds = open_dataset(store)
    assert ds.spectrum.dims == ("y", "x", "energy") and ds.spectrum.shape[:2] == (64, 48)
    assert main(["fuse", str(store), "--out", str(out), "--elements", "Sr", "Ti", "O", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "NRMSE raw" in printed and str(out) in printed
    fused = open_dataset(out)
    assert fused.fused.shape == (3, 64, 48) and list(fused.element.values) == ["Sr", "Ti", "O"]
    assert fused.attrs["params"]["n_iter"] == 5
    # the CLI's default weights are "auto": chosen by count splitting, stored and plotted
    assert fused.attrs["params"]["lambda_auto"] == ["lambda_chem", "lambda_tv"]
    assert fused.attrs["lambda_choice"]["criterion"] == "heldout-counts:spectrum"
    assert "lambda_score" in fused and "candidates scored on held-out counts" in printed
    report_dir = tmp_path / "again"
    assert main(["report", str(out), "--report-dir", str(report_dir)]) == 0
    assert (report_dir / "maps.png").stat().st_size > 10_000
    assert (report_dir / "lambda_search.png").stat().st_size > 10_000
    assert json.loads((report_dir / "summary.json").read_text())["elements"] == ["Sr", "Ti", "O"]


def test_ingest_and_fuse_a_published_npz(prefect_harness, shared_data, tmp_path, capsys):
    source = shared_data / "fusion" / "PTO_Trilayer_dataset.npz"
    assert main(["ingest", str(source), "--out", str(tmp_path / "pto.zarr")]) == 0
    assert list(open_dataset(tmp_path / "pto.zarr").maps.element.values) == ["Sc", "Dy", "O"]
    # a raw file given to `fuse` is ingested first, beside the output
    assert main(["fuse", str(source), "--out", str(tmp_path / "pto_fused.zarr"), "--no-report", *FAST]) == 0
    assert is_complete(tmp_path / "PTO_Trilayer_dataset.input.zarr")
    fused = open_dataset(tmp_path / "pto_fused.zarr")
    assert fused.fused.shape == (3, 256, 256)
    # the published maps are not counts: "auto" scores recorrupted pairs with their measured noise
    assert fused.attrs["lambda_choice"]["criterion"] == "heldout-recorrupted:maps"
    assert len(fused.attrs["lambda_choice"]["noise"]) == 3
    assert "candidates scored on recorrupted maps" in capsys.readouterr().out


def test_demo(prefect_harness, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "64", "--cluster", "local-threads"]) == 0
    printed = capsys.readouterr().out
    assert "NRMSE fused" in printed
    assert is_complete(tmp_path / "demo" / "demo_fused.zarr")
    assert (tmp_path / "demo" / "demo_fused.report" / "convergence.png").exists()
    # provenance of both demo outputs (tests/flows/test_provenance.py checks every other path)
    from provenance_checks import assert_provenance

    demo = tmp_path / "demo"
    attrs = assert_provenance(demo / "demo_fused.zarr", demo / "demo_input.zarr",
                              {"ingest", "plan", "write_inputs", "normalise", "choose_lambdas", "tiles", "finalise"})
    assert {"normalisation", "lambda_choice", "maps_from"} <= set(attrs)
    if (demo / "demo_tem_fused.zarr").exists():
        assert_provenance(demo / "demo_tem_fused.zarr", demo / "demo_tem_modes.zarr", {"plan", "tiles", "finalise"})
        assert open_dataset(demo / "demo_tem_fused.zarr").tem_fused.shape == (64, 64)  # --size is both parts


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture()
def good(shared_data):
    with np.load(shared_data / "fusion" / "dysco3_edx_tutorial.npz") as f:
        return {"haadf": f["haadf"][:64, :64], "maps": f["chem"][:, :64, :64]}


def _bad_inputs(tmp_path, good, shared_data):
    """(name, source file, extra CLI arguments, expected message) for each documented bad input."""
    maps, haadf = good["maps"], good["haadf"]
    nan_maps = maps.copy()
    nan_maps[0, 3, 3] = np.nan
    neg_maps = maps.copy()
    neg_maps[2, 1, 1] = -1.0
    inf_haadf = haadf.copy()
    inf_haadf[0, 0] = np.inf
    truncated = tmp_path / "truncated.npz"
    data = (shared_data / "fusion" / "PTO_Trilayer_dataset.npz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    els = ["--elements", "Sc", "Dy", "O"]
    return [
        ("wrong dims", _npz(tmp_path / "dims.npz", haadf=haadf[0], maps=maps), els, "haadf"),
        ("shape mismatch", _npz(tmp_path / "shape.npz", haadf=haadf[:60], maps=maps), els, "60"),
        ("NaN", _npz(tmp_path / "nan.npz", haadf=haadf, maps=nan_maps), els, "NaN"),
        ("Inf", _npz(tmp_path / "inf.npz", haadf=inf_haadf, maps=maps), els, "NaN or Inf"),
        ("negative counts", _npz(tmp_path / "neg.npz", haadf=haadf, maps=neg_maps), els, "negative"),
        ("empty arrays", _npz(tmp_path / "empty.npz", haadf=np.zeros((0, 0)), maps=np.zeros((3, 0, 0))), els,
         "empty|no pixels|0 x 0|size 0"),
        ("unknown element", _npz(tmp_path / "unknown.npz", haadf=haadf, maps=maps),
         ["--elements", "Sc", "Xx", "O"], "Xx"),
        ("truncated file", truncated, [], "truncated|corrupt|not a valid|cannot read"),
    ]


def test_bad_inputs_get_one_line_naming_the_problem(prefect_harness, tmp_path, good, shared_data, capsys):
    for name, source, extra, message in _bad_inputs(tmp_path, good, shared_data):
        out = tmp_path / f"{source.stem}_out.zarr"
        code = main(["fuse", str(source), "--out", str(out), "--no-report", *FAST, *extra])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert "error:" in err and re.search(message, err, re.IGNORECASE), (name, err)
        assert not is_complete(out), name


def test_unwritable_output(prefect_harness, tmp_path, good, capsys):
    source = _npz(tmp_path / "ok.npz", **good)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["fuse", str(source), "--out", str(blocker / "o.zarr"), "--elements", "Sc", "Dy", "O", *FAST])
    assert code == 2 and "cannot create the output directory" in capsys.readouterr().err


def test_missing_source(tmp_path, capsys):
    assert main(["fuse", str(tmp_path / "none.emd"), "--out", str(tmp_path / "o.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rerun_after_an_interrupted_fuse_resumes(prefect_harness, tmp_path, dysco3):
    """The CLI picks up an interrupted output store and finishes it with the same numbers."""
    ds = xr.Dataset(
        {"haadf": (("y", "x"), dysco3["haadf"][:64, :64]), "maps": (("element", "y", "x"), dysco3["maps"][:, :64, :64])},
        coords={"y": np.arange(64.0), "x": np.arange(64.0), "element": dysco3["elements"], "z": ("element", dysco3["z"])},
    )
    store = write_dataset(ds, tmp_path / "in.zarr")
    args = ["fuse", str(store), "--no-report", *FAST]
    assert main([*args, "--out", str(tmp_path / "ref.zarr")]) == 0
    # interrupt a second run after one of four tiles: copy the finished store, then undo 3 tiles
    shutil.copytree(tmp_path / "ref.zarr", tmp_path / "cut.zarr")
    mark_complete(tmp_path / "cut.zarr", False)
    done = zarr.open_array(str(tmp_path / "cut.zarr" / "_progress" / "fuse" / "done"), mode="r+")
    done[:] = 0
    done[0, 0] = 1
    fused = zarr.open_array(str(tmp_path / "cut.zarr" / "fused"), mode="r+")
    fused[:, :, 32:] = np.nan
    assert len(TileRecord.open(tmp_path / "cut.zarr", fusion_job.JOB).done_tiles()) == 1
    assert main([*args, "--out", str(tmp_path / "cut.zarr")]) == 0
    np.testing.assert_array_equal(open_dataset(tmp_path / "cut.zarr").fused.values,
                                  open_dataset(tmp_path / "ref.zarr").fused.values)


def test_a_bug_shows_its_traceback_instead_of_one_line(tmp_path, monkeypatch, capsys):
    """Only an :class:`emfuse.EmfuseError` becomes one line (exit status 2); any other exception
    is a bug in emfuse and propagates out of ``main`` with its traceback, even a ``ValueError``."""
    import emfuse.flows.report as report

    store = tmp_path / "out.zarr"
    store.mkdir()
    for bug in (ZeroDivisionError("division by zero"), ValueError("an internal check failed")):
        def write_report(*args, bug=bug, **kwargs):
            raise bug

        monkeypatch.setattr(report, "write_report", write_report)
        with pytest.raises(type(bug), match=str(bug)):
            main(["report", str(store)])
        assert "error:" not in capsys.readouterr().err
    # an explained error still reads as one line, and --traceback still shows where it came from
    monkeypatch.undo()
    assert main(["report", str(tmp_path / "none.zarr")]) == 2
    assert "error: output store" in capsys.readouterr().err
    with pytest.raises(EmfuseError, match="does not exist"):
        main(["--traceback", "report", str(tmp_path / "none.zarr")])


def test_every_error_class_is_an_emfuse_error_and_keeps_its_builtin_base():
    from emfuse.cluster import ClusterConfigError, ClusterUnavailableError
    from emfuse.errors import (
        InputError,
        InputFileNotFound,
        InputNotReadable,
        MissingDependency,
        NotAvailableHere,
    )
    from emfuse.flows.batch.catalog import CatalogError
    from emfuse.flows.jobs.restore import RestoreInputError
    from emfuse.flows.jobs.tem_fuse import TemFuseInputError
    from emfuse.flows.tools.export import HyperSpyMissing
    from emfuse.pipeline.elements import DuplicateElement, ElementError, NoLineError, UnknownElement
    from emfuse.pipeline.fusion.auto import AutoLambdaError
    from emfuse.pipeline.fusion.model import FusionInputError
    from emfuse.pipeline.fusion.noise import NoiseEstimateError
    from emfuse.pipeline.restore.weights import BundleError
    from emfuse.pipeline.spectra import SpectrumError, WindowError
    from emfuse.stores.errors import DiskFull, IngestError, OutputNotWritable, StoreError
    from emfuse.stores.lock import StoreLockedError

    builtin = {
        FusionInputError: ValueError, AutoLambdaError: ValueError, NoiseEstimateError: ValueError,
        SpectrumError: ValueError, WindowError: ValueError, ElementError: ValueError,
        UnknownElement: ValueError, DuplicateElement: ValueError, NoLineError: ValueError,
        BundleError: ValueError, IngestError: ValueError, StoreError: ValueError,
        StoreLockedError: ValueError, OutputNotWritable: PermissionError, DiskFull: OSError,
        ClusterConfigError: ValueError, ClusterUnavailableError: RuntimeError,
        TemFuseInputError: ValueError, RestoreInputError: ValueError, HyperSpyMissing: ImportError,
        CatalogError: ValueError, InputError: ValueError, InputFileNotFound: FileNotFoundError,
        InputNotReadable: PermissionError, MissingDependency: ImportError, NotAvailableHere: RuntimeError,
    }
    for cls, base in builtin.items():
        assert issubclass(cls, EmfuseError), cls
        assert issubclass(cls, base), (cls, base)  # `except ValueError` callers still catch it
    assert emfuse.EmfuseError is EmfuseError


def test_restore_of_one_real_image_with_register(tmp_path, shared_data, capsys):
    """`emfuse restore test_TEM.bcf --register` (one HAADF frame): the console says there is nothing
    to register a single frame against (it said "drift: up to 0.00 px"), and names the saturation."""
    source = shared_data / "formats" / "test_TEM.bcf"
    args = ["restore", str(source), "--out", str(tmp_path / "r.zarr"), "--register", "--cluster", "local-threads",
            "--tile", "64", "--overlap", "8", "--no-report"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "drift:        one frame, nothing to register it against" in out and "up to 0.00 px" not in out
    assert "[input-saturated]" in out
