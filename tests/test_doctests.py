"""The docstring examples of emfuse, emfuse.pipeline, emfuse.stores and emfuse.cluster run.

Each module is imported by its package name (``emfuse.pipeline.fusion.solver``), not by file
path, so the package-dir mapping of pyproject.toml (the layer folders at the top of the
repository install as ``emfuse.<layer>``) is what the examples see. One test per module; an
example marked ``# doctest: +SKIP`` is not run. emfuse.flows is left out for now (its folder is
being restructured).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["emfuse.pipeline", "emfuse.stores", "emfuse.cluster"]
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = ["emfuse", "emfuse.api", "emfuse.periodic_table", "emfuse.signals"]
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            names.append(info.name)
    return sorted(set(names))


MODULES = _modules()


def test_every_layer_module_is_collected():
    assert "emfuse.pipeline.fusion.solver" in MODULES
    assert "emfuse.stores.zarrio" in MODULES
    assert "emfuse.cluster.profiles" in MODULES
    assert not any(name.startswith("emfuse.flows") for name in MODULES)


# the examples run the solvers for a few iterations: they are not meant to converge
@pytest.mark.filterwarnings("ignore::emfuse.pipeline.fusion.convergence.ConvergenceWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    # The finder takes only the objects defined in this module (by __module__), so an example
    # runs once, in its own module's test.
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    if not tests:
        pytest.skip("no examples")
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
