"""The emfuse version: one source (the installed package's metadata, from ``pyproject.toml``).

A module of its own, with no heavy imports, so that ``emfuse --version`` answers at once and
every store's ``emfuse_version`` attribute says the same.
"""

from __future__ import annotations

from importlib import metadata


def emfuse_version() -> str:
    """The installed emfuse version, or ``"unknown"`` when run from a bare checkout."""
    try:
        return metadata.version("emfuse")
    except metadata.PackageNotFoundError:  # pragma: no cover - only outside an install
        return "unknown"
