"""The docstring examples of emfuse and its four layers (pipeline, stores, cluster, flows) run.

Each module is imported by its package name (``emfuse.pipeline.fusion.solver``), not by file
path, so the package-dir mapping of pyproject.toml (the layer folders at the top of the
repository install as ``emfuse.<layer>``) is what the examples see. One test per module; an
example marked ``# doctest: +SKIP`` is not run (those that need a cluster, a GPU or a night's data).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["emfuse.pipeline", "emfuse.stores", "emfuse.cluster", "emfuse.flows"]
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = ["emfuse", "emfuse.api", "emfuse.periodic_table", "emfuse.signals", "emfuse.errors", "emfuse._lazy"]
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            if not info.name.endswith(".__main__"):  # importing it runs the command line
                names.append(info.name)
    return sorted(set(names))


MODULES = _modules()


def test_every_layer_module_is_collected():
    assert "emfuse.pipeline.fusion.solver" in MODULES
    assert "emfuse.stores.zarrio" in MODULES
    assert "emfuse.cluster.profiles" in MODULES
    assert "emfuse.flows.jobs.runner" in MODULES and "emfuse.flows.batch.morning" in MODULES


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
