"""Restoration quality on test sets that training never sees, per family and dose.

Every set is scored with median PSNR (dB; data range = the clean image's max - min) and median
SSIM (gaussian window, sigma 1.5) from ``emfuse.pipeline.metrics``, per dose, for each method:

* ``raw``: the distorted image itself;
* ``gaussian``: a gaussian filter, its sigma chosen per set and dose on separate validation
  images (seeds ``VAL_SEED + offset + i``) from a grid, by median PSNR;
* ``bm3d``: blind BM3D (PyPI ``bm3d``) on the counts, the noise sigma estimated from the image
  by the median absolute deviation of its finest diagonal Haar wavelet coefficients;
* ``bm3d_vst``: the same after the Anscombe transform ``2 sqrt(x + 3/8)``, back with the
  closed-form approximation of the exact unbiased inverse (Makitalo & Foi, IEEE TIP 2011);
* ``r_em``: the published r_em network that matches the set's modality and resolution
  (``r_em:sfr_hrstem``, ``sfr_lrstem``, ``sfr_hrtem``, ``sfr_lrtem``, ``sfr_hrsem``,
  ``sfr_lrsem``; converted from ``tk-r-em``, skipped when that package is missing);
* ``default``: the project's old default model (``load_model()``);
* one column per ``--model NAME=PATH`` (repeatable). ``--model NAME:stem=PATH`` (or
  ``NAME:stem-low=PATH``) gives NAME's file for one modality (or modality and resolution);
  a set whose modality has no file for NAME gets no NAME column. A checkpoint of
  ``emfuse.pipeline.restore.train`` (``checkpoint-*.safetensors``) gives its network only while
  its run has no ``model.safetensors`` yet (a look at a run before it ends); after, use that file.

Test sets (``--sets``; :data:`SETS`). Seeds: image ``i`` of a set is drawn from
``numpy.random.default_rng(TEST_SEED + offset + i)``, each set its own ``offset``; training draws
``default_rng([seed, 0, step])``, so no test image is a training image. Every dose of a set
uses the same seeds (the same scenes at three doses). Doses: S(T)EM and SEM 5, 50, 500 counts
at the brightest pixel; TEM 5, 50, 500 electrons per pixel at the mean.

1. held out of training (:data:`emfuse.pipeline.synth.scenes.HELD_OUT`): ``polycrystal`` (STEM HAADF,
   high resolution), ``abf`` (STEM annular bright field, any family but polycrystal),
   ``row_line_rel`` (STEM HAADF with row-offset noise always on), ``flicker_sigma`` (TEM with
   frame-flicker noise always on); the other held-out things stay out of each set, so each
   measures one unseen factor; ``polycrystal-clean``: the polycrystal family from a clean scan
   (the detector's noise its only distortion, :func:`emfuse.pipeline.synth.scenes.noise_only_settings`);
2. in distribution (:func:`emfuse.pipeline.synth.scenes.make_scene_pair` without the held-out
   families, contrasts and distortions): ``stem-high``, ``stem-low``, ``tem-high``,
   ``tem-low``, ``sem`` (high resolution), and ``stem-clean`` (``stem-high``'s families from a
   clean scan);
3. ``narrow``: the old HR-STEM generator (:func:`emfuse.pipeline.synth.restore_specimens.make_pair`), the
   earlier benchmark's set (same seeds);
4. ``multem-*``: the MULTEM test pairs shipped with ``tk-r-em`` (``test_data/sfr_*.h5``,
   256 x 256, 8 each, their own unknown dose: one row "as simulated"). The r_em networks were
   trained on this simulator; our models never saw it;
5. ``real-hrstem``: ``tk-r-em``'s experimental HR-STEM frames (``exp_hrstem.h5``), which have no
   truth: no score, only the figure ``docs/figures/restore/real_hrstem.png`` (with
   ``--figures``) and the decision of ``emfuse.pipeline.restore.guard`` on each output.

Targets (printed as one PASS/FAIL line per set and dose, for the default and every
``--model``): (a) at least 2 dB over the better BM3D variant (difference of the medians) on
every held-out set and dose; (b) within 1 dB of ``r_em:sfr_hrstem`` on the HR-STEM sets; (c) no
test image whose restored SSIM is below the raw input's (the count is printed).

Per-image results are cached in ``--cache`` (JSON; keyed by set, dose, size, index, a digest of
the test pair and the method with the digest of its model file), so a new model scores only
its own rows and a changed generator or model file is redone. Several runs may share a cache:
each write merges with the file on disk.

    .venv/bin/python benchmarks/restore_quality.py --cache /work/runs/rq_cache.json \\
        --model universal=/work/runs/universal/model.safetensors [--n 8] [--size 128] \\
        [--sets polycrystal abf ...] [--methods raw bm3d ...] [--markdown] [--json out.json] \\
        [--figures]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from emfuse.pipeline.arrays import central_crop
from emfuse.pipeline.metrics import psnr, ssim
from emfuse.pipeline.synth.distortions import SETTINGS, Draw

DOSES = {"low": 5.0, "medium": 50.0, "high": 500.0}
TEST_SEED, VAL_SEED = 1_000_000, 2_000_000
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
METHODS = ("raw", "gaussian", "bm3d", "bm3d_vst", "r_em", "default")
#: methods besides these: "truth" (the clean image: an oracle, for tests) and the --model names
EXTRA_METHODS = ("truth",)
CACHE_FORMAT = "restore-quality-2"
MULTEM_FILES = ("hrstem", "lrstem", "lrtem", "hrsem", "lrsem")
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures" / "restore"


@dataclass(frozen=True)
class TestSet:
    """One test set: how its pairs are drawn."""

    name: str
    group: str  # "held-out", "in-distribution", "narrow", "multem", "real"
    modality: str  # stem, tem, sem
    resolution: str  # high, low
    offset: int = 0  # seeds TEST_SEED + offset + i
    scene: Mapping = field(default_factory=dict)  # family / contrast / exclude for make_scene
    forced: str | None = None  # a held-out distortion always applied
    note: str = ""
    clean_scan: bool = False  # the detector's noise alone (scenes.noise_only_settings)

    @property
    def doses(self) -> dict[str, float | None]:
        return {"as simulated": None} if self.group in ("multem", "real") else DOSES

    @property
    def r_em(self) -> str:
        return f"r_em:sfr_{'hr' if self.resolution == 'high' else 'lr'}{self.modality}"


def _sets() -> dict[str, TestSet]:
    from emfuse.pipeline.synth.scenes import held_out

    no_poly = ("polycrystal",)
    out = [
        TestSet("polycrystal", "held-out", "stem", "high", 10_000,
                {"family": "polycrystal", "contrast": "haadf"}, note="STEM HAADF, family polycrystal"),
        TestSet("abf", "held-out", "stem", "high", 20_000, {"contrast": "abf", "exclude": no_poly},
                note="STEM annular bright field, any family but polycrystal"),
        TestSet("row_line_rel", "held-out", "stem", "high", 30_000,
                {"contrast": "haadf", "exclude": no_poly}, forced="row_line_rel",
                note="STEM HAADF, row-offset noise always on"),
        TestSet("flicker_sigma", "held-out", "tem", "high", 40_000, {"exclude": no_poly},
                forced="flicker_sigma", note="TEM phase contrast, 1/f flicker noise always on"),
        TestSet("polycrystal-clean", "held-out", "stem", "high", 110_000,
                {"family": "polycrystal", "contrast": "haadf"}, clean_scan=True,
                note="STEM HAADF, family polycrystal, a clean scan (the detector's noise alone)"),
    ]
    for k, (mod, res) in enumerate([("stem", "high"), ("stem", "low"), ("tem", "high"), ("tem", "low"),
                                    ("sem", "high")]):
        name = "sem" if mod == "sem" else f"{mod}-{res}"
        out.append(TestSet(name, "in-distribution", mod, res, 50_000 + 10_000 * k,
                           {"exclude": held_out("all")}, note="training's distribution"))
    out.append(TestSet("stem-clean", "in-distribution", "stem", "high", 120_000, {"exclude": held_out("all")},
                       clean_scan=True, note="training's families, a clean scan (the detector's noise alone)"))
    out.append(TestSet("narrow", "narrow", "stem", "high", 0, note="the old generator (specimens.make_pair)"))
    for name in MULTEM_FILES:
        mod = name[2:]
        out.append(TestSet(f"multem-{name}", "multem", mod, "high" if name.startswith("hr") else "low",
                           note=f"tk-r-em test_data/sfr_{name}.h5 (MULTEM; r_em's simulator)"))
    out.append(TestSet("real-hrstem", "real", "stem", "high", note="tk-r-em test_data/exp_hrstem.h5"))
    return {s.name: s for s in out}


SETS = _sets()


# --------------------------------------------------------------------------------------------
# Test pairs
# --------------------------------------------------------------------------------------------
def distortion_table(spec: TestSet, dose: float) -> dict[str, Draw]:
    """The set's distortion table with the dose fixed: training's table without the held-out
    distortions, but the set's ``forced`` one always applied."""
    from emfuse.pipeline.synth.scenes import (
        held_out,
        held_out_settings,
        noise_only_settings,
        training_settings,
    )

    settings = noise_only_settings if spec.clean_scan else training_settings
    table = dict(settings(spec.modality, spec.resolution, exclude=held_out("distortion")))
    if spec.forced:
        table[spec.forced] = held_out_settings(spec.modality, spec.resolution, spec.forced)[spec.forced]
    table["dose"] = Draw(low=dose, high=dose)
    return table


def tk_r_em_data() -> Path | None:
    """``tk_r_em``'s ``test_data`` folder, or None without the package."""
    spec = importlib.util.find_spec("tk_r_em")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "test_data"
    return folder if folder.is_dir() else None


def make_pairs(spec: TestSet | str, level: str, n: int, size: int, *, base: int = TEST_SEED
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (clean, distorted) float64 pairs of a set at a dose level (``"as simulated"`` for
    the MULTEM files, which hold 8)."""
    spec = SETS[spec] if isinstance(spec, str) else spec
    if spec.group == "multem":
        import h5py

        folder = tk_r_em_data()
        if folder is None:
            raise FileNotFoundError("tk_r_em is not installed: no MULTEM test pairs")
        with h5py.File(folder / f"sfr_{spec.name.split('-', 1)[1]}.h5", "r") as f:
            x = f["x"][:n, 0].transpose(0, 2, 1).astype(np.float64)
            y = f["y"][:n, 0].transpose(0, 2, 1).astype(np.float64)
        return list(zip(y, x))
    if spec.group == "real":
        raise ValueError("the real set has no truth")
    dose = DOSES[level]
    pairs = []
    for i in range(n):
        rng = np.random.default_rng(base + spec.offset + i)
        if spec.group == "narrow":
            from emfuse.pipeline.synth.restore_specimens import make_pair

            settings = dict(SETTINGS["stem", "high"], dose=Draw(low=dose, high=dose))
            clean, degraded, _ = make_pair((size, size), "stem", "high", rng, settings=settings)
        else:
            from emfuse.pipeline.synth.scenes import make_scene_pair

            clean, degraded, _ = make_scene_pair((size, size), spec.modality, spec.resolution, rng,
                                                 settings=distortion_table(spec, dose), **spec.scene)
        pairs.append((clean.astype(np.float64), degraded.astype(np.float64)))
    return pairs


def set_levels(sets: list[str], n: int, size: int, log: Callable[[str], None] | None = None
               ) -> Iterator[tuple[str, str, list[tuple[np.ndarray, np.ndarray]]]]:
    """``(set, level, pairs)`` of each set with a truth and each of its doses; a MULTEM set is
    left out (``log`` says so) without ``tk_r_em``."""
    for name in sets:
        spec = SETS[name]
        if spec.group == "real":
            continue
        for level in spec.doses:
            try:
                pairs = make_pairs(spec, level, n, size)
            except FileNotFoundError as exc:
                if log is not None:
                    log(f"skip {name}: {exc}")
                break
            yield name, level, pairs


def scored_pairs(n: int, size: int, sets: list[str] | None = None
                 ) -> Iterator[tuple[str, str, int, np.ndarray, np.ndarray]]:
    """``(set, level, index, clean, degraded)`` of every image of :func:`set_levels` (all of
    :data:`SETS` by default)."""
    for name, level, pairs in set_levels(sets or list(SETS), n, size):
        for i, (clean, degraded) in enumerate(pairs):
            yield name, level, i, clean, degraded


def pair_digest(clean: np.ndarray, degraded: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(clean, np.float32).tobytes())
    h.update(np.ascontiguousarray(degraded, np.float32).tobytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------
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


_NETS: dict[str, Callable] = {}


def network(name: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """``image -> restored`` with a model of :func:`emfuse.pipeline.restore.load_model` (loaded once)."""
    key = str(name)
    if key not in _NETS:
        import torch

        from emfuse.pipeline.restore import load_model

        model = load_model(name)

        def run(image: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(image.astype(np.float32))[None, None]
                return model(x)[0, 0].double().numpy()

        _NETS[key] = run
    return _NETS[key]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def parse_models(items: list[str]) -> dict[str, dict[str, Path]]:
    """``["u=a.st", "s:stem=b.st", "s:tem-low=c.st"]`` -> ``{"u": {"": a}, "s": {"stem": b, "tem-low": c}}``.

    >>> parse_models(["u=a", "s:stem=b"])
    {'u': {'': PosixPath('a')}, 's': {'stem': PosixPath('b')}}
    """
    models: dict[str, dict[str, Path]] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--model wants NAME=PATH or NAME:MODALITY=PATH, got {item!r}")
        label, path = item.split("=", 1)
        name, _, scope = label.partition(":")
        if not name or name in METHODS + EXTRA_METHODS:
            raise SystemExit(f"--model name {name!r} is empty or a method's name")
        if scope and scope.split("-")[0] not in ("stem", "tem", "sem"):
            raise SystemExit(f"--model {label}: the scope must be stem, tem or sem (-high/-low)")
        models.setdefault(name, {})[scope] = _model_path(path)
    return models


def _model_path(text: str) -> Path:
    """A file, or a name of :data:`emfuse.pipeline.restore.MODEL_FILES` (the shipped own models)."""
    try:
        from emfuse.pipeline.restore import MODEL_FILES
    except ImportError:  # an older tree
        MODEL_FILES = {}
    return MODEL_FILES[text] if text in MODEL_FILES and not Path(text).exists() else Path(text)


def model_file(files: Mapping[str, Path], spec: TestSet) -> Path | None:
    """NAME's file for a set: modality-resolution, then modality, then the unscoped one."""
    for scope in (f"{spec.modality}-{spec.resolution}", spec.modality, ""):
        if scope in files:
            return files[scope]
    return None


@dataclass
class Method:
    label: str
    tag: str  # cache key part: changes when the model file does
    run: Callable[[np.ndarray], np.ndarray] | None  # None: set-specific (gaussian)


GUARD = "+guard"  # suffix: the model's output after emfuse.pipeline.restore.guard, as the restore job keeps it


def resolve_method(label: str, spec: TestSet, models: Mapping[str, Mapping[str, Path]],
                   n_val: int) -> Method | str:
    """The method for a set, or the reason it is skipped."""
    if label.endswith(GUARD):
        base = resolve_method(label[:-len(GUARD)], spec, models, n_val)
        if isinstance(base, str):
            return base
        return Method(label, base.tag + GUARD, base.run)
    if label == "raw":
        return Method(label, "raw", lambda d: d)
    if label == "truth":
        return Method(label, "truth", None)
    if label == "bm3d":
        return Method(label, "bm3d", bm3d_blind)
    if label == "bm3d_vst":
        return Method(label, "bm3d_vst", bm3d_vst)
    if label == "gaussian":
        if spec.group == "multem":
            return "no validation images for the gaussian's sigma"
        return Method(label, f"gaussian-v{n_val}", None)
    if label == "r_em":
        from emfuse.pipeline.restore import R_EM_VERSION

        if importlib.util.find_spec("tk_r_em") is None:
            return "tk-r-em is not installed"
        return Method(label, f"{spec.r_em}-{R_EM_VERSION}", None)
    if label == "default":
        from emfuse.pipeline.restore import DEFAULT_MODEL

        if not DEFAULT_MODEL.is_file():
            return f"{DEFAULT_MODEL} does not exist"
        return Method(label, f"default:{file_digest(DEFAULT_MODEL)}", None)
    path = model_file(models[label], spec)
    if path is None:
        return f"no file for {spec.modality}-{spec.resolution}"
    if not path.is_file():
        return f"{path} does not exist"
    return Method(label, f"model:{file_digest(path)}", None)


def method_function(method: Method, spec: TestSet, models, level: str, size: int, n_val: int):
    if method.label.endswith(GUARD):
        from emfuse.pipeline.restore.guard import guard

        base = Method(method.label[:-len(GUARD)], method.tag[:-len(GUARD)], method.run)
        run, info = method_function(base, spec, models, level, size, n_val)
        return (lambda d: guard(d, run(d))[0]), info
    if method.run is not None:
        return method.run, {}
    if method.label == "gaussian":
        sigma = tune_gaussian(make_pairs(spec, level, n_val, size, base=VAL_SEED))
        return (lambda d, s=sigma: ndimage.gaussian_filter(d, s)), {"sigma": sigma}
    if method.label == "r_em":
        return network(spec.r_em), {}
    if method.label == "default":
        return network(None), {}
    return network(str(model_file(models[method.label], spec))), {}


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
class Cache:
    """Per-image results in a JSON file: ``{"format": ..., "images": {key: {psnr, ssim, ...}}}``.

    A file of the earlier format (per-cell lists under ``"n24-s256"``-like keys) is kept under
    ``"legacy"`` and not used. :meth:`flush` merges with what other runs wrote meanwhile.
    """

    def __init__(self, path: Path | None):
        self.path, self.images, self.new = path, {}, {}
        self.legacy = None
        if path and path.is_file():
            data = json.loads(path.read_text())
            if data.get("format") == CACHE_FORMAT:
                self.images = data["images"]
                self.legacy = data.get("legacy")
            else:
                self.legacy = data

    def get(self, key: str):
        return self.new.get(key) or self.images.get(key)

    def put(self, key: str, value: dict) -> None:
        self.new[key] = value

    def flush(self) -> None:
        if not self.path or not self.new:
            return
        on_disk = Cache(self.path)
        images = {**on_disk.images, **self.images, **self.new}
        data = {"format": CACHE_FORMAT, "images": images}
        if self.legacy or on_disk.legacy:
            data["legacy"] = self.legacy or on_disk.legacy
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)
        self.images, self.new = images, {}


def image_key(spec: TestSet, level: str, size: int, i: int, digest: str, tag: str) -> str:
    size_part = "256" if spec.group == "multem" else str(size)
    return f"{spec.name}|{level}|{size_part}|{i}|{digest}|{tag}"


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def evaluate(set_names: list[str], methods: list[str], *, n: int, size: int, n_val: int = 8,
             models: Mapping[str, Mapping[str, Path]] | None = None, cache: Cache | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Per-image scores ``{set: {level: {method: [{"psnr", "ssim"}, ...]}}}`` (index order)."""
    models = models or {}
    cache = cache or Cache(None)
    results: dict = {}
    for name, level, pairs in set_levels(set_names, n, size, log):
        spec = SETS[name]
        digests = [pair_digest(c, d) for c, d in pairs]
        cell = results.setdefault(name, {}).setdefault(level, {})
        for label in methods:
            method = resolve_method(label, spec, models, n_val)
            if isinstance(method, str):
                if level == next(iter(spec.doses)):
                    log(f"skip {label} on {name}: {method}")
                continue
            keys = [image_key(spec, level, size, i, digests[i], method.tag) for i in range(len(pairs))]
            missing = [i for i, k in enumerate(keys) if cache.get(k) is None]
            if missing:
                start = time.perf_counter()
                if label == "truth":
                    fn, extra = (lambda d: d), {}
                else:
                    fn, extra = method_function(method, spec, models, level, size, n_val)
                for i in missing:
                    clean, degraded = pairs[i]
                    t0 = time.perf_counter()
                    out = clean if label == "truth" else fn(degraded)
                    cache.put(keys[i], {"psnr": psnr(out, clean), "ssim": ssim(out, clean),
                                        "seconds": time.perf_counter() - t0, **extra})
                cache.flush()
                log(f"{name:>14} {level:>12} {label:>10}: {len(missing)} image(s) in "
                    f"{time.perf_counter() - start:.1f} s")
            cell[label] = [cache.get(k) for k in keys]
    return results


def _median(scores: list[dict], what: str) -> float:
    return float(np.median([s[what] for s in scores]))


def summarise(results: dict) -> dict:
    """Medians and the count of images whose SSIM is below raw's, per set, level and method."""
    out: dict = {}
    for name, levels in results.items():
        for level, cell in levels.items():
            raw = cell.get("raw")
            for label, scores in cell.items():
                row = {"psnr": _median(scores, "psnr"), "ssim": _median(scores, "ssim"), "n": len(scores)}
                if raw and label not in ("raw", "truth"):
                    row["ssim_below_raw"] = int(sum(s["ssim"] < r["ssim"] for s, r in zip(scores, raw)))
                out.setdefault(name, {}).setdefault(level, {})[label] = row
    return out


def targets(summary: dict, own: list[str]) -> list[dict]:
    """Targets (a), (b), (c) per set, level and own model (see the module's docstring)."""
    lines = []
    for name, levels in summary.items():
        spec = SETS[name]
        for level, cell in levels.items():
            for label in own:
                if label not in cell:
                    continue
                o = cell[label]
                bms = [cell[m]["psnr"] for m in ("bm3d", "bm3d_vst") if m in cell]
                if spec.group == "held-out" and bms:
                    gain = o["psnr"] - max(bms)
                    lines.append({"target": "a", "set": name, "level": level, "model": label,
                                  "value": gain, "pass": gain >= 2.0,
                                  "text": f"{gain:+.2f} dB over the best BM3D (>= +2)"})
                if spec.modality == "stem" and spec.resolution == "high" and "r_em" in cell:
                    diff = o["psnr"] - cell["r_em"]["psnr"]
                    lines.append({"target": "b", "set": name, "level": level, "model": label,
                                  "value": diff, "pass": diff >= -1.0,
                                  "text": f"{diff:+.2f} dB against r_em:sfr_hrstem (>= -1)"})
                if "ssim_below_raw" in o:
                    k = o["ssim_below_raw"]
                    lines.append({"target": "c", "set": name, "level": level, "model": label,
                                  "value": k, "pass": k == 0,
                                  "text": f"{k} of {o['n']} images with SSIM below raw's (0)"})
    return lines


def _level_label(spec: TestSet, level: str) -> str:
    if level not in DOSES:
        return level
    unit = "e/px mean" if spec.modality == "tem" else "counts max"
    return f"{level} ({DOSES[level]:g} {unit})"


def format_tables(summary: dict, methods: list[str], *, markdown: bool) -> str:
    lines = []
    for name, levels in summary.items():
        spec = SETS[name]
        cols = [m for m in methods if any(m in cell for cell in levels.values())]
        n = max(row["n"] for cell in levels.values() for row in cell.values())
        title = f"{name} [{spec.group}; {spec.modality}, {spec.resolution} resolution; {spec.note}; n = {n}]"
        if markdown:
            lines += ["", f"**{title}**", "",
                      "| dose | " + " | ".join(f"{m} PSNR / SSIM" for m in cols) + " |",
                      "|---" * (len(cols) + 1) + "|"]
        else:
            lines += ["", title, f"{'dose':>24} " + " ".join(f"{m:>16}" for m in cols)]
        for level, cell in levels.items():
            cells = [f"{cell[m]['psnr']:.2f} / {cell[m]['ssim']:.3f}" if m in cell else "-" for m in cols]
            if markdown:
                lines.append(f"| {_level_label(spec, level)} | " + " | ".join(cells) + " |")
            else:
                lines.append(f"{_level_label(spec, level):>24} " + " ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def format_targets(lines: list[dict]) -> str:
    out = []
    for t in lines:
        out.append(f"target {t['target']} {'PASS' if t['pass'] else 'FAIL'}  {t['set']:<14} {t['level']:<12} "
                   f"{t['model']:<12} {t['text']}")
    for target in "abc":
        sel = [t for t in lines if t["target"] == target]
        if sel:
            out.append(f"target {target}: {sum(t['pass'] for t in sel)} of {len(sel)} pass")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _panel(ax, img, title, lo, hi):
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def heldout_figure(summary: dict, models, size: int, path: Path, own: list[str], log=print) -> None:
    """One row per held-out set (medium dose, image 0): raw | best BM3D | r_em | own models | truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in SETS.values() if s.group == "held-out"]
    cols = 4 + len(own)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.9 * cols, 2.0 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        spec = SETS[name]
        clean, degraded = make_pairs(spec, "medium", 1, size)[0]
        cell = summary.get(name, {}).get("medium", {})
        bm = max((m for m in ("bm3d", "bm3d_vst") if m in cell), key=lambda m: cell[m]["psnr"], default="bm3d_vst")
        panels = [("raw", degraded), (bm, (bm3d_blind if bm == "bm3d" else bm3d_vst)(degraded))]
        panels.append((spec.r_em, network(spec.r_em)(degraded)))
        for label in own:
            m = resolve_method(label, spec, models, 0)
            if isinstance(m, str):
                panels.append((f"{label}: -", np.full_like(clean, np.nan)))
            else:
                fn, _ = method_function(m, spec, models, "medium", size, 0)
                panels.append((label, fn(degraded)))
        panels.append(("truth", clean))
        lo, hi = np.percentile(clean, [0.5, 99.5])
        for c, (title, img) in enumerate(panels):
            text = title if title == "truth" else f"{title}\n{psnr(img, clean):.1f} dB" if np.isfinite(img).all() else title
            _panel(axes[r, c], img, text, lo, hi)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"held-out sets, medium dose, image 0 ({size} px)", fontsize=10)
    _save_figure(fig, path, log)


def _save_figure(fig, path: Path, log) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")


def guard_decision(raw: np.ndarray, restored: np.ndarray) -> str:
    """:func:`emfuse.pipeline.restore.guard.guard`'s decision for one output."""
    from emfuse.pipeline.restore.guard import guard

    return guard(raw, restored)[1].decision


def real_figure(models, path: Path, own: list[str], *, crop: int = 256, margin: int = 32, log=print
                ) -> dict | None:
    """Experimental HR-STEM frames (no truth): raw | r_em | own models, central ``crop`` px
    (restored from the central ``crop + 2 margin`` px), and the guard's decision per output
    (``{label: [decision per frame]}``, computed on the restored ``crop + 2 margin`` px)."""
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = tk_r_em_data()
    if folder is None or not (folder / "exp_hrstem.h5").is_file():
        log("skip real-hrstem: tk_r_em's exp_hrstem.h5 is missing")
        return None
    with h5py.File(folder / "exp_hrstem.h5", "r") as f:
        frames = f["x"][:, 0].astype(np.float64)
    spec = SETS["real-hrstem"]
    big = crop + 2 * margin
    inputs = []
    for frame in frames:
        inputs.append(frame[central_crop(frame.shape, big)])
    decisions: dict[str, list] = {}
    labels = ["raw", "r_em"] + own
    fig, axes = plt.subplots(len(inputs), len(labels), figsize=(2.0 * len(labels), 2.0 * len(inputs)),
                             squeeze=False)
    inner = (slice(margin, margin + crop), slice(margin, margin + crop))
    for r, img in enumerate(inputs):
        for c, label in enumerate(labels):
            if label == "raw":
                out, title = img, "raw"
            else:
                m = resolve_method(label, spec, models, 0)
                if isinstance(m, str):
                    out, title = np.full_like(img, np.nan), f"{label}: -"
                else:
                    fn, _ = method_function(m, spec, models, "", 0, 0)
                    out, title = fn(img), (spec.r_em if label == "r_em" else label)
                    decision = guard_decision(img, out)
                    decisions.setdefault(label, []).append(decision)
                    title += f"\nguard: {decision}"
            shown = out[inner]
            lo, hi = np.nanpercentile(shown, [0.5, 99.5]) if np.isfinite(shown).any() else (0, 1)
            _panel(axes[r, c], shown, title, lo, hi)
        axes[r, 0].set_ylabel(f"frame {r}", fontsize=9)
    fig.suptitle(f"tk-r-em exp_hrstem.h5: central {crop} px (no truth)", fontsize=10)
    _save_figure(fig, path, log)
    for label, values in decisions.items():
        log(f"guard on real-hrstem, {label}: {', '.join(values)}")
    return decisions


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="test images per set and dose (MULTEM: at most 8)")
    parser.add_argument("--n-val", type=int, default=8, help="validation images per set and dose (gaussian sigma)")
    parser.add_argument("--size", type=int, default=128, help="px of the synthetic sets (MULTEM: 256)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME[:MODALITY]=PATH",
                        help="an own model to score (repeatable); MODALITY: stem, tem, sem, or e.g. stem-low")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"of {', '.join(METHODS + EXTRA_METHODS)} and the --model names, each also with "
                             "the suffix +guard (its output after the residual guard, as the restore job keeps it) "
                             "(default: all but truth)")
    parser.add_argument("--cache", type=Path, default=None, help="JSON file of per-image results, reused")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--json", type=Path, default=None, help="write medians and targets here")
    parser.add_argument("--figures", action="store_true",
                        help=f"write heldout_examples.png (and real_hrstem.png with the real set) to {FIGURES}")
    parser.add_argument("--figure-dir", type=Path, default=FIGURES)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    models = parse_models(args.model)
    methods = args.methods or list(METHODS) + list(models)
    unknown = [m for m in methods if m.removesuffix(GUARD) not in METHODS + EXTRA_METHODS
               and m.removesuffix(GUARD) not in models]
    if unknown:
        parser.error(f"unknown methods {unknown}: give --model NAME=PATH for an own model")
    own = [m for m in methods if m.removesuffix(GUARD) == "default" or m.removesuffix(GUARD) in models]
    cache = Cache(args.cache)
    results = evaluate(args.sets, methods, n=args.n, size=args.size, n_val=args.n_val, models=models,
                       cache=cache)
    summary = summarise(results)
    print(format_tables(summary, methods, markdown=args.markdown))
    lines = targets(summary, own)
    print()
    print(format_targets(lines))
    decisions = None
    if args.figures:
        if any(SETS[s].group == "held-out" for s in args.sets):
            heldout_figure(summary, models, args.size, args.figure_dir / "heldout_examples.png", own)
        if "real-hrstem" in args.sets:
            decisions = real_figure(models, args.figure_dir / "real_hrstem.png", own)
    out = {"n": args.n, "size": args.size, "models": {k: {s: str(p) for s, p in v.items()} for k, v in models.items()},
           "summary": summary, "targets": lines, "guard": decisions}
    if args.json:
        args.json.write_text(json.dumps(_json_safe(out), indent=1))
    return out


if __name__ == "__main__":
    main()
