"""Maps that are nearly pure noise: does the held-out check still choose better weights than fixed
ones, and when does the ``maps-mostly-noise`` warning fire? (issue 12, item 5)

Synthetic spectrum images at 0.1 and 0.3 counts per pixel (16 and 32 px, three specimens, two
seeds) are fused by ``emfuse fuse`` with the automatic weights and with the embedded defaults; per
case the held-out score's best and relative spread over the candidates, the NRMSE against the truth
(mean over elements) of the raw maps, the automatic fusion and the defaults, and whether the
warning fired.

    python benchmarks/diagnosis/noise_only_maps.py --workdir /tmp/noise_only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emfuse.flows.tools.synth import write_synthetic  # noqa: E402
from emfuse.pipeline.fusion import FusionParams  # noqa: E402
from emfuse.pipeline.metrics import nrmse  # noqa: E402
from emfuse.stores.warn import read_warnings  # noqa: E402
from emfuse.stores.zarrio import open_dataset  # noqa: E402

ELEMENTS = {"columns": ["Sr", "Ti", "O"], "particles": ["Au", "Fe", "O"], "layers": ["Ga", "As", "Al"]}


def fuse(store: Path, out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "emfuse.flows.cli", "fuse", str(store), "--out", str(out),
                    "--cluster", "local-threads", "--no-report", "--overwrite", *extra],
                   check=True, capture_output=True)


def error(ds, variable: str) -> float:
    return float(np.mean([nrmse(ds[variable].values[i], ds.true_maps.values[i]) for i in range(ds.sizes["element"])]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", type=Path, required=True)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    defaults = FusionParams()
    print(f"{'case':<22} {'best':>6} {'spread':>7} {'raw':>6} {'auto':>6} {'defaults':>8}  warned")
    for specimen, elements in ELEMENTS.items():
        for dose in (0.1, 0.3):
            for side in (16, 32):
                for seed in (1, 2):
                    name = f"{specimen}-{dose}-{side}-{seed}"
                    store = write_synthetic("spectrum-image", args.workdir / f"{name}.zarr", shape=(side, side),
                                            elements=elements, specimen=specimen, dose=dose, seed=seed,
                                            overwrite=True)
                    fuse(store, args.workdir / f"{name}.auto.zarr")
                    fuse(store, args.workdir / f"{name}.defaults.zarr", "--lambda-chem", str(defaults.lambda_chem),
                         "--lambda-tv", str(defaults.lambda_tv))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        auto = open_dataset(args.workdir / f"{name}.auto.zarr")
                        fixed = open_dataset(args.workdir / f"{name}.defaults.zarr")
                    scores = auto["lambda_score"].values
                    scores = scores[np.isfinite(scores)]
                    warned = any(w["code"] == "maps-mostly-noise" for w in read_warnings(args.workdir / f"{name}.auto.zarr"))
                    print(f"{name:<22} {scores.min():>6.4f} {(scores.max() - scores.min()) / scores.min():>7.4f} "
                          f"{error(auto, 'maps'):>6.3f} {error(auto, 'fused'):>6.3f} {error(fixed, 'fused'):>8.3f}  "
                          f"{'yes' if warned else 'no'}", flush=True)


if __name__ == "__main__":
    main()
