"""benchmarks/gpu_check.sh and benchmarks/fusion_gpu.py, checked without a GPU (syntax, --help, --dry-run)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import fusion_gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


def test_fusion_benchmark_help(capsys):
    with pytest.raises(SystemExit) as stop:
        fusion_gpu.main(["--help"])
    assert stop.value.code == 0
    assert "--dry-run" in capsys.readouterr().out


def test_fusion_benchmark_dry_run_writes_its_figures(tmp_path):
    out = tmp_path / "fusion_gpu.json"
    rc = fusion_gpu.main(["--dry-run", "--size", "64", "--iters", "3", "--repeats", "1", "--crop", "32",
                          "--json", str(out)])
    figures = json.loads(out.read_text())
    assert rc == 0 and figures["dry_run"] and figures["timing"]["engine"] == "xp"
    assert figures["timing"]["bytes_moved_per_iteration_per_px"] == 4 * 138
    assert figures["agreement"]["ok"] and figures["agreement"]["max_diff_over_range"] <= 1e-5
