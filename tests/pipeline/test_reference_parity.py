"""Parity with the published solver (PyPI ``multimodal-fusion`` 0.6.0) on both tutorial datasets.

Both solvers run with the published parameters and the same number of
iterations. One function, :func:`emfuse.pipeline.fusion.objective` (normalised
inputs, Neumann forward differences), evaluates both results: ours must reach
an objective no higher than the published code's, and every element's map
must correlate >= 0.95 with the published one.

The published ``run()`` restarts from a copy of its stored maps ``xx0`` (which
the Poisson term also uses), so the initial threshold of tutorial 2 cannot be
set on ``xx`` directly; ``xx0`` is replaced by a view whose ``copy()`` (the
start) is thresholded while its values (the Poisson term) are not. The
comparison without the threshold on both sides is run as well.

Measured (numba and plain engines alike; the published code with its C++ ``ctvlib``
TV step; with its Python fallback ``pyreg`` parity also holds: DyScO3 F 7675.12,
O correlation 0.972; Co3O4 F 352.91). DyScO3 before the solver's step test left out the TV
term (2026-12-07): F 7530.95, O 0.9575 (the step was halved where the TV term rose):

=========  ==========  =========  ==============================
dataset    F ours      F theirs   correlation per element
=========  ==========  =========  ==============================
DyScO3     7657.33     7771.41    Sc 0.9970, Dy 0.9988, O 0.9952
Co3O4      349.62      353.60     Co 0.9940, Mn 0.9960, O 0.9982
(no thr.)  349.25      353.22     Co 0.9950, Mn 0.9974, O 0.9984
=========  ==========  =========  ==============================
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from emfuse.pipeline.fusion import Normalisation, fuse, objective

reference = pytest.importorskip(
    "multimodal_fusion.fusion",
    reason="the published solver (pip install multimodal-fusion==0.6.0 scikit-image requests) "
    "is not importable, so there is nothing to compare with",
)


class _ThresholdedStart(np.ndarray):
    """The published ``xx0``: its values stay (Poisson term), its ``copy()`` (the start) is thresholded."""

    threshold = 0.0

    def copy(self, order="C"):  # the published run() starts from xx0.copy()
        start = np.array(self, copy=True, order=order)
        start[start < self.threshold] = 0
        return start


def run_published(data: dict, threshold: float) -> np.ndarray:
    """The published solver's fused maps (element, y, x) with the published call sequence."""
    p = data["params"]
    solver = reference.DataFusion(data["elements"], p["gamma"])
    # load_chemical_maps normalises the arrays it gets in place: give it float copies
    solver.load_chemical_maps({e: data["maps"][i].astype(np.float64) for i, e in enumerate(data["elements"])},
                              method=1)
    solver.load_haadf(data["haadf"].astype(np.float64))
    if threshold > 0:
        start = solver.xx0.view(_ThresholdedStart)
        start.threshold = threshold
        solver.xx0 = start
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bar
        solver.run(p["n_iter"], p["lambda_chem"], p["lambda_tv"], p["n_iter_tv"], p["bkg"],
                   plot_images=False, plot_convergence=False)
    results = solver.get_results()
    return np.stack([np.asarray(results[e], dtype=np.float64) for e in data["elements"]])


def test_thresholded_start_keeps_the_values():
    values = np.array([0.1, 0.5, 0.05]).view(_ThresholdedStart)
    values.threshold = 0.2
    np.testing.assert_array_equal(values.copy(), [0.0, 0.5, 0.0])
    np.testing.assert_array_equal(np.asarray(values), [0.1, 0.5, 0.05])


@pytest.mark.parametrize("with_threshold", [True, False], ids=["published", "no-threshold"])
def test_parity_with_the_published_solver(tutorial, with_threshold):
    threshold = tutorial["params"]["init_threshold"] if with_threshold else 0.0
    if not with_threshold and tutorial["params"]["init_threshold"] == 0:
        pytest.skip("this dataset has no initial threshold: the published case covers it")
    params = {**tutorial["params"], "init_threshold": threshold}
    theirs = run_published({**tutorial, "params": params}, threshold)
    ours = fuse(tutorial["haadf"], tutorial["maps"], tutorial["z"], **params).fused.astype(np.float64)

    norm = Normalisation.from_data(tutorial["haadf"], tutorial["maps"])
    haadf, maps = norm.haadf(tutorial["haadf"], np.float64), norm.maps(tutorial["maps"], np.float64)
    weights = {k: params[k] for k in ("gamma", "lambda_chem", "lambda_tv", "bkg")}
    f_ours = objective(ours, haadf, maps, tutorial["z"], **weights)
    f_theirs = objective(theirs, haadf, maps, tutorial["z"], **weights)
    correlations = {
        e: float(np.corrcoef(ours[i].ravel(), theirs[i].ravel())[0, 1]) for i, e in enumerate(tutorial["elements"])
    }
    backend = "C++ ctvlib" if getattr(reference, "cRegFlag", False) else "Python pyreg"
    report = f"F ours {f_ours:.2f}, published {f_theirs:.2f} (TV: {backend}); correlations {correlations}"
    assert f_ours <= f_theirs, report
    assert min(correlations.values()) >= 0.95, report
