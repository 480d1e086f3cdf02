"""Tiled fusion (emfuse.pipeline.fusion.tiled) against untiled fusion, lazily and exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from emfuse.pipeline.fusion import fuse, fuse_dataset, sum_tile_costs


def _dataset(data: dict, ny: int, nx: int) -> xr.Dataset:
    return xr.Dataset(
        {"haadf": (("y", "x"), data["haadf"][:ny, :nx]), "maps": (("element", "y", "x"), data["maps"][:, :ny, :nx])},
        coords={"y": np.arange(ny) * 0.1, "x": np.arange(nx) * 0.1, "element": data["elements"],
                "z": ("element", data["z"])},
    )


# Measured on DyScO3 with the published parameters (30 iterations, 3 TV iterations, GP TV step):
# max |tiled - untiled| is 1.9e-3 with a halo of 8 px, 4.7e-6 with 16 px and 0 with 32 px
# (fused values up to 0.54). The default halo is 32.
@pytest.mark.parametrize("halo, atol", [(16, 1e-4), (32, 1e-6)])
def test_tiled_equals_untiled(dysco3, halo, atol):
    ds = _dataset(dysco3, 256, 200).chunk({"y": 100, "x": 100})  # non-square, uneven tiles
    out = fuse_dataset(ds, tile=100, halo=halo, **dysco3["params"])
    assert isinstance(out.fused.data, da.Array)  # lazy until asked
    assert out.fused.data.chunks[1] == (100, 100, 56)
    computed = out.compute(scheduler="threads")
    whole = fuse(ds.haadf.values, ds.maps.values, dysco3["z"], **dysco3["params"])
    np.testing.assert_allclose(computed.fused.values, whole.fused, atol=atol)
    np.testing.assert_allclose(computed.haadf_model.values, whole.haadf_model, atol=10 * atol)
    assert list(computed.element.values) == dysco3["elements"]
    assert computed.cost.shape == (3, dysco3["params"]["n_iter"])


def test_fuse_dataset_builds_no_data_until_computed(dysco3):
    calls = []

    def counting(block):
        if block.size:  # dask may call once on an empty block to learn the output type
            calls.append(1)
        return block

    ds = _dataset(dysco3, 64, 64).chunk({"y": 32, "x": 32})
    ds["maps"] = ds.maps.copy(data=ds.maps.data.map_blocks(counting, dtype=ds.maps.dtype))
    out = fuse_dataset(ds, tile=32, halo=8, n_iter=3)
    assert calls == []
    with dask.config.set(scheduler="synchronous"):
        out.fused.compute()
    assert calls


def test_sum_tile_costs_carries_the_last_value_forward():
    a = np.array([[3.0, 2.0, 1.0]] * 3)
    b = np.array([[5.0]] * 3)  # a tile that stopped after one iteration
    total = sum_tile_costs([a, b], 3)
    np.testing.assert_array_equal(total[0], [8.0, 7.0, 6.0])


def test_tiled_fusion_loads_at_first_use():
    """``emfuse.pipeline.fusion`` stays light (no dask, xarray) until a tiled name is asked for."""
    code = ("import sys, emfuse.pipeline.fusion as f; before = 'xarray' in sys.modules; "
            "from emfuse.pipeline.fusion import fuse_dataset; "
            "print(before, 'xarray' in sys.modules, fuse_dataset.__module__, f.fuse_tile is f.tiled.fuse_tile)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "True", "emfuse.pipeline.fusion.tiled", "True"]


def test_a_spectrum_image_store_is_fused_once_its_maps_are_integrated(shared_data, tmp_path):
    """The user guide's recipe on a real file: without maps the error says how to get them; with
    ``input_maps`` (what ``emfuse fuse`` integrates) the lazy tiled fusion equals the untiled one."""
    from emfuse.errors import EmfuseError
    from emfuse.flows.jobs.fusion import input_maps
    from emfuse.flows.jobs.inputs import ingest_file

    store = ingest_file(shared_data / "formats" / "test_TEM.bcf", tmp_path / "tem.zarr")
    si = xr.open_zarr(store, zarr_format=3, consolidated=False)
    with pytest.raises(EmfuseError, match=r"no 'maps'.*spectrum image.*input_maps"):
        fuse_dataset(si)
    ds = si.assign(maps=input_maps(si, ["Cu", "Ti", "O"]))
    params = {"lambda_chem": 0.05, "lambda_tv": 0.05, "n_iter": 5}
    out = fuse_dataset(ds, tile=64, halo=32, **params).compute(scheduler="synchronous")
    whole = fuse(ds.haadf.values, ds.maps.values, [29, 22, 8], warn=False, **params)
    assert list(out.element.values) == ["Cu", "Ti", "O"]
    np.testing.assert_allclose(out.fused.values, whole.fused, atol=1e-4)
