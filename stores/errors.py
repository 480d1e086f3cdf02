"""Errors raised by the store layer.

They subclass the built-in exception a caller would expect (``ValueError`` for
bad content, ``OSError`` for files that cannot be written) so that code which
does not know emfuse still catches them, and every message names the problem
and the fix.
"""

from __future__ import annotations


class IngestError(ValueError):
    """A file cannot be read into the canonical layout (corrupt, truncated, unknown layout)."""


class StoreError(ValueError):
    """A store is missing, incomplete, or was written with other parameters."""


class OutputNotWritable(PermissionError):
    """The output location cannot be created or written."""
