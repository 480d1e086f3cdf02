"""Saturated HAADF pixels: found (emfuse.pipeline.saturation), recorded at ingest, left out of the HAADF term."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from emfuse.flows.jobs import run_job
from emfuse.flows.jobs.inputs import (
    SATURATED,
    check_haadf,
    haadf_saturation,
    ingest_file,
    resolve_store,
)
from emfuse.pipeline.fusion import (
    FusionInputError,
    Normalisation,
    fuse,
    fuse_dataset,
    haadf_weights,
    objective_terms,
)
from emfuse.pipeline.fusion.solver import _smooth_gradient
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.saturation import MIN_PIXELS, find_saturation, saturated_pixels
from emfuse.pipeline.synth import make_spectrum_image, specimen_maps
from emfuse.stores.ingest import read
from emfuse.stores.warn import read_warnings
from emfuse.stores.zarrio import open_dataset, write_dataset

FORMATS = "formats"
# the shared real files with a HAADF (or image) that is not saturated
UNSATURATED = [
    "bcf_v2_50x50px.bcf", "Test SI 16x16 215 kx.emd", "Test SI 16x16 ReducedData 215 kx.emd",
    "example_velox_EELS_EDS.emd", "128x128_TEM_acquire-sum1.emi", "example_image.emd", "test-1.dm3",
    "test-1.dm4",
]
TUTORIALS = ["PTO_Trilayer_dataset.npz", "Co3O4_Mn3O4.h5"]


# files holding several spectrum images are ingested with one chosen (--signal); any will do here
SIGNAL = {"example_velox_EELS_EDS.emd": 17}


def _haadf_of(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pruned Velox file warns that it has no spectrum stream
        return np.asarray(read(path, signal=SIGNAL.get(path.name)).haadf.values)


# -- the detector -------------------------------------------------------------------


def test_finds_both_clipped_ends_of_test_tem_bcf(shared_data):
    haadf = _haadf_of(shared_data / FORMATS / "test_TEM.bcf")
    assert haadf.dtype == np.uint16 and haadf.shape == (64, 64)
    found = find_saturation(haadf)
    assert [(lv.value, lv.count, lv.kind) for lv in found.levels] == [
        (65535.0, 382, "dtype-max"), (0.0, 289, "plateau-zero")]
    assert found.fraction == pytest.approx((382 + 289) / 4096)
    np.testing.assert_array_equal(found.mask, (haadf == 65535) | (haadf == 0))


@pytest.mark.parametrize("name", UNSATURATED + TUTORIALS)
def test_real_unsaturated_images_are_not_flagged(shared_data, name):
    folder = FORMATS if name in UNSATURATED else "fusion"
    haadf = _haadf_of(shared_data / folder / name)
    assert not saturated_pixels(haadf).any()


@pytest.mark.parametrize("specimen", ["columns", "particles", "layers"])
def test_synthetic_haadfs_are_not_flagged_until_clipped(specimen):
    haadf = make_spectrum_image((96, 96), n_channels=32, specimen=specimen, seed=3).haadf
    assert not saturated_pixels(haadf).any()
    for image in (haadf, (haadf * 4000).astype(np.uint16)):  # float and integer copies
        assert not saturated_pixels(image).any()
        ceiling = np.percentile(image, 90)
        clipped = np.minimum(image, ceiling)
        found = find_saturation(clipped)
        assert [lv.kind for lv in found.levels] == ["plateau-max"]
        np.testing.assert_array_equal(found.mask, image >= ceiling)
        floor = np.percentile(image, 10)  # an offset set too low: the darkest 10 % underflow to 0
        underflow = np.where(image > floor, image - floor, 0).astype(image.dtype)
        found = find_saturation(underflow)
        assert [lv.kind for lv in found.levels] == ["plateau-zero"]
        np.testing.assert_array_equal(found.mask, image <= floor)


@pytest.mark.parametrize("mean", [0.3, 1.0, 3.0, 10.0])
def test_low_count_images_with_many_zeros_are_not_flagged(mean):
    """A Poisson image at low dose is 0 in many pixels, but its 0 is no spike over 1 and 2."""
    counts = np.random.default_rng(4).poisson(mean, (256, 256))
    assert not saturated_pixels(counts).any()


def test_dtype_ceiling_and_tiny_images():
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    assert not saturated_pixels(ramp).any()
    assert saturated_pixels(ramp, dtype_max=4000).sum() == 96  # a 12-bit-like ceiling, values 4000..4095
    full = ramp.copy()
    full[0, 0] = 65535  # one pixel at the dtype maximum is saturated
    assert saturated_pixels(full).sum() == 1
    # a few equal pixels at the maximum are not yet a plateau
    few = ramp.astype(np.float32)
    few.flat[: MIN_PIXELS - 2] = few.max()  # with the last pixel: MIN_PIXELS - 1 at the maximum
    assert not saturated_pixels(few).any()
    few.flat[: MIN_PIXELS - 1] = few.max()
    assert saturated_pixels(few).sum() == MIN_PIXELS
    for tiny in (np.array([[1, 4], [2, 3]], np.int16), np.arange(9, dtype=np.int32).reshape(3, 3)):
        assert not saturated_pixels(tiny).any()
    assert not saturated_pixels(np.zeros((8, 8))).any()  # constant: nothing to compare with


def test_non_finite_pixels_are_ignored():
    image = np.minimum(np.random.default_rng(5).normal(10, 1, (32, 32)), 11.0)
    image[0, :4] = np.nan
    mask = saturated_pixels(image)
    assert not mask[0, :4].any() and mask.sum() == (image == 11.0).sum() > 50


# -- fusion with a mask ---------------------------------------------------------------


@pytest.fixture(scope="module")
def clipped_problem():
    """A Sr-Ti-O column specimen whose HAADF is clipped at its 85th percentile."""
    truth = specimen_maps((64, 64), 3, "columns", seed=1)[0].astype(np.float64)
    rng = np.random.default_rng(0)
    haadf = np.tensordot(np.array([38.0, 22.0, 8.0]) ** 1.6, truth, axes=1)
    haadf = haadf / haadf.max() + 0.1 + rng.normal(0, 0.02, haadf.shape)
    clipped = np.minimum(haadf, np.percentile(haadf, 85)).astype(np.float32)
    maps = rng.poisson(8 * truth / truth.max(axis=(1, 2), keepdims=True) + 0.5).astype(np.float32)
    return {"truth": truth, "haadf": clipped, "maps": maps, "z": [38, 22, 8],
            "valid": ~saturated_pixels(clipped)}


def test_kernels_match_plain_with_a_mask(clipped_problem):
    pytest.importorskip("numba")
    from emfuse.pipeline.fusion import kernels_numba as kn

    p = clipped_problem
    norm = Normalisation.from_data(p["haadf"], p["maps"], haadf_valid=p["valid"])
    b_h, b_m = norm.haadf(p["haadf"]), norm.maps(p["maps"])
    x = np.clip(b_m + 0.1, 0, None).astype(np.float32)
    weights = haadf_weights(p["z"])
    valid = p["valid"].astype(np.float32)
    plain = x - 0.5 * _smooth_gradient(x, b_h, b_m, weights.astype(np.float32)[:, None, None], 1.6, 1 / 3, 0.1,
                                       0.1, valid)
    fast = kn.smooth_step(x, b_h, b_m, weights, gamma=1.6, lam_h=1 / 3, lambda_chem=0.1, bkg=0.1, step=0.5,
                          valid=valid)
    np.testing.assert_allclose(fast, plain, rtol=2e-6, atol=2e-7)
    terms = kn.objective_terms(x, b_h, b_m, weights, 1.6, 0.1, valid=valid)
    np.testing.assert_allclose(terms, objective_terms(x, b_h, b_m, weights, 1.6, 0.1, valid), rtol=1e-6)
    # psi_1 sums the valid pixels only
    residual = (np.tensordot(weights, x.astype(np.float64) ** 1.6, axes=1) - b_h)[p["valid"]]
    assert terms[0] == pytest.approx(0.5 * float(residual @ residual), rel=1e-5)
    assert terms[0] < kn.objective_terms(x, b_h, b_m, weights, 1.6, 0.1)[0]


def test_numba_and_xp_engines_agree_with_a_mask(clipped_problem):
    pytest.importorskip("numba")
    p = clipped_problem
    kw = dict(lambda_chem=0.3, lambda_tv=0.5, n_iter=30, warn=False, haadf_valid=p["valid"])
    fast = fuse(p["haadf"], p["maps"], p["z"], engine="numba", **kw)
    plain = fuse(p["haadf"], p["maps"], p["z"], engine="xp", **kw)
    np.testing.assert_allclose(fast.costs, plain.costs, rtol=1e-4)
    np.testing.assert_allclose(fast.fused, plain.fused, atol=2e-4)
    unmasked = fuse(p["haadf"], p["maps"], p["z"], engine="numba", **{**kw, "haadf_valid": None})
    assert np.abs(unmasked.fused - fast.fused).max() > 1e-2  # the mask changes the answer


@pytest.mark.gpu
def test_cupy_matches_numpy_with_a_mask(clipped_problem):
    import cupy

    p = clipped_problem
    kw = dict(lambda_chem=0.3, lambda_tv=0.5, n_iter=20, warn=False)
    cpu = fuse(p["haadf"], p["maps"], p["z"], haadf_valid=p["valid"], **kw)
    gpu = fuse(cupy.asarray(p["haadf"]), cupy.asarray(p["maps"]), p["z"], haadf_valid=cupy.asarray(p["valid"]), **kw)
    assert gpu.normalisation == cpu.normalisation
    np.testing.assert_allclose(cupy.asnumpy(gpu.fused), cpu.fused, rtol=1e-4, atol=1e-5)


def test_left_out_pixels_have_no_say(clipped_problem):
    """Whatever the HAADF holds at the left-out pixels, the result is the same; an all-True mask is no mask."""
    p = clipped_problem
    kw = dict(lambda_chem=0.3, lambda_tv=0.5, n_iter=20, warn=False)
    masked = fuse(p["haadf"], p["maps"], p["z"], haadf_valid=p["valid"], **kw)
    scrambled = p["haadf"].copy()
    scrambled[~p["valid"]] = np.random.default_rng(0).uniform(-5, 5, (~p["valid"]).sum())
    other = fuse(scrambled, p["maps"], p["z"], haadf_valid=p["valid"], **kw)
    np.testing.assert_array_equal(other.fused, masked.fused)
    assert masked.normalisation.haadf_offset + masked.normalisation.haadf_scale == pytest.approx(
        float(p["haadf"][p["valid"]].max()))
    every = fuse(p["haadf"], p["maps"], p["z"], haadf_valid=np.ones_like(p["valid"]), **kw)
    np.testing.assert_array_equal(every.fused, fuse(p["haadf"], p["maps"], p["z"], **kw).fused)


def test_bad_masks_are_named(clipped_problem):
    p = clipped_problem
    with pytest.raises(FusionInputError, match="haadf_valid is"):
        fuse(p["haadf"], p["maps"], p["z"], haadf_valid=p["valid"][:10], n_iter=1)
    with pytest.raises(FusionInputError, match="every HAADF pixel"):
        fuse(p["haadf"], p["maps"], p["z"], haadf_valid=np.zeros_like(p["valid"]), n_iter=1)


def test_a_feature_hidden_by_the_plateau_comes_back_with_the_mask():
    """Thickness fringes in a saturated particle: the clipped HAADF is flat there and pulls the
    fused maps flat; left out of the HAADF term, the maps follow the chemical maps' fringes."""
    yy, xx = np.mgrid[:64, :64]
    particle = ((yy - 32) ** 2 + (xx - 32) ** 2 < 20**2).astype(float)
    thickness = 0.6 + 0.4 * np.sin(xx / 3.0)
    truth = np.stack([particle * thickness, 0.5 * particle * thickness, 0.3 + 0.7 * (1 - particle)])
    z = [60, 30, 8]
    rng = np.random.default_rng(0)
    haadf = np.tensordot(np.array(z, float) ** 1.6, truth, axes=1)
    haadf = haadf / haadf.max() + rng.normal(0, 0.01, haadf.shape)
    clipped = np.minimum(haadf, np.percentile(haadf[particle > 0], 5)).astype(np.float32)
    maps = rng.poisson(10 * truth).astype(np.float32)
    valid = ~saturated_pixels(clipped)
    inside = ~valid
    assert 0.25 < inside.mean() < 0.35 and inside[particle > 0].mean() > 0.9
    kw = dict(lambda_chem=0.3, lambda_tv=0.3, n_iter=50, warn=False)
    without = fuse(clipped, maps, z, **kw).fused
    with_mask = fuse(clipped, maps, z, haadf_valid=valid, **kw).fused
    inside_error = [nrmse(f[0][inside], truth[0][inside]) for f in (without, with_mask)]
    assert inside_error[1] < 0.6 * inside_error[0], inside_error  # measured 0.36 vs 0.79
    overall = [np.mean([nrmse(f[e], truth[e]) for e in range(3)]) for f in (without, with_mask)]
    assert overall[1] < 0.9 * overall[0], overall  # measured 0.237 vs 0.292


def test_tiled_fusion_with_a_mask_equals_one_pass(clipped_problem):
    p = clipped_problem
    ds = xr.Dataset(
        {"haadf": (("y", "x"), p["haadf"]), "maps": (("element", "y", "x"), p["maps"]),
         "valid": (("y", "x"), p["valid"])},
        coords={"element": ["Sr", "Ti", "O"], "z": ("element", p["z"])},
    ).chunk({"y": 32, "x": 32})
    kw = dict(lambda_chem=0.3, lambda_tv=0.5, n_iter=15, n_iter_tv=5)
    tiled = fuse_dataset(ds, tile=32, halo=32, valid="valid", **kw).compute()
    whole = fuse(p["haadf"], p["maps"], p["z"], haadf_valid=p["valid"], warn=False, **kw)
    np.testing.assert_allclose(tiled.fused.values, whole.fused, atol=1e-6)
    unmasked = fuse_dataset(ds, tile=32, halo=32, **kw).fused.values
    assert np.abs(unmasked - whole.fused).max() > 1e-2


def test_lambda_search_leaves_the_saturated_pixels_out(clipped_problem):
    """Every candidate's fusion ignores the saturated pixels: scrambling them changes no score."""
    from emfuse.pipeline.fusion.auto import SearchSettings, choose_lambdas

    p = clipped_problem
    counts = p["maps"].astype(np.int64)
    settings = SearchSettings(coarse=2, n_iter=5, lambda_chem_range=(0.1, 0.4), lambda_tv_range=(0.1, 0.4))
    scrambled = p["haadf"].copy()
    scrambled[~p["valid"]] = np.random.default_rng(1).uniform(0, 2, (~p["valid"]).sum())
    masked = choose_lambdas(p["haadf"], p["z"], maps=counts, settings=settings, haadf_valid=p["valid"])
    again = choose_lambdas(scrambled, p["z"], maps=counts, settings=settings, haadf_valid=p["valid"])
    np.testing.assert_array_equal(again.score, masked.score)
    unmasked = choose_lambdas(scrambled, p["z"], maps=counts, settings=settings)
    assert unmasked.score.shape != masked.score.shape or not np.allclose(unmasked.score, masked.score,
                                                                         equal_nan=True)


# -- ingest and the fusion job -------------------------------------------------------------


def test_the_warning_names_fraction_and_values():
    image = np.random.default_rng(0).normal(1000, 100, (40, 50)).astype(np.uint16)
    valid, warning = haadf_saturation(image)
    assert valid.all() and warning is None
    image[:4] = 65535
    valid, warning = haadf_saturation(image)
    assert (~valid).sum() == 200 and warning["code"] == SATURATED and warning["stage"] == "ingest"
    assert warning["fraction"] == 0.1 and warning["values"] == [65535.0] and warning["counts"] == [200]
    assert warning["message"].startswith("10.0 % of the HAADF pixels are saturated (200 at 65535, the uint16 max")
    assert "check the detector gain/offset" in warning["message"]


def test_ingest_records_the_warning_once(shared_data, tmp_path):
    store = ingest_file(shared_data / FORMATS / "test_TEM.bcf", tmp_path / "tem.zarr")
    (warning,) = read_warnings(store)
    assert warning["code"] == SATURATED and warning["counts"] == [382, 289]
    assert check_haadf(store) == warning and len(read_warnings(store)) == 1
    # the raw file given to a job: ingested beside the output, with the same warning; reused after
    resolved = resolve_store(shared_data / FORMATS / "test_TEM.bcf", tmp_path)
    assert read_warnings(resolved) == [warning]
    assert resolve_store(shared_data / FORMATS / "test_TEM.bcf", tmp_path) == resolved
    assert len(read_warnings(resolved)) == 1
    unsaturated = ingest_file(shared_data / FORMATS / "bcf_v2_50x50px.bcf", tmp_path / "sem.zarr")
    assert SATURATED not in [w["code"] for w in read_warnings(unsaturated)]


def test_cli_ingest_prints_the_check(shared_data, tmp_path, capsys):
    from emfuse.flows.cli import main

    assert main(["ingest", str(shared_data / FORMATS / "test_TEM.bcf"), "--out", str(tmp_path / "t.zarr")]) == 0
    printed = capsys.readouterr().out
    assert "check: 16.4 % of the HAADF pixels are saturated" in printed and "[haadf-saturated]" in printed


def test_fusion_job_of_test_tem_bcf_leaves_the_saturated_pixels_out(shared_data, tmp_path, client):
    store = resolve_store(shared_data / FORMATS / "test_TEM.bcf", tmp_path)
    params = {"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 10}
    job = run_job("fuse", store, tmp_path / "out.zarr", client, progress=False, elements=["Cu", "O", "Pd", "Ti"],
                  params=params, tile=32, halo=16)
    out = open_dataset(job.out)
    haadf = np.asarray(open_dataset(store).haadf.values)
    np.testing.assert_array_equal(out.haadf_valid.values, (haadf != 0) & (haadf != 65535))
    # the ingest's warning and the job's own finding are one record (the short run adds not-converged)
    assert [w["code"] for w in read_warnings(job.out)].count(SATURATED) == 1
    # a curve still falling at 10 iterations: the advice to raise n_iter says to keep the weights 'auto'
    [not_converged, *_] = [w for w in read_warnings(job.out)
                           if w["code"] == "not-converged" and "levelled off" in w["message"]]
    assert "raise n_iter; keep the weights 'auto'" in not_converged["message"]
    valid = haadf[out.haadf_valid.values]
    assert out.attrs["normalisation"]["haadf_offset"] == float(valid.min()) == 117.0
    assert out.attrs["normalisation"]["haadf_scale"] == float(valid.max() - valid.min())
    # the tiles used the mask: one pass over the whole image with it gives the same maps
    whole = fuse(haadf, out.maps.values, job.z, haadf_valid=out.haadf_valid.values, warn=False, **params)
    np.testing.assert_allclose(out.fused.values, whole.fused, atol=1e-5)


def test_fusion_job_of_a_store_without_saturation_has_no_warning(tmp_path, client):
    data = make_spectrum_image((48, 48), n_channels=64, seed=2)
    ds = xr.Dataset({"haadf": (("y", "x"), data.haadf),
                     "maps": (("element", "y", "x"), data.true_maps * 20)},
                    coords={"element": ["Sr", "Ti", "O"], "z": ("element", [38, 22, 8])})
    store = write_dataset(ds, tmp_path / "in.zarr")
    job = run_job("fuse", store, tmp_path / "out.zarr", client, progress=False,
                  params={"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 3}, tile=48, halo=0)
    assert SATURATED not in [w["code"] for w in read_warnings(job.out)]
    assert bool(open_dataset(job.out).haadf_valid.all())


def test_auto_weights_keep_the_warning_and_the_provenance(tmp_path, client):
    """The lambda search writes its score grid after the inputs: the store keeps what came before."""
    truth = specimen_maps((48, 48), 3, "particles", seed=1)[0]
    rng = np.random.default_rng(0)
    haadf = np.tensordot(np.array([38.0, 22.0, 8.0]) ** 1.6, truth, axes=1)
    haadf = np.minimum(haadf / haadf.max() + rng.normal(0, 0.02, haadf.shape), 0.8).astype(np.float32)
    ds = xr.Dataset({"haadf": (("y", "x"), haadf), "maps": (("element", "y", "x"), rng.poisson(8 * truth))},
                    coords={"element": ["Sr", "Ti", "O"], "z": ("element", [38, 22, 8])})
    store = write_dataset(ds, tmp_path / "in.zarr")
    job = run_job("fuse", store, tmp_path / "out.zarr", client, progress=False, tile=48, halo=0,
                  params={"lambda_chem": "auto", "lambda_tv": "auto", "n_iter": 3, "n_iter_tv": 2})
    out = open_dataset(job.out)
    assert "lambda_score" in out and out.attrs["lambda_choice"]["criterion"] == "heldout-counts:maps"
    assert SATURATED in [w["code"] for w in read_warnings(job.out)]
    assert {"source_sha256", "created", "normalisation"} <= set(out.attrs)


@pytest.mark.prefect
def test_emfuse_fuse_on_test_tem_bcf_prints_the_check(prefect_harness, shared_data, tmp_path, capsys):
    from emfuse.flows.cli import main

    out = tmp_path / "tem_fused.zarr"
    assert main(["fuse", str(shared_data / FORMATS / "test_TEM.bcf"), "--out", str(out), "--elements", "Cu", "O",
                 "Pd", "Ti", "--lambda-chem", "0.05", "--lambda-tv", "0.02", "--cluster", "local-threads",
                 "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "check: 16.4 % of the HAADF pixels are saturated" in printed
    codes = [w["code"] for w in read_warnings(out)]
    assert codes.count(SATURATED) == 1  # once, though both the input and the fusion found it
    assert int((~open_dataset(out).haadf_valid).sum()) == 382 + 289
