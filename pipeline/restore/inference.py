"""Restore images of any size with a restoration network: overlapping tiles, smooth blending.

:func:`restore` cuts each image (or each frame of a ``(frame, y, x)`` stack) into tiles of
``tile`` pixels that overlap by at least ``overlap`` pixels, runs them through the network
in batches of ``batch`` (tiles of all frames mixed) under :func:`torch.inference_mode`, and
blends the outputs back with separable raised-cosine windows (the overlap-blend policy of
:mod:`emfuse.pipeline.tiles`, :class:`~emfuse.pipeline.tiles.BlendGrid`):

- on a side shared with a neighbouring tile the window is 0 over the outer ``overlap // 4``
  pixels (where the tile lacked context), rises as ``sin^2`` over the next ``overlap / 2``
  and is 1 inside; where two tiles overlap by exactly ``overlap`` their windows sum to 1;
- on a side at the image border the window stays 1, so border pixels are fully covered;
- the windows are divided by their sum over all tiles, so where the tiles agree the blend
  gives back their common value exactly, and there are no seams.

A network that acts locally with a receptive radius of at most ``overlap // 4`` pixels
therefore gives the same result tiled as on the whole image.

Networks with per-image standardisation (:class:`~emfuse.pipeline.restore.cgrdn.CGRDN`: a
``standardise`` module and a ``core`` method) are, by default (``stats="image"``), fed
every tile standardised with the mean and std of its *whole frame*, and only the residual
network (``core``) is tiled; tiles then do not each see their own brightness range, and an
image no larger than a tile gives exactly ``model(image)``. ``stats="tile"`` runs the full
network on each tile instead (each tile standardised alone), as ``tk_r_em``'s
``predict_patch_based`` does. Tile origins and sizes are multiples of the network's
down-sampling factor (``cfg.scale``), and frames are padded at the bottom and right to
such a multiple (reflecting), as the network does itself.

Examples
--------
>>> import numpy as np, torch
>>> net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
>>> _ = torch.nn.init.constant_(net.weight, 1 / 9)
>>> image = np.random.default_rng(0).random((300, 301), dtype=np.float32)
>>> out = restore(image, net, tile=128, overlap=16)
>>> out.shape, out.dtype
((300, 301), dtype('float32'))
>>> whole = net(torch.from_numpy(image)[None, None]).detach().numpy()[0, 0]
>>> bool(np.abs(out - whole)[1:-1, 1:-1].max() < 1e-5)
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch

from emfuse.errors import InputError, NotAvailableHere

from ..tiles import BlendGrid

__all__ = ["compile_network", "min_image_size", "resolve_device", "resolve_dtype", "restore", "tile_network"]

#: Pixels a side the network needs after its down-sampling: below this its 3 x 3 convolutions
#: and the reflecting pad see more padding than image, and the output means nothing.
MIN_DOWNSAMPLED_PX = 8

#: Names accepted for ``dtype`` besides :class:`torch.dtype` objects.
DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


# -- devices, precision, models ------------------------------------------------------------


def resolve_device(device: Any, model: torch.nn.Module | None = None) -> torch.device:
    """The torch device to run on: ``device``, else the model's, else the CPU.

    Raises a ``RuntimeError`` naming the fix when CUDA is asked for but not usable.

    Examples
    --------
    >>> resolve_device(None)
    device(type='cpu')
    """
    if device is None:
        param = next(iter(model.parameters()), None) if model is not None else None
        return param.device if param is not None else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise NotAvailableHere(
            f"device {str(device)!r} asked for, but {build} (torch {torch.__version__}); "
            "run on a GPU node with a CUDA build of torch, or use device 'cpu'"
        )
    return dev


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """The autocast dtype for ``dtype`` (a torch dtype or a name), ``None`` for float32.

    Examples
    --------
    >>> resolve_dtype("bf16"), resolve_dtype(None)
    (torch.bfloat16, None)
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPE_NAMES:
            raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
        dtype = DTYPE_NAMES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InputError(f"dtype must be float32, bfloat16 or float16, not {dtype}")
    return None if dtype == torch.float32 else dtype


def _prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The model in eval mode on ``device`` (in the memory format asked), changed only if needed.

    A model already prepared is left untouched, so that threads sharing one model (the
    restore job's workers) never modify it while another thread runs it.
    """
    if model.training:
        model.eval()
    params = list(model.parameters())
    if any(p.device.type != device.type or device.index not in (None, p.device.index) for p in params):
        model.to(device)
    if channels_last and any(p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last)
                             for p in params):
        model.to(memory_format=torch.channels_last)
    return model


def _multiple(model: torch.nn.Module) -> int:
    """The size multiple the network needs (its down-sampling factor), 1 if it does not say."""
    return int(getattr(getattr(model, "cfg", None), "scale", 1) or 1)


def min_image_size(model: torch.nn.Module) -> int:
    """The smallest height and width (px) an image must have for ``model`` to restore it.

    :data:`MIN_DOWNSAMPLED_PX` pixels at the network's down-sampled scale (``cfg.scale``).

    >>> min_image_size(torch.nn.Identity())
    8
    """
    return MIN_DOWNSAMPLED_PX * _multiple(model)


def _standardises(model: torch.nn.Module) -> bool:
    """True for networks that standardise each image and expose the residual network (CGRDN)."""
    return callable(getattr(model, "core", None)) and hasattr(model, "standardise")


def _frame_stats(stack: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mean and population std (clamped at ``floor``), shape (F, 1, 1)."""
    mean = stack.mean(axis=(1, 2), dtype=np.float64, keepdims=True)
    std = np.sqrt(np.square(stack - mean, dtype=np.float64).mean(axis=(1, 2), keepdims=True))
    return mean, np.maximum(std, floor)


def _pad_to_multiple(stack: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (F, H, W) at the bottom and right to multiples of ``multiple`` (reflecting)."""
    ph, pw = -stack.shape[1] % multiple, -stack.shape[2] % multiple
    if not (ph or pw):
        return stack
    mode = "reflect" if min(stack.shape[1:]) >= 2 else "edge"
    return np.pad(stack, ((0, 0), (0, ph), (0, pw)), mode=mode)


def tile_network(model: torch.nn.Module, stats: str = "image") -> Callable[[torch.Tensor], torch.Tensor]:
    """What :func:`restore` runs on each batch of tiles: the residual network (``core``) of a network
    that standardises each image when ``stats="image"``, else the whole network."""
    return model.core if stats == "image" and _standardises(model) else model


def compile_network(net: Callable[[torch.Tensor], torch.Tensor], device: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` compiled for the device: :func:`torch.compile` with ``mode="reduce-overhead"`` on CUDA.

    That mode records the network's kernels as CUDA graphs, replayed for each batch without
    launching every kernel from Python; a graph is reused only for the shapes it was recorded
    with, so :func:`restore` given a compiled network pads the last batch to the full batch
    (every batch of a job then has one shape). The first call of each shape compiles (seconds
    to a minute); the compiled network is kept per worker (the restore job caches it with
    :func:`emfuse.flows.jobs.runner.worker_cached`). On the CPU ``net`` is returned as it is,
    with a note: the CGRDN's CPU path already runs fused oneDNN kernels in preallocated
    buffers, which the compiler cannot improve on.

    Examples
    --------
    >>> net = torch.nn.Identity()
    >>> compile_network(net, "cpu") is net  # doctest: +ELLIPSIS
    note: ...
    True
    """
    if torch.device(device).type != "cuda":
        # said once per compile: a job's worker compiles once and keeps the result
        print("note: --compile applies to CUDA devices only (torch.compile with CUDA graphs); "
              "on the CPU the network runs as it is")
        return net
    return torch.compile(net, mode="reduce-overhead", dynamic=False)


# -- the batched, blended run ---------------------------------------------------------------


def _batches(n_frames: int, n_tiles: int, batch: int) -> Iterator[list[tuple[int, int]]]:
    """(frame, tile) pairs in groups of ``batch``, frame-major."""
    pairs = [(f, k) for f in range(n_frames) for k in range(n_tiles)]
    for i in range(0, len(pairs), batch):
        yield pairs[i:i + batch]


def _run_tiles(
    net: Callable[[torch.Tensor], torch.Tensor],
    stack: np.ndarray,
    grid: BlendGrid,
    *,
    batch: int,
    device: torch.device,
    autocast: torch.dtype | None,
    channels_last: bool,
    fixed_batch: bool = False,
) -> np.ndarray:
    """Blend ``net``'s outputs over every tile of every frame of ``stack`` (F, H, W).

    ``fixed_batch``: every forward pass gets ``batch`` tiles, the last one padded with zeros
    (whose outputs are dropped), so that a network compiled for one shape is reused.
    """
    out = np.zeros(stack.shape, dtype=np.float32)
    batch = min(batch, stack.shape[0] * len(grid))  # a larger buffer would only hold padding
    buf = np.zeros((batch, 1, *grid.shape), dtype=np.float32)
    cast = (torch.autocast(device.type, dtype=autocast) if autocast is not None
            else contextlib.nullcontext())
    with torch.inference_mode(), cast:
        for group in _batches(stack.shape[0], len(grid), batch):
            for i, (f, k) in enumerate(group):
                buf[i, 0] = stack[(f, *grid.region(k))]
            x = torch.from_numpy(buf if fixed_batch else buf[:len(group)]).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = net(x).float().cpu().numpy()
            for i, (f, k) in enumerate(group):
                out[(f, *grid.region(k))] += y[i, 0] * grid.weights(k)
    return out


def restore(
    image: Any,
    model: torch.nn.Module,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch: int = 8,
    device: Any = None,
    dtype: Any = None,
    channels_last: bool = False,
    stats: Literal["image", "tile"] = "image",
    compile: bool = False,
    network: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Restore an image ``(y, x)`` or a stack ``(frame, y, x)`` of any size with ``model``.

    Parameters
    ----------
    image
        2D image or 3D stack in the units the network expects (raw counts for r_em).
    model
        A network mapping ``(N, 1, H, W)`` float32 to the same shape, e.g. from
        :func:`emfuse.pipeline.restore.load_model`. It is put in eval mode and moved to
        ``device`` (in place).
    tile, overlap
        Tile side and minimum overlap in pixels; ``2 * overlap <= tile``. Networks acting
        within ``overlap // 4`` pixels give the same result as on the whole image.
    batch
        Tiles per forward pass (tiles of several frames share a batch).
    device
        ``"cpu"``, ``"cuda"``, ... (default: where the model is).
    dtype
        ``None``/``torch.float32``, or ``torch.bfloat16`` (also ``"bf16"``) /
        ``torch.float16`` to run under autocast; the result is always float32.
    channels_last
        Run model and tiles in the channels-last memory format (faster on some CPUs).
    stats
        ``"image"``: networks with per-image standardisation use each frame's statistics
        for all its tiles; ``"tile"``: each tile is standardised alone (see module notes).
    compile
        Run the tiles through :func:`compile_network` (CUDA graphs on a CUDA device; on the CPU
        a no-op with a note), every batch padded to ``batch`` tiles so one graph serves them all.
    network
        The network already compiled (e.g. kept by a worker): ``compile_network(tile_network(model,
        stats), device)``; implies ``compile``.

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``image``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> stack = np.ones((3, 40, 50), dtype=np.float32)
    >>> restore(stack, torch.nn.Identity(), tile=32, overlap=8).shape
    (3, 40, 50)
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise InputError(f"expected an image (y, x) or a stack (frame, y, x), got shape {array.shape}")
    if 0 in array.shape:
        raise InputError(f"the image is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise InputError("the image contains NaN or Inf values; mask or interpolate the bad pixels first")
    if tile < 1 or overlap < 0 or 2 * overlap > tile or batch < 1:
        raise InputError(f"need tile >= 1, 0 <= overlap <= tile / 2, batch >= 1; got tile {tile}, "
                         f"overlap {overlap}, batch {batch}")
    if stats not in ("image", "tile"):
        raise InputError(f"stats must be 'image' or 'tile', not {stats!r}")
    stack = array if array.ndim == 3 else array[None]
    dev = resolve_device(device, model)
    autocast = resolve_dtype(dtype)
    model = _prepare_model(model, dev, channels_last)
    multiple = _multiple(model)
    h, w = stack.shape[1:]
    shared_stats = stats == "image" and _standardises(model)
    if shared_stats:
        mean, std = _frame_stats(stack, float(getattr(model.standardise, "floor", 0.0)))
        stack = ((stack - mean) / std).astype(np.float32)
    compiled = compile or network is not None
    net = network if network is not None else tile_network(model, stats)
    if compile and network is None:
        net = compile_network(net, dev)
    padded = _pad_to_multiple(stack, multiple)
    grid = BlendGrid.make(padded.shape[1:], tile, overlap, multiple)
    out = _run_tiles(net, padded, grid, batch=batch, device=dev, autocast=autocast,
                     channels_last=channels_last, fixed_batch=compiled and dev.type == "cuda")[:, :h, :w]
    if shared_stats:
        out = (std * (out + stack) + mean).astype(np.float32)
    return out if array.ndim == 3 else out[0]
