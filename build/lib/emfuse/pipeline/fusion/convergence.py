"""Convergence checks on recorded cost curves, as the tutorials teach users to do by eye.

The published tutorials ask the user to look at the three cost curves and
check that each has levelled off and does not oscillate. These functions make
that check on the numbers, so that an overnight run says so in its log and its
output store instead of relying on someone looking at a plot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TERM_NAMES = {"haadf": "HAADF fidelity", "chem": "chemical (Poisson)", "tv": "total variation"}


class ConvergenceWarning(UserWarning):
    """A cost curve has not levelled off or oscillates; the message says what to change."""


def relative_change(curve: np.ndarray, window: int) -> float:
    """Mean relative change per iteration of ``curve`` over its last ``window`` iterations."""
    curve = np.asarray(curve, dtype=np.float64)
    curve = curve[np.isfinite(curve)]
    if curve.size < 2:
        return 0.0
    window = min(window, curve.size - 1)
    scale = max(np.abs(curve[-window - 1 :]).max(), 1e-300)
    return float(abs(curve[-1] - curve[-1 - window]) / scale / window)


def oscillation_count(curve: np.ndarray, window: int, *, rel_amplitude: float = 1e-4) -> int:
    """Sign changes of the iteration-to-iteration differences over the last ``window`` steps.

    Differences smaller than ``rel_amplitude`` of the curve's scale count as
    flat (no sign), so round-off on a converged curve is not called oscillation.
    """
    curve = np.asarray(curve, dtype=np.float64)
    curve = curve[np.isfinite(curve)][-(window + 1) :]
    if curve.size < 3:
        return 0
    steps = np.diff(curve)
    scale = max(np.abs(curve).max(), 1e-300)
    signs = np.sign(np.where(np.abs(steps) > rel_amplitude * scale, steps, 0.0))
    signs = signs[signs != 0]
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def diagnose_convergence(
    costs: np.ndarray,
    terms: Sequence[str] = ("haadf", "chem", "tv"),
    *,
    window: int = 5,
    level_tol: float = 1e-3,
    max_sign_changes: int = 2,
) -> list[str]:
    """Messages for cost curves that have not levelled off or that oscillate.

    Parameters
    ----------
    costs
        (n_terms, n_iterations) recorded costs.
    terms
        Names of the rows.
    window
        Number of final iterations examined.
    level_tol
        A curve whose mean relative change per iteration over the window
        exceeds this has not levelled off.
    max_sign_changes
        More sign changes than this among the window's steps is oscillation.

    Returns
    -------
    list of str
        Empty when every curve has levelled off without oscillating.

    Examples
    --------
    >>> import numpy as np
    >>> flat = np.vstack([100 + np.exp(-np.arange(60.0))] * 3)
    >>> diagnose_convergence(flat)
    []
    >>> falling = np.vstack([np.linspace(100, 50, 10)] * 3)
    >>> diagnose_convergence(falling)[0].startswith("the HAADF fidelity cost has not levelled off")
    True
    """
    costs = np.atleast_2d(np.asarray(costs, dtype=np.float64))
    messages = []
    for name, curve in zip(terms, costs):
        label = TERM_NAMES.get(name, name)
        change = relative_change(curve, window)
        flips = oscillation_count(curve, window)
        if flips > max_sign_changes:
            messages.append(
                f"the {label} cost oscillates ({flips} changes of direction in the last {window} "
                "iterations): the TV step is solved too roughly or the gradient step is too large; "
                "raise n_iter_tv, or lower lambda_chem"
            )
        elif change > level_tol:
            messages.append(
                f"the {label} cost has not levelled off (still changing by {100 * change:.2g}% per "
                f"iteration over the last {window}); raise n_iter"
            )
    return messages
