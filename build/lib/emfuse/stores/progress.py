"""Records of finished work inside an output store, so that a rerun resumes.

The records are ordinary Zarr arrays in a subgroup ``_progress/<job>`` of the
output store (xarray does not open subgroups, so users never see them):

``done`` (tile_row, tile_col) uint8
    1 once a tile's outputs are fully written. One Zarr chunk per tile, so
    workers that finish at the same time never write the same object.
``payload`` (tile_row, tile_col, ...) float64, optional
    small per-tile results (e.g. the cost curves), written before ``done``.

A tile's data are written first, then its payload, then its ``done`` flag: a
crash at any moment leaves either a finished tile or one that is redone.
Stages run by the driver alone (e.g. "inputs written") are group attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

PROGRESS_GROUP = "_progress"


class TileRecord:
    """The progress record of one job in one output store.

    Examples
    --------
    >>> record = TileRecord.create("out.zarr", "fuse", (2, 3), payload_shape=(3, 50))  # doctest: +SKIP
    >>> record.mark((0, 1), payload=costs)  # doctest: +SKIP
    >>> record.done_tiles()  # doctest: +SKIP
    {(0, 1)}
    """

    def __init__(self, group: zarr.Group):
        self._group = group

    @classmethod
    def create(
        cls,
        store: str | Path,
        job: str,
        grid_shape: Sequence[int],
        payload_shape: Sequence[int] | None = None,
    ) -> TileRecord:
        """Create the record, or open it if it exists with the same layout."""
        root = zarr.open_group(str(store), mode="r+", zarr_format=3)
        parent = root.require_group(PROGRESS_GROUP)
        if job in parent:
            record = cls(parent[job])
            if record.grid_shape == tuple(grid_shape):
                return record
            del parent[job]  # another tiling: nothing recorded can be reused
        group = parent.create_group(job)
        rows, cols = (int(n) for n in grid_shape)
        group.create_array("done", shape=(rows, cols), chunks=(1, 1), dtype="uint8", fill_value=0)
        if payload_shape is not None:
            shape = (rows, cols, *payload_shape)
            group.create_array(
                "payload", shape=shape, chunks=(1, 1, *payload_shape), dtype="float64",
                fill_value=np.nan,
            )
        group.attrs["stages"] = []
        return cls(group)

    @classmethod
    def open(cls, store: str | Path, job: str) -> TileRecord:
        """Open an existing record (on a worker, to mark a tile)."""
        return cls(zarr.open_group(str(Path(store) / PROGRESS_GROUP / job), mode="r+", zarr_format=3))

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self._group["done"].shape)  # type: ignore[return-value]

    def done_tiles(self) -> set[tuple[int, int]]:
        """Indices (row, col) of the tiles already finished."""
        done = self._group["done"][...]
        return {(int(r), int(c)) for r, c in zip(*np.nonzero(done))}

    def mark(self, index: tuple[int, int], payload: np.ndarray | None = None) -> None:
        """Record a finished tile (call after its data are written)."""
        row, col = index
        if payload is not None:
            target = self._group["payload"]
            padded = np.full(target.shape[2:], np.nan)
            payload = np.asarray(payload, dtype=np.float64)
            padded[tuple(slice(0, n) for n in payload.shape)] = payload
            target[row, col] = padded
        self._group["done"][row, col] = 1

    def payloads(self) -> np.ndarray:
        """All payloads (tile_row, tile_col, ...); NaN where none was written."""
        return self._group["payload"][...]

    def stage_done(self, stage: str) -> bool:
        return stage in self._group.attrs.get("stages", [])

    def mark_stage(self, stage: str) -> None:
        """Record a stage run by the driver (not by workers: no concurrent writers)."""
        stages = list(self._group.attrs.get("stages", []))
        if stage not in stages:
            self._group.attrs["stages"] = [*stages, stage]
