"""What the commands print: summaries, stored warnings, choices made; the console log."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

AUTO = "auto"


def use_prefect(args: argparse.Namespace) -> bool:
    """Whether a job command runs as a Prefect flow: when asked (``--prefect``) or when a Prefect
    server is configured (``PREFECT_API_URL``: runs are then seen there, and starting costs
    nothing). Otherwise the same stages run directly: a temporary Prefect server would cost about
    5 s of every command (7.9 s against 2.6 s for a 64 x 64 fusion)."""
    return bool(getattr(args, "prefect", False) or os.environ.get("PREFECT_API_URL"))


def quiet_prefect(verbose: bool) -> None:
    """Failures reach the user as one line from :func:`main`; Prefect's copy with traceback only with -v."""
    if not verbose:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def console_logging(verbose: bool) -> None:
    """Log to stderr, as :func:`logging.basicConfig` would (nothing when logging is set up
    already, e.g. by a program that calls :func:`main`). Without ``--verbose`` the console skips
    the records of stored warnings: the commands print them once, at the end, as ``check:``
    lines (:func:`print_warnings`)."""
    from emfuse.stores.warn import STORED_WARNING

    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(lambda record: not getattr(record, STORED_WARNING, False))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """emfuse's own warnings (what ingest left out, a convergence doubt) printed as ``warning:
    <message>`` lines, without the Python file, line number and source line that
    :func:`warnings.formatwarning` adds for programmers. Others are printed as Python prints them.

    Only the printing changes (:data:`warnings.formatwarning`): warnings recorded by a caller
    (``warnings.catch_warnings(record=True)``, ``pytest.warns``) are recorded as before.
    """
    python_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if category.__module__.startswith("emfuse."):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def weights(value: float | Sequence[float], elements: Sequence[str]) -> str:
    """A weight, or one per element (the automatic choice's per-element refinement), for printing.

    Examples
    --------
    >>> weights(0.015625000000000007, []), weights([0.5, 0.25], ["Cu", "O"])
    ('0.01563', '(Cu 0.5, O 0.25)')
    """
    if isinstance(value, list | tuple):
        names = list(elements) if len(elements) == len(value) else [f"#{i}" for i in range(len(value))]
        return "(" + ", ".join(f"{name} {v:.4g}" for name, v in zip(names, value)) + ")"
    return f"{value:.4g}"


def print_summary(result: dict[str, Any]) -> None:
    print(f"output store: {result['store']}")
    if result.get("figures"):
        print(f"report:       {Path(result['figures'][0]).parent}")
    print("final costs:  " + ", ".join(f"{k} {v:.4g}" for k, v in result["final_cost"].items()))
    print_devices(result)
    print_tile(result)
    print_warnings(result)
    if "lambda_chem" in result:
        elements = result.get("elements", [])
        print(f"lambdas:      chem {weights(result['lambda_chem'], elements)}, "
              f"tv {weights(result['lambda_tv'], elements)}" + _auto_note(result))
    if "nrmse_raw" in result:
        print(f"{'element':>8} {'NRMSE raw':>10} {'NRMSE fused':>12}")
        for el in result["elements"]:
            print(f"{el:>8} {result['nrmse_raw'][el]:>10.3f} {result['nrmse_fused'][el]:>12.3f}")


def print_tem_summary(result: dict[str, Any]) -> None:
    print(f"output store: {result['store']}")
    if result.get("figures"):
        print(f"report:       {Path(result['figures'][0]).parent}")
    print("attention:    " + ", ".join(f"{m} {w:.2f}" for m, w in result["mean_attention"].items())
          + " (mean weight of each mode)")
    print("drift:        " + ", ".join(f"{m} ({d[0]:+.2f}, {d[1]:+.2f}) px" for m, d in result["drift_px"].items()))
    print_devices(result)
    if "quality" in result:
        q = result["quality"]
        print(f"vs truth:     fused {q['tem_fused']['psnr']:.2f} dB / SSIM {q['tem_fused']['ssim']:.3f}, "
              f"HRTEM alone {q['hrtem']['psnr']:.2f} dB / SSIM {q['hrtem']['ssim']:.3f} (affine-calibrated)")
    print_warnings(result)


def print_devices(result: dict[str, Any]) -> None:
    """Where the tiles ran (the store's ``devices``), when the summary says."""
    if result.get("devices"):
        print(f"ran on:       {', '.join(result['devices'])}")


def print_tile(result: dict[str, Any]) -> None:
    """The fusion's tile, and for ``--tile auto`` the rule that chose it and the free GPU memory."""
    if "tile" not in result:
        return
    choice = result.get("tile_choice") or {}
    note = ""
    if choice:  # a store planned with a number, or before --tile auto existed, has none
        free = choice.get("free_bytes")
        note = f" (auto: {choice.get('rule')}" + (f"; {free / 1e9:.1f} GB free per task" if free else "") + ")"
    print(f"tile:         {result['tile']} px{note}")


def print_warnings(result: dict[str, Any]) -> None:
    """One ``check:`` line per warning stored with a job's result (see :mod:`emfuse.stores.warn`)."""
    from emfuse.stores.warn import format_warning

    for record in result.get("warnings", []):
        print(format_warning(record))


def print_model_choice(result: dict[str, Any]) -> None:
    """One line saying which model ``--model auto`` chose for the data, and why."""
    choice = result.get("model_choice") or {}
    if choice.get("asked") == AUTO:
        print(f"model (auto): {choice['model']}: {choice['reason']}")


def print_adaptation(result: dict[str, Any]) -> None:
    """One line saying whether ``--adapt`` fine-tuned the model and whether the result was used."""
    record = result.get("adaptation") or {}
    if not record:
        return
    scores = ""
    if record.get("score_before") is not None:
        scores = f", held-out score {record['score_before']:.4g} -> {record['score_after']:.4g}"
    outcome = "used" if record.get("used") else "not used (original model kept)"
    print(f"adapted:      {record.get('steps')} steps on frames {record.get('train_frames', [])}{scores}: "
          f"{outcome}: {record.get('reason')}")


def _auto_note(result: dict[str, Any]) -> str:
    """' (auto: ...)' when the summary's lambdas were chosen automatically."""
    if not result.get("lambda_auto"):
        return ""
    choice = result.get("lambda_choice", {})
    if "reason" in choice:  # "auto" fell back to the embedded defaults
        return f" (auto fell back to the defaults: {choice['reason']})"
    criterion = str(choice.get("criterion"))
    held_out = ("recorrupted maps (measured noise)" if "recorrupted" in criterion
                else "held-out pixels" if "pixels" in criterion else "held-out counts")
    return (f" (auto {'+'.join(n.removeprefix('lambda_') for n in result['lambda_auto'])}: "
            f"{choice.get('n_candidates', '?')} candidates scored on {held_out}, "
            f"{choice.get('seconds', float('nan')):.0f} s)")
