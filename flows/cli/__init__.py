"""The ``emfuse`` command line.

Each subcommand is a thin layer over a flow or a store function (:mod:`.commands`, arguments in
:mod:`.parser`, printing in :mod:`.console`); errors that come from the data (bad input,
existing outputs, unwritable paths), every one an :class:`emfuse.errors.EmfuseError`, are
printed as one line naming the problem and the fix, with exit status 2. Any other exception is
a bug: it shows its traceback.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from emfuse.errors import EmfuseError

from .console import console_logging, plain_warnings
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` and return its exit status.

    ``argv`` None is this process's own command line (the ``emfuse`` script, ``python -m
    emfuse.flows.cli``), and the process ends with the command: the objects it made are then
    frozen out of the garbage collector (:func:`gc.freeze`), which spares the interpreter's exit
    a last collection of the 300,000 objects numpy, xarray, Dask, numba and matplotlib leave
    (about 1 s of a small job's 8). Exit handlers and thread joins still run.
    """
    try:
        return _run(argv)
    finally:
        if argv is None:
            gc.freeze()


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        # quiet Dask's per-worker INFO lines; inherited by worker processes
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    console_logging(args.verbose)
    try:
        with plain_warnings():
            return args.func(args)
    except EmfuseError as exc:
        if args.traceback:
            raise
        print(f"emfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
