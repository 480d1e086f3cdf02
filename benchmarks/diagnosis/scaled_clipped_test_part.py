# ruff: noqa
"""Exploratory diagnosis (issue 12, item 3), a record of docs/methods/fusion.md ("Held-out seeds"):
scaled_folds_seeds.py with the recorrupted held-out part clipped at zero, as the held-out part of count
splitting is (a map integrated from a quarter of the counts, negative net counts set to 0), instead
of left unclipped. Same arguments as scaled_folds_seeds.py, e.g.
OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/diagnosis/scaled_clipped_test_part.py default 2 2 22000,23000 [JSON]
"""
import sys, runpy, numpy as np
import emfuse.pipeline.fusion.auto as auto
orig = auto.recorrupt
def clipped(image, model, p, rng):
    train, test = orig(image, model, p, rng)
    return train, np.maximum(test, 0.0)
auto.recorrupt = clipped
sys.argv = ["x"] + sys.argv[1:]
runpy.run_path(str(__import__("pathlib").Path(__file__).with_name("scaled_folds_seeds.py")), run_name="__main__")
