#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for the GPU tests and benchmarks, downloaded here into .whl/
# (ignored by git; the device tool carries it: carry [".whl"]). Nothing can be fetched on the
# device machine, and its image (docs/hpc.md, "A lent GPU machine") has NumPy, SciPy, numba with
# numba-cuda, CuPy, PyTorch, xarray, h5py, tifffile, scikit-image, matplotlib, safetensors and
# pytest, but not Dask, distributed, Zarr or dask-cuda.
#
#     bash benchmarks/device_wheels.sh          # here, once: about 5 MB in .whl/
#
# The versions are those of this checkout's .venv (checked together here), for CPython 3.12 on
# manylinux x86_64 (the device's python3). Prefect and RosettaSciIO are not among them: the GPU
# tests and benchmarks (benchmarks/gpu_check.sh) need neither. On the device, gpu_check.sh installs
# them with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run make test (or make demo) first"; exit 2; }
# distribution names (benchmarks/device_wheels.txt); a version is read from .venv, else the newest is taken
WANTED=$(grep -v '^#' benchmarks/device_wheels.txt)
mkdir -p .whl
for name in $WANTED; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
    spec="$name${version:+==$version}"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" \
        || { echo "could not download $spec"; exit 1; }
done
ls -1 .whl
du -sh .whl
