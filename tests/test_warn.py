"""Warnings stored with results: recorded once, printed, shown as "check" in the reports."""

import zarr

from emfuse.flows.batch.morning import render_html
from emfuse.stores.layout import ATTR_WARNINGS
from emfuse.stores.warn import add_warnings, format_warning, make_warning, read_warnings


def _store(tmp_path):
    path = tmp_path / "out.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3)
    return path


def test_warnings_are_appended_once_and_keep_details(tmp_path, caplog):
    path = _store(tmp_path)
    first = make_warning("haadf-saturated", "9.1 % of the HAADF is saturated", stage="ingest", fraction=0.091)
    add_warnings(path, first)
    add_warnings(path, first, make_warning("lambda-edge", "lambda_tv at the top of its range"))
    stored = read_warnings(path)
    assert [w["code"] for w in stored] == ["haadf-saturated", "lambda-edge"]
    assert stored[0]["fraction"] == 0.091 and stored[0]["stage"] == "ingest"
    assert zarr.open_group(str(path), mode="r").attrs[ATTR_WARNINGS] == stored
    logged = [r for r in caplog.records if "lambda_tv at the top" in r.message]
    assert len(logged) == 1 and logged[0].name == "emfuse.stores.warn"  # under "stores": copied to a batch's run log
    assert format_warning(stored[1]) == "check: lambda_tv at the top of its range [lambda-edge]"


def test_morning_report_marks_jobs_with_warnings_as_check(tmp_path):
    warned = {"dataset": "a", "job": "fuse", "status": "done", "seconds": 1.0,
              "summary": {"warnings": [make_warning("poor-haadf-fit", "the HAADF model leaves 40 % of the variance")]}}
    clean = {"dataset": "b", "job": "fuse", "status": "done", "seconds": 1.0, "summary": {"warnings": []}}
    info = {"records": [warned, clean], "n_failed": 0, "n_done": 2, "catalog": "c.yaml", "cluster": "local",
            "host": "h", "started": "s", "finished": "f", "seconds": 60.0, "log": str(tmp_path / "log")}
    page = render_html(info, tmp_path)
    assert "1 to check" in page
    assert page.count('class="check"') >= 2  # the status of the warned job, its "Check" heading
    assert "the HAADF model leaves 40 % of the variance" in page
    assert page.count("check (done") == 2  # the warned job in the table and its heading; the clean one stays "done"
