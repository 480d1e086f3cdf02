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

import html
import json
import os
from pathlib import Path
from typing import Any

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
# summary entries worth a line in the report (the rest stays in report.json)
_RESULT_KEYS = ("lambda_chem", "lambda_tv", "final_cost", "convergence", "nrmse_raw", "nrmse_fused", "frames",
                "model", "device", "psnr_raw_db", "psnr_restored_db", "drift_max_px", "mean_attention", "quality")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.done{color:#176317;font-weight:bold}.check{color:#a15c00;font-weight:bold}.failed{color:#b00020;font-weight:bold}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;white-space:pre-wrap}
img{max-width:380px;margin:4px;border:1px solid #ddd}section{border-top:2px solid #eee;margin-top:1.5em}
code{background:#f2f2f2;padding:0 3px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


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


def _status(record: dict[str, Any]) -> str:
    status, css = record["status"], record["status"]
    if status == "done" and record.get("state") == "complete":
        status = "done (already complete)"
    if status.startswith("done") and job_warnings(record):
        status, css = f"check ({status}, {len(job_warnings(record))} warning(s))", "check"
    return f'<span class="{_esc(css)}">{_esc(status)}</span>'


def _overview(info: dict[str, Any], folder: Path) -> str:
    rows = []
    for i, r in enumerate(info["records"]):
        store = _relative(r.get("store"), folder)
        rows.append(f'<tr><td><a href="#job-{i}">{_esc(r["dataset"])}</a></td><td>{_esc(r["job"])}</td>'
                    f'<td>{_status(r)}</td><td>{r.get("seconds", 0):.1f}</td>'
                    f'<td>{_esc(r.get("tiles_computed", ""))}</td><td><code>{_esc(store)}</code></td></tr>')
    return ("<table><tr><th>dataset</th><th>job</th><th>status</th><th>seconds</th><th>tiles computed</th>"
            "<th>output store</th></tr>" + "".join(rows) + "</table>")


def _mapping(values: dict[str, Any]) -> str:
    if not values:
        return "<p>(defaults)</p>"
    rows = "".join(f"<tr><th>{_esc(k)}</th><td><code>{_esc(json.dumps(v, default=str))}</code></td></tr>"
                   for k, v in values.items())
    return f"<table>{rows}</table>"


def _section(i: int, record: dict[str, Any], folder: Path) -> str:
    parts = [f'<section id="job-{i}"><h2>{_esc(record["dataset"])} &middot; {_esc(record["job"])} '
             f'&middot; {_status(record)}</h2>',
             f'<p>input <code>{_esc(record.get("path", ""))}</code>'
             + (f' &rarr; store <code>{_esc(record["store"])}</code>' if record.get("store") else "")
             + f'; started {_esc(record.get("started", ""))}, {record.get("seconds", 0):.1f} s</p>']
    if record["status"] == "failed":
        parts.append(f"<p><b>Error ({_esc(record.get('error_type', ''))}):</b></p><pre>{_esc(record['error'])}</pre>")
        if record.get("traceback"):
            parts.append(f"<details><summary>traceback</summary><pre>{_esc(record['traceback'])}</pre></details>")
    warnings = job_warnings(record)
    if warnings:
        items = "".join(f"<li>{_esc(w['message'])} <code>{_esc(w['code'])}</code></li>" for w in warnings)
        parts.append(f'<h3 class="check">Check</h3><ul>{items}</ul>')
    parts.append("<h3>Parameters</h3>" + _mapping(record.get("params", {})))
    summary = record.get("summary") or {}
    results = {k: summary[k] for k in _RESULT_KEYS if k in summary}
    if results:
        parts.append("<h3>Results</h3>" + _mapping(results))
    figures = [f for f in record.get("figures", []) if f.endswith(".png")]
    if figures:
        imgs = "".join(f'<a href="{_esc(_relative(f, folder))}"><img src="{_esc(_relative(f, folder))}" '
                       f'alt="{_esc(Path(f).name)}" title="{_esc(Path(f).name)}"></a>' for f in figures)
        parts.append(f"<h3>Figures</h3><div>{imgs}</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(info: dict[str, Any], folder: Path) -> str:
    """The report page for a batch summary (as returned by :func:`emfuse.flows.batch.batch_flow`)."""
    n_failed = info["n_failed"]
    n_check = sum(1 for r in info["records"] if r["status"] == "done" and job_warnings(r))
    verdict = (f'<span class="failed">{n_failed} failed</span>' if n_failed else '<span class="done">all done</span>')
    if n_check:
        verdict += f', <span class="check">{n_check} to check</span>'
    head = (f"<h1>emfuse morning report</h1><p>{verdict}: {info['n_done']} of {len(info['records'])} jobs done. "
            f"Catalog <code>{_esc(info['catalog'])}</code>, cluster <code>{_esc(info['cluster'])}</code>, "
            f"host {_esc(info['host'])}; started {_esc(info['started'])}, finished {_esc(info['finished'])} "
            f"({info['seconds'] / 60:.1f} min). Log: <code>{_esc(_relative(info['log'], folder))}</code>.</p>")
    sections = "\n".join(_section(i, r, folder) for i, r in enumerate(info["records"]))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>emfuse report {_esc(info["started"])}'
            f"</title><style>{_STYLE}</style></head><body>{head}{_overview(info, folder)}{sections}</body></html>\n")


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
