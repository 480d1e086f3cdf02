"""One runner for every tiled job: a job is its science plus a short declaration.

A job cuts its output into *units of work* (tiles of an image, blocks of frames) that can run
in any order on any worker and are recorded as done one by one, so that a crashed run resumes
where it stopped. What differs between jobs is only the science; this module owns the rest,
in the spirit of a LiberTEM UDF:

- a job module declares a :class:`TiledJob` (``SPEC``): its ``prepare`` stages (inputs,
  normalisation, the weights search, a fitted preprocessing), its ``units``, how a unit reads
  its ``window`` and ``process``-es it into arrays to write and a small payload, ``merge``
  (what runs on the gathered results, e.g. the drift registration), ``finalise`` and
  ``summary``;
- :func:`compute` runs the stages between the job's ``plan`` and its finalisation on a Dask
  client: ``prepare``, every unfinished unit (one Dask task each, gathered with a progress
  bar, the first error cancelling the rest), ``merge``, each with its wall time in the store's
  ``timing``; :func:`finalise` checks every unit is recorded, calls the job's own ``finalise``
  and marks the store complete. The Dask arrays of the driver-side stages of a small job (its
  input at most :data:`DRIVER_PASS_BYTES`) compute on threads in the driver, not on the cluster
  (:func:`driver_passes`);
- on a worker :func:`run_unit` reads the unit's window, places it on the worker's device
  (:func:`worker_device`: a GPU when the worker has one and the job allows it; CuPy arrays for
  array kernels, a CUDA torch device for networks), processes it, writes the arrays as
  chunk-aligned regions, then its payload and ``done`` flag (a crash leaves either a finished
  unit or one that is redone), and says which device ran it; the driver records the devices
  in the store's ``devices`` attribute;
- on a GPU the device section of a unit (memory check, copy in, ``process``, copy back) holds
  the device's lock (:func:`device_gate`), one unit at a time, while the worker's other threads
  read the next window into pinned memory (:func:`stage`) and write the last results: reads and
  writes overlap the compute. On the CPU units run side by side, unlocked, as before;
- :func:`worker_cached` keeps a worker process's expensive objects (a network) once per key.

The lock, the Prefect tasks and the batch are the same for every job
(:func:`emfuse.flows.jobs.run_job`, :mod:`emfuse.flows.jobs.stages`), so a fourth job is one
module with a ``plan``, a ``SPEC`` and an entry in :data:`emfuse.flows.jobs.registry.JOBS`.

Examples
--------
A job that writes each tile's mean (see ``tests/flows/test_runner.py`` for a whole one):

>>> class TileMean(TiledJob):  # doctest: +SKIP
...     name = "tile-mean"
...     def units(self, job):
...         return [Unit(t.index, t) for t in tile_grid(job.shape, job.tile, 0)]
...     def read(self, job, unit):
...         return {"image": read_region(job.source, "image", unit.region.window)}
...     def process(self, job, unit, window, context, device):
...         return UnitOutput({"mean": (unit.region.core, window["image"].mean() + 0 * window["image"])})
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from emfuse.errors import EmfuseError
from emfuse.pipeline.backend import to_numpy
from emfuse.stores.errors import on_disk_full
from emfuse.stores.layout import ATTR_DEVICES
from emfuse.stores.outputs import write_region
from emfuse.stores.progress import TileRecord
from emfuse.stores.zarrio import mark_complete, read_attrs, timed, update_attrs

from .gather import gather

if TYPE_CHECKING:  # distributed loads in a second: not for a command line that only checks its arguments
    from distributed import Client

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")  # what a job's ``device`` option may say



class DeviceError(EmfuseError, ValueError):
    """A ``device`` option that cannot be used here; the message names the fix."""


# what this worker process keeps between tasks (networks), by key
_CACHE: dict[Any, Any] = {}
_CACHE_LOCK = threading.Lock()

#: windows of one device in a worker between their read and the end of their compute: the one
#: computing and the next, read ahead (a GPU worker with more threads does not hold more windows)
PREFETCH_WINDOWS = 2


@dataclass(frozen=True)
class DeviceGate:
    """What the units of one device in a worker process share: ``lock`` (the device section,
    one unit at a time) and ``slots`` (at most :data:`PREFETCH_WINDOWS` windows read ahead)."""

    lock: contextlib.AbstractContextManager[Any]
    slots: contextlib.AbstractContextManager[Any]


_OPEN_GATE = DeviceGate(contextlib.nullcontext(), contextlib.nullcontext())
_GATES: dict[str, DeviceGate] = {}
_GATES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Unit:
    """One unit of work: its ``key`` in the progress record, its ``region`` (a tile, a block of
    frames: whatever the job's ``read`` and ``process`` understand) and how far it moves the
    progress bar (``size``: frames of a block; 1 for a tile)."""

    key: tuple[int, int]
    region: Any
    size: int = 1


@dataclass
class UnitOutput:
    """What one unit produced: arrays to write and a small payload for the progress record.

    ``writes`` maps a variable of the output store to (region, values); values may be numpy or
    CuPy (they are copied to the host before writing). ``payload`` goes to the record's
    ``payload`` array (cost curves, counts of clipped pixels), summed or read by ``finalise``.
    """

    writes: Mapping[str, tuple[tuple[slice, ...], Any]]
    payload: np.ndarray | None = None


@dataclass
class TiledJob:
    """The declaration of a tiled job; subclass it and override what the job does.

    ``name`` is the job's progress record in the store (``_progress/<name>``); ``desc`` and
    ``unit`` label the progress bar; ``stage`` is the name of the units' wall time in the
    store's ``timing``; ``array_kind`` says how a window is placed on a GPU: ``"xp"`` (its
    arrays become CuPy arrays for kernels written against ``xp``) or ``"torch"`` (the window
    stays numpy, the job's network runs on the device it is given); ``errors`` are the
    exceptions a unit returns to the driver as values (by default every
    :class:`emfuse.EmfuseError`: bad input, reported in one line without a worker's traceback).
    """

    name: str = ""
    desc: str = "computing"
    unit: str = "tile"
    stage: str = "tiles"
    array_kind: str = "xp"
    errors: tuple[type[BaseException], ...] = (EmfuseError,)
    lock_cpu: bool = False

    def prepare(self, job: Any, client: Client, *, progress: bool) -> tuple[Any, Any]:
        """Driver-side stages before the units; returns the job and the ``context`` every unit gets."""
        return job, None

    def units(self, job: Any) -> Sequence[Unit]:
        """Every unit of the job, done or not."""
        raise NotImplementedError

    def n_units(self, job: Any) -> int:
        """How many units the job has (before ``prepare``: a small job may run on threads)."""
        return len(self.units(job))

    def read(self, job: Any, unit: Unit) -> dict[str, np.ndarray]:
        """Worker side: the unit's window, numpy arrays by name."""
        raise NotImplementedError

    def check_memory(self, job: Any, unit: Unit, device: str) -> None:
        """Worker side, before the window goes to ``device``: refuse (:class:`DeviceError`, naming
        the fix) a unit that would not fit its memory (default: no check)."""

    def process(self, job: Any, unit: Unit, window: dict[str, Any], context: Any, device: str) -> UnitOutput:
        """Worker side: the science of one unit, on ``device`` ("cpu", "cuda:0", ...)."""
        raise NotImplementedError

    def merge(self, job: Any, client: Client, *, progress: bool) -> None:
        """Driver-side stages after every unit is done (default: none)."""

    def finalise(self, job: Any, record: TileRecord) -> None:
        """Driver side, every unit done: what is summed over units, the warnings. The runner then
        marks the store complete."""

    def summary(self, job: Any) -> dict[str, Any]:
        """What the user wants to know afterwards (JSON types)."""
        return {"store": job.out}


# -- worker side --------------------------------------------------------------------------------


def worker_device(requested: str = "auto", array_kind: str = "xp") -> str:
    """The device this worker runs a unit on: ``"cpu"``, or ``"cuda:N"`` for its GPU.

    ``"auto"`` takes the worker's GPU when it has one (a ``local-gpu`` or SLURM ``gpus``
    worker of dask-cuda sees its own GPU) and the kernels can use it (CuPy for ``"xp"``
    kernels, CUDA torch for ``"torch"`` networks); ``"cuda"`` insists, and a worker without a
    usable GPU raises :class:`DeviceError` naming the fix; ``"cpu"`` never uses a GPU.

    Examples
    --------
    >>> worker_device("cpu")
    'cpu'
    """
    if requested == "cpu" or requested.startswith("cuda:"):
        return requested
    if array_kind == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        need = "a CUDA build of torch"
    else:
        from emfuse.pipeline.backend import gpu_available

        if gpu_available():
            import cupy

            return f"cuda:{cupy.cuda.runtime.getDevice()}"
        need = "CuPy (pip install 'emfuse[gpu]')"
    if requested == "cuda":
        raise DeviceError(f"device 'cuda' asked for, but this worker has no CUDA GPU usable with {need}; "
                          "use device auto or cpu, or run on GPU workers (cluster profile local-gpu, "
                          "or slurm with gpus)")
    return "cpu"


def gpu_free_bytes() -> int:
    """Free memory of this worker's current CUDA device for CuPy arrays, bytes: the driver's free
    memory plus what CuPy's pool holds unused."""
    import cupy

    return int(cupy.cuda.Device().mem_info[0] + cupy.get_default_memory_pool().free_bytes())


def check_device_option(device: str) -> None:
    """Refuse a ``device`` option other than auto, cpu or cuda (whether the GPU is there is checked
    by the worker that runs the unit: :func:`worker_device`).

    Examples
    --------
    >>> check_device_option("auto")
    >>> check_device_option("gpu0")
    Traceback (most recent call last):
    ...
    emfuse.flows.jobs.runner.DeviceError: unknown device 'gpu0'; use auto (the workers' GPU when they have one), cpu or cuda
    """
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; use auto (the workers' GPU when they have one), cpu or cuda")


def device_gate(device: str, *, lock_cpu: bool = False) -> DeviceGate:
    """The lock and the read-ahead slots of ``device`` in this worker process.

    On a GPU one unit at a time runs its device section (memory check, copies, ``process``):
    two units computing at once would only share the GPU, and each memory check would miss what
    the other is about to allocate. The worker's other threads meanwhile read the next window
    and write the last results, so with two or more threads per GPU worker the device does not
    wait for the disk. On the CPU the units run side by side, unlocked, as they always did,
    unless ``lock_cpu`` (the job's) asks for the gate there too. The gate is per process and
    device: threads of one process that share a GPU share its gate.

    Examples
    --------
    >>> device_gate("cuda:0") is device_gate("cuda:0")
    True
    >>> isinstance(device_gate("cpu").lock, contextlib.nullcontext)
    True
    """
    if device == "cpu" and not lock_cpu:
        return _OPEN_GATE
    with _GATES_LOCK:
        if device not in _GATES:
            _GATES[device] = DeviceGate(threading.Lock(), threading.BoundedSemaphore(PREFETCH_WINDOWS))
        return _GATES[device]


def stage(window: Mapping[str, Any], device: str, array_kind: str) -> dict[str, Any]:
    """The window ready to go to ``device``: for ``"xp"`` kernels on a GPU its arrays copied into
    pinned (page-locked) host memory, else as they are.

    This runs before the device lock, so the copy into pinned memory overlaps another unit's
    compute, and the copy to the device in the lock (:func:`place`) is one DMA at the bus's
    speed instead of CuPy's own staging through a pinned buffer. Networks (``"torch"``) get
    the window as it is: they copy batches of their own, not the window, to the device.

    Examples
    --------
    >>> stage({"a": np.zeros(2), "mask": None}, "cpu", "xp")
    {'a': array([0., 0.]), 'mask': None}
    """
    if device == "cpu" or array_kind != "xp":
        return dict(window)
    return {name: None if a is None else _pinned_copy(np.asarray(a)) for name, a in window.items()}


def _pinned_copy(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` in pinned host memory from CuPy's pinned pool (reused between units:
    no page-locking call per window)."""
    import cupyx

    pinned = cupyx.empty_pinned(array.shape, array.dtype)
    pinned[...] = array
    return pinned


def place(window: Mapping[str, Any], device: str, array_kind: str) -> dict[str, Any]:
    """The window's arrays on ``device``: CuPy arrays for ``"xp"`` kernels on a GPU, else as they are.

    From pinned arrays (:func:`stage`) CuPy copies straight to the device on the current
    stream, in order with the kernels of ``process`` that follow.

    Examples
    --------
    >>> place({"a": np.zeros(2)}, "cpu", "xp")["a"]
    array([0., 0.])
    """
    if device == "cpu" or array_kind != "xp":
        return dict(window)
    import cupy

    return {name: None if a is None else cupy.asarray(a) for name, a in window.items()}


def to_host(values: Any) -> np.ndarray:
    """``values`` on the host, to be written: a CuPy array is copied into pinned memory (one DMA,
    waited for, in the device section), a numpy array is returned as it is.

    Examples
    --------
    >>> to_host(np.ones(2))
    array([1., 1.])
    """
    if not type(values).__module__.startswith("cupy"):
        return to_numpy(values)
    import cupyx

    return values.get(out=cupyx.empty_pinned(values.shape, values.dtype))


def worker_cached(key: Any, load: Callable[[], Any]) -> Any:
    """``load()`` once per worker process and ``key``, then the same object (a network: a forward
    pass does not change it, so the tasks of a worker share it).

    Examples
    --------
    >>> worker_cached(("doc", 1), lambda: object()) is worker_cached(("doc", 1), lambda: None)
    True
    """
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def run_unit(spec: TiledJob, job: Any, unit: Unit, context: Any) -> tuple[tuple[int, int], str] | BaseException:
    """Worker task: read, place, process and write one unit, then record it; returns (key, device).

    The read (and the pinned staging) and the write run outside the device's lock
    (:func:`device_gate`), so on a GPU worker with two threads one unit's read and another's
    write overlap a third's compute. An error of the job's ``errors`` comes back as a value,
    raised by the driver (:func:`emfuse.flows.jobs.gather.gather`), so a bad input is one line,
    not a worker's traceback.
    """
    try:
        device = worker_device(getattr(job, "device", "auto"), spec.array_kind)
        writes, payload = read_and_compute(spec, job, unit, context, device)
        for name, (region, values) in writes.items():  # beside the next unit's compute
            write_region(job.out, name, region, values)
        TileRecord.open(job.out, spec.name).mark(unit.key, payload)
        return unit.key, device
    except spec.errors as exc:
        return exc


def read_and_compute(spec: TiledJob, job: Any, unit: Unit, context: Any,
                     device: str) -> tuple[dict[str, tuple[tuple[slice, ...], np.ndarray]], np.ndarray | None]:
    """Read the unit's window (ahead, while another unit computes), then compute it under the
    device's lock (:func:`compute_unit`); returns the host arrays to write and the payload.

    The staged window is released on return, before the write: a worker's pinned memory holds
    the windows of its read-ahead slots, not those of the results being written.
    """
    gate = device_gate(device, lock_cpu=spec.lock_cpu)
    with gate.slots:  # a window read ahead counts until its compute is done
        staged = stage(spec.read(job, unit), device, spec.array_kind)
        with gate.lock:
            return compute_unit(spec, job, unit, staged, context, device)


def compute_unit(spec: TiledJob, job: Any, unit: Unit, staged: dict[str, Any], context: Any,
                 device: str) -> tuple[dict[str, tuple[tuple[slice, ...], np.ndarray]], np.ndarray | None]:
    """The device section of a unit: the memory check, the copy in, ``process``, the copies back.

    Returns the arrays to write, on the host, by variable, and the payload. Run under the
    device's lock, the memory check sees the device as the last unit left it.
    """
    if device != "cpu":
        spec.check_memory(job, unit, device)
    output = spec.process(job, unit, place(staged, device, spec.array_kind), context, device)
    writes = {name: (region, to_host(values)) for name, (region, values) in output.writes.items()}
    payload = None if output.payload is None else np.asarray(to_host(output.payload), dtype=np.float64)
    return writes, payload


# -- driver side --------------------------------------------------------------------------------


def run_units(spec: TiledJob, job: Any, context: Any, client: Client, *, progress: bool = True) -> int:
    """Every unfinished unit on the cluster, one task each; returns how many ran now.

    The devices they ran on are added to the store's ``devices`` attribute.
    """
    done = TileRecord.open(job.out, spec.name).done_tiles()
    todo = [u for u in spec.units(job) if u.key not in done]
    if not todo:
        return 0
    n = len(todo)
    futures = client.map(run_unit, [spec] * n, [job] * n, todo, [context] * n, pure=False)
    sizes = {f.key: u.size for f, u in zip(futures, todo)}
    results = gather(client, futures, desc=spec.desc, unit=spec.unit, progress=progress, sizes=sizes)
    record_devices(job.out, {device for _, device in results})
    return n


def record_devices(out: str, devices: set[str]) -> None:
    """Add ``devices`` to the store's ``devices`` attribute (a resumed run may add another)."""
    known = set(read_attrs(out).get(ATTR_DEVICES, []))
    if not devices <= known:
        update_attrs(out, **{ATTR_DEVICES: sorted(known | devices)})


#: A job whose input store holds at most this many bytes makes its driver-side array passes
#: (``prepare``, ``merge``, ``finalise``: copying the inputs, the normalisation's minima and
#: maxima, sums) on threads in the driver instead of on the cluster. For a small dataset each
#: pass is milliseconds of work, and a round trip to the workers, queued behind the previous
#: job's figures, cost 1-2 s per job in a batch (docs/benchmarks.md, "Round 3"). Work a job
#: submits to ``client`` itself (its units; restore's drift registration and adaptation) still
#: goes to the cluster; the fusion's weights search runs in the driver either way.
DRIVER_PASS_BYTES = 256 * 2**20


def input_bytes(source: str | Path) -> int:
    """Bytes of the arrays in the input store ``source``, from their metadata (nothing is read; a
    few ms, where opening the store with xarray took 20-80 ms). Remembered per store and version
    of its root metadata: a job asks at every stage."""
    try:
        meta = (Path(source) / "zarr.json").stat()
    except OSError:
        return _input_bytes.__wrapped__(str(source), None)  # not a local store: asked afresh
    return _input_bytes(str(source), (meta.st_mtime_ns, meta.st_ino, meta.st_size))


@functools.lru_cache(maxsize=256)
def _input_bytes(source: str, version: tuple[int, int, int] | None) -> int:
    group = zarr.open_group(source, mode="r", zarr_format=3)
    return int(sum(array.nbytes for _, array in group.arrays()))


def driver_passes(source: str | Path) -> contextlib.AbstractContextManager:
    """Where Dask computes the driver-side passes of a job on the input store ``source`` (its
    plan's checks, ``prepare``, ``merge``, ``finalise``, the summary): on threads of this process
    when the input is at most :data:`DRIVER_PASS_BYTES`, else on the default client (the
    cluster)."""
    if input_bytes(source) <= DRIVER_PASS_BYTES:
        import dask

        return dask.config.set(scheduler="threads")
    return contextlib.nullcontext()


def compute(spec: TiledJob, job: Any, client: Client, *, progress: bool = True) -> tuple[Any, int]:
    """The stages between ``plan`` and ``finalise``: ``prepare``, the units, ``merge``.

    Returns the job (as ``prepare`` left it: e.g. with its weights chosen) and the number of
    units computed now. A full disk on any write is one line naming the store and the fix.
    The driver-side passes of a small job run in this process (:func:`driver_passes`).
    """
    with on_disk_full(job.out):
        with driver_passes(job.source):
            job, context = spec.prepare(job, client, progress=progress)
        with timed(job.out, spec.stage):
            n = run_units(spec, job, context, client, progress=progress)
        with driver_passes(job.source):
            spec.merge(job, client, progress=progress)
    return job, n


def finalise(spec: TiledJob, job: Any) -> None:
    """Check every unit is recorded, run the job's ``finalise``, mark the store complete."""
    record = TileRecord.open(job.out, spec.name)
    expected = {u.key for u in spec.units(job)}
    missing = expected - record.done_tiles()
    if missing:
        raise RuntimeError(f"{job.out}: {len(missing)} of {len(expected)} {spec.unit}s are not finished; "
                           "rerun the same command to complete them.")
    with on_disk_full(job.out), driver_passes(job.source):
        spec.finalise(job, record)
        mark_complete(job.out)


def torch_threads_share() -> int | None:
    """This worker's share of the cores for torch, or None outside a worker.

    In a worker process of a local cluster the profile has computed the share
    (``NUMBA_NUM_THREADS``); in a threaded worker it is the cores divided by the worker's
    threads. Torch's OpenMP threads wait for each other at every layer: with more threads than
    free cores a forward pass was measured 5-10x slower than with one thread.
    """
    share = os.environ.get("NUMBA_NUM_THREADS")  # set per worker process by emfuse.cluster.profiles
    if share and share.isdigit():
        return int(share)
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except ValueError:  # not in a worker
        return None
    import torch

    from emfuse.cluster.profiles import available_cores

    return max(1, min(torch.get_num_threads(), available_cores() // max(1, threads)))
