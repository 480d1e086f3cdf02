"""``emfuse synth tem-modes``, ``train-avae`` and ``tem-fuse`` end to end, in process under the Prefect harness."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emfuse.flows.cli import main
from emfuse.pipeline.avae.model import load_avae, model_info
from emfuse.stores.zarrio import is_complete, open_dataset

pytestmark = pytest.mark.prefect


def test_synth_train_fuse_report(prefect_harness, tmp_path, capsys):
    store, model, out = tmp_path / "tem.zarr", tmp_path / "m.safetensors", tmp_path / "fused.zarr"
    assert main(["synth", "tem-modes", "--out", str(store), "--shape", "96", "96", "--seed", "3"]) == 0
    assert main(["train-avae", str(store), "--out", str(model), "--steps", "4", "--batch", "4",
                 "--crop", "32", "--region", "48", "--features", "4", "--latent", "2",
                 "--attention-from", "stats"]) == 0
    printed = capsys.readouterr().out
    assert "step 4: reconstruction" in printed and "validation MSE" in printed
    info = model_info(model)
    assert info["regions"] == {"train": 3, "validation": 1} and info["settings"]["lr"] == 1e-4
    cfg = load_avae(model).cfg
    assert cfg.features == 4 and cfg.attention_from == "stats"
    # by default the recipe of tem-fuse's own weights: a residual on the Wiener HRTEM, mode gains, mode dropout
    assert (cfg.base, cfg.base_model, cfg.mode_gains, info["settings"]["mode_dropout"]) == (
        "restored_hrtem", "wiener", True, 0.25)
    assert main(["tem-fuse", str(store), "--out", str(out), "--model", str(model), "--tile", "64",
                 "--halo", "16", "--cluster", "local-threads"]) == 0
    printed = capsys.readouterr().out
    assert "attention:" in printed and "HRTEM alone" in printed
    assert is_complete(out)
    fused = open_dataset(out)
    assert fused.tem_fused.shape == (96, 96) and np.isfinite(fused.tem_fused.values).all()
    report = tmp_path / "fused.report"
    assert (report / "tem_fusion.png").stat().st_size > 10_000
    assert json.loads((report / "summary.json").read_text())["shapes"]["attention"] == [3, 96, 96]


def test_train_avae_residual_on_a_restored_hrtem(prefect_harness, tmp_path, capsys):
    """``--base restored_hrtem``: the model is a residual on the HRTEM restored by ``--base-model``
    (here a tiny network saved to a file), and tem-fuse uses it; a restoration network that does
    not exist is refused in one line."""
    import torch

    from emfuse.pipeline.restore import save_model
    from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig

    torch.manual_seed(2)
    restoration = save_model(CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2)),
                             tmp_path / "tiny.safetensors")
    store, model, out = tmp_path / "tem.zarr", tmp_path / "r.safetensors", tmp_path / "fused.zarr"
    assert main(["synth", "tem-modes", "--out", str(store), "--shape", "96", "96", "--seed", "4"]) == 0
    common = ["--steps", "2", "--batch", "2", "--crop", "16", "--region", "48", "--features", "4", "--latent", "2"]
    assert main(["train-avae", str(store), "--out", str(model), *common, "--base", "restored_hrtem",
                 "--base-model", str(restoration), "--no-mode-gains"]) == 0
    cfg = load_avae(model).cfg
    assert cfg.base == "restored_hrtem" and cfg.base_model == str(restoration) and not cfg.mode_gains
    plain = tmp_path / "plain.safetensors"
    assert main(["train-avae", str(store), "--out", str(plain), *common, "--base", "none"]) == 0
    assert (load_avae(plain).cfg.base, load_avae(plain).cfg.mode_gains) == ("none", False)
    assert main(["tem-fuse", str(store), "--out", str(out), "--model", str(model), "--tile", "96",
                 "--halo", "16", "--cluster", "local-threads"]) == 0
    assert open_dataset(out).attrs["base"]["model"] == str(restoration)
    capsys.readouterr()
    assert main(["train-avae", str(store), "--out", str(tmp_path / "x.safetensors"), *common,
                 "--base", "restored_hrtem", "--base-model", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(prefect_harness, tmp_path, capsys):
    si = tmp_path / "si.zarr"
    assert main(["synth", "spectrum-image", "--out", str(si), "--shape", "32", "32"]) == 0
    assert main(["tem-fuse", str(si), "--out", str(tmp_path / "o.zarr"), "--cluster", "local-threads"]) == 2
    assert "has no 'modes'" in capsys.readouterr().err
    assert main(["train-avae", str(si), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "has no 'modes'" in capsys.readouterr().err
    assert main(["train-avae", str(si), "--out", str(tmp_path / "m.safetensors"), "--mode-dropout", "1"]) == 2
    assert "mode_dropout (--mode-dropout) must be in [0, 1)" in capsys.readouterr().err
