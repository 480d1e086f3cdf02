"""Collect a job's Dask futures as they finish, with a progress bar; on an error cancel the rest.

Every job submits one task per tile (or block of frames) and waits for them here, so all three
behave alike on a shared batch cluster: a failure raises in the driver at once and the job's
remaining tasks are cancelled instead of running on for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from distributed import Client


def gather(client: Client, futures: Sequence[Any], *, desc: str, unit: str = "tile", progress: bool = True,
           sizes: Mapping[str, int] | None = None) -> list[Any]:
    """The futures' results in the order they finish.

    ``sizes`` maps a future's key to how much it advances the bar (frames of a block; default 1).
    A task may return an exception instead of raising it (bad input, reported without a worker
    traceback): it is raised here like a task's own error.
    """
    from distributed import as_completed  # here: importing the job modules must stay cheap

    results = []
    total = sum(sizes.values()) if sizes else len(futures)
    with tqdm(total=total, desc=desc, unit=unit, disable=not progress) as bar:
        try:
            for future in as_completed(futures):
                result = future.result()  # re-raises a worker's error here
                if isinstance(result, BaseException):
                    raise result
                results.append(result)
                bar.update(sizes[future.key] if sizes else 1)
        except BaseException:
            client.cancel(list(futures))
            bar.leave = False  # the error, not a half-full bar, is what stays on screen
            raise
    return results
