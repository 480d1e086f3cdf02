"""benchmarks/restore_quality.py: its test sets, scores, cache and targets on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import restore_quality as rq

SETS = ["polycrystal", "abf", "row_line_rel", "flicker_sigma", "tem-low", "sem", "narrow"]


def test_sets_scores_and_table(tmp_path):
    logs: list[str] = []
    cache = rq.Cache(tmp_path / "cache.json")
    results = rq.evaluate(SETS, ["raw", "truth", "gaussian"], n=1, size=32, n_val=1, cache=cache,
                          log=logs.append)
    summary = rq.summarise(results)
    assert list(summary) == SETS
    for name in SETS:
        assert list(summary[name]) == list(rq.DOSES)
        for cell in summary[name].values():
            assert set(cell) == {"raw", "truth", "gaussian"}
            assert cell["truth"]["psnr"] == math.inf and cell["truth"]["ssim"] == pytest.approx(1.0)
            assert cell["raw"]["psnr"] < cell["truth"]["psnr"]
            assert cell["raw"]["ssim"] < cell["truth"]["ssim"]
            assert cell["gaussian"]["ssim_below_raw"] in (0, 1) and "ssim_below_raw" not in cell["raw"]
            assert cell["raw"]["n"] == 1
    # more dose, less noise: raw PSNR rises with the dose on a set with the same scene per dose
    raw = [summary["narrow"][lv]["raw"]["psnr"] for lv in rq.DOSES]
    assert raw[0] < raw[2]
    table = rq.format_tables(summary, ["raw", "gaussian", "truth"], markdown=True)
    assert table.count("| dose |") == len(SETS) and "| low (5 e/px mean) |" in table
    lines = rq.targets(summary, ["gaussian"])
    assert {t["target"] for t in lines} == {"c"} and len(lines) == len(SETS) * 3
    # a second run reads everything from the cache (nothing computed)
    logs.clear()
    again = rq.evaluate(SETS, ["raw", "truth", "gaussian"], n=1, size=32, n_val=1,
                        cache=rq.Cache(tmp_path / "cache.json"), log=logs.append)
    assert again == results and not logs


def test_seeds_differ_between_sets_and_from_the_validation_images():
    a = rq.make_pairs("stem-high", "medium", 1, 32)[0][0]
    b = rq.make_pairs("abf", "medium", 1, 32)[0][0]
    c = rq.make_pairs("stem-high", "medium", 1, 32, base=rq.VAL_SEED)[0][0]
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({s.offset for s in rq.SETS.values() if s.group not in ("multem", "real")}) == 12


def test_clean_scan_sets_carry_the_detector_noise_alone():
    clean = rq.distortion_table(rq.SETS["stem-clean"], 500)
    full = rq.distortion_table(rq.SETS["stem-high"], 500)
    for name in ("jitter_line_x", "jitter_line_y", "jitter_pixel_x", "psf_gamma", "row_line_rel", "blur_sigma"):
        assert clean[name].p == 0.0
    assert full["jitter_line_x"].p > 0 and clean["pmt_rel"].p == full["pmt_rel"].p
    assert clean["dose"].low == clean["dose"].high == 500
    assert rq.SETS["polycrystal-clean"].group == "held-out" and rq.SETS["stem-clean"].group == "in-distribution"
    # at a high dose a clean scan's frame is close to its truth
    (truth, raw), = rq.make_pairs("polycrystal-clean", "high", 1, 64)
    assert np.corrcoef(truth.ravel(), raw.ravel())[0, 1] > 0.9


def test_targets_and_models():
    cell = {"raw": {"psnr": 10.0, "ssim": 0.2, "n": 4}, "bm3d": {"psnr": 20.0, "ssim": 0.5, "n": 4},
            "bm3d_vst": {"psnr": 21.0, "ssim": 0.6, "n": 4}, "r_em": {"psnr": 25.0, "ssim": 0.9, "n": 4},
            "u": {"psnr": 23.5, "ssim": 0.8, "n": 4, "ssim_below_raw": 1}}
    lines = {t["target"]: t for t in rq.targets({"polycrystal": {"low": cell}}, ["u"])}
    assert lines["a"]["pass"] and lines["a"]["value"] == pytest.approx(2.5)
    assert not lines["b"]["pass"] and lines["b"]["value"] == pytest.approx(-1.5)
    assert not lines["c"]["pass"]
    models = rq.parse_models(["u=a.safetensors", "s:tem=t.safetensors"])
    assert rq.model_file(models["u"], rq.SETS["tem-low"]).name == "a.safetensors"
    assert rq.model_file(models["s"], rq.SETS["tem-low"]).name == "t.safetensors"
    assert rq.model_file(models["s"], rq.SETS["sem"]) is None
    assert rq.SETS["multem-lrsem"].r_em == "r_em:sfr_lrsem" and rq.SETS["flicker_sigma"].r_em == "r_em:sfr_hrtem"


def test_multem_pairs():
    if rq.tk_r_em_data() is None:
        pytest.skip("tk-r-em is not installed")
    (clean, noisy), = rq.make_pairs("multem-lrtem", "as simulated", 1, 32)
    assert clean.shape == noisy.shape == (256, 256)
    assert rq.psnr(noisy, clean) < 40
