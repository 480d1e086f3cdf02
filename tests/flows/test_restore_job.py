"""The restoration job without Prefect: a real Dask cluster, blocks of frames, resume, registration."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr

from emfuse.flows.jobs import restore as restore_job
from emfuse.flows.jobs import run_job, runner
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.restore import MODEL_FILES, load_model, save_model
from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig
from emfuse.pipeline.restore.inference import restore
from emfuse.stores.errors import OutputNotWritable, StoreError
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import is_complete, open_dataset, read_attrs, sha256_file, write_dataset

OPTIONS = dict(tile=32, overlap=8, batch=4, block=2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small random CGRDN saved as safetensors (what load_model reads from a path)."""
    torch.manual_seed(0)
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2))
    return str(save_model(net, tmp_path_factory.mktemp("models") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    """A CGRDN whose residual branch is zero: it gives its input back (to test registration)."""
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=1))
    torch.nn.init.zeros_(net.last.weight)
    torch.nn.init.zeros_(net.last.bias)
    return str(save_model(net, tmp_path_factory.mktemp("models") / "identity.safetensors"))


@pytest.fixture(scope="module")
def movie_store(tmp_path_factory):
    return write_synthetic("movie", tmp_path_factory.mktemp("in") / "movie.zarr", shape=(64, 48), frames=5)


@pytest.fixture(scope="module")
def bare_movie_store(movie_store, tmp_path_factory):
    """The synthetic movie without what says how it was recorded (acquisition mode, detector), as
    a user's own store may be."""
    ds = open_dataset(movie_store).load()
    for name in ("acquisition_mode", "detector"):
        ds["movie"].attrs.pop(name, None)
    ds.attrs.pop("complete", None)
    return write_dataset(ds, tmp_path_factory.mktemp("bare") / "movie.zarr")


def _run(source, out, client, model, **kw):
    return run_job("restore", source, out, client, progress=False, model=model, **{**OPTIONS, **kw})


def test_job_restores_every_frame_like_the_kernel(tmp_path, movie_store, client, tiny_model):
    job = _run(movie_store, tmp_path / "out.zarr", client, tiny_model)
    assert is_complete(job.out) and len(job.blocks) == 3
    out, movie = open_dataset(job.out), open_dataset(movie_store).movie.values
    expected = restore(movie, load_model(tiny_model), tile=32, overlap=8, batch=4)
    # a random network overshoots below zero; counts are clipped there, and the store says so
    np.testing.assert_allclose(out.restored.values, np.clip(expected, 0, None), rtol=1e-5, atol=1e-4)
    # flagged: the pixels more than 2 % of each block's span below zero (a noise-level undershoot is not)
    [clipped] = [w for w in out.attrs["warnings"] if w["code"] == "restored-clipped"]
    beyond = sum(np.count_nonzero(expected[b] < -0.02 * np.ptp(movie[b])) for b in job.blocks)
    assert 0 < beyond < np.count_nonzero(expected < 0)
    assert clipped["below"] == beyond and clipped["above"] == 0
    assert out.restored.encoding["chunks"] == (2, 64, 48)
    assert out.restored.dims == ("frame", "y", "x") and out.frame.values.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(out.y.values, open_dataset(movie_store).y.values)
    params = out.attrs["params"]
    assert params["model"] == tiny_model and params["device"] == "auto" and len(params["model_sha256"]) == 64
    assert out.attrs["devices"] == ["cpu"]  # where the blocks ran: no GPU here
    assert "drift" not in out and "average" not in out
    assert set(restore_job.summary(job)) >= {"psnr_raw_db", "psnr_restored_db", "frames"}


def test_resume_recomputes_only_unfinished_blocks_and_is_bitwise_identical(tmp_path, movie_store, client, tiny_model):
    reference = _run(movie_store, tmp_path / "ref.zarr", client, tiny_model)
    # an interrupted run: one of three blocks finished, then the process died
    job, state = restore_job.plan(movie_store, tmp_path / "cut.zarr", model=tiny_model, **OPTIONS)
    assert state == "new"
    runner.run_unit(restore_job.SPEC, job, restore_job.SPEC.units(job)[1], None)
    assert not is_complete(job.out)
    with pytest.raises(StoreError, match="not marked complete"):
        open_dataset(job.out)
    job2, state = restore_job.plan(movie_store, job.out, model=tiny_model, **OPTIONS)
    assert state == "resume"
    assert runner.run_units(restore_job.SPEC, job2, None, client, progress=False) == 2
    assert TileRecord.open(job.out, restore_job.JOB).done_tiles() == {(0, 0), (1, 0), (2, 0)}
    runner.finalise(restore_job.SPEC, job2)
    np.testing.assert_array_equal(open_dataset(job.out).restored.values,
                                  open_dataset(reference.out).restored.values)
    assert restore_job.plan(movie_store, job.out, model=tiny_model, **OPTIONS)[1] == "complete"


def test_a_movie_goes_zarr_to_zarr_with_the_device_lock_as_on_a_gpu_worker(tmp_path, movie_store, tiny_model):
    """Blocks of frames run through the runner's device gate (asked for on the CPU here, as a GPU
    worker takes it): one block restored at a time while the other thread reads and writes
    blocks (tests/flows/test_runner_overlap.py shows the overlap); the movie is the same, bit for bit."""
    from dataclasses import replace

    from emfuse.cluster import connect

    locked = replace(restore_job.SPEC, lock_cpu=True)
    with connect("local-threads", n_workers=1, threads_per_worker=2) as client:
        reference = _run(movie_store, tmp_path / "ref.zarr", client, tiny_model)
        job, _ = restore_job.plan(movie_store, tmp_path / "locked.zarr", model=tiny_model, **OPTIONS)
        job, computed = runner.compute(locked, job, client, progress=False)
        runner.finalise(locked, job)
    assert computed == 3
    np.testing.assert_array_equal(open_dataset(job.out).restored.values,
                                  open_dataset(reference.out).restored.values)


def test_worker_loads_the_model_once(movie_store, tmp_path, tiny_model):
    job, _ = restore_job.plan(movie_store, tmp_path / "o.zarr", model=tiny_model, **OPTIONS)
    assert restore_job.worker_model(job, "cpu") is restore_job.worker_model(job, "cpu")


def test_registration_finds_the_drift_and_averages(tmp_path, client, identity_model):
    source = write_synthetic("movie", tmp_path / "drift.zarr", shape=(96, 96), frames=6, dose=200, seed=3)
    job = _run(source, tmp_path / "reg.zarr", client, identity_model, register=True, tile=64, overlap=16)
    out, truth = open_dataset(job.out), open_dataset(source)
    np.testing.assert_allclose(out.restored.values, truth.movie.values, rtol=1e-5, atol=1e-3)
    assert out.drift.dims == ("frame", "axis") and list(out.axis.values) == ["y", "x"]
    np.testing.assert_allclose(out.drift.values, truth.true_drift.values, atol=0.1)
    # the drift-corrected average is closer to the noise-free first frame than any single frame
    inner = (slice(8, -8), slice(8, -8))
    err_avg = np.abs(out.average.values - truth.true_movie.values[0])[inner].mean()
    err_one = np.abs(truth.movie.values[0] - truth.true_movie.values[0])[inner].mean()
    assert err_avg < 0.6 * err_one
    assert restore_job.summary(job)["drift_error_px"] < 0.1


def test_an_image_is_a_one_frame_movie(tmp_path, client, tiny_model):
    image = np.random.default_rng(0).poisson(30, (40, 52)).astype(np.float32)
    store = write_dataset(xr.Dataset({"haadf": (("y", "x"), image)},
                                     coords={"y": np.arange(40.0), "x": np.arange(52.0)}), tmp_path / "img.zarr")
    job = _run(store, tmp_path / "img_out.zarr", client, tiny_model, register=True)
    out = open_dataset(job.out)
    assert out.restored.shape == (1, 40, 52) and job.variable == "haadf"
    np.testing.assert_allclose(out.restored.values[0], restore(image, load_model(tiny_model), tile=32, overlap=8),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out.drift.values, 0)


def test_refusals_name_the_problem(tmp_path, movie_store, client, tiny_model):
    out = tmp_path / "out.zarr"
    _run(movie_store, out, client, tiny_model)
    with pytest.raises(StoreError, match="other parameters.*tile.*--overwrite"):
        _run(movie_store, out, client, tiny_model, tile=48)
    job = _run(movie_store, out, client, tiny_model, tile=48, overwrite=True)
    assert open_dataset(job.out).attrs["params"]["tile"] == 48
    with pytest.raises(restore_job.RestoreInputError, match="unknown model 'r_em:nope'.*r_em:sfr_hrstem"):
        _run(movie_store, tmp_path / "a.zarr", client, "r_em:nope")
    with pytest.raises(restore_job.RestoreInputError, match="neither a published name"):
        _run(movie_store, tmp_path / "b.zarr", client, str(tmp_path / "missing.safetensors"))
    maps = write_dataset(xr.Dataset({"maps": (("element", "y", "x"), np.ones((1, 8, 8)))},
                                    coords={"element": ["O"], "z": ("element", [8]), "y": np.arange(8.0),
                                            "x": np.arange(8.0)}), tmp_path / "maps.zarr")
    with pytest.raises(restore_job.RestoreInputError, match="no movie .* and no image"):
        _run(maps, tmp_path / "c.zarr", client, tiny_model)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputNotWritable, match="cannot create the output directory"):
        _run(movie_store, blocker / "o.zarr", client, tiny_model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cuda_without_cuda_is_refused_before_anything_runs(tmp_path, movie_store, client, tiny_model):
    with pytest.raises(restore_job.RestoreInputError, match="use device 'cpu'"):
        _run(movie_store, tmp_path / "gpu.zarr", client, tiny_model, device="cuda")
    assert not (tmp_path / "gpu.zarr").exists()


def test_nan_frames_are_named_and_leave_the_store_incomplete(tmp_path, client, tiny_model):
    movie = np.random.default_rng(1).poisson(20, (4, 32, 32)).astype(np.float32)
    movie[3, 5, 5] = np.nan
    store = write_dataset(xr.Dataset({"movie": (("frame", "y", "x"), movie)},
                                     coords={"frame": np.arange(4), "y": np.arange(32.0), "x": np.arange(32.0)}),
                          tmp_path / "nan.zarr")
    with pytest.raises(restore_job.RestoreInputError, match=r"frame\(s\) \[3\] of the movie contain NaN"):
        _run(store, tmp_path / "nan_out.zarr", client, tiny_model)
    assert not is_complete(tmp_path / "nan_out.zarr")


# -- the command line, under the Prefect test harness ---------------------------------------


@pytest.mark.prefect
@pytest.mark.slow  # kept out of the default suite's 10 minutes; make test-all runs it
def test_cli_synth_restore_register(prefect_harness, tmp_path, tiny_model, capsys):
    from emfuse.flows.cli import main

    store, out = tmp_path / "movie.zarr", tmp_path / "restored.zarr"
    assert main(["synth", "movie", "--out", str(store), "--shape", "48", "40", "--frames", "3"]) == 0
    args = ["restore", str(store), "--out", str(out), "--model", tiny_model, "--cluster", "local-threads",
            "--tile", "32", "--overlap", "8", "--register"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 frame(s) of 48 x 40" in printed and "PSNR vs truth" in printed and "drift:" in printed
    ds = open_dataset(out)
    assert ds.restored.shape == (3, 48, 40) and ds.average.shape == (48, 40)
    assert ds.attrs["params"]["register"] is True
    assert main(args) == 0  # complete: nothing to do, same summary


@pytest.mark.prefect
def test_cli_bad_inputs_get_one_line(prefect_harness, tmp_path, movie_store, tiny_model, capsys):
    from emfuse.flows.cli import main

    nan = np.ones((2, 16, 16), dtype=np.float32)
    nan[1, 2, 2] = np.nan
    nan_store = write_dataset(xr.Dataset({"movie": (("frame", "y", "x"), nan)},
                                         coords={"frame": [0, 1], "y": np.arange(16.0), "x": np.arange(16.0)}),
                              tmp_path / "nan.zarr")
    maps = write_dataset(xr.Dataset({"maps": (("element", "y", "x"), np.ones((1, 8, 8)))},
                                    coords={"element": ["O"], "z": ("element", [8]), "y": np.arange(8.0),
                                            "x": np.arange(8.0)}), tmp_path / "maps.zarr")
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        ("no movie", maps, tiny_model, tmp_path / "o1.zarr", "no movie"),
        ("NaN", nan_store, tiny_model, tmp_path / "o2.zarr", r"frame\(s\) \[1\].*NaN"),
        ("unknown model", movie_store, "r_em:sfr_nope", tmp_path / "o3.zarr", "unknown model.*choose one of"),
        ("unwritable", movie_store, tiny_model, blocker / "o4.zarr", "cannot create the output directory"),
        ("missing", tmp_path / "none.zarr", tiny_model, tmp_path / "o5.zarr", "does not exist"),
    ]
    for name, source, model, out, message in cases:
        code = main(["restore", str(source), "--out", str(out), "--model", model,
                     "--cluster", "local-threads", "--tile", "32", "--overlap", "8"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        # (lines before it, if any, come from Prefect's log handlers writing to an earlier test's
        # closed capture stream, an artefact of running in process under pytest)
        last = err.splitlines()[-1]
        assert last.startswith("emfuse restore: error:") and re.search(message, last), (name, err)
        assert "Compute Failed" not in err and "Traceback" not in err, (name, err)
        assert not is_complete(out), name


# -- --model auto ----------------------------------------------------------------------------------


def _tem_store(path):
    """A lone TEM camera frame as ingest writes one from a TIA .emi (0.5 nm pixels)."""
    image = np.random.default_rng(1).poisson(50, (32, 32)).astype(np.float32)
    coords = {"y": ("y", np.arange(32) * 0.5, {"units": "nm"}), "x": ("x", np.arange(32) * 0.5, {"units": "nm"})}
    ds = xr.Dataset({"haadf": (("y", "x"), image, {"image_kind": "image", "acquisition_mode": "TEM",
                                                   "detector": "BM-Ceta", "units": "counts"})}, coords=coords)
    ds.attrs.update(acquisition_mode="TEM", detector="BM-Ceta", beam_energy_kev=200.0)
    return write_dataset(ds, path)


def test_auto_on_a_store_without_metadata_records_an_unsure_choice(tmp_path, bare_movie_store, client):
    job = _run(bare_movie_store, tmp_path / "auto.zarr", client, "auto")
    out = open_dataset(job.out)
    choice = out.attrs["model_choice"]
    assert out.attrs["params"]["model"] == job.model == choice["model"]
    assert choice["model"] == ("stem-high" if MODEL_FILES["stem-high"].is_file() else "default")
    assert (choice["asked"], choice["modality"], choice["resolution"], choice["confident"]) == \
        ("auto", "stem", "high", False)
    assert "nothing in the metadata says STEM, TEM or SEM" in choice["reason"] and "0.02 nm" in choice["reason"]
    [unsure] = [w for w in out.attrs["warnings"] if w["code"] == "model-auto-unsure"]
    assert "--model stem-high|stem-low|tem-high|tem-low|sem" in unsure["message"] and "r_em:" in unsure["message"]
    assert restore_job.summary(job)["model_choice"] == choice


def test_the_synthetic_movie_is_known_as_a_haadf_stem_movie(movie_store):
    """``emfuse synth movie`` records what ingest keeps of a real HAADF movie, so ``--model auto``
    is sure of it (no ``model-auto-unsure`` warning on the project's own data)."""
    from emfuse.pipeline.restore.select import infer_modality

    ds = open_dataset(movie_store)
    guess = infer_modality(ds.attrs, ds.movie.attrs, 0.02)
    assert (guess.modality, guess.resolution, guess.confident) == ("stem", "high", True), guess.reason
    assert "detector 'HAADF'" in guess.reason


def test_auto_picks_the_own_model_present_and_a_rerun_keeps_its_decision(tmp_path, movie_store, client,
                                                                         tiny_model, monkeypatch):
    from pathlib import Path

    from emfuse.flows.jobs.checks import check_restore

    out = tmp_path / "cut.zarr"
    monkeypatch.setitem(MODEL_FILES, "stem-high", tmp_path / "absent.safetensors")  # a version without it
    job, state = restore_job.plan(movie_store, out, model="auto", **OPTIONS)
    assert state == "new" and job.model == "default"  # stem-high wanted but absent
    runner.run_unit(restore_job.SPEC, job, restore_job.SPEC.units(job)[1], None)  # then the process died
    # this version now has a stem-high model: an unfinished store still resumes with its model
    monkeypatch.setitem(MODEL_FILES, "stem-high", Path(tiny_model))
    job2, state = restore_job.plan(movie_store, out, model="auto", **OPTIONS)
    assert state == "resume" and job2.model == "default"
    assert runner.run_units(restore_job.SPEC, job2, None, client, progress=False) == 2
    runner.finalise(restore_job.SPEC, job2)
    assert restore_job.plan(movie_store, out, model="auto", **OPTIONS)[1] == "complete"
    assert restore_job.plan(movie_store, out, model="default", **OPTIONS)[1] == "complete"
    options = {k: v for k, v in OPTIONS.items()}
    check_restore(movie_store, out, model="auto", options=options)  # the early check of the command line
    # an explicit model other than the one decided is refused, as before
    with pytest.raises(StoreError, match="other parameters.*model"):
        restore_job.plan(movie_store, out, model=tiny_model, **OPTIONS)
    with pytest.raises(StoreError, match="other parameters.*model"):
        check_restore(movie_store, out, model=tiny_model, options=options)
    # a new store takes the model now present, by its own name, on the workers too
    job3 = _run(movie_store, tmp_path / "new.zarr", client, "auto")
    assert job3.model == "stem-high" and open_dataset(job3.out).attrs["model_choice"]["wanted"] == "stem-high"
    assert open_dataset(job3.out).attrs["model_choice"]["model_sha256"] == sha256_file(tiny_model)
    np.testing.assert_allclose(open_dataset(job3.out).restored.values,
                               open_dataset(_run(movie_store, tmp_path / "tiny.zarr", client, tiny_model).out)
                               .restored.values)


def test_the_workers_know_an_own_model_by_its_file_not_only_its_name(tiny_model, monkeypatch):
    """A worker keeps the networks it loaded, by name and sha256; an own model's sha256 is that of its
    file, so a replaced file (a package update) is loaded again, not served from the cache."""
    from pathlib import Path

    job = restore_job.RestoreJob("in.zarr", "out.zarr", "stem-high", "movie", 1)
    monkeypatch.setitem(MODEL_FILES, "stem-high", Path(tiny_model))
    assert restore_job.weights_sha256(job) == sha256_file(tiny_model)
    monkeypatch.setitem(MODEL_FILES, "stem-high", MODEL_FILES["default"])
    assert restore_job.weights_sha256(job) == sha256_file(MODEL_FILES["default"])
    assert restore_job.weights_sha256(restore_job.RestoreJob("in.zarr", "out.zarr", "r_em:sfr_hrstem", "movie", 1)) is None
    adapted = restore_job.RestoreJob("in.zarr", "out.zarr", str(tiny_model), "movie", 1, model_sha256="abc")
    assert restore_job.weights_sha256(adapted) == "abc"


def test_auto_on_a_tem_frame_is_sure_and_warns_of_nothing(tmp_path, tiny_model, monkeypatch):
    from pathlib import Path

    store = _tem_store(tmp_path / "tem.zarr")
    job, _ = restore_job.plan(store, tmp_path / "shipped.zarr", model="auto", **OPTIONS)
    assert job.model == "tem-low"  # this version ships an LRTEM model
    monkeypatch.setitem(MODEL_FILES, "tem-low", tmp_path / "absent.safetensors")  # a version without it
    job, _ = restore_job.plan(store, tmp_path / "a.zarr", model="auto", **OPTIONS)
    choice = read_attrs(job.out)["model_choice"]
    assert (choice["modality"], choice["resolution"], choice["confident"], choice["wanted"]) == ("tem", "low", True, "tem-low")
    assert "acquisition_mode 'TEM'" in choice["reason"] and "pixel 0.5 nm > 0.05 nm" in choice["reason"]
    assert job.model == "default" and "no model of its own for tem-low" in choice["reason"]
    assert not [w for w in read_attrs(job.out).get("warnings", []) if w["code"] == "model-auto-unsure"]
    monkeypatch.setitem(MODEL_FILES, "tem-low", Path(tiny_model))
    job, _ = restore_job.plan(store, tmp_path / "b.zarr", model="auto", **OPTIONS)
    assert job.model == "tem-low" and read_attrs(job.out)["params"]["model"] == "tem-low"
    # and by its own name
    assert restore_job.plan(store, tmp_path / "c.zarr", model="tem-low", **OPTIONS)[0].model == "tem-low"


@pytest.mark.prefect
def test_cli_restore_says_which_model_auto_chose(prefect_harness, tmp_path, bare_movie_store, capsys):
    from emfuse.flows.cli import main

    out = tmp_path / "auto.zarr"
    args = ["restore", str(bare_movie_store), "--out", str(out), "--cluster", "local-threads", "--tile", "32",
            "--overlap", "8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    [line] = [line for line in printed.splitlines() if line.startswith("model (auto):")]
    assert "STEM assumed" in line and "[model-auto-unsure]" in printed
    assert open_dataset(out).attrs["model_choice"]["asked"] == "auto"
    assert main(args) == 0  # complete: nothing to do


def test_batch_auto_and_compile_on_the_cpu_give_the_same_frames(tmp_path, movie_store, client, tiny_model, capsys):
    """--batch auto (the default) is the CPU's 8 and --compile a no-op with a note on the CPU: the
    frames equal those of batch 4 without compiling, bitwise; both options are in the store."""
    plain = _run(movie_store, tmp_path / "plain.zarr", client, tiny_model)
    options = {k: v for k, v in OPTIONS.items() if k != "batch"}
    job = run_job("restore", movie_store, tmp_path / "auto.zarr", client, progress=False, model=tiny_model,
                  compile=True, **options)
    out = open_dataset(job.out)
    assert out.attrs["params"]["batch"] == "auto" and out.attrs["params"]["compile"] is True
    assert out.attrs[restore_job.ATTR_BATCH_CHOICE]["asked"] == "auto"
    assert "compile" not in open_dataset(plain.out).attrs["params"]  # stores without it still match
    np.testing.assert_array_equal(out.restored.values, open_dataset(plain.out).restored.values)
    assert restore_job.worker_batch(job, load_model(tiny_model), "cpu") == 8
    assert "--compile applies to CUDA devices only" in capsys.readouterr().out


def test_batch_auto_keeps_the_batch_a_store_was_started_with(tmp_path, movie_store, tiny_model):
    out = tmp_path / "started.zarr"
    restore_job.plan(movie_store, out, model=tiny_model, **OPTIONS)  # batch 4
    options = {k: v for k, v in OPTIONS.items() if k != "batch"}
    job, state = restore_job.plan(movie_store, out, model=tiny_model, **options)
    assert state == "resume" and job.batch == 4
