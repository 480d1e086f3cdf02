"""The array namespace ``xp``: numpy on the CPU, cupy on the GPU.

Kernels are written once against ``xp`` and get the namespace of their
inputs, as LiberTEM and scikit-image do, so the same function runs on numpy
arrays in a notebook and on cupy arrays on a GPU node. CuPy is optional: it is
imported only when an array that needs it is seen or the GPU is asked for.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InputError, NotAvailableHere


def get_xp(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) the given arrays live in.

    Examples
    --------
    >>> import numpy as np
    >>> get_xp(np.zeros(3)).__name__
    'numpy'
    """
    for array in arrays:
        module = type(array).__module__
        if module.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of a numpy or cupy array (no copy for numpy input)."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDA driver errors without a GPU
        return False


def resolve_xp(device: str = "cpu") -> ModuleType:
    """The array module for ``device`` ("cpu" or "cuda"), with a clear error without a GPU."""
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        if not gpu_available():
            raise NotAvailableHere(
                "device='cuda' was asked for but CuPy with a CUDA GPU is not available; "
                "install the GPU extra (pip install 'emfuse[gpu]') on a GPU node, or use device='cpu'."
            )
        import cupy

        return cupy
    raise InputError(f"unknown device {device!r}; use 'cpu' or 'cuda'.")
