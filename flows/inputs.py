"""Turn what the user names (a store or a raw file) into a canonical store path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stores import ingest
from stores.layout import ATTR_SHA256
from stores.zarrio import is_complete, is_store, read_attrs, sha256_file

__all__ = ["is_store", "resolve_store"]


def resolve_store(
    source: str | Path,
    workdir: str | Path,
    *,
    elements: Sequence[str] | None = None,
    name: str | None = None,
) -> Path:
    """The canonical store for ``source``, ingesting a raw file first if needed.

    A raw file ``run1.emd`` is ingested into ``<workdir>/run1.input.zarr`` (``<name>.input.zarr``
    when a batch names the dataset, so two ``run1.emd`` of different folders stay apart); an
    earlier ingest of the same bytes (same sha256) is reused.
    """
    source = Path(source)
    if is_store(source):
        return source
    if not source.exists():
        raise FileNotFoundError(
            f"{source} does not exist; give a canonical store or a raw file "
            f"({', '.join(sorted(ingest.SUPPORTED_SUFFIXES))})."
        )
    target = Path(workdir) / f"{name or source.stem}.input.zarr"
    if is_complete(target) and read_attrs(target).get(ATTR_SHA256) == sha256_file(source):
        return target
    return ingest.ingest(source, target, elements=elements, overwrite=True)
