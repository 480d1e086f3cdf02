"""emfuse: the night's electron-microscopy datasets turned into chemical maps and restored images.

The layers are subpackages (``emfuse.pipeline``: pure kernels on arrays; ``emfuse.stores``:
files and Zarr stores; ``emfuse.cluster``: Dask clusters; ``emfuse.flows``: jobs, the batch and
the command line). The names below are the public API; they load their layer at first use, so
``import emfuse`` (and ``emfuse --version``) stays fast. ``emfuse.EmfuseError`` is the base of
every error emfuse explains in one line (bad data, files, parameters or environment); any other
exception is a bug.

Examples
--------
>>> import emfuse
>>> emfuse.__version__ != ""
True
>>> sorted(emfuse.__all__)[:3]
['EmfuseError', '__version__', 'fuse']
"""

from __future__ import annotations

from pathlib import Path

# In an installed wheel the layers are folders of this package. In the repository (an editable
# install, or a checkout on PYTHONPATH) they sit beside it, at the top as the design lays them
# out: look there too, so a checkout always imports its own layers.
_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "pipeline").is_dir() and (_CHECKOUT / "pipeline" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 (a package's __path__)

from ._lazy import on_first_use  # noqa: E402
from .stores.version import emfuse_version  # noqa: E402

__version__ = emfuse_version()

#: public name -> (module, attribute)
_API = {
    "fuse": ("emfuse.api", "fuse"),
    "restore": ("emfuse.api", "restore"),
    "fuse_modes": ("emfuse.pipeline.avae.fuse", "fuse_modes"),
    "ingest": ("emfuse.flows.jobs.inputs", "ingest_file"),
    "open_result": ("emfuse.stores.zarrio", "open_dataset"),
    "run_catalog": ("emfuse.flows.batch", "batch_flow"),
    "EmfuseError": ("emfuse.errors", "EmfuseError"),
}
__all__ = ["__version__", *_API]


__getattr__, __dir__ = on_first_use(__name__, _API, globals())
