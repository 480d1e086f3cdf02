"""A lock file beside an output store, so that two runs never write the same store.

``out.zarr`` is locked by creating ``out.zarr.lock`` atomically (``O_CREAT | O_EXCL``); the
file records who holds it (host, process id, command, start time). A second run that finds
the lock is refused with a message naming the holder. A lock left by a process that no
longer exists on this host (a run killed with SIGKILL, a node that rebooted) is stale and is
taken over with a warning, so a crashed overnight run resumes without anyone deleting files.

The lock lives beside the store, not inside it: ``--overwrite`` removes the store itself.

Examples
--------
>>> with StoreLock("results/run1.fuse.zarr"):  # doctest: +SKIP
...     ...  # plan, compute, finalise
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import StoreError
from .zarrio import check_writable

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
UNREADABLE_GRACE_S = 60.0


class StoreLockedError(StoreError):
    """The output store is being written by another run."""


def lock_path(store: str | Path) -> Path:
    """The lock file of ``store`` (``out.zarr`` -> ``out.zarr.lock``)."""
    store = Path(store)
    return store.with_name(store.name + LOCK_SUFFIX)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _boot_id() -> str | None:
    """This boot of this host (Linux): a process id from before a reboot means nothing now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _holder() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id(),
            "command": " ".join(sys.argv)[:500], "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written this instant, or garbage: treat as held by an unknown run


def _is_stale(holder: dict[str, object], path: Path) -> bool:
    """True when the holder is a process of this host that no longer runs (or ran before a reboot).

    An empty or unreadable lock file (a crash between creating and writing it) is stale once it
    is older than :data:`UNREADABLE_GRACE_S`; younger, its writer may be filling it in now.
    """
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_GRACE_S
        except OSError:
            return True  # gone meanwhile
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    boot = holder.get("boot")
    if boot is not None and boot != _boot_id():
        return True
    return not _process_alive(pid)


class StoreLock:
    """Hold ``<store>.lock`` for the duration of a ``with`` block (re-entrant in one process)."""

    _held: dict[Path, int] = {}  # lock path -> depth, for nested use in one process

    def __init__(self, store: str | Path):
        self.store = Path(store)
        self.path = lock_path(self.store).absolute()

    def acquire(self) -> None:
        if StoreLock._held.get(self.path):
            StoreLock._held[self.path] += 1
            return
        if not self.path.exists():
            check_writable(self.path)  # names an unwritable output directory and the fix
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if not _is_stale(holder, self.path):
                    raise StoreLockedError(self._refusal(holder)) from None
                log.warning("%s: taking over the lock of %s, which no longer runs", self.store,
                            f"process {holder.get('pid')}" if holder else "an unreadable lock file")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_holder(), f)
            StoreLock._held[self.path] = 1
            return
        raise StoreLockedError(self._refusal(_read(self.path)))

    def release(self) -> None:
        depth = StoreLock._held.get(self.path, 0)
        if depth > 1:
            StoreLock._held[self.path] = depth - 1
            return
        StoreLock._held.pop(self.path, None)
        if _read(self.path).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _refusal(self, holder: dict[str, object]) -> str:
        who = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
               f"({holder.get('command')})") if holder else "another run"
        return (f"{self.store} is being written by {who}. Wait for that run to finish, or choose "
                f"another output (--out, or the catalog's `output`); if that run is gone (a node that died), delete {self.path}.")

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
