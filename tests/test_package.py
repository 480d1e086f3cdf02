"""One import package: ``emfuse`` with its layers as subpackages, its version and public API."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

import emfuse

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "stores", "cluster", "flows")


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject's explicit package list (needed for the folder mapping) holds every folder with
    an __init__.py: a new subpackage left out would be missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {"emfuse"} | {"emfuse." + ".".join(p.parent.relative_to(ROOT).parts)
                          for layer in LAYERS for p in (ROOT / layer).rglob("__init__.py")}
    assert set(config["packages"]) == found
    assert config["package-dir"] == {"emfuse": "emfuse", **{f"emfuse.{x}": x for x in LAYERS}}


def test_the_layers_import_under_emfuse_only():
    import emfuse.pipeline.fusion as fusion

    assert Path(fusion.__file__).resolve().is_relative_to(ROOT / "pipeline")
    source = "\n".join(p.read_text() for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))
    for layer in LAYERS:  # no absolute import of a bare layer name is left
        assert f"\nfrom {layer}." not in source and f"\nimport {layer}." not in source


def test_public_api_and_version():
    assert emfuse.__version__ == emfuse.stores.version.emfuse_version() != ""
    for name in ("fuse", "restore", "fuse_modes", "ingest", "open_result", "run_catalog"):
        assert callable(getattr(emfuse, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        emfuse.nonsense  # noqa: B018


def test_import_is_light():
    """``import emfuse`` loads no layer beyond the version module and the leaf that loads the API at
    first use."""
    code = "import sys, emfuse; print(sorted(m for m in sys.modules if m.startswith(('emfuse.', 'torch', 'dask', 'prefect'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['emfuse._lazy', 'emfuse.stores', 'emfuse.stores.version']"


def test_the_weight_search_loads_scipy_only_when_it_runs():
    """A fusion with fixed weights imports the search module (its constants) but never estimates
    noise: scipy.optimize and scipy.ndimage (0.3-0.5 s of a small job's start) load on first use
    (``test_fuse_takes_auto_weights`` runs the search through them)."""
    code = ("import sys, emfuse.pipeline.fusion.auto, emfuse.pipeline.fusion.noise; "
            "print(sorted(m for m in sys.modules if m.startswith(('scipy.optimize', 'scipy.ndimage'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_fuse_takes_auto_weights():
    """``emfuse.fuse(..., lambda_chem="auto")`` chooses the weights as the command line does
    (a TypeError before), and the choice comes back with the result."""
    rng = np.random.default_rng(3)
    truth = rng.random((2, 32, 32)) + 0.5
    haadf = 30 * truth[0] + 10 * truth[1]
    counts = rng.poisson(10 * truth).astype(np.float32)
    result = emfuse.fuse(haadf, counts, [30, 10], lambda_chem="auto", lambda_tv="auto", n_iter=10)
    choice = result.lambda_choice
    assert choice is not None and choice.lambda_chem > 0 and choice.lambda_tv > 0
    assert result.params.lambda_chem == pytest.approx(choice.lambda_chem)
    assert result.params.lambda_tv == pytest.approx(choice.lambda_tv)
    fixed = emfuse.fuse(haadf, counts, [30, 10], lambda_chem=0.05, lambda_tv=0.1, n_iter=10)
    assert fixed.lambda_choice is None and fixed.params.lambda_tv == 0.1


@pytest.mark.slow
def test_the_wheel_holds_only_emfuse(tmp_path):
    import shutil

    source = tmp_path / "src"  # a copy: setuptools writes build/ beside the sources
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("emfuse", *LAYERS):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("emfuse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"emfuse", wheel.name.split("-py")[0] + ".dist-info"}
    assert "emfuse/pipeline/restore/models/default.safetensors" in names
    assert "emfuse/flows/cli/__init__.py" in names


def test_import_contracts(tmp_path):
    """The layer contracts of pyproject.toml ([tool.importlinter]) hold: import-linter run on the
    package as a wheel lays it out (the layer folders copied under emfuse/; it cannot follow
    the setuptools folder mapping)."""
    import shutil

    pytest.importorskip("importlinter")
    package = tmp_path / "emfuse"
    shutil.copytree(ROOT / "emfuse", package, ignore=shutil.ignore_patterns("__pycache__"))
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, package / layer, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 kept, 0 broken" in out.stdout


def test_restore_keeps_a_dataarrays_labels(shared_data, tmp_path):
    """``emfuse.restore(ds.haadf)``, as a notebook user calls it on a store's image: a DataArray
    comes back with the dimensions, coordinates (nm) and attributes (a numpy array before)."""
    store = emfuse.ingest(shared_data / "formats" / "128x128_TEM_acquire-sum1.emi", tmp_path / "t.zarr")
    image = emfuse.open_result(store).haadf
    restored = emfuse.restore(image)
    assert restored.dims == ("y", "x") and restored.shape == (128, 128)
    np.testing.assert_array_equal(restored.x.values, image.x.values)
    assert restored.x.attrs["units"] == "nm" and restored.attrs["microscope"] == image.attrs["microscope"]
    assert restored.attrs["description"] == "haadf restored by default"
    np.testing.assert_allclose(restored.values, emfuse.restore(image.values), rtol=1e-6)
