"""Convergence diagnostics on cost curves."""

from __future__ import annotations

import numpy as np

from emfuse.pipeline.fusion.convergence import (
    diagnose_convergence,
    oscillation_count,
    relative_change,
)


def test_levelled_curves_give_no_message():
    it = np.arange(80.0)
    costs = np.vstack([500 + 300 * np.exp(-it / 5), 3e4 - 200 * np.exp(-it / 6), 7e3 + 3e3 * np.exp(-it / 4)])
    assert diagnose_convergence(costs) == []


def test_a_curve_still_falling_is_named_with_the_fix():
    it = np.arange(20.0)
    costs = np.vstack([500 + 300 * np.exp(-it / 50), np.full(20, 3e4), np.full(20, 7e3)])
    (message,) = diagnose_convergence(costs)
    assert "HAADF fidelity cost has not levelled off" in message and "raise n_iter" in message


def test_an_oscillating_curve_is_named_with_the_fix():
    it = np.arange(40.0)
    zigzag = 1000 + 5 * (-1.0) ** it
    costs = np.vstack([np.full(40, 10.0), zigzag, np.full(40, 7.0)])
    (message,) = diagnose_convergence(costs)
    assert "chemical (Poisson) cost oscillates" in message and "raise n_iter_tv" in message


def test_round_off_is_not_oscillation():
    rng = np.random.default_rng(0)
    curve = 1000 + 1e-9 * rng.standard_normal(30)
    assert oscillation_count(curve, 10) == 0
    assert relative_change(curve, 10) < 1e-10


def test_short_and_nan_padded_curves():
    assert diagnose_convergence(np.array([[1.0], [2.0], [3.0]])) == []
    padded = np.vstack([np.r_[100 + np.exp(-np.arange(30.0)), [np.nan] * 5]] * 3)
    assert diagnose_convergence(padded) == []
