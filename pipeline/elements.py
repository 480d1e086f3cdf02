"""The chemical elements for EDX and EELS work: lookups, checks and the choice of line or edge.

The facts (for H to U the symbol, the English name and the atomic number; for the elements met
in electron microscopy the main X-ray emission lines and EELS core-loss edge onsets, in eV) are
kept once, in :mod:`emfuse.periodic_table`, which also says where the energies come from and
why it is not ``xraydb``; this module builds :data:`ELEMENTS` on it. No file I/O, no network.

Examples
--------
>>> atomic_number("fe")
26
>>> validate_elements(["sr", "Ti", "O"])
('Sr', 'Ti', 'O')
>>> xray_line("Fe")
('Ka', 6403.8)
>>> eels_edge("Mn")
('L2,3', 640.0)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import EmfuseError, InputError
from ..periodic_table import EELS_EDGES_EV, EELS_SECONDARY_EV, SYMBOLS_AND_NAMES, XRAY_LINES_EV

__all__ = [
    "EELS_SECONDARY_EV",
    "ELEMENTS",
    "XRAY_FAMILIES",
    "DuplicateElement",
    "Element",
    "ElementError",
    "NoLineError",
    "UnknownElement",
    "atomic_number",
    "eels_edge",
    "element",
    "validate_elements",
    "window_hint",
    "xray_line",
    "xray_lines",
]

#: X-ray line families in the order :func:`xray_line` prefers them, each as (alpha, beta).
XRAY_FAMILIES: tuple[tuple[str, str], ...] = (("Ka", "Kb"), ("La", "Lb"), ("Ma", "Mb"))

# Only EELS edge families in this order are chosen automatically.
_EELS_FAMILIES = ("K", "L2,3", "M4,5")

# Why these limits: an EDX detector sees little below ~0.2 keV (B Ka at 183 eV is the lowest
# line a windowless SDD maps routinely, so the floor sits just under it); K lines are the
# cleanest choice up to ~10 keV, above that the L (then M) lines give more counts per dose
# because the K ionisation cross-section falls and thin detectors lose efficiency.
_XRAY_MIN_EV = 150.0
_XRAY_FAMILY_MAX_EV = {"K": 10_000.0, "L": 15_000.0, "M": float("inf")}
# EELS: K edges up to ~3 keV are still usable at typical spectrometer settings; above that
# the L2,3 (then M4,5) edge is far stronger. Edges under ~100 eV sit in the plasmon region.
_EELS_MIN_EV = 100.0
_EELS_FAMILY_MAX_EV = {"K": 3_000.0, "L2,3": 3_000.0, "M4,5": float("inf")}

_LINE_ALIASES = {"K": "Ka", "L": "La", "M": "Ma", "KA": "Ka", "KB": "Kb", "LA": "La",
                 "LB": "Lb", "MA": "Ma", "MB": "Mb", "KA1": "Ka", "KB1": "Kb", "LA1": "La",
                 "LB1": "Lb", "MA1": "Ma"}
_EDGE_ALIASES = {"K": "K", "K1": "K", "L": "L2,3", "L3": "L2,3", "L23": "L2,3",
                 "L2,3": "L2,3", "L2.3": "L2,3", "M": "M4,5", "M5": "M4,5", "M45": "M4,5",
                 "M4,5": "M4,5", "M4.5": "M4,5"}


class ElementError(EmfuseError, ValueError):
    """Base class of the errors raised for bad element input."""


class UnknownElement(ElementError):
    """A symbol that is not a chemical element (H to U), with a suggestion in the message."""


class DuplicateElement(ElementError):
    """The same element was given more than once."""


class NoLineError(ElementError):
    """The table has no X-ray line / EELS edge of an element that fits the request."""


def window_hint(symbol: str) -> str:
    """How to give ``symbol`` an integration window, in each place a user can: the command line,
    a batch catalog and Python (for the messages that ask for one).

    Examples
    --------
    >>> window_hint("Fe")
    "--window Fe=LOW:HIGH in eV; in a catalog's params: windows: {Fe: [LOW, HIGH]}; windows={'Fe': (low, high)} in Python"
    """
    return (f"--window {symbol}=LOW:HIGH in eV; in a catalog's params: windows: {{{symbol}: [LOW, HIGH]}}; "
            f"windows={{'{symbol}': (low, high)}} in Python")


@dataclass(frozen=True)
class Element:
    """One entry of the table.

    Attributes
    ----------
    symbol, name : str
        Chemical symbol ('Fe') and English name ('iron').
    z : int
        Atomic number.
    xray_lines_ev : Mapping[str, float]
        X-ray line energies in eV, keyed 'Ka', 'Kb', 'La', 'Lb', 'Ma', 'Mb' (may be empty).
    eels_edges_ev : Mapping[str, float]
        EELS edge onsets in eV, keyed 'K', 'L2,3', 'M4,5' (may be empty).
    """

    symbol: str
    name: str
    z: int
    xray_lines_ev: Mapping[str, float] = field(default_factory=dict)
    eels_edges_ev: Mapping[str, float] = field(default_factory=dict)


def _build_table() -> Mapping[str, Element]:
    table = {}
    for index, (symbol, name) in enumerate(SYMBOLS_AND_NAMES):
        table[symbol] = Element(
            symbol=symbol,
            name=name,
            z=index + 1,
            xray_lines_ev=MappingProxyType(dict(XRAY_LINES_EV.get(symbol, {}))),
            eels_edges_ev=MappingProxyType(dict(EELS_EDGES_EV.get(symbol, {}))),
        )
    return MappingProxyType(table)


#: symbol -> :class:`Element`, H (Z=1) to U (Z=92); read-only.
ELEMENTS: Mapping[str, Element] = _build_table()

_BY_LOWER = {symbol.lower(): symbol for symbol in ELEMENTS}
_BY_NAME = {el.name: el.symbol for el in ELEMENTS.values()}
_BY_NAME.update({"aluminum": "Al", "cesium": "Cs", "sulphur": "S"})


def _suggest(text: str) -> str:
    """A 'did you mean' hint for a string that is not a symbol."""
    lower = text.lower()
    if lower in _BY_NAME:
        return f"did you mean '{_BY_NAME[lower]}' ({lower})?"
    # A line or edge glued to the symbol ('FeKa', 'O_K', 'Mn L3'): the symbol is a prefix.
    for n in (2, 1):
        head, rest = lower[:n], lower[n:].strip(" _-.").replace(" ", "").upper()
        if head in _BY_LOWER and rest and (rest in _LINE_ALIASES or rest in _EDGE_ALIASES):
            return (f"did you mean '{_BY_LOWER[head]}'? Give the symbol alone; the X-ray line "
                    "or EELS edge is chosen separately")
    close = difflib.get_close_matches(lower, list(_BY_LOWER) + list(_BY_NAME), n=3, cutoff=0.6)
    names = []
    for match in close:
        symbol = _BY_LOWER.get(match) or _BY_NAME[match]
        if symbol not in names:
            names.append(symbol)
    if names:
        return "did you mean " + " or ".join(f"'{s}'" for s in names) + "?"
    return "use a chemical symbol from H to U, such as 'Fe' or 'O'"


def element(symbol: str) -> Element:
    """Look up one element by symbol (any case) and return its :class:`Element` entry.

    Raises
    ------
    UnknownElement
        If `symbol` is not a chemical symbol from H to U; the message suggests a near match.

    Examples
    --------
    >>> element("dy").name
    'dysprosium'
    """
    if not isinstance(symbol, str):
        raise UnknownElement(
            f"element symbols must be strings such as 'Fe', got {symbol!r} "
            f"({type(symbol).__name__})"
        )
    text = symbol.strip()
    key = _BY_LOWER.get(text.lower())
    if key is None:
        raise UnknownElement(f"unknown element {symbol!r}: {_suggest(text)}")
    return ELEMENTS[key]


def atomic_number(symbol: str) -> int:
    """Atomic number Z of an element given by its symbol (case-insensitive).

    Examples
    --------
    >>> atomic_number("O"), atomic_number("dy")
    (8, 66)
    """
    return element(symbol).z


def validate_elements(symbols: Iterable[str] | str) -> tuple[str, ...]:
    """Check a list of element symbols and return them in canonical case.

    Parameters
    ----------
    symbols : iterable of str, or str
        Symbols in any case. A single string is split on commas and white space, so the
        command-line form ``"Sr,Ti,O"`` works too.

    Returns
    -------
    tuple of str
        The symbols, case-normalised ('fe' -> 'Fe'), in the order given.

    Raises
    ------
    UnknownElement
        For a symbol that is not an element; the message names it and suggests a near match.
    DuplicateElement
        If an element appears twice (after case normalisation).
    ElementError
        If no element is given.

    Examples
    --------
    >>> validate_elements("sc, dy, o")
    ('Sc', 'Dy', 'O')
    """
    if isinstance(symbols, str):
        items = [s for s in symbols.replace(",", " ").split() if s]
    else:
        items = list(symbols)
    if not items:
        raise ElementError("no elements given: pass symbols such as ('Sr', 'Ti', 'O')")
    out: list[str] = []
    for item in items:
        symbol = element(item).symbol
        if symbol in out:
            raise DuplicateElement(
                f"element {symbol!r} is given more than once in {list(items)!r}; "
                "list each element once"
            )
        out.append(symbol)
    return tuple(out)


def xray_lines(symbol: str) -> Mapping[str, float]:
    """All tabulated X-ray lines of an element, name -> energy in eV (may be empty).

    Examples
    --------
    >>> dict(xray_lines("Ti"))["Ka"]
    4510.8
    """
    return element(symbol).xray_lines_ev


def _check_range(energy_range_ev: tuple[float, float] | None) -> tuple[float, float]:
    if energy_range_ev is None:
        return (float("-inf"), float("inf"))
    lo, hi = (float(v) for v in energy_range_ev)
    if not lo < hi:
        raise InputError(
            f"energy_range_ev must be (low, high) with low < high, got {energy_range_ev}"
        )
    return lo, hi


def xray_line(
    symbol: str,
    line: str | None = None,
    *,
    energy_range_ev: tuple[float, float] | None = None,
) -> tuple[str, float]:
    """The X-ray line to map an element with in EDX.

    Parameters
    ----------
    symbol : str
        Element symbol, any case.
    line : str, optional
        A line to use instead of the automatic choice: 'Ka', 'Kb', 'La', 'Lb', 'Ma', 'Mb'
        (also 'K', 'L', 'M' for the alpha lines; any case).
    energy_range_ev : (float, float), optional
        Only lines inside this range (the spectrum's energy axis) are chosen automatically.

    Returns
    -------
    (name, energy_ev) : (str, float)

    Notes
    -----
    The automatic choice takes the alpha line of the first family, in the order K, L, M,
    whose line is above ~0.15 keV, inside `energy_range_ev`, and below the family's limit
    (K up to 10 keV, L up to 15 keV): the K line below ~10 keV, else L, else M. That is the
    lowest-energy strong line that is free of the low-energy absorption edge and of the
    overlaps typical of the crowded region under 1 keV.

    Raises
    ------
    UnknownElement, NoLineError

    Examples
    --------
    >>> xray_line("Sr")
    ('La', 1806.6)
    >>> xray_line("Au", energy_range_ev=(0, 8000))
    ('Ma', 2122.9)
    """
    el = element(symbol)
    lines = el.xray_lines_ev
    lo, hi = _check_range(energy_range_ev)
    if line is not None:
        name = _LINE_ALIASES.get(str(line).strip().upper())
        if name is None or name not in lines:
            raise NoLineError(
                f"{el.symbol} has no X-ray line {line!r} in the table; available: "
                f"{sorted(lines) or 'none'}"
            )
        return name, lines[name]
    for alpha, _beta in XRAY_FAMILIES:
        energy = lines.get(alpha)
        if energy is None:
            continue
        if _XRAY_MIN_EV <= energy <= _XRAY_FAMILY_MAX_EV[alpha[0]] and lo <= energy <= hi:
            return alpha, energy
    # Nothing inside the family limits: take any alpha line that is at least inside the range.
    for alpha, _beta in XRAY_FAMILIES:
        energy = lines.get(alpha)
        if energy is not None and energy >= _XRAY_MIN_EV and lo <= energy <= hi:
            return alpha, energy
    where = "" if energy_range_ev is None else f" inside {lo:g}-{hi:g} eV"
    raise NoLineError(
        f"{el.symbol} has no usable EDX line{where} (lines in the table: "
        f"{dict(lines) or 'none'}); pass an explicit energy window for it ({window_hint(el.symbol)}) "
        "or leave it out"
    )


def eels_edge(
    symbol: str,
    edge: str | None = None,
    *,
    energy_range_ev: tuple[float, float] | None = None,
) -> tuple[str, float]:
    """The EELS core-loss edge to map an element with, and its onset energy.

    Parameters
    ----------
    symbol : str
        Element symbol, any case.
    edge : str, optional
        'K', 'L2,3' (or 'L3', 'L23', 'L') or 'M4,5' (or 'M5', 'M45', 'M').
    energy_range_ev : (float, float), optional
        Only edges inside this range are chosen automatically.

    Returns
    -------
    (name, onset_ev) : (str, float)
        The name is one of 'K', 'L2,3', 'M4,5'; the onset of L2,3 is the L3 threshold and
        that of M4,5 the M5 threshold.

    Notes
    -----
    Automatic choice: the first of K, L2,3, M4,5 whose onset lies between 100 eV and 3 keV
    and inside `energy_range_ev` (K edges for the light elements, L2,3 for the 3d metals and
    up to ~Mo, M4,5 for the heavy elements).

    Examples
    --------
    >>> eels_edge("O")
    ('K', 532.0)
    >>> eels_edge("Dy")
    ('M4,5', 1295.0)
    """
    el = element(symbol)
    edges = el.eels_edges_ev
    lo, hi = _check_range(energy_range_ev)
    if edge is not None:
        name = _EDGE_ALIASES.get(str(edge).strip().upper().replace(" ", ""))
        if name is None or name not in edges:
            raise NoLineError(
                f"{el.symbol} has no EELS edge {edge!r} in the table; available: "
                f"{sorted(edges) or 'none'}"
            )
        return name, edges[name]
    for name in _EELS_FAMILIES:
        onset = edges.get(name)
        if onset is not None and _EELS_MIN_EV <= onset <= _EELS_FAMILY_MAX_EV[name] \
                and lo <= onset <= hi:
            return name, onset
    for name in _EELS_FAMILIES:
        onset = edges.get(name)
        if onset is not None and lo <= onset <= hi:
            return name, onset
    where = "" if energy_range_ev is None else f" inside {lo:g}-{hi:g} eV"
    raise NoLineError(
        f"{el.symbol} has no EELS edge{where} (edges in the table: {dict(edges) or 'none'}); "
        f"pass an explicit energy window for it ({window_hint(el.symbol)}) or leave it out"
    )
