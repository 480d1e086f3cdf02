"""Projected crystal structures and the randomised TEM-modes simulator (issue 18, item 1)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from emfuse.pipeline.synth.crystals import FAMILIES, project, random_material
from emfuse.pipeline.synth.restore_specimens import electron_wavelength, lattice_vectors
from emfuse.pipeline.synth.tem_modes import random_scope, simulate_region, simulate_regions


def _columns_nm(m) -> np.ndarray:
    """Every column of a 5 x 5 block of projected cells, nm."""
    vectors = lattice_vectors(m.a_nm, m.b_nm, math.radians(m.angle_deg), 0.0)
    return np.array([(i + f1) * vectors[0] + (j + f2) * vectors[1]
                     for i, j in itertools.product(range(-2, 3), repeat=2) for f1, f2, _ in m.basis])


def _nearest(points: np.ndarray) -> float:
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return float(d[d > 1e-9].min())


@pytest.mark.parametrize(("family", "zone", "a", "spacing"), [
    ("fcc", (0, 0, 1), 0.352, 0.352 / 2),                  # square net of a/2
    ("fcc", (0, 1, 1), 0.352, 0.352 * math.sqrt(3 / 8)),  # centred a x a/sqrt(2) net: {111} neighbours
    ("bcc", (1, 1, 1), 0.316, 0.316 * math.sqrt(2 / 3)),   # hexagonal net of a sqrt(2/3)
    ("diamond", (0, 1, 1), 0.543, 0.543 / 4),              # the Si dumbbell, 0.136 nm
    ("perovskite", (0, 0, 1), 0.3905, 0.3905 / 2),         # cation to O column
])
def test_projected_columns_are_where_the_crystal_puts_them(family, zone, a, spacing):
    m = project(family, zone, a_nm=a)
    assert _nearest(_columns_nm(m)) == pytest.approx(spacing, rel=1e-6)


def test_a_projection_keeps_every_atom_and_the_cell_volume():
    for family, fam in FAMILIES.items():
        name, a, c, z = fam.compounds[-1]
        cell_volume = a**3 if fam.lattice == "cubic" else a * a * math.sqrt(3) / 2 * c
        atoms = sum(len(sites) * n**0.67 for sites, n in zip(fam.sites, z))
        for zone in fam.zones:
            m = project(family, zone, a_nm=a, c_nm=c, z=z)
            uvw = np.array(zone, float)
            cell = np.eye(3) * a if fam.lattice == "cubic" else np.array(
                [[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c]])
            repeat = np.linalg.norm(uvw / math.gcd(*(int(v) for v in zone)) @ cell)
            area = m.a_nm * m.b_nm * math.sin(math.radians(m.angle_deg))
            assert area * repeat == pytest.approx(cell_volume, rel=1e-6), (family, zone)
            # the column weights are relative to the heaviest; their sum is every atom's Z^0.67
            top = max(n**0.67 for n in z) if len(m.basis) == sum(len(s) for s in fam.sites) else None
            if top is not None:
                assert sum(w for *_, w in m.basis) * top == pytest.approx(atoms, rel=1e-6)
            assert all(0 <= f1 < 1 and 0 <= f2 < 1 for f1, f2, _ in m.basis)


def test_perovskite_columns_have_the_weights_of_their_atoms():
    m = project("perovskite", (0, 0, 1), a_nm=0.3905, z=(38, 22, 8))
    weights = sorted(w for *_, w in m.basis)
    o, sr, tio = 8**0.67, 38**0.67, 22**0.67 + 8**0.67
    np.testing.assert_allclose(weights, np.array([o, o, sr, tio]) / tio, rtol=1e-5)


def test_symmetry_of_the_projected_lattice():
    assert project("fcc", (0, 0, 1), a_nm=0.4).symmetry_deg == 90
    assert project("fcc", (1, 1, 1), a_nm=0.4).symmetry_deg == 60
    assert project("fcc", (0, 1, 1), a_nm=0.4).symmetry_deg == 180
    assert project("hcp", (0, 0, 1), a_nm=0.3, c_nm=0.5).symmetry_deg == 60
    assert project("hcp", (1, 1, 0), a_nm=0.3, c_nm=0.5).symmetry_deg == 180


def test_bad_structures_are_named():
    with pytest.raises(ValueError, match="family must be one of"):
        project("spinel", (0, 0, 1), a_nm=0.8)
    with pytest.raises(ValueError, match="3 species"):
        project("perovskite", (0, 0, 1), a_nm=0.39, z=(38, 22))
    with pytest.raises(ValueError, match="0 0 0"):
        project("fcc", (0, 0, 0), a_nm=0.4)


def test_random_materials_vary_and_repeat_with_the_seed():
    drawn = [random_material("zincblende", np.random.default_rng(k)) for k in range(30)]
    assert len({m.compound for m in drawn}) >= 4 and len({m.zone for m in drawn}) == 3
    again = random_material("zincblende", np.random.default_rng(7))
    assert again == drawn[7]
    assert all(0.35 <= m.rho <= 1.6 and 20 <= m.extinction_nm <= 80 for m in drawn)


def test_random_scope_samples_the_aperture_and_defocuses_near_scherzer():
    for k in range(40):
        scope, pixel = random_scope(np.random.default_rng(k))
        assert pixel <= 1 / (2 * scope.aperture_inv_nm) + 1e-12  # Nyquist of the aperture
        scherzer = -math.sqrt(4 / 3 * scope.cs_nm * electron_wavelength(scope.kv) / 10)
        low, high = scope.defocus_nm
        assert 1.8 * scherzer - 1e-9 <= low <= high <= 0.3 * scherzer + 1e-9
        assert scope.kv in (200.0, 300.0) and 0 <= scope.max_drift_px <= 4


def test_randomised_regions_go_through_the_families_and_record_what_they_are():
    regions = simulate_regions(4, (48, 48), seed=2, randomised=True, materials=["hcp", "rocksalt"])
    assert [r.material for r in regions] == ["hcp", "rocksalt", "hcp", "rocksalt"]
    for r in regions:
        assert r.modes.shape == (3, 48, 48) and np.isfinite(r.modes).all()
        assert r.params["crystal"]["compound"] and len(r.params["crystal"]["zone"]) == 3
        assert r.params["scope"]["kv"] in (200.0, 300.0) and r.params["pixel_nm"] < 0.072
    # region i depends only on (seed, i), as for the default simulator
    again = simulate_regions(2, (48, 48), seed=2, randomised=True, materials=["hcp", "rocksalt"])
    np.testing.assert_array_equal(again[1].modes, regions[1].modes)
    with pytest.raises(ValueError, match="unknown families"):
        simulate_regions(1, (32, 32), seed=0, randomised=True, materials=["metal"])


def test_the_hrtem_shows_the_projected_lattice():
    """Noise-free HRTEM of an untilted single crystal: its strongest spatial frequency is a lattice one."""
    m = project("fcc", (0, 0, 1), a_nm=0.352, column_nm=0.045)
    from dataclasses import replace

    from emfuse.pipeline.synth.tem_modes import Microscope
    m = replace(m, grain_nm=(40.0, 40.0), amorphous=(0.0, 0.0))  # one grain over the field
    scope = Microscope(tilt_sigma_deg=1e-6, p_corrected=1.0, defocus_corrected_nm=(-2.0, -2.0))
    r = simulate_region((128, 128), m, np.random.default_rng(4), pixel_nm=0.03, scope=scope, record=False)
    hrtem = r.modes[2] - r.modes[2].mean()
    power = np.abs(np.fft.fft2(hrtem * np.hanning(128)[:, None] * np.hanning(128)[None])) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij")) / 0.03  # nm^-1
    power[k < 2.0] = 0  # leave out the grains' and thickness's slow contrast
    k_peak = k.flat[int(np.argmax(power))]
    assert k_peak == pytest.approx(1 / 0.176, rel=0.06)  # (200) of fcc: 1 / (a/2)


def test_synth_tem_modes_writes_a_randomised_region_at_its_pixel_size(tmp_path):
    from emfuse.flows.cli import main
    from emfuse.flows.cli.parser import TEM_MATERIALS
    from emfuse.pipeline.synth.tem_modes import MATERIALS, random_region
    from emfuse.stores.zarrio import open_dataset

    assert set(TEM_MATERIALS) == {*MATERIALS, *FAMILIES}  # the parser's list, kept free of scipy
    out = tmp_path / "gan.zarr"
    assert main(["synth", "tem-modes", "--out", str(out), "--shape", "40", "48", "--material", "wurtzite",
                 "--seed", "6"]) == 0
    ds = open_dataset(out)
    expected = random_region((40, 48), "wurtzite", np.random.default_rng(6))
    np.testing.assert_array_equal(ds.modes.values, expected.modes)
    assert float(ds.x[1] - ds.x[0]) == pytest.approx(expected.params["pixel_nm"])
    assert ds.attrs["synthetic"]["crystal"]["compound"] == expected.params["crystal"]["compound"]
