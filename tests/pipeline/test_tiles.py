"""The tiling module: halo-crop grids (cores partition the image) and overlap-blend grids (weights sum to 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emfuse.pipeline.tiles import BlendGrid, blend_weights, overlap_starts, tile_grid


@pytest.mark.parametrize("shape, tile, halo", [((250, 200), 96, 8), ((64, 64), 64, 16), ((7, 130), 32, 40)])
def test_cores_partition_the_image_and_windows_hold_them(shape, tile, halo):
    cover = np.zeros(shape, int)
    for t in tile_grid(shape, tile, halo):
        cover[t.core] += 1
        assert t.core[0].start % tile == 0 and t.core[1].start % tile == 0  # chunk-aligned
        for core, window, n in zip(t.core, t.window, shape):
            assert window.start == max(core.start - halo, 0)
            assert window.stop == min(core.stop + halo, n)
        ys, xs = t.crop
        window = np.arange(np.prod(shape)).reshape(shape)[t.window]
        np.testing.assert_array_equal(window[ys, xs], np.arange(np.prod(shape)).reshape(shape)[t.core])
    assert (cover == 1).all()


def test_bad_tiling_is_refused():
    with pytest.raises(ValueError, match="bad tiling"):
        tile_grid((10, 10), 0, 2)


def test_windows_sum_to_one_and_cover_the_borders():
    grid = BlendGrid.make((300, 200), tile=64, overlap=16, multiple=2)
    total = np.zeros((300, 200))
    for k in range(len(grid)):
        total[grid.region(k)] += grid.weights(k)
        assert all(s % 2 == 0 for s in grid.starts[k])
    np.testing.assert_allclose(total, 1, rtol=1e-6)
    w = blend_weights(64, 16, before=True, after=True)
    assert w[0] == 0 and w[-1] == 0 and w[32] == 1
    np.testing.assert_allclose(w[48:] + w[:16], 1)  # two tiles overlapping by 16 sum to 1
    assert blend_weights(64, 16, before=False, after=False).min() == 1
    assert overlap_starts(7, 256, 32) == ([0], 7)


def test_the_tiling_module_imports_no_kernel():
    """Every kernel tiles through emfuse.pipeline.tiles, so it must import none of them (no cycle)."""
    code = ("import sys, emfuse.pipeline.tiles; print(sorted(m for m in sys.modules "
            "if m.startswith(('emfuse.pipeline.', 'torch', 'dask', 'xarray'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "['emfuse.pipeline.tiles']"
