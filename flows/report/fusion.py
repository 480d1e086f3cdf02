"""The fusion figures: ``maps.png``, ``haadf.png``, ``convergence.png``, ``lambda_search.png``."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from emfuse.stores.layout import (
    COST,
    FUSED,
    HAADF,
    HAADF_MODEL,
    MAPS,
    TRUE_MAPS,
)

from .common import (
    DIFF_CMAP,
    HAADF_CMAP,
    MAP_CMAP,
    TITLE_KW,
    comparable,
    compute_all,
    minmax,
    new_figure,
    plain_log_labels,
    plot_figure,
    robust_limits,
    show_image,
    shrink,
)

LAMBDA_SCORE = "lambda_score"  # optional: score of each (lambda_chem, lambda_tv) tried
TERM_TITLES = {
    "haadf": "HAADF fidelity term",
    "chem": "chemical (Poisson) term",
    "tv": "total variation term",
}


def element_names(da: xr.DataArray) -> list[str]:
    return [str(e) for e in da["element"].values] if "element" in da.coords else []


def atomic_numbers(da: xr.DataArray) -> list[int]:
    return [int(z) for z in da["z"].values] if "z" in da.coords else []


def _element_label(ds: xr.Dataset, element: str) -> str:
    for name in (MAPS, FUSED, TRUE_MAPS):
        if name in ds and "z" in ds[name].coords and element in element_names(ds[name]):
            return f"{element} (Z={int(ds[name]['z'].sel(element=element))})"
    return element


def maps_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    columns = [
        (name, title, unit)
        for name, title, unit in (
            # what the raw maps are: counts, or vendor-scaled maps in their own units (the store says)
            (MAPS, "raw map", ds[MAPS].attrs.get("units", "counts") if MAPS in ds else "counts"),
            (FUSED, "fused map", "normalised"),
            (TRUE_MAPS, "ground truth", "concentration"),
        )
        if name in ds
    ]
    if not any(name in (MAPS, FUSED) for name, _, _ in columns):
        return None
    elements = element_names(ds[FUSED] if FUSED in ds else ds[MAPS])
    if not elements:
        return None
    fig, axes = new_figure(ds, len(columns), len(elements), "Elemental maps", factor)
    for row, element in enumerate(elements):
        _map_row(fig, axes[row], ds, element, columns, factor)
    return fig


def _map_row(fig, axes, ds, element, columns, factor) -> None:
    """Raw | fused | truth for one element; fused and truth share a scale when comparable."""
    shown = {}
    lazy = [shrink(ds[name].sel(element=element), factor)
            for name, _, _ in columns if element in element_names(ds[name])]
    computed = iter(compute_all(*lazy))
    for name, _, _ in columns:
        if element in element_names(ds[name]):
            shown[name] = next(computed)
    limits = {name: robust_limits(da.values) for name, da in shown.items()}
    if FUSED in shown and TRUE_MAPS in shown:
        joint = robust_limits(shown[FUSED].values, shown[TRUE_MAPS].values)
        if comparable(limits[FUSED], limits[TRUE_MAPS]):
            limits[FUSED] = limits[TRUE_MAPS] = joint
    label = _element_label(ds, element)
    for ax, (name, title, unit) in zip(axes, columns):
        if name not in shown:
            ax.set_axis_off()
            ax.set_title(f"{label}: no {title}", **TITLE_KW)
            continue
        vmin, vmax = limits[name]
        show_image(fig, ax, shown[name], shown[name].values, f"{label}: {title}", unit,
                   cmap=MAP_CMAP, vmin=vmin, vmax=vmax)


def haadf_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    if HAADF not in ds or HAADF_MODEL not in ds:
        return None
    haadf, model = compute_all(shrink(ds[HAADF], factor), shrink(ds[HAADF_MODEL], factor))
    h, m = minmax(haadf.values.astype(float)), minmax(model.values.astype(float))
    diff = h - m
    rms = float(np.sqrt(np.nanmean(diff**2)))
    bound = max(robust_limits(np.abs(diff), lo=0, hi=99.5)[1], 1e-12)
    fig, axes = new_figure(ds, 3, 1, "HAADF and fused model", factor)
    show_image(fig, axes[0, 0], haadf, h, "HAADF (input)", "min-max normalised",
               cmap=HAADF_CMAP, vmin=0, vmax=1)
    show_image(fig, axes[0, 1], model, m, "model HAADF ($\\Sigma_i\\, w_i x_i^\\gamma$)",
               "min-max normalised", cmap=HAADF_CMAP, vmin=0, vmax=1)
    show_image(fig, axes[0, 2], haadf, diff, f"difference (RMS {rms:.3g})", "input - model",
               cmap=DIFF_CMAP, vmin=-bound, vmax=bound)
    return fig


def _cost_curves(cost: xr.DataArray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Iterations and finite values of each cost term (other dims averaged out)."""
    extra = [d for d in cost.dims if d not in ("term", "iteration")]
    if extra:
        cost = cost.mean(extra)
    cost = cost.compute()
    iterations = (cost["iteration"].values if "iteration" in cost.coords
                  else np.arange(cost.sizes["iteration"]))
    curves = {}
    for term in cost["term"].values:
        values = np.asarray(cost.sel(term=term).values, dtype=float)
        keep = np.isfinite(values)  # unwritten or early-stopped iterations read back as NaN
        curves[str(term)] = (np.asarray(iterations)[keep], values[keep])
    return curves


def final_costs(cost: xr.DataArray) -> dict[str, float | None]:
    return {term: (float(v[-1]) if v.size else None) for term, (_, v) in _cost_curves(cost).items()}


def convergence_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    if COST not in ds:
        return None
    curves = _cost_curves(ds[COST])
    fig, axes = plot_figure(len(curves), (4.2, 2.9), "Convergence of the fusion objective",
                            {"top": 0.3, "bottom": 0.5, "left": 0.8, "right": 0.15})
    for ax, (term, (it, values)) in zip(axes, curves.items()):
        _cost_panel(ax, term, it, values)
    return fig


def _cost_panel(ax, term: str, it: np.ndarray, values: np.ndarray) -> None:
    ax.set_title(TERM_TITLES.get(term, term), **TITLE_KW)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost")
    ax.grid(True, alpha=0.3)
    if values.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot(it, values, color="C0", lw=1.5)
    if np.all(values > 0):
        ax.set_yscale("log")  # costs fall over decades; a log axis shows the tail
        plain_log_labels(ax.yaxis)
    ax.plot(it[-1], values[-1], "o", color="C3", zorder=3)
    ax.annotate(f"final {values[-1]:.4g}", (it[-1], values[-1]), textcoords="offset points",
                xytext=(-6, 8), ha="right", fontsize=8, color="C3")


def _lower_is_better(score: xr.DataArray) -> bool:
    return str(score.attrs.get("better", "lower")).lower() not in ("higher", "max", "maximum")


def lambda_best(score: xr.DataArray) -> dict[str, Any]:
    """Coordinates and value of the best score (lowest unless attrs say ``better: higher``)."""
    values = np.asarray(score.values, dtype=float)
    if not np.isfinite(values).any():
        return {"best": None, "score": None}
    flat = np.nanargmin(values) if _lower_is_better(score) else np.nanargmax(values)
    index = np.unravel_index(flat, values.shape)
    best = {d: score[d].values[i].item() for d, i in zip(score.dims, index)}
    return {"best": best, "score": float(values[index]), "dims": list(score.dims)}


def _is_log_grid(coords: np.ndarray) -> bool:
    """Regularisation weights are usually searched on a log grid spanning decades."""
    coords = np.asarray(coords, dtype=float)
    return bool(coords.size > 1 and np.all(coords > 0) and coords.max() / coords.min() >= 10)


def _cell_edges(coords: np.ndarray) -> np.ndarray:
    """Cell boundaries around grid points: geometric midpoints on a log grid."""
    c = np.asarray(coords, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5]) if c[0] <= 0 else c[0] * np.array([0.5, 2.0])
    t = np.log(c) if _is_log_grid(c) else c
    mid = (t[1:] + t[:-1]) / 2
    edges = np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]])
    return np.exp(edges) if _is_log_grid(c) else edges


def lambda_figure(ds: xr.Dataset, factor: int) -> Figure | None:
    if LAMBDA_SCORE not in ds:
        return None
    score = ds[LAMBDA_SCORE].compute()
    while score.ndim > 2:  # keep the two first dims, best over the rest
        reduce = score.min if _lower_is_better(score) else score.max
        score = reduce(score.dims[-1], keep_attrs=True)
    best = lambda_best(score)
    fig, (ax,) = plot_figure(1, (5.6, 3.9), "Regularisation search",
                             {"top": 0.3, "bottom": 0.55, "left": 0.85, "right": 0.25 if score.ndim == 1 else 0.9})
    if score.ndim == 2:
        _lambda_map(fig, ax, score, best)
    else:
        _lambda_line(ax, score, best)
    return fig


def _lambda_map(fig, ax, score: xr.DataArray, best: dict[str, Any]) -> None:
    ydim, xdim = score.dims
    xs, ys = score[xdim].values, score[ydim].values
    values = np.asarray(score.values, dtype=float)
    if np.isnan(values).any():
        # a coarse-to-fine search tries only some cells of its grid: one marker per candidate
        # (cells would stretch each coarse point over the gaps between refined ones)
        iy, ix = np.nonzero(np.isfinite(values))
        mesh = ax.scatter(xs[ix], ys[iy], c=values[iy, ix], cmap="viridis", s=70, marker="s",
                          edgecolors="0.3", linewidths=0.4)
        ax.grid(True, alpha=0.3)
    else:
        mesh = ax.pcolormesh(_cell_edges(xs), _cell_edges(ys), values, cmap="viridis")
    cax = ax.inset_axes([1.04, 0.0, 0.045, 1.0])
    fig.colorbar(mesh, cax=cax).set_label(score.attrs.get("long_name", "score"))
    if _is_log_grid(xs):
        ax.set_xscale("log")
        plain_log_labels(ax.xaxis)
    if _is_log_grid(ys):
        ax.set_yscale("log")
        plain_log_labels(ax.yaxis)
    ax.set_xlabel(xdim)
    ax.set_ylabel(ydim)
    if best["best"] is not None:
        bx, by = best["best"][xdim], best["best"][ydim]
        ax.plot(bx, by, marker="*", ms=14, color="white", mec="black")
        ax.set_title(f"best: {xdim}={bx:.3g}, {ydim}={by:.3g}", **TITLE_KW)


def _lambda_line(ax, score: xr.DataArray, best: dict[str, Any]) -> None:
    (dim,) = score.dims
    xs = score[dim].values
    ax.plot(xs, score.values, "o-")
    if _is_log_grid(xs):
        ax.set_xscale("log")
        plain_log_labels(ax.xaxis)
    ax.set_xlabel(dim)
    ax.set_ylabel(score.attrs.get("long_name", "score"))
    ax.grid(True, alpha=0.3)
    if best["best"] is not None:
        ax.plot(best["best"][dim], best["score"], "*", ms=14, color="C3")
        ax.set_title(f"best: {dim}={best['best'][dim]:.3g}", **TITLE_KW)
