"""The catalog: paths, globs, names, per-job options, data root, and the errors of each kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emfuse.flows.batch.catalog import CatalogError, load_catalog


def _store(path: Path) -> Path:
    """A minimal canonical-store directory (the catalog only checks it exists)."""
    path.mkdir(parents=True)
    (path / "zarr.json").write_text("{}")
    return path


@pytest.fixture
def incoming(tmp_path) -> Path:
    for name in ("run1.zarr", "run2.zarr", "movie.zarr"):
        _store(tmp_path / "incoming" / name)
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    path = folder / "tonight.yaml"
    path.write_text(text)
    return path


def test_globs_names_and_options(incoming):
    cat = load_catalog(_write(incoming, """
output: results/
cluster: local-threads
datasets:
  - path: incoming/run*.zarr
    jobs: [fuse]
    elements: [Sc, Dy, O]
    params: {lambda_chem: 0.1, tile: 64}
  - path: incoming/movie.zarr
    name: movie-a
    jobs: [restore, tem-fuse]
    params: {tile: 128, restore: {model: "r_em:sfr_hrstem", register: true}}
"""))
    assert cat.output == str(incoming / "results")  # relative to the catalog, not the cwd
    assert cat.inputs_dir == str(incoming / "results" / "inputs")
    assert [(d.name, d.jobs) for d in cat.datasets] == [
        ("run1", ("fuse",)), ("run2", ("fuse",)), ("movie-a", ("restore", "tem-fuse"))]
    run1 = cat.datasets[0]
    assert run1.error is None and run1.elements == ("Sc", "Dy", "O") and run1.signal is None
    # the fusion default "auto" stays for the weight not given
    assert run1.options["fuse"] == {"lambda_chem": 0.1, "lambda_tv": "auto", "tile": 64}
    movie = cat.datasets[2]
    assert movie.options["restore"] == {"model": "r_em:sfr_hrstem", "tile": 128, "register": True}
    assert movie.options["tem-fuse"] == {"tile": 128}  # the flat key goes to both jobs
    assert cat.store(movie, "tem-fuse") == str(incoming / "results" / "movie-a.tem-fuse.zarr")


def test_cluster_override_and_default(incoming):
    path = _write(incoming, "datasets:\n  - {path: incoming/run1.zarr, jobs: [fuse]}\n")
    assert load_catalog(path).cluster == "local"
    assert load_catalog(path, cluster="tcp://10.0.0.5:8786").cluster == "tcp://10.0.0.5:8786"
    assert load_catalog(path).output == str(incoming / "results")


@pytest.mark.parametrize("text, words", [
    ("output: r\ndatasets: [\n", ["not valid YAML", "line"]),
    ("ouput: r\ndatasets:\n  - {path: incoming/run1.zarr, jobs: [fuse]}\n", ["'ouput'", "did you mean 'output'"]),
    ("output: r\ndatasets: []\n", ["non-empty list"]),
    ("- a\n- b\n", ["must be a mapping"]),
    ("cluster: lokal\ndatasets:\n  - {path: incoming/run1.zarr, jobs: [fuse]}\n", ["cluster", "'lokal'"]),
])
def test_unusable_catalog_is_refused_before_anything_runs(incoming, text, words):
    with pytest.raises(CatalogError) as info:
        load_catalog(_write(incoming, text))
    message = str(info.value)
    assert "tonight.yaml" in message
    for word in words:
        assert word in message


def test_missing_catalog_file(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "none.yaml")


@pytest.mark.parametrize("entry, words", [
    ("{path: incoming/none.zarr, jobs: [fuse]}", ["none.zarr does not exist"]),
    ("{path: incoming/nothing*.emd, jobs: [fuse]}", ["no file matches"]),
    ("{path: incoming/run1.zarr, jobs: [fuse], element: [Fe]}", ["unknown key 'element'", "did you mean 'elements'"]),
    ("{path: incoming/run1.zarr, jobs: [fusion]}", ["unknown job 'fusion'", "did you mean 'fuse'"]),
    ("{path: incoming/run1.zarr, jobs: []}", ["`jobs` must be a non-empty list"]),
    ("{path: incoming/run1.zarr, jobs: [fuse, fuse]}", ["listed twice"]),
    ("{path: incoming/run1.zarr, jobs: [fuse], params: {lamda_tv: 1}}", ["unknown parameter 'lamda_tv'",
                                                                        "did you mean 'lambda_tv'"]),
    ("{path: incoming/run1.zarr, jobs: [fuse], params: {model: x}}", ["unknown parameter 'model'"]),
    ("{path: incoming/run1.zarr, jobs: [fuse], params: {restore: {model: x}}}", ["'restore' is not in `jobs`"]),
    ("{path: incoming/run1.zarr, jobs: [restore], params: {restore: {modle: x}}}", ["restore: unknown key 'modle'"]),
    ("{jobs: [fuse]}", ["`path` is missing"]),
    ("{path: incoming/run*.zarr, name: both, jobs: [fuse]}", ["cannot be given for a glob"]),
    ("{path: incoming/run1.zarr, name: 'a b', jobs: [fuse]}", ["`name`"]),
    ("{path: incoming/run1.zarr, jobs: [fuse], signal: [14, 15]}", ["`signal` must be the index",
                                                                   "emfuse ingest FILE --list"]),
])
def test_bad_dataset_fails_alone(incoming, entry, words):
    cat = load_catalog(_write(incoming, f"""
datasets:
  - {{path: incoming/run2.zarr, jobs: [fuse]}}
  - {entry}
"""))
    good, bad = cat.datasets
    assert good.error is None
    assert bad.error is not None and "entry 2" in bad.error
    for word in words:
        assert word in bad.error, bad.error


def test_duplicate_names_would_share_stores(incoming):
    cat = load_catalog(_write(incoming, """
datasets:
  - {path: incoming/run1.zarr, jobs: [fuse]}
  - {path: incoming/run2.zarr, name: run1, jobs: [fuse]}
"""))
    assert cat.datasets[0].error is None
    assert "already used" in cat.datasets[1].error and "distinct `name`" in cat.datasets[1].error


def test_data_root_confines_paths(incoming):
    root = incoming / "incoming"
    outside = _store(incoming / "elsewhere" / "secret.zarr")
    os.symlink(outside, root / "link.zarr")
    (incoming / "model.safetensors").write_bytes(b"x")
    cat = load_catalog(_write(incoming, f"""
data_root: incoming
datasets:
  - {{path: incoming/run1.zarr, jobs: [fuse]}}
  - {{path: {outside}, jobs: [fuse]}}
  - {{path: incoming/../elsewhere/secret.zarr, jobs: [fuse]}}
  - {{path: incoming/link.zarr, jobs: [fuse]}}
  - {{path: incoming/run2.zarr, jobs: [restore], params: {{model: {incoming / 'model.safetensors'}}}}}
  - {{path: incoming/movie.zarr, jobs: [restore], params: {{model: "r_em:sfr_hrstem"}}}}
"""))
    ok, absolute, climbing, link, model, named = cat.datasets
    assert ok.error is None and named.error is None  # a published model name is not a path
    assert "outside the catalog's data_root" in absolute.error
    assert "'..'" in climbing.error
    assert "outside the catalog's data_root" in link.error  # the link is followed
    assert "the model" in model.error and "outside" in model.error


def test_a_path_written_from_data_root_is_pointed_out(incoming):
    """data_root confines the paths, they start at the catalog's folder: a dataset written relative
    to data_root fails, and its error gives the path to write."""
    cat = load_catalog(_write(incoming, """
data_root: incoming
datasets:
  - {path: run1.zarr, jobs: [fuse]}
  - {path: "run*.zarr", jobs: [fuse]}
  - {path: nowhere.zarr, jobs: [fuse]}
"""))
    single, pattern, missing = cat.datasets
    assert single.error.endswith(f"It is under data_root: write {incoming / 'incoming' / 'run1.zarr'}.")
    assert "no file matches" in pattern.error and "It is under data_root" in pattern.error
    assert "does not exist" in missing.error and "data_root" not in missing.error


def test_data_root_must_exist(incoming):
    with pytest.raises(CatalogError, match="data_root"):
        load_catalog(_write(incoming, "data_root: nowhere\ndatasets:\n  - {path: x, jobs: [fuse]}\n"))


def test_job_section_wins_whatever_the_order(incoming):
    for params in ("{restore: {tile: 128}, tile: 64}", "{tile: 64, restore: {tile: 128}}"):
        cat = load_catalog(_write(incoming, f"""
datasets:
  - {{path: incoming/movie.zarr, jobs: [restore, tem-fuse], params: {params}}}
"""))
        options = cat.datasets[0].options
        assert options["restore"]["tile"] == 128 and options["tem-fuse"]["tile"] == 64


def test_relative_model_path_is_the_catalogs(incoming, monkeypatch):
    monkeypatch.chdir("/")
    cat = load_catalog(_write(incoming, """
datasets:
  - {path: incoming/movie.zarr, jobs: [restore], params: {model: models/mine.safetensors}}
"""))
    assert cat.datasets[0].options["restore"]["model"] == str(incoming / "models" / "mine.safetensors")


def test_one_name_for_one_file_with_other_jobs(incoming):
    cat = load_catalog(_write(incoming, """
datasets:
  - {path: incoming/movie.zarr, jobs: [restore]}
  - {path: incoming/movie.zarr, jobs: [tem-fuse]}
  - {path: incoming/movie.zarr, jobs: [restore]}
"""))
    first, other_job, same_job = cat.datasets
    assert first.error is None and other_job.error is None  # different output stores
    assert "movie.restore.zarr" in same_job.error


def test_cluster_option_is_read_from_the_current_folder(incoming, monkeypatch):
    (incoming / "sub").mkdir()
    (incoming / "sub" / "profile.yaml").write_text("profile: local-threads\n")
    path = _write(incoming, "datasets:\n  - {path: incoming/run1.zarr, jobs: [fuse]}\n")
    monkeypatch.chdir(incoming / "sub")
    assert load_catalog(path, cluster="profile.yaml").cluster == str(incoming / "sub" / "profile.yaml")
