"""Where the time of iwae and coupled_isir goes on the speed-flops VAE: torch.profiler, top operators by self time.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/profile_flops.py --dtype float64 --calls 20

Builds the first target of the suite (suites/speed-flops.yaml: latent-20 Fashion-MNIST VAE, N = 32, R = 1), warms up,
then profiles ``--calls`` calls of each estimator (one thread) and prints, per estimator, a markdown table of the
operators with the largest self CPU time (share of the profiled wall time, calls and µs per estimator call), the
wall time per call and the part of it outside every torch operator (Python, the dispatcher's bookkeeping).
"""
import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gradbench import registry
from gradbench.seeding import make_generator
from gradbench.speed import plans
from gradbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--suite", default=str(ROOT / "suites" / "speed-flops.yaml"))
parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
parser.add_argument("--calls", type=int, default=20, help="profiled calls per estimator")
parser.add_argument("--top", type=int, default=12, help="operators shown per estimator")
args = parser.parse_args()

torch.set_num_threads(1)
suite, cells = load_suite(args.suite, {"dtype": args.dtype})
p = plans(suite, cells, args.suite)[0]
target = p.target.build(suite.dtype, suite.device)
_ = target.phi  # the proposal's Laplace fit, before anything is timed
print(f"{p.target.model} {p.target.params}, {args.dtype}, R = {p.R}, N = {target.n_data}, torch "
      f"{torch.__version__}, {torch.get_num_threads()} thread(s)\n")
for name, params in p.estimators:
    fn = registry.ESTIMATORS[name].fn
    g = make_generator(0)
    for _ in range(3):
        fn(target, p.R, g, **params)
    evals = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.calls):
            s = fn(target, p.R, g, **params)
            d = s.diagnostics
            evals += float(d["lockstep_cost"].sum() if "lockstep_cost" in d else s.cost.sum())
        wall = time.perf_counter() - t0
    rows = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    ops_us = sum(e.self_cpu_time_total for e in rows)
    n_ops = sum(e.count for e in rows)
    print(f"### {name}({', '.join(f'{k}={v}' for k, v in params.items())}): {wall / args.calls * 1e3:.1f} ms per call "
          f"(profiled), {evals / args.calls:.0f} evaluations per call, {n_ops / args.calls:.0f} operator calls per call; "
          f"outside torch operators: {1 - ops_us * 1e-6 / wall:.0%} of the wall time\n")
    print("| operator | self CPU % of wall | calls / estimator call | self µs / estimator call |")
    print("| --- | ---: | ---: | ---: |")
    for e in rows[:args.top]:
        print(f"| {e.key} | {e.self_cpu_time_total * 1e-6 / wall:.1%} | {e.count / args.calls:.0f} | "
              f"{e.self_cpu_time_total / args.calls:.0f} |")
    print()
