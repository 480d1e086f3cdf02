"""Writing model weights: safetensors files written whole or not at all.

Every model or checkpoint emfuse saves goes through :func:`save_safetensors`,
so a crash (or a reader memory-mapping the old file) never sees a half-written
file: the tensors go to a temporary file beside the target, which then replaces
it in one rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (torch tensors) with string ``metadata`` to ``path`` atomically.

    The file is readable by everyone (0o644), like a file written in place, not
    private as :func:`tempfile.mkstemp` would leave it.

    Examples
    --------
    >>> import torch, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_safetensors({"w": torch.zeros(2)}, p, {"note": "x"}).stat().st_mode & 0o777 == 0o644
    True
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
