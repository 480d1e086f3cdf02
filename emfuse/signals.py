"""The signal-type vocabulary of spectrum images, kept once: ``"EDX"`` or ``"EELS"``.

Files, HyperSpy metadata and users name the two kinds of spectrum image in several ways
(``EDS_TEM``, ``XEDS``, ``eels``); every layer turns them into one of :data:`SIGNAL_TYPES`
with :func:`signal_type`. A leaf module (it imports nothing of ours), so that
:mod:`emfuse.stores` (ingest, readers) and :mod:`emfuse.pipeline` (spectra, synthetic data)
read the same names without importing each other.

Examples
--------
>>> signal_type("EDS_TEM"), signal_type(" eels "), signal_type(b"XEDS"), signal_type("")
('EDX', 'EELS', 'EDX', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["SIGNAL_TYPES", "SIGNAL_TYPE_NAMES", "signal_type"]

#: The canonical signal types.
SIGNAL_TYPES: tuple[str, ...] = ("EDX", "EELS")

#: Every accepted name (upper case) -> its canonical signal type.
SIGNAL_TYPE_NAMES: Mapping[str, str] = MappingProxyType({
    "EDX": "EDX",
    "EDS": "EDX",
    "XEDS": "EDX",
    "X-EDS": "EDX",
    "EDS_TEM": "EDX",  # HyperSpy's signal_type of TEM EDX data
    "EDS_SEM": "EDX",
    "EELS": "EELS",
})


def signal_type(value: Any) -> str | None:
    """``"EDX"`` or ``"EELS"`` for a name of a signal type (any case, str or bytes); None if unknown."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return SIGNAL_TYPE_NAMES.get(str(value or "").strip().upper())
