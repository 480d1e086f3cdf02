"""The overnight catalog: which datasets to run, with which jobs and parameters, and where.

A catalog is YAML (``../shared/DESIGN.md``)::

    output: results/              # one output store per dataset and job goes here
    cluster: local                # a profile name, a profile YAML file or a scheduler address
    data_root: /data/incoming     # optional: every dataset (and model file) must lie under it
    datasets:
      - path: incoming/run1.zarr  # a canonical store, a raw file to ingest, or a glob
        jobs: [fuse]              # any of fuse, restore, tem-fuse
        elements: [Sc, Dy, O]
        params: {lambda_chem: auto, lambda_tv: auto}
      - path: incoming/movies/*.emd
        jobs: [restore]
        params: {model: "r_em:sfr_hrstem"}

Relative paths are relative to the catalog file, so a cron job may start anywhere.
``params`` are given flat (each goes to the dataset's jobs that take it) or per job
(``params: {restore: {model: ...}, tem-fuse: {model: ...}}``).

Two kinds of mistake are told apart. A catalog that cannot be read as a whole (YAML syntax,
an unknown top-level key, a bad cluster) raises :class:`CatalogError` before anything runs.
A mistake in one dataset (a missing file, an unknown key, job or parameter, a path outside
``data_root``) is kept on that dataset's :class:`DatasetEntry` as ``error``: the batch reports
it as failed and runs the others.

Examples
--------
>>> catalog = load_catalog("tonight.yaml")  # doctest: +SKIP
>>> [(d.name, d.jobs) for d in catalog.datasets]  # doctest: +SKIP
[('run1', ('fuse',)), ('movie_a', ('restore',))]
"""

from __future__ import annotations

import difflib
import glob
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emfuse.errors import EmfuseError

from ..jobs import JOBS

TOP_KEYS = ("output", "cluster", "data_root", "datasets")
DATASET_KEYS = ("path", "jobs", "name", "elements", "signal", "params")
DEFAULT_OUTPUT = "results"
INPUTS_DIR = "inputs"  # raw files are ingested into <output>/inputs/
_GLOB = re.compile(r"[*?\[]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CatalogError(EmfuseError, ValueError):
    """The catalog file cannot be used at all (nothing was run)."""


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the catalog, its jobs and each job's options; ``error`` if unusable."""

    name: str
    path: str
    jobs: tuple[str, ...]
    elements: tuple[str, ...] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    signal: str | int | None = None  # which spectrum image of a raw file (``emfuse ingest --signal``)


@dataclass(frozen=True)
class Catalog:
    """A loaded catalog: absolute paths, the cluster to use, and its datasets."""

    path: str
    output: str
    cluster: Any
    data_root: str | None
    datasets: tuple[DatasetEntry, ...]

    @property
    def inputs_dir(self) -> str:
        """Where raw files are ingested."""
        return str(Path(self.output) / INPUTS_DIR)

    def store(self, entry: DatasetEntry, job: str) -> str:
        """The output store of one dataset and job: ``<output>/<name>.<job>.zarr``."""
        return str(Path(self.output) / f"{entry.name}.{job}.zarr")


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _unknown_keys(keys, known: tuple[str, ...]) -> list[str]:
    return [f"unknown key {k!r} ({_suggest(str(k), known)}known: {', '.join(known)})"
            for k in keys if k not in known]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CatalogError(f"catalog {path} does not exist; give the path of a catalog YAML file.") from None
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(f"catalog {path} is not valid YAML{line}: {problem}. Fix the syntax "
                           "(indentation, a missing colon or quote).") from exc
    if not isinstance(data, Mapping):
        raise CatalogError(f"catalog {path} must be a mapping with keys {', '.join(TOP_KEYS)}; "
                           f"it holds a {type(data).__name__}.")
    return dict(data)


def _absolute(value: str | Path, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _check_cluster(value: Any, base: Path, where: Path) -> Any:
    from emfuse.cluster import ClusterConfigError, as_spec

    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        value = str(_absolute(value, base))
    try:
        as_spec(value)
    except (ClusterConfigError, OSError, ValueError) as exc:
        raise CatalogError(f"catalog {where}: cluster: {exc}") from exc
    return value


def load_catalog(path: str | Path, *, cluster: Any = None) -> Catalog:
    """Read and check a catalog; ``cluster`` replaces the catalog's own (``--cluster``).

    Raises
    ------
    CatalogError
        the file is missing, not YAML, has an unknown top-level key or a bad cluster, or
        lists no datasets. Problems of single datasets are kept on their entries instead.
    """
    path = Path(path).absolute()
    data = _read_yaml(path)
    base = path.parent
    problems = _unknown_keys(data, TOP_KEYS)
    if problems:
        raise CatalogError(f"catalog {path}: {'; '.join(problems)}.")
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise CatalogError(f"catalog {path}: `datasets` must be a non-empty list of "
                           "{path, jobs, ...} entries.")
    output = _absolute(data.get("output") or DEFAULT_OUTPUT, base)
    root = data.get("data_root")
    data_root = _absolute(root, base).resolve() if root else None
    if data_root is not None and not data_root.is_dir():
        raise CatalogError(f"catalog {path}: data_root {data_root} is not a directory.")
    chosen = (_check_cluster(cluster, Path.cwd(), path) if cluster is not None  # --cluster: from the cwd
              else _check_cluster(data.get("cluster", "local"), base, path))
    entries: list[DatasetEntry] = []
    for index, raw in enumerate(datasets):
        entries.extend(_entries(raw, index, base, data_root))
    return Catalog(str(path), str(output), chosen, str(data_root) if data_root else None,
                   tuple(_unique_names(entries)))


def _label(raw: Any, index: int) -> str:
    if isinstance(raw, Mapping) and raw.get("name"):
        return str(raw["name"])
    if isinstance(raw, Mapping) and raw.get("path"):
        return _stem(Path(str(raw["path"])))
    return f"dataset-{index + 1}"


def _failed(raw: Any, index: int, message: str) -> DatasetEntry:
    jobs = raw.get("jobs") if isinstance(raw, Mapping) else None
    jobs = tuple(str(j) for j in jobs) if isinstance(jobs, list) and jobs else ("?",)
    path = str(raw.get("path", "")) if isinstance(raw, Mapping) else ""
    name = _label(raw, index)
    return DatasetEntry(name, path, jobs, error=f"dataset {name} (entry {index + 1}): {message}")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".input.zarr", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entries(raw: Any, index: int, base: Path, data_root: Path | None) -> list[DatasetEntry]:
    """The entries of one catalog item (several for a glob); failed entries carry ``error``."""
    if not isinstance(raw, Mapping):
        return [_failed(raw, index, f"each dataset must be a mapping with keys {', '.join(DATASET_KEYS)}")]
    problems = _unknown_keys(raw, DATASET_KEYS)
    if "path" not in raw:
        problems.append("`path` is missing")
    jobs = raw.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        problems.append(f"`jobs` must be a non-empty list of {', '.join(JOBS)}")
        jobs = []
    else:
        problems += [f"unknown job {j!r} ({_suggest(str(j), tuple(JOBS))}choose from {', '.join(JOBS)})"
                     for j in jobs if j not in JOBS]
        if len(set(jobs)) != len(jobs):
            problems.append(f"a job is listed twice in {jobs}")
    elements = raw.get("elements")
    if elements is not None and not (isinstance(elements, list) and all(isinstance(e, str) for e in elements)):
        problems.append("`elements` must be a list of element symbols, e.g. [Sc, Dy, O]")
    signal = raw.get("signal")
    if signal is not None and (isinstance(signal, bool) or not isinstance(signal, int | str)):
        problems.append("`signal` must be the index of a spectrum image in the file (as `emfuse ingest FILE "
                        "--list` numbers them) or its title, e.g. signal: 17")
    options, option_problems = _job_options(raw.get("params") or {}, [j for j in jobs if j in JOBS])
    problems += option_problems
    if raw.get("name") is not None and not _NAME.match(str(raw["name"])):
        problems.append(f"`name` {raw['name']!r} must be letters, digits, '.', '_' or '-'")
    if problems:
        return [_failed(raw, index, "; ".join(problems))]
    for job_options in options.values():
        problem = _outside_root(job_options.get("model"), base, data_root, "model")
        if problem:
            return [_failed(raw, index, problem)]
        if _is_path(job_options.get("model")):  # loaded from the catalog's folder, whatever the cwd
            job_options["model"] = str(_absolute(job_options["model"], base))
    paths, problem = _expand(str(raw["path"]), base, data_root)
    if problem:
        return [_failed(raw, index, problem)]
    if raw.get("name") and len(paths) > 1:
        return [_failed(raw, index, f"`name` cannot be given for a glob that matches {len(paths)} files")]
    elements = tuple(elements) if elements else None
    return [DatasetEntry(str(raw.get("name") or _stem(p)), str(p), tuple(jobs), elements,
                         {job: dict(options.get(job, {})) for job in jobs}, signal=signal) for p in paths]


def _job_options(params: Any, jobs: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Split ``params`` into each job's options; unknown names are problems."""
    if not isinstance(params, Mapping):
        return {}, ["`params` must be a mapping, e.g. {lambda_chem: auto}"]
    options: dict[str, dict[str, Any]] = {job: dict(JOBS[job].defaults) for job in jobs}
    problems = []
    # flat keys first, then per-job sections, so a job's own section wins whatever the order
    for key, value in sorted(params.items(), key=lambda item: item[0] in JOBS):
        if key in JOBS:  # per-job parameters
            if key not in jobs:
                problems.append(f"`params` has a {key!r} section but {key!r} is not in `jobs`")
            elif not isinstance(value, Mapping):
                problems.append(f"`params.{key}` must be a mapping")
            else:
                known = JOBS[key].options
                problems += [f"{key}: {p}" for p in _unknown_keys(value, known)]
                options[key].update({k: v for k, v in value.items() if k in known})
            continue
        takers = [job for job in jobs if key in JOBS[job].options]
        if not takers:
            known = tuple(sorted({o for job in jobs for o in JOBS[job].options}))
            problems.append(f"unknown parameter {key!r} for jobs {', '.join(jobs) or '-'} "
                            f"({_suggest(str(key), known)}known: {', '.join(known)})")
        for job in takers:
            options[job][key] = value
    return options, problems


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _is_path(value: Any) -> bool:
    """True for a model given as a file path (not ``auto``, an own name such as ``default``, nor a
    published ``r_em:`` name)."""
    from emfuse.pipeline.restore import MODEL_FILES

    return isinstance(value, str) and ":" not in value and value not in {"auto", *MODEL_FILES}


def _outside_root(value: Any, base: Path, data_root: Path | None, what: str) -> str | None:
    """A message when a file named by the catalog lies outside ``data_root`` (symlinks followed).

    ``what`` is "dataset" (every path checked) or "model" (only values that are paths).
    """
    if data_root is None or (what == "model" and not _is_path(value)):
        return None
    path = _absolute(str(value), base)
    if _within(path, data_root):
        return None
    return (f"the {what} {path} lies outside the catalog's data_root {data_root} (after following "
            "links); move it under data_root or change data_root.")


def _expand(pattern: str, base: Path, data_root: Path | None) -> tuple[list[Path], str | None]:
    """The files a dataset path names (a glob gives several, sorted)."""
    full = _absolute(pattern, base)
    if data_root is not None and ".." in Path(pattern).parts:
        return [], f"the path {pattern!r} climbs out with '..'; give a path under data_root {data_root}."
    if _GLOB.search(pattern):
        paths = [Path(p) for p in sorted(glob.glob(str(full)))]
        if not paths:
            return [], (f"no file matches {full}; check the pattern and that the files arrived."
                        f"{_under_root(pattern, data_root)}")
    else:
        if not full.exists():
            return [], (f"{full} does not exist; check the path (relative paths start at the catalog's "
                        f"folder).{_under_root(pattern, data_root)}")
        paths = [full]
    for p in paths:
        problem = _outside_root(str(p), base, data_root, "dataset")
        if problem:
            return [], problem
    return paths, None


def _under_root(pattern: str, data_root: Path | None) -> str:
    """For a dataset path that names nothing: where it would name files under ``data_root``, the
    path to write (the likeliest mistake: data_root confines the paths, it is not where they
    start), else nothing."""
    if data_root is None or Path(pattern).is_absolute() or not glob.glob(str(data_root / pattern)):
        return ""
    return f" It is under data_root: write {data_root / pattern}."


def _unique_names(entries: list[DatasetEntry]) -> list[DatasetEntry]:
    """Later datasets that would share a store with an earlier one fail.

    One name may appear twice for the same file with other jobs (its output stores differ);
    for another file it would share the ingested input and the outputs.
    """
    seen: dict[str, tuple[str, set[str]]] = {}
    result = []
    for entry in entries:
        if entry.error is None and entry.name in seen:
            path, jobs = seen[entry.name]
            clash = path != entry.path or jobs & set(entry.jobs)
            if clash:
                what = (f"{entry.name}.<job>.zarr" if path != entry.path
                        else ", ".join(f"{entry.name}.{j}.zarr" for j in sorted(jobs & set(entry.jobs))))
                entry = DatasetEntry(entry.name, entry.path, entry.jobs, error=(
                    f"dataset {entry.name} ({entry.path}): the name {entry.name!r} is already used by "
                    f"{path}, and both would write {what}; give each a distinct `name`."))
            else:
                jobs.update(entry.jobs)
        elif entry.error is None:
            seen[entry.name] = (entry.path, set(entry.jobs))
        result.append(entry)
    return result
