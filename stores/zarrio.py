"""Open and write canonical Zarr v3 stores through xarray.

Every store emfuse writes goes through this module, so the Zarr settings
(format 3, no consolidated metadata), the provenance attributes and the
``complete`` flag are handled in one place.

A store is written in two steps: its data with ``complete = False``, then the
flag is set to ``True``. A crash in between leaves a store that
:func:`open_dataset` refuses by default, never one that looks finished.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from .errors import OutputNotWritable, StoreError
from .layout import (
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_SHA256,
    ATTR_SOURCE,
    ATTR_VERSION,
    ZARR_KW,
)


def emfuse_version() -> str:
    """The installed emfuse version, or ``"unknown"`` when run from a bare checkout."""
    try:
        return metadata.version("emfuse")
    except metadata.PackageNotFoundError:  # pragma: no cover - only outside an install
        return "unknown"


def sha256_file(path: str | Path, block_size: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in blocks (files may be larger than memory).

    A directory (a Zarr store given as source) hashes to the digest of its
    sorted relative paths and file contents.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            while block := fh.read(block_size):
                digest.update(block)
    return digest.hexdigest()


def provenance(source: str | Path | None) -> dict[str, Any]:
    """Attributes that say where a store came from and what wrote it."""
    attrs: dict[str, Any] = {
        ATTR_VERSION: emfuse_version(),
        ATTR_CREATED: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if source is not None:
        source = Path(source)
        attrs[ATTR_SOURCE] = str(source.resolve())
        attrs[ATTR_SHA256] = sha256_file(source) if source.exists() else None
    return attrs


def check_writable(path: str | Path) -> Path:
    """Make sure ``path`` (a store directory to be) can be created and written.

    Raises
    ------
    OutputNotWritable
        naming the directory that cannot be written and what to do.
    """
    path = Path(path)
    parent = path.parent if not path.exists() else path
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot create the output directory {parent}: {exc.strerror or exc}. "
            "Choose an output path in a directory you can write (--out)."
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritable(
            f"the output directory {parent} is not writable. "
            "Choose an output path in a directory you can write (--out), or fix its permissions."
        )
    return path


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a Zarr group whose ``complete`` attribute is True."""
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return bool(group.attrs.get(ATTR_COMPLETE, False))


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The group attributes of a store (without opening its arrays)."""
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path} is not a Zarr v3 store: {exc}") from exc
    return dict(group.attrs)


def update_attrs(path: str | Path, **attrs: Any) -> None:
    """Add or replace group attributes of an existing store."""
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def mark_complete(path: str | Path, complete: bool = True) -> None:
    """Set the ``complete`` flag; call only after the last write has finished.

    Marking complete also removes the temporary files of writes that were killed midway
    (Zarr writes ``<name>.<uuid>.partial`` and renames it): no writer is left to finish them.
    """
    if complete:
        for leftover in Path(path).rglob("*.partial"):
            leftover.unlink(missing_ok=True)
    update_attrs(path, **{ATTR_COMPLETE: complete})


def open_dataset(path: str | Path, *, require_complete: bool = True) -> xr.Dataset:
    """Open a store lazily (dask arrays chunked as on disk).

    Parameters
    ----------
    path
        A Zarr v3 store written by emfuse.
    require_complete
        Refuse stores whose ``complete`` flag is not set (an interrupted write).

    Examples
    --------
    >>> ds = open_dataset("run1.zarr")  # doctest: +SKIP
    >>> ds.haadf.sel(x=slice(0, 50))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist; ingest the raw file first (emfuse ingest).")
    if require_complete and not is_complete(path):
        raise StoreError(
            f"store {path} is not marked complete (an interrupted or failed write). "
            "Rerun the command that writes it; it resumes where it stopped."
        )
    return xr.open_zarr(str(path), chunks={}, **ZARR_KW)


def remove_store(path: str | Path) -> None:
    """Delete a store directory (used for ``--overwrite``)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)


def with_vlen_strings(ds: xr.Dataset) -> xr.Dataset:
    """Store text coordinates (element, term, mode) as variable-length strings.

    Fixed-width numpy strings (``<U2``) have no Zarr v3 specification yet;
    variable-length UTF-8 does, and reads back the same.
    """
    text = {name: ds[name].astype(object) for name in ds.coords if ds[name].dtype.kind == "U"}
    return ds.assign_coords(text) if text else ds


def write_dataset(
    ds: xr.Dataset,
    path: str | Path,
    *,
    overwrite: bool = False,
    encoding: Mapping[str, Any] | None = None,
) -> Path:
    """Write a whole Dataset as a store and mark it complete.

    The Dataset's dask chunks become the Zarr chunks; the data are streamed
    chunk by chunk (with whatever Dask scheduler is active), so a dataset
    larger than memory goes through. ``complete`` is set only after the last
    chunk is written.

    Raises
    ------
    StoreError
        if the store exists and ``overwrite`` is False.
    OutputNotWritable
        if the output directory cannot be written.
    """
    path = check_writable(path)
    if path.exists():
        if not overwrite:
            raise StoreError(
                f"{path} already exists; pass --overwrite to replace it or choose another --out."
            )
        remove_store(path)
    ds = with_vlen_strings(ds).copy()
    ds.attrs[ATTR_COMPLETE] = False
    for var in ds.variables.values():
        var.encoding.pop("chunks", None)  # chunks come from dask, not from a source file
    ds.to_zarr(str(path), mode="w", encoding=dict(encoding or {}), **ZARR_KW)
    mark_complete(path)
    return path
