"""Safety of overnight runs on shared machines (issue 6, item 6).

- Nothing read from input is ever unpickled: a source scan of the project's
  packages for the loaders that can run code (``np.load`` without
  ``allow_pickle=False``, ``torch.load`` without ``weights_only=True``,
  ``pickle``/``yaml.load`` and friends), and the ingest of an archive whose
  pickled member would create a file when unpickled.
- Servers listen on loopback by default: the ``local`` Dask cluster and Prefect.

TLS for clusters that span machines is tested in ``test_cluster.py``.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stores", "flows", "cluster")

# -- the source scan ------------------------------------------------------------------

# Loaders that may unpickle, with the keyword (and value) that makes them safe.
GUARDED = {
    "numpy.load": ("allow_pickle", False),
    "cupy.load": ("allow_pickle", False),
    "xp.load": ("allow_pickle", False),  # the array namespace: numpy or cupy
    "torch.load": ("weights_only", True),
}
# Loaders that have no safe mode (or whose safe mode has its own name): never used.
FORBIDDEN = {
    "pickle.load": "unpickles",
    "pickle.loads": "unpickles",
    "pickle.Unpickler": "unpickles",
    "_pickle.load": "unpickles",
    "_pickle.loads": "unpickles",
    "cloudpickle.load": "unpickles",
    "cloudpickle.loads": "unpickles",
    "dill.load": "unpickles",
    "dill.loads": "unpickles",
    "joblib.load": "unpickles",
    "pandas.read_pickle": "unpickles",
    "shelve.open": "unpickles",
    "marshal.load": "loads code objects",
    "marshal.loads": "loads code objects",
    "torch.jit.load": "loads TorchScript code",
    "yaml.load": "use yaml.safe_load",
    "yaml.load_all": "use yaml.safe_load_all",
    "yaml.full_load": "use yaml.safe_load",
    "yaml.full_load_all": "use yaml.safe_load_all",
    "yaml.unsafe_load": "use yaml.safe_load",
    "yaml.unsafe_load_all": "use yaml.safe_load_all",
    "yaml.Loader": "use yaml.SafeLoader",
    "yaml.UnsafeLoader": "use yaml.SafeLoader",
    "yaml.FullLoader": "use yaml.SafeLoader",
}
ALIASES = {"np": "numpy", "cp": "cupy", "pd": "pandas"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, from every import in the module (also nested ones)."""
    names = dict(ALIASES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load``; None for anything that is not a name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def scan_source(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe loader use in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    called = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called.add(id(node.func))
        name = _dotted(node.func, aliases)
        if name in GUARDED:
            keyword, safe = GUARDED[name]
            values = [k.value for k in node.keywords if k.arg == keyword]
            if not (values and isinstance(values[0], ast.Constant) and values[0].value is safe):
                found.append(f"{filename}:{node.lineno}: {name} without {keyword}={safe}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = _dotted(node, aliases)
            if name in FORBIDDEN:
                found.append(f"{filename}:{node.lineno}: {name} ({FORBIDDEN[name]})")
            elif name in GUARDED and id(node) not in called:
                # passed around (map(np.load, ...)): its keyword cannot be checked
                found.append(f"{filename}:{node.lineno}: {name} used without a call")
    # a forbidden name imported on its own (from pickle import loads) is caught by its uses
    return sorted(set(found))


def _project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_scanner_finds_unsafe_loaders():
    # the scan itself must see each kind of unsafe use (or the test below proves nothing)
    bad = textwrap.dedent(
        """
        import numpy as np
        import numpy
        import pickle
        import yaml
        import torch
        from numpy import load as npload
        from pickle import loads
        np.load("a.npy")
        numpy.load("a.npz", allow_pickle=True)
        npload("a.npy", mmap_mode="r")
        torch.load("m.pt")
        torch.load("m.pt", weights_only=False)
        pickle.load(open("f", "rb"))
        loads(b"")
        yaml.load(text, Loader=yaml.Loader)
        yaml.unsafe_load(text)
        arrays = list(map(np.load, files))
        """
    )
    found = scan_source(bad)
    for line in (9, 10, 11, 12, 13, 14, 15, 16, 17, 18):
        assert any(f":{line}:" in f for f in found), (line, found)
    good = textwrap.dedent(
        """
        import numpy as np, torch, yaml
        np.load("a.npz", allow_pickle=False)
        torch.load("m.pt", weights_only=True)
        yaml.safe_load(text)
        model.load_state_dict(state)
        """
    )
    assert scan_source(good) == []


def test_no_unsafe_loaders_in_project():
    files = _project_files()
    assert ROOT / "stores" / "formats" / "npz.py" in files
    found = [f for path in files for f in scan_source(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "unsafe loaders:\n" + "\n".join(found)
    # ... and the scan did see the project's real loaders (the .npz reader's np.load calls)
    npz_source = (ROOT / "stores" / "formats" / "npz.py").read_text()
    assert npz_source.count("allow_pickle=False") >= 2


# -- pickled input is refused, and nothing in it runs ------------------------------------


class _Payload:
    """Unpickling this creates ``path`` (as code in a malicious file would run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _object_array(marker: Path, shape=(3,)) -> np.ndarray:
    arr = np.empty(shape, dtype=object)
    arr.flat[0] = _Payload(marker)
    for i in range(1, arr.size):
        arr.flat[i] = "O"
    return arr


def _npy_bytes(arr: np.ndarray, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version, allow_pickle=True)
    return buf.getvalue()


def _archive(path: Path, marker: Path, where: str) -> Path:
    """An .npz in layout (a) whose ``where`` member is a pickled object array."""
    members = {"haadf": np.ones((16, 16)), "maps": np.ones((3, 16, 16)),
               "elements": np.array(["Fe", "O", "C"])}
    if where == "elements":
        members["elements"] = _object_array(marker)
    elif where == "haadf":
        members["haadf"] = _object_array(marker, (16, 16))
    elif where == "extra":
        members["notes"] = _object_array(marker, ())
    if where == "v3-header":  # numpy's rarer .npy header version, read by another path
        with zipfile.ZipFile(path, "w") as zf:
            for key, value in members.items():
                if key != "elements":
                    zf.writestr(f"{key}.npy", _npy_bytes(value))
            zf.writestr("elements.npy", _npy_bytes(_object_array(marker), version=(3, 0)))
    else:
        np.savez(path, **members)
    return path


def test_payload_is_live(tmp_path):
    # the control: unpickling the archive does run the payload, so the test below means something
    marker = tmp_path / "ran"
    path = _archive(tmp_path / "bad.npz", marker, "elements")
    with np.load(path, allow_pickle=True) as npz:
        npz["elements"]
    assert marker.exists()


@pytest.mark.parametrize("where", ["elements", "haadf", "extra", "v3-header"])
def test_ingest_refuses_pickled_npz(tmp_path, where):
    from emfuse.stores.errors import IngestError
    from emfuse.stores.ingest import ingest

    marker = tmp_path / "ran"
    path = _archive(tmp_path / "bad.npz", marker, where)
    out = tmp_path / "bad.zarr"
    with pytest.raises(IngestError) as err:
        ingest(path, out)
    message = str(err.value)
    assert "bad.npz" in message and "Python objects (pickled)" in message
    assert "does not load" in message and "np.savez" in message  # what to do instead
    assert not marker.exists(), "the pickled payload ran"
    assert not out.exists()


def test_zarr_store_with_pickle_codec_is_refused(tmp_path):
    # A Zarr v2 array of Python objects with the `pickle` codec: emfuse opens Zarr v3
    # only (where no pickle codec exists) and zarr itself refuses the v2 form.
    from emfuse.flows.jobs.inputs import resolve_store
    from emfuse.stores.zarrio import open_dataset

    marker = tmp_path / "ran"
    store = tmp_path / "evil.zarr"
    (store / "haadf").mkdir(parents=True)
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / ".zattrs").write_text(json.dumps({"complete": True}))
    (store / "haadf" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "compressor": None,
        "fill_value": None, "filters": [{"id": "pickle", "protocol": 5}], "order": "C",
    }))
    (store / "haadf" / ".zattrs").write_text(json.dumps({"_ARRAY_DIMENSIONS": ["x"]}))
    # the chunk as the v2 `pickle` codec writes it: a pickle of the object array
    (store / "haadf" / "0").write_bytes(pickle.dumps(_object_array(marker, (2,)), protocol=5))
    for attempt in (
        lambda: open_dataset(store).haadf.values,
        lambda: open_dataset(store, require_complete=False).haadf.values,
        lambda: resolve_store(store, tmp_path / "work"),
    ):
        with pytest.raises(Exception):  # noqa: B017 - each layer refuses in its own words
            attempt()
    assert not marker.exists()


# -- loopback by default ----------------------------------------------------------------


def _listening_hosts(process: psutil.Process) -> set[str]:
    return {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == "LISTEN"}


def test_local_cluster_listens_on_loopback():
    from distributed import Client

    from emfuse.cluster import make_cluster

    cluster = make_cluster("local", n_workers=1, threads_per_worker=1)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        with Client(cluster) as client:
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 1
            assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
            assert client.submit(sum, [1, 2]).result() == 3
            me = psutil.Process()
            assert _listening_hosts(me) == {"127.0.0.1"}  # scheduler, dashboard
            for child in me.children(recursive=True):  # the worker process
                assert _listening_hosts(child) <= {"127.0.0.1"}
    finally:
        cluster.close()


_PREFECT_PROBE = """
import emfuse.flows._prefect_env  # configures Prefect before it is imported
from prefect.settings import get_current_settings
s = get_current_settings()
print(s.server.api.host, s.runner.server.host)
"""


def _prefect_hosts(tmp_path: Path, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    clean.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT), **env)
    result = subprocess.run(
        [sys.executable, "-c", _PREFECT_PROBE], env=clean, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_prefect_servers_default_to_loopback(tmp_path):
    # a fresh process with no PREFECT_* variables: what Prefect itself resolves
    assert _prefect_hosts(tmp_path) == ["127.0.0.1", "127.0.0.1"]


@pytest.fixture
def saved_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_prefect_host_can_be_overridden(saved_environ, tmp_path):
    from emfuse.flows._prefect_env import configure_prefect

    os.environ["PREFECT_SERVER_API_HOST"] = "0.0.0.0"
    os.environ.pop("PREFECT_RUNNER_SERVER_HOST", None)
    configure_prefect(tmp_path / "prefect")
    assert os.environ["PREFECT_SERVER_API_HOST"] == "0.0.0.0"  # the user's choice is kept
    assert os.environ["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
