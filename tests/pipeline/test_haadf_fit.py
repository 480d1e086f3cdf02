"""The HAADF model fitted to the data (emfuse.pipeline.fusion.haadf_fit) and its wiring in the search."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from emfuse.pipeline.fusion import fuse
from emfuse.pipeline.fusion.auto import (
    AutoLambdaError,
    SearchSettings,
    choose_lambdas,
    refine_weakest,
    scaled_normalisation,
    thin_counts,
)
from emfuse.pipeline.fusion.haadf_fit import checkerboard, cross_fit, fit_haadf_model
from emfuse.pipeline.fusion.model import FusionInputError, Normalisation, haadf_weights
from emfuse.pipeline.fusion.solver import FusionParams


def _scene(seed: int = 0, size: int = 96) -> np.ndarray:
    """Three independent smooth concentration maps in [0, 1], with vacuum (all zero) at the left edge.

    The vacuum puts the HAADF's minimum at zero concentration, as in a specimen: the solver's
    model ``sum_i w_i x_i^gamma`` of the min-max normalised HAADF has no offset.
    """
    rng = np.random.default_rng(seed)
    maps = np.stack([ndimage.gaussian_filter(rng.random((size, size)), 5) for _ in range(3)])
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    maps = (maps - lo) / (hi - lo)
    maps[:, :, :12] = 0.0
    return maps


TRUE_W = np.array([2.0, 0.8, 0.3])


def _counts_case(dose: float, gamma: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised HAADF, count maps, normalised true maps): HAADF = probe * sum w t^gamma, Poisson counts."""
    truth = _scene(seed)
    haadf = ndimage.gaussian_filter(np.tensordot(TRUE_W, truth**gamma, axes=1), 1.0)
    counts = np.random.default_rng(seed + 1).poisson(dose * truth).astype(np.int64)
    return haadf, counts, truth


def _halves(counts: np.ndarray, norm: Normalisation, seed: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    half = scaled_normalisation(norm, 0.5)
    out = []
    for _ in range(2):
        kept = thin_counts(counts, 0.5, rng)
        out.append((half.maps(kept, np.float64), half.maps(counts - kept, np.float64)))
    return out


def test_cross_fit_recovers_weights_where_least_squares_is_biased() -> None:
    # counts Poisson(5 t): maps in units of t are counts / 5, each thinned half's counts / 2.5
    truth = _scene(0)
    haadf = ndimage.gaussian_filter(np.tensordot(TRUE_W, truth, axes=1), 1.0)
    counts = np.random.default_rng(1).poisson(5.0 * truth)
    rng = np.random.default_rng(2)
    halves = []
    for _ in range(2):
        kept = thin_counts(counts, 0.5, rng)
        halves.append((kept / 2.5, (counts - kept) / 2.5))
    fitted, _ = cross_fit(haadf, halves, 1.0, probe_sigma=1.0, denoise_sigma=1.0)
    naive, _ = cross_fit(haadf, [(counts / 5.0, counts / 5.0)], 1.0, probe_sigma=1.0, denoise_sigma=1.0)
    assert np.abs(fitted - TRUE_W).max() < 0.06, fitted
    # errors in variables: least squares on the noisy maps shrinks the heaviest weight and hands
    # the weakest element part of it
    assert naive[0] < TRUE_W[0] - 0.12 and naive[2] > TRUE_W[2] + 0.06, naive


@pytest.mark.parametrize("gamma", [1.0, 1.6])
def test_fit_chooses_the_exponent_and_probe(gamma: float) -> None:
    haadf, counts, _ = _counts_case(dose=200.0, gamma=gamma)
    norm = Normalisation.from_data(haadf, counts)
    fit = fit_haadf_model(haadf, _halves(counts, norm), gammas=(1.0, 1.6), probe_sigmas=(0.0, 1.0, 2.0))
    assert fit.gamma == gamma
    if gamma == 1.0:  # the probe is chosen at gamma 1, where the model is then exact
        assert fit.probe_sigma == 1.0
    assert fit.misfit[gamma] < min(m for g, m in fit.misfit.items() if g != gamma)
    assert fit.weights == fit.weights_by_gamma[gamma]


def test_checkerboard_halves_without_counts() -> None:
    truth = _scene(3)
    haadf = np.tensordot(TRUE_W, truth, axes=1)
    rng = np.random.default_rng(4)
    noisy = truth + 0.4 * rng.standard_normal(truth.shape)  # gaussian noise: no counts to thin
    fitted, _ = cross_fit(haadf, [(noisy, noisy)], 1.0, masks=checkerboard(haadf.shape))
    naive, _ = cross_fit(haadf, [(noisy, noisy)], 1.0)
    assert np.allclose(fitted, TRUE_W, rtol=0.1, atol=0.03), fitted
    assert abs(naive - TRUE_W).max() > 2 * abs(fitted - TRUE_W).max()


def test_fit_leaves_out_invalid_pixels() -> None:
    truth = _scene(5)
    haadf = np.tensordot(TRUE_W, truth, axes=1)
    valid = np.ones(haadf.shape, bool)
    valid[:, :30] = False
    clipped = haadf.copy()
    clipped[~valid] = 10.0  # garbage where the HAADF is saturated
    pair = [(truth, truth)]
    assert np.allclose(cross_fit(clipped, pair, 1.0, valid=valid)[0], TRUE_W, rtol=0.05)
    assert not np.allclose(cross_fit(clipped, pair, 1.0)[0], TRUE_W, rtol=0.05)


def test_fuse_takes_haadf_weights() -> None:
    haadf, counts, _ = _counts_case(dose=20.0)
    z = [40, 22, 8]
    default = fuse(haadf, counts, z, n_iter=5, warn=False).fused
    same = fuse(haadf, counts, z, n_iter=5, warn=False, haadf_weights=tuple(haadf_weights(z))).fused
    other = fuse(haadf, counts, z, n_iter=5, warn=False, haadf_weights=(2.0, 0.8, 0.3)).fused
    assert np.array_equal(default, same)
    assert not np.allclose(default, other)
    with pytest.raises(FusionInputError, match="haadf_weights has 2 weights for 3 maps"):
        fuse(haadf, counts, z, n_iter=1, haadf_weights=(1.0, 1.0))
    for bad in [(-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (np.nan, 1.0, 1.0)]:
        with pytest.raises(FusionInputError, match="haadf_weights"):
            FusionParams(haadf_weights=bad)


def test_refine_weakest_keeps_the_others_and_finds_the_grid_best() -> None:
    def scores(chem: tuple[float, ...], tv: tuple[float, ...]) -> np.ndarray:
        b, a = np.log2(chem[2] / 0.1), np.log2(tv[2] / 0.01)
        # element 2 best at (2^3, 2^-1), but element 0 is hurt beyond b = 2
        return np.array([1.0 + 0.01 * max(b - 2, 0), 1.0, (b - 3) ** 2 + (a + 1) ** 2 + 1.0])

    chem, tv = refine_weakest(scores, (0.1, 0.1, 0.1), (0.01, 0.01, 0.01), 2)
    assert chem[:2] == (0.1, 0.1) and tv[:2] == (0.01, 0.01)
    assert chem[2] == pytest.approx(0.4) and tv[2] == pytest.approx(0.005)


def _count_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    haadf, counts, _ = _counts_case(dose=20.0, seed=seed)
    return haadf, counts, [40, 22, 8]


def test_choose_lambdas_with_a_fitted_haadf_model() -> None:
    haadf, counts, z = _count_data()
    settings = SearchSettings(coarse=2, n_iter=5, lattice=4.0, haadf_weights="fit", refine_weakest=True)
    choice = choose_lambdas(haadf, z, maps=counts, settings=settings)
    assert choice.haadf_fit is not None and len(choice.haadf_fit.weights) == 3
    assert choice.haadf_fit.gamma == 1.0  # the HAADF is linear in the maps
    params = choice.fusion_params()
    assert params["haadf_weights"] == choice.haadf_fit.weights and params["gamma"] == 1.0
    assert len(params["lambda_chem"]) == 3 and len(params["lambda_tv"]) == 3
    record = choice.record()
    assert record["haadf_fit"]["gamma"] == 1.0 and len(record["lambda_chem_per_element"]) == 3
    assert fuse(haadf, counts, z, n_iter=5, warn=False, **params).fused.shape == counts.shape


def test_default_search_is_unchanged() -> None:
    haadf, counts, z = _count_data(1)
    settings = SearchSettings(coarse=2, n_iter=5, lattice=4.0)
    choice = choose_lambdas(haadf, z, maps=counts, settings=settings)
    assert choice.haadf_fit is None and choice.lambda_chem_per_element is None
    assert choice.fusion_params() == {"lambda_chem": choice.lambda_chem, "lambda_tv": choice.lambda_tv}
    assert settings.haadf_weights == "z" and not settings.refine_weakest


def test_fit_refused_on_sparse_maps_and_bad_setting() -> None:
    haadf, _, z = _count_data()
    sparse = np.zeros((3, *haadf.shape))
    sparse[:, ::13, ::11] = np.random.default_rng(0).random(sparse[:, ::13, ::11].shape)
    with pytest.raises(AutoLambdaError, match="sparse"):
        choose_lambdas(haadf, z, maps=sparse, settings=SearchSettings(coarse=2, n_iter=2, haadf_weights="fit"))
    with pytest.raises(Exception, match="haadf_weights must be one of"):
        SearchSettings(haadf_weights="Z")


def test_doctests() -> None:
    import doctest

    import emfuse.pipeline.fusion.auto as auto_module
    import emfuse.pipeline.fusion.haadf_fit as fit_module

    for module in (fit_module, auto_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
