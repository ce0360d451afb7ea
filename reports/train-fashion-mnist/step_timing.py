"""Per-step training cost of each arm of a train suite: every distinct arm (seed 0, the suite's first learning
rate) for ``steps`` steps with a minimal evaluation; prints seconds/step (training only), log-joint evaluations per
step and τ (mean, max) after any warm-up (the timing run's warm-up is half its steps).

    OMP_NUM_THREADS=1 PYTHONPATH=. python reports/train-fashion-mnist/step_timing.py SUITE STEPS
"""

import argparse
import dataclasses
import time

from gradbench.run.compute import target_for
from gradbench.run.plan import load_suite
from gradbench.training.cell import target_of, train

parser = argparse.ArgumentParser(description="Per-step training cost of each arm of a train suite.")
parser.add_argument("suite", help="a train suite, e.g. suites/train-digits-ordering.yaml")
parser.add_argument("steps", type=int, help="training steps per arm")
args = parser.parse_args()
path, steps = args.suite, args.steps
cells = load_suite(path)[1]
seen = set()
for cell in cells:
    p = dict(cell.estimator_params)
    key = (p["theta_estimator"], str(p["theta_params"]), p.get("warmup_theta_estimator"), p["budget"])
    if key in seen or p["train_seed"] != 0 or p["lr"] != cells[0].estimator_params["lr"]:
        continue
    seen.add(key)
    warm = p.get("warmup_theta_estimator")
    p.update(budget="steps", budget_value=steps, test_n=20, train_eval_n=20, eval_K=10, eval_K_check=None,
             eval_refit_steps=0, curve_every=10**6, checkpoint_every=10**6, warmup_value=steps // 2 if warm else 0)
    c = dataclasses.replace(cell, estimator_params=p)
    t0 = time.perf_counter()
    rows, curves = train(c, target_for(c, target_of(c)))
    r = rows.set_index("metric")["value"]
    tau = (curves[~curves["warmup"].astype(bool)] if warm else curves)["tau"]
    print(f"{key}: {r['seconds_per_step']:.3f} s/step (train), evals/step {r['evals'] / steps:.0f}, "
          f"tau mean {tau.mean():.1f} max {tau.max():.0f}, wall {time.perf_counter() - t0:.1f} s", flush=True)
