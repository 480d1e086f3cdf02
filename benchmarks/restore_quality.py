"""Restoration quality on held-out synthetic HR-STEM images at low, medium and high dose.

For each dose, ``--n`` test images (``--size`` pixels square) are made with
``pipeline.restore.specimens.make_pair`` (random specimen, the full random S(T)EM distortion
chain with the dose fixed) from seeds that training never uses (``numpy.random.default_rng
(TEST_SEED + i)``; training draws from ``default_rng([seed, 0, step])``). Methods:

* ``raw``: the distorted image itself;
* ``gaussian``: a gaussian filter, its sigma chosen per dose on a separate validation set
  (seeds ``VAL_SEED + i``) from a grid, by median PSNR;
* ``bm3d``: blind BM3D (PyPI ``bm3d``) on the counts, the noise sigma estimated from the
  image by the median absolute deviation of its finest diagonal Haar wavelet coefficients;
* ``bm3d_vst``: the same after the Anscombe transform ``2 sqrt(x + 3/8)`` (shot noise made
  about unit-variance; the sigma is still estimated, not assumed), back with the exact
  unbiased inverse's closed-form approximation (Makitalo & Foi, IEEE TIP 2011): a stronger
  baseline at low dose, where counts are small integers and BM3D's gaussian model fails;
* ``r_em``: the published ``r_em:sfr_hrstem`` network (converted from ``tk-r-em``; skipped
  when that package is missing);
* ``default``: the project's default model (``pipeline/restore/models/default.safetensors``,
  or ``--model PATH``).

PSNR (data range = the clean image's max - min) and SSIM (gaussian window, sigma 1.5) come
from ``pipeline.metrics``; the table gives medians over the images. Per-image results are
cached in ``--cache`` (a JSON file), so a new model re-runs only its own rows.

    .venv/bin/python benchmarks/restore_quality.py [--n 24] [--size 256] [--model PATH] \
        [--methods raw gaussian bm3d r_em default] [--cache restore_quality.json] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.metrics import psnr, ssim
from pipeline.restore.noise import SETTINGS, Draw
from pipeline.restore.specimens import make_pair

DOSES = {"low": 5.0, "medium": 50.0, "high": 500.0}  # counts at the brightest column
TEST_SEED, VAL_SEED = 1_000_000, 2_000_000
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
METHODS = ("raw", "gaussian", "bm3d", "bm3d_vst", "r_em", "default")


def make_set(dose: float, n: int, size: int, base: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (clean, distorted) HR-STEM pairs at a fixed dose, from seeds ``base + i``."""
    settings = dict(SETTINGS["stem", "high"], dose=Draw(low=dose, high=dose))
    pairs = []
    for i in range(n):
        clean, degraded, _ = make_pair((size, size), "stem", "high", np.random.default_rng(base + i),
                                       settings=settings)
        pairs.append((clean.astype(np.float64), degraded.astype(np.float64)))
    return pairs


def mad_sigma(image: np.ndarray) -> float:
    """Noise standard deviation from the finest diagonal Haar coefficients: median(|HH|) / 0.6745.

    >>> round(mad_sigma(np.random.default_rng(0).normal(0, 2.0, (256, 256))), 1)
    2.0
    """
    a = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    hh = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / 0.6745)


def bm3d_blind(image: np.ndarray) -> np.ndarray:
    import bm3d

    sigma = max(mad_sigma(image), 1e-6 * (np.abs(image).max() + 1))
    return np.asarray(bm3d.bm3d(image, sigma_psd=sigma), dtype=np.float64)


def anscombe(x: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.clip(x, 0, None) + 3.0 / 8.0)


def inverse_anscombe(y: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011).

    >>> bool(abs(inverse_anscombe(np.array([anscombe(np.array([100.0]))[0]]))[0] - 100) < 0.5)
    True
    """
    y = np.maximum(y, 0.8)
    r = np.sqrt(1.5)
    return np.clip(0.25 * y**2 + 0.25 * r / y - 1.375 / y**2 + 0.625 * r / y**3 - 0.125, 0, None)


def bm3d_vst(image: np.ndarray) -> np.ndarray:
    return inverse_anscombe(bm3d_blind(anscombe(image)))


def tune_gaussian(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The grid sigma with the best median PSNR on ``pairs``."""
    scores = [np.median([psnr(ndimage.gaussian_filter(d, s), c) for c, d in pairs]) for s in SIGMAS]
    return float(SIGMAS[int(np.argmax(scores))])


def network(name: str | None):
    import torch

    from pipeline.restore import load_model

    model = load_model(name)

    def run(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(image.astype(np.float32))[None, None]
            return model(x)[0, 0].double().numpy()

    return run


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="test images per dose")
    parser.add_argument("--n-val", type=int, default=12, help="validation images per dose (gaussian sigma)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=None, help="our model (default: the project's default model)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cache", type=Path, default=None, help="JSON file of per-image results, reused")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pipeline.restore import DEFAULT_MODEL

    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    tag = {"raw": "raw", "gaussian": "gaussian", "bm3d": "bm3d", "bm3d_vst": "bm3d_vst", "r_em": "r_em:sfr_hrstem-1.0.4",
           "default": f"default:{file_digest(model_path)}" if model_path.is_file() else None}
    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.is_file() else {}
    key = f"n{args.n}-s{args.size}"
    results = cache.setdefault(key, {})

    for level, dose in DOSES.items():
        test = None
        for method in args.methods:
            if tag[method] is None:
                print(f"skip {method}: {model_path} does not exist")
                continue
            cell = f"{level}/{tag[method]}"
            if cell in results:
                continue
            test = test or make_set(dose, args.n, args.size, TEST_SEED)
            start, extra = time.perf_counter(), {}
            if method == "raw":
                fn = lambda d: d  # noqa: E731
            elif method == "gaussian":
                sigma = tune_gaussian(make_set(dose, args.n_val, args.size, VAL_SEED))
                fn, extra = (lambda d, s=sigma: ndimage.gaussian_filter(d, s)), {"sigma": sigma}
            elif method == "bm3d":
                fn = bm3d_blind
            elif method == "bm3d_vst":
                fn = bm3d_vst
            else:
                try:
                    fn = network("r_em:sfr_hrstem" if method == "r_em" else str(model_path))
                except ImportError as exc:
                    print(f"skip {method}: {exc}")
                    continue
            outs = [fn(d) for _, d in test]
            results[cell] = {
                "method": method, "dose": dose,
                "psnr": [psnr(o, c) for o, (c, _) in zip(outs, test)],
                "ssim": [ssim(o, c) for o, (c, _) in zip(outs, test)],
                "seconds_per_image": (time.perf_counter() - start) / len(test), **extra,
            }
            print(f"{level:>6} {method:>8}: median PSNR {np.median(results[cell]['psnr']):6.2f} dB "
                  f"({results[cell]['seconds_per_image']:.2f} s/image)", flush=True)
            if args.cache:
                tmp = args.cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(cache, indent=1))
                os.replace(tmp, args.cache)

    rows = []
    for level, dose in DOSES.items():
        row = {"dose": f"{level} ({dose:g})"}
        for method in args.methods:
            cell = results.get(f"{level}/{tag[method]}") if tag[method] else None
            row[method] = (float(np.median(cell["psnr"])), float(np.median(cell["ssim"]))) if cell else None
        # the gain over the better BM3D variant at this dose (by median PSNR)
        bms = [c for c in (results.get(f"{level}/bm3d"), results.get(f"{level}/bm3d_vst")) if c]
        b = max(bms, key=lambda c: np.median(c["psnr"])) if bms else None
        o = results.get(f"{level}/{tag['default']}") if tag["default"] else None
        row["gain"] = float(np.median(np.subtract(o["psnr"], b["psnr"]))) if b and o else None
        rows.append(row)

    names = list(args.methods)
    if args.markdown:
        print("| dose | " + " | ".join(f"{m} PSNR / SSIM" for m in names) + " | default - best BM3D (dB) |")
        print("|---" * (len(names) + 2) + "|")
    for row in rows:
        cells = [f"{v[0]:.2f} / {v[1]:.3f}" if v else "-" for v in (row[m] for m in names)]
        gain = f"{row['gain']:+.2f}" if row["gain"] is not None else "-"
        if args.markdown:
            print(f"| {row['dose']} | " + " | ".join(cells) + f" | {gain} |")
        else:
            print(f"{row['dose']:>14} " + " ".join(f"{c:>16}" for c in cells) + f" {gain:>8}")


if __name__ == "__main__":
    main()
