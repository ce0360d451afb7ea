"""Peak resident memory of the Fashion-MNIST CPU study's stages in one process: imports, suite validation, building
the grey-level target, 5 training steps and the suite's held-out evaluation (IWAE-1000 on 1000 test images).

    OMP_NUM_THREADS=1 PYTHONPATH=. python reports/train-fashion-mnist/memory.py
"""

import argparse
import dataclasses
import resource

argparse.ArgumentParser(description="Peak resident memory of the Fashion-MNIST CPU study's stages (no arguments).").parse_args()


def rss(tag: str) -> None:
    print(f"{tag}: maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB", flush=True)


rss("start")
from gradbench.run.compute import target_for
from gradbench.run.plan import load_suite
from gradbench.training.cell import target_of, train

rss("imports")
suite, cells = load_suite("suites/train-fashion-mnist-cpu.yaml")
rss("load_suite (validates the data)")
cell = cells[0]
target = target_for(cell, target_of(cell))
rss("the training target (grey 60000x784)")
p = dict(cell.estimator_params)
p.update(budget_value=5, eval_K_check=None, eval_refit_steps=0, curve_every=10**6, checkpoint_every=10**6)
train(dataclasses.replace(cell, estimator_params=p), target)
rss("5 steps + IWAE-1000 on 1000 test points")
