"""Element symbols H..U and their atomic numbers, as the store layer checks them.

The store layer needs atomic numbers for the ``z`` coordinate of ``maps`` and
must not import :mod:`emfuse.pipeline` (the layers are independent), so it reads
the symbols from the leaf module :mod:`emfuse.periodic_table`, the one table that
:mod:`emfuse.pipeline.elements` reads too. Unlike ``elements.atomic_number`` these
lookups are case-sensitive (a file's ``CO`` is not cobalt) and raise ``KeyError``.

Examples
--------
>>> atomic_number("Sc")
21
>>> is_symbol("Xx")
False
"""

from __future__ import annotations

from ..periodic_table import SYMBOLS

__all__ = ["SYMBOLS", "atomic_number", "is_symbol"]

_Z = {symbol: z for z, symbol in enumerate(SYMBOLS, start=1)}


def is_symbol(name: str) -> bool:
    """True when ``name`` is exactly an element symbol (case-sensitive, H..U)."""
    return name in _Z


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol.

    Raises
    ------
    KeyError
        for anything that is not a symbol H..U (symbols are case-sensitive:
        ``"Co"`` is cobalt, ``"CO"`` is not an element).
    """
    try:
        return _Z[symbol]
    except KeyError:
        raise KeyError(
            f"unknown element symbol {symbol!r}; use a chemical symbol H..U such as 'Co' or 'O'"
        ) from None
