"""Training loop of the restoration networks: learning, checkpoints, resume, arguments."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from emfuse.errors import InputError
from emfuse.pipeline.restore import load_model, save_model
from emfuse.pipeline.restore.cgrdn import CGRDN
from emfuse.pipeline.restore.train import (
    MODEL_PRESETS,
    TrainConfig,
    evaluate,
    latest_checkpoint,
    learning_rate,
    train,
)


def standin(n, shape, modality, resolution, rng):
    """A fast stand-in for specimens.make_batch: gaussian blobs, Poisson counts."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = np.zeros((n, 1, *shape), np.float32)
    for i in range(n):
        centres = rng.uniform(0, shape, size=(6, 2))
        sigma = rng.uniform(1.5, 3.0)
        blobs = np.exp(-((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2) / (2 * sigma**2))
        clean[i, 0] = rng.uniform(20, 200) * (0.05 + blobs.sum(-1))
    degraded = rng.poisson(clean).astype(np.float32)
    return clean, degraded


TINY = dict(batch=4, patch=32, model="tiny", val_size=2, warmup=2, lr=3e-3, lr_final=1e-4)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("balance", ["mean", "relative"])
def test_a_few_steps_decrease_the_loss_on_a_fixed_batch(tmp_path, balance):
    cfg = TrainConfig(steps=40, checkpoint_every=40, balance=balance, **TINY)
    clean, degraded = (torch.from_numpy(a) for a in standin(8, (32, 32), "stem", "high", np.random.default_rng(99)))
    torch.manual_seed(cfg.seed)
    before = evaluate(CGRDN(MODEL_PRESETS["tiny"]), clean, degraded)
    result = train(tmp_path, cfg, data=standin, progress=False)
    after = evaluate(load_model(result.model_path), clean, degraded)
    assert result.step == 40
    assert after["loss"] < 0.8 * before["loss"] and after["psnr"] > before["psnr"] + 1
    assert json.loads((tmp_path / "train_config.json").read_text())["balance"] == balance


def test_the_balance_reaches_the_steps(tmp_path):
    runs = {b: train(tmp_path / b, TrainConfig(steps=3, checkpoint_every=3, balance=b, **TINY), data=standin,
                     progress=False) for b in ("mean", "relative")}
    a, b = _weights(runs["mean"].model_path), _weights(runs["relative"].model_path)
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("adversarial", [False, True], ids=["plain", "ragan"])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, adversarial):
    cfg = TrainConfig(steps=6, checkpoint_every=2, adversarial=adversarial, **TINY)
    whole = train(tmp_path / "whole", cfg, data=standin, progress=False)
    # the same run stopped after 4 steps (a shorter schedule would change the learning
    # rates, so it is stopped by time instead: max_seconds=0 stops after the first step)
    part = tmp_path / "part"
    first = train(part, cfg, data=standin, progress=False, max_seconds=0)
    assert first.step == 1 and latest_checkpoint(part).name == "checkpoint-0000001.safetensors"
    second = train(part, cfg, data=standin, progress=False, resume=True, max_seconds=0)
    assert second.step == 2
    resumed = train(part, cfg, data=standin, progress=False, resume=True)
    assert resumed.step == 6
    a, b = _weights(whole.model_path), _weights(resumed.model_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = _weights(whole.checkpoint), _weights(resumed.checkpoint)
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)  # optimiser state too
    if adversarial:
        assert any(k.startswith("disc.") for k in ca) and any(k.startswith("opt_d.") for k in ca)
    # the log has one line per step, none repeated after the resumes
    steps = [json.loads(line)["step"] for line in (part / "train_log.jsonl").read_text().splitlines()
             if "val" not in json.loads(line)]
    assert steps == list(range(1, 7))


def test_checkpoint_files_are_safetensors_with_json_metadata(tmp_path):
    cfg = TrainConfig(steps=3, checkpoint_every=1, keep=2, **TINY)
    result = train(tmp_path, cfg, data=standin, progress=False)
    ckpts = sorted(p.name for p in tmp_path.glob("checkpoint-*.safetensors"))
    assert ckpts == ["checkpoint-0000002.safetensors", "checkpoint-0000003.safetensors"]  # keep=2
    with safe_open(str(result.checkpoint), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["step"] == "3" and TrainConfig.from_dict(json.loads(meta["train_config"])) == cfg
    opt = json.loads(meta["opt"])
    assert opt["param_groups"][0]["betas"] == list(cfg.betas)
    assert any(k.startswith("opt.") and k.endswith(".exp_avg_sq") for k in keys) and "torch_rng" in keys
    # the final model loads with load_model and keeps its architecture
    assert load_model(result.model_path).cfg == MODEL_PRESETS["tiny"]
    # a checkpoint given to restore is named for what it is, with the model to give instead
    with pytest.raises(ValueError, match=r"is a training checkpoint .*restore with the model beside it: "
                                         r"--model .*model\.safetensors"):
        load_model(result.checkpoint)
    # without a model beside it (a run still going), a checkpoint gives its network at that step
    alone = tmp_path / "running" / result.checkpoint.name
    alone.parent.mkdir()
    alone.write_bytes(result.checkpoint.read_bytes())
    looked_at, final = load_model(alone), _weights(result.model_path)
    assert looked_at.cfg == MODEL_PRESETS["tiny"]
    assert all(torch.equal(looked_at.state_dict()[k], final[k]) for k in final)  # step 3 is the last step
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert {"l1", "mlwt", "fourier", "mean", "std", "lr", "loss"} <= set(log[0])
    assert any("val" in line for line in log)


def test_fine_tune_from_a_saved_model(tmp_path):
    torch.manual_seed(5)
    start = CGRDN(MODEL_PRESETS["tiny"])
    path = save_model(start, tmp_path / "start.safetensors")
    cfg = TrainConfig(steps=2, checkpoint_every=2, init=str(path), **{**TINY, "model": "small"})
    result = train(tmp_path / "run", cfg, data=standin, progress=False)
    tuned = load_model(result.model_path)
    assert tuned.cfg == MODEL_PRESETS["tiny"]  # the loaded architecture, not cfg.model
    moved = [not torch.equal(a, b) for a, b in zip(start.state_dict().values(), tuned.state_dict().values())]
    assert any(moved)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=200, warmup=20, lr=1e-3, lr_final=1e-5)
    lrs = [learning_rate(cfg, s) for s in range(200)]
    assert lrs[19] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:20])) and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


@pytest.mark.parametrize("bad, match", [
    ({"patch": 40}, "multiple of 16"),
    ({"patch": 8}, "patch must be an integer >= 16"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"batch": 2.5}, "batch must be an integer"),
    ({"modality": "sem"}, "modality must be one of"),
    ({"resolution": "medium"}, "resolution must be one of"),
    ({"model": "huge"}, "model must be one of"),
    ({"model": {"features": 8, "colour": 3}}, "unknown CGRDN config keys"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"weights": {"l3": 1.0}}, "unknown loss weights"),
    ({"balance": "median"}, "balance must be one of"),
    ({"noise_only": 1.5}, r"noise_only must be a fraction in \[0, 1\]"),
    ({"noise_only": 0.3}, "applies to data 'scenes' only"),
    ({"max_jitter_angstrom": -0.3, "data": "scenes"}, "max_jitter_angstrom must be a positive number"),
    ({"max_jitter_angstrom": 0.3}, "applies to data 'scenes' only"),
    ({"betas": (0.9, 1.5)}, "betas"),
])
def test_bad_options_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad).checked()


def test_existing_run_needs_resume_and_resume_needs_same_options(tmp_path):
    cfg = TrainConfig(steps=2, checkpoint_every=1, **TINY)
    train(tmp_path, cfg, data=standin, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(tmp_path, cfg, data=standin, progress=False)
    changed = TrainConfig.from_dict({**cfg.to_dict(), "lr": 1e-2, "steps": 4})
    with pytest.raises(ValueError, match=r"cannot resume with changed options \(lr"):
        train(tmp_path, changed, data=standin, progress=False, resume=True)
    longer = TrainConfig.from_dict({**cfg.to_dict(), "steps": 3})  # more steps is fine
    assert train(tmp_path, longer, data=standin, progress=False, resume=True).step == 3


def test_data_function_with_wrong_shape_is_an_error(tmp_path):
    def wrong(n, shape, modality, resolution, rng):
        return np.zeros((n, 1, 8, 8), np.float32), np.zeros((n, 1, 8, 8), np.float32)

    with pytest.raises(ValueError, match="expected"):
        train(tmp_path, TrainConfig(steps=1, **TINY), data=wrong, progress=False)


def test_data_workers_train_the_same_weights_as_pairs_made_between_steps(tmp_path):
    """Pairs made ahead by two spawned workers (the held-out scene distribution, which must pickle
    for them) give the same weights, bit for bit, as pairs made in the loop; so does a run stopped
    and resumed with workers (their steps start at the checkpoint's)."""
    from emfuse.pipeline.synth.scenes import held_out

    cfg = TrainConfig(steps=3, batch=2, patch=32, model="tiny", data="scenes", modality="all", resolution="all",
                      exclude=list(held_out("all")), val_size=0, checkpoint_every=2, warmup=1)
    between = train(tmp_path / "between", cfg, progress=False)
    ahead = train(tmp_path / "ahead", cfg, progress=False, data_workers=2)
    train(tmp_path / "resumed", replace(cfg, steps=2), progress=False, data_workers=1)
    resumed = train(tmp_path / "resumed", cfg, progress=False, resume=True, data_workers=2)
    expected = _weights(between.model_path)
    for run in (ahead, resumed):
        got = _weights(run.model_path)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), run.out
    assert ahead.last["loss"] == between.last["loss"] and ahead.step == 3


def test_data_workers_need_data_that_pickles(tmp_path):
    def local(n, shape, modality, resolution, rng):  # a closure: cannot be sent to a spawned worker
        return standin(n, shape, modality, resolution, rng)

    with pytest.raises(InputError, match="cannot be sent to worker processes"):
        train(tmp_path / "a", TrainConfig(steps=1, **TINY), data=local, progress=False, data_workers=1)
    with pytest.raises(InputError, match="data_workers must be >= 0"):
        train(tmp_path / "b", TrainConfig(steps=1, **TINY), data=standin, progress=False, data_workers=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train(tmp_path, TrainConfig(steps=1, **TINY), data=standin, progress=False, device="cuda")


# --- command line -------------------------------------------------------------------------


def test_cli_trains_a_few_steps(tmp_path, capsys):
    from emfuse.flows.cli import main

    out = tmp_path / "run"
    argv = ["train-restore", "--out", str(out), "--steps", "2", "--batch", "2", "--patch", "32",
            "--checkpoint-every", "1"]
    assert main(argv) == 0
    assert "model:" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main([*argv[:4], "3", *argv[5:], "--resume"]) == 0
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 3
    # a changed balance is a changed run: refused on resume, named
    assert main([*argv[:4], "4", *argv[5:], "--resume", "--balance", "relative"]) == 2
    assert "balance" in capsys.readouterr().err
    assert main([*argv[:2], str(tmp_path / "rel"), *argv[3:], "--balance", "relative"]) == 0
    assert json.loads((tmp_path / "rel" / "train_config.json").read_text())["balance"] == "relative"


def test_medium_preset_is_a_larger_cgrdn_the_command_line_offers():
    from emfuse.flows.tools.train_restore import training_config

    cfg = training_config(steps=10, batch=2, patch=64, modality="stem", config="medium")
    assert cfg.model == "medium"
    sizes = {name: sum(p.numel() for p in CGRDN(MODEL_PRESETS[name]).parameters()) for name in ("small", "medium")}
    assert sizes["medium"] == 1_455_361 and sizes["medium"] > 8 * sizes["small"]


@pytest.mark.parametrize("extra, match", [
    (["--patch", "40"], "multiple of 16"),
    (["--init", "r_em:sfr_hrstem", "--config", "paper"], "leave --config out"),
    (["--init", "no/such/model.safetensors"], "neither 'scratch'"),
    (["--steps", "0"], "steps must be"),
    (["--data-workers", "-1"], "data_workers must be >= 0"),
])
def test_cli_bad_arguments(tmp_path, capsys, extra, match):
    from emfuse.flows.cli import main

    assert main(["train-restore", "--out", str(tmp_path / "x"), *extra]) == 2
    assert match in capsys.readouterr().err


def test_cli_unknown_modality_is_rejected_by_argparse(tmp_path, capsys):
    from emfuse.flows.cli import main

    with pytest.raises(SystemExit):
        main(["train-restore", "--out", str(tmp_path), "--modality", "xray"])
    # sem exists only in the broad scene distribution
    assert main(["train-restore", "--out", str(tmp_path), "--modality", "sem"]) != 0
    assert "with data 'specimens'" in capsys.readouterr().err
    assert main(["train-restore", "--out", str(tmp_path), "--hold-out"]) != 0
    assert "--hold-out applies to --data scenes" in capsys.readouterr().err


def test_scenes_training_holds_out_and_records_it(tmp_path):
    """--data scenes --modality all --hold-out: the data drawn never holds a held-out family, and
    the run's config records the data source and what was held out."""
    import json

    from emfuse.flows.tools.train_restore import training_config
    from emfuse.pipeline.restore.train import _default_data
    from emfuse.pipeline.synth.scenes import held_out

    cfg = training_config(steps=2, batch=2, patch=32, modality="all", resolution="all", data="scenes",
                          hold_out=True)
    assert cfg.exclude == list(held_out("all")) and cfg.data == "scenes"
    draws = []
    import emfuse.pipeline.synth.scenes as scenes

    original = scenes.make_scene_pair

    def spy(*args, **kwargs):
        clean, degraded, info = original(*args, **kwargs)
        draws.append(info)
        return clean, degraded, info

    scenes.make_scene_pair = spy
    try:
        clean, degraded = _default_data(cfg)(24, (32, 32), "all", "all", np.random.default_rng(0))
    finally:
        scenes.make_scene_pair = original
    assert clean.shape == (24, 1, 32, 32)
    assert {d["modality"] for d in draws} == {"stem", "tem", "sem"}
    assert not {d["family"] for d in draws} & {"polycrystal"}
    assert not {d["contrast"] for d in draws} & {"abf"}
    assert all("row_line_sigma" not in d["distortion"] and "flicker_sigma" not in d["distortion"] for d in draws)
    cfg = training_config(steps=2, batch=2, patch=32, modality="all", resolution="all", data="scenes",
                          hold_out=True, config=None)
    from emfuse.pipeline.restore.train import TrainConfig, train

    tiny = TrainConfig.from_dict(dict(cfg.to_dict(), model="tiny", val_size=2, checkpoint_every=2))
    train(tmp_path / "run", tiny, progress=False)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["data"] == "scenes" and saved["exclude"] == list(held_out("all"))
    # --noise-only: that share of the pairs comes from a clean scan, still without the held-out things
    cfg = training_config(steps=2, batch=2, patch=32, modality="stem", resolution="high", data="scenes",
                          hold_out=True, noise_only=0.5)
    scenes.make_scene_pair = spy
    draws.clear()
    try:
        _default_data(cfg)(40, (32, 32), "stem", "high", np.random.default_rng(1))
    finally:
        scenes.make_scene_pair = original
    clean_scans = [d for d in draws if not {"jitter_line_x", "jitter_line_y", "jitter_pixel_x", "psf_gamma"}
                   & set(d["distortion"])]
    assert 10 <= len(clean_scans) <= 30  # about half (a full-table pair has a clean scan < 1 % of the time)
    assert not {d["family"] for d in draws} & {"polycrystal"}
    with pytest.raises(ValueError, match="--noise-only applies to --data scenes"):
        training_config(steps=2, batch=2, patch=32, modality="stem", noise_only=0.5)


@pytest.mark.slow
def test_fine_tune_r_em(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tk_r_em") is None:  # not imported: it would import TensorFlow
        pytest.skip("tk-r-em is not installed (pip install 'emfuse[r_em]')")
    cfg = TrainConfig(steps=1, batch=1, patch=32, init="r_em:sfr_hrstem", lr=1e-5, val_size=0, checkpoint_every=1)
    result = train(tmp_path, cfg, data=standin, progress=False)
    assert load_model(result.model_path).cfg == load_model("r_em:sfr_hrstem").cfg


def test_shipped_default_model_loads_and_restores():
    from emfuse.pipeline.metrics import psnr
    from emfuse.pipeline.restore import DEFAULT_MODEL
    from emfuse.pipeline.synth.distortions import SETTINGS, Draw
    from emfuse.pipeline.synth.restore_specimens import make_pair

    if not DEFAULT_MODEL.is_file():
        pytest.skip("no default model in this checkout")
    import dataclasses

    from emfuse.flows.tools.train_restore import PACKAGED_STD_FLOOR

    net = load_model()
    assert dataclasses.replace(net.cfg, std_floor=MODEL_PRESETS["small"].std_floor) == MODEL_PRESETS["small"]
    assert net.cfg.std_floor == PACKAGED_STD_FLOOR
    settings = dict(SETTINGS["stem", "high"], dose=Draw(low=50.0, high=50.0))
    gains = []
    for seed in (3_000_000, 3_000_001):  # seeds neither training nor the benchmark use
        clean, degraded, _ = make_pair((128, 128), "stem", "high", np.random.default_rng(seed), settings=settings)
        with torch.no_grad():
            out = net(torch.from_numpy(degraded)[None, None])[0, 0].numpy()
        gains.append(psnr(out, clean) - psnr(degraded, clean))
    assert min(gains) > 5, gains


def test_packaged_model_works_in_any_units(tmp_path):
    """A packaged own model has a tiny std floor: restoring ``a x + b`` gives ``a restore(x) + b``
    even for an image scaled to [0, 1] (std far below the published floor of 0.1), and its
    header keeps the training config and the last validation."""
    from emfuse.flows.tools.train_restore import PACKAGED_STD_FLOOR, package_model
    from emfuse.pipeline.restore.inference import restore
    from emfuse.pipeline.restore.train import TrainConfig, train

    cfg = TrainConfig(steps=2, batch=2, patch=32, model="tiny", val_size=2, checkpoint_every=2)
    train(tmp_path / "run", cfg, progress=False)
    path = package_model(tmp_path / "run", tmp_path / "own.safetensors", description="test model")
    net = load_model(path)
    assert net.cfg.std_floor == PACKAGED_STD_FLOOR
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["train_config"])["steps"] == 2 and "psnr" in json.loads(meta["validation"])
    image = np.random.default_rng(0).poisson(20.0, (48, 48)).astype(np.float32)
    scaled = image / image.max() * 0.05 + 0.3  # [0, 1]-like units: std ~0.01
    expected = restore(image, net) / image.max() * 0.05 + 0.3
    np.testing.assert_allclose(restore(scaled, net), expected, atol=1e-4 * 0.05)
    published_floor = load_model(tmp_path / "run" / "model.safetensors")  # floor 0.1: not equivariant
    assert np.abs(restore(scaled, published_floor) - expected).max() > 1e-3 * 0.05
