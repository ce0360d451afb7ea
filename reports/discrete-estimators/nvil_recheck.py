"""Re-check of the rejections of NVIL and REINFORCE (no baseline / moving average) on the discrete-sbn targets
under the current gradbench.stats.bias_test (issue 13). For each estimator, at R = 2000 per block and seeds 0..B−1:
  * p of bias_test(G, ∇φ ELBO) per block (the runner's test, atoms=True);
  * p of the same test on a sign-symmetrised copy g* + s_r (G_r − g*), s_r = ±1 at random: exactly mean-zero rows with
    the same heavy tails (a calibration control: rejections there are the test's, not the estimator's);
  * pooled over all blocks: mean z² and max |z| (with its Bonferroni p) of the per-coordinate mean differences
    z_j = d_j / se_j.
Usage: OMP_NUM_THREADS=1 python reports/discrete-estimators/nvil_recheck.py [BLOCKS]"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy import stats as sps

from gradbench.data import DataSpec, load
from gradbench.estimators import discrete, score
from gradbench.models.params import BernoulliProposal, SBNParams
from gradbench.models.sbn import build
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

R, BLOCKS = 2000, int(sys.argv[1]) if len(sys.argv) > 1 else 5
EPS = float(torch.finfo(torch.float64).eps)
ESTIMATORS = {"reinforce(none)": lambda t, g: score.reinforce(t, R, g, kl="mc"),
              "reinforce(ma,50)": lambda t, g: score.reinforce(t, R, g, kl="mc", baseline="moving_average", warmup=50),
              "nvil(50)": lambda t, g: discrete.nvil(t, R, g, warmup=50),
              "rloo(S=2)": lambda t, g: discrete.rloo(t, R, g, S=2)}


def pvalue(G: np.ndarray, ref: np.ndarray) -> tuple[float, str]:
    res = bias_test(G, ref, EPS, np.random.default_rng(0), atoms=True)
    return res.pvalue, res.method


x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
for params in [SBNParams(layers=[10], conditionals="linear"), SBNParams(layers=[6, 4], conditionals="mlp", hidden=16)]:
    t = build(params, BernoulliProposal(logit_noise=0.5), 0, data=x)
    ref = t.reference("phi_elbo").value.numpy()
    print(f"sbn {params.layers} {params.conditionals}: P = {ref.size}")
    for name, fn in ESTIMATORS.items():
        blocks, ps, ps_sym = [], [], []
        for seed in range(BLOCKS):
            G = fn(t, make_generator(seed)).grads.numpy()
            signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(R, 1))
            ps.append(pvalue(G, ref)[0])
            ps_sym.append(pvalue(ref + signs * (G - ref), ref)[0])
            blocks.append(G)
        G = np.concatenate(blocks)
        d, se = G.mean(0) - ref, G.std(0, ddof=1) / np.sqrt(len(G))
        z = d[se > 0] / se[se > 0]
        print(f"  {name:17s} p per block {' '.join(f'{p:.2g}' for p in ps)} | symmetrised {' '.join(f'{p:.2g}' for p in ps_sym)}"
              f" | pooled n={len(G)}: mean z² {np.mean(z**2):.2f}, max|z| {np.abs(z).max():.2f} "
              f"(Bonferroni p {min(1.0, 2 * sps.norm.sf(np.abs(z).max()) * z.size):.2g})")
