"""The built-in element table: lookups, validation messages, line and edge choice, and the
physical consistency of the tabulated energies."""

from __future__ import annotations

import doctest
import itertools

import pytest

import emfuse.pipeline.elements as elements_module
from emfuse.pipeline.elements import (
    ELEMENTS,
    DuplicateElement,
    ElementError,
    NoLineError,
    UnknownElement,
    atomic_number,
    eels_edge,
    validate_elements,
    xray_line,
    xray_lines,
)

EM_COMMON = [
    "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca", "Sc", "Ti", "V",
    "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Sr", "Y", "Zr", "Nb", "Mo",
    "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "Ba", "La", "Ce", "Pr", "Nd", "Sm",
    "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Yb", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Pb",
    "Bi",
]


def test_table_covers_h_to_u_in_order():
    assert len(ELEMENTS) == 92
    zs = [el.z for el in ELEMENTS.values()]
    assert zs == list(range(1, 93))
    assert ELEMENTS["H"].z == 1 and ELEMENTS["U"].z == 92
    assert len({el.name for el in ELEMENTS.values()}) == 92


@pytest.mark.parametrize(
    "symbol, z", [("H", 1), ("O", 8), ("Sc", 21), ("Fe", 26), ("Sr", 38), ("Dy", 66), ("Au", 79),
                  ("U", 92), ("fe", 26), ("FE", 26), (" dy ", 66)]
)
def test_atomic_number(symbol, z):
    assert atomic_number(symbol) == z


def test_every_common_em_element_has_a_line_and_an_edge():
    for symbol in EM_COMMON:
        assert xray_lines(symbol), symbol
        assert ELEMENTS[symbol].eels_edges_ev, symbol
        xray_line(symbol)
        eels_edge(symbol)


@pytest.mark.parametrize(
    "symbol, line, energy_ev",
    [("O", "Ka", 525), ("Ti", "Ka", 4511), ("Fe", "Ka", 6404), ("Sr", "La", 1806),
     ("Dy", "La", 6495), ("Sc", "Ka", 4090), ("Cu", "Ka", 8048), ("Si", "Ka", 1740),
     ("Au", "Ma", 2123), ("Pb", "Ma", 2346), ("Mn", "Ka", 5899)],
)
def test_reference_line_energies(symbol, line, energy_ev):
    assert xray_lines(symbol)[line] == pytest.approx(energy_ev, abs=1.5)


@pytest.mark.parametrize(
    "symbol, edge, onset_ev",
    [("O", "K", 532), ("C", "K", 284), ("N", "K", 401), ("Mn", "L2,3", 640), ("Co", "L2,3", 779),
     ("Fe", "L2,3", 708), ("Ti", "L2,3", 456), ("Dy", "M4,5", 1295), ("Si", "K", 1839)],
)
def test_reference_edge_onsets(symbol, edge, onset_ev):
    assert ELEMENTS[symbol].eels_edges_ev[edge] == pytest.approx(onset_ev, abs=1.5)


def _family(line_or_edge: str, symbols=None):
    table = []
    for el in ELEMENTS.values():
        value = el.xray_lines_ev.get(line_or_edge, el.eels_edges_ev.get(line_or_edge))
        if value is not None and (symbols is None or el.symbol in symbols):
            table.append((el.z, value))
    return table


@pytest.mark.parametrize("name", ["Ka", "Kb", "La", "Lb", "Ma", "Mb", "K", "L2,3", "M4,5"])
def test_energies_rise_with_atomic_number(name):
    # A typo in the table almost always breaks the ordering.
    values = [v for _, v in sorted(_family(name))]
    assert len(values) >= 10
    assert all(b > a for a, b in itertools.pairwise(values)), name


def test_ka_follows_moseleys_law():
    # E(Ka) ~ 10.2 eV * (Z - 1)^2 within a few % for Na..Sn (screening and relativity aside).
    for z, energy in _family("Ka"):
        if 11 <= z <= 50:
            assert energy / (10.2 * (z - 1) ** 2) == pytest.approx(1.0, abs=0.06), z


def test_lines_and_edges_are_consistent():
    for el in ELEMENTS.values():
        lines, edges = el.xray_lines_ev, el.eels_edges_ev
        for alpha, beta in (("Ka", "Kb"), ("La", "Lb"), ("Ma", "Mb")):
            if alpha in lines and beta in lines:
                assert lines[beta] > lines[alpha], el.symbol
        # An emission line never exceeds the binding energy of the shell it fills.
        if "K" in edges:
            for line in ("Ka", "Kb"):
                if line in lines:
                    assert lines[line] < edges["K"], (el.symbol, line)
        if "L2,3" in edges and "La" in lines:
            assert lines["La"] < edges["L2,3"], el.symbol
        if "M4,5" in edges and "Ma" in lines:
            # For La/Ce the 4f shell is empty and Ma sits at the M5 threshold.
            assert lines["Ma"] < edges["M4,5"] + 3, el.symbol


def test_validate_elements_normalises_case_and_keeps_order():
    assert validate_elements(["sr", "TI", "o"]) == ("Sr", "Ti", "O")
    assert validate_elements("Sc, dy,O") == ("Sc", "Dy", "O")
    assert validate_elements("co") == ("Co",)


@pytest.mark.parametrize(
    "bad, hint",
    [("Fee", "'Fe'"), ("iron", "'Fe'"), ("FeKa", "'Fe'"), ("O_K", "'O'"), ("Mn L3", "'Mn'"),
     ("Xx", "such as 'Fe'"), ("", "such as 'Fe'")],
)
def test_unknown_element_names_symbol_and_suggests(bad, hint):
    with pytest.raises(UnknownElement) as info:
        validate_elements(["O", bad])
    message = str(info.value)
    assert repr(bad) in message
    assert hint in message
    assert isinstance(info.value, ValueError)


def test_non_string_symbol():
    with pytest.raises(UnknownElement, match="strings"):
        validate_elements(["Fe", 26])


def test_duplicates_rejected():
    with pytest.raises(DuplicateElement, match="'Fe' is given more than once"):
        validate_elements(["Fe", "O", "fe"])
    assert issubclass(DuplicateElement, ValueError)


def test_empty_rejected():
    with pytest.raises(ElementError, match="no elements"):
        validate_elements([])


@pytest.mark.parametrize(
    "symbol, kwargs, expected",
    [
        ("Fe", {}, ("Ka", 6403.8)),
        ("O", {}, ("Ka", 524.9)),
        ("B", {}, ("Ka", 183.3)),
        ("Ge", {}, ("Ka", 9886.4)),  # K still below 10 keV
        ("As", {}, ("La", 1282.0)),  # K above 10 keV: L
        ("Sr", {}, ("La", 1806.6)),
        ("Dy", {}, ("La", 6495.2)),
        ("Au", {}, ("La", 9713.3)),
        ("Au", {"energy_range_ev": (0, 8000)}, ("Ma", 2122.9)),  # L outside the range: M
        ("Ti", {"energy_range_ev": (0, 1000)}, ("La", 452.2)),
        ("Fe", {"line": "Kb"}, ("Kb", 7058.0)),
        ("Fe", {"line": "l"}, ("La", 705.0)),
        ("Au", {"line": "M"}, ("Ma", 2122.9)),
    ],
)
def test_xray_line_choice(symbol, kwargs, expected):
    assert xray_line(symbol, **kwargs) == expected


def test_xray_line_errors():
    with pytest.raises(NoLineError, match="H has no usable EDX line"):
        xray_line("H")
    with pytest.raises(NoLineError, match="no X-ray line 'Ma'"):
        xray_line("Fe", "Ma")
    with pytest.raises(NoLineError, match=r"inside 3000-5000 eV .*\(--window Sr=LOW:HIGH in eV; in a catalog's "
                                          r"params: windows: \{Sr: \[LOW, HIGH\]\}; "
                                          r"windows=\{'Sr': \(low, high\)\} in Python\) or leave it out"):
        xray_line("Sr", energy_range_ev=(3000, 5000))
    with pytest.raises(UnknownElement):
        xray_line("Qq")


@pytest.mark.parametrize(
    "symbol, kwargs, expected",
    [
        ("O", {}, ("K", 532.0)),
        ("Si", {}, ("K", 1839.0)),
        ("Ca", {}, ("L2,3", 346.0)),  # the K edge at 4 keV is too far out
        ("Mn", {}, ("L2,3", 640.0)),
        ("Co", {}, ("L2,3", 779.0)),
        ("Sr", {}, ("L2,3", 1940.0)),
        ("Ag", {}, ("M4,5", 367.0)),
        ("Dy", {}, ("M4,5", 1295.0)),
        ("Ti", {"edge": "L3"}, ("L2,3", 456.0)),
        ("Fe", {"edge": "k"}, ("K", 7112.0)),
        ("Sr", {"energy_range_ev": (50, 1000)}, ("M4,5", 133.0)),
    ],
)
def test_eels_edge_choice(symbol, kwargs, expected):
    assert eels_edge(symbol, **kwargs) == expected


def test_eels_edge_errors():
    with pytest.raises(NoLineError, match=r"H has no EELS edge.*\(--window H=LOW:HIGH in eV; "):
        eels_edge("H")
    with pytest.raises(NoLineError, match="no EELS edge 'M45'"):
        eels_edge("O", "M45")
    with pytest.raises(ValueError, match="low < high"):
        eels_edge("O", energy_range_ev=(600, 500))


def test_doctests():
    result = doctest.testmod(elements_module)
    assert result.attempted > 0 and result.failed == 0
