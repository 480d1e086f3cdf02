"""Single-shot EM image restoration (r_em: Lobato, Friedrich & Van Aert, npj Comput. Mater. 2024).

Models are :class:`~emfuse.pipeline.restore.cgrdn.CGRDN` networks in PyTorch, loaded with
:func:`load_model`:

- ``load_model("r_em:sfr_hrstem")`` (or any of :data:`MODEL_NAMES`): a published network.
  Its weights come from the PyPI package ``tk-r-em`` 1.0.4 (GPLv3; ``pip install
  'emfuse[r_em]'``): the TensorFlow SavedModel is converted once, without TensorFlow
  (:mod:`emfuse.pipeline.restore.weights`), and cached as safetensors in the user cache directory
  (``platformdirs.user_cache_dir("emfuse")/models``, or ``$EMFUSE_CACHE_DIR/models``); later
  loads read only the cache.
- ``load_model("path/to/model.safetensors")``: a model saved by :func:`save_model` (the
  architecture is in the file's safetensors metadata, or in a ``.json`` file beside it).
- ``load_model()`` or ``load_model("default")``: the project's default model,
  ``pipeline/restore/models/default.safetensors`` (HR-STEM); ``load_model("tem-low")`` and the
  other names of :data:`MODEL_FILES`: the project's model for that modality and resolution.

Weights are only ever read with ``safetensors`` (never unpickled). torch is imported on the
first call, so importing this package (e.g. for :mod:`.select`) stays cheap. The training
data (specimens, scenes and the distortion models) are simulated in :mod:`emfuse.pipeline.synth`.

Examples
--------
>>> from emfuse.pipeline.restore import load_model  # doctest: +SKIP
>>> net = load_model("r_em:sfr_hrstem")  # doctest: +SKIP
>>> with torch.no_grad():  # doctest: +SKIP
...     restored = net(torch.from_numpy(image)[None, None])[0, 0]  # (H, W) raw units
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InputError, InputFileNotFound, MissingDependency
from ..weights_io import save_safetensors

if TYPE_CHECKING:
    import torch

    from .cgrdn import CGRDN

#: The published r_em networks (STEM, TEM and SEM; high and low resolution).
MODEL_NAMES = tuple(
    f"r_em:sfr_{m}" for m in ("hrstem", "lrstem", "hrtem", "lrtem", "hrsem", "lrsem")
)
R_EM_PACKAGE, R_EM_VERSION = "tk-r-em", "1.0.4"
#: The project's own models, by name: package data in ``pipeline/restore/models/``. ``default``
#: (an HR-STEM model) is there; the others, one per modality and resolution, as they are trained
#: (``--model auto`` picks among those present: :mod:`emfuse.pipeline.restore.select`).
MODEL_FILES: dict[str, Path] = {
    name: Path(__file__).parent / "models" / f"{name}.safetensors"
    for name in ("default", "stem-high", "stem-low", "tem-high", "tem-low", "sem")
}
DEFAULT_MODEL = MODEL_FILES["default"]
_FORMAT = "emfuse-cgrdn-1"  # bump when the state-dict layout changes: old caches are redone

__all__ = ["DEFAULT_MODEL", "MODEL_FILES", "MODEL_NAMES", "cache_dir", "load_model", "restore", "save_model"]


def restore(image: Any, model: Any, **kwargs: Any) -> Any:
    """Restore an image or (frame, y, x) stack by overlapping tiles.

    Parameters
    ----------
    image : array_like
        An image (y, x) or a stack (frame, y, x).
    model : torch.nn.Module
        The network (:func:`load_model`).
    **kwargs
        Passed to :func:`emfuse.pipeline.restore.inference.restore` (``tile``, ``device``...),
        which says what each does.

    Returns
    -------
    numpy.ndarray
        The restored image or stack, the shape of ``image``.
    """
    from .inference import restore as _restore  # torch is imported here, not with the package

    return _restore(image, model, **kwargs)


def cache_dir() -> Path:
    """Where converted models are cached: ``$EMFUSE_CACHE_DIR/models`` or the user cache dir."""
    root = os.environ.get("EMFUSE_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("emfuse")
    return Path(root) / "models"


def save_model(model: CGRDN, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as safetensors, its :class:`CGRDNConfig` in the header metadata.

    The file is written beside its destination and renamed into place, so concurrent
    readers (several Dask workers filling the cache) never see half a file.

    Parameters
    ----------
    model : CGRDN
        The network to write.
    path : str or os.PathLike
        The destination file (``.safetensors``).
    metadata : dict of str to str, optional
        More header entries (the training config, the validation...).

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> from emfuse.pipeline.restore.cgrdn import CGRDN, CGRDNConfig
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "tiny.safetensors"
    >>> cfg = CGRDNConfig(features=8, growth=4, groups=1, blocks=1, layers=1)
    >>> load_model(save_model(CGRDN(cfg), p)).cfg == cfg
    True
    """
    path = Path(path)
    state = {k: v.detach().to("cpu", dtype=v.dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "format": _FORMAT, "config": json.dumps(model.cfg.to_dict())}
    return save_safetensors(state, path, meta)


def _load_file(path: Path) -> tuple[CGRDN, dict[str, str]]:
    """A CGRDN and the metadata of a safetensors file; ValueError (naming the file) if not one."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    from .cgrdn import CGRDN, CGRDNConfig

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        # From bytes, not load_file: its tensors would be memory-mapped from the file, and a
        # file rewritten in place under a live model crashes the process (SIGBUS).
        state = load(path.read_bytes())
    except (SafetensorError, OSError) as exc:
        pickle = (" (a PyTorch pickle: emfuse never unpickles weights; load it yourself and save "
                  "it with save_model)") if path.suffix.lower() in (".pt", ".pth", ".ckpt") else ""
        raise InputError(
            f"{path}: not a readable safetensors file ({exc}){pickle}; give a model written by "
            f"emfuse.pipeline.restore.save_model (emfuse train-restore), or a published name "
            f"({', '.join(MODEL_NAMES)})"
        ) from exc
    if str(meta.get("format", "")).startswith("emfuse-train"):
        if (path.parent / "model.safetensors").is_file():
            raise InputError(  # train-restore writes both: the checkpoint also holds the optimiser's state
                f"{path} is a training checkpoint (weights and optimiser state, to resume training); "
                f"restore with the model beside it: --model {path.parent / 'model.safetensors'}"
            )
        # a run still going (or killed): its checkpoint's network, for a look before the run ends
        meta = {"format": _FORMAT, "config": meta["model_config"], "checkpoint_step": meta.get("step", "")}
        state = {name[len("model."):]: tensor for name, tensor in state.items() if name.startswith("model.")}
    if meta.get("format", _FORMAT) != _FORMAT:  # another emfuse network (tem-fuse's AVAE, say)
        other = " (tem-fuse's AVAE: give it to emfuse tem-fuse --model)" if "avae" in meta["format"] else ""
        raise InputError(f"{path} is not a restoration network: its format is {meta['format']!r}{other}, "
                         f"a restoration model's {_FORMAT!r}")
    if "config" in meta:
        config = json.loads(meta["config"])
    elif path.with_suffix(".json").is_file():
        config = json.loads(path.with_suffix(".json").read_text())
    else:
        raise InputError(
            f"{path}: no CGRDN config in its metadata nor in {path.with_suffix('.json').name} "
            "beside it; save models with emfuse.pipeline.restore.save_model"
        )
    with torch.device("meta"):  # no memory, no random initialisation: the weights follow
        model = CGRDN(CGRDNConfig.from_dict(config))
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: its tensors do not fit the CGRDN of its config ({exc})") from exc
    return model, meta


def _r_em_model_dir(name: str) -> Path:
    """The SavedModel directory of ``name`` inside the installed tk-r-em (never imported)."""
    spec = importlib.util.find_spec("tk_r_em")  # finds the package without running its TensorFlow import
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            f"model {name!r} needs the published r_em weights from the package {R_EM_PACKAGE}: "
            "pip install 'emfuse[r_em]'. Note: tk-r-em is licensed under the GPLv3; its weights "
            f"are converted once (TensorFlow not needed) and cached in {cache_dir()}."
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(R_EM_PACKAGE)
    except PackageNotFoundError:
        installed = "unknown"
    if installed != R_EM_VERSION:
        raise MissingDependency(
            f"{R_EM_PACKAGE} {installed} is installed; emfuse converts and checks the weights of "
            f"version {R_EM_VERSION}: pip install '{R_EM_PACKAGE}=={R_EM_VERSION}'"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / "models" / name.split(":", 1)[1]


def _load_r_em(name: str) -> CGRDN:
    """A published network: from the cache, converting (and caching) it on first use."""
    cached = cache_dir() / f"{name.replace(':', '_')}-{R_EM_VERSION}.safetensors"
    if cached.is_file():
        try:
            model, meta = _load_file(cached)
            if meta.get("format") == _FORMAT:
                return model
        except ValueError:
            pass  # a damaged or outdated cache is simply redone

    import torch

    from .cgrdn import CGRDN
    from .weights import convert_saved_model

    cfg, state = convert_saved_model(_r_em_model_dir(name))
    with torch.device("meta"):
        model = CGRDN(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, assign=True)
    source = f"{R_EM_PACKAGE} {R_EM_VERSION} models/{name.split(':', 1)[1]} (GPLv3)"
    try:
        save_model(model, cached, metadata={"source": source})
    except OSError:
        pass  # a read-only cache costs a conversion per load (~0.2 s), not a failure
    return model


def _did_you_mean(name: str) -> str:
    """``" (did you mean 'r_em:sfr_hrstem'?)"`` for a near miss of a published name, else ``""``.

    >>> _did_you_mean("sfr_hrstem"), _did_you_mean("r_em:sfr_hrstm"), _did_you_mean("nope")
    (" (did you mean 'r_em:sfr_hrstem'?)", " (did you mean 'r_em:sfr_hrstem'?)", '')
    """
    import difflib

    bare = {n.split(":", 1)[1]: n for n in MODEL_NAMES}
    key = name.strip().lower().removeprefix("r_em:").removeprefix("r_em_")
    close = difflib.get_close_matches(key, list(bare), n=1, cutoff=0.75)
    return f" (did you mean {bare[close[0]]!r}?)" if close else ""


def _own_model_file(name: str) -> Path:
    """The file of the own model ``name``; FileNotFoundError naming the choices when it is missing."""
    path = MODEL_FILES[name]
    if not path.is_file():
        present = [n for n, p in MODEL_FILES.items() if p.is_file()]
        raise InputFileNotFound(
            f"the restoration model {name!r} is not part of this version ({path.name} is not in "
            f"{path.parent}); this version has {', '.join(present) or 'none'}. Use --model auto (it "
            f"falls back to the default model) or a published one, e.g. 'r_em:sfr_hrstem' (one of "
            f"{', '.join(MODEL_NAMES)}; needs pip install 'emfuse[r_em]')"
        )
    return path


def load_model(name: str | os.PathLike | None = None, *, device: Any = None) -> torch.nn.Module:
    """A restoration network in eval mode, float32, on ``device`` (default CPU).

    The model maps ``(N, 1, H, W)`` float32 images in raw detector units to restored
    images of the same shape and units (see :class:`~emfuse.pipeline.restore.cgrdn.CGRDN`).

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES` (``"r_em:sfr_hrstem"``, ...), one of the project's own
        models (:data:`MODEL_FILES`: ``"default"``, ``"stem-high"``, ..., ``"sem"``), the path
        of a ``.safetensors`` file written by :func:`save_model`, or ``None`` for the
        project's default model. An own name wins over a file of that name in the working
        directory (give ``./stem-high`` for the file).
    device
        Anything ``torch.device`` accepts, e.g. ``"cuda"``.

    Examples
    --------
    >>> net = load_model("r_em:sfr_lrtem")  # doctest: +SKIP
    >>> sum(p.numel() for p in net.parameters())  # doctest: +SKIP
    7035521
    """
    if name is None or (isinstance(name, str) and name in MODEL_FILES):
        model, _ = _load_file(_own_model_file("default" if name is None else name))
    elif isinstance(name, str) and name.startswith("r_em:"):
        if name not in MODEL_NAMES:
            raise InputError(
                f"unknown r_em model {name!r}{_did_you_mean(name)}; choose one of "
                f"{', '.join(MODEL_NAMES)}, or give the path of a .safetensors model"
            )
        model = _load_r_em(name)
    elif Path(name).is_file():
        model, _ = _load_file(Path(name))
    else:
        path = Path(name).expanduser()
        why = (f"; {path} is a directory" if path.is_dir() else
               f"; there is no file {path.resolve()}" if path.suffix or len(path.parts) > 1 else "")
        raise InputError(
            f"{str(name)!r}{_did_you_mean(str(name))} is neither a model name ({', '.join(MODEL_NAMES)}) "
            f"nor an existing .safetensors file{why}. Name a published model, or give the "
            "path of a model saved by emfuse.pipeline.restore.save_model (emfuse train-restore)"
        )
    # Channels-last weights make every convolution run in oneDNN's native NHWC layout on the
    # CPU instead of reordering its input each time (12% less time for a 384x384 image).
    import torch

    model = model.float().eval().to(memory_format=torch.channels_last)
    return model.to(device) if device is not None else model
