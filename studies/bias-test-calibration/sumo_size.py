"""False alarms of the bias test on SUMO over independent PPCA demo targets (the calibration suite's target).

usage: sumo_size.py ALPHA R SEEDS [MAX_TERMS] [K_MIN]   (ALPHA: power-tail exponent of the truncation)
Each seed s: target_seed derived from s, SUMO noise from s; p-value of bias_test on group 'all'.
"""
import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from gradbench import registry
from gradbench.stats import bias_test


def ppca(seed: int, d: int = 10, k: int = 3, n: int = 1, mean_shift: float = 0.5, cov_scale: float = 2.0) -> Any:
    """A PPCA target built through the registry (as a suite builds it), float64 on the CPU."""
    entry = registry.MODELS["ppca"]
    return entry.build(entry.params(data_dim=d, latent_dim=k, n_data=n),
                       entry.proposal(mean_shift=mean_shift, cov_scale=cov_scale), seed, torch.float64, "cpu", None)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("ALPHA", type=float)
parser.add_argument("R", type=int)
parser.add_argument("SEEDS", type=int)
parser.add_argument("MAX_TERMS", type=int, nargs="?", default=100_000)
parser.add_argument("K_MIN", type=int, nargs="?", default=1)
args = parser.parse_args()
alpha, R, seeds, max_terms, K_min = args.ALPHA, args.R, args.SEEDS, args.MAX_TERMS, args.K_MIN
sumo = registry.ESTIMATORS["sumo"].fn
ps, t0, cost = [], time.time(), []
for s in range(seeds):
    t = ppca(seed=1000 + s)
    smp = sumo(t, R, torch.Generator().manual_seed(s), alpha=alpha, max_terms=max_terms, K_min=K_min)
    ok = ~smp.grads.isnan().any(1)
    G = smp.grads[ok].numpy()
    cost.append(float(smp.cost.mean()))
    ps.append(bias_test(G, t.reference("theta").value.numpy(), np.finfo(np.float64).eps, np.random.default_rng([s, 0, 0])).pvalue)
ps = np.array(ps)
n = len(ps)
print(f"alpha={alpha} R={R} seeds={n} max_terms={max_terms} K_min={K_min} cost/rep={np.mean(cost):.1f}  "
      + "  ".join(f"rate@{a}={np.mean(ps <= a):.3f}±{math.sqrt(a*(1-a)/n):.3f}" for a in (0.01, 0.05))
      + f"  KS p={sps.kstest(ps, 'uniform').pvalue:.3g}  ({time.time()-t0:.0f}s)")
