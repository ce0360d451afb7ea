"""Where the time of iwae and coupled_isir goes on the speed-flops VAE: torch.profiler, top operators by self time.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/profile_flops.py --dtype float64 --calls 20

Builds the first target of the suite (suites/speed-flops.yaml: latent-20 Fashion-MNIST VAE, N = 32, R = 1), warms up,
then profiles ``--calls`` calls of each estimator (one thread) and prints, per estimator, a markdown table of the
operators with the largest self CPU time (share of the profiled wall time, calls and µs per estimator call), the
wall time per call and the part of it outside every torch operator (Python, the dispatcher's bookkeeping).

Then, with ``--gemm-rows M [M ...]``, the matrix products alone: for M particles, the MLP's forward (addmm per
layer), its weight gradients (bmm, one replicate) and its input gradients above the first layer (mm), exactly the
gradient's counted FLOPs (gradbench.speed.flops.gradient_flops × M), timed in interleaved rounds with one
[1024, 1024] matmul: the FLOP fraction the gradient would reach if nothing but its matrix products cost time.
"""
import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from gradbench import registry
from gradbench.run.plan import load_suite
from gradbench.seeding import make_generator
from gradbench.speed import median_ci, plans, time_interleaved
from gradbench.speed.flops import gradient_flops, matmul_flops, mlp_widths

ROOT = Path(__file__).resolve().parents[2]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--suite", default=str(ROOT / "suites" / "speed-flops.yaml"))
parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
parser.add_argument("--calls", type=int, default=20, help="profiled calls per estimator (0: no profile)")
parser.add_argument("--top", type=int, default=12, help="operators shown per estimator")
parser.add_argument("--gemm-rows", type=int, nargs="*", default=[256, 288, 72, 9],
                    help="particle counts M for the matrix-products-only fraction (256: iwae's B·K·N at N = 32, K = 8; "
                         "288 = 32 chain pairs × (K + 1): a coupled step with every chain unmet; 72, 9: 8 and 1 unmet)")
parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds of the matrix-products-only timing")
parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="matrix-products-only timing by this process's CPU time (default: load-robust) or wall time")
args = parser.parse_args()

torch.set_num_threads(1)
suite, cells = load_suite(args.suite, {"dtype": args.dtype})
p = plans(suite, cells, args.suite)[0]
target = p.target.build(suite.dtype, suite.device)
if args.calls > 0:
    _ = target.phi  # the proposal's Laplace fit, before anything is timed
print(f"{p.target.model} {p.target.params}, {args.dtype}, R = {p.R}, N = {target.n_data}, torch "
      f"{torch.__version__}, {torch.get_num_threads()} thread(s)\n")
for name, params in p.estimators if args.calls > 0 else []:
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

if args.gemm_rows:
    widths = mlp_widths(target)
    dtype = target.theta[next(iter(target.theta))].dtype
    g = torch.Generator().manual_seed(0)
    Ws = [torch.randn(o, i, generator=g, dtype=dtype) / i**0.5 for i, o in itertools.pairwise(widths)]
    bs = [torch.randn(o, generator=g, dtype=dtype) for o in widths[1:]]
    a, b = (torch.randn(1024, 1024, generator=g, dtype=dtype) for _ in range(2))

    def gemms(M: int):
        hs = [torch.randn(M, widths[0], generator=g, dtype=dtype)]
        for W, bias in zip(Ws, bs, strict=True):
            hs.append(torch.addmm(bias, hs[-1], W.t()))
        deltas = [torch.randn(M, o, generator=g, dtype=dtype) for o in widths[1:]]

        def run() -> None:
            for W, bias, h in zip(Ws, bs, hs[:-1], strict=True):
                torch.addmm(bias, h, W.t())
            for l, (W, h, d) in enumerate(zip(Ws, hs[:-1], deltas, strict=True)):
                torch.bmm(d.t().unsqueeze(0), h.unsqueeze(0))  # ∇W_l = δ_lᵀ h_l for one replicate
                if l > 0:
                    d @ W  # δ_{l−1} before the activation's derivative
        return run

    fns = {"matmul": lambda: a @ b, **{f"M={M}": gemms(M) for M in args.gemm_rows}}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    t = time_interleaved(fns, device="cpu", warmup=2, repeats=args.rounds, clock=clock)
    print(f"### matrix products only, {args.dtype}, {args.clock} time: FLOP/s ÷ [1024, 1024] matmul FLOP/s, per interleaved round "
          f"(median [q25, q75], interval for the median)\n")
    print("| M particles | FLOPs | µs | FLOP fraction |")
    print("| ---: | ---: | ---: | ---: |")
    ref = matmul_flops(1024) / t["matmul"]
    print(f"| [1024, 1024] matmul | {matmul_flops(1024):.3g} | {np.median(t['matmul']) * 1e6:.0f} | 1 "
          f"({np.median(ref) * 1e-9:.1f} GFLOP/s) |")
    for M in args.gemm_rows:
        frac = gradient_flops(widths) * M / t[f"M={M}"] / ref
        q25, q75 = np.percentile(frac, [25, 75])
        lo, hi, _ = median_ci(frac)
        print(f"| {M} | {gradient_flops(widths) * M:.3g} | {np.median(t[f'M={M}']) * 1e6:.0f} | {np.median(frac):.3f} "
              f"[{q25:.3f}, {q75:.3f}] ({lo:.3f}–{hi:.3f}) |")
