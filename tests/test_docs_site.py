"""The documentation site builds with warnings as errors (what ``make docs`` runs).

``mkdocs build --strict`` fails on broken links between the pages, anchors that do not exist,
and docstrings of the API reference that mkdocstrings cannot read. Skipped without the ``docs``
extra (``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="user-guide/"' in home  # the README's docs/ links, relative to docs/
    assert (site / "changelog" / "index.html").is_file()
    api = (site / "api" / "fusion" / "index.html").read_text(encoding="utf-8")
    assert 'id="emfuse.pipeline.fusion.FusionParams"' in api  # rendered from the docstrings
