"""The fused numba kernels against the plain array code they replace, kernel by kernel and whole.

The plain (``xp``) code is the reference: it is what runs on CuPy, and it is
written as the formulas read. Kernels work in float32 like the plain code, so
they agree to float32 rounding (a few 1e-7 relative), not bit for bit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed: the numba engine cannot run")

from emfuse.pipeline.fusion import (  # noqa: E402
    FusionInputError,
    fuse,
    haadf_weights,
    objective_terms,
    prox_tv,
    tv_iso,
)
from emfuse.pipeline.fusion import kernels_numba as kn  # noqa: E402
from emfuse.pipeline.fusion.solver import _smooth_gradient  # noqa: E402

GAMMA, LAM_H, LAM_CHEM, BKG = 1.6, 1 / 3, 0.08, 0.24


@pytest.fixture(scope="module")
def problem():
    """A small non-square float32 problem with exact zeros in the iterate (as after clipping)."""
    rng = np.random.default_rng(11)
    x = rng.random((3, 37, 53)).astype(np.float32)
    x[x < 0.2] = 0
    b_maps = rng.random((3, 37, 53)).astype(np.float32)
    b_maps[b_maps < 0.3] = 0  # sparse maps, as EELS maps are
    b_haadf = rng.random((37, 53)).astype(np.float32)
    return x, b_haadf, b_maps, haadf_weights([21, 66, 8])


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (both arrays >= 0)."""
    return np.abs(a.astype(np.float32).view(np.int32).astype(np.int64) - b.astype(np.float32).view(np.int32))


@pytest.mark.parametrize("exponent", [0.6, 0.0, 1.0, 2.5])
def test_vectorised_power_is_within_one_ulp(exponent):
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.random(20000), 10.0 ** rng.uniform(-45, 1.5, 20000), [0.0, 1.0, 1e-45]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    kn._power_row(x, np.float32(exponent), out)
    exact = x.astype(np.float64) ** np.float64(np.float32(exponent))  # then rounded to float32
    assert _ulps(out, exact).max() <= 1
    assert out[-3] == (1.0 if exponent == 0 else 0.0)  # numpy: 0 ** 0 = 1


def test_vectorised_log_is_within_one_ulp():
    rng = np.random.default_rng(14)
    y = np.concatenate([10.0 ** rng.uniform(-45, 3, 5000), rng.random(5000) + 0.01]).astype(np.float32)
    ours = np.array([kn._log64(v) for v in y]).astype(np.float32)
    exact = np.log(y.astype(np.float64)).astype(np.float32)  # correctly rounded
    assert (np.abs(ours - exact) <= np.spacing(np.abs(exact))).all()


def test_vectorised_exp_is_accurate_over_its_whole_range():
    # k from the rounding shift (1.5 * 2^52 added), negative k included, and the +-700 clamp
    t = np.concatenate([np.linspace(-700, 700, 20001), np.random.default_rng(15).uniform(-2, 2, 5000)])
    ours = np.array([kn._exp64(v) for v in t])
    assert np.abs(ours / np.exp(t) - 1).max() < 1e-9
    assert np.isclose(kn._exp64(-800.0), np.exp(-700.0), rtol=1e-9)  # clamped, still a normal number
    assert np.isclose(kn._exp64(800.0), np.exp(700.0), rtol=1e-9)


@pytest.mark.parametrize("step", [1.0, 0.125])
@pytest.mark.parametrize("reuse_pow", [False, True])
def test_smooth_step_matches_plain(problem, step, reuse_pow):
    x, b_haadf, b_maps, weights = problem
    w = weights.astype(np.float32)[:, None, None]
    plain = x - step * _smooth_gradient(x, b_haadf, b_maps, w, GAMMA, LAM_H, LAM_CHEM, BKG)
    x_pow = (x ** (GAMMA - 1)).astype(np.float32) if reuse_pow else None
    fused = kn.smooth_step(x, b_haadf, b_maps, weights, gamma=GAMMA, lam_h=LAM_H, lambda_chem=LAM_CHEM,
                           bkg=BKG, step=step, x_pow=x_pow)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, plain, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("nonnegative", [True, False])
@pytest.mark.parametrize("n_iter", [1, 3, 20])
def test_prox_tv_matches_plain(problem, momentum, nonnegative, n_iter):
    x, _, b_maps, _ = problem
    b = x - 0.5 * b_maps  # some negative values, so the projection matters
    plain = prox_tv(b, 0.15, n_iter, nonnegative=nonnegative, momentum=momentum)
    fused = kn.prox_tv(b, 0.15, n_iter, nonnegative=nonnegative, momentum=momentum)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)
    if nonnegative:
        assert (fused >= 0).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (40, 3)])
def test_prox_tv_edge_shapes(shape):
    rng = np.random.default_rng(12)
    b = rng.standard_normal(shape).astype(np.float32)
    for momentum in (False, True):
        np.testing.assert_allclose(
            kn.prox_tv(b, 0.3, 7, momentum=momentum), prox_tv(b, 0.3, 7, momentum=momentum),
            rtol=1e-5, atol=1e-6,
        )


def test_prox_tv_trivial_cases_project(problem):
    x, _, b_maps, _ = problem
    b = x - b_maps
    np.testing.assert_array_equal(kn.prox_tv(b, 0.0, 5), np.maximum(b, 0))
    np.testing.assert_array_equal(kn.prox_tv(b, 0.2, 0, nonnegative=False), b)


def test_prox_tv_reuses_buffers_without_state(problem):
    """A workspace carries no state between calls: the second call equals a fresh one."""
    x, _, b_maps, _ = problem
    work = kn.TVWorkspace(x.shape, x.dtype, momentum=True)
    out = np.empty_like(x)
    kn.prox_tv(b_maps, 0.2, 4, out=out, work=work)
    again = kn.prox_tv(x, 0.2, 4, out=out, work=work).copy()
    np.testing.assert_array_equal(again, kn.prox_tv(x, 0.2, 4))


def test_objective_terms_match_plain(problem):
    x, b_haadf, b_maps, weights = problem
    plain = objective_terms(x, b_haadf, b_maps, weights, GAMMA, BKG)
    pow_out = np.empty_like(x)
    fused = kn.objective_terms(x, b_haadf, b_maps, weights, GAMMA, BKG, pow_out=pow_out)
    np.testing.assert_allclose(fused, plain, rtol=2e-6)
    np.testing.assert_allclose(pow_out, x ** (GAMMA - 1), rtol=1e-6)
    exact = objective_terms(x.astype(np.float64), b_haadf.astype(np.float64), b_maps.astype(np.float64),
                            weights, GAMMA, BKG)
    np.testing.assert_allclose(fused, exact, rtol=2e-6)  # float64 sums: no float32 drift


def test_step_sums_match_numpy(problem):
    x, _, b_maps, _ = problem
    v = x - 0.3 * b_maps  # a gradient step's point
    x64, v64, new64 = (a.astype(np.float64) for a in (x, v, b_maps))
    d = new64 - x64
    expected = ((d * d).sum(), ((x64 - v64) * d).sum(), (x64 * x64).sum())
    assert kn.step_sums(x, v, b_maps) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("lambda_tv", [0.0, 0.05])
def test_prox_with_step_sums_is_the_prox_then_the_sums(problem, momentum, lambda_tv):
    """The solver's fused last pass: the same new point, and the sums step_sums gives, bit for bit."""
    x, _, b_maps, _ = problem
    v = x - 0.3 * b_maps
    new = np.empty_like(x)
    sums = kn.prox_tv_step_sums(v, lambda_tv, 4, x, out=new, momentum=momentum)
    np.testing.assert_array_equal(new, kn.prox_tv(v, lambda_tv, 4, momentum=momentum))
    assert sums == kn.step_sums(x, v, new)


def test_fuse_numba_matches_plain_on_the_tutorials(tutorial):
    fast = fuse(tutorial["haadf"], tutorial["maps"], tutorial["z"], engine="numba", **tutorial["params"])
    plain = fuse(tutorial["haadf"], tutorial["maps"], tutorial["z"], engine="xp", **tutorial["params"])
    assert (fast.engine, plain.engine) == ("numba", "xp")
    assert fast.step_history == plain.step_history
    # 30 iterations of float32 rounding: measured max |diff| 6e-8 (DyScO3), 7e-6 (Co3O4)
    np.testing.assert_allclose(fast.fused, plain.fused, atol=5e-5)
    np.testing.assert_allclose(fast.objective, plain.objective, rtol=1e-6)
    np.testing.assert_allclose(fast.costs, plain.costs, rtol=1e-5)
    np.testing.assert_allclose(fast.haadf_model, plain.haadf_model, atol=5e-5)


@pytest.mark.parametrize(
    "dtype, atol",
    [
        (np.float32, 5e-5),
        # float64 compiles every kernel a second time (about 20 s once, then cached)
        pytest.param(np.float64, 1e-10, marks=pytest.mark.slow),
    ],
)
def test_fuse_numba_matches_plain_with_backtracking_and_tol(dysco3, dtype, atol):
    haadf, maps = dysco3["haadf"][:, :120], dysco3["maps"][:, :, :120]
    # step 8 is too long: it is halved three times (measured 8, 4, 4, 2, ...), which
    # exercises the retry from the iterate
    params = {**dysco3["params"], "n_iter": 40, "step": 8.0, "tol": 2e-3}
    fast = fuse(haadf, maps, dysco3["z"], engine="numba", dtype=dtype, **params)
    plain = fuse(haadf, maps, dysco3["z"], engine="xp", dtype=dtype, **params)
    assert fast.fused.dtype == dtype
    assert min(fast.step_history) < 8.0
    assert fast.step_history == plain.step_history
    assert fast.costs.shape == plain.costs.shape and fast.costs.shape[1] < 40  # tol stopped both
    np.testing.assert_allclose(fast.fused, plain.fused, atol=atol)


def test_auto_engine_is_numba_for_numpy_and_can_be_switched(dysco3, monkeypatch):
    from emfuse.pipeline.fusion import solver

    small = (dysco3["haadf"][:32, :32], dysco3["maps"][:, :32, :32], dysco3["z"])
    assert fuse(*small, n_iter=2).engine == "numba"
    monkeypatch.setattr(solver, "ENGINE", "xp")
    assert fuse(*small, n_iter=2).engine == "xp"
    assert fuse(*small, n_iter=2, engine="numba").engine == "numba"
    with pytest.raises(ValueError, match="unknown fusion engine"):
        fuse(*small, n_iter=2, engine="fortran")


def test_cuda_engine_refuses_numpy_input_outside_the_simulator(monkeypatch):
    from numba import config

    from emfuse.errors import EmfuseError
    from emfuse.pipeline.fusion import solver

    if config.ENABLE_CUDASIM:
        pytest.skip("under the CUDA simulator numpy input is what the cuda engine runs on")
    haadf, maps = np.arange(64.0).reshape(8, 8), np.arange(128.0).reshape(2, 8, 8) % 7
    # no GPU here: not available; with one: numpy input is refused (cupy arrays are asked for)
    with pytest.raises(EmfuseError, match="engine='cuda'"):
        fuse(haadf, maps, [40, 20], n_iter=1, engine="cuda")
    monkeypatch.setattr(solver, "cuda_available", lambda: True)
    with pytest.raises(ValueError, match="runs on cupy arrays"):
        fuse(haadf, maps, [40, 20], n_iter=1, engine="cuda")
    assert fuse(haadf, maps, [40, 20], n_iter=1).engine == "numba"  # auto: numpy stays on the CPU kernels


def test_concurrent_calls_from_threads_agree(dysco3):
    """Dask's threaded scheduler fuses several tiles at once; kernels must not interfere."""
    windows = [(slice(0, 64), slice(0, 64)), (slice(64, 128), slice(0, 96)), (slice(100, 164), slice(50, 114))]

    def run(window):
        ys, xs = window
        return fuse(dysco3["haadf"][ys, xs], dysco3["maps"][:, ys, xs], dysco3["z"], **dysco3["params"]).fused

    serial = [run(w) for w in windows]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k, w=w: results.__setitem__(k, run(w))) for k, w in enumerate(windows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, expected in enumerate(serial):
        np.testing.assert_array_equal(results[k], expected)


# -- one TV weight per element -----------------------------------------------------------------------


def _three_element_case():
    rng = np.random.default_rng(21)
    truth = np.stack([np.tile([1.0, 0.0], (32, 16)), np.tile([0.0, 1.0], (32, 16)), np.full((32, 32), 0.5)])
    haadf = 2.0 * truth[0] + truth[1] + truth[2]
    return haadf, rng.poisson(5 * truth + 0.5).astype(float), [40, 20, 8]


def test_equal_per_element_tv_weights_give_the_scalar_result():
    haadf, maps, z = _three_element_case()
    for engine in ("numba", "xp"):
        scalar = fuse(haadf, maps, z, n_iter=15, lambda_tv=0.05, warn=False, engine=engine)
        vector = fuse(haadf, maps, z, n_iter=15, lambda_tv=[0.05, 0.05, 0.05], warn=False, engine=engine)
        np.testing.assert_allclose(vector.fused, scalar.fused, atol=1e-6)
        np.testing.assert_allclose(vector.objective, scalar.objective, rtol=1e-6)
        assert vector.params.lambda_tv == (0.05, 0.05, 0.05)


def test_per_element_tv_weights_agree_between_engines_and_smooth_only_their_element():
    haadf, maps, z = _three_element_case()
    weights = (0.005, 0.005, 0.5)
    fast = fuse(haadf, maps, z, n_iter=15, lambda_tv=weights, warn=False, engine="numba")
    plain = fuse(haadf, maps, z, n_iter=15, lambda_tv=weights, warn=False, engine="xp")
    np.testing.assert_allclose(fast.fused, plain.fused, atol=1e-5)
    np.testing.assert_allclose(fast.objective, plain.objective, rtol=1e-5)
    low = fuse(haadf, maps, z, n_iter=15, lambda_tv=0.005, warn=False)
    tv = [float(tv_iso(np.asarray(m, np.float64))) for m in (fast.fused[2], low.fused[2], fast.fused[0], low.fused[0])]
    assert tv[0] < 0.5 * tv[1]  # the third element is smoothed by its own weight ...
    assert tv[2] == pytest.approx(tv[3], rel=0.2)  # ... the first much less affected
    assert np.all(np.diff(fast.objective) <= 1e-6 * np.abs(fast.objective[:-1]))  # F still decreases


def test_per_element_tv_weights_must_match_the_elements():
    haadf, maps, z = _three_element_case()
    with pytest.raises(FusionInputError, match="3 maps"):
        fuse(haadf, maps, z, n_iter=2, lambda_tv=[0.1, 0.1], warn=False)
    with pytest.raises(FusionInputError, match="lambda_tv"):
        fuse(haadf, maps, z, n_iter=2, lambda_tv=[0.1, -0.1, 0.1], warn=False)


# -- one lambda_chem per element ---------------------------------------------------------------------


def test_equal_per_element_chem_weights_give_the_scalar_result():
    haadf, maps, z = _three_element_case()
    for engine in ("numba", "xp"):
        scalar = fuse(haadf, maps, z, n_iter=15, lambda_chem=0.08, lambda_tv=0.05, warn=False, engine=engine)
        vector = fuse(haadf, maps, z, n_iter=15, lambda_chem=[0.08, 0.08, 0.08], lambda_tv=0.05, warn=False,
                      engine=engine)
        np.testing.assert_array_equal(vector.fused, scalar.fused)
        np.testing.assert_allclose(vector.objective, scalar.objective, rtol=1e-7)  # psi_2 summed per element
        assert vector.step_history == scalar.step_history
        assert vector.params.lambda_chem == (0.08, 0.08, 0.08)


def test_per_element_chem_weights_agree_between_engines_and_move_only_their_element():
    haadf, maps, z = _three_element_case()
    weights = (0.08, 0.08, 2.0)
    fast = fuse(haadf, maps, z, n_iter=15, lambda_chem=weights, lambda_tv=0.05, warn=False, engine="numba")
    plain = fuse(haadf, maps, z, n_iter=15, lambda_chem=weights, lambda_tv=0.05, warn=False, engine="xp")
    np.testing.assert_allclose(fast.fused, plain.fused, atol=1e-5)
    np.testing.assert_allclose(fast.objective, plain.objective, rtol=1e-5)
    assert np.all(np.diff(fast.objective) <= 1e-6 * np.abs(fast.objective[:-1]))  # F still decreases
    # the recorded objective is F with each element's chem term weighted by its own number
    from emfuse.pipeline.fusion import Normalisation, objective

    norm = Normalisation.from_data(haadf, maps)
    expected = objective(fast.fused.astype(np.float64), norm.haadf(haadf, np.float64), norm.maps(maps, np.float64),
                         z, gamma=1.6, lambda_chem=weights, lambda_tv=0.05, bkg=0.1)
    assert fast.objective[-1] == pytest.approx(expected, rel=1e-5)
    # a large weight on the third element pulls its map towards its own counts, away from the HAADF's
    base = fuse(haadf, maps, z, n_iter=15, lambda_chem=0.08, lambda_tv=0.05, warn=False)
    b = norm.maps(maps)
    dist = [float(np.abs(r.fused[2] - b[2]).mean()) for r in (fast, base)]
    assert dist[0] < 0.8 * dist[1]
    # the gradient of the first element's chem term is unchanged: its step differs only through the coupling
    x = np.full((3, 8, 8), 0.5, np.float32)
    bh, bm = np.ones((8, 8), np.float32), np.full((3, 8, 8), 0.25, np.float32)
    w = haadf_weights(z)
    g_vec = kn.smooth_step(x, bh, bm, w, gamma=1.6, lam_h=1 / 3, lambda_chem=weights, bkg=0.1, step=1.0)
    g_one = kn.smooth_step(x, bh, bm, w, gamma=1.6, lam_h=1 / 3, lambda_chem=0.08, bkg=0.1, step=1.0)
    np.testing.assert_array_equal(g_vec[:2], g_one[:2])
    assert not np.array_equal(g_vec[2], g_one[2])


def test_per_element_chem_weights_must_match_the_elements():
    haadf, maps, z = _three_element_case()
    with pytest.raises(FusionInputError, match="3 maps"):
        fuse(haadf, maps, z, n_iter=2, lambda_chem=[0.1, 0.1], warn=False)
    with pytest.raises(FusionInputError, match="lambda_chem"):
        fuse(haadf, maps, z, n_iter=2, lambda_chem=[0.1, -0.1, 0.1], warn=False)


def test_the_thread_count_set_after_numba_was_imported_is_the_one_used():
    """A Dask worker spawned from a script that imports numba: numba read its thread count at
    import, the nanny set ``NUMBA_NUM_THREADS`` after. The pool must start with the variable's
    value, or the next kernel numba compiles fails ("Cannot set NUMBA_NUM_THREADS ... once the
    threads have been launched"), which failed every fusion of a fresh install's first batch."""
    code = textwrap.dedent("""
        import os
        import numba
        import numpy as np
        wanted = 1 if numba.config.NUMBA_DEFAULT_NUM_THREADS > 1 else 2
        os.environ["NUMBA_NUM_THREADS"] = str(wanted)  # as the nanny does, after the import
        from emfuse.pipeline.fusion import kernels_numba as kn
        kn.prox_tv(np.ones((1, 8, 8), np.float32), 0.1, 2)

        @numba.njit(parallel=True)
        def total(a):  # compiled now, after the pool started: numba reads the variable again
            s = 0.0
            for i in numba.prange(a.size):
                s += a[i]
            return s

        print(total(np.ones(4)), numba.get_num_threads() == wanted)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["4.0", "True"]
