"""A minimal periodic table: element symbols H..U and their atomic numbers.

The store layer needs atomic numbers for the ``z`` coordinate of ``maps`` and
must not import :mod:`pipeline` (imports point one way), so it keeps its own
table of the 92 naturally occurring elements.

Examples
--------
>>> atomic_number("Sc")
21
>>> is_symbol("Xx")
False
"""

from __future__ import annotations

# Index + 1 is the atomic number.
SYMBOLS: tuple[str, ...] = (
    "H", "He",
    "Li", "Be", "B", "C", "N", "O", "F", "Ne",
    "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd",
    "In", "Sn", "Sb", "Te", "I", "Xe",
    "Cs", "Ba",
    "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu",
    "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg",
    "Tl", "Pb", "Bi", "Po", "At", "Rn",
    "Fr", "Ra",
    "Ac", "Th", "Pa", "U",
)  # fmt: skip

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
