"""benchmarks/gpu_check.sh and benchmarks/fusion_gpu.py, checked without a GPU (syntax, --help, --dry-run),
and on a stand-in for the lent GPU machine's image (its packages and the carried wheels alone)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
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


# --- the lent GPU machine's image: the check must run there with the carried wheels alone ---------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(path: Path) -> set[str]:
    return {_norm(line.strip()) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


@pytest.fixture(scope="module")
def device_image_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a Python that has only the device image's packages (as the device tool
    lists them), the wheels of benchmarks/device_wheels.txt and emfuse from the checkout: the import
    of every other package installed here fails (tests/device_image.py)."""
    allowed = (_names(ROOT / "tests" / "data" / "device_image_packages.txt")
               | _names(ROOT / "benchmarks" / "device_wheels.txt") | {"emfuse"})
    blocked = sorted(module for module, dists in importlib.metadata.packages_distributions().items()
                     if not any(_norm(d) in allowed for d in dists))
    assert "prefect" in blocked and "dask" not in blocked  # the image as described: no Prefect, Dask carried
    folder = tmp_path_factory.mktemp("device_image")
    (folder / "blocked.json").write_text(json.dumps(blocked))
    shutil.copy(ROOT / "tests" / "device_image.py", folder / "sitecustomize.py")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                OMP_NUM_THREADS="1")


def _run(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_device_image_refuses_what_it_lacks(device_image_env):
    """The stand-in is real: Prefect does not import, Dask (a carried wheel) does."""
    refused = _run(device_image_env, "-c", "import prefect")
    assert refused.returncode != 0 and "not on the device image" in refused.stderr
    assert _run(device_image_env, "-c", "import dask, zarr, distributed, emfuse.pipeline.fusion").returncode == 0


def test_gpu_tests_run_on_the_device_image_with_the_carried_wheels(device_image_env):
    """The files gpu_check.sh selects collect and their cudasim tests pass with no Prefect, no
    RosettaSciIO: a GPU test file that imported either would stop the device check."""
    # the files as gpu_check.sh selects them: its own command, run here
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text().splitlines()
    select = next(line for line in script if line.startswith("mapfile -t GPU_TESTS"))
    command = select.split("< <(", 1)[1].rsplit(")", 1)[0]
    files = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "tests/pipeline/test_fusion_cudasim.py" in files and len(files) >= 8
    result = _run(device_image_env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or cudasim", *files)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout) and "error" not in result.stdout.splitlines()[-1]


def test_gpu_benchmarks_start_on_the_device_image(device_image_env):
    dry = _run(device_image_env, "benchmarks/fusion_gpu.py", "--dry-run", "--size", "64", "--iters", "2",
               "--repeats", "1", "--crop", "32")
    assert dry.returncode == 0, dry.stderr[-2000:]
    for script in ("benchmarks/restore_speed.py", "benchmarks/gpu_train_restore.py"):
        shown = _run(device_image_env, script, "--help")
        assert shown.returncode == 0 and "usage" in shown.stdout, script + shown.stderr[-2000:]
