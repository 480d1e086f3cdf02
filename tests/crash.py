"""Helpers for the crash tests: progress counts and a store comparison that ignores only timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import zarr

from emfuse.stores.layout import ATTR_CREATED, ATTR_TIMING
from emfuse.stores.progress import PROGRESS_GROUP

# attributes that record when something ran (and for how long: a resumed run adds a record), not
# what it computed
VOLATILE = {ATTR_CREATED, ATTR_TIMING}


def done_tiles(output: Path) -> dict[str, int]:
    """Finished tiles of every output store under ``output`` (0 for a store not yet readable)."""
    counts = {}
    for store in sorted(output.glob("*.zarr")):
        try:
            group = zarr.open_group(str(store / PROGRESS_GROUP), mode="r", zarr_format=3)
            counts[store.name] = sum(int(group[job]["done"][...].sum()) for job in group.group_keys())
        except Exception:  # being created this instant, or not created yet
            counts[store.name] = 0
    return counts


def _metadata(path: Path, root: Path) -> dict:
    meta = json.loads(path.read_text().replace(str(root), "<root>"))
    attrs = meta.get("attributes", {})
    for key in VOLATILE:
        attrs.pop(key, None)
    return meta


def store_differences(a: Path, b: Path, root_a: Path, root_b: Path) -> list[str]:
    """Files that differ between two stores: chunks byte for byte, metadata except timestamps."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    problems = [f"only in one store: {sorted(files_a ^ files_b)}"] if files_a != files_b else []
    for rel in sorted(files_a & files_b):
        if rel.name == "zarr.json":
            if _metadata(a / rel, root_a) != _metadata(b / rel, root_b):
                problems.append(f"metadata differs: {rel}")
        elif (a / rel).read_bytes() != (b / rel).read_bytes():
            problems.append(f"bytes differ: {rel}")
    return problems
