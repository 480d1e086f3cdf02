#!/usr/bin/env bash
# One-shot device check of emfuse on a GPU machine (issue 15); 8 minutes at most: every step has
# a time limit (install 120 s, pytest 150 s, fusion 150 s, restoration 60 s). From the repository root:
#
#     bash benchmarks/gpu_check.sh            # figures in $OUT (default ./gpu_check_out)
#
# 1. on a lent device machine (no network; .whl/ carried, made here by benchmarks/device_wheels.sh):
#    installs the wheels it lacks (Dask, distributed, Zarr, dask-cuda) into /tmp/site with
#    `pip install --no-index --no-deps` and puts it on PYTHONPATH; elsewhere installs the gpu extra
#    (pip install -e '.[gpu]') if CuPy does not import or numba.cuda cannot compile (no NVVM; not
#    with NO_INSTALL=1, nor where .whl/ is: nothing can be fetched there);
# 2. pytest -m "gpu or cudasim" on the test files that hold such tests (the others need packages a
#    device image lacks, e.g. Prefect): the CUDA kernels under the simulator and
#    fuse(engine="cuda") on CuPy arrays against the CPU solver, and the other GPU tests;
# 3. benchmarks/fusion_gpu.py: 4096² x 4 elements x 100 iterations, n_iter_tv 5, engine cuda on
#    CuPy: seconds end to end, achieved fraction of the HBM bandwidth, memory held against the
#    model, agreement with the CPU solver on a 512² crop (asked: 1e-5 of the range);
# 4. benchmarks/restore_speed.py --skip-cpu: restoration latency and job throughput on CUDA
#    (only when torch sees the GPU);
# and writes everything to one JSON, $OUT/gpu_check.json (each step's log beside it).
# A failing step is recorded (its exit status) and the next one still runs; the script exits
# non-zero when any step failed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE
START=$(date +%s)
declare -A RC SECONDS_OF

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    echo "== $name (at most ${limit} s): $*"
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    RC[$name]=$?
    SECONDS_OF[$name]=$(( $(date +%s) - t0 ))
    tail -n 5 "$OUT/$name.log"
    echo "== $name: exit ${RC[$name]} after ${SECONDS_OF[$name]} s"
}

"$PY" -c "import numpy" 2>/dev/null || { echo "no usable python ($PY)"; exit 2; }
# a device machine: the carried wheels, nothing fetched (the README's recipe for wheels)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    NO_INSTALL=1
    if ! "$PY" -c "import dask, distributed, zarr" 2>/dev/null; then
        step wheels 120 "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
fi
# CuPy, and NVVM for the numba.cuda kernels (kernels_cuda.available); NO_INSTALL=1: never pip
if [ -z "${NO_INSTALL:-}" ] && ! "$PY" -c "import cupy; from emfuse.pipeline.fusion.kernels_cuda import available; assert available()" 2>/dev/null; then
    step install 120 "$PY" -m pip install --quiet --retries 1 --timeout 20 -e '.[gpu]'
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader \
        >"$OUT/nvidia-smi.txt" 2>&1 || true
fi

mapfile -t GPU_TESTS < <(grep -rlE "mark\.(gpu|cudasim)|pytestmark.*(gpu|cudasim)" tests --include='test_*.py' | sort)
step pytest 150 "$PY" -m pytest -q -p no:cacheprovider -m "gpu or cudasim" "${GPU_TESTS[@]}" \
    --junitxml="$OUT/pytest.xml"
step fusion_gpu 150 "$PY" benchmarks/fusion_gpu.py --json "$OUT/fusion_gpu.json"
if [ -f benchmarks/restore_speed.py ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    step restore_speed 60 "$PY" benchmarks/restore_speed.py --skip-cpu --size 1024 --repeats 3 \
        --movie-frames 100 --json "$OUT/restore_speed.json"
else
    echo "== restore_speed: skipped (no benchmarks/restore_speed.py, or torch does not see a GPU)"
fi

# one JSON: each step's exit status and seconds, the device, and the figures the steps wrote
{
    for name in "${!RC[@]}"; do echo "$name ${RC[$name]} ${SECONDS_OF[$name]}"; done
} >"$OUT/steps.txt"
"$PY" - "$OUT" "$(( $(date +%s) - START ))" <<'EOF'
import json, re, sys
from pathlib import Path

out, total = Path(sys.argv[1]), int(sys.argv[2])
report = {"total_seconds": total, "steps": {}}
for line in (out / "steps.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    report["steps"][name] = {"exit": int(rc), "seconds": int(seconds)}
smi = out / "nvidia-smi.txt"
report["nvidia_smi"] = smi.read_text().strip() if smi.exists() else None
log = out / "pytest.log"
if log.exists():
    summary = [l for l in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", l)]
    report["pytest_summary"] = summary[-1].strip("= ") if summary else None
for name in ("fusion_gpu", "restore_speed"):
    path = out / f"{name}.json"
    report[name] = json.loads(path.read_text()) if path.exists() else None
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"wrote {out / 'gpu_check.json'} ({total} s in all)")
EOF
failed=0
for name in "${!RC[@]}"; do [ "${RC[$name]}" -eq 0 ] || failed=1; done
exit $failed
