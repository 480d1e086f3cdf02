"""``emfuse fuse --haadf-model fit``: the HAADF model's weights and gamma fitted by the automatic
choice reach the tiles, are stored, and a rerun reuses them (emfuse.flows.jobs.fusion)."""

from __future__ import annotations

import numpy as np
import pytest

from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import run_job
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.fusion import FusionInputError, fuse
from emfuse.stores.zarrio import open_dataset, read_attrs

ELEMENTS = ["Sr", "Ti", "O"]
PARAMS = {"lambda_chem": "auto", "lambda_tv": "auto", "n_iter": 8, "n_iter_tv": 3}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_synthetic("spectrum-image", tmp_path_factory.mktemp("si") / "si.zarr", shape=(64, 64),
                           elements=ELEMENTS, seed=3)


def test_a_fitted_haadf_model_is_stored_used_by_the_tiles_and_kept_on_rerun(tmp_path, source, client):
    out = tmp_path / "fit.zarr"
    job = run_job("fuse", source, out, client, progress=False, elements=ELEMENTS, params=PARAMS, tile=32,
                  halo=8, haadf_model="fit")
    attrs = read_attrs(out)
    params, fit = attrs["params"], attrs["lambda_choice"]["haadf_fit"]
    assert params["haadf_model"] == "fit" and attrs["lambda_choice"]["settings"]["haadf_weights"] == "fit"
    assert params["haadf_weights"] == pytest.approx(fit["weights"]) and params["gamma"] == fit["gamma"]
    assert len(params["haadf_weights"]) == 3 and params["gamma"] in (1.0, 1.3, 1.6)
    assert job.params.haadf_weights == tuple(params["haadf_weights"])
    # the tiles fused with those weights: the untiled solver with the stored parameters agrees
    ds = open_dataset(out)
    norm = fusion_job.normalise(job)
    whole = fuse(ds.haadf.values, ds.maps.values, job.z, normalisation=norm, **job.params.to_dict())
    span = float(np.ptp(whole.fused))
    assert np.abs(ds.fused.values - whole.fused).max() < 0.05 * span
    # and not with the Z weights
    z_weights = fuse(ds.haadf.values, ds.maps.values, job.z, normalisation=norm,
                     **{**job.params.to_dict(), "haadf_weights": None})
    assert np.abs(z_weights.fused - whole.fused).max() > 0.05 * span
    # the same command again: complete, nothing refused as "other parameters", the same choice
    again = run_job("fuse", source, out, client, progress=False, elements=ELEMENTS, params=PARAMS, tile=32,
                    halo=8, haadf_model="fit")
    assert again.params == job.params and read_attrs(out)["params"] == params


def test_a_fitted_model_needs_the_automatic_weights_and_a_known_name(tmp_path, source):
    with pytest.raises(FusionInputError, match=r"haadf_model \'fit\' \(--haadf-model fit\) is fitted by the automatic choice"):
        fusion_job.plan(source, tmp_path / "a.zarr", elements=ELEMENTS, haadf_model="fit",
                        params={"lambda_chem": 0.1, "lambda_tv": 0.1})
    with pytest.raises(FusionInputError, match="unknown haadf_model 'zz'"):
        fusion_job.plan(source, tmp_path / "b.zarr", elements=ELEMENTS, haadf_model="zz", params=PARAMS)


def test_the_command_prints_the_weights_chosen_per_element(tmp_path, source, capsys):
    from emfuse.flows.cli import main

    assert main(["fuse", str(source), "--out", str(tmp_path / "f.zarr"), "--haadf-model", "fit", "--cluster",
                 "local-threads", "--no-report", "--n-iter", "8", "--n-iter-tv", "3", "--tile", "64"]) == 0
    params = read_attrs(tmp_path / "f.zarr")["params"]
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("lambdas:"))
    assert isinstance(params["lambda_chem"], list)  # the weakest element's own weights: one per element
    chem = ", ".join(f"{e} {v:.4g}" for e, v in zip(ELEMENTS, params["lambda_chem"]))
    assert f"chem ({chem})" in line
