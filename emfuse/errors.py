"""The root of emfuse's errors, kept once: :class:`EmfuseError`.

Every error that comes from the user's data, files, parameters or environment, and that emfuse
explains in one line naming the problem and the fix, derives from :class:`EmfuseError`. The
command line prints such an error as one line (``emfuse fuse: error: ...``, exit status 2); any
other exception is a bug in emfuse and shows its traceback. In Python, ``except
emfuse.EmfuseError`` catches every explained error and nothing else.

Each subclass also derives from the built-in exception a caller would expect (``ValueError`` for
bad content or parameters, ``FileNotFoundError`` for a missing file, ``OSError`` for an output
that cannot be written), so code that does not know emfuse still catches them.

A leaf module (it imports nothing of ours), so that every layer raises the same classes without
importing another layer.

Examples
--------
>>> issubclass(InputError, ValueError), issubclass(InputFileNotFound, FileNotFoundError)
(True, True)
>>> try:
...     raise InputError("n_iter must be >= 1, got 0")
... except EmfuseError as exc:
...     print(exc)
n_iter must be >= 1, got 0
"""

from __future__ import annotations

__all__ = ["EmfuseError", "InputError", "InputFileNotFound", "InputNotReadable", "MissingDependency",
           "NotAvailableHere", "OutputNotWritable"]


class EmfuseError(Exception):
    """An error emfuse explains in one line: the user's data, files, parameters or environment.

    Every such error derives from this class, usually together with a built-in exception
    (``ValueError``, ``OSError``, ...). Anything else that escapes emfuse is a bug: the command
    line shows its traceback instead of one line.
    """


class InputError(EmfuseError, ValueError):
    """Bad input or parameters where no more specific class exists."""


class InputFileNotFound(EmfuseError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class InputNotReadable(EmfuseError, PermissionError):
    """A file or directory the user named exists but cannot be read (its permissions)."""


class MissingDependency(EmfuseError, ImportError):
    """An optional package that what was asked for needs is not installed (the message says which)."""


class NotAvailableHere(EmfuseError, RuntimeError):
    """What was asked for cannot run on this machine (a CUDA GPU, say); the message says the alternative."""


class OutputNotWritable(EmfuseError, PermissionError):
    """The output location cannot be created or written."""
