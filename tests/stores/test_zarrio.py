"""open_arrays: a job's quick read of a few arrays of its store, against open_dataset's."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from emfuse.stores.errors import StoreError
from emfuse.stores.zarrio import mark_complete, open_arrays, open_dataset, write_dataset


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    haadf = rng.random((40, 30)).astype(np.float32)
    haadf[3, 4] = np.nan  # a NaN reads back as NaN (NaN is also the arrays' fill value)
    ds = xr.Dataset({"haadf": (("y", "x"), haadf),
                     "maps": (("element", "y", "x"), rng.random((2, 40, 30))),
                     "valid": (("y", "x"), haadf > 0.5)},
                    coords={"element": ["Ti", "O"], "y": np.arange(40) * 0.1, "x": np.arange(30) * 0.1})
    path = tmp_path / "s.zarr"
    write_dataset(ds.chunk({"y": 16, "x": 16}), path)
    return path


def test_open_arrays_reads_what_open_dataset_reads(store):
    arrays = open_arrays(store, "haadf", "maps", "valid", "absent")
    assert set(arrays) == {"haadf", "maps", "valid"}  # a name the store lacks is left out
    ds = open_dataset(store)
    for name, array in arrays.items():
        assert array.chunks == ds[name].data.chunks  # chunked as on disk
        np.testing.assert_array_equal(array.compute(), ds[name].values)
        assert array.dtype == ds[name].dtype
    assert np.isnan(arrays["haadf"][3, 4].compute())


def test_open_arrays_refuses_an_incomplete_store_only_when_asked(store):
    mark_complete(store, False)
    assert "haadf" in open_arrays(store, "haadf")  # a job reading its own store while it writes it
    with pytest.raises(StoreError, match="not marked complete"):
        open_arrays(store, "haadf", require_complete=True)
    with pytest.raises(StoreError, match="not marked complete"):
        open_dataset(store)


def test_open_arrays_names_a_path_that_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a readable Zarr v3 store"):
        open_arrays(tmp_path / "nothing.zarr", "haadf")
