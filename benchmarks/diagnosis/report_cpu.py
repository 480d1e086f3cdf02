# ruff: noqa
"""Exploratory diagnosis (issue 16, the soak's figures), a record of docs/benchmarks.md ("Round 13"):
the CPU time of drawing every report of a folder of output stores again, in one process, with
Dask's synchronous scheduler (as the batch's figure process draws them), summed per job kind. Run
it with PYTHONPATH set to each checkout (git archive exports) in turn, on the results folder of a
soak run (`benchmarks/soak.py --workdir W`: W/results):
OMP_NUM_THREADS=1 PYTHONPATH=EXPORT .venv/bin/python benchmarks/diagnosis/report_cpu.py W/results
"""
import glob, sys, time
import dask
from emfuse.flows.report import draw_report

stores = [s for s in sorted(glob.glob(sys.argv[1] + "/*.zarr")) if not s.endswith("input.zarr")]
with dask.config.set(scheduler="synchronous"):
    draw_report(stores[0])  # imports, fonts
    by_kind = {}
    for store in stores:
        start = time.process_time()
        draw_report(store)
        by_kind.setdefault(store.split(".")[-2], []).append(time.process_time() - start)
for kind, cpu in by_kind.items():
    print(f"{kind}: {len(cpu)} reports, CPU {sum(cpu):.2f} s, {1e3 * sum(cpu) / len(cpu):.0f} ms each")
