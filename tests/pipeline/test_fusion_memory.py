"""The GPU memory model (``pipeline.fusion.memory``) counts what the cuda engine allocates."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from emfuse.pipeline.fusion import memory
from emfuse.pipeline.fusion.model import haadf_weights
from emfuse.pipeline.fusion.solver import FusionParams

pytest.importorskip("numba")


def _engine(n_el: int, momentum: bool, masked: bool, per_element_tv: bool, ny: int = 64, nx: int = 64):
    """The cuda engine's buffers on numpy arrays (allocation only: no kernel is launched)."""
    from emfuse.pipeline.fusion import kernels_cuda
    from emfuse.pipeline.fusion.solver import _CudaOps

    rng = np.random.default_rng(0)
    b_haadf = rng.random((ny, nx), dtype=np.float32)
    b_maps = rng.random((n_el, ny, nx), dtype=np.float32)
    valid = (b_haadf < 0.9).astype(np.float32) if masked else None
    p = FusionParams(tv_momentum=momentum)
    tracemalloc.start()
    try:
        ops = _CudaOps(np, b_haadf, b_maps, haadf_weights(list(range(8, 8 + 4 * n_el, 4))), p, valid)
        if per_element_tv:
            ops.work_single = kernels_cuda.TVWorkspace(ops.b_maps[0:1], momentum)
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return ops, traced


@pytest.mark.parametrize("n_el, momentum, masked, per_element_tv", [
    (1, False, False, False), (4, False, False, False), (4, True, False, False), (3, False, True, True),
    (2, True, True, True),
])
def test_model_counts_the_arrays_the_cuda_engine_and_the_solver_hold(n_el, momentum, masked, per_element_tv):
    from emfuse.pipeline.fusion import kernels_cuda

    ny = nx = 64
    pixels = ny * nx
    ops, traced = _engine(n_el, momentum, masked, per_element_tv, ny, nx)
    solvers = [ops.b_haadf, ops.b_maps] + ([ops.valid] if masked else [])  # made by fuse(), not the engine
    allocated = sum(a.nbytes for a in ops.arrays() if not any(a is s for s in solvers))
    # tracemalloc sees every numpy buffer the engine allocated: arrays() lists them all
    assert allocated <= traced < allocated + 4096
    # fuse() also holds the caller's raw inputs, the starting iterate and the bool mask
    itemsize = 4
    held = sum(a.nbytes for a in ops.arrays()) - ops.weights.nbytes  # weights: E floats in all, not per pixel
    held += (1 + n_el) * pixels * itemsize + n_el * pixels * itemsize + (pixels if masked else 0)
    if kernels_cuda.THREADS != memory.BLOCK_PIXELS:  # under the simulator: smaller blocks, more partial sums
        held += 48 * pixels // memory.BLOCK_PIXELS - ops.partial_terms.nbytes - ops.partial_step.nbytes
    model = memory.fusion_bytes_per_pixel(n_el, momentum=momentum, masked=masked, per_element_tv=per_element_tv)
    assert held == pytest.approx(model * pixels, abs=1e-6)


def test_bytes_per_pixel_formula():
    for e in (1, 2, 4, 8):
        assert memory.fusion_bytes_per_pixel(e) == 4 * (2 + 12 * e) + 48 / 256
        assert memory.fusion_bytes_per_pixel(e, momentum=True) == 4 * (2 + 14 * e) + 48 / 256
    assert memory.fusion_bytes_per_pixel(4, itemsize=8) == 8 * 50 + 48 / 256


def test_bytes_per_iteration_formula():
    for e in (1, 4):
        for n in (1, 5, 10):
            assert memory.fusion_bytes_per_iteration(e, n) == 4 * (9 * e + 5 * e * n + 2)
    assert memory.fusion_bytes_per_iteration(4, 5) == 4 * 138
    assert memory.fusion_bytes_per_iteration(4, 5, momentum=True) > memory.fusion_bytes_per_iteration(4, 5)


@pytest.mark.parametrize("free, n_el, halo", [(80e9, 4, 64), (16e9, 2, 32), (2e9, 8, 128), (5e8, 4, 0)])
def test_largest_tile_is_the_largest_multiple_of_64_that_fits(free, n_el, halo):
    tile = memory.largest_tile(free, n_el, halo)
    per_pixel = memory.fusion_bytes_per_pixel(n_el)
    assert tile % 64 == 0 and tile > 0
    assert (tile + 2 * halo) ** 2 * per_pixel <= 0.8 * free
    assert (tile + 64 + 2 * halo) ** 2 * per_pixel > 0.8 * free


def test_largest_tile_h100_example():
    # docs/hpc.md: 80 GB free, 4 elements, 64-pixel halo -> 17728-pixel tiles
    assert memory.largest_tile(80e9, 4, 64) == 17728
    assert memory.largest_tile(1e6, 4, 64) == 0
    with pytest.raises(ValueError):
        memory.largest_tile(1e9, 4, 64, safety=0)


GB = 1e9


@pytest.mark.parametrize("free", [80 * GB, 16 * GB, 1 * GB])
@pytest.mark.parametrize("n_el", [1, 4, 8])
def test_auto_tile_is_the_largest_whose_window_the_model_fits(free, n_el):
    """choose_tile on a large image: the tile's window fits safety x free by the model, one step of
    64 px more does not, and a tile covering the image is chosen only when the image fits."""
    model = dict(masked=True)
    per_pixel = memory.fusion_bytes_per_pixel(n_el, **model)
    choice = memory.choose_tile([free, None, 2 * free], (60_000, 60_000), n_el, 32, **model)
    t = choice.tile
    assert t % 64 == 0 and choice.free_bytes == free  # the smallest GPU decides; CPU workers do not count
    assert (t + 64) ** 2 * per_pixel <= memory.SAFETY * free < (t + 64 + 64) ** 2 * per_pixel
    assert t == memory.largest_tile(free, n_el, 32, **model)
    assert choice.record()["asked"] == "auto" and choice.bytes_per_pixel == per_pixel


def test_auto_tile_covers_an_image_that_fits_and_keeps_the_cpu_default():
    assert memory.choose_tile([80 * GB], (4096, 3000), 4, 32).tile == 4096  # 4096 x 3000 x 200 B: 2.5 GB
    assert memory.choose_tile([80 * GB], (4096, 3000), 4, 32).rule.startswith("the whole image fits")
    assert memory.choose_tile([None, None], (4096, 4096), 4, 32).tile == memory.DEFAULT_TILE
    assert memory.choose_tile([], (4096, 4096), 4, 32).tile == memory.DEFAULT_TILE
    # 1 GB: the image (3.4 GB) does not fit, so tiles
    assert memory.choose_tile([1 * GB], (4096, 4096), 4, 32).tile < 4096


def test_too_little_free_memory_names_device_cpu():
    with pytest.raises(memory.TileMemoryError, match=r"--device cpu"):
        memory.choose_tile([1e6], (4096, 4096), 4, 32)
    from emfuse.errors import EmfuseError

    assert issubclass(memory.TileMemoryError, EmfuseError)  # the command line prints it as one line
