"""The provenance every output store carries, asserted on the store on disk (shared by the tests)."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

from emfuse.stores.version import emfuse_version
from emfuse.stores.zarrio import read_attrs, sha256_file


def assert_provenance(out: str | Path, source: Path, stages: set[str], *, input_store: Path | None = None) -> dict:
    """The attributes every output store carries; returns them for the path's own checks."""
    attrs = read_attrs(out)
    assert attrs["emfuse_version"] == emfuse_version() != "unknown"
    created = dt.datetime.fromisoformat(attrs["created"])
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 3600
    assert attrs["host"] == socket.gethostname()
    assert attrs["source_path"] == str(source.resolve())
    assert attrs["source_sha256"] == sha256_file(source)
    if input_store is not None:
        assert attrs["input_store"] == str(Path(input_store).resolve())
    assert isinstance(attrs["params"], dict) and attrs["params"]
    assert stages <= set(attrs["timing"][-1]["seconds"]), attrs["timing"]
    assert all(s >= 0 for s in attrs["timing"][-1]["seconds"].values())
    assert attrs["complete"] is True
    return attrs
