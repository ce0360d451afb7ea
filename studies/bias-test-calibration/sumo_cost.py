"""Cost of SUMO per data point: charged (GradSample.cost / N) and evaluated (particle-points the target actually
evaluated, padding included), the censored fraction and the Hill tail index of ‖g_r − median‖, per truncation
and roulette, on a PPCA with N data points (d = 10, k = 3, mean_shift 0.5, cov_scale 2, target seed 0).

usage: sumo_cost.py N R [ALPHA ...]     (seed 0; mean ± s.e. over replicates; roulette per_replicate and per_point)
"""
import argparse
import math
import time
from typing import Any

import numpy as np
import torch

from gradbench import registry
from gradbench.stats import hill_tail_index


def ppca(seed: int, d: int = 10, k: int = 3, n: int = 1, mean_shift: float = 0.5, cov_scale: float = 2.0) -> Any:
    """A PPCA target built through the registry (as a suite builds it), float64 on the CPU."""
    entry = registry.MODELS["ppca"]
    return entry.build(entry.params(data_dim=d, latent_dim=k, n_data=n),
                       entry.proposal(mean_shift=mean_shift, cov_scale=cov_scale), seed, torch.float64, "cpu", None)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("N", type=int, help="data points")
parser.add_argument("R", type=int, help="replicates")
parser.add_argument("ALPHA", type=float, nargs="*", default=[0.5, 0.6, 0.8], help="power-tail exponents")
args = parser.parse_args()
N, R, alphas = args.N, args.R, args.ALPHA
sumo = registry.ESTIMATORS["sumo"].fn
t = ppca(seed=0, n=N)
evaluated = [0]
real_sample = t.sample_proposal


def counting_sample(batch, gen):  # every sampled particle-point is evaluated once (log-joint and gradient)
    z, log_q = real_sample(batch, gen)
    evaluated[0] += log_q.numel()
    return z, log_q


t.sample_proposal = counting_sample
for alpha in alphas:
    for roulette in ("per_replicate", "per_point"):
        evaluated[0] = 0
        t0 = time.time()
        s = sumo(t, R, torch.Generator().manual_seed(0), alpha=alpha, roulette=roulette)
        dt = time.time() - t0
        c = s.cost.double().numpy() / N
        cens = s.diagnostics["censored"].double().numpy()
        G = s.grads[~s.diagnostics["nonfinite"]].numpy()
        a, se, k = hill_tail_index(np.linalg.norm(G - np.median(G, 0), axis=1))
        print(f"alpha={alpha} {roulette:13} N={N} R={R}: charged/point {c.mean():.1f} ± {c.std(ddof=1)/math.sqrt(R):.1f}  "
              f"evaluated/point {evaluated[0]/(R*N):.1f}  censored {cens.mean():.4f} ± {cens.std(ddof=1)/math.sqrt(R):.4f}  "
              f"tail_index {a:.2f} ± {se:.2f} (k={k})  {dt:.1f}s")
