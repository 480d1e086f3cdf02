"""The Prefect fusion flow under the test harness, on a real LocalCluster of processes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from emfuse.stores.zarrio import is_complete, open_dataset, write_dataset

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "two-workers.yaml"
    path.write_text("profile: local\nn_workers: 2\nthreads_per_worker: 1\nmemory_limit: 2GiB\n")
    return path


def test_fuse_flow_on_a_store(prefect_harness, tmp_path, dysco3, cluster_file):
    from emfuse.flows.jobs.flows import fuse_flow

    ds = xr.Dataset(
        {"haadf": (("y", "x"), dysco3["haadf"][:128, :96]),
         "maps": (("element", "y", "x"), dysco3["maps"][:, :128, :96])},
        coords={"y": np.arange(128.0), "x": np.arange(96.0), "element": dysco3["elements"],
                "z": ("element", dysco3["z"])},
    )
    store = write_dataset(ds, tmp_path / "in.zarr")
    params = {**dysco3["params"], "n_iter": 10}
    out = tmp_path / "out.zarr"
    result = fuse_flow(str(store), str(out), params=params, cluster=str(cluster_file), tile=64, halo=16,
                       progress=False)
    assert is_complete(out)
    assert result["tiles_computed"] == 4
    assert {p.rsplit("/", 1)[-1] for p in result["figures"]} >= {"maps.png", "haadf.png", "convergence.png"}
    fused = open_dataset(out).fused
    assert fused.shape == (3, 128, 96) and np.isfinite(fused.values).all()
    # a second run of the same command finds the store complete and computes nothing
    again = fuse_flow(str(store), str(out), params=params, cluster=str(cluster_file), tile=64, halo=16,
                      progress=False, report=False)
    assert again["tiles_computed"] == 0
