"""The periodic table of emfuse, kept once: symbols, names, X-ray lines and EELS edges.

A leaf module (it imports nothing of ours) so that both layers that need these facts read the
same table without importing each other (``pyproject.toml``'s import contracts keep
``emfuse.pipeline`` and ``emfuse.stores`` independent): :mod:`emfuse.pipeline.elements` builds
its lookups (``element``, ``xray_line``, ``eels_edge``) on it, and :mod:`emfuse.stores.periodic`
takes the symbols (the ``z`` coordinate of ``maps``) from it.

For H to U: the symbol, the English name and (by position) the atomic number; for the elements
met in electron microscopy the main X-ray emission lines (EDX) and the main EELS core-loss edge
onsets, all in eV. Energies are the usual tabulated values (X-ray lines: alpha-1 / beta-1
energies as in the X-ray Data Booklet and Bearden's table; EELS edges: threshold energies as in
the EELS Atlas), rounded to 0.1 eV where the table gives more.

Why not ``xraydb`` (PyPI, MIT licence; checked with xraydb 4.5.8): its X-ray lines are Elam et
al.'s tabulation, not Bearden's: of the 290 lines here only 33 agree to 0.1 eV and 180 to 1 eV
(Fe Ka1 6405.2 against 6403.8 eV, Mn Ka1 5900.3 against 5898.8, Eu Ma 1121.5 against 1131.0),
it has no Li Ka and no Ca/Sc L lines, and its edges are X-ray absorption edges, not the EELS
onsets a background window has to stop at (O K 543.1 against the EELS Atlas's 532 eV, F K
696.7 against 685). Its own dependencies (SQLAlchemy, platformdirs, scipy) are ours already,
but it adds a 4 MB SQLite file, and each lookup is a database query (~0.9 ms against a dict
access). The differences are below an EDX detector's resolution, but they would move every
window and every synthetic line for no gain; the table below is small and is checked by
tests/pipeline/test_elements.py.

Examples
--------
>>> SYMBOLS_AND_NAMES[25]
('Fe', 'iron')
>>> XRAY_LINES_EV["Fe"]["Ka"], EELS_EDGES_EV["O"]["K"]
(6403.8, 532.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["EELS_EDGES_EV", "EELS_SECONDARY_EV", "SYMBOLS", "SYMBOLS_AND_NAMES", "XRAY_LINES_EV"]

# --------------------------------------------------------------------------------------------
# Symbols and names, in order of atomic number (Z = index + 1).
# --------------------------------------------------------------------------------------------
SYMBOLS_AND_NAMES = (
    ("H", "hydrogen"), ("He", "helium"), ("Li", "lithium"), ("Be", "beryllium"),
    ("B", "boron"), ("C", "carbon"), ("N", "nitrogen"), ("O", "oxygen"), ("F", "fluorine"),
    ("Ne", "neon"), ("Na", "sodium"), ("Mg", "magnesium"), ("Al", "aluminium"),
    ("Si", "silicon"), ("P", "phosphorus"), ("S", "sulfur"), ("Cl", "chlorine"),
    ("Ar", "argon"), ("K", "potassium"), ("Ca", "calcium"), ("Sc", "scandium"),
    ("Ti", "titanium"), ("V", "vanadium"), ("Cr", "chromium"), ("Mn", "manganese"),
    ("Fe", "iron"), ("Co", "cobalt"), ("Ni", "nickel"), ("Cu", "copper"), ("Zn", "zinc"),
    ("Ga", "gallium"), ("Ge", "germanium"), ("As", "arsenic"), ("Se", "selenium"),
    ("Br", "bromine"), ("Kr", "krypton"), ("Rb", "rubidium"), ("Sr", "strontium"),
    ("Y", "yttrium"), ("Zr", "zirconium"), ("Nb", "niobium"), ("Mo", "molybdenum"),
    ("Tc", "technetium"), ("Ru", "ruthenium"), ("Rh", "rhodium"), ("Pd", "palladium"),
    ("Ag", "silver"), ("Cd", "cadmium"), ("In", "indium"), ("Sn", "tin"),
    ("Sb", "antimony"), ("Te", "tellurium"), ("I", "iodine"), ("Xe", "xenon"),
    ("Cs", "caesium"), ("Ba", "barium"), ("La", "lanthanum"), ("Ce", "cerium"),
    ("Pr", "praseodymium"), ("Nd", "neodymium"), ("Pm", "promethium"), ("Sm", "samarium"),
    ("Eu", "europium"), ("Gd", "gadolinium"), ("Tb", "terbium"), ("Dy", "dysprosium"),
    ("Ho", "holmium"), ("Er", "erbium"), ("Tm", "thulium"), ("Yb", "ytterbium"),
    ("Lu", "lutetium"), ("Hf", "hafnium"), ("Ta", "tantalum"), ("W", "tungsten"),
    ("Re", "rhenium"), ("Os", "osmium"), ("Ir", "iridium"), ("Pt", "platinum"),
    ("Au", "gold"), ("Hg", "mercury"), ("Tl", "thallium"), ("Pb", "lead"),
    ("Bi", "bismuth"), ("Po", "polonium"), ("At", "astatine"), ("Rn", "radon"),
    ("Fr", "francium"), ("Ra", "radium"), ("Ac", "actinium"), ("Th", "thorium"),
    ("Pa", "protactinium"), ("U", "uranium"),
)

# --------------------------------------------------------------------------------------------
# X-ray emission lines, eV. Ka = K-L3 (Ka1), Kb = K-M3 (Kb1), La = L3-M5 (La1),
# Lb = L2-M4 (Lb1), Ma = M5-N7 (Ma1), Mb = M4-N6 (Mb). For the light elements, whose Ka1/Ka2
# (and Kb) are not resolved by an EDX detector, only Ka is listed.
# --------------------------------------------------------------------------------------------
XRAY_LINES_EV: dict[str, dict[str, float]] = {
    "Li": {"Ka": 54.3},
    "Be": {"Ka": 108.5},
    "B": {"Ka": 183.3},
    "C": {"Ka": 277.0},
    "N": {"Ka": 392.4},
    "O": {"Ka": 524.9},
    "F": {"Ka": 676.8},
    "Ne": {"Ka": 848.6},
    "Na": {"Ka": 1041.0},
    "Mg": {"Ka": 1253.6, "Kb": 1302.2},
    "Al": {"Ka": 1486.7, "Kb": 1557.5},
    "Si": {"Ka": 1740.0, "Kb": 1835.9},
    "P": {"Ka": 2013.7, "Kb": 2139.1},
    "S": {"Ka": 2307.8, "Kb": 2464.0},
    "Cl": {"Ka": 2622.4, "Kb": 2815.6},
    "Ar": {"Ka": 2957.7, "Kb": 3190.5},
    "K": {"Ka": 3313.8, "Kb": 3589.6},
    "Ca": {"Ka": 3691.7, "Kb": 4012.7, "La": 341.3, "Lb": 344.9},
    "Sc": {"Ka": 4090.6, "Kb": 4460.5, "La": 395.4, "Lb": 399.6},
    "Ti": {"Ka": 4510.8, "Kb": 4931.8, "La": 452.2, "Lb": 458.4},
    "V": {"Ka": 4952.2, "Kb": 5427.3, "La": 511.3, "Lb": 519.2},
    "Cr": {"Ka": 5414.7, "Kb": 5946.7, "La": 572.8, "Lb": 582.8},
    "Mn": {"Ka": 5898.8, "Kb": 6490.5, "La": 637.4, "Lb": 648.8},
    "Fe": {"Ka": 6403.8, "Kb": 7058.0, "La": 705.0, "Lb": 718.5},
    "Co": {"Ka": 6930.3, "Kb": 7649.4, "La": 776.2, "Lb": 791.4},
    "Ni": {"Ka": 7478.2, "Kb": 8264.7, "La": 851.5, "Lb": 868.8},
    "Cu": {"Ka": 8047.8, "Kb": 8905.3, "La": 929.7, "Lb": 949.8},
    "Zn": {"Ka": 8638.9, "Kb": 9572.0, "La": 1011.7, "Lb": 1034.7},
    "Ga": {"Ka": 9251.7, "Kb": 10264.2, "La": 1097.9, "Lb": 1124.8},
    "Ge": {"Ka": 9886.4, "Kb": 10982.1, "La": 1188.0, "Lb": 1218.5},
    "As": {"Ka": 10543.7, "Kb": 11726.2, "La": 1282.0, "Lb": 1317.0},
    "Se": {"Ka": 11222.4, "Kb": 12495.9, "La": 1379.1, "Lb": 1419.2},
    "Br": {"Ka": 11924.2, "Kb": 13291.4, "La": 1480.4, "Lb": 1525.9},
    "Kr": {"Ka": 12649.0, "Kb": 14112.0, "La": 1586.0, "Lb": 1636.6},
    "Rb": {"Ka": 13395.3, "Kb": 14961.3, "La": 1694.1, "Lb": 1752.2},
    "Sr": {"Ka": 14165.0, "Kb": 15835.7, "La": 1806.6, "Lb": 1871.7},
    "Y": {"Ka": 14958.4, "Kb": 16737.8, "La": 1922.6, "Lb": 1995.8},
    "Zr": {"Ka": 15775.1, "Kb": 17667.8, "La": 2042.4, "Lb": 2124.4},
    "Nb": {"Ka": 16615.1, "Kb": 18622.5, "La": 2165.9, "Lb": 2257.4},
    "Mo": {"Ka": 17479.3, "Kb": 19608.3, "La": 2293.2, "Lb": 2394.8},
    "Ru": {"Ka": 19279.2, "Kb": 21656.8, "La": 2558.6, "Lb": 2683.2},
    "Rh": {"Ka": 20216.1, "Kb": 22723.6, "La": 2696.7, "Lb": 2834.4},
    "Pd": {"Ka": 21177.1, "Kb": 23818.7, "La": 2838.6, "Lb": 2990.2},
    "Ag": {"Ka": 22162.9, "Kb": 24942.4, "La": 2984.3, "Lb": 3150.9},
    "Cd": {"Ka": 23173.6, "Kb": 26095.5, "La": 3133.7, "Lb": 3316.6},
    "In": {"Ka": 24209.7, "Kb": 27275.9, "La": 3286.9, "Lb": 3487.2},
    "Sn": {"Ka": 25271.3, "Kb": 28486.0, "La": 3444.0, "Lb": 3662.8},
    "Sb": {"Ka": 26359.1, "Kb": 29725.6, "La": 3604.7, "Lb": 3843.6},
    "Te": {"Ka": 27472.3, "Kb": 30995.7, "La": 3769.3, "Lb": 4029.6},
    "I": {"Ka": 28612.0, "Kb": 32294.7, "La": 3937.6, "Lb": 4220.7},
    "Xe": {"Ka": 29779.0, "Kb": 33624.0, "La": 4109.9, "Lb": 4422.0},
    "Cs": {"Ka": 30972.8, "Kb": 34986.9, "La": 4286.5, "Lb": 4619.8},
    "Ba": {"Ka": 32193.6, "Kb": 36378.2, "La": 4466.3, "Lb": 4827.5},
    "La": {"Ka": 33441.8, "La": 4651.0, "Lb": 5042.1, "Ma": 833.0},
    "Ce": {"Ka": 34719.7, "La": 4840.2, "Lb": 5262.2, "Ma": 883.0},
    "Pr": {"Ka": 36026.3, "La": 5033.7, "Lb": 5488.9, "Ma": 929.0},
    "Nd": {"Ka": 37361.0, "La": 5230.4, "Lb": 5721.6, "Ma": 978.0},
    "Sm": {"Ka": 40118.1, "La": 5636.1, "Lb": 6205.1, "Ma": 1081.0},
    "Eu": {"Ka": 41542.2, "La": 5845.7, "Lb": 6456.4, "Ma": 1131.0},
    "Gd": {"Ka": 42996.2, "La": 6057.2, "Lb": 6713.2, "Ma": 1185.0},
    "Tb": {"Ka": 44481.6, "La": 6272.8, "Lb": 6978.0, "Ma": 1240.0},
    "Dy": {"Ka": 45998.4, "La": 6495.2, "Lb": 7247.7, "Ma": 1293.0},
    "Ho": {"Ka": 47546.7, "La": 6719.8, "Lb": 7525.3, "Ma": 1348.0},
    "Er": {"Ka": 49127.7, "La": 6948.7, "Lb": 7810.9, "Ma": 1406.0},
    "Tm": {"Ka": 50741.6, "La": 7179.9, "Lb": 8101.0, "Ma": 1462.0},
    "Yb": {"Ka": 52388.9, "La": 7415.6, "Lb": 8401.8, "Ma": 1521.4},
    "Lu": {"Ka": 54069.8, "La": 7655.5, "Lb": 8709.0, "Ma": 1581.3},
    "Hf": {"Ka": 55790.2, "La": 7899.0, "Lb": 9022.7, "Ma": 1644.6, "Mb": 1697.3},
    "Ta": {"Ka": 57532.0, "La": 8146.1, "Lb": 9343.1, "Ma": 1710.0, "Mb": 1765.2},
    "W": {"Ka": 59318.2, "La": 8397.6, "Lb": 9672.4, "Ma": 1775.4, "Mb": 1835.9},
    "Re": {"Ka": 61140.3, "La": 8652.5, "Lb": 10010.0, "Ma": 1842.5, "Mb": 1906.1},
    "Os": {"Ka": 63000.5, "La": 8911.7, "Lb": 10355.3, "Ma": 1910.2, "Mb": 1978.0},
    "Ir": {"Ka": 64895.6, "La": 9175.1, "Lb": 10708.3, "Ma": 1979.9, "Mb": 2053.0},
    "Pt": {"Ka": 66832.0, "La": 9442.3, "Lb": 11070.7, "Ma": 2050.5, "Mb": 2127.4},
    "Au": {"Ka": 68803.7, "La": 9713.3, "Lb": 11442.3, "Ma": 2122.9, "Mb": 2204.6},
    "Hg": {"Ka": 70819.0, "La": 9988.8, "Lb": 11822.6, "Ma": 2195.3, "Mb": 2282.8},
    "Tl": {"Ka": 72871.5, "La": 10268.5, "Lb": 12213.3, "Ma": 2270.6, "Mb": 2362.0},
    "Pb": {"Ka": 74969.4, "La": 10551.5, "Lb": 12613.7, "Ma": 2345.5, "Mb": 2442.9},
    "Bi": {"Ka": 77107.9, "La": 10838.8, "Lb": 13023.5, "Ma": 2422.6, "Mb": 2525.6},
    "Th": {"Ka": 93350.0, "La": 12968.7, "Lb": 16202.2, "Ma": 2996.1, "Mb": 3145.8},
    "U": {"Ka": 98439.0, "La": 13614.7, "Lb": 17220.0, "Ma": 3170.8, "Mb": 3336.6},
}

# --------------------------------------------------------------------------------------------
# EELS core-loss edge onsets (threshold energies), eV. "L2,3" is listed at the L3 threshold and
# "M4,5" at the M5 threshold: the onset is where a background window has to stop.
# --------------------------------------------------------------------------------------------
EELS_EDGES_EV: dict[str, dict[str, float]] = {
    "Li": {"K": 55.0},
    "Be": {"K": 111.0},
    "B": {"K": 188.0},
    "C": {"K": 284.0},
    "N": {"K": 401.0},
    "O": {"K": 532.0},
    "F": {"K": 685.0},
    "Ne": {"K": 867.0},
    "Na": {"K": 1072.0, "L2,3": 31.0},
    "Mg": {"K": 1305.0, "L2,3": 51.0},
    "Al": {"K": 1560.0, "L2,3": 73.0},
    "Si": {"K": 1839.0, "L2,3": 99.0},
    "P": {"K": 2146.0, "L2,3": 132.0},
    "S": {"K": 2472.0, "L2,3": 165.0},
    "Cl": {"K": 2822.0, "L2,3": 200.0},
    "Ar": {"K": 3203.0, "L2,3": 245.0},
    "K": {"K": 3607.0, "L2,3": 294.0},
    "Ca": {"K": 4038.0, "L2,3": 346.0},
    "Sc": {"K": 4492.0, "L2,3": 402.0},
    "Ti": {"K": 4966.0, "L2,3": 456.0},
    "V": {"K": 5465.0, "L2,3": 513.0},
    "Cr": {"K": 5989.0, "L2,3": 575.0},
    "Mn": {"K": 6539.0, "L2,3": 640.0},
    "Fe": {"K": 7112.0, "L2,3": 708.0},
    "Co": {"K": 7709.0, "L2,3": 779.0},
    "Ni": {"K": 8333.0, "L2,3": 855.0},
    "Cu": {"K": 8979.0, "L2,3": 931.0},
    "Zn": {"K": 9659.0, "L2,3": 1020.0},
    "Ga": {"L2,3": 1115.0},
    "Ge": {"L2,3": 1217.0},
    "As": {"L2,3": 1323.0},
    "Se": {"L2,3": 1436.0},
    "Br": {"L2,3": 1550.0},
    "Kr": {"L2,3": 1675.0},
    "Rb": {"L2,3": 1804.0},
    "Sr": {"L2,3": 1940.0, "M4,5": 133.0},
    "Y": {"L2,3": 2080.0, "M4,5": 157.0},
    "Zr": {"L2,3": 2222.0, "M4,5": 180.0},
    "Nb": {"L2,3": 2371.0, "M4,5": 205.0},
    "Mo": {"L2,3": 2520.0, "M4,5": 227.0},
    "Ru": {"L2,3": 2838.0, "M4,5": 279.0},
    "Rh": {"L2,3": 3004.0, "M4,5": 308.0},
    "Pd": {"L2,3": 3173.0, "M4,5": 335.0},
    "Ag": {"L2,3": 3351.0, "M4,5": 367.0},
    "Cd": {"L2,3": 3538.0, "M4,5": 404.0},
    "In": {"L2,3": 3730.0, "M4,5": 443.0},
    "Sn": {"L2,3": 3929.0, "M4,5": 485.0},
    "Sb": {"L2,3": 4132.0, "M4,5": 528.0},
    "Te": {"L2,3": 4341.0, "M4,5": 572.0},
    "I": {"M4,5": 619.0},
    "Xe": {"M4,5": 672.0},
    "Cs": {"M4,5": 726.0},
    "Ba": {"M4,5": 781.0},
    "La": {"M4,5": 832.0},
    "Ce": {"M4,5": 883.0},
    "Pr": {"M4,5": 931.0},
    "Nd": {"M4,5": 978.0},
    "Sm": {"M4,5": 1080.0},
    "Eu": {"M4,5": 1131.0},
    "Gd": {"M4,5": 1185.0},
    "Tb": {"M4,5": 1241.0},
    "Dy": {"M4,5": 1295.0},
    "Ho": {"M4,5": 1351.0},
    "Er": {"M4,5": 1409.0},
    "Tm": {"M4,5": 1468.0},
    "Yb": {"M4,5": 1528.0},
    "Lu": {"M4,5": 1588.0},
    "Hf": {"M4,5": 1662.0},
    "Ta": {"M4,5": 1735.0},
    "W": {"M4,5": 1809.0},
    "Re": {"M4,5": 1883.0},
    "Os": {"M4,5": 1960.0},
    "Ir": {"M4,5": 2040.0},
    "Pt": {"M4,5": 2122.0},
    "Au": {"M4,5": 2206.0},
    "Hg": {"M4,5": 2295.0},
    "Tl": {"M4,5": 2389.0},
    "Pb": {"M4,5": 2484.0},
    "Bi": {"M4,5": 2580.0},
    "Th": {"M4,5": 3332.0},
    "U": {"M4,5": 3552.0},
}

#: Secondary edge thresholds (L2 above L3, M4 above M5), eV; used to shape synthetic edges.
EELS_SECONDARY_EV: Mapping[str, float] = MappingProxyType({
    "Ca": 350.0, "Sc": 407.0, "Ti": 462.0, "V": 521.0, "Cr": 584.0, "Mn": 651.0,
    "Fe": 721.0, "Co": 794.0, "Ni": 872.0, "Cu": 951.0, "Zn": 1043.0, "Ga": 1142.0,
    "Ge": 1248.0, "As": 1359.0, "Se": 1476.0, "Sr": 2007.0, "Ba": 796.0, "La": 849.0,
    "Ce": 901.0, "Pr": 951.0, "Nd": 1000.0, "Sm": 1106.0, "Eu": 1161.0, "Gd": 1217.0,
    "Tb": 1275.0, "Dy": 1333.0, "Ho": 1392.0, "Er": 1453.0, "Yb": 1576.0, "Hf": 1716.0,
    "Ta": 1793.0, "W": 1872.0, "Re": 1949.0, "Os": 2031.0, "Ir": 2116.0, "Pt": 2202.0,
    "Au": 2291.0, "Pb": 2586.0, "Bi": 2688.0,
})

#: Element symbols in order of atomic number (Z = index + 1), H to U.
SYMBOLS: tuple[str, ...] = tuple(symbol for symbol, _name in SYMBOLS_AND_NAMES)
