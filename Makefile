# emfuse: set-up and checks. Every target creates .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: demo test test-all test-slurm lint docs clean gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: an open range would pull several GB of CUDA packages
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,hpc]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emfuse demo --out emfuse-demo

test: $(STAMP)
	$(BIN)/python -m ruff check emfuse pipeline stores cluster flows tests benchmarks
	$(BIN)/python -m pytest -q --durations=25

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu or gpu"

# One-shot check of a GPU machine: the gpu extra, pytest -m "gpu or cudasim", the fusion and
# restoration timings; one JSON in $(OUT) (default ./gpu_check_out). See docs/hpc.md, "GPU nodes".
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

# A single-node SLURM on this machine (as root: installs slurm-wlm and munge if missing, starts
# munged, slurmctld and slurmd), then the tests that submit real worker jobs to it.
# tests/slurm/stop.sh stops the daemons.
test-slurm: $(STAMP)
	tests/slurm/start.sh
	$(BIN)/python -m pytest -q -m slurm tests/cluster/test_slurm.py

lint: $(STAMP)
	$(BIN)/python -m ruff check emfuse pipeline stores cluster flows tests benchmarks

# The documentation site in site/ (MkDocs Material; API reference from the docstrings by
# mkdocstrings): warnings, broken links among them, are errors. mkdocs_hooks.py adds the README
# (home) and CHANGELOG.md and lays out the package for mkdocstrings in build/docs-api.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) emfuse-demo .pytest_cache site build/docs-api
