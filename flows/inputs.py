"""Turn what the user names (a store or a raw file) into a canonical store path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stores import ingest
from stores.layout import ATTR_INGEST_OPTIONS, ATTR_SHA256
from stores.zarrio import is_complete, read_attrs, sha256_file


def is_store(path: str | Path) -> bool:
    """True for a Zarr v3 store directory."""
    return (Path(path) / "zarr.json").is_file()


def resolve_store(
    source: str | Path,
    workdir: str | Path,
    *,
    elements: Sequence[str] | None = None,
    name: str | None = None,
    signal: str | int | None = None,
) -> Path:
    """The canonical store for ``source``, ingesting a raw file first if needed.

    A raw file ``run1.emd`` is ingested into ``<workdir>/run1.input.zarr`` (``<name>.input.zarr``
    when a batch names the dataset, so two ``run1.emd`` of different folders stay apart); an
    earlier ingest of the same bytes (same sha256) with the same options (``elements``,
    ``signal``: see :func:`stores.ingest.read`) is reused.
    """
    source = Path(source)
    if is_store(source):
        _check_store_signal(source, signal)
        return source
    if not source.exists():
        raise FileNotFoundError(
            f"{source} does not exist; give a canonical store or a raw file "
            f"({', '.join(sorted(ingest.SUPPORTED_SUFFIXES))})."
        )
    target = Path(workdir) / f"{name or source.stem}.input.zarr"
    if is_complete(target) and _same_ingest(target, source, elements, signal):
        return target
    return ingest.ingest(source, target, elements=elements, signal=signal, overwrite=True)


def _check_store_signal(store: Path, signal: str | int | None) -> None:
    """``--signal`` chooses among a raw file's spectrum images; a store holds the one it was
    ingested with, and another cannot be had from it."""
    if signal is None:
        return
    stored = (read_attrs(store).get(ATTR_INGEST_OPTIONS) or {}).get("signal")
    if stored != str(signal):
        raise ValueError(
            f"{store} is a store ingested with --signal {stored}; --signal {signal} chooses among a raw "
            "file's spectrum images: give the raw file, or ingest it again with that --signal."
        )


def _same_ingest(target: Path, source: Path, elements: Sequence[str] | None, signal: str | int | None) -> bool:
    """True when ``target`` holds ``source``'s bytes ingested with these options."""
    attrs = read_attrs(target)
    if attrs.get(ATTR_SHA256) != sha256_file(source):
        return False
    wanted = ingest.ingest_options(elements=list(elements) if elements else None, signal=signal)
    stored = attrs.get(ATTR_INGEST_OPTIONS) or {}
    return all(stored.get(key) == wanted[key] for key in ("elements", "signal"))
