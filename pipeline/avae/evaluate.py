"""The AVAE evaluation protocol: regions -> preprocessed pairs -> 70/15/15 split -> scores per method.

Used by ``benchmarks/avae_eval.py`` and the tests; arrays in, numbers out.

Examples
--------
>>> train, val, test = split_indices(20, seed=0)
>>> len(train), len(val), len(test), len(set(train) | set(val) | set(test))
(14, 3, 3, 20)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emfuse.errors import InputError

from ..synth.tem_modes import ModeImages
from . import baselines
from .fuse import fuse_modes
from .model import AVAE
from .preprocess import HRTEM, Preprocessing, flat_surface
from .train import standardise

if TYPE_CHECKING:
    import torch

__all__ = ["SINGLE_MODES", "Prepared", "method_images", "never_worse", "paired_margin", "prepare_regions", "score_methods",
           "split_indices"]

METHODS = ("avae", "hrtem", "average", "weighted", "vae")
#: The single modes, as preprocessed, that :func:`method_images` scores besides ``hrtem``
#: (the candidates of :func:`never_worse` with it and a restored HRTEM).
SINGLE_MODES = ("bf", "df")


@dataclass
class Prepared:
    """Simulated regions made ready for training and scoring."""

    inputs: np.ndarray  # (N, modes, H, W) preprocessed, float32 in [0, 1]
    targets: np.ndarray  # (N, H, W) standardised truth
    truths: np.ndarray  # (N, H, W) truth as simulated
    materials: list[str]
    registration_error: np.ndarray  # (N, modes) |estimated - true drift|, px
    drift: np.ndarray  # (N, modes, 2) true drift, px
    hrtem: np.ndarray | None = None  # (N, H, W) the HRTEM as recorded, flat-fielded only


def prepare_regions(regions: Sequence[ModeImages], *, flat_reference: bool | Sequence[bool] = False,
                    linear: Sequence[int] = ()) -> Prepared:
    """Preprocess every region on its own (flat field, equalisation, registration, denoising).

    ``flat_reference``: divide each mode by its recorded illumination (a vacuum reference) instead
    of fitting the illumination as a smooth surface, which also takes away the smooth part of the
    specimen's own contrast (BF's thickness wedge). One flag for all regions, or one per region
    (a training set with and without references). ``linear``: the modes stretched linearly instead
    of equalised (:class:`~.preprocess.Preprocessing`).
    """
    flags = [bool(flat_reference)] * len(regions) if isinstance(flat_reference, bool) else list(flat_reference)
    if len(flags) != len(regions):
        raise InputError(f"flat_reference has {len(flags)} flags for {len(regions)} regions")
    inputs, errors, hrtem = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # failed matches are counted in the errors
        for r, flat in zip(regions, flags):
            modes = r.modes / r.illumination if flat else r.modes
            prep = Preprocessing.fit(modes, order=0 if flat else 2, linear=linear)
            inputs.append(prep.apply(modes))
            errors.append(np.linalg.norm(prep.drift - r.drift, axis=1))
            # the HRTEM is the registration's reference: flat-fielded, it is in the truth's frame
            hrtem.append(modes[HRTEM] / flat_surface(prep.flat[HRTEM], prep.shape))
    truths = np.stack([r.truth for r in regions]).astype(np.float32)
    return Prepared(np.stack(inputs), np.stack([standardise(t) for t in truths]), truths,
                    [r.material for r in regions], np.array(errors), np.stack([r.drift for r in regions]),
                    np.stack(hrtem).astype(np.float32))


def split_indices(n: int, seed: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random split of ``n`` regions into train, validation and test (70/15/15)."""
    if n < 3:
        raise InputError(f"need at least 3 regions to split, got {n}")
    order = np.random.default_rng([seed, 70_15_15]).permutation(n)
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_val - n_test
    return np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val]), np.sort(order[n_train + n_val:])


def method_images(inputs: np.ndarray, models: Mapping[str, AVAE], mode_weights: np.ndarray,
                  hrtem_index: int = 2, *, hrtem: np.ndarray | None = None,
                  restorations: Mapping[str, torch.nn.Module] | None = None,
                  bases: np.ndarray | None = None,
                  restored: Mapping[str, Sequence[np.ndarray]] | None = None) -> dict[str, list[np.ndarray]]:
    """Every method's image of every region: the networks in ``models``, then the baselines.

    A network with one input mode (``AVAEConfig(n_modes=1)``) is given the HRTEM alone, a residual
    network (``cfg.base``) its region's base from ``bases`` (N, H, W; :mod:`.base`). The single
    modes ``hrtem``, ``bf`` and ``df`` (preprocessed) are methods too. With ``hrtem`` (the recorded
    HRTEM of each region, :attr:`Prepared.hrtem`) also ``hrtem_wiener``, and for each restoration
    network ``{"NAME": net}`` in ``restorations`` ``hrtem_NAME`` (the HRTEM restored by it; see
    :mod:`.baselines`), unless ``restored`` already holds its images under ``NAME``.
    """
    def own_modes(net: AVAE, x: np.ndarray) -> np.ndarray:
        return x if net.cfg.n_modes == len(x) else x[hrtem_index:hrtem_index + 1]

    def fused(net: AVAE) -> list[np.ndarray]:
        if net.cfg.has_base and bases is None:
            raise InputError(f"a network with the base {net.cfg.base!r} needs the regions' bases")
        return [fuse_modes(net, own_modes(net, x), base=bases[i] if net.cfg.has_base else None)[0]
                for i, x in enumerate(inputs)]

    images: dict[str, list[np.ndarray]] = {name: fused(net) for name, net in models.items()}
    images["hrtem"] = [x[hrtem_index] for x in inputs]
    for i, mode in enumerate(SINGLE_MODES):
        images[mode] = [x[i] for x in inputs]
    images["average"] = [baselines.average(x) for x in inputs]
    images["weighted"] = [baselines.weighted(x, mode_weights) for x in inputs]
    if hrtem is not None:
        images["hrtem_wiener"] = [baselines.wiener_filter(h) for h in hrtem]
        from ..restore.inference import restore

        done = restored or {}
        for name, net in (restorations or {}).items():
            images[f"hrtem_{name}"] = list(done[name]) if name in done else [restore(h, net) for h in hrtem]
    return images


def paired_margin(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Margin of method ``a`` over ``b`` (scores of :func:`score_methods` on the same regions):
    per metric, the mean per-region difference and its standard error.

    Examples
    --------
    >>> a = {"psnr_per_region": [21.0, 22.0, 23.0], "ssim_per_region": [0.5, 0.6, 0.7]}
    >>> b = {"psnr_per_region": [20.0, 21.5, 22.0], "ssim_per_region": [0.5, 0.5, 0.6]}
    >>> m = paired_margin(a, b)
    >>> round(m["psnr"]["margin"], 3), round(m["ssim"]["standard_error"], 4)
    (0.833, 0.0333)
    """
    out = {}
    for k in ("psnr", "ssim"):
        d = np.asarray(a[f"{k}_per_region"]) - np.asarray(b[f"{k}_per_region"])
        out[k] = {"margin": float(d.mean()), "standard_error": float(d.std(ddof=1) / np.sqrt(len(d)))}
    return out


def score_methods(images: Mapping[str, Sequence[np.ndarray]], truths: Sequence[np.ndarray],
                  materials: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean (and standard deviation, and per material) PSNR and SSIM after the affine calibration."""
    out: dict[str, dict[str, Any]] = {}
    for name, imgs in images.items():
        s = [baselines.score(im, t) for im, t in zip(imgs, truths)]
        psnr, ssim = np.array([v["psnr"] for v in s]), np.array([v["ssim"] for v in s])
        by_material = {m: {"psnr": float(psnr[np.array(materials) == m].mean()),
                           "ssim": float(ssim[np.array(materials) == m].mean())}
                       for m in sorted(set(materials))}
        out[name] = {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
                     "psnr_std": float(psnr.std()), "ssim_std": float(ssim.std()),
                     "psnr_per_region": psnr.round(4).tolist(), "ssim_per_region": ssim.round(5).tolist(),
                     "by_material": by_material}
    return out


def never_worse(methods: Mapping[str, Mapping[str, Any]], fused: str, singles: Sequence[str],
                materials: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Is ``fused`` at least as good as the best of ``singles`` on every region? Per family and ``all``.

    ``methods`` are scores of :func:`score_methods` on the same regions; per metric (PSNR, SSIM)
    the fraction of regions where ``fused`` is at least the best single method of that region, the
    mean and the worst (most negative) per-region margin over it, and how often each single method
    was the best.

    Examples
    --------
    >>> m = {"f": {"psnr_per_region": [21.0, 20.0], "ssim_per_region": [0.6, 0.5]},
    ...      "a": {"psnr_per_region": [20.0, 20.5], "ssim_per_region": [0.5, 0.4]},
    ...      "b": {"psnr_per_region": [19.0, 21.0], "ssim_per_region": [0.55, 0.45]}}
    >>> r = never_worse(m, "f", ["a", "b"], ["x", "x"])["all"]["psnr"]
    >>> r["fraction"], r["worst_deficit"], r["best_single"]
    (0.5, -1.0, {'a': 1, 'b': 1})
    """
    families = np.asarray(materials)
    out: dict[str, dict[str, Any]] = {}
    for family in ["all", *sorted(set(materials))]:
        keep = np.ones(len(families), bool) if family == "all" else families == family
        row = {"regions": int(keep.sum())}
        for k in ("psnr", "ssim"):
            f = np.asarray(methods[fused][f"{k}_per_region"])[keep]
            single = np.stack([np.asarray(methods[s][f"{k}_per_region"])[keep] for s in singles])
            d = f - single.max(axis=0)
            winners = np.asarray(singles)[single.argmax(axis=0)]
            row[k] = {"fraction": float(np.mean(d >= 0)), "mean_margin": float(d.mean()),
                      "worst_deficit": float(d.min()),
                      "best_single": {s: int(np.sum(winners == s)) for s in singles}}
        out[family] = row
    return out
