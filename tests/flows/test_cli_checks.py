"""The command line checks arguments, files and output stores before Prefect, Dask or torch load."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from emfuse.flows.cli import build_parser, main
from emfuse.flows.jobs import run_job
from emfuse.stores.version import emfuse_version
from emfuse.stores.zarrio import write_dataset

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("prefect", "distributed", "torch", "numba")


def _cli_in_a_fresh_process(*argv: str) -> tuple[int, str, list[str]]:
    """Run ``emfuse argv`` in a new interpreter; (exit status, stderr, heavy modules it imported)."""
    code = ("import sys, json; from emfuse.flows.cli import main; rc = main(sys.argv[1:]); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules])); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stderr, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture()
def store(tmp_path, dysco3):
    ds = xr.Dataset({"haadf": (("y", "x"), dysco3["haadf"][:64, :64]),
                     "maps": (("element", "y", "x"), dysco3["maps"][:, :64, :64])},
                    coords={"element": dysco3["elements"], "z": ("element", dysco3["z"])})
    return write_dataset(ds, tmp_path / "in.zarr")


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"emfuse {emfuse_version()}" != "emfuse unknown"


def test_the_command_of_the_process_skips_the_last_collection_at_exit(store, tmp_path):
    """``main()`` on the process's own arguments freezes the objects out of the garbage collector
    as the command ends (the interpreter's exit then skips a collection of about 1 s); called
    with arguments, as tests and notebooks do, it leaves the collector alone."""
    code = ("import gc, sys; from emfuse.flows.cli import main; sys.argv = ['emfuse', *sys.argv[1:]]; "
            "rc = main(); print(gc.get_freeze_count() > 0, rc)")
    argv = ["fuse", str(store), "--out", str(tmp_path / "o.zarr"), "--elements", "Fe", "Xx"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["True", "2"]
    assert main(argv) == 2 and gc.get_freeze_count() == 0


def test_a_mistyped_element_is_refused_before_anything_heavy_loads(store, tmp_path):
    rc, err, heavy = _cli_in_a_fresh_process("fuse", str(store), "--out", str(tmp_path / "o.zarr"),
                                             "--elements", "Fe", "Xx")
    assert rc == 2 and "unknown element 'Xx'" in err
    assert heavy == []  # no Prefect server, cluster or network was started
    assert not (tmp_path / "o.zarr").exists()


def test_elements_absent_from_the_store_and_bad_stores_are_refused_early(store, tmp_path):
    rc, err, heavy = _cli_in_a_fresh_process("fuse", str(store), "--out", str(tmp_path / "o.zarr"),
                                             "--elements", "Fe", "O")
    assert rc == 2 and "no maps for ['Fe', 'O']" in err and "maps present: ['Dy', 'O', 'Sc']" in err
    assert heavy == []
    zarr.open_group(str(store), mode="r+", zarr_format=3).attrs["complete"] = False
    rc, err, heavy = _cli_in_a_fresh_process("fuse", str(store), "--out", str(tmp_path / "o.zarr"))
    assert rc == 2 and "not marked complete" in err and heavy == []


def test_a_fitted_haadf_model_with_fixed_weights_is_refused_before_anything_heavy_loads(store, tmp_path):
    rc, err, heavy = _cli_in_a_fresh_process("fuse", str(store), "--out", str(tmp_path / "o.zarr"),
                                             "--haadf-model", "fit", "--lambda-chem", "0.1", "--lambda-tv", "0.2")
    assert rc == 2 and "haadf_model 'fit' (--haadf-model fit) is fitted by the automatic choice" in err and heavy == []
    assert not (tmp_path / "o.zarr").exists()


def test_other_parameters_lists_only_those_that_differ(store, tmp_path, client, dysco3):
    out = tmp_path / "out.zarr"
    fixed = ["--lambda-chem", "0.08", "--lambda-tv", "0.15", "--n-iter", "5", "--tile", "64", "--halo", "8"]
    run_job("fuse", store, out, client, progress=False, tile=64, halo=8,
            params=dict(lambda_chem=0.08, lambda_tv=0.15, n_iter=5))
    rc, err, heavy = _cli_in_a_fresh_process("fuse", str(store), "--out", str(out), *fixed, "--lambda-tv", "0.3")
    assert rc == 2 and heavy == []
    assert "differ: lambda_tv: 0.15 -> 0.3;" in err and "--overwrite" in err
    assert "gamma" not in err and "n_iter" not in err and "elements" not in err


def test_restore_and_tem_fuse_check_their_arguments_early(store, tmp_path):
    rc, err, heavy = _cli_in_a_fresh_process("restore", str(store), "--out", str(tmp_path / "r.zarr"),
                                             "--model", str(tmp_path / "nope.safetensors"))
    assert rc == 2 and "nope.safetensors" in err and "--model" in err and heavy == []
    rc, err, heavy = _cli_in_a_fresh_process("tem-fuse", str(store), "--out", str(tmp_path / "t.zarr"))
    assert rc == 2 and "no 'modes'" in err and heavy == []


def test_a_store_written_with_xarray_passes_the_checks(tmp_path, dysco3):
    from emfuse.flows.jobs.checks import check_fuse

    ds = xr.Dataset({"haadf": (("y", "x"), np.ones((8, 8))), "maps": (("element", "y", "x"), np.ones((1, 8, 8)))},
                    coords={"element": ["O"]})
    ds.to_zarr(tmp_path / "mine.zarr", zarr_format=3, consolidated=False)
    check_fuse(tmp_path / "mine.zarr", tmp_path / "o.zarr", elements=["O"], params={}, tile=8, halo=2, windows=None)


def test_ingest_overwrite_has_help():
    ingest = build_parser()._subparsers._group_actions[0].choices["ingest"]
    [overwrite] = [a for a in ingest._actions if "--overwrite" in a.option_strings]
    assert overwrite.help and "replace" in overwrite.help


def test_early_checks_follow_the_elements_of_the_ingest(shared_data, tmp_path):
    """A spectrum image with no --elements: refused naming the elements the file's metadata
    lists, as the job itself says; accepted when the elements were named at ingest."""
    from emfuse.flows.jobs.checks import check_fuse
    from emfuse.flows.jobs.inputs import ingest_file

    bcf = shared_data / "formats" / "test_TEM.bcf"
    plain = ingest_file(bcf, tmp_path / "plain.zarr")
    with pytest.raises(ValueError, match=r"no elements were named.*metadata lists Cu O Pd Ti"):
        check_fuse(plain, tmp_path / "o1.zarr", elements=None, params={}, tile=64, halo=8, windows=None)
    chosen = ingest_file(bcf, tmp_path / "chosen.zarr", elements=["Cu", "Ti"])
    check_fuse(chosen, tmp_path / "o2.zarr", elements=None, params={}, tile=64, halo=8, windows=None)


def test_tile_auto_is_the_fuse_default_and_sizes_parse():
    from emfuse.flows.cli.parser import size_value

    args = build_parser().parse_args(["fuse", "in.zarr", "--out", "o.zarr"])
    assert args.tile == "auto"
    assert build_parser().parse_args(["fuse", "in.zarr", "--out", "o.zarr", "--tile", "256"]).tile == 256
    assert size_value("AUTO") == "auto"
    for bad in ("0", "big", "1.5"):
        with pytest.raises(Exception, match="auto"):
            size_value(bad)


def test_tile_auto_matches_a_store_started_with_any_tile(tmp_path):
    """--tile auto reruns a store with the tile it was started with: the check does not call it a
    difference; an explicit other tile still is one."""
    from emfuse.flows.jobs.checks import check_fuse
    from emfuse.stores.errors import StoreError

    ds = xr.Dataset({"haadf": (("y", "x"), np.ones((8, 8))), "maps": (("element", "y", "x"), np.ones((1, 8, 8)))},
                    coords={"element": ["O"]})
    ds.to_zarr(tmp_path / "in.zarr", zarr_format=3, consolidated=False)
    out = tmp_path / "o.zarr"
    zarr.open_group(str(out), mode="w", zarr_format=3).attrs.update(
        {"params": {"tile": 128, "halo": 2, "windows": None}, "emfuse_version": emfuse_version()})
    check_fuse(tmp_path / "in.zarr", out, elements=None, params={}, tile="auto", halo=2, windows=None)
    with pytest.raises(StoreError, match="tile"):
        check_fuse(tmp_path / "in.zarr", out, elements=None, params={}, tile=64, halo=2, windows=None)


def test_ingest_warnings_print_as_plain_lines(formats, tmp_path):
    # A Bruker SEM file: its image is taken as the HAADF without saying so, and the overview image
    # is left out. Users read "warning: <what>", not Python's file, line number and source line.
    rc, err, _ = _cli_in_a_fresh_process("ingest", str(formats / "bcf_v2_50x50px.bcf"), "--out",
                                         str(tmp_path / "bcf.zarr"))
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert any(line.startswith("warning: ") and "not ingested: image 'Ch 1' (825, 1100)" in line for line in lines)
    assert "IngestWarning" not in err and ".py:" not in err and "return " not in err, err


def test_fusing_an_image_only_file_points_to_restore(formats, tmp_path, capsys):
    frame = formats / "128x128_TEM_acquire-sum1.emi"  # a TEM camera frame: nothing to fuse
    assert main(["fuse", str(frame), "--out", str(tmp_path / "f.zarr")]) == 2
    err = capsys.readouterr().err
    assert "holds images only (no spectrum image, no elemental maps)" in err and "emfuse restore" in err
    assert "maps present: []" not in err and not (tmp_path / "f.zarr").exists()


def test_a_synthetic_store_is_fused_for_the_elements_it_simulates(tmp_path, capsys):
    store = tmp_path / "si.zarr"
    assert main(["synth", "spectrum-image", "--out", str(store), "--shape", "24", "24", "--elements", "Fe", "Ni",
                 "O", "--seed", "2"]) == 0
    assert main(["fuse", str(store), "--out", str(tmp_path / "f.zarr"), "--cluster", "local-threads", "--no-report",
                 "--lambda-chem", "0.05", "--lambda-tv", "0.02", "--n-iter", "3"]) == 0, capsys.readouterr().err
    from emfuse.stores.zarrio import open_dataset

    assert list(open_dataset(tmp_path / "f.zarr").element.values) == ["Fe", "Ni", "O"]


def test_rosettasciio_notes_print_once_without_colour_codes(formats, tmp_path):
    # the pruned Velox file: RosettaSciIO logs why it returns no spectrum image, through a coloured
    # handler of its own on stdout, and the record also reached the root logger
    pruned = str(formats / "Test SI 16x16 ReducedData 215 kx.emd")
    done = subprocess.run([sys.executable, "-m", "emfuse.flows.cli", "ingest", pruned, "--list"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    both = done.stdout + done.stderr
    assert both.count("No spectrum stream is present") == 1 and "\x1b[" not in both
    assert "RosettaSciIO: No spectrum stream is present" in done.stdout  # a line of the listing
    rc, err, _ = _cli_in_a_fresh_process("ingest", pruned, "--out", str(tmp_path / "p.zarr"))
    assert rc == 0 and err.count("No spectrum stream is present") == 1 and "\x1b[" not in err
