"""Crystal structures seen down a zone axis: the projected lattices of the randomised TEM simulator.

The default TEM-modes simulator (:mod:`.tem_modes`) knows three fixed projections (fcc [001],
Si [110], SrTiO3 [001]). To train networks that meet other specimens, this module makes a
projected lattice from a **3-D structure** and a **zone axis**, for nine structure families and
several real compounds each (lattice constants from the literature, in nm):

==============  ====================================  ============================
family          compounds                             zone axes
==============  ====================================  ============================
``fcc``         Al, Ni, Cu, Pd, Pt, Ag, Au            [001] [011] [111] [112]
``bcc``         Cr, Fe, Nb, Mo, Ta, W                 [001] [011] [111]
``diamond``     C, Si, Ge                             [001] [011] [112]
``zincblende``  GaP, ZnS, GaAs, InP, InAs, CdTe       [001] [011] [112]
``rocksalt``    MgO, NiO, NaCl, PbS, PbTe             [001] [011] [111]
``perovskite``  SrTiO3, BaTiO3, LaAlO3, KNbO3, PbTiO3 [001] [011] [111]
``fluorite``    ZrO2, CeO2, CaF2, UO2                 [001] [011] [112]
``hcp``         Mg, Ti, Zn, Co, Zr                    [0001] [11-20] [10-10]
``wurtzite``    GaN, ZnO, AlN, CdS                    [0001] [11-20] [10-10]
==============  ====================================  ============================

How a structure is projected
    The zone axis ``t = u a1 + v a2 + w a3`` is a lattice vector (``(u, v, w)`` made coprime).
    Two integer vectors ``m1``, ``m2`` that complete ``(u, v, w)`` to a unimodular basis of
    ``Z^3`` give the projected lattice: the components of ``m1 L`` and ``m2 L`` perpendicular
    to ``t`` (Gauss-reduced to the shortest pair). Because the three vectors span a cell of
    the full volume ``V``, the projected cell has area ``V / |t|``, and the atoms of one
    conventional cell, projected and wrapped into it, are exactly the atoms of one repeat
    ``|t|`` of every column. Atoms that land on the same point form one column; its weight
    is ``sum Z^0.67`` over its atoms (a column's projected potential grows roughly as
    ``Z^(2/3)``). The material's mean potential ``rho`` follows ``sum Z^0.4 / V``, relative to
    fcc Ni (the default simulator's metal, ``rho = 1``).

Examples
--------
>>> import numpy as np
>>> m = project("fcc", (0, 1, 1), a_nm=0.352)  # a centred 0.249 x 0.352 nm net
>>> round(m.a_nm, 3), round(m.b_nm, 3), round(m.angle_deg), len(m.basis), m.symmetry_deg
(0.249, 0.352, 90, 2, 180.0)
>>> s = project("perovskite", (0, 0, 1), a_nm=0.3905, z=(38, 22, 8))
>>> [round(w, 2) for *_, w in s.basis]  # Sr, Ti-O and the two O columns
[0.96, 1.0, 0.34, 0.34]
>>> r = random_material("hcp", np.random.default_rng(0))
>>> r.name, r.compound != "", len(r.zone)
('hcp', True, 3)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import reduce
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError

if TYPE_CHECKING:  # the module is imported by tem_modes, which defines Material
    from .tem_modes import Material

__all__ = ["FAMILIES", "Family", "project", "random_material"]

_FCC = ((0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0))


def _shifted(sites: Sequence[tuple[float, float, float]], by: tuple[float, float, float]
             ) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple((s + d) % 1.0 for s, d in zip(site, by)) for site in sites)  # type: ignore[misc]


@dataclass(frozen=True)
class Family:
    """A structure family: its lattice, its atoms by species, its compounds and zone axes.

    ``sites[k]`` are the fractional positions of species ``k`` in the conventional cell;
    a compound is ``(name, a_nm, c_nm, Z of each species)`` (``c_nm`` only for hexagonal
    lattices); ``zones`` are three-index directions ``[u v w]`` of the lattice.
    """

    lattice: str  # "cubic" or "hexagonal"
    sites: tuple[tuple[tuple[float, float, float], ...], ...]
    compounds: tuple[tuple[str, float, float, tuple[int, ...]], ...]
    zones: tuple[tuple[int, int, int], ...]
    grain_nm: tuple[float, float] = (2.0, 6.0)
    alloy: float = 0.0  # relative spread of column weights (random occupancy), elemental metals


_HCP = ((1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.75))
_WURTZITE = ((1 / 3, 2 / 3, 0.0), (2 / 3, 1 / 3, 0.5))
#: [0001], [11-20] and [10-10] in the three-index notation of the hexagonal lattice.
_HEX_ZONES = ((0, 0, 1), (1, 1, 0), (2, 1, 0))

#: The structure families of the randomised simulator (see the module notes).
FAMILIES: dict[str, Family] = {
    "fcc": Family("cubic", (_FCC,), (
        ("Al", 0.405, 0, (13,)), ("Ni", 0.352, 0, (28,)), ("Cu", 0.361, 0, (29,)), ("Pd", 0.389, 0, (46,)),
        ("Pt", 0.392, 0, (78,)), ("Ag", 0.409, 0, (47,)), ("Au", 0.408, 0, (79,))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 1, 2)), grain_nm=(2.0, 6.0), alloy=0.25),
    "bcc": Family("cubic", (((0, 0, 0), (0.5, 0.5, 0.5)),), (
        ("Cr", 0.288, 0, (24,)), ("Fe", 0.287, 0, (26,)), ("Nb", 0.330, 0, (41,)), ("Mo", 0.315, 0, (42,)),
        ("Ta", 0.331, 0, (73,)), ("W", 0.316, 0, (74,))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 1)), grain_nm=(2.0, 6.0), alloy=0.25),
    "diamond": Family("cubic", (_FCC + _shifted(_FCC, (0.25, 0.25, 0.25)),), (
        ("C", 0.357, 0, (6,)), ("Si", 0.543, 0, (14,)), ("Ge", 0.566, 0, (32,))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 2)), grain_nm=(3.0, 8.0)),
    "zincblende": Family("cubic", (_FCC, _shifted(_FCC, (0.25, 0.25, 0.25))), (
        ("GaP", 0.545, 0, (31, 15)), ("ZnS", 0.541, 0, (30, 16)), ("GaAs", 0.565, 0, (31, 33)),
        ("InP", 0.587, 0, (49, 15)), ("InAs", 0.606, 0, (49, 33)), ("CdTe", 0.648, 0, (48, 52))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 2)), grain_nm=(3.0, 8.0)),
    "rocksalt": Family("cubic", (_FCC, _shifted(_FCC, (0.5, 0.0, 0.0))), (
        ("MgO", 0.421, 0, (12, 8)), ("NiO", 0.418, 0, (28, 8)), ("NaCl", 0.564, 0, (11, 17)),
        ("PbS", 0.594, 0, (82, 16)), ("PbTe", 0.646, 0, (82, 52))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 1)), grain_nm=(2.0, 6.0)),
    "perovskite": Family("cubic", (((0, 0, 0),), ((0.5, 0.5, 0.5),), ((0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5))), (
        ("SrTiO3", 0.3905, 0, (38, 22, 8)), ("BaTiO3", 0.400, 0, (56, 22, 8)), ("LaAlO3", 0.379, 0, (57, 13, 8)),
        ("KNbO3", 0.400, 0, (19, 41, 8)), ("PbTiO3", 0.390, 0, (82, 22, 8))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 1)), grain_nm=(1.8, 5.0)),
    "fluorite": Family("cubic", (_FCC, _shifted(_FCC, (0.25, 0.25, 0.25)) + _shifted(_FCC, (0.75, 0.75, 0.75))), (
        ("ZrO2", 0.507, 0, (40, 8)), ("CeO2", 0.541, 0, (58, 8)), ("CaF2", 0.546, 0, (20, 9)),
        ("UO2", 0.547, 0, (92, 8))),
        ((0, 0, 1), (0, 1, 1), (1, 1, 2)), grain_nm=(2.0, 6.0)),
    "hcp": Family("hexagonal", (_HCP,), (
        ("Mg", 0.321, 0.521, (12,)), ("Ti", 0.295, 0.468, (22,)), ("Zn", 0.266, 0.495, (30,)),
        ("Co", 0.251, 0.407, (27,)), ("Zr", 0.323, 0.515, (40,))),
        _HEX_ZONES, grain_nm=(2.0, 6.0), alloy=0.15),
    "wurtzite": Family("hexagonal", (_WURTZITE, _shifted(_WURTZITE, (0, 0, 0.375))), (
        ("GaN", 0.319, 0.519, (31, 7)), ("ZnO", 0.325, 0.521, (30, 8)), ("AlN", 0.311, 0.498, (13, 7)),
        ("CdS", 0.414, 0.671, (48, 16))),
        _HEX_ZONES, grain_nm=(3.0, 8.0)),
}

_NI_DENSITY = 4 * 28**0.4 / 0.352**3  # sum Z^0.4 / V of fcc Ni: rho = 1 (the default metal)


def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise InputError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family]


def _cell(family: Family, a_nm: float, c_nm: float) -> np.ndarray:
    """The conventional cell's vectors as rows (nm, Cartesian)."""
    if family.lattice == "cubic":
        return np.eye(3) * a_nm
    return np.array([[a_nm, 0.0, 0.0], [-a_nm / 2, a_nm * math.sqrt(3) / 2, 0.0], [0.0, 0.0, c_nm]])


def _complete(zone: np.ndarray, cell: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Two integer vectors that complete ``zone`` to a unimodular basis, shortest in projection."""
    grid = np.array(list(itertools.product(range(-3, 4), repeat=3)))
    projected = grid @ cell
    projected -= np.outer(projected @ normal, normal)
    length = np.linalg.norm(projected, axis=1)
    order = np.argsort(length)
    grid, length = grid[order], length[order]
    best, best_cost = None, math.inf
    for i in range(len(grid)):
        if length[i] < 1e-9 or length[i] >= best_cost:
            continue
        det = np.rint(np.linalg.det(np.stack([np.broadcast_to(grid[i], grid.shape), grid,
                                               np.broadcast_to(zone, grid.shape)], axis=1)))
        ok = np.flatnonzero(np.abs(det) == 1)
        if ok.size:
            j = ok[np.argmin(length[ok])]
            if length[i] + length[j] < best_cost:
                best, best_cost = (grid[i], grid[j]), length[i] + length[j]
    if best is None:
        raise InputError(f"zone axis {tuple(int(v) for v in zone)} is too high an index to project")
    return np.stack(best)


def _gauss_reduce(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shortest basis of the 2-D lattice spanned by ``v1``, ``v2`` (Lagrange-Gauss)."""
    if v1 @ v1 > v2 @ v2:
        v1, v2 = v2, v1
    while True:
        v2 = v2 - round(float(v1 @ v2) / float(v1 @ v1)) * v1
        if v2 @ v2 >= v1 @ v1:
            return v1, v2
        v1, v2 = v2, v1


def _symmetry(v1: np.ndarray, v2: np.ndarray) -> float:
    """The smallest of 60, 90, 120 and 180 degrees that maps the lattice on itself."""
    basis = np.stack([v1, v2], axis=1)
    for degrees in (60.0, 90.0, 120.0):
        r = math.radians(degrees)
        rotated = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]]) @ basis
        coefficients = np.linalg.solve(basis, rotated)
        if np.allclose(coefficients, np.rint(coefficients), atol=1e-6):
            return degrees
    return 180.0


def project(family: str, zone: Sequence[int], *, a_nm: float, c_nm: float = 0.0,
            z: Sequence[int] | None = None, column_nm: float = 0.05, rho: float | None = None,
            name: str | None = None, compound: str = "") -> Material:
    """The :class:`~.tem_modes.Material` of a structure family seen down ``zone``.

    Parameters
    ----------
    family : str
        A key of :data:`FAMILIES`.
    zone : (int, int, int)
        The zone axis ``[u v w]`` (three-index, also for hexagonal lattices).
    a_nm, c_nm : float
        Lattice constants (``c_nm`` for hexagonal lattices).
    z : sequence of int, optional
        Atomic number of each species (default: the family's first compound).
    column_nm : float
        Gaussian width of a projected column.
    rho : float, optional
        Mean potential relative to fcc Ni; by default from the composition and density.
    name : str, optional
        The material's name (default: the family).
    compound : str
        What it is (recorded in the simulated region's parameters).

    Returns
    -------
    Material
        Its ``basis`` holds the columns (fractional position, relative weight ``sum Z^0.67``).
    """
    fam = _family(family)
    z = tuple(z or fam.compounds[0][3])
    if len(z) != len(fam.sites):
        raise InputError(f"{family} has {len(fam.sites)} species, got {len(z)} atomic numbers")
    uvw = np.array(zone, dtype=np.int64)
    if not uvw.any():
        raise InputError("the zone axis must not be [0 0 0]")
    uvw //= reduce(math.gcd, (abs(int(v)) for v in uvw))
    cell = _cell(fam, a_nm, c_nm if fam.lattice == "hexagonal" else a_nm)
    t = uvw @ cell
    normal = t / np.linalg.norm(t)
    m = _complete(uvw, cell, normal)
    e1 = (m[0] @ cell) - ((m[0] @ cell) @ normal) * normal
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    in_plane = np.stack([e1, e2], axis=1)  # 3-D -> 2-D coordinates
    v1, v2 = _gauss_reduce(*(m @ cell @ in_plane))
    to_fractional = np.linalg.inv(np.stack([v1, v2], axis=1))
    columns: list[list[float]] = []
    for sites, atomic_number in zip(fam.sites, z):
        for site in sites:
            frac = (to_fractional @ (np.asarray(site) @ cell @ in_plane)) % 1.0
            frac[np.isclose(frac, 1.0, atol=1e-6)] = 0.0
            for column in columns:
                if np.allclose(column[:2], frac, atol=1e-4):
                    column[2] += atomic_number**0.67
                    break
            else:
                columns.append([float(frac[0]), float(frac[1]), atomic_number**0.67])
    top = max(c[2] for c in columns)
    basis = tuple((round(c[0], 6), round(c[1], 6), c[2] / top) for c in columns)
    volume = abs(float(np.linalg.det(cell)))
    density = sum(len(sites) * n**0.4 for sites, n in zip(fam.sites, z)) / volume
    from .tem_modes import Material  # here: tem_modes imports this module
    angle = math.degrees(math.acos(float(v1 @ v2) / float(np.linalg.norm(v1) * np.linalg.norm(v2))))
    return Material(name or family, float(np.linalg.norm(v1)), float(np.linalg.norm(v2)), angle, basis,
                    _symmetry(v1, v2), rho=float(rho if rho is not None else density / _NI_DENSITY),
                    grain_nm=fam.grain_nm, amorphous=(0.0, 0.2), column_nm=column_nm, alloy=fam.alloy,
                    compound=compound, zone=tuple(int(v) for v in uvw))


def random_material(family: str, rng: np.random.Generator) -> Material:
    """A random compound of ``family`` down a random zone axis, its constants jittered by +-2 %.

    Also drawn: the column width (0.04-0.06 nm), the extinction distance (20-80 nm) and the
    top of the amorphous fraction's range (5-40 %); the grain sizes are the family's range.
    ``rho`` is clipped to 0.35-1.6 (mean inner potentials of real materials span about 10-35 V).
    """
    fam = _family(family)
    name, a_nm, c_nm, z = fam.compounds[int(rng.integers(len(fam.compounds)))]
    zone = fam.zones[int(rng.integers(len(fam.zones)))]
    scale = float(rng.uniform(0.98, 1.02))
    m = project(family, zone, a_nm=a_nm * scale, c_nm=c_nm * scale, z=z,
                column_nm=float(rng.uniform(0.04, 0.06)), name=family, compound=name)
    top = float(rng.uniform(0.05, 0.4))
    return replace(m, rho=float(np.clip(m.rho, 0.35, 1.6)), amorphous=(0.0, top),
                   extinction_nm=float(rng.uniform(20.0, 80.0)))
