"""The overnight batch on real instrument files (../shared/data/formats): a Velox file with several
spectrum images chosen by the catalog's ``signal``, and a Velox file whose lazily read spectrum image
is ingested while the batch's cluster client is Dask's default."""

from __future__ import annotations

import json
import shutil
from html import unescape as html_unescape
from pathlib import Path

import pytest
import yaml

from emfuse.stores.warn import read_warnings
from emfuse.stores.zarrio import is_complete, read_attrs

pytestmark = pytest.mark.prefect

EELS_EDS = "example_velox_EELS_EDS.emd"  # three EELS spectrum images (14-16) and one EDS (17)
VELOX_16 = "Test SI 16x16 215 kx.emd"


@pytest.fixture(scope="module")
def night(prefect_harness, formats, tmp_path_factory) -> dict:
    from emfuse.flows.batch import batch_flow

    root = tmp_path_factory.mktemp("real_night")
    incoming = root / "incoming"
    incoming.mkdir()
    for name in (EELS_EDS, VELOX_16):
        shutil.copy(formats / name, incoming / name)
    fixed = {"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 10}
    catalog = {"output": "results", "cluster": "local-threads", "data_root": "incoming", "datasets": [
        {"path": f"incoming/{EELS_EDS}", "name": "eels", "jobs": ["fuse"], "elements": ["Fe", "Co", "O"],
         "signal": 15, "params": fixed},
        {"path": f"incoming/{EELS_EDS}", "name": "no-signal", "jobs": ["fuse"], "elements": ["Fe", "Co", "O"],
         "params": fixed},
        {"path": f"incoming/{VELOX_16}", "name": "velox16", "jobs": ["fuse"], "elements": ["Ca", "O", "Cu"],
         "params": fixed},
    ]}
    (root / "tonight.yaml").write_text(yaml.safe_dump(catalog))
    return {"root": root, "info": batch_flow(str(root / "tonight.yaml"), progress=False)}


def _records(night) -> dict:
    return {r["dataset"]: r for r in night["info"]["records"]}


def test_the_catalogs_signal_chooses_the_spectrum_image(night):
    records = _records(night)
    eels = records["eels"]
    assert eels["status"] == "done", eels.get("error")
    assert is_complete(eels["store"])
    assert read_attrs(eels["input_store"])["ingest_options"]["signal"] == "15"
    maps_from = read_attrs(eels["store"])["maps_from"]
    assert maps_from["signal_type"] == "EELS" and set(maps_from["windows"]) == {"Fe", "Co", "O"}
    # without a signal the dataset fails alone, and the message gives the catalog's form
    error = records["no-signal"]["error"]
    assert records["no-signal"]["status"] == "failed" and "holds 4 spectrum images" in error
    assert "in a catalog: signal: INDEX" in error


def test_an_edge_near_the_spectrums_end_is_integrated_as_far_as_it_goes_and_says_so(night):
    eels = _records(night)["eels"]
    co = read_attrs(eels["store"])["maps_from"]["windows"]["Co"]  # L2,3 at 779 eV; signal 15 ends at 826.4 eV
    assert co["source"] == "table-shortened" and co["signal_ev"][0] == 779.0
    assert co["signal_ev"][1] == pytest.approx(826.44, abs=0.01)
    assert read_attrs(eels["store"])["maps_from"]["windows"]["Fe"]["source"] == "table"
    codes = [w["code"] for w in read_warnings(eels["store"])]
    assert codes.count("window-shortened") == 1
    message = next(w["message"] for w in read_warnings(eels["store"]) if w["code"] == "window-shortened")
    assert "the Co map integrates 779-826.437 eV" in message and "windows: {Co: [LOW, HIGH]}" in message
    page = html_unescape(Path(night["info"]["report"]).read_text())
    assert message in page  # shown as "check" in the morning report
    report = json.loads((night["root"] / "results" / "report.json").read_text())
    assert any(w["code"] == "window-shortened" for r in report["records"] if r["dataset"] == "eels"
               for w in r["summary"]["warnings"])


def test_a_lazily_read_velox_file_is_ingested_beside_the_cluster(night):
    velox = _records(night)["velox16"]
    assert velox["status"] == "done", velox.get("error")
    assert is_complete(velox["input_store"]) and is_complete(velox["store"])


def test_figure_links_survive_a_hash_and_spaces_in_the_file_name(prefect_harness, formats, tmp_path):
    import re
    import urllib.parse

    from emfuse.flows.batch import batch_flow

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(formats / VELOX_16, incoming / "sample #3 Velox.emd")  # the dataset's name: "sample #3 Velox"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"output": "results", "cluster": "local-threads", "datasets": [
        {"path": "incoming/*.emd", "jobs": ["fuse"], "elements": ["Ca", "O", "Cu"],
         "params": {"lambda_chem": 0.05, "lambda_tv": 0.02, "n_iter": 5}}]}))
    info = batch_flow(str(tmp_path / "c.yaml"), progress=False)
    assert info["n_done"] == 1, info["records"][0].get("error")
    page = Path(info["report"])
    links = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert links and all("#" not in link and " " not in link for link in links)
    for link in links:  # what a browser opens: the percent-decoded path, relative to the page
        assert (page.parent / urllib.parse.unquote(link)).is_file(), link
