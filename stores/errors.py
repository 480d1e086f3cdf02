"""Errors raised by the store layer.

They derive from :class:`emfuse.errors.EmfuseError` (an error emfuse explains in
one line; the command line prints it without a traceback) and from the built-in
exception a caller would expect (``ValueError`` for bad content, ``OSError`` for
files that cannot be written) so that code which does not know emfuse still
catches them, and every message names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

# OutputNotWritable is kept in emfuse.errors (pipeline raises it too); re-exported here
from ..errors import EmfuseError, InputError
from ..errors import OutputNotWritable as OutputNotWritable


class IngestError(EmfuseError, ValueError):
    """A file cannot be read into the canonical layout (corrupt, truncated, unknown layout)."""


class ModesInputError(IngestError, InputError):
    """BF, DF and HRTEM files (and flat references) that cannot make one modes store: a mode
    missing, images of other shapes or pixel sizes, a flat reference that is not > 0, NaN pixels."""


class StoreError(EmfuseError, ValueError):
    """A store is missing, incomplete, or was written with other parameters."""


class DiskFull(EmfuseError, OSError):
    """The disk (or quota) holding an output store ran full while it was written.

    The store is kept, not marked complete: free space (or choose another output) and rerun
    the same command; what was finished is kept and only the rest is computed.
    """

    def __init__(self, message: str, code: int = errno.ENOSPC) -> None:
        super().__init__(message)  # one argument: the message reads without an "[Errno 28]" prefix
        self.errno = code

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.errno))


#: errno values that mean "no room left to write": the disk is full, the quota is spent, or a
#: file size limit (RLIMIT_FSIZE) was reached.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(exc: BaseException, store: object, *, resumable: bool = True) -> DiskFull | None:
    """A :class:`DiskFull` naming ``store`` when ``exc`` (or an exception it was raised from)
    is a write that failed for lack of space; None otherwise.

    ``resumable``: the store is kept for a rerun to finish (a job's output); otherwise the
    caller removes the partial store (an ingest), and the message says so.

    >>> import errno
    >>> err = disk_full(OSError(errno.ENOSPC, "No space left on device", "o.zarr/fused/c/0"), "o.zarr")
    >>> str(err).split(";")[0]
    'the disk holding o.zarr is full (No space left on device while writing o.zarr/fused/c/0)'
    >>> disk_full(OSError(errno.EACCES, "Permission denied"), "o.zarr") is None
    True
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return exc
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            where = f" while writing {exc.filename}" if exc.filename else ""
            if resumable:
                state, rerun = (f"{store} is kept and not marked complete",
                                ": what is finished is kept and only the rest is computed")
            else:
                state, rerun = f"the partial {store} was removed", ""
            return DiskFull(
                f"the disk holding {store} is full ({exc.strerror or os.strerror(exc.errno)}{where}); "
                f"{state}. Free space on that disk (or choose another --out), then rerun the same "
                f"command{rerun}.",
                exc.errno,
            )
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def on_disk_full(store: object, *, resumable: bool = True) -> Iterator[None]:
    """Turn a write that fails for lack of space inside the block into :class:`DiskFull`
    naming ``store`` (a job's output: kept, not marked complete, finished by a rerun).

    >>> import errno
    >>> try:
    ...     with on_disk_full("o.zarr"):
    ...         raise OSError(errno.ENOSPC, "No space left on device", "o.zarr/fused/c/1/0/0")
    ... except DiskFull as exc:
    ...     print(str(exc).split(";")[1].strip())
    o.zarr is kept and not marked complete. Free space on that disk (or choose another --out), then rerun the same command: what is finished is kept and only the rest is computed.
    """
    try:
        yield
    except Exception as exc:
        full = disk_full(exc, store, resumable=resumable)
        if full is None or full is exc:
            raise
        raise full from exc


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, sort_keys=True)


def params_differ(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """``"name: <in the store> -> <now>"`` for each parameter that differs (only ``keys`` if given).

    Examples
    --------
    >>> params_differ({"tile": 512, "gamma": 1.6}, {"tile": 256, "gamma": 1.6})
    ['tile: 512 -> 256']
    """
    old, new = (json.loads(json.dumps(dict(p), sort_keys=True, default=str)) for p in (old, new))
    names = sorted(set(old) | set(new)) if keys is None else sorted(keys)
    return [f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in names if old.get(k) != new.get(k)]


def other_parameters_error(path: str | Path, differ: list[str]) -> StoreError:
    """The error for an output store written with other parameters, listing only those that differ."""
    return StoreError(
        f"{path} was written with other parameters (differ: {'; '.join(differ)}; store -> now); "
        "pass --overwrite to replace it, or choose another --out."
    )
