"""Turn what the user names (a store or a raw file) into a canonical store path.

Every ingest of the flows layer (``emfuse ingest``, and the raw files that ``fuse``,
``restore``, ``tem-fuse`` and the batch ingest first) goes through :func:`ingest_file`,
which checks the HAADF for saturated pixels once the store is written and records what
it found as a ``haadf-saturated`` warning on the store (:func:`check_haadf`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emfuse.errors import InputError, InputFileNotFound
from emfuse.pipeline.saturation import find_saturation
from emfuse.stores import ingest
from emfuse.stores.layout import ATTR_INGEST_OPTIONS, ATTR_SHA256, HAADF
from emfuse.stores.warn import add_warnings, make_warning
from emfuse.stores.zarrio import is_complete, is_store, open_dataset, read_attrs, sha256_file

SATURATED = "haadf-saturated"  # the warning's code


def haadf_saturation(haadf: Any) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The one rule for every job: ``(valid, warning)`` of a HAADF image.

    ``valid`` is the (y, x) bool mask of the pixels the HAADF term of fusion uses (False:
    saturated, :func:`emfuse.pipeline.saturation.find_saturation` on the image in its stored dtype,
    so a uint16 image's ceiling is 65535); ``warning`` the ``haadf-saturated`` record, or
    None when no pixel is saturated.

    Examples
    --------
    >>> image = np.arange(64, dtype=np.uint16).reshape(8, 8)
    >>> image[:2] = 65535
    >>> valid, warning = haadf_saturation(image)
    >>> int((~valid).sum()), warning["code"], warning["fraction"]
    (16, 'haadf-saturated', 0.25)
    >>> print(warning["message"])  # doctest: +NORMALIZE_WHITESPACE
    25.0 % of the HAADF pixels are saturated (16 at 65535, the uint16 maximum); they are left out
    of the HAADF term of fusion; check the detector gain/offset
    """
    image = np.asarray(haadf)
    found = find_saturation(image)
    if not found.any:
        return np.ones(image.shape, dtype=bool), None
    kinds = {"dtype-max": f"the {image.dtype} maximum", "plateau-max": "a clipped plateau at the maximum",
             "plateau-zero": "a clipped plateau at zero"}
    where = "; ".join(f"{level.count} at {level.value:g}, {kinds[level.kind]}" for level in found.levels)
    warning = make_warning(
        SATURATED,
        f"{100 * found.fraction:.1f} % of the HAADF pixels are saturated ({where}); they are left out of "
        "the HAADF term of fusion; check the detector gain/offset",
        stage="ingest", fraction=round(found.fraction, 6),
        values=[level.value for level in found.levels], counts=[level.count for level in found.levels],
    )
    return ~found.mask, warning


def check_haadf(store: str | Path) -> dict[str, Any] | None:
    """Record a ``haadf-saturated`` warning on a canonical store whose HAADF is saturated.

    Returns the warning (None when the store has no HAADF or nothing is saturated);
    recording it again is a no-op (:func:`emfuse.stores.warn.add_warnings` keeps each once).
    """
    ds = open_dataset(store)
    if HAADF not in ds:
        return None
    _, warning = haadf_saturation(ds[HAADF].transpose("y", "x").values)
    if warning is not None:
        add_warnings(store, warning)
    return warning


def ingest_file(
    path: str | Path,
    out: str | Path,
    *,
    elements: Sequence[str] | None = None,
    signal: str | int | None = None,
    overwrite: bool = False,
) -> Path:
    """Read an instrument file into a canonical Zarr store and check its HAADF.

    :func:`emfuse.stores.ingest.ingest`, then :func:`check_haadf` (saturated pixels are
    recorded and warned about) on the new store.

    Parameters
    ----------
    path
        The instrument file (.bcf, .emd, .dm3/.dm4, .emi, .hspy, .h5, .npz, ...).
    out
        The store to write (``.zarr``).
    elements
        Elements whose maps to keep from the file (the rest come from the spectrum image).
    signal
        Which of several spectrum images of one file: its index or title.
    overwrite
        Replace an existing store.

    Returns
    -------
    Path
        The store written.
    """
    store = ingest.ingest(path, out, elements=elements, signal=signal, overwrite=overwrite)
    check_haadf(store)
    return store


__all__ = ["check_haadf", "haadf_saturation", "ingest_file", "is_store", "resolve_store"]


def resolve_store(
    source: str | Path,
    workdir: str | Path,
    *,
    elements: Sequence[str] | None = None,
    name: str | None = None,
    signal: str | int | None = None,
) -> Path:
    """The canonical store for ``source``, ingesting a raw file first if needed.

    A raw file ``run1.emd`` is ingested into ``<workdir>/run1.input.zarr`` (``<name>.input.zarr``
    when a batch names the dataset, so two ``run1.emd`` of different folders stay apart;
    ``run1.signal-15.input.zarr`` for ``--signal 15``, so that the jobs of two signals of one
    file keep their own input); an earlier ingest of the same bytes (same sha256) with the same
    options (``elements``, ``signal``: see :func:`emfuse.stores.ingest.read`) is reused.

    Examples
    --------
    >>> resolve_store("velox.emd", "results", signal="DF-S")  # doctest: +SKIP
    PosixPath('results/velox.signal-DF-S.input.zarr')
    """
    source = Path(source)
    if is_store(source):
        _check_store_signal(source, signal)
        return source
    if not source.exists():
        raise InputFileNotFound(
            f"{source} does not exist; give a canonical store or a raw file "
            f"({', '.join(sorted(ingest.SUPPORTED_SUFFIXES))})."
        )
    chosen = "" if signal is None else ".signal-" + re.sub(r"[^A-Za-z0-9_-]+", "_", str(signal).strip())
    target = Path(workdir) / f"{name or source.stem}{chosen}.input.zarr"
    if is_complete(target) and _same_ingest(target, source, elements, signal):
        check_haadf(target)  # an ingest from before the check: recorded now (once)
        return target
    return ingest_file(source, target, elements=elements, signal=signal, overwrite=True)


def _check_store_signal(store: Path, signal: str | int | None) -> None:
    """``--signal`` chooses among a raw file's signals (spectrum images, or an image alone); a store
    holds the one it was ingested with, and another cannot be had from it."""
    if signal is None:
        return
    stored = (read_attrs(store).get(ATTR_INGEST_OPTIONS) or {}).get("signal")
    if stored != str(signal):
        raise InputError(
            f"{store} is a store ingested with --signal {stored}; --signal {signal} chooses among a raw "
            "file's signals: give the raw file, or ingest it again with that --signal."
        )


def _same_ingest(target: Path, source: Path, elements: Sequence[str] | None, signal: str | int | None) -> bool:
    """True when ``target`` holds ``source``'s bytes ingested with these options."""
    attrs = read_attrs(target)
    if attrs.get(ATTR_SHA256) != sha256_file(source):
        return False
    wanted = ingest.ingest_options(elements=list(elements) if elements else None, signal=signal)
    stored = attrs.get(ATTR_INGEST_OPTIONS) or {}
    return all(stored.get(key) == wanted[key] for key in ("elements", "signal"))
