"""Re-check of the rejections of NVIL and REINFORCE (no baseline / moving average) on the discrete-sbn targets
under the current gradbench.stats.bias_test. For each estimator, at R = 2000 per block and seeds 0..B−1:
  * p of bias_test(G, ∇φ ELBO) per block (the runner's test, atoms=True);
  * p of the same test on a sign-symmetrised copy g* + s_r (G_r − g*), s_r = ±1 at random: exactly mean-zero rows with
    the same heavy tails (a calibration control: rejections there are the test's, not the estimator's);
  * pooled over all blocks: mean z² and max |z| (with its Bonferroni p) of the per-coordinate mean differences
    z_j = d_j / se_j.
Usage: OMP_NUM_THREADS=1 python reports/discrete-estimators/nvil_recheck.py [BLOCKS]"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from gradbench import registry
from gradbench.data import DataSpec, load
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("BLOCKS", type=int, nargs="?", default=5, help="independent blocks of R replicates")
parser.add_argument("--replicates", type=int, default=2000, help="R per block")
args = parser.parse_args()
R, BLOCKS = args.replicates, args.BLOCKS
EPS = float(torch.finfo(torch.float64).eps)
ESTIMATORS = {"reinforce(none)": ("reinforce", {"kl": "mc"}),
              "reinforce(ma,50)": ("reinforce", {"kl": "mc", "baseline": "moving_average", "warmup": 50}),
              "nvil(50)": ("nvil", {"warmup": 50}), "rloo(S=2)": ("rloo", {"S": 2})}  # label → (registry name, parameters)


def build(data: Any, **params: Any) -> Any:
    """An sbn target on ``data`` through the registry (as a suite builds it): proposal logit_noise 0.5, seed 0."""
    entry = registry.MODELS["sbn"]
    return entry.build(entry.params(**params), entry.proposal(logit_noise=0.5), 0, torch.float64, "cpu", data)


def pvalue(G: np.ndarray, ref: np.ndarray) -> tuple[float, str]:
    res = bias_test(G, ref, EPS, np.random.default_rng(0), atoms=True)
    return res.pvalue, res.method


x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
for params in [{"layers": [10], "conditionals": "linear"}, {"layers": [6, 4], "conditionals": "mlp", "hidden": 16}]:
    t = build(x, **params)
    ref = t.reference("phi_elbo").value.numpy()
    print(f"sbn {params['layers']} {params['conditionals']}: P = {ref.size}")
    for name, (key, kw) in ESTIMATORS.items():
        blocks, ps, ps_sym = [], [], []
        for seed in range(BLOCKS):
            G = registry.ESTIMATORS[key].fn(t, R, make_generator(seed), **kw).grads.numpy()
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
