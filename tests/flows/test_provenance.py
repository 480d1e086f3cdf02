"""Provenance on every output store, of every job and path: real stores, a real Dask cluster, Prefect.

Each test runs one path end to end and reads the attributes back from the store on disk:
version, creation time, host, the instrument file's path and sha256 (not the intermediate
``.input.zarr``'s), the parameters used, the normalisation (fusion) and per-stage wall times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from provenance_checks import assert_provenance

from emfuse.flows.jobs import fusion as fusion_job
from emfuse.flows.jobs import run_job, runner
from emfuse.flows.jobs.inputs import resolve_store
from emfuse.flows.tools.synth import write_synthetic
from emfuse.pipeline.fusion import auto
from emfuse.stores.ingest import read
from emfuse.stores.zarrio import (
    begin_run,
    open_dataset,
    read_attrs,
    sha256_file,
    timed,
    write_dataset,
)

FIXED = dict(lambda_chem=0.08, lambda_tv=0.15, n_iter=5, n_iter_tv=3, bkg=0.24)
FUSE_STAGES = {"plan", "write_inputs", "normalise", "choose_lambdas", "tiles", "finalise"}


@pytest.fixture(scope="module")
def pto(shared_data, tmp_path_factory):
    """The published DyScO3 file (HAADF + Sc, Dy, O maps scaled to [0, 1]) and its ingested store."""
    raw = shared_data / "fusion" / "PTO_Trilayer_dataset.npz"
    return raw, resolve_store(raw, tmp_path_factory.mktemp("ingest"))


def test_fixed_weights_record_the_instrument_file_not_the_input_store(tmp_path, pto, client):
    raw, store = pto
    assert read_attrs(store)["source_sha256"] == sha256_file(raw)  # the ingest records the raw file
    job = run_job("fuse", store, tmp_path / "out.zarr", client, progress=False, params=FIXED, tile=128, halo=16)
    attrs = assert_provenance(job.out, raw, FUSE_STAGES, input_store=store)
    assert attrs["source_sha256"] != sha256_file(store)
    assert attrs["params"]["lambda_tv"] == 0.15 and attrs["params"]["tile"] == 128
    assert attrs["maps_from"] == {"variable": "maps", "units": "a.u."}
    out = open_dataset(job.out)
    # the user guide's way back to the input's units
    assert out.attrs["normalisation"]["map_offset"][1] == pytest.approx(float(out.maps.sel(element="Dy").min()))
    # [0, 1] vendor maps are not counts; fused maps are normalised
    assert out.maps.attrs["units"] == "a.u." and out.haadf.attrs["units"] == "a.u."
    assert out.fused.attrs["units"] == "normalised"


def test_automatic_weights_on_maps_that_are_not_counts_keep_provenance(tmp_path, pto, client):
    raw, store = pto
    params = {**FIXED, "lambda_chem": "auto", "lambda_tv": "auto"}
    job = run_job("fuse", store, tmp_path / "out.zarr", client, progress=False, params=params, tile=128, halo=16)
    attrs = assert_provenance(job.out, raw, FUSE_STAGES, input_store=store)
    assert attrs["lambda_choice"]["criterion"] == "heldout-recorrupted:maps"  # scaled maps: no count splitting
    assert attrs["params"]["lambda_auto"] == ["lambda_chem", "lambda_tv"]
    assert set(attrs["normalisation"]) == {"haadf_offset", "haadf_scale", "map_offset", "map_scale"}


def test_automatic_weights_keep_every_attribute(tmp_path, client):
    """The search writes lambda_score into the store: that write used to replace the group's attributes."""
    source = write_synthetic("spectrum-image", tmp_path / "si.zarr", shape=(48, 40), elements=["Sr", "Ti", "O"])
    job, state = fusion_job.plan(source, tmp_path / "out.zarr", elements=["Sr", "Ti", "O"], tile=48, halo=8,
                                 params={"n_iter": 5, "n_iter_tv": 2, "lambda_chem": "auto", "lambda_tv": "auto"})
    fusion_job.write_inputs(job)
    norm = fusion_job.normalise(job)
    before = read_attrs(job.out)
    settings = auto.SearchSettings(coarse=2, lattice=16.0, folds=1)
    job = fusion_job.choose_lambdas(job, norm, settings)
    runner.run_units(fusion_job.SPEC, job, norm, client, progress=False)
    runner.finalise(fusion_job.SPEC, job)
    out = open_dataset(job.out)
    assert "lambda_score" in out and out.attrs["lambda_choice"]["criterion"].startswith("heldout")
    for name in ("emfuse_version", "created", "host", "source_path", "source_sha256", "normalisation"):
        assert out.attrs[name] == before[name], name
    assert out.attrs["source_path"] == str(source.resolve())  # a synthetic store is its own source
    # maps integrated from the spectrum: where from, and the windows actually used
    maps_from = out.attrs["maps_from"]
    assert maps_from["variable"] == "spectrum" and maps_from["signal_type"] == "EDX"
    assert maps_from["units"] == "counts" == out.maps.attrs["units"]  # integrated from a counts spectrum
    assert set(maps_from["windows"]) == {"Sr", "Ti", "O"}
    lo, hi = maps_from["windows"]["Ti"]["signal_ev"]
    assert lo < 4510.8 < hi  # Ti Ka
    counts = out.fused * xr.DataArray(out.attrs["normalisation"]["map_scale"], dims="element") \
        + xr.DataArray(out.attrs["normalisation"]["map_offset"], dims="element")
    assert np.isfinite(counts.values).all()


def test_fuse_flow_from_a_raw_file_times_the_ingest(prefect_harness, tmp_path, shared_data):
    from emfuse.flows.jobs.flows import fuse_flow

    raw = shared_data / "fusion" / "PTO_Trilayer_dataset.npz"
    result = fuse_flow(str(raw), str(tmp_path / "pto.fuse.zarr"), params=FIXED, cluster="local-threads",
                       tile=128, halo=16, report=True, progress=False)
    attrs = assert_provenance(result["store"], raw, FUSE_STAGES | {"ingest", "report"},
                              input_store=tmp_path / "PTO_Trilayer_dataset.input.zarr")
    assert attrs["normalisation"]["map_scale"][0] > 0
    summary = (tmp_path / "pto.fuse.report" / "summary.json").read_text()
    assert str(raw.resolve()) in summary and '"normalisation"' in summary


def test_batch_records_the_raw_file_and_its_ingest(prefect_harness, tmp_path, shared_data):
    from emfuse.flows.batch import batch_flow

    raw = shared_data / "fusion" / "PTO_Trilayer_dataset.npz"
    (tmp_path / "night.yaml").write_text(f"""
output: results
cluster: local-threads
datasets:
  - path: {raw}
    name: pto
    jobs: [fuse]
    params: {{tile: 128, halo: 16, n_iter: 5, n_iter_tv: 3, lambda_chem: 0.08, lambda_tv: 0.15}}
""")
    info = batch_flow(str(tmp_path / "night.yaml"), progress=False)
    assert info["n_done"] == 1, info["records"]
    assert_provenance(tmp_path / "results" / "pto.fuse.zarr", raw, FUSE_STAGES | {"ingest"},
                      input_store=tmp_path / "results" / "inputs" / "pto.input.zarr")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from emfuse.pipeline.restore import save_model
    from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig

    torch.manual_seed(0)
    net = CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2))
    return str(save_model(net, tmp_path_factory.mktemp("models") / "tiny.safetensors"))


def test_the_electron_image_of_an_sem_is_not_taken_silently_for_a_haadf(tmp_path, shared_data, client):
    """bcf_v2_50x50px.bcf: an SEM's EDX map with its electron image 'Ch 1' (20 kV): fused, the output
    warns that the image is not known to give Z contrast; the (S)TEM HAADF of test_TEM.bcf does not."""
    for name, elements, expected in (("bcf_v2_50x50px.bcf", ["Al", "Cu", "O"], ["image-not-haadf"]),
                                     ("test_TEM.bcf", ["Cu", "Ti", "O"], [])):
        raw = shared_data / "formats" / name
        store = resolve_store(raw, tmp_path, elements=elements)
        job = run_job("fuse", store, tmp_path / f"{name}.zarr", client, progress=False,
                      params={**FIXED, "n_iter": 5}, tile=128, halo=16)
        warnings = [w for w in read_attrs(job.out)["warnings"] if w["code"] == "image-not-haadf"]
        assert [w["code"] for w in warnings] == expected
        if warnings:
            assert "'Ch 1'" in warnings[0]["message"] and "Z contrast" in warnings[0]["message"]


def test_a_restore_of_a_saturated_haadf_says_so(tmp_path, shared_data, client, tiny_model):
    """test_TEM.bcf's HAADF is 16 % saturated (ingest records haadf-saturated); its restoration
    says so too, in a restore's words (`input-saturated`), not only the fusion does."""
    raw = shared_data / "formats" / "test_TEM.bcf"
    store = resolve_store(raw, tmp_path)
    job = run_job("restore", store, tmp_path / "out.zarr", client, progress=False, model=tiny_model, tile=64, overlap=8)
    [warning] = [w for w in read_attrs(job.out)["warnings"] if w["code"] == "input-saturated"]
    assert warning["fraction"] == pytest.approx(0.164, abs=0.001) and "65535" in warning["message"]
    assert "fusion" not in warning["message"]


def test_restore_of_one_image_of_a_file_with_several_spectrum_images(tmp_path, shared_data, client, tiny_model):
    """`emfuse restore velox.emd --signal 13`: the file's four spectrum images stop a plain ingest
    (which asks for --signal); naming its image 'a' restores that image alone."""
    from emfuse.flows.cli.parser import build_parser

    raw = shared_data / "formats" / "example_velox_EELS_EDS.emd"
    assert build_parser().parse_args(["restore", str(raw), "--out", "o.zarr", "--signal", "13"]).signal == "13"
    store = resolve_store(raw, tmp_path, signal="13")
    assert store.name == "example_velox_EELS_EDS.signal-13.input.zarr"  # another signal keeps its own input
    job = run_job("restore", store, tmp_path / "out.zarr", client, progress=False, model=tiny_model, tile=64, overlap=8)
    attrs = assert_provenance(job.out, raw, {"plan", "restore", "finalise"}, input_store=store)
    restored = zarr.open_array(str(Path(job.out) / "restored"), mode="r", zarr_format=3)
    assert restored.shape == (1, 128, 128) and attrs["image_kind"] == "image"
    assert np.isfinite(restored[...]).all()


def test_restore_of_a_tem_image_from_an_emi_file(tmp_path, shared_data, client, tiny_model):
    raw = shared_data / "formats" / "128x128_TEM_acquire-sum1.emi"
    store = resolve_store(raw, tmp_path)
    job = run_job("restore", store, tmp_path / "out.zarr", client, progress=False, model=tiny_model,
                  tile=64, overlap=8)
    attrs = assert_provenance(job.out, raw, {"plan", "restore", "finalise"}, input_store=store)
    assert attrs["image_kind"] == "image"  # ingested as `haadf`, but nothing says it is a HAADF
    restored = zarr.open_array(str(Path(job.out) / "restored"), mode="r", zarr_format=3)
    # int32 from the camera, but 31 % of the pixels are negative (dark-subtracted): not counts
    assert restored.attrs["image_kind"] == "image" and restored.attrs["units"] == "a.u."
    assert [w["code"] for w in attrs["warnings"]].count("not-count-like") == 1
    assert restored.attrs["description"].startswith("image restored")
    assert attrs["params"]["model"] == tiny_model
    assert attrs["normalisation"]["method"] == "per-frame standardisation"


def test_tem_fuse_records_provenance(tmp_path, client):
    from emfuse.pipeline.avae.model import AVAE, AVAEConfig, save_avae

    torch.manual_seed(0)
    model = save_avae(AVAE(AVAEConfig(features=4, latent=2)), tmp_path / "tiny.safetensors")
    source = write_synthetic("tem-modes", tmp_path / "tem.zarr", shape=(64, 64), material="metal", seed=2)
    job = run_job("tem-fuse", source, tmp_path / "out.zarr", client, progress=False, model=model, tile=32, halo=16)
    attrs = assert_provenance(job.out, source, {"plan", "write_inputs", "preprocessing", "tiles", "finalise"})
    assert attrs["params"]["model_sha256"] == sha256_file(model)
    assert attrs["normalisation"]["method"] == "preprocessing" and "preprocessing" in attrs


def test_a_resumed_run_adds_its_own_timing(tmp_path, pto, client):
    raw, store = pto
    # a first run as the runners do it, killed after writing the inputs
    job, _ = fusion_job.plan(store, tmp_path / "out.zarr", params=FIXED, tile=128, halo=16)
    begin_run(job.out, plan=0.5)
    with timed(job.out, "write_inputs"):
        fusion_job.write_inputs(job)
    run_job("fuse", store, job.out, client, progress=False, params=FIXED, tile=128, halo=16)
    first, second = read_attrs(job.out)["timing"]
    assert set(first["seconds"]) == {"plan", "write_inputs"} and first["seconds"]["plan"] == 0.5
    assert {"plan", "write_inputs", "normalise", "tiles", "finalise"} <= set(second["seconds"])


def test_units_say_what_the_values_are(shared_data):
    vendor = read(shared_data / "fusion" / "PTO_Trilayer_dataset.npz")  # maps scaled to [0, 1]
    assert vendor.maps.attrs["units"] == "a.u." and vendor.haadf.attrs["units"] == "a.u."
    counts = read(shared_data / "formats" / "test_TEM.bcf")  # uint8 counts
    assert counts.spectrum.attrs["units"] == "counts" and counts.haadf.attrs["units"] == "counts"


def test_a_store_written_with_xarray_is_accepted_and_an_interrupted_one_refused(tmp_path, dysco3, client):
    ds = xr.Dataset({"haadf": (("y", "x"), dysco3["haadf"][:64, :64]),
                     "maps": (("element", "y", "x"), dysco3["maps"][:, :64, :64])},
                    coords={"element": dysco3["elements"], "z": ("element", dysco3["z"])})
    ds.to_zarr(tmp_path / "mine.zarr", zarr_format=3, consolidated=False)  # no `complete` attribute
    job = run_job("fuse", tmp_path / "mine.zarr", tmp_path / "out.zarr", client, progress=False, params=FIXED,
                  tile=64, halo=8)
    assert open_dataset(job.out).fused.shape == (3, 64, 64)
    interrupted = write_dataset(ds, tmp_path / "half.zarr")
    zarr.open_group(str(interrupted), mode="r+", zarr_format=3).attrs["complete"] = False
    with pytest.raises(ValueError, match="not marked complete.*Rerun"):
        run_job("fuse", interrupted, tmp_path / "out2.zarr", client, progress=False, params=FIXED, tile=64)
