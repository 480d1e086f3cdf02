"""Open and write canonical Zarr v3 stores through xarray.

Every store emfuse writes goes through this module, so the Zarr settings
(format 3, no consolidated metadata), the provenance attributes and the
``complete`` flag are handled in one place.

A store is written in two steps: its data with ``complete = False``, then the
flag is set to ``True``. A crash in between leaves a store that
:func:`open_dataset` refuses by default, never one that looks finished.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from .errors import OutputNotWritable, StoreError
from .layout import (
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_HOST,
    ATTR_INPUT_STORE,
    ATTR_PARAMS,
    ATTR_SHA256,
    ATTR_SOURCE,
    ATTR_TIMING,
    ATTR_VERSION,
    ZARR_KW,
)
from .version import emfuse_version


def sha256_file(path: str | Path, block_size: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in blocks (files may be larger than memory).

    A directory (a Zarr store given as source) hashes to the digest of its
    sorted relative paths and file contents.

    Parameters
    ----------
    path : str or pathlib.Path
        A file or a directory.
    block_size : int
        Bytes read at a time.

    Returns
    -------
    str
        The hexadecimal digest.
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


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from Zarr attributes (JSON types; tuples become lists).

    Parameters
    ----------
    value : object
        Anything; what JSON cannot hold is written as its ``str``.

    Returns
    -------
    object
        ``value`` through JSON: dicts, lists, strings, numbers, booleans and None.

    Examples
    --------
    >>> jsonable({"b": (1, 2), "a": None})
    {'a': None, 'b': [1, 2]}
    """
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def is_store(path: str | Path) -> bool:
    """True for a Zarr v3 store directory.

    Parameters
    ----------
    path : str or pathlib.Path
        Any path.

    Returns
    -------
    bool
        Whether ``path`` holds a ``zarr.json``.
    """
    return (Path(path) / "zarr.json").is_file()


def source_record(source: str | Path) -> dict[str, Any]:
    """``source_path`` and ``source_sha256`` of the instrument file behind ``source``.

    A store written by :func:`emfuse.stores.ingest.ingest` records the raw file it was read from;
    a job reading it carries that file's path and sha256 over (and names the store itself
    as ``input_store``), so an output says which recording it came from, not which
    intermediate copy. A store without that record (synthetic, or written by a user with
    xarray) is its own source. A file is hashed as it is.

    Parameters
    ----------
    source : str or pathlib.Path
        An instrument file or a store.

    Returns
    -------
    dict
        ``source_path`` and ``source_sha256`` (None for a file that does not exist), and
        ``input_store`` when ``source`` is a store.
    """
    source = Path(source)
    if not is_store(source):
        return {ATTR_SOURCE: str(source.resolve()),
                ATTR_SHA256: sha256_file(source) if source.exists() else None}
    attrs = read_attrs(source)
    record = {ATTR_INPUT_STORE: str(source.resolve())}
    if attrs.get(ATTR_SOURCE) and attrs.get(ATTR_SHA256):
        record.update({ATTR_SOURCE: attrs[ATTR_SOURCE], ATTR_SHA256: attrs[ATTR_SHA256]})
    else:
        record.update({ATTR_SOURCE: str(source.resolve()), ATTR_SHA256: sha256_file(source)})
    return record


def provenance(source: str | Path | None, *, params: Mapping[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
    """Attributes that say where a store came from and what wrote it.

    The one place every store (ingested input, synthetic data, output of any job) gets its
    provenance: ``emfuse_version``, ``created`` (UTC), ``host``, the instrument file's
    ``source_path`` and ``source_sha256`` (:func:`source_record`; with ``input_store`` when
    read through a canonical store), ``params`` when given (whatever the job holds: it is
    recorded as it is, JSON-converted), and any ``extra`` attributes.

    Parameters
    ----------
    source : str, pathlib.Path or None
        The instrument file or store the data came from; None for none (synthetic data).
    params : mapping, optional
        The parameters of the job, recorded as they are (JSON-converted).
    **extra
        More attributes.

    Returns
    -------
    dict
        The attributes, JSON types.
    """
    attrs: dict[str, Any] = {
        ATTR_VERSION: emfuse_version(),
        ATTR_CREATED: _now(),
        ATTR_HOST: socket.gethostname(),
    }
    if source is not None:
        attrs.update(source_record(source))
    if params is not None:
        attrs[ATTR_PARAMS] = jsonable(dict(params))
    attrs.update(jsonable(extra))
    return attrs


def begin_run(path: str | Path, **seconds: float) -> None:
    """Start this run's record in the store's ``timing`` (a new one per run, resumed runs too).

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    **seconds : float
        The seconds of stages already spent (e.g. ``ingest``, ``plan``).
    """
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    runs = list(group.attrs.get(ATTR_TIMING, []))
    runs.append({"started": _now(), "host": socket.gethostname(),
                 "seconds": {k: round(float(v), 3) for k, v in seconds.items()}})
    group.attrs[ATTR_TIMING] = runs


def add_timing(path: str | Path, stage: str, seconds: float) -> None:
    """Add ``seconds`` of ``stage`` to the current (last) run of the store's ``timing``.

    A stage called outside a runner (a notebook, a test) starts a run record of its own.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    stage : str
        The stage's name.
    seconds : float
        The wall time to add.
    """
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    runs = list(group.attrs.get(ATTR_TIMING, []))
    if not runs:
        runs = [{"started": _now(), "host": socket.gethostname(), "seconds": {}}]
    stages = dict(runs[-1]["seconds"])
    stages[stage] = round(stages.get(stage, 0.0) + float(seconds), 3)
    runs[-1] = {**runs[-1], "seconds": stages}
    group.attrs[ATTR_TIMING] = runs


@contextlib.contextmanager
def timed(path: str | Path, stage: str) -> Iterator[None]:
    """Record the wall time of the ``with`` block as ``stage`` in the store's ``timing``.

    Only when the block finishes: a failed stage is redone, and timed, by the next run.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    stage : str
        The stage's name.
    """
    start = time.perf_counter()
    yield
    add_timing(path, stage, time.perf_counter() - start)


def check_writable(path: str | Path, *, file: bool = False) -> Path:
    """Make sure ``path`` (a store directory to be) can be created and written.

    Parameters
    ----------
    path : str or pathlib.Path
        The store to be written.
    file : bool
        ``path`` is a file to be written (an exported signal, a model), which may replace an
        existing one: its folder is created and checked, never ``path`` itself.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputNotWritable
        naming the directory that cannot be written and what to do.
    """
    path = Path(path)
    parent = path.parent if file or not path.exists() else path
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
    """True when ``path`` is a Zarr group whose ``complete`` attribute is True.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.

    Returns
    -------
    bool
        True only for a store marked complete.
    """
    return completion(path) is True


def completion(path: str | Path) -> bool | None:
    """The ``complete`` flag of a store.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.

    Returns
    -------
    bool or None
        True, False (an interrupted write), or None when the store has no flag (written by
        someone else, e.g. a user with xarray) or is not a store.
    """
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return None
    flag = group.attrs.get(ATTR_COMPLETE)
    return None if flag is None else bool(flag)


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The group attributes of a store (without opening its arrays).

    Parameters
    ----------
    path : str or pathlib.Path
        The store.

    Returns
    -------
    dict
        The attributes.

    Raises
    ------
    StoreError
        When ``path`` is not a Zarr v3 store (or cannot be read).
    """
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except (OSError, ValueError) as exc:  # not a store, unreadable, or its zarr.json damaged
        raise StoreError(f"{path} is not a Zarr v3 store: {exc}") from exc
    return dict(group.attrs)


def update_attrs(path: str | Path, **attrs: Any) -> None:
    """Add or replace group attributes of an existing store.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    **attrs
        The attributes to add or replace.
    """
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def mark_complete(path: str | Path, complete: bool = True) -> None:
    """Set the ``complete`` flag; call only after the last write has finished.

    Marking complete also removes the temporary files of writes that were killed midway
    (Zarr writes ``<name>.<uuid>.partial`` and renames it): no writer is left to finish them.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    complete : bool
        The flag to set.
    """
    if complete:
        for leftover in Path(path).rglob("*.partial"):
            leftover.unlink(missing_ok=True)
    update_attrs(path, **{ATTR_COMPLETE: complete})


def open_dataset(path: str | Path, *, require_complete: bool = True) -> xr.Dataset:
    """Open a store lazily (dask arrays chunked as on disk).

    Parameters
    ----------
    path : str or pathlib.Path
        A Zarr v3 store written by emfuse.
    require_complete : bool
        Refuse stores whose ``complete`` flag is ``False`` (an interrupted write). A store
        without the flag (written by a user with xarray, say) is accepted: only emfuse's
        own writers set it, and they set it to ``False`` first.

    Returns
    -------
    xarray.Dataset
        The store's variables, lazily (dask arrays chunked as on disk), with its attributes.

    Raises
    ------
    StoreError
        When the store does not exist, cannot be read (not a Zarr v3 store, no permission,
        damaged metadata), or is not complete and ``require_complete`` is true.

    Examples
    --------
    >>> ds = open_dataset("run1.zarr")  # doctest: +SKIP
    >>> ds.haadf.sel(x=slice(0, 50))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist; ingest the raw file first (emfuse ingest).")
    if require_complete:
        _refuse_incomplete(path, completion(path))
    try:
        return xr.open_zarr(str(path), chunks={}, **ZARR_KW)
    except (OSError, ValueError, KeyError) as exc:  # not a store, unreadable, or damaged metadata
        raise StoreError(f"{path} is not a readable Zarr v3 store ({exc}); write it again.") from exc


def _refuse_incomplete(path: str | Path, flag: bool | None) -> None:
    if flag is False:
        raise StoreError(
            f"store {path} is not marked complete (an interrupted or failed write). "
            "Rerun the command that writes it; it resumes where it stopped."
        )


def open_arrays(path: str | Path, *names: str, require_complete: bool = False) -> dict[str, Any]:
    """Some arrays of a store, as Dask arrays chunked as on disk, without xarray.

    For a job's passes over a few arrays of its own output store (minima and maxima, a fit, a
    summary): :func:`open_dataset` decodes every variable, coordinate and index of the store,
    10-30 ms a call, where this takes about 1 ms. No dimension names, no coordinates; values as
    stored (emfuse's float arrays have NaN as their fill value, which reads back as NaN either
    way).

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    *names : str
        The arrays wanted.
    require_complete : bool
        Refuse a store whose ``complete`` flag is ``False``, as :func:`open_dataset` does (off by
        default: a job reads its own store while writing it).

    Returns
    -------
    dict
        ``name -> dask.array.Array`` for each of ``names`` the store holds (the others are left
        out: test with ``in``).

    Examples
    --------
    >>> arrays = open_arrays("grain-07.fuse.zarr", "haadf", "haadf_valid")  # doctest: +SKIP
    >>> float(arrays["haadf"].max())  # doctest: +SKIP
    """
    import dask.array as da  # here: the command line's early checks import this module

    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not a readable Zarr v3 store ({exc}); write it again.") from exc
    if require_complete:
        flag = group.attrs.get(ATTR_COMPLETE)
        _refuse_incomplete(path, None if flag is None else bool(flag))
    # named at random: Dask's default name hashes the zarr array, for nothing here
    return {name: da.from_zarr(group[name], name=f"{name}-{uuid.uuid4().hex}")
            for name in names if name in group}


def add_variables(path: str | Path, ds: xr.Dataset) -> None:
    """Add the variables of ``ds`` to an existing store, keeping the store's group attributes.

    ``Dataset.to_zarr(mode="a")`` replaces the group's attributes with the Dataset's own
    (empty for a Dataset made for the purpose), which would drop the provenance, the
    normalisation and the parameters; the store's attributes are written back with it.

    Parameters
    ----------
    path : str or pathlib.Path
        The store.
    ds : xarray.Dataset
        The variables to add; its own attributes win over the store's.
    """
    ds = with_vlen_strings(ds).copy()
    ds.attrs = {**read_attrs(path), **ds.attrs}
    ds.to_zarr(str(path), mode="a", **ZARR_KW)


def remove_store(path: str | Path) -> None:
    """Delete a store directory (used for ``--overwrite``).

    Parameters
    ----------
    path : str or pathlib.Path
        The store; nothing happens when it does not exist.
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)


def with_vlen_strings(ds: xr.Dataset) -> xr.Dataset:
    """Store text coordinates (element, term, mode) as variable-length strings.

    Fixed-width numpy strings (``<U2``) have no Zarr v3 specification yet;
    variable-length UTF-8 does, and reads back the same.

    Parameters
    ----------
    ds : xarray.Dataset
        Any dataset.

    Returns
    -------
    xarray.Dataset
        ``ds`` with its text coordinates as object (variable-length string) arrays.
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

    Parameters
    ----------
    ds : xarray.Dataset
        The dataset, dask-backed for data larger than memory.
    path : str or pathlib.Path
        The store to write.
    overwrite : bool
        Replace an existing store.
    encoding : mapping, optional
        Zarr encoding per variable (compressors, chunks...), passed to ``Dataset.to_zarr``.

    Returns
    -------
    pathlib.Path
        ``path``.

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
