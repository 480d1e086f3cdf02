"""Tests of the fusion report (flows/report/) on small hand-made output stores."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask_helpers import LargestResult
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from emfuse.flows.report import coarsen_factor, default_report_dir, write_report
from emfuse.flows.report.common import (
    COLOUR_STRIP_GID,
    SCALE_BAR_GID,
    loaded_if_small,
    new_figure,
    show_image,
)
from emfuse.flows.report.fusion import convergence_figure, haadf_figure, maps_figure

ELEMENTS = ["Sc", "Dy", "O"]
Z = [21, 66, 8]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _phantom(n: int, k: int) -> np.ndarray:
    """A smooth, element-dependent concentration pattern in [0, 1]."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    return 0.5 + 0.5 * np.sin(2 * np.pi * (k + 1) * xx) * np.cos(2 * np.pi * (k + 2) * yy)


def make_output_store(path, n=64, truth=False, lambda_score=False, units="nm", chunks=None,
                      iterations=30, stopped_at=None):
    """An output store laid out like the fusion job writes it."""
    rng = np.random.default_rng(0)
    truth_maps = np.stack([_phantom(n, k) for k in range(len(ELEMENTS))]).astype("float32")
    counts = rng.poisson(5 * truth_maps).astype("float32")
    clean = (truth_maps * np.array(Z)[:, None, None] ** 1.7).sum(0)
    haadf = clean + rng.normal(0, 0.02 * clean.max(), clean.shape)
    it = np.arange(iterations)
    cost = np.stack([1e4 * np.exp(-it / 5) + 10, 500 - 30 * np.log1p(it), 50 / (1 + it)])
    if stopped_at is not None:
        cost[:, stopped_at:] = np.nan  # an early-stopped solver leaves NaN behind
    coords = {
        "element": ("element", ELEMENTS),
        "z": ("element", Z),
        "y": ("y", np.arange(n) * 0.25, {"units": units}),
        "x": ("x", np.arange(n) * 0.25, {"units": units}),
        "term": ("term", ["haadf", "chem", "tv"]),
        "iteration": ("iteration", it),
    }
    data = {
        "maps": (("element", "y", "x"), counts),
        "haadf": (("y", "x"), haadf.astype("float32")),
        "fused": (("element", "y", "x"), 0.95 * truth_maps),
        "haadf_model": (("y", "x"), (clean / clean.max()).astype("float32")),
        "cost": (("term", "iteration"), cost),
    }
    if truth:
        data["true_maps"] = (("element", "y", "x"), truth_maps)
    if lambda_score:
        chem, tv = np.logspace(-3, 1, 5), np.logspace(-4, 0, 5)
        score = np.add.outer((np.log10(chem) + 1) ** 2, (np.log10(tv) + 2) ** 2)
        data["lambda_score"] = (("lambda_chem", "lambda_tv"), score)
        coords["lambda_chem"] = chem
        coords["lambda_tv"] = tv
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(params={"lambda_chem": 0.1, "lambda_tv": 0.01, "gamma": 1.6}, complete=True)
    if chunks:
        ds = ds.chunk({"y": chunks, "x": chunks})
    ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w")
    return path


def _check_png(path, min_side=200, max_side=4000):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min_side <= image.shape[0] <= max_side and min_side <= image.shape[1] <= max_side
    return image


def test_report_without_truth(tmp_path):
    store = make_output_store(tmp_path / "out.zarr")
    paths = write_report(store)
    assert [p.name for p in paths] == ["maps.png", "haadf.png", "convergence.png", "summary.json"]
    assert all(p.parent == tmp_path / "out.report" for p in paths)
    for png in paths[:-1]:
        _check_png(png)
    maps = _check_png(paths[0])
    assert maps.shape[0] > maps.shape[1]  # three rows of two panels: taller than wide

    summary = json.loads(paths[-1].read_text())
    assert summary["elements"] == ELEMENTS
    assert summary["z"] == Z
    assert summary["shapes"]["maps"] == [3, 64, 64]
    assert summary["shapes"]["cost"] == [3, 30]
    assert summary["params"] == {"lambda_chem": 0.1, "lambda_tv": 0.01, "gamma": 1.6}
    assert summary["units"] == {"y": "nm", "x": "nm"}
    assert summary["has_truth"] is False and summary["complete"] is True
    assert summary["iterations"] == 30 and summary["display_factor"] == 1
    assert summary["final_costs"]["haadf"] == pytest.approx(1e4 * np.exp(-29 / 5) + 10)
    assert summary["final_costs"]["tv"] == pytest.approx(50 / 30)
    assert "lambda_search" not in summary
    assert summary["figures"] == ["maps.png", "haadf.png", "convergence.png"]


def test_report_with_truth_and_lambda(tmp_path):
    store = make_output_store(tmp_path / "syn.zarr", truth=True, lambda_score=True, units="px",
                              stopped_at=20)
    report_dir = tmp_path / "figs"
    paths = write_report(store, report_dir)
    names = [p.name for p in paths]
    assert names == ["maps.png", "haadf.png", "convergence.png", "lambda_search.png",
                     "summary.json"]
    assert all(p.parent == report_dir for p in paths)
    images = {p.name: _check_png(p) for p in paths[:-1]}
    # three columns (raw | fused | truth) for three elements: wider than tall
    assert images["maps.png"].shape[1] > images["maps.png"].shape[0]

    summary = json.loads(paths[-1].read_text())
    assert summary["has_truth"] is True
    assert summary["units"] == {"y": "px", "x": "px"}
    assert summary["shapes"]["true_maps"] == [3, 64, 64]
    # the NaN tail of an early-stopped run is not the final value
    assert summary["final_costs"]["tv"] == pytest.approx(50 / 20)
    best = summary["lambda_search"]["best"]
    assert best["lambda_chem"] == pytest.approx(0.1) and best["lambda_tv"] == pytest.approx(0.01)


def test_a_small_store_read_whole_draws_the_same_report_as_lazily(tmp_path, monkeypatch):
    # the report reads a small store in one pass (report.common.loaded_if_small); the figures and
    # the summary must be those the chunk-by-chunk path draws
    store = make_output_store(tmp_path / "syn.zarr", truth=True, lambda_score=True, chunks=16)
    whole = write_report(store, tmp_path / "whole")
    monkeypatch.setattr("emfuse.flows.report.common.SMALL_STORE_BYTES", 0)  # every store lazy
    opened = xr.open_zarr(store, zarr_format=3, consolidated=False)
    assert isinstance(loaded_if_small(opened)["fused"].data, da.Array)  # the patch holds
    lazy = write_report(store, tmp_path / "lazy")
    assert [p.name for p in whole] == [p.name for p in lazy]
    for a, b in zip(whole, lazy):
        assert a.read_bytes() == b.read_bytes() or a.name == "summary.json", a.name
    drop = ("store",)  # the summary names the store it was written from: the same here
    assert {k: v for k, v in json.loads(whole[-1].read_text()).items() if k not in drop} == \
        {k: v for k, v in json.loads(lazy[-1].read_text()).items() if k not in drop}


def test_lambda_line_higher_is_better(tmp_path):
    ds = xr.open_zarr(make_output_store(tmp_path / "a.zarr"), zarr_format=3, consolidated=False)
    chem = np.logspace(-2, 2, 5)
    score = xr.DataArray([0.1, 0.5, 0.9, 0.4, 0.2], coords={"lambda_chem": chem},
                         dims="lambda_chem", attrs={"better": "higher"})
    ds = ds.drop_vars(["maps", "haadf", "haadf_model", "fused"]).assign(lambda_score=score)
    ds.to_zarr(tmp_path / "b.zarr", zarr_format=3, consolidated=False)
    paths = write_report(tmp_path / "b.zarr", dpi=80)
    assert [p.name for p in paths] == ["convergence.png", "lambda_search.png", "summary.json"]
    summary = json.loads(paths[-1].read_text())
    assert summary["lambda_search"]["best"] == {"lambda_chem": pytest.approx(1.0)}
    assert summary["elements"] == []


def test_missing_store_and_wrong_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope.zarr")
    xr.Dataset({"movie": (("frame", "y", "x"), np.zeros((2, 4, 4)))}).to_zarr(
        tmp_path / "movie.zarr", zarr_format=3, consolidated=False
    )
    with pytest.raises(ValueError, match="is an input store"):
        write_report(tmp_path / "movie.zarr")
    assert not (tmp_path / "movie.report").exists()  # refused before its folder was made
    xr.Dataset({"movie": (("frame", "y", "x"), np.zeros((2, 4, 4)))}, attrs={"params": {}}).to_zarr(
        tmp_path / "other.zarr", zarr_format=3, consolidated=False
    )
    with pytest.raises(ValueError, match="fusion output store"):
        write_report(tmp_path / "other.zarr")


def test_an_ingested_instrument_file_is_named_an_input_store(formats, tmp_path):
    from emfuse.stores.ingest import ingest

    store = ingest(formats / "test_TEM.bcf", tmp_path / "tem.zarr")  # holds a HAADF and a spectrum image
    with pytest.raises(ValueError, match=r"is an input store \(what ingest writes\), not the output of a job.*"
                                         r"emfuse fuse .*tem\.zarr --out OUT\.zarr"):
        write_report(store)
    assert not (tmp_path / "tem.report").exists()


def test_default_report_dir():
    assert default_report_dir("a/out.zarr").as_posix() == "a/out.report"
    assert default_report_dir("a/out.zarr/").as_posix() == "a/out.report"
    assert default_report_dir("out").as_posix() == "out.report"


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("rows, cols, figures", [
    (slice(None), slice(None), (maps_figure, convergence_figure)),
    (slice(0, 12), slice(None), (haadf_figure,)), (slice(None), slice(0, 12), (haadf_figure,)),
], ids=["square", "wide", "tall"])
def test_panels_are_laid_out_without_overlap(tmp_path, rows, cols, figures):
    """The figures are placed by hand (no constrained layout): every panel with its ticks, labels,
    title and colourbar stays inside the figure and clear of the others and of the headline, and
    each colourbar sits just right of its image as drawn, about as tall."""
    ds = xr.open_zarr(make_output_store(tmp_path / "o.zarr", n=48, truth=True), zarr_format=3,
                      consolidated=False).isel(y=rows, x=cols)
    for fig in (make(ds, 1) for make in figures):
        renderer = _drawn(fig)
        page = fig.bbox.padded(1)  # antialiasing may reach half a pixel past the edge
        panels = [ax.get_tightbbox(renderer) for ax in fig.axes]  # the colourbars included
        headline = fig.get_suptitle() and fig._suptitle.get_window_extent(renderer)
        for i, box in enumerate(panels):
            assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1)
            assert not _overlap(box, headline)
            assert not any(_overlap(box, other) for other in panels[i + 1:])
        for ax in fig.axes:
            if ax.images:
                (strip,) = [im for im in ax.images if im.get_gid() == COLOUR_STRIP_GID]
                image, cbar = ax.get_window_extent(renderer), strip.get_window_extent(renderer)
                assert 0 < cbar.x0 - image.x1 < 0.2 * fig.dpi  # beside the image: under 0.2 in away
                assert cbar.height >= 0.8 * min(image.height, ax.get_position(original=True).height
                                                * fig.bbox.height)
                assert abs((cbar.y0 + cbar.y1) - (image.y0 + image.y1)) < 2  # centred on it


@pytest.mark.parametrize("units, n, label", [("nm", 48, "2 nm"), ("px", 64, "10 px")])
def test_images_carry_a_scale_bar_instead_of_axes(tmp_path, units, n, label):
    """Every image panel is drawn without axes, with a bar of a round length (at most a quarter of
    the width) labelled in the coordinates' units, as long on the page as it says."""
    ds = xr.open_zarr(make_output_store(tmp_path / "o.zarr", n=n, units=units), zarr_format=3, consolidated=False)
    if units == "px":
        ds = ds.assign_coords(y=np.arange(n), x=np.arange(n))  # a step of 1 px: n px wide
    fig = maps_figure(ds, 1)
    renderer = _drawn(fig)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * len(ELEMENTS)
    for ax in panels:
        assert not ax.axison
        (text,) = [t for t in ax.texts if t.get_gid() == SCALE_BAR_GID]
        (bar,) = [p for p in ax.patches if p.get_gid() == SCALE_BAR_GID]
        assert text.get_text() == label
        length = float(label.split()[0])
        image = ax.get_window_extent(renderer)  # equal aspect: the axes box is the image
        width = ds.x.values[-1] - ds.x.values[0] + (ds.x.values[1] - ds.x.values[0])
        drawn = bar.get_window_extent(renderer)
        assert drawn.width == pytest.approx(image.width * length / width, abs=1.5)
        assert image.contains(drawn.x0, drawn.y0) and image.contains(drawn.x1, drawn.y1)


def test_colour_strips_show_each_images_limits_with_ticks_at_their_values(tmp_path):
    """The colour scale beside each image spans the image's colour limits, bottom to top, and each
    tick label sits at its value's height on the strip (the scale is drawn by hand, not by a
    matplotlib colourbar)."""
    ds = xr.open_zarr(make_output_store(tmp_path / "o.zarr", n=48, truth=True), zarr_format=3,
                      consolidated=False)
    fig = maps_figure(ds, 1)
    renderer = _drawn(fig)
    units = set()
    for ax in (ax for ax in fig.axes if ax.images):
        image, (strip,) = ax.images[0], [im for im in ax.images if im.get_gid() == COLOUR_STRIP_GID]
        data = np.asarray(strip.get_array())
        assert strip.norm is image.norm and strip.get_cmap().name == image.get_cmap().name
        assert data[0, 0] == pytest.approx(image.norm.vmin) and data[-1, 0] == pytest.approx(image.norm.vmax)
        box = strip.get_window_extent(renderer)
        texts = [t for t in ax.texts if t.get_gid() == COLOUR_STRIP_GID]
        ticks, (label,) = texts[:-1], texts[-1:]
        units.add(label.get_text())
        assert label.get_rotation() == 90 and label.get_window_extent(renderer).x0 > box.x1
        assert len(ticks) >= 3
        for tick in ticks:
            value = float(tick.get_text())
            assert image.norm.vmin - 1e-9 <= value <= image.norm.vmax + 1e-9
            drawn = tick.get_window_extent(renderer)
            expected = box.y0 + box.height * (value - image.norm.vmin) / (image.norm.vmax - image.norm.vmin)
            assert (drawn.y0 + drawn.y1) / 2 == pytest.approx(expected, abs=1.5)
            assert drawn.x0 > box.x1  # right of the strip
    assert units == {"counts", "normalised", "concentration"}


def test_raw_maps_are_labelled_with_the_stores_units(tmp_path):
    """Maps that are not counts (vendor maps scaled to [0, 1], units ``a.u.`` in the store) are not
    labelled "counts" on the report."""
    import zarr

    path = make_output_store(tmp_path / "o.zarr", n=32)
    zarr.open_array(str(path / "maps"), mode="r+", zarr_format=3).attrs["units"] = "a.u."
    ds = xr.open_zarr(path, zarr_format=3, consolidated=False)
    fig = maps_figure(ds, 1)
    labels = {ax.get_title().split(": ")[-1]: [t.get_text() for t in ax.texts if t.get_gid() == COLOUR_STRIP_GID][-1]
              for ax in fig.axes if ax.images}
    assert labels == {"raw map": "a.u.", "fused map": "normalised"}


def test_a_second_headline_line_gets_its_room(tmp_path):
    ds = xr.open_zarr(make_output_store(tmp_path / "o.zarr"), zarr_format=3, consolidated=False)
    fig, axes = new_figure(ds, 2, 1, "Title", 1, note="and a note")
    for ax in axes.ravel():
        show_image(fig, ax, ds.haadf, ds.haadf.values, "panel", "counts")
    renderer = _drawn(fig)
    headline = fig._suptitle.get_window_extent(renderer)
    assert fig.get_suptitle() == "Title\nand a note"
    assert not any(_overlap(ax.get_tightbbox(renderer), headline) for ax in fig.axes)


@pytest.mark.parametrize(
    "shape, factor",
    [((64, 64), 1), ((1024, 1024), 1), ((1025, 10), 2), ((3000, 3000), 3), ((8192, 8192), 8),
     ((8192, 100), 8)],
)
def test_coarsen_factor(shape, factor):
    assert coarsen_factor(shape) == factor
    assert max(shape) / factor <= 1024


@pytest.mark.slow  # kept out of the default suite's 10 minutes; make test-all runs it
def test_large_store_is_downsampled(tmp_path):
    n = 3000
    store = tmp_path / "big.zarr"
    # one element keeps the write quick; the lazy, chunked layout is what matters
    # a lazy separable pattern: no full-size array is built here either
    v = da.from_array(np.sin(np.linspace(0, 20, n, dtype="float32")), chunks=500)
    img = (1.5 + v[:, None] * v[None, :]).astype("float32")
    coords = {"element": ["Fe"], "z": ("element", [26]), "y": np.arange(n), "x": np.arange(n)}
    xr.Dataset(
        {
            "maps": (("element", "y", "x"), img[None]),
            "fused": (("element", "y", "x"), img[None]),
            "haadf": (("y", "x"), img),
            "haadf_model": (("y", "x"), img * 0.5),
            "cost": (("term", "iteration"), np.ones((3, 4))),
        },
        coords={**coords, "term": ["haadf", "chem", "tv"], "iteration": np.arange(4)},
    ).to_zarr(store, zarr_format=3, consolidated=False)

    with LargestResult() as probe:
        paths = write_report(store, dpi=80)  # low dpi: only the binning is under test
    full_image = n * n * 4
    assert 0 < probe.largest < full_image / 4  # chunks and binned images, never a whole map
    summary = json.loads(paths[-1].read_text())
    assert summary["display_factor"] == 3
    assert summary["shapes"]["haadf"] == [n, n]
    for png in paths[:-1]:
        _check_png(png)
