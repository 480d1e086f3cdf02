"""CGRDN in PyTorch against the published r_em networks (tk-r-em 1.0.4), weights, loading."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import emfuse.pipeline.restore as restore
from emfuse.pipeline.restore import MODEL_NAMES, load_model, save_model
from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig, Standardise
from emfuse.pipeline.restore.weights import BundleError, read_bundle, read_bundle_index


def _r_em_models() -> Path | None:
    spec = importlib.util.find_spec("tk_r_em")  # locates the package without importing TensorFlow
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


needs_r_em = pytest.mark.skipif(
    _r_em_models() is None, reason="tk-r-em not installed (pip install 'emfuse[r_em]')"
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a shared 2-core machine two torch threads wait on each other (6x slower seen).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """EMFUSE_CACHE_DIR pointed at a fresh directory for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("emfuse_cache")
        mp.setenv("EMFUSE_CACHE_DIR", str(root))
        yield root / "models"


@pytest.fixture(scope="module")
def hrstem(cache):
    if _r_em_models() is None:
        pytest.skip("tk-r-em not installed (pip install 'emfuse[r_em]')")
    return load_model("r_em:sfr_hrstem")


def _run(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None])[:, 0].numpy()


@needs_r_em
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parity_with_published_networks(name, cache, shared_data):
    with np.load(shared_data / "restore" / "r_em_reference.npz") as ref:
        key = name.split(":")[1]
        x, expected = ref[f"{key}__input"], ref[f"{key}__output"]
    net = load_model(name)
    assert sum(p.numel() for p in net.parameters()) == 7_035_521
    assert not net.training and next(net.parameters()).dtype == torch.float32
    err = np.abs(_run(net, x) - expected).max() / np.ptp(expected)
    assert err <= 1e-3, f"{name}: max |ours - published| = {err:.2e} of the output range"


@needs_r_em
def test_cache_is_written_then_used_without_tk_r_em(hrstem, cache, monkeypatch):
    cached = cache / f"r_em_sfr_hrstem-{restore.R_EM_VERSION}.safetensors"
    assert cached.is_file()

    def no_r_em(name):
        raise AssertionError("tk-r-em touched although the model is cached")

    monkeypatch.setattr(restore, "_r_em_model_dir", no_r_em)
    again = load_model("r_em:sfr_hrstem")
    for (k, a), b in zip(hrstem.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    # and a damaged cache is converted again instead of failing
    cached.write_bytes(cached.read_bytes()[:1000])
    monkeypatch.undo()
    assert load_model("r_em:sfr_hrstem").cfg == hrstem.cfg
    assert cached.stat().st_size > 28_000_000


@needs_r_em
def test_odd_sizes_give_same_size_output(hrstem):
    rng = np.random.default_rng(0)
    x = rng.poisson(1000.0, (1, 127, 133)).astype(np.float32)
    for mode in ("reflect", "constant"):
        hrstem.pad_mode = mode
        y = _run(hrstem, x)
        assert y.shape == x.shape and np.isfinite(y).all()
    hrstem.pad_mode = "reflect"


@needs_r_em
def test_output_follows_affine_changes_of_the_input(hrstem, shared_data):
    # The network standardises each image and undoes it at the end, so restoring a*x + b
    # gives a * restore(x) + b (a > 0, std above the 0.1 floor).
    with np.load(shared_data / "restore" / "r_em_reference.npz") as ref:
        x = ref["sfr_hrstem__input"][:, :64, :64]
    y = _run(hrstem, x)
    a, b = 3.5, 250.0
    y2 = _run(hrstem, a * x + b)
    assert np.abs(y2 - (a * y + b)).max() <= 1e-4 * np.ptp(a * y)


def test_standardise_uses_population_std_and_floor():
    x = torch.arange(12.0).reshape(2, 1, 2, 3)
    xs, mean, std = Standardise(0.1)(x)
    assert mean.shape == std.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(std.flatten(), [np.std(np.arange(6.0))] * 2, rtol=1e-6)
    np.testing.assert_allclose(xs.mean(dim=(-2, -1)), 0, atol=1e-6)
    _, _, flat_std = Standardise(0.1)(torch.full((1, 1, 4, 4), 7.0))
    assert flat_std.item() == pytest.approx(0.1)


def test_published_architecture_size():
    with torch.device("meta"):
        assert sum(p.numel() for p in CGRDN().parameters()) == 7_035_521


def _copy_bundle(tmp_path: Path) -> Path:
    src = _r_em_models() / "sfr_hrstem" / "variables"
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "variables"


@needs_r_em
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_bundle_index_is_reported(tmp_path, damage):
    prefix = _copy_bundle(tmp_path)
    index = Path(f"{prefix}.index")
    data = bytearray(index.read_bytes())
    assert len(read_bundle_index(prefix)) == 307  # 153 kernels, 153 biases, the object graph
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x40
    index.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"variables\.index.*damaged or truncated.*pip install"):
        read_bundle_index(prefix)


@needs_r_em
def test_truncated_bundle_data_is_reported(tmp_path):
    prefix = _copy_bundle(tmp_path)
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:1_000_000])
    with pytest.raises(BundleError, match=r"data-00000-of-00001.*runs past the end.*pip install"):
        read_bundle(prefix)


def test_missing_tk_r_em_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EMFUSE_CACHE_DIR", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tk_r_em" else real(n, *a))
    with pytest.raises(ImportError, match=r"pip install 'emfuse\[r_em\]'.*GPLv3"):
        load_model("r_em:sfr_lrtem")


def test_default_model_and_paths(tmp_path, monkeypatch):
    default = tmp_path / "models" / "default.safetensors"
    monkeypatch.setitem(restore.MODEL_FILES, "default", default)
    with pytest.raises(FileNotFoundError, match=r"'default' is not part of this version.*--model auto.*r_em:sfr_hrstem"):
        load_model()
    cfg = CGRDNConfig(features=8, growth=4, groups=2, blocks=1, layers=2)
    net = CGRDN(cfg)
    save_model(net, default)
    loaded = load_model()
    assert load_model("default").cfg == cfg
    assert loaded.cfg == cfg and not loaded.training
    x = torch.rand(1, 1, 9, 12) * 100
    with torch.inference_mode():
        # channels-last weights (load_model) change the summation order only
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=1e-5, atol=1e-3)
    assert load_model(str(default)).cfg == cfg
    # an own model per modality, by name, once its file is in the package
    monkeypatch.setitem(restore.MODEL_FILES, "tem-low", tmp_path / "models" / "tem-low.safetensors")
    with pytest.raises(FileNotFoundError, match=r"'tem-low' is not part of this version.*this version has default"):
        load_model("tem-low")
    small = CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=1)
    save_model(CGRDN(small), restore.MODEL_FILES["tem-low"])
    assert load_model("tem-low").cfg == small
    with pytest.raises(ValueError, match="neither a model name"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown r_em model"):
        load_model("r_em:sfr_xyz")
    # tem-fuse's AVAE file is another emfuse network: named as such, with where it belongs
    from emfuse.pipeline.avae.model import RESIDUAL_WIENER_WEIGHTS

    with pytest.raises(ValueError, match=r"is not a restoration network: its format is 'emfuse-avae-1' "
                                         r"\(tem-fuse's AVAE: give it to emfuse tem-fuse --model\)"):
        load_model(RESIDUAL_WIENER_WEIGHTS)
