"""The restoration memory model (``pipeline.restore.memory``) counts what the network's torch path holds."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from emfuse.pipeline.restore import memory
from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig


class PeakLive(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among those the ops inside it allocate
    (a storage is freed when the last tensor viewing it is collected)."""

    def __init__(self) -> None:
        super().__init__()
        self.views: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.now = self.peak = 0

    def _drop(self, key: int) -> None:
        self.views[key] -= 1
        if not self.views[key]:
            self.now -= self.sizes.pop(key)
            del self.views[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr():
                key = t.untyped_storage().data_ptr()
                if key not in self.views:
                    self.views[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                    self.now += self.sizes[key]
                    self.peak = max(self.peak, self.now)
                self.views[key] += 1
                weakref.finalize(t, self._drop, key)
        return out


CONFIGS = [CGRDNConfig(), CGRDNConfig(features=16, growth=8, groups=2, blocks=3, layers=4),
           CGRDNConfig(features=64, growth=8, groups=1, blocks=1, layers=2)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["published", "narrow", "shallow"])
def test_model_counts_the_activations_of_the_torch_path(cfg):
    """Followed tensor by tensor on the CPU, with the torch path CUDA runs (``fast = False``): the
    peak is the model's activations exactly (the input is the caller's, not counted)."""
    torch.manual_seed(0)
    net = CGRDN(cfg).eval()
    net.fast = False
    n, side = 2, 16
    with torch.inference_mode():
        xs = torch.rand(n, 1, side, side)
        with PeakLive() as peak:
            net.core(xs)
    assert peak.peak == 4 * n * side * side * memory.activation_floats_per_pixel(cfg)


def test_batch_rule_on_80_16_and_1_gb():
    cfg = CGRDNConfig()
    weights = 4 * sum(p.numel() for p in CGRDN(cfg).parameters())
    for free, itemsize in [(80e9, 4), (16e9, 2), (1e9, 4), (1e9, 2)]:
        batch = memory.largest_batch(free, 256, cfg, itemsize=itemsize, weight_bytes=weights)
        per_tile = 256**2 * memory.restore_bytes_per_pixel(cfg, itemsize)
        assert 1 <= batch <= memory.MAX_BATCH
        assert batch * per_tile + 2 * weights <= memory.SAFETY * free
        assert batch == memory.MAX_BATCH or (batch + 1) * per_tile + 2 * weights > memory.SAFETY * free
    assert memory.largest_batch(1e9, 256, cfg) == 11  # 0.8 GB / (65536 px x 1104 B)
    assert memory.choose_batch(None, 256, cfg).batch == memory.DEFAULT_BATCH  # the CPU keeps today's batch
    assert memory.choose_batch(80e9, 256, torch.nn.Identity()).batch == memory.DEFAULT_BATCH  # no model
    with pytest.raises(memory.BatchMemoryError, match="--device cpu"):
        memory.choose_batch(1e7, 256, cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA torch")
def test_cuda_peak_fits_what_the_batch_rule_plans_for():
    """On the GPU the allocator's peak (cuDNN workspaces included) stays within what the batch rule
    lets a batch take: the model's bytes over the safety fraction."""
    cfg = CGRDNConfig()
    net = CGRDN(cfg).cuda().eval()
    n, side = 4, 256
    x = torch.rand(n, 1, side, side, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        net.core(x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    planned = n * side * side * memory.restore_bytes_per_pixel(cfg)
    assert peak <= planned / memory.SAFETY


def test_the_rule_the_store_records_states_the_constants():
    from emfuse.flows.jobs.restore import BATCH_RULE

    assert f"at most {memory.MAX_BATCH}" in BATCH_RULE["rule"] and f"{memory.SAFETY} x" in BATCH_RULE["rule"]
    assert f"{memory.DEFAULT_BATCH} on the CPU" in BATCH_RULE["rule"]
