"""False alarms of the bias test on SUMO over independent PPCA demo targets (the calibration suite's target).

usage: sumo_size.py ALPHA R SEEDS [TEST]   (ALPHA: power-tail exponent of the truncation; TEST: default | ...)
Each seed s: target_seed derived from s, SUMO noise from s; p-value of bias_test on group 'all'.
"""
import math
import sys
import time

import numpy as np
import torch

sys.path.insert(0, '.')
from scipy import stats as sps

from gradbench.estimators.sumo import sumo
from gradbench.models.params import PPCAParams, ProposalParams
from gradbench.models.ppca import PPCA
from gradbench.stats import bias_test

alpha, R, seeds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
max_terms = int(sys.argv[4]) if len(sys.argv) > 4 else 100_000
K_min = int(sys.argv[5]) if len(sys.argv) > 5 else 1
ps, t0, cost = [], time.time(), []
for s in range(seeds):
    t = PPCA.synthetic(PPCAParams(data_dim=10, latent_dim=3, n_data=1), ProposalParams(mean_shift=0.5, cov_scale=2.0),
                       seed=1000 + s, dtype=torch.float64)
    smp = sumo(t, R, torch.Generator().manual_seed(s), alpha=alpha, max_terms=max_terms, K_min=K_min)
    ok = ~smp.grads.isnan().any(1)
    G = smp.grads[ok].numpy()
    cost.append(float(smp.cost.mean()))
    ps.append(bias_test(G, t.exact_grad().numpy(), np.finfo(np.float64).eps, np.random.default_rng([s, 0, 0])).pvalue)
ps = np.array(ps)
n = len(ps)
print(f"alpha={alpha} R={R} seeds={n} max_terms={max_terms} K_min={K_min} cost/rep={np.mean(cost):.1f}  "
      + "  ".join(f"rate@{a}={np.mean(ps <= a):.3f}±{math.sqrt(a*(1-a)/n):.3f}" for a in (0.01, 0.05))
      + f"  KS p={sps.kstest(ps, 'uniform').pvalue:.3g}  ({time.time()-t0:.0f}s)")
