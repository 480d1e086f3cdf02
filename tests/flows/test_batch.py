"""The overnight batch flow: a catalog of good and bad datasets, the morning report, a rerun."""

from __future__ import annotations

import json
import re
from html import unescape as html_unescape
from pathlib import Path

import numpy as np
import pytest

from emfuse.flows.tools.synth import write_synthetic
from emfuse.stores.zarrio import is_complete, open_dataset

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    """An incoming folder with two spectrum images, a movie, a truncated raw file; a catalog."""
    root = tmp_path_factory.mktemp("night")
    incoming = root / "incoming"
    for seed in (1, 2):
        write_synthetic("spectrum-image", incoming / f"si{seed}.zarr", shape=(48, 40), elements=["Sr", "Ti", "O"],
                        seed=seed)
    write_synthetic("movie", incoming / "movie.zarr", shape=(40, 40), frames=3)
    (incoming / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "tonight.yaml").write_text("""
output: results
cluster: local-threads
datasets:
  - path: incoming/si*.zarr
    jobs: [fuse]
    elements: [Sr, Ti, O]
    params: {tile: 32, halo: 8, n_iter: 15, lambda_chem: 0.05, lambda_tv: 0.02}
  - path: incoming/movie.zarr
    jobs: [restore]
    params: {tile: 32, overlap: 8, model: "r_em:no_such_net"}
  - path: incoming/movie.zarr
    name: movie-ok
    jobs: [restore]
    params: {tile: 32, overlap: 8}
  - path: incoming/broken.npz
    jobs: [fuse]
  - path: incoming/missing.emd
    jobs: [restore]
""")
    return root


@pytest.fixture(scope="module")
def first_run(prefect_harness, night):
    from emfuse.flows.batch import batch_flow

    return batch_flow(str(night / "tonight.yaml"), progress=False)


def _by_name(info):
    return {(r["dataset"], r["job"]): r for r in info["records"]}


def test_good_datasets_complete_and_bad_ones_fail_alone(first_run, night):
    records = _by_name(first_run)
    assert set(records) == {("si1", "fuse"), ("si2", "fuse"), ("movie", "restore"), ("movie-ok", "restore"),
                            ("broken", "fuse"), ("missing", "restore")}
    for key in [("si1", "fuse"), ("si2", "fuse"), ("movie-ok", "restore")]:
        assert records[key]["status"] == "done", records[key].get("error")
        assert is_complete(records[key]["store"])
        assert records[key]["store"] == str(night / "results" / f"{key[0]}.{key[1]}.zarr")
    assert records[("si1", "fuse")]["tiles_computed"] == 4  # 48 x 40 in 32-px tiles
    out = open_dataset(records[("si1", "fuse")]["store"])
    assert out.fused.shape == (3, 48, 40)
    # the summary's errors against the synthetic truth, per element, as the metric gives them
    from emfuse.pipeline.metrics import nrmse

    summary = records[("si1", "fuse")]["summary"]
    for el in ("Sr", "Ti", "O"):
        truth = out.true_maps.sel(element=el).values
        assert summary["nrmse_raw"][el] == pytest.approx(nrmse(out.maps.sel(element=el).values, truth), rel=1e-12)
        assert summary["nrmse_fused"][el] == pytest.approx(nrmse(out.fused.sel(element=el).values, truth), rel=1e-12)
    assert summary["nrmse_fused"] != summary["nrmse_raw"]
    # each failure names the dataset and the problem
    bad = {key: records[key]["error"] for key in [("movie", "restore"), ("broken", "fuse"), ("missing", "restore")]}
    assert "movie" in bad[("movie", "restore")] and "r_em:no_such_net" in bad[("movie", "restore")]
    assert "broken" in bad[("broken", "fuse")] and "corrupt" in bad[("broken", "fuse")]
    assert "missing" in bad[("missing", "restore")] and "does not exist" in bad[("missing", "restore")]
    assert first_run["n_done"] == 3 and first_run["n_failed"] == 3
    # a failed job leaves no store marked complete
    assert not is_complete(night / "results" / "movie.restore.zarr")


def test_morning_report(first_run, night):
    page = Path(first_run["report"])
    assert page == night / "results" / "report.html"
    html = page.read_text()
    for name in ("si1", "si2", "movie-ok", "broken", "missing"):
        assert f">{name}<" in html
    assert html.count('class="failed"') >= 3
    assert "r_em:no_such_net" in html  # the error message, and the parameters
    # every figure is linked relative to the page, and exists
    images = re.findall(r'<img src="([^"]+)"', html)
    assert any(src.endswith("maps.png") for src in images) and any("movie-ok" in src for src in images)
    for src in images:
        assert (page.parent / src).is_file(), src
    data = json.loads((page.parent / "report.json").read_text())
    assert len(data["records"]) == 6 and data["n_failed"] == 3
    log = Path(first_run["log"]).read_text()
    assert "FAILED broken fuse" in log and "done   si1 fuse" in log
    # results that carry warnings show as "check", with each message, and the log has them
    warned = [r for r in data["records"] if (r.get("summary") or {}).get("warnings")]
    assert warned, "15 iterations leave the cost curves falling: the fusions should say so"
    assert f"{len(warned)} to check" in html and 'class="check"' in html
    for record in warned:
        for w in record["summary"]["warnings"]:
            assert w["message"] in html_unescape(html) and w["message"] in log
    # parameters and results are shown to 4 significant digits (report.json keeps them all)
    shown = [m.group(1) for c in re.findall(r"<code>(.*?)</code>", html)
             for m in re.finditer(r"(?<![\w.])(\d+\.\d+)(?:e-?\d+)?", html_unescape(c))]
    assert shown and all(len(n.rstrip("0").rstrip(".").replace(".", "").lstrip("0")) <= 4 for n in shown), shown


def test_rerun_resumes_and_recomputes_nothing_finished(first_run, night):
    from emfuse.flows.batch import batch_flow

    before = open_dataset(night / "results" / "si1.fuse.zarr").fused.values
    again = batch_flow(str(night / "tonight.yaml"), progress=False)
    records = _by_name(again)
    for key in [("si1", "fuse"), ("si2", "fuse"), ("movie-ok", "restore")]:
        assert records[key]["status"] == "done"
        assert records[key]["state"] == "complete" and records[key]["tiles_computed"] == 0
        # the figures of the first run are listed again, not redrawn
        assert records[key]["figures"] == sorted(_by_name(first_run)[key]["figures"])
    np.testing.assert_array_equal(open_dataset(night / "results" / "si1.fuse.zarr").fused.values, before)
    assert again["n_failed"] == 3


def test_schedule_deployment(prefect_harness, night):
    from emfuse.flows.batch import batch_deployment, batch_flow

    deployment = batch_deployment(night / "tonight.yaml", "0 22 * * *", timezone="Europe/Brussels")
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 22 * * *", "Europe/Brussels")
    assert deployment.parameters["catalog"] == str(night / "tonight.yaml")
    assert deployment.entrypoint == "emfuse.flows.batch.batch_flow"
    from prefect.utilities.importtools import import_object

    assert import_object(deployment.entrypoint) is batch_flow  # what a served run loads
    with pytest.raises(ValueError, match="cron"):
        batch_deployment(night / "tonight.yaml", "0 25 * * *")


def test_unreachable_cluster_still_writes_the_report(prefect_harness, night, tmp_path):
    from emfuse.flows.batch import batch_flow

    catalog = tmp_path / "unreachable.yaml"
    catalog.write_text(f"""
output: {tmp_path / "out"}
cluster: {{address: "tcp://127.0.0.1:9", timeout: 2s}}
datasets:
  - {{path: {night / "incoming" / "si1.zarr"}, jobs: [fuse]}}
""")
    info = batch_flow(str(catalog), progress=False)
    assert info["n_failed"] == 1
    assert "could not be started or reached" in info["records"][0]["error"]
    assert "tcp://127.0.0.1:9" in Path(info["report"]).read_text()


def test_raw_files_of_one_name_are_ingested_apart(tmp_path):
    """Two run1.npz from two folders, named apart in a catalog, keep their own input stores."""
    from emfuse.flows.jobs.inputs import resolve_store

    rng = np.random.default_rng(0)
    stores = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        np.savez(folder / "run1.npz", HAADF=rng.random((16, 16)), Ti=rng.poisson(3, (16, 16)).astype(float))
        stores.append(resolve_store(folder / "run1.npz", tmp_path / "inputs", name=name))
    assert [s.name for s in stores] == ["first.input.zarr", "second.input.zarr"]
    a, b = (open_dataset(s).haadf.values for s in stores)
    assert not np.array_equal(a, b)

