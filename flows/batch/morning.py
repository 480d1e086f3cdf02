"""The morning report of a batch: one self-contained HTML page (and the same facts as JSON).

``<output>/report.html`` opens in any browser from the shared file system: a summary line,
a table with one row per dataset and job (status, time, tiles, output store), then one
section per dataset and job with its parameters, its key results, its figures (linked
relative to the page, so the folder can be copied) and, for a failure, the error message
and the end of the traceback. ``<output>/report.json`` holds the same records for scripts.

Examples
--------
>>> write_morning_report(info, "results/")  # doctest: +SKIP
PosixPath('results/report.html')
"""

from __future__ import annotations

import functools
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
# summary entries worth a line in the report (the rest stays in report.json)
_RESULT_KEYS = ("lambda_chem", "lambda_tv", "final_cost", "convergence", "nrmse_raw", "nrmse_fused", "frames",
                "model", "device", "psnr_raw_db", "psnr_restored_db", "drift_max_px", "mean_attention", "quality")

TEMPLATE = "morning.html.j2"  # in templates/ beside this module


def _relative(path: str | None, folder: Path) -> str:
    if not path:
        return ""
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive
        return str(path)


def job_warnings(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The warnings a job's result carries (its summary's ``warnings``)."""
    return list((record.get("summary") or {}).get("warnings", []))


def status_text(record: dict[str, Any]) -> str:
    """A job's status as the report shows it: done, done (already complete), failed, or check (...).

    Examples
    --------
    >>> status_text({"status": "done", "state": "complete"})
    'done (already complete)'
    >>> status_text({"status": "done", "summary": {"warnings": [{"code": "x", "message": "y"}]}})
    'check (done, 1 warning(s))'
    """
    status = record["status"]
    if status == "done" and record.get("state") == "complete":
        status = "done (already complete)"
    if status.startswith("done") and job_warnings(record):
        status = f"check ({status}, {len(job_warnings(record))} warning(s))"
    return status


def _status_class(record: dict[str, Any]) -> str:
    return "check" if record["status"].startswith("done") and job_warnings(record) else record["status"]


def _results(record: dict[str, Any]) -> dict[str, Any]:
    summary = record.get("summary") or {}
    return {k: summary[k] for k in _RESULT_KEYS if k in summary}


def shown(value: Any) -> Any:
    """``value`` as the page shows it: floats to 4 significant digits, at any depth (a chosen
    ``lambda_chem`` of 0.015625000000000007 reads 0.01563); ``report.json`` keeps every digit.

    Examples
    --------
    >>> shown({"lambda_chem": 0.015625000000000007, "final_cost": [3994.1535513, 2], "model": "auto"})
    {'lambda_chem': 0.01563, 'final_cost': [3994.0, 2], 'model': 'auto'}
    """
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shown(v) for v in value]
    return value


@jinja2.pass_context
def _relative_to_page(context: jinja2.runtime.Context, path: str | None) -> str:
    return _relative(path, context["folder"])


@jinja2.pass_context
def _link_from_page(context: jinja2.runtime.Context, path: str | None) -> str:
    """A file as a link from the page: relative, percent-encoded (a dataset named after a file
    ``run #3.emd`` must not have its figure's link cut at the ``#``)."""
    return urllib.parse.quote(Path(_relative(path, context["folder"])).as_posix())


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    env.filters.update(status_text=status_text, status_class=_status_class, warnings=job_warnings,
                       results=_results, relative=_relative_to_page, link=_link_from_page, basename=lambda p: Path(p).name,
                       json=lambda v: json.dumps(shown(v), default=str),
                       figures=lambda r: [f for f in r.get("figures", []) if f.endswith(".png")])
    return env


def render_html(info: dict[str, Any], folder: Path) -> str:
    """The report page for a batch summary (as returned by :func:`emfuse.flows.batch.batch_flow`).

    The page is the Jinja2 template ``templates/morning.html.j2``, autoescaped; paths are
    written relative to ``folder`` (where the page goes), so the folder can be copied.
    """
    template = _environment().get_template(TEMPLATE)
    n_check = sum(1 for r in info["records"] if r["status"] == "done" and job_warnings(r))
    return template.render(info=info, n_check=n_check, folder=Path(folder))


def write_morning_report(info: dict[str, Any], output: str | Path) -> Path:
    """Write ``report.html`` and ``report.json`` into ``output``; returns the HTML path.

    Both are written to a temporary name and renamed, so a reader never sees half a page.
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / REPORT_HTML
    for path, text in ((folder / REPORT_JSON, json.dumps({**info, "report": str(page)}, indent=2, default=str)),
                       (page, render_html(info, folder))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return page
