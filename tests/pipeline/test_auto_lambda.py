"""Automatic regularisation: count splitting, the held-out score, the search, the job stage."""

from __future__ import annotations

import numpy as np
import pytest

from emfuse.cluster import connect
from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import runner
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.fusion import Normalisation, fuse
from emfuse.pipeline.fusion.auto import (
    AutoLambdaError,
    SearchSettings,
    _Axis,
    _search,
    _search_widening,
    _splits,
    central_crop,
    choose_lambdas,
    heldout_score,
    hold_out_pixels,
    is_counts,
    refine_tv_per_element,
    scaled_normalisation,
    thin_counts,
)
from emfuse.pipeline.fusion.model import POOR_HAADF_FIT, haadf_unexplained
from emfuse.pipeline.fusion.noise import estimate_noise, local_variance, recorrupt
from emfuse.pipeline.metrics import nrmse
from emfuse.pipeline.spectra import elemental_maps
from emfuse.pipeline.synth import make_spectrum_image
from emfuse.stores import layout
from emfuse.stores.zarrio import is_complete, open_dataset, read_attrs

FAST = SearchSettings(coarse=3, lattice=2.0, n_iter=30)
EL = ["Ga", "As", "Al"]


# -- splitting ---------------------------------------------------------------------------------


def test_thinning_gives_two_independent_poisson_halves():
    rng = np.random.default_rng(1)
    counts = rng.poisson(6.0, size=200_000)
    kept = thin_counts(counts, 0.3, rng)
    rest = counts - kept
    assert kept.dtype == counts.dtype and (kept >= 0).all() and (rest >= 0).all()
    # Poisson(p mu) and Poisson((1-p) mu): mean = variance, and the halves are uncorrelated
    assert kept.mean() == pytest.approx(1.8, rel=0.02) and kept.var() == pytest.approx(1.8, rel=0.03)
    assert rest.mean() == pytest.approx(4.2, rel=0.02) and rest.var() == pytest.approx(4.2, rel=0.03)
    assert abs(np.corrcoef(kept, rest)[0, 1]) < 0.01


def test_thinning_is_reproducible_and_checks_p():
    counts = np.arange(100, dtype=np.uint16)
    a = thin_counts(counts, 0.5, np.random.default_rng(7))
    b = thin_counts(counts, 0.5, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="p must be in"):
        thin_counts(counts, 1.0, np.random.default_rng(0))


def test_is_counts():
    assert is_counts(np.array([[0, 3], [7, 1]], dtype=np.uint16))
    assert is_counts(np.array([0.0, 2.0, 5.0]))
    assert not is_counts(np.array([0.0, 2.5]))
    assert not is_counts(np.array([-1.0, 2.0]))
    assert not is_counts(np.array([np.nan, 2.0]))


def test_central_crop_and_scaled_normalisation():
    ys, xs = central_crop((300, 40), 100)
    assert (ys.start, ys.stop, xs.start, xs.stop) == (100, 200, 0, 40)
    norm = Normalisation(0.0, 2.0, (1.0, 4.0), (10.0, 20.0))
    half = scaled_normalisation(norm, 0.5)
    assert half.map_offset == (0.5, 2.0) and half.map_scale == (5.0, 10.0)
    assert (half.haadf_offset, half.haadf_scale) == (0.0, 2.0)
    # a half's maps normalise to the same values as the full data's
    maps = np.array([[[3.0]], [[14.0]]])
    np.testing.assert_allclose(half.maps(0.5 * maps), norm.maps(maps))


# -- the score and the search --------------------------------------------------------------------


def test_heldout_score_prefers_the_better_predictor():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:64, :64]
    mean = 5 + 4 * np.sin(xx / 5.0)[None] * np.ones((2, 1, 1))
    heldout = rng.poisson(mean).astype(float)
    good = 3 * mean + 1  # the true mean, in other units: the affine calibration removes them
    noisy = rng.poisson(mean).astype(float)  # an independent noisy copy predicts worse
    assert heldout_score(good, heldout) < heldout_score(noisy, heldout) < 1.0
    assert heldout_score(np.zeros_like(mean), heldout) == pytest.approx(1.0)


def test_search_finds_the_minimum_of_a_bowl_without_trying_every_point():
    calls = []

    def bowl(i: int, j: int) -> float:
        calls.append((i, j))
        return (i - 11) ** 2 + 2 * (j - 3) ** 2

    scores = _search(bowl, 20, 17, coarse=4)
    assert min(scores, key=scores.get) == (11, 3)
    assert len(calls) == len(set(calls)) < 20 * 17 / 3


def test_auto_choice_is_close_to_the_best_of_a_grid_against_the_truth():
    """The choice never sees the truth, yet lands near the truth-best weights."""
    data = make_spectrum_image((64, 64), ("Au", "Fe", "O"), specimen="particles", dose=10, seed=3,
                               n_channels=512)

    def to_maps(spectrum):
        return np.asarray(elemental_maps(spectrum, data.energy_ev, data.elements)[0])

    maps = to_maps(data.spectrum)
    norm = Normalisation.from_data(data.haadf, maps)
    choice = choose_lambdas(data.haadf, data.z, spectrum=data.spectrum, to_maps=to_maps,
                            normalisation=norm, params={"n_iter": 30}, settings=FAST)

    def error(lambda_chem, lambda_tv):
        fused = fuse(data.haadf, maps, data.z, normalisation=norm, warn=False, n_iter=30,
                     lambda_chem=lambda_chem, lambda_tv=lambda_tv).fused
        return np.mean([nrmse(f, t) for f, t in zip(fused, data.true_maps)])

    grid = {(lc, lt): error(lc, lt) for lc in 2.0 ** np.arange(-10, 4, 2) for lt in 2.0 ** np.arange(-12, 3, 2)}
    best = min(grid.values())
    auto = error(choice.lambda_chem, choice.lambda_tv)
    assert auto <= 1.15 * best
    assert auto < min(grid[(2.0**-10, 2.0**-12)], grid[(4.0, 4.0)])  # beats both extremes
    assert choice.criterion == "heldout-counts:spectrum"
    assert choice.score.shape == (choice.lambda_chem_axis.size, choice.lambda_tv_axis.size)
    assert choice.n_candidates == np.isfinite(choice.score).sum() >= 9
    i, j = np.unravel_index(np.nanargmin(choice.score), choice.score.shape)
    assert (choice.lambda_chem_axis[i], choice.lambda_tv_axis[j]) == (choice.lambda_chem, choice.lambda_tv)


def test_same_seed_same_choice_and_a_fixed_weight_is_kept():
    rng = np.random.default_rng(4)
    truth = np.stack([np.tile([1.0, 0.0], (32, 16)), np.tile([0.0, 1.0], (32, 16))])
    haadf = 2.0 * truth[0] + truth[1] + 0.05 * rng.standard_normal(truth.shape[1:])
    counts = rng.poisson(8 * truth + 1)
    seen = []
    a = choose_lambdas(haadf, [40, 20], maps=counts, settings=FAST, callback=lambda *c: seen.append(c))
    assert len(seen) == a.n_candidates and min(seen, key=lambda c: c[2])[:2] == (a.lambda_chem, a.lambda_tv)
    b = choose_lambdas(haadf, [40, 20], maps=counts, settings=FAST)
    assert (a.lambda_chem, a.lambda_tv) == (b.lambda_chem, b.lambda_tv)
    np.testing.assert_array_equal(a.score, b.score)
    fixed = choose_lambdas(haadf, [40, 20], maps=counts, lambda_tv=0.01, settings=FAST)
    assert fixed.lambda_tv == 0.01 and fixed.lambda_tv_axis.tolist() == [0.01]
    assert fixed.criterion == "heldout-counts:maps"


def test_maps_whose_noise_cannot_be_measured_are_refused_with_the_fix():
    haadf = np.random.default_rng(0).random((10, 10))  # 64 interior pixels: too few for a noise model
    with pytest.raises(AutoLambdaError, match="not counts.*--lambda-chem"):
        choose_lambdas(haadf, [40, 20], maps=haadf[None].repeat(2, 0) + 0.5, settings=FAST)


# -- the job stage ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    with connect("local-threads", n_workers=1, threads_per_worker=2) as c:
        yield c


@pytest.fixture(scope="module")
def count_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "si.zarr"
    return write_synthetic("spectrum-image", path, shape=(96, 80), specimen="layers", dose=8, seed=5,
                           elements=["Ga", "As", "Al"], n_channels=512)


def _stages(store, out, client, params, elements=("Ga", "As", "Al")):
    job, state = fusion_job.plan(store, out, elements=elements, params=params, tile=48, halo=16)
    if state == "complete":
        return job, state
    fusion_job.write_inputs(job)
    norm = fusion_job.normalise(job)
    job = fusion_job.choose_lambdas(job, norm, settings=FAST)
    runner.run_units(fusion_job.SPEC, job, norm, client, progress=False)
    runner.finalise(fusion_job.SPEC, job)
    return job, state


def test_job_chooses_stores_and_reuses_the_lambdas(tmp_path, count_store, client):
    params = {"lambda_chem": "auto", "lambda_tv": "auto", "n_iter": 30}
    out = tmp_path / "out.zarr"
    job, state = _stages(count_store, out, client, params)
    assert state == "new" and job.resolved and is_complete(out)
    ds = open_dataset(out)
    attrs = ds.attrs
    assert attrs["params"]["lambda_auto"] == ["lambda_chem", "lambda_tv"]
    assert attrs["params"]["lambda_chem"] == job.params.lambda_chem
    assert attrs["lambda_choice"]["criterion"] == "heldout-counts:spectrum"
    score = ds[layout.LAMBDA_SCORE].load()
    assert score.dims == ("lambda_chem", "lambda_tv")
    best = score.where(score == score.min(), drop=True)
    assert float(best.lambda_chem[0]) == job.params.lambda_chem
    assert float(best.lambda_tv[0]) == job.params.lambda_tv
    assert isinstance(attrs["convergence"], list)
    # a rerun with the same "auto" request is complete at once: the stored choice is the job's
    again, state = fusion_job.plan(count_store, out, elements=EL, params=params, tile=48, halo=16)
    assert state == "complete" and again.params == job.params


def test_interrupted_after_the_choice_resumes_without_searching_again(tmp_path, count_store, client):
    params = {"lambda_chem": "auto", "lambda_tv": 0.02, "n_iter": 30}
    out = tmp_path / "out.zarr"
    job, _ = fusion_job.plan(count_store, out, elements=EL, params=params, tile=48, halo=16)
    fusion_job.write_inputs(job)
    norm = fusion_job.normalise(job)
    chosen = fusion_job.choose_lambdas(job, norm, settings=FAST)
    assert chosen.params.lambda_tv == 0.02  # the fixed weight is kept
    with pytest.raises(RuntimeError, match="not chosen"):
        runner.run_units(fusion_job.SPEC, job, norm, client, progress=False)
    # the process dies here; the rerun plans the same job and finds the choice in the store
    resumed, state = fusion_job.plan(count_store, out, elements=EL, params=params, tile=48, halo=16)
    assert state == "resume" and resumed.resolved and resumed.params == chosen.params
    stamp = read_attrs(out)["lambda_choice"]
    assert fusion_job.choose_lambdas(resumed, norm, settings=FAST) is resumed
    runner.run_units(fusion_job.SPEC, resumed, norm, client, progress=False)
    runner.finalise(fusion_job.SPEC, resumed)
    assert is_complete(out) and read_attrs(out)["lambda_choice"] == stamp


def _float_store(tmp_path, dysco3, size=96):
    import xarray as xr

    from emfuse.stores.zarrio import write_dataset

    ds = xr.Dataset(
        {"haadf": (("y", "x"), dysco3["haadf"][:size, :size]),
         "maps": (("element", "y", "x"), dysco3["maps"][:, :size, :size])},
        coords={"y": np.arange(float(size)), "x": np.arange(float(size)), "element": dysco3["elements"],
                "z": ("element", dysco3["z"])},
    )
    return write_dataset(ds, tmp_path / "float_maps.zarr")


def test_auto_on_maps_that_are_not_counts_uses_recorrupted_pairs(tmp_path, dysco3, client):
    store = _float_store(tmp_path, dysco3)
    job, _ = _stages(store, tmp_path / "out.zarr", client, {"lambda_chem": "auto", "n_iter": 20}, elements=None)
    attrs = read_attrs(tmp_path / "out.zarr")
    choice = attrs["lambda_choice"]
    assert choice["criterion"] == "heldout-recorrupted:maps"
    # the noise model of each map is stored with the choice, in the maps' units
    assert len(choice["noise"]) == 3 and all(m["gain"] > 0 or m["offset_var"] > 0 for m in choice["noise"])
    assert attrs["params"]["lambda_chem"] == job.params.lambda_chem != 0.05
    assert layout.LAMBDA_SCORE in open_dataset(tmp_path / "out.zarr")


def test_auto_on_maps_without_measurable_noise_falls_back_to_the_defaults(tmp_path, dysco3, client):
    import xarray as xr

    from emfuse.stores.zarrio import write_dataset

    maps = dysco3["maps"][:2, :10, :10]  # 64 interior pixels: too few to measure the noise
    ds = xr.Dataset({"haadf": (("y", "x"), dysco3["haadf"][:10, :10]), "maps": (("element", "y", "x"), maps)},
                    coords={"y": np.arange(10.0), "x": np.arange(10.0), "element": ["Sc", "Dy"],
                            "z": ("element", [21, 66])})
    store = write_dataset(ds, tmp_path / "sparse.zarr")
    job, _ = _stages(store, tmp_path / "out.zarr", client, {"lambda_chem": "auto", "n_iter": 10}, elements=None)
    attrs = read_attrs(tmp_path / "out.zarr")
    assert attrs["lambda_choice"]["criterion"] == fusion_job.CRITERION_FALLBACK
    assert job.params.lambda_chem == 0.05
    assert "lambda-defaults" in [w["code"] for w in attrs["warnings"]]
    # the fallback path keeps the provenance as the others do
    for name in ("emfuse_version", "created", "host", "source_path", "source_sha256", "normalisation"):
        assert attrs.get(name), name


def test_a_word_other_than_auto_is_refused(tmp_path, count_store):
    from emfuse.pipeline.fusion import FusionInputError

    with pytest.raises(FusionInputError, match="number or 'auto'"):
        fusion_job.plan(count_store, tmp_path / "o.zarr", elements=EL, params={"lambda_tv": "automatic"})


# -- noise model, recorrupted pairs, pixel hold-out ------------------------------------------------


def test_noise_model_recovers_the_gain_and_offset_of_scaled_counts():
    rng = np.random.default_rng(5)
    mean = np.tile(np.linspace(2, 60, 256), (256, 1))
    scaled = 0.02 * rng.poisson(mean) + rng.normal(0, 0.03, mean.shape)  # gain 0.02, offset_var 9e-4
    model = estimate_noise(np.clip(scaled, 0, None))
    assert model.gain == pytest.approx(0.02, rel=0.1)
    assert model.offset_var == pytest.approx(9e-4, rel=0.5)
    assert model.pixels_used == "away from zeros"


def test_noise_model_of_a_sparse_map_uses_every_pixel():
    rng = np.random.default_rng(6)
    sparse = 0.01 * rng.poisson(0.05, (128, 128)).astype(float)  # 95 % exact zeros
    model = estimate_noise(sparse)
    assert model.pixels_used == "all (sparse map)" and model.gain > 0


def test_recorrupted_pairs_are_uncorrelated_and_keep_the_mean():
    rng = np.random.default_rng(7)
    mean = np.full((256, 256), 40.0)
    y = 0.5 * rng.poisson(mean)  # gain 0.5
    model = estimate_noise(y)
    train, test = recorrupt(y, model, 0.75, rng)
    assert abs(np.corrcoef((train - 20).ravel(), (test - 20).ravel())[0, 1]) < 0.03
    assert train.mean() == pytest.approx(20, rel=0.01) and test.mean() == pytest.approx(20, rel=0.01)
    # the training copy has the noise of 3/4 of the counts, the held-out copy of 1/4
    assert train.var() == pytest.approx(10 / 0.75, rel=0.1) and test.var() == pytest.approx(10 / 0.25, rel=0.1)


def test_recorrupted_pairs_follow_noise_that_does_not_follow_the_mean():
    """Same mean everywhere, sd 1 on the left and 3 on the right: a variance that is a function of
    the mean cannot describe it, and parts drawn from one would share noise on the right. The
    search's parts are independent on both sides."""
    rng = np.random.default_rng(8)
    sd = np.repeat([1.0, 3.0], 64)[None, :] * np.ones((128, 1))
    maps = np.stack([20 + sd * rng.standard_normal(sd.shape) for _ in range(2)])  # no zeros: dense
    folds = _splits(maps, None, None, SearchSettings(folds=1, seed=3))
    assert folds.criterion == "heldout-recorrupted:maps"
    train, test = folds.folds[0]
    for half in (slice(4, 60), slice(68, 124)):
        a, b = (train[:, :, half] - 20).ravel(), (test[:, :, half] - 20).ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    # the fitted model's variance at the mean is the same on both sides, so its parts would not be
    model = estimate_noise(maps[0])
    train_m, test_m = recorrupt(maps[0], model, 0.75, rng)
    right = (train_m[:, 68:124] - 20).ravel(), (test_m[:, 68:124] - 20).ravel()
    assert np.corrcoef(*right)[0, 1] > 0.2


def test_local_variance_measures_noise_where_it_is():
    rng = np.random.default_rng(9)
    sd = np.where(np.arange(128)[None, :] < 64, 0.5, 2.0) * np.ones((128, 1))
    v = local_variance(7 + sd * rng.standard_normal(sd.shape))
    assert v[:, 4:60].mean() == pytest.approx(0.25, rel=0.1)
    assert v[:, 68:124].mean() == pytest.approx(4.0, rel=0.1)


def test_pixel_hold_out_hides_the_held_out_pixels():
    rng = np.random.default_rng(8)
    maps = rng.random((2, 32, 32))
    mask = rng.random((32, 32)) < 0.125
    filled = hold_out_pixels(maps, mask)
    np.testing.assert_array_equal(filled[:, ~mask], maps[:, ~mask])
    changed = maps.copy()
    changed[:, mask] += 100  # the held-out values themselves do not reach the filled maps
    np.testing.assert_allclose(hold_out_pixels(changed, mask), filled)


# (specimen, dose, bound on scaled error / counts error). The goal is 1.10. Since the solver's step test
# leaves out the TV term (docs/methods/fusion.md), all nine specimen x dose cases of this 96 px set meet
# it (measured 0.89-1.08); layers at dose 20 was 1.13 here and columns/layers at dose 5 missed on the
# 128 px benchmark before. Seven of the nine run here, four of them only with the slow tests (about
# 9 s each; the default suite's time).
SCALED_CASES = [("particles", 20, 1.10), ("columns", 20, 1.10), ("layers", 20, 1.10)] + [
    pytest.param(*case, marks=pytest.mark.slow)
    for case in (("columns", 80, 1.10), ("layers", 80, 1.10), ("columns", 5, 1.10), ("layers", 5, 1.10))]


@pytest.mark.parametrize("specimen,dose,bound", SCALED_CASES)
def test_auto_on_maps_divided_by_their_maximum_matches_auto_on_the_counts(specimen, dose, bound):
    """Maps that are no longer counts get weights about as good as the counts'."""
    elements = {"columns": ("Sr", "Ti", "O"), "particles": ("Au", "Fe", "O"), "layers": ("Ga", "As", "Al")}
    data = make_spectrum_image((96, 96), elements[specimen], specimen=specimen, dose=dose, seed=11,
                               n_channels=512)

    def to_maps(spectrum):
        return np.asarray(elemental_maps(spectrum, data.energy_ev, data.elements)[0])

    maps = to_maps(data.spectrum)
    scaled = maps / maps.max(axis=(1, 2), keepdims=True)
    errors = {}
    cases = (("counts", {"spectrum": data.spectrum, "to_maps": to_maps}, maps), ("scaled", {"maps": scaled}, scaled))
    for name, kw, m in cases:
        choice = choose_lambdas(data.haadf, data.z, params={"n_iter": 30}, settings=FAST, **kw)
        fused = fuse(data.haadf, m, data.z, warn=False, n_iter=30, lambda_chem=choice.lambda_chem,
                     lambda_tv=choice.lambda_tv).fused
        errors[name] = np.mean([nrmse(f, t) for f, t in zip(fused, data.true_maps)])
    assert choice.criterion == "heldout-recorrupted:maps"
    assert errors["scaled"] <= bound * errors["counts"]


# -- the search at the edge of its range -----------------------------------------------------------


def test_a_choice_on_the_end_of_a_range_widens_it():
    settings = SearchSettings(coarse=3, lattice=2.0, widen=2, widen_by=8.0)
    chem, tv = _Axis.make(None, (1.0, 64.0), 2.0), _Axis.make(None, (1.0, 64.0), 2.0)

    def bowl(k_chem, k_tv):  # minimum at lambda_chem = 2^-4 (below the range), lambda_tv = 2^3
        return (k_chem + 4) ** 2 + (k_tv - 3) ** 2

    scores, widened, at_edge = _search_widening(bowl, chem, tv, settings)
    best = min(scores, key=scores.get)
    assert best == (-4, 3) and widened >= 1 and at_edge == ()

    chem, tv = _Axis.make(None, (1.0, 64.0), 2.0), _Axis.make(None, (1.0, 64.0), 2.0)
    scores, widened, at_edge = _search_widening(lambda i, j: -i + (j - 3) ** 2, chem, tv, settings)
    assert widened == 2 and len(at_edge) == 1 and at_edge[0].startswith("lambda_chem at the upper end")
    assert max(i for i, _ in scores) == 6 + 2 * 3  # two widenings by 8 = 3 lattice steps each


def test_a_flat_score_at_an_end_is_not_an_edge():
    settings = SearchSettings(coarse=3, lattice=2.0)
    chem, tv = _Axis.make(None, (1.0, 64.0), 2.0), _Axis.make(None, (1.0, 64.0), 2.0)
    scores, widened, at_edge = _search_widening(lambda i, j: (i - 2) ** 2 + 0.0 * j, chem, tv, settings)
    assert widened == 0 and at_edge == ()


# -- the HAADF model fit -----------------------------------------------------------------------------


def test_haadf_fit_separates_a_fitting_model_from_a_missing_element():
    data = make_spectrum_image((96, 96), ("Sr", "Ti", "O"), specimen="columns", dose=20, seed=12,
                               n_channels=512)
    maps = np.asarray(elemental_maps(data.spectrum, data.energy_ev, data.elements)[0])

    def unexplained(m, z):
        result = fuse(data.haadf, m, z, warn=False, n_iter=30)
        return float(haadf_unexplained(result.normalisation.haadf(data.haadf), result.haadf_model))

    assert unexplained(maps, data.z) < POOR_HAADF_FIT < unexplained(maps[1:], data.z[1:])


def test_job_warns_when_the_haadf_is_not_made_of_the_fused_elements(tmp_path, count_store, client):
    params = {"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 20}
    _stages(count_store, tmp_path / "all.zarr", client, params)
    _stages(count_store, tmp_path / "no_ga.zarr", client, params, elements=("As", "Al"))
    codes = {name: [w["code"] for w in read_attrs(tmp_path / name).get("warnings", [])]
             for name in ("all.zarr", "no_ga.zarr")}
    assert "poor-haadf-fit" not in codes["all.zarr"] and "poor-haadf-fit" in codes["no_ga.zarr"]
    assert read_attrs(tmp_path / "no_ga.zarr")["haadf_unexplained"] > POOR_HAADF_FIT


# -- one TV weight per element -----------------------------------------------------------------------


def test_per_element_refinement_moves_each_weight_to_its_own_best():
    targets = np.array([0.0, 2.0, -3.0])  # log2 of each element's best weight

    def element_scores(weights):
        return 1 + (np.log2(np.asarray(weights)) - targets) ** 2

    assert refine_tv_per_element(element_scores, 1.0, 3, 2.0) == (1.0, 4.0, 0.125)


def test_per_element_refinement_keeps_a_move_that_hurts_another_element_out():
    def element_scores(weights):  # smoothing element 0 helps it but spoils element 1
        w0 = np.log2(weights[0])
        return np.array([1 - 0.1 * min(w0, 2), 1 + 0.1 * max(w0, 0), 1.0])

    assert refine_tv_per_element(element_scores, 1.0, 3, 2.0) == (1.0, 1.0, 1.0)


def test_choose_lambdas_refines_per_element_tv_on_request():
    rng = np.random.default_rng(4)
    truth = np.stack([np.tile([1.0, 0.0], (32, 16)), np.tile([0.0, 1.0], (32, 16))])
    haadf = 2.0 * truth[0] + truth[1] + 0.05 * rng.standard_normal(truth.shape[1:])
    counts = rng.poisson(8 * truth + 1)
    settings = SearchSettings(coarse=3, lattice=2.0, n_iter=20, per_element_tv=True)
    choice = choose_lambdas(haadf, [40, 20], maps=counts, settings=settings)
    assert len(choice.lambda_tv_per_element) == 2
    assert choice.record()["lambda_tv_per_element"] == list(choice.lambda_tv_per_element)
    assert choose_lambdas(haadf, [40, 20], maps=counts, settings=FAST).lambda_tv_per_element is None
