"""Helpers shared by the benchmark scripts: memory and CPU of a process, run in Dask workers.

The functions take no arguments and read ``/proc/self``, so they are sent to every worker with
``client.run(fn)``. This module is pickled by value (the workers need not have ``benchmarks/``
on their path, e.g. workers of an existing scheduler).

Peak memory is the kernel's high-water mark of the process's resident set (``VmHWM``), which
:func:`reset_peak_rss` sets back to the current RSS (Linux >= 4.0): an exact peak between the
reset and the read, not a sample.

Examples
--------
>>> client.run(reset_peak_rss)  # doctest: +SKIP
>>> ...                         # the work to measure
>>> client.run(peak_rss)        # doctest: +SKIP
{'tcp://127.0.0.1:40001': 412876800, 'tcp://127.0.0.1:40003': 398458880}
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` in bytes; -1 when absent (not Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def reset_peak_rss() -> bool:
    """In a worker: reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss(pid: int | str = "self") -> int:
    """The RSS high-water mark (VmHWM) of a process (default: this one), bytes."""
    return _status_kib("VmHWM", pid)


def current_rss(pid: int | str = "self") -> int:
    """The resident set (VmRSS) of a process (default: this one), bytes."""
    return _status_kib("VmRSS", pid)


def cpu_seconds() -> float:
    """In a worker: CPU seconds (user + system) this process has used."""
    times = os.times()
    return times.user + times.system


def process_id() -> int:
    """In a worker: its process id (a changed id means the nanny restarted the worker)."""
    return os.getpid()
