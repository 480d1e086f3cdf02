"""``emfuse demo``: a synthetic facility dataset through the whole fusion job."""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from emfuse.stores.zarrio import check_writable, read_attrs

from ..tools.synth import write_synthetic

DEMO_ELEMENTS = ("Sr", "Ti", "O")


def run_demo(
    out: str | Path = "emfuse-demo",
    *,
    size: int = 256,
    dose: float | None = None,
    cluster: str = "local",
    seed: int = 0,
    serving: AbstractContextManager | None = None,
) -> dict[str, Any]:
    """Synthesise a SrTiO3 spectrum image, fuse it with the defaults (weights "auto"), report.

    Prints where everything is and the error (NRMSE after an affine fit)
    against the ground truth of the raw and of the fused maps; returns the
    flow's summary. The flows run in the block ``serving`` (entered once the input is written: the
    command line waits there for the Prefect server it started early).
    """
    from ..jobs.flows import fuse_flow
    from .console import print_summary

    out = check_writable(out)  # OutputNotWritable (one line) where it cannot be created
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    source = write_synthetic("spectrum-image", out / "demo_input.zarr", shape=(size, size),
                             elements=DEMO_ELEMENTS, dose=dose, seed=seed, overwrite=True)
    synth = read_attrs(source)["synthetic"]
    print(f"input:        {source} ({size} x {size} px, {len(DEMO_ELEMENTS)} elements, "
          f"dose {synth.get('dose', dose)} counts/px, {synth.get('specimen')})")
    with serving or contextlib.nullcontext():
        result = fuse_flow(str(source), str(out / "demo_fused.zarr"), elements=list(DEMO_ELEMENTS),
                           cluster=cluster, overwrite=True)
        print_summary(result)
        print(f"done in {time.perf_counter() - start:.0f} s; open the result with "
              f"xarray.open_zarr({str(out / 'demo_fused.zarr')!r}, zarr_format=3, consolidated=False)")
        result["tem_fuse"] = tem_fuse_demo(out, cluster=cluster, seed=seed, size=size)
    return result


def tem_fuse_demo(out: Path, *, cluster: str = "local", seed: int = 0, size: int = 256) -> dict[str, Any] | None:
    """BF, DF and HRTEM of a synthetic polycrystal fused with the committed AVAE weights, and reported."""
    from emfuse.pipeline.avae.model import RESIDUAL_WIENER_WEIGHTS

    from ..jobs.flows import tem_fuse_flow
    from .console import print_tem_summary

    weights = RESIDUAL_WIENER_WEIGHTS
    if not weights.is_file():
        print(f"tem-fuse:     skipped (no default AVAE weights at {weights})")
        return None
    start = time.perf_counter()
    source = write_synthetic("tem-modes", out / "demo_tem_modes.zarr", shape=(size, size), material="ceramic",
                             seed=seed, overwrite=True)
    print(f"input:        {source} (BF, DF, HRTEM of a synthetic ceramic polycrystal, {size} x {size} px)")
    result = tem_fuse_flow(str(source), str(out / "demo_tem_fused.zarr"), cluster=cluster, overwrite=True)
    print_tem_summary(result)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return result
