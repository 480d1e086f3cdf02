"""The Python API's own entry points where they add to the layers' functions.

:func:`fuse` is :func:`emfuse.pipeline.fusion.fuse` that also takes ``lambda_chem="auto"`` and
``lambda_tv="auto"``, as the command line does; :func:`restore` takes a model name as well as a
network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUTO = "auto"


def fuse(haadf: Any, maps: Any, z: Sequence[float], *, lambda_chem: float | str | None = None,
         lambda_tv: float | str | None = None, **kwargs: Any) -> Any:
    """Fuse elemental maps with a HAADF; ``"auto"`` weights are chosen from the data.

    Parameters
    ----------
    haadf, maps, z
        As :func:`emfuse.pipeline.fusion.fuse`: the (y, x) HAADF, the (element, y, x) maps
        (counts, or any units: maps that are not counts get the noise-model criterion) and
        the atomic numbers.
    lambda_chem, lambda_tv
        A number, one number per element (a list in map order), ``"auto"`` (chosen by
        :func:`emfuse.pipeline.fusion.auto.choose_lambdas`: held-out counts, recorrupted pairs
        or held-out pixels) or None (the default weights).
    **kwargs
        Passed on to :func:`emfuse.pipeline.fusion.fuse` (``n_iter``, ``gamma``, ...).

    Returns
    -------
    FusionResult
        With the automatic choice under ``result.lambda_choice`` when one was made.

    Examples
    --------
    >>> import numpy as np, emfuse
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.random((2, 24, 24)) + 0.5
    >>> haadf = 30 * truth[0] + 10 * truth[1]
    >>> counts = rng.poisson(20 * truth).astype(np.float32)
    >>> result = emfuse.fuse(haadf, counts, [30, 10], lambda_chem="auto", n_iter=5)
    >>> result.fused.shape, result.lambda_choice.lambda_chem > 0
    ((2, 24, 24), True)
    """
    from .pipeline.fusion import fuse as fuse_kernel

    choice = None
    if AUTO in (lambda_chem, lambda_tv):
        import dataclasses

        from .pipeline.fusion.auto import choose_lambdas
        from .pipeline.fusion.solver import FusionParams

        names = {f.name for f in dataclasses.fields(FusionParams)}
        choice = choose_lambdas(haadf, z, maps=maps, haadf_valid=kwargs.get("haadf_valid"),
                                params={k: v for k, v in kwargs.items() if k in names},
                                lambda_chem=None if lambda_chem == AUTO else lambda_chem,
                                lambda_tv=None if lambda_tv == AUTO else lambda_tv)
        lambda_chem, lambda_tv = choice.lambda_chem, choice.lambda_tv
    weights = {k: v for k, v in (("lambda_chem", lambda_chem), ("lambda_tv", lambda_tv)) if v is not None}
    result = fuse_kernel(haadf, maps, z, **weights, **kwargs)
    if choice is not None:
        result.lambda_choice = choice
    return result


def restore(image: Any, model: Any = "default", **kwargs: Any) -> Any:
    """Restore an image (y, x) or a stack (frame, y, x) with a network or a model name.

    Parameters
    ----------
    image : array_like or xarray.DataArray
        An image (y, x) or a stack of frames (frame, y, x), in any units; a DataArray (the
        ``haadf`` or ``movie`` of a store) comes back as one, with its dimensions, coordinates
        and attributes.
    model : str, path or torch.nn.Module, default "default"
        A network from :func:`emfuse.pipeline.restore.load_model`, or a name it takes
        (``"default"``, ``"stem-high"``, ``"r_em:sfr_hrstem"``, a ``.safetensors`` path).
    **kwargs
        Passed to :func:`emfuse.pipeline.restore.inference.restore` (``tile``, ``device``...).

    Returns
    -------
    numpy.ndarray or xarray.DataArray
        The restored image or stack, the shape of ``image`` (a DataArray for a DataArray).

    Examples
    --------
    >>> import numpy as np, xarray as xr, emfuse
    >>> image = np.random.default_rng(1).poisson(30.0, (64, 64)).astype(np.float32)
    >>> emfuse.restore(image).shape
    (64, 64)
    >>> labelled = xr.DataArray(image, dims=("y", "x"), coords={"x": np.arange(64) * 0.2}, attrs={"units": "counts"})
    >>> restored = emfuse.restore(labelled)
    >>> restored.dims, float(restored.x[1]), restored.attrs["units"]
    (('y', 'x'), 0.2, 'counts')
    """
    from .pipeline.restore import load_model
    from .pipeline.restore.inference import restore as restore_kernel

    if isinstance(model, str) or hasattr(model, "__fspath__"):
        name = str(model)
        model = load_model(None if model == "default" else model)
    else:
        name = type(model).__name__
    if not hasattr(image, "dims") or not hasattr(image, "coords"):  # not an xarray.DataArray
        return restore_kernel(image, model, **kwargs)
    restored = restore_kernel(image.values, model, **kwargs)  # a store's lazy image: read it once
    out = image.copy(data=restored)
    out.attrs["description"] = f"{image.name or 'image'} restored by {name}"
    return out
