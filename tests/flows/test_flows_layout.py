"""emfuse.flows by concern (docs/ARCHITECTURE.md): every module imports on its own, no import
cycles, no private name imported from another module, the command line's entry points hold.

The import-linter contracts of pyproject.toml (the flows layers and ``acyclic_siblings``) are run
by tests/test_package.py::test_import_contracts; the checks here need nothing but the sources."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "flows"
SUBPACKAGES = ("cli", "batch", "tools", "jobs", "report")


def flows_modules() -> dict[str, Path]:
    """Every module of flows by its dotted name (a package by its own name), __main__ left out."""
    modules = {}
    for path in sorted(FLOWS.rglob("*.py")):
        parts = path.relative_to(FLOWS).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("emfuse", "flows", *parts))] = path
    return modules


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of emfuse in the file,
    those inside functions too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] == "emfuse":
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "emfuse"]
    return found


def test_the_subpackages_are_listed_and_documented():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    architecture = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for sub in SUBPACKAGES:
        assert (FLOWS / sub / "__init__.py").is_file()
        assert f"emfuse.flows.{sub}" in packages
        assert f"| `{sub}/` |" in architecture
    contracts = {c["type"]: c for c in config["tool"]["importlinter"]["contracts"]}
    assert contracts["acyclic_siblings"]["ancestors"] == ["emfuse.flows"]
    assert contracts["layers"]["layers"] == ["cli", "batch | tools", "jobs", "report"]


def test_no_private_name_is_imported_from_another_module():
    """``from X import _name`` only within one module: a helper two modules share is public.

    A private *module* of flows (``_prefect_env``) may be imported inside flows: the
    import-linter contract ``private_modules`` keeps it there."""
    modules = flows_modules()
    offences = [f"{path.relative_to(ROOT)}:{line}: {name} from {target}"
                for module, path in modules.items()
                for target, names, line in imports_of(module, path)
                for name in names if name.startswith("_") and f"{target}.{name}" not in modules]
    assert not offences, "\n".join(offences)


def test_no_import_cycles_among_flows_modules():
    """Module-level and deferred imports alike: the graph of flows' own modules is acyclic (a
    package's ``__init__`` imports its children, so nothing below may import its package)."""
    modules = flows_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names, _ in imports_of(module, path):
            candidates = [f"{target}.{n}" for n in names] + [target]
            for dep in candidates:
                if dep in modules and dep != module:
                    graph[module].add(dep)
                    break

    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep):] + [dep] if dep in trail else [node, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.slow  # 25 s: a fresh interpreter per module; the import contracts check cycles in the default suite
def test_every_flows_module_imports_on_its_own():
    """Each module imported first, in an interpreter of its own (a fork of one that loaded only
    third-party libraries), so an import that works only after another module fails here."""
    names = sorted(flows_modules())
    script = (
        "import os, sys, traceback\n"
        "import numpy, xarray, dask.array, zarr, matplotlib.figure  # the heavy, shared part\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            __import__(name)\n"
        "        except BaseException:\n"
        "            traceback.print_exc()\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    if os.waitpid(pid, 0)[1] != 0:\n"
        "        failed.append(name)\n"
        "print('FAILED', *failed)\n"
        "sys.exit(1 if failed else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]


def test_command_line_entry_points():
    """``emfuse`` is ``emfuse.flows.cli:main``; ``python -m emfuse.flows.cli`` runs it too; the
    batch deployment's entrypoint names the flow where the package exports it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["scripts"]["emfuse"] == "emfuse.flows.cli:main"
    from emfuse.flows import cli
    from emfuse.flows.batch import batch_flow
    from emfuse.flows.batch.flow import ENTRYPOINT

    assert callable(cli.main) and callable(cli.build_parser)
    module, _, attribute = ENTRYPOINT.rpartition(".")
    assert getattr(__import__(module, fromlist=[attribute]), attribute) is batch_flow
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "emfuse.flows.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("emfuse "), out.stdout + out.stderr


def test_is_remote_is_cluster_policy():
    from emfuse.cluster import is_remote

    assert not is_remote("local") and not is_remote("local-threads")
    assert is_remote("slurm") and is_remote("tcp://10.0.0.1:8786")
    assert not is_remote("no-such-profile")  # connect() names the problem


def test_no_side_effects_at_import():
    """``import emfuse`` and ``import emfuse.flows`` (and the command line's module) set no
    Prefect variable and load no Prefect; the first module that uses Prefect configures it
    before Prefect reads its settings. (The fusion kernels' package sets ``OMP_WAIT_POLICY`` when
    imported, on purpose: it must be set before the OpenMP runtime loads.)"""
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import emfuse, emfuse.flows, emfuse.flows.cli\n"
        "changed = {k for k in set(os.environ) ^ set(before)} | {k for k in before if os.environ.get(k) != before[k]}\n"
        "assert changed <= {'OMP_WAIT_POLICY'}, changed\n"
        "assert 'prefect' not in sys.modules\n"
        "import emfuse.flows.jobs.flows\n"
        "from prefect.settings import get_current_settings\n"
        "s = get_current_settings()\n"
        "print(os.environ['PREFECT_HOME'] == str(s.home), s.server.ephemeral.enabled)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
