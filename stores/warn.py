"""Warnings stored with a result: what the user must check before trusting it.

An overnight run has nobody watching its log, so a result that may be wrong (a saturated
detector, a search that ended at the edge of its range, a poor model fit, an input unlike
the training data) carries its warnings in the store itself: the group attribute
``warnings`` is a list of records

``{"code": "haadf-saturated", "message": "...", "stage": "ingest", ...details}``

``code`` is a short stable identifier (for scripts and tests), ``message`` one sentence for
a person (what was found, what was done about it, what to check). The command line prints
them, ``summary.json`` and the morning report show the job as "check".

Examples
--------
>>> import tempfile, zarr
>>> path = tempfile.mkdtemp() + "/out.zarr"
>>> _ = zarr.open_group(path, mode="w", zarr_format=3)
>>> _ = add_warnings(path, make_warning("edge", "lambda_tv at the top of its range", stage="auto"))
>>> [w["code"] for w in read_warnings(path)]
['edge']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zarr

from .layout import ATTR_WARNINGS

log = logging.getLogger(__name__)  # under "stores": a batch copies it to its run log
#: set on the log records of stored warnings, so a console that prints them as ``check:`` lines can skip them
STORED_WARNING = "emfuse_stored_warning"


def make_warning(code: str, message: str, *, stage: str | None = None, **details: Any) -> dict[str, Any]:
    """One warning record (JSON types only); ``details`` are extra figures for scripts."""
    record: dict[str, Any] = {"code": str(code), "message": str(message)}
    if stage is not None:
        record["stage"] = str(stage)
    record.update(details)
    return record


def merge_warnings(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``old`` then the records of ``new`` not already in it (same code and message)."""
    merged = [dict(w) for w in old]
    seen = {(w["code"], w["message"]) for w in merged}
    for w in new:
        if (w["code"], w["message"]) not in seen:
            merged.append(dict(w))
            seen.add((w["code"], w["message"]))
    return merged


def read_warnings(path: str | Path) -> list[dict[str, Any]]:
    """The ``warnings`` attribute of a store ([] when there is none)."""
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    return [dict(w) for w in group.attrs.get(ATTR_WARNINGS, [])]


def add_warnings(path: str | Path, *warnings: Mapping[str, Any], log_them: bool = True) -> list[dict[str, Any]]:
    """Append ``warnings`` to a store's ``warnings`` attribute (each once); returns the whole list.

    Each new warning is also logged (level WARNING, logger ``emfuse.stores.warn``), so it reaches a batch's
    run log; the record carries the attribute :data:`STORED_WARNING`.
    """
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    old = [dict(w) for w in group.attrs.get(ATTR_WARNINGS, [])]
    merged = merge_warnings(old, warnings)
    if len(merged) != len(old):
        group.attrs[ATTR_WARNINGS] = merged
        if log_them:
            for w in merged[len(old):]:
                log.warning("check %s: %s", path, w["message"], extra={STORED_WARNING: True})
    return merged


def format_warning(record: Mapping[str, Any]) -> str:
    """``"check: <message> [<code>]"``: how the command line and the reports print a warning."""
    return f"check: {record['message']} [{record['code']}]"
