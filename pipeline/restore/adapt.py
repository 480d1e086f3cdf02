"""Self-supervised adaptation of a restoration network to one movie (Noise2Noise between frames).

The frames of a movie are independent noise realisations of one specimen region, moved by
the drift. After drift registration, frame ``j`` is a noisy *target* for frame ``i``: its
noise is independent of the input's and has zero mean, so a network trained with the
squared error to map frame ``i`` to frame ``j`` converges to the conditional mean of the
target given the input, which is the noise-free signal (Lehtinen et al., "Noise2Noise:
learning image restoration without clean data", ICML 2018). No truth is needed, and the
network learns the night's own detector, dose and specimen.

Whether it helped is decided without truth too, on frames kept out of training (the
**held-out-frame check**): restore held-out frame ``a`` and compare it with held-out frame
``b`` of the same region. Because the noise of ``b`` is independent of ``f(a)`` and has
zero mean,

    E |f(a) - b|^2 = E |f(a) - s|^2 + sigma_b^2,

the squared distance to another noisy frame is the squared error against the unknown
truth ``s`` plus a constant: of two networks, the one with the lower value restores better.
The adapted network is used only when it lowered this score by more than the noise of the
estimate (:func:`held_out_decision`).

Arrays in, model out: no Zarr, no Dask (:mod:`emfuse.flows.jobs.restore` calls it).

Examples
--------
>>> import numpy as np, torch
>>> from emfuse.pipeline.restore.cgrdn import CGRDN
>>> from emfuse.pipeline.restore.train import MODEL_PRESETS
>>> from emfuse.pipeline.synth.movie import make_movie
>>> movie = make_movie((64, 64), n_frames=4, dose=20, seed=0)
>>> _ = torch.manual_seed(0)
>>> result = adapt_model(CGRDN(MODEL_PRESETS["tiny"]), movie.movie, steps=2, batch=2, patch=32)
>>> type(result.used).__name__, result.frames_train, result.frames_holdout
('bool', [0, 1], [2, 3])
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from ..register import estimate_shift, shift_image

__all__ = [
    "AdaptResult",
    "adapt_model",
    "align_region",
    "held_out_decision",
    "held_out_scores",
    "measure_drift",
    "noise2noise_pairs",
]

#: a remaining sub-pixel offset up to this (px, per axis) is left as it is; above it the
#: target is moved by it with the interpolating cubic spline (see :func:`align_region`)
SUBPIXEL_TOLERANCE = 0.1
#: pixels cut around a target moved by interpolation (the spline's border is filled in)
SPLINE_MARGIN = 4
#: the standard deviation of a patch (raw units) is floored here when scaling the loss, as
#: the CGRDN floors it in its own standardisation
MIN_SCALE = 0.1
#: gaussian sigma (px) of the frames the frame-to-frame drift is first measured on
COARSE_SIGMA = 2.0


def measure_drift(frames: np.ndarray) -> np.ndarray:
    """The drift ``(dy, dx)`` of every frame against the first, in pixels (frame, 2).

    Measured on the raw frames by cross-correlation (:func:`emfuse.pipeline.register.estimate_shift`):
    the noise of two frames is independent, so it widens the correlation peak but does not
    move it (0.1 px or better at a signal-to-noise ratio of 2, ``tests/pipeline/test_register.py``).
    Each frame is first measured against the previous one, both smoothed by a gaussian of
    :data:`COARSE_SIGMA` px, and the steps are summed (a guess);
    then the frame, moved back by the guess, is measured against the first frame and the
    small remainder added. A lattice correlates equally well at every lattice vector and
    the peak nearest zero wins, so measuring frame 7 against frame 0 directly can be a whole
    period off once the drift exceeds half a period (or when noise lifts a neighbouring peak);
    the frame-to-frame steps stay small, and the second measurement keeps their errors from
    adding up (a remainder above 1 px is taken for a neighbouring peak and ignored).

    Parameters
    ----------
    frames : numpy.ndarray
        The raw movie (frame, y, x).

    Returns
    -------
    numpy.ndarray
        (frame, 2) float64, ``(dy, dx)`` of each frame; the first is (0, 0).

    Examples
    --------
    >>> from emfuse.pipeline.synth.movie import make_movie
    >>> m = make_movie((64, 64), n_frames=3, dose=200, seed=1)
    >>> bool(np.abs(measure_drift(m.movie) - m.drift).max() < 0.2)
    True
    """
    from scipy.ndimage import gaussian_filter

    frames = np.asarray(frames, dtype=np.float64)
    # the steps on smoothed frames: a gaussian of 2 px leaves 4% of a 5 px lattice's contrast
    # and keeps what is not periodic (particles, thickness, edges), which has one peak
    smooth = [gaussian_filter(f, COARSE_SIGMA) for f in frames]
    drift = np.zeros((frames.shape[0], 2))
    for k in range(1, frames.shape[0]):
        guess = drift[k - 1] + np.array(estimate_shift(smooth[k - 1], smooth[k]))
        rest = np.array(estimate_shift(frames[0], shift_image(frames[k], tuple(-guess))))
        # a remainder of more than a pixel is the lattice ambiguity again (a neighbouring peak
        # won by noise), not an error of the small steps: keep the guess then
        drift[k] = guess + rest if np.all(np.abs(rest) <= 1.0) else guess
    return drift


def _overlap(n: int, size: int, offset: int, margin: int) -> tuple[int, int]:
    """First and last valid origin along one axis of a crop of ``size`` in the input frame,
    when the target crop starts ``offset`` further and needs ``margin`` pixels on each side."""
    return max(0, margin - offset), min(n - size, n - size - margin - offset)


def align_region(target_frame: np.ndarray, origin: tuple[int, int], size: tuple[int, int],
                 offset: np.ndarray, *, tolerance: float = SUBPIXEL_TOLERANCE) -> np.ndarray:
    """The crop of ``target_frame`` showing the region that the input frame shows at ``origin``.

    The region is ``[origin, origin + size)`` of the input frame; ``offset`` is the target's
    drift minus the input's (px).

    The whole-pixel part of ``offset`` is taken by cropping (no resampling: the target's
    noise stays exactly as recorded). A remaining fraction larger than ``tolerance`` is
    removed by moving the crop with the interpolating cubic spline
    (:func:`emfuse.pipeline.register.shift_image`) on a crop :data:`SPLINE_MARGIN` pixels wider,
    whose border is then cut. Why not ignore the fraction, or why not always interpolate:

    * Interpolation averages neighbouring pixels of the target, so its noise becomes
      correlated and a little weaker. For the squared error that does not bias what is
      learned: the minimiser is the conditional mean of the target, and a weighted sum of
      zero-mean noise independent of the input still has zero mean. What interpolation
      does bias is the signal: the spline damps the finest frequencies (most at half a
      pixel), so a network trained on interpolated targets learns that slight blur.
    * Leaving a fraction ``phi`` uncorrected makes the target the signal moved by ``phi``;
      averaged over pairs with different fractions that is a blur of up to a pixel (a
      1 px box), larger than the spline's.

    So: crop by whole pixels always, and interpolate only what is left when it matters.

    Parameters
    ----------
    target_frame : numpy.ndarray
        The frame to crop (y, x).
    origin : (int, int)
        The region's first row and column in the input frame.
    size : (int, int)
        The region's size (h, w).
    offset : numpy.ndarray
        The target's drift minus the input's, ``(dy, dx)`` in pixels.
    tolerance : float
        The largest fraction of a pixel left uncorrected.

    Returns
    -------
    numpy.ndarray
        (h, w) float32.

    Raises
    ------
    ValueError
        When the crop leaves the frame.

    Examples
    --------
    >>> f = np.arange(100.0).reshape(10, 10)
    >>> align_region(f, (2, 3), (4, 4), np.array([1.0, -2.0]))[0].tolist()  # rows 3.., cols 1..
    [31.0, 32.0, 33.0, 34.0]
    """
    whole = np.round(offset).astype(int)
    fraction = np.asarray(offset, dtype=np.float64) - whole
    y, x = origin[0] + whole[0], origin[1] + whole[1]
    h, w = size
    if np.all(np.abs(fraction) <= tolerance):
        return np.asarray(target_frame[y:y + h, x:x + w], dtype=np.float32)
    m = SPLINE_MARGIN
    wide = np.asarray(target_frame[y - m:y + h + m, x - m:x + w + m], dtype=np.float64)
    if wide.shape != (h + 2 * m, w + 2 * m):
        raise ValueError(f"the target crop at {origin} + {whole.tolist()} leaves the frame")
    # the crop at pixel p shows the input's region at p - fraction: move it back
    return shift_image(wide, tuple(-fraction))[m:m + h, m:m + w].astype(np.float32)


def noise2noise_pairs(frames: np.ndarray, drift: np.ndarray, rng: np.random.Generator, patch: int = 64,
                      n: int = 8, *, use: Sequence[int] | None = None,
                      tolerance: float = SUBPIXEL_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Noise2Noise training pairs from a movie: input patches and their targets.

    Each pair draws two different frames ``i != j`` (of ``use``, default all) and a patch
    position in frame ``i``; the target is the patch of frame ``j`` showing the same
    specimen region after drift correction (:func:`align_region`).

    Parameters
    ----------
    frames
        The movie (frame, y, x), raw units (counts).
    drift
        Drift ``(dy, dx)`` of every frame in pixels (:func:`measure_drift`; the specimen
        moved by ``+drift``), shape (frame, 2).
    rng
        Every random choice (frames, positions) comes from it.
    patch, n
        Patch side (px) and number of pairs.
    use
        Frame indices the pairs are drawn from (at least two; e.g. the training frames).
    tolerance
        Sub-pixel offsets up to this are left uncorrected (see :func:`align_region`).

    Returns
    -------
    inputs, targets : ndarray
        float32, (n, 1, patch, patch) each.

    Examples
    --------
    >>> from emfuse.pipeline.synth.movie import make_movie
    >>> m = make_movie((48, 48), n_frames=3, seed=0)
    >>> a, b = noise2noise_pairs(m.movie, m.drift, np.random.default_rng(0), patch=32, n=2)
    >>> a.shape, b.shape
    ((2, 1, 32, 32), (2, 1, 32, 32))
    """
    frames = np.asarray(frames)
    drift = np.asarray(drift, dtype=np.float64)
    if frames.ndim != 3 or drift.shape != (frames.shape[0], 2):
        raise ValueError(f"need frames (frame, y, x) and drift (frame, 2); got {frames.shape} and {drift.shape}")
    use = list(range(frames.shape[0])) if use is None else [int(k) for k in use]
    if len(use) < 2:
        raise InputError(f"Noise2Noise needs at least two frames of the same region, got {len(use)}")
    ny, nx = frames.shape[1:]
    inputs = np.empty((n, 1, patch, patch), np.float32)
    targets = np.empty_like(inputs)
    for k in range(n):
        for _ in range(100):  # another pair of frames when these two overlap too little
            i, j = rng.choice(use, size=2, replace=False)
            offset = drift[j] - drift[i]
            whole = np.round(offset).astype(int)
            lo_y, hi_y = _overlap(ny, patch, whole[0], SPLINE_MARGIN)
            lo_x, hi_x = _overlap(nx, patch, whole[1], SPLINE_MARGIN)
            if lo_y <= hi_y and lo_x <= hi_x:
                break
        else:
            raise InputError(f"frames of {ny} x {nx} px drifted too far to share a {patch} px patch; "
                             "use a smaller patch")
        y0, x0 = int(rng.integers(lo_y, hi_y + 1)), int(rng.integers(lo_x, hi_x + 1))
        inputs[k, 0] = frames[i, y0:y0 + patch, x0:x0 + patch]
        targets[k, 0] = align_region(frames[j], (y0, x0), (patch, patch), offset, tolerance=tolerance)
    return inputs, targets


def held_out_scores(model: torch.nn.Module, frames: np.ndarray, drift: np.ndarray, holdout: Sequence[int], *,
                    block: int = 32, tolerance: float = SUBPIXEL_TOLERANCE,
                    restore_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """The held-out-frame check, one value per block: mean ``(f(a) - b)^2`` (raw units squared).

    For every ordered pair ``(a, b)`` of different held-out frames, frame ``a`` is restored
    with ``model`` (:func:`emfuse.pipeline.restore.inference.restore`, whole frame), frame ``b`` is
    aligned onto it (:func:`align_region`) over the region both show, and that region is cut
    into ``block`` x ``block`` pixel blocks. ``E (f(a) - b)^2 = E (f(a) - s)^2 + sigma_b^2``:
    the squared error against the truth plus the noise of ``b``, the same for every model,
    so the scores of two models on the same blocks rank them by their error against the truth.

    Parameters
    ----------
    model : torch.nn.Module
        The network to score.
    frames : numpy.ndarray
        The raw movie (frame, y, x).
    drift : numpy.ndarray
        (frame, 2), from :func:`measure_drift`.
    holdout : sequence of int
        The held-out frames, at least two.
    block : int
        The side of the blocks, in pixels.
    tolerance : float
        As :func:`align_region`.
    restore_kwargs : dict, optional
        Passed to :func:`emfuse.pipeline.restore.inference.restore`.

    Returns
    -------
    ndarray
        float64, one score per (pair, block), in a fixed order (the same for every model).
    """
    from .inference import restore

    holdout = [int(k) for k in holdout]
    if len(holdout) < 2:
        raise InputError(f"the held-out-frame check needs two held-out frames, got {len(holdout)}")
    frames = np.asarray(frames, dtype=np.float32)
    ny, nx = frames.shape[1:]
    restored = {a: restore(frames[a], model, **(restore_kwargs or {})) for a in holdout}
    scores: list[float] = []
    for a in holdout:
        for b in holdout:
            if a == b:
                continue
            offset = np.asarray(drift[b], np.float64) - np.asarray(drift[a], np.float64)
            whole = np.round(offset).astype(int)
            lo_y, hi_y = max(0, SPLINE_MARGIN - whole[0]), min(ny, ny - SPLINE_MARGIN - whole[0])
            lo_x, hi_x = max(0, SPLINE_MARGIN - whole[1]), min(nx, nx - SPLINE_MARGIN - whole[1])
            h, w = (hi_y - lo_y) // block * block, (hi_x - lo_x) // block * block
            if h < block or w < block:
                continue
            target = align_region(frames[b], (lo_y, lo_x), (h, w), offset, tolerance=tolerance)
            err = (restored[a][lo_y:lo_y + h, lo_x:lo_x + w].astype(np.float64) - target) ** 2
            scores.extend(err.reshape(h // block, block, w // block, block).mean(axis=(1, 3)).ravel())
    if not scores:
        raise InputError(f"the held-out frames drifted too far apart to share a {block} px block")
    return np.asarray(scores)


def held_out_decision(before: np.ndarray, after: np.ndarray, *, z: float = 2.0,
                      min_gain: float = 1e-3) -> tuple[bool, str, dict[str, float]]:
    """Did the held-out-frame score improve by more than the noise of its estimate?

    ``d = after - before`` per block (paired: the same blocks, the same target frames, so
    the target noise common to both largely cancels). Improved when all three hold:

    1. the median of ``d`` is below 0 (most blocks improved: a few blocks cannot decide);
    2. the mean of ``d`` is below ``-z`` standard errors (``std(d) / sqrt(n)``): more than
       the noise of the estimate;
    3. the mean improvement is at least ``min_gain`` of the mean score before (guards
       against a difference of rounding size, e.g. after a learning rate of ~0).

    Parameters
    ----------
    before, after : numpy.ndarray
        The scores per block (:func:`held_out_scores`) of the model before and after adapting.
    z : float
        The number of standard errors the mean improvement must exceed.
    min_gain : float
        The smallest mean improvement, as a fraction of the mean score before.

    Returns
    -------
    improved : bool
        Whether all three hold.
    reason : str
        One sentence: why.
    figures : dict of str to float
        The figures it decided on (median and mean change, standard error, relative change).

    Examples
    --------
    >>> b = np.array([2.0, 2.1, 1.9, 2.0]); held_out_decision(b, b - 0.5)[0], held_out_decision(b, b)[0]
    (True, False)
    """
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    d = after - before
    n = d.size
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    mean, median = float(d.mean()), float(np.median(d))
    figures = {"mean_change": mean, "median_change": median, "standard_error": se,
               "relative_change": mean / max(float(before.mean()), 1e-300)}
    if not median < 0:
        return False, f"the median held-out score did not fall (median change {median:+.4g})", figures
    if not mean < -z * se:
        return False, (f"the held-out score fell by {-mean:.4g}, within the noise of the estimate "
                       f"({z:g} x standard error = {z * se:.4g})"), figures
    if not -mean >= min_gain * float(before.mean()):
        return False, (f"the held-out score fell by only {-figures['relative_change']:.2%} "
                       f"(less than {min_gain:.2%})"), figures
    margin = f"{-mean / se:.1f} standard errors" if se > 0 else "on every block alike"
    return True, (f"the held-out score fell by {-figures['relative_change']:.1%} "
                  f"({margin}; median change {median:+.4g})"), figures


@dataclass
class AdaptResult:
    """What :func:`adapt_model` did, and the model to use.

    ``model`` is the adapted network when ``used``, else the original one (unchanged);
    ``adapted`` is always the fine-tuned copy. Scores are medians over blocks of the
    held-out-frame check, in raw units squared.

    Attributes
    ----------
    model : torch.nn.Module
        The network to use.
    adapted : torch.nn.Module
        The fine-tuned copy.
    used : bool
        Whether the held-out-frame check kept the adapted network.
    reason : str
        One sentence: why (:func:`held_out_decision`).
    score_before, score_after : float
        The held-out-frame scores before and after adapting.
    frames_train, frames_holdout : list of int
        The frames trained on and the frames held out.
    drift : numpy.ndarray
        (frame, 2), from :func:`measure_drift`.
    steps, lr, batch, patch : int, float, int, int
        The adaptation's settings (:func:`adapt_model`).
    seconds, seconds_per_step : float
        The wall time of the adaptation, and per step.
    losses : list of float
        The training loss at each step.
    figures : dict of str to float
        The figures of the decision.
    items : int
        The number of blocks scored.
    """

    model: torch.nn.Module
    adapted: torch.nn.Module
    used: bool
    reason: str
    score_before: float
    score_after: float
    frames_train: list[int]
    frames_holdout: list[int]
    drift: np.ndarray
    steps: int
    lr: float
    batch: int
    patch: int
    seconds: float
    seconds_per_step: float
    losses: list[float] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    items: int = 0

    def record(self) -> dict[str, Any]:
        """JSON-able summary (the restore job stores it as the attribute ``adaptation``)."""
        k = max(1, len(self.losses) // 10)
        return {"steps": self.steps, "lr": self.lr, "batch": self.batch, "patch": self.patch,
                "train_frames": self.frames_train, "holdout_frames": self.frames_holdout,
                "score_before": self.score_before, "score_after": self.score_after, "items": self.items,
                **{k2: float(v) for k2, v in self.figures.items()},
                "used": self.used, "reason": self.reason, "seconds": round(self.seconds, 3),
                "seconds_per_step": round(self.seconds_per_step, 4),
                "loss_first": float(np.mean(self.losses[:k])) if self.losses else None,
                "loss_last": float(np.mean(self.losses[-k:])) if self.losses else None,
                "drift_px": np.round(self.drift, 3).tolist()}


def _learning_rate(step: int, steps: int, lr: float) -> float:
    """The trainer's schedule for a fine-tune: warm-up over 10% (at most 20 steps), cosine to lr/10."""
    from .train import TrainConfig, learning_rate

    warmup = min(20, max(1, steps // 10))
    return learning_rate(TrainConfig(steps=steps, lr=lr, lr_final=lr / 10, warmup=warmup), step)


def adapt_model(
    model: torch.nn.Module,
    frames: np.ndarray,
    *,
    drift: np.ndarray | None = None,
    steps: int = 200,
    lr: float = 1e-4,
    batch: int = 8,
    patch: int = 64,
    holdout: int = 2,
    seed: int = 0,
    device: str | torch.device | None = None,
    block: int = 32,
    z: float = 2.0,
    min_gain: float = 1e-3,
    grad_clip: float | None = 1.0,
    restore_kwargs: dict[str, Any] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> AdaptResult:
    """Fine-tune a copy of ``model`` on the movie itself (Noise2Noise); keep it only if it helped.

    The last ``holdout`` frames are held out; pairs are drawn from the others
    (:func:`noise2noise_pairs`), one fresh batch per step. The loss is the **squared error**
    ``mean(((f(x) - y) / s)^2)`` with ``s`` the standard deviation of the input patch
    (floored at :data:`MIN_SCALE`): Noise2Noise needs a loss whose minimiser is the mean of
    the target (L2), because only the mean of a noisy frame is the signal; the median (L1)
    of Poisson counts at a few counts is not, and the trainer's whitening, Fourier and std
    terms would reward reproducing the target's noise. ``s`` depends on the input only, so
    the weighting does not move the minimiser; it makes the learning rate independent of
    the dose. Adam with the trainer's schedule (warm-up, cosine to ``lr / 10``), gradient
    norm clipped at ``grad_clip``.

    The held-out-frame check (:func:`held_out_scores`) is evaluated before and after, and
    :func:`held_out_decision` decides whether the adapted model is used.

    Parameters
    ----------
    model
        The starting network (not modified).
    frames
        The movie (frame, y, x) in raw units, at least ``holdout + 2`` frames.
    drift
        (frame, 2) drift in pixels; measured with :func:`measure_drift` when None.
    steps, lr, batch, patch
        Optimiser steps (0: only the check), Adam learning rate, pairs per step, patch side.
    holdout
        Frames held out at the end of the movie (at least 2).
    seed
        Seeds the pairs of every step (step ``k`` uses ``default_rng([seed, k])``).
    device
        Where to train (default: the model's device).
    block, z, min_gain
        Block size of the check and the decision's margins (:func:`held_out_decision`).
    restore_kwargs
        Passed to :func:`emfuse.pipeline.restore.inference.restore` for the check (tile, overlap, ...).
    progress
        Called as ``progress(step, loss)`` after every step.

    Returns
    -------
    AdaptResult
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3:
        raise InputError(f"need a movie (frame, y, x), got shape {frames.shape}")
    n_frames = frames.shape[0]
    if holdout < 2 or n_frames < holdout + 2:
        raise InputError(f"adaptation needs at least {max(holdout, 2) + 2} frames of the same region "
                         f"(2 to train on, {max(holdout, 2)} held out for the check), got {n_frames}")
    if steps < 0 or batch < 1 or patch < 8 or patch % 2:
        raise InputError(f"need steps >= 0, batch >= 1 and an even patch >= 8; got {steps}, {batch}, {patch}")
    patch = min(patch, (min(frames.shape[1:]) - 2 * SPLINE_MARGIN - 4) // 2 * 2)
    if patch < 8:
        raise InputError(f"frames of {frames.shape[1]} x {frames.shape[2]} px are too small to adapt on")
    drift = measure_drift(frames) if drift is None else np.asarray(drift, dtype=np.float64)
    train_frames = list(range(n_frames - holdout))
    held = list(range(n_frames - holdout, n_frames))
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    kwargs = {"device": dev, **(restore_kwargs or {})}

    t0 = time.perf_counter()
    before = held_out_scores(model, frames, drift, held, block=block, restore_kwargs=kwargs)
    net = copy.deepcopy(model).to(dev).float().train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    t_train = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _learning_rate(step, steps, lr)
        x, y = noise2noise_pairs(frames, drift, np.random.default_rng([seed, step]), patch, batch,
                                 use=train_frames)
        x, y = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        scale = x.std(dim=(-2, -1), keepdim=True).clamp_min(MIN_SCALE)
        loss = ((net(x) - y) / scale).square().mean()
        if not torch.isfinite(loss):
            raise InputError(f"the adaptation loss is {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, losses[-1])
    train_seconds = time.perf_counter() - t_train
    net.eval()
    after = held_out_scores(net, frames, drift, held, block=block, restore_kwargs=kwargs)
    used, reason, figures = held_out_decision(before, after, z=z, min_gain=min_gain)
    if steps == 0:
        used, reason = False, "no adaptation steps"
    return AdaptResult(
        model=net if used else model, adapted=net, used=used, reason=reason,
        score_before=float(np.median(before)), score_after=float(np.median(after)),
        frames_train=train_frames, frames_holdout=held, drift=drift, steps=steps, lr=lr, batch=batch,
        patch=patch, seconds=time.perf_counter() - t0, seconds_per_step=train_seconds / max(steps, 1),
        losses=losses, figures=figures, items=int(before.size))
