"""Checks of a job command's arguments, files and output store, before any cluster or Prefect starts.

A mistake on the command line (a mistyped element, a missing file, an input store left
half-written, an output store written with other parameters) should cost the user a
second, not the 10-30 s of importing Prefect, Dask and torch and starting an ephemeral
Prefect server and a cluster. This module therefore imports nothing heavy: Zarr metadata
is read as JSON, and ``zarr`` itself only when a coordinate's values are needed.

The jobs check everything again when they plan (these checks are a fast subset, not a
replacement): what is refused here would be refused there with the same message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emfuse.errors import InputError, InputFileNotFound
from emfuse.pipeline import elements as periodic
from emfuse.stores.errors import StoreError, other_parameters_error, params_differ
from emfuse.stores.layout import (
    ATTR_COMPLETE,
    ATTR_ELEMENTS,
    ATTR_METADATA,
    ATTR_PARAMS,
    HAADF,
    MAPS,
    MODES,
    MOVIE,
    SPECTRUM,
)

__all__ = ["HAADF_MODELS", "check_fuse", "check_haadf_model", "check_restore", "check_restore_tiling", "check_tem_fuse", "listed_elements",
           "no_elements_message", "no_haadf_message", "no_maps_message", "store_attrs", "store_variables"]


# -- the messages, shared with the jobs (emfuse.flows.jobs.fusion), which check everything again --


def no_haadf_message(source: str | Path) -> str:
    return (f"{source} has no HAADF image; fusion needs a HAADF (or other Z-contrast image) "
            "of the same pixels as the maps.")


def no_maps_message(wanted: Sequence[str] | None, have: Sequence[str]) -> str:
    """A dataset without a spectrum image, and without maps of the elements ``wanted``.

    Examples
    --------
    >>> no_maps_message(None, [])[:60]
    'the dataset holds images only (no spectrum image, no element'
    """
    if not have:  # a plain image file: nothing to fuse, but it may be restored
        return ("the dataset holds images only (no spectrum image, no elemental maps), and fusion maps "
                "elements: give the spectrum-image acquisition (or a file with elemental maps) with its "
                "HAADF. To denoise the image itself, use emfuse restore.")
    return (f"the dataset has no spectrum image and no maps for {list(wanted or [])} (maps present: "
            f"{list(have)}); ingest a file with an EDX/EELS spectrum image or elemental maps, "
            "or choose --elements among the maps present.")


def no_elements_message(listed: Sequence[str]) -> str:
    """A spectrum image and no elements: the message names those the file's metadata lists."""
    return ("the dataset holds a spectrum image but no elements were named; "
            "pass the elements to map, e.g. --elements Fe O (in a catalog: elements: [Fe, O])."
            + (f" The file's metadata lists {' '.join(listed)}." if listed else ""))


def listed_elements(metadata: str | None) -> list[str]:
    """The elements an instrument file's metadata lists (``Sample.elements`` of the store's
    ``metadata`` JSON attribute), [] when none."""
    try:
        tree = json.loads(metadata or "{}")
    except (TypeError, ValueError):
        return []
    sample = tree.get("Sample") if isinstance(tree, dict) else None
    return [str(e) for e in (sample or {}).get("elements") or []]


def store_attrs(path: str | Path) -> dict[str, Any] | None:
    """The group attributes of a Zarr v3 store (read from its ``zarr.json``), None if not a store."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return dict(json.loads(meta.read_text()).get("attributes", {}))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not a readable Zarr v3 store ({exc}); write it again.") from exc


def store_variables(path: str | Path) -> set[str]:
    """The names of the arrays at the top of a store (its variables and coordinates)."""
    return {p.parent.name for p in Path(path).glob("*/zarr.json")}


def _check_input(source: str | Path) -> dict[str, Any] | None:
    """The input exists; a store is not an interrupted write. Returns its attributes (None: a raw file)."""
    source = Path(source)
    if not source.exists():
        raise InputFileNotFound(f"{source} does not exist; give a canonical store (.zarr) or a raw file.")
    attrs = store_attrs(source)
    if attrs is not None and attrs.get(ATTR_COMPLETE) is False:  # no flag at all: written by someone else, fine
        raise StoreError(
            f"store {source} is not marked complete (an interrupted or failed write). "
            "Rerun the command that writes it; it resumes where it stopped."
        )
    return attrs


def _check_output(out: str | Path, params: Mapping[str, Any], overwrite: bool) -> None:
    """An existing output store must have been written with the same ``params`` (those given here)."""
    out = Path(out)
    if overwrite or not out.exists():
        return
    attrs = store_attrs(out)
    if attrs is None:
        raise StoreError(f"{out} exists but is not an emfuse output store; remove it, pass --overwrite, "
                         "or choose another --out.")
    differ = params_differ(attrs.get(ATTR_PARAMS, {}), params, keys=params)
    if differ:
        raise other_parameters_error(out, differ)


def _stored_elements(store: Path) -> list[str]:
    import zarr  # only here: half a second, and only when a store's maps must be looked at

    return [str(e) for e in zarr.open_array(str(store / "element"), mode="r", zarr_format=3)[...]]


#: the fusion's HAADF model: "z" (w_i = Z_i / mean(Z), gamma as given) or "fit" (both fitted to the
#: data by the automatic choice, which then also refines the weakest element's weights)
HAADF_MODELS = ("z", "fit")


def check_haadf_model(haadf_model: str, params: Mapping[str, Any] | None) -> None:
    """``haadf_model`` is one of :data:`HAADF_MODELS`, and ``"fit"`` (made by the automatic choice)
    comes with at least one weight of ``params`` given as ``"auto"``; the fusion job's plan checks
    the same.

    Examples
    --------
    >>> check_haadf_model("fit", {"lambda_chem": "auto", "lambda_tv": 0.1})
    >>> check_haadf_model("fit", {"lambda_chem": 0.1, "lambda_tv": 0.2})
    Traceback (most recent call last):
    ...
    emfuse.errors.InputError: haadf_model 'fit' (--haadf-model fit) is fitted by the automatic choice of the weights, but lambda_chem and lambda_tv are both given; set at least one to 'auto', or keep haadf_model 'z'.
    """
    if haadf_model not in HAADF_MODELS:
        raise InputError(f"unknown haadf_model {haadf_model!r}; choose one of {', '.join(HAADF_MODELS)}.")
    chosen = [name for name in ("lambda_chem", "lambda_tv")
              if str((params or {}).get(name, "")).strip().lower() == "auto"]
    if haadf_model == "fit" and not chosen:
        raise InputError(
            "haadf_model 'fit' (--haadf-model fit) is fitted by the automatic choice of the weights, but "
            "lambda_chem and lambda_tv are both given; set at least one to 'auto', or keep haadf_model 'z'."
        )


def check_fuse(source: str | Path, out: str | Path, *, elements: Sequence[str] | None,
               params: Mapping[str, Any], tile: int | str, halo: int, windows: Mapping[str, Any] | None,
               overwrite: bool = False, haadf_model: str = "z") -> None:
    """What ``emfuse fuse`` can check in a moment: elements, input, tiling, output parameters.

    Raises
    ------
    EmfuseError (ElementError, StoreError, InputError: ValueErrors; InputFileNotFound)
        naming the problem and the fix, as the job itself would.
    """
    wanted = list(periodic.validate_elements(elements)) if elements else None
    check_haadf_model(haadf_model, params)
    auto_tile = isinstance(tile, str) and tile.strip().lower() == "auto"
    if isinstance(tile, str) and not auto_tile:
        raise InputError(f"--tile must be a whole number or auto, got {tile!r}")
    if (not auto_tile and tile < 1) or halo < 0:
        raise InputError(f"--tile must be >= 1 (or auto) and --halo >= 0, got tile {tile}, halo {halo}")
    attrs = _check_input(source)
    if attrs is not None:
        names = store_variables(source)
        if HAADF not in names:
            raise InputError(no_haadf_message(source))
        have = _stored_elements(Path(source)) if MAPS in names else []
        if SPECTRUM not in names and (not have or (wanted and not set(wanted) <= set(have))):
            raise InputError(no_maps_message(wanted, sorted(have)))
        # elements named at ingest (ingest --elements) are the job's default, as in fusion_job.default_elements
        if SPECTRUM in names and MAPS not in names and not wanted and not attrs.get(ATTR_ELEMENTS):
            raise InputError(no_elements_message(listed_elements(attrs.get(ATTR_METADATA))))
    # an "auto" tile is whatever the store was started with (its grid): not a difference
    expected: dict[str, Any] = {"halo": halo, "windows": dict(windows) if windows else None}
    if not auto_tile:
        expected["tile"] = tile
    if wanted:
        expected["elements"] = wanted
    stored = (store_attrs(out) or {}).get(ATTR_PARAMS, {}) if Path(out).exists() else {}
    for name, value in params.items():
        # an "auto" weight already chosen for this store is read back from it: not a difference
        if isinstance(value, str) and name in stored.get("lambda_auto", []):
            continue
        expected[name] = value
    _check_output(out, expected, overwrite)


def check_restore_tiling(tile: int, overlap: int, batch: int | str, block: int | None) -> None:
    """The restoration's tiling and batching options (also checked by :func:`emfuse.flows.jobs.restore.plan`);
    ``batch`` may be ``"auto"``."""
    if isinstance(batch, str) and batch != "auto":
        raise InputError(f"batch must be a whole number or auto, got {batch!r}")
    bad_batch = not isinstance(batch, str) and batch < 1
    if tile < 8 or overlap < 0 or 2 * overlap > tile or bad_batch or (block is not None and block < 1):
        raise InputError(f"need tile >= 8, 0 <= overlap <= tile / 2, batch >= 1 and block >= 1; "
                         f"got tile {tile}, overlap {overlap}, batch {batch}, block {block}")


def check_restore(source: str | Path, out: str | Path, *, model: str | None, options: Mapping[str, Any],
                  overwrite: bool = False) -> None:
    """What ``emfuse restore`` can check in a moment: tiling, input, a model file, output parameters."""
    check_restore_tiling(options["tile"], options["overlap"], options["batch"], options.get("block"))
    attrs = _check_input(source)
    if attrs is not None and not {MOVIE, HAADF} & store_variables(source):
        raise InputError(f"{source} has no movie (frame, y, x) and no image (haadf) to restore; "
                         "ingest a file with a movie or an image.")
    from emfuse.pipeline.restore import MODEL_FILES

    # "auto" batch: whatever the store was started with; compile: recorded only when asked
    expected = {k: v for k, v in options.items()
                if v is not None and not (k == "batch" and v == "auto") and not (k == "compile" and not v)}
    name = "default" if model is None else str(model)
    if name not in MODEL_FILES and name != "auto" and not name.startswith("r_em:"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise InputError(f"model {name!r} is neither a published name (r_em:...), an own model "
                             f"({', '.join(['auto', *MODEL_FILES])}) nor an existing .safetensors file; "
                             "check --model")
        name = str(path.resolve())
    if name != "auto":  # auto is decided from the input's metadata: the job compares what it decides
        expected["model"] = name
    _check_output(out, expected, overwrite)


def check_tem_fuse(source: str | Path, out: str | Path, *, model: str | Path | None, tile: int, halo: int,
                   overwrite: bool = False) -> None:
    """What ``emfuse tem-fuse`` can check in a moment: input, tile, the model file, output parameters."""
    attrs = _check_input(source)
    if attrs is not None and MODES not in store_variables(source):
        raise InputError(f"{source} has no '{MODES}' (mode, y, x); tem-fuse needs BF, DF and HRTEM images "
                         "of the same region: write the store from your files with `emfuse ingest-modes --bf FILE "
                         "--df FILE --hrtem FILE --out STORE`, or a simulated one with `emfuse synth tem-modes`.")
    if tile < 16 or tile % 2:
        raise InputError(f"--tile must be even and at least 16, got {tile}")
    expected: dict[str, Any] = {"tile": tile, "halo": halo}
    if model is not None:
        if not Path(model).is_file():
            raise InputFileNotFound(f"AVAE model {model} does not exist; give a .safetensors file (--model).")
        expected["model"] = str(Path(model).resolve())
    _check_output(out, expected, overwrite)
