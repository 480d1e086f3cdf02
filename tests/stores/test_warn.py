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


def test_morning_report_escapes_what_comes_from_files(tmp_path):
    """Dataset names, messages and errors come from files and users: the template escapes them."""
    bad = {"dataset": "<script>alert(1)</script>", "job": "fuse", "status": "failed", "seconds": 0.2,
           "error": "cannot read <b>x</b> & y", "error_type": "IngestError", "path": str(tmp_path / "a&b.emd")}
    info = {"records": [bad], "n_failed": 1, "n_done": 0, "catalog": "c.yaml", "cluster": "local",
            "host": "h", "started": "s", "finished": "f", "seconds": 60.0, "log": str(tmp_path / "logs" / "run.log")}
    page = render_html(info, tmp_path)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "cannot read &lt;b&gt;x&lt;/b&gt; &amp; y" in page and "a&amp;b.emd" in page
    assert "Log: <code>logs/run.log</code>" in page  # relative to the page's folder
    assert '<span class="failed">1 failed</span>' in page
