"""Tiled restoration: exact where tiles agree, equal to whole-image inference for local networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig
from emfuse.pipeline.restore.inference import restore


class Offset(torch.nn.Module):
    """x + c: every tile agrees with every other."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c


class TileMean(torch.nn.Module):
    """Each tile replaced by its mean: neighbouring tiles disagree, the blend must stay smooth."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)


def local_net(seed: int = 0) -> torch.nn.Module:
    """Two 3x3 convolutions with a ReLU: receptive radius 2 pixels."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 1, 3, padding=1)).eval()


def tiny_cgrdn(seed: int = 0) -> CGRDN:
    torch.manual_seed(seed)
    return CGRDN(CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=2)).eval()


def image(shape, seed=0):
    return (np.random.default_rng(seed).random(shape, dtype=np.float32) * 1000).astype(np.float32)


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (2, 7), (301, 257), (64, 200), (3, 65, 66)])
def test_identity_gives_the_image_back(shape):
    x = image(shape)
    out = restore(x, torch.nn.Identity(), tile=64, overlap=16, batch=3)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=2e-7, atol=0)


def test_local_operator_tiled_equals_whole_image():
    net, x = local_net(), image((130, 117))
    with torch.no_grad():
        whole = net(torch.from_numpy(x)[None, None])[0, 0].numpy()
    # receptive radius 2 <= overlap // 4: exact (border tiles see the image border as the whole run does)
    out = restore(x, net, tile=48, overlap=8, batch=4)
    np.testing.assert_allclose(out, whole, atol=1e-5 * np.abs(whole).max(), rtol=0)
    # too little overlap: the tiles' borders leak in
    assert np.abs(restore(x, net, tile=48, overlap=2) - whole).max() > 1e-3 * np.abs(whole).max()


def test_constant_offset_has_no_seams_and_disagreeing_tiles_blend_smoothly():
    x = image((150, 170))
    np.testing.assert_allclose(restore(x, Offset(5.0), tile=48, overlap=16), x + 5.0, rtol=1e-6)
    ramp = np.add.outer(np.arange(150.0), np.arange(170.0)).astype(np.float32)
    out = restore(ramp, TileMean(), tile=48, overlap=16)
    # tile means differ by ~32 between neighbours (step 32 px on a slope 1 ramp); a hard seam
    # would jump by that much, the raised-cosine blend (over 8 px) by at most pi/2 * 32 / 8 per pixel
    assert np.abs(np.diff(out, axis=0)).max() < 7 and np.abs(np.diff(out, axis=1)).max() < 7


def test_batching_over_frames_equals_frame_by_frame():
    net, stack = tiny_cgrdn(), image((3, 50, 70))
    batched = restore(stack, net, tile=32, overlap=8, batch=7)
    single = np.stack([restore(f, net, tile=32, overlap=8, batch=1) for f in stack])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-3)


def test_cgrdn_image_smaller_than_a_tile_is_the_plain_forward():
    net, x = tiny_cgrdn(), image((45, 37))
    with torch.no_grad():
        plain = net(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(restore(x, net, tile=64, overlap=16), plain, rtol=1e-5, atol=1e-3)
    # per-tile standardisation is a different (published patch-based) behaviour, still the right shape
    assert restore(x, net, tile=32, overlap=8, stats="tile").shape == x.shape


def test_bf16_and_channels_last_stay_close_to_fp32():
    from emfuse.pipeline.metrics import psnr

    net, x = tiny_cgrdn(), image((96, 96))
    ref = restore(x, net, tile=64, overlap=16)
    np.testing.assert_allclose(restore(x, net, tile=64, overlap=16, channels_last=True), ref,
                               rtol=1e-4, atol=1e-2)
    low = restore(x, tiny_cgrdn(), tile=64, overlap=16, dtype=torch.bfloat16)
    assert low.dtype == np.float32 and psnr(low, ref) > 30


def test_bad_arguments_are_named():
    x = image((20, 20))
    x_nan = x.copy()
    x_nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        restore(x_nan, torch.nn.Identity())
    with pytest.raises(ValueError, match="overlap"):
        restore(x, torch.nn.Identity(), tile=16, overlap=10)
    with pytest.raises(ValueError, match=r"image \(y, x\) or a stack"):
        restore(np.zeros((2, 2, 2, 2)), torch.nn.Identity())
    with pytest.raises(ValueError, match="unknown dtype"):
        restore(x, torch.nn.Identity(), dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="use device 'cpu'"):
        restore(image((8, 8)), torch.nn.Identity(), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch")
def test_cuda_matches_cpu():
    net, x = tiny_cgrdn(), image((2, 100, 80))
    cpu = restore(x, net, tile=64, overlap=16)
    np.testing.assert_allclose(restore(x, tiny_cgrdn(), tile=64, overlap=16, device="cuda"), cpu,
                               rtol=1e-3, atol=1e-1)


def test_compile_on_the_cpu_is_a_noop_with_a_note(capsys):
    net, x = tiny_cgrdn(), image((3, 70, 90))
    eager = restore(x, net, tile=32, overlap=8, batch=4)
    np.testing.assert_array_equal(restore(x, net, tile=32, overlap=8, batch=4, compile=True), eager)
    assert "applies to CUDA devices only" in capsys.readouterr().out


def test_padding_every_batch_to_one_shape_leaves_the_result_unchanged():
    """What a compiled network gets on CUDA (every batch padded to ``batch`` tiles, padding dropped),
    checked on the CPU: the same blend as unpadded batches, and every call one shape."""
    from emfuse.pipeline.restore import inference
    from emfuse.pipeline.tiles import BlendGrid

    net, stack = tiny_cgrdn(), image((3, 64, 80))
    grid = BlendGrid.make(stack.shape[1:], 32, 8, 2)
    shapes = []

    def seen(x):
        shapes.append(tuple(x.shape))
        return net(x)

    common = dict(batch=5, device=torch.device("cpu"), autocast=None, channels_last=False)
    plain = inference._run_tiles(net, stack, grid, **common)
    padded = inference._run_tiles(seen, stack, grid, fixed_batch=True, **common)
    np.testing.assert_array_equal(padded, plain)
    assert len(grid) * 3 % 5 and set(shapes) == {(5, 1, *grid.shape)}  # the last batch was padded
    one = inference._run_tiles(seen, stack[:1], grid, fixed_batch=True, **{**common, "batch": 64})
    np.testing.assert_array_equal(one, plain[:1])
    assert shapes[-1][0] == len(grid)  # a batch larger than the tiles is cut to them


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch")
@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_compiled_matches_eager_on_cuda(dtype):
    """torch.compile with CUDA graphs (reduce-overhead): the same frames as eager, within fp32
    (bf16) rounding, with a last batch padded to the graph's shape."""
    net, x = tiny_cgrdn(), image((3, 100, 80))
    eager = restore(x, net, tile=64, overlap=16, batch=4, device="cuda", dtype=dtype)
    compiled = restore(x, net, tile=64, overlap=16, batch=4, device="cuda", dtype=dtype, compile=True)
    tol = dict(rtol=2e-2, atol=5.0) if dtype else dict(rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(compiled, eager, **tol)
