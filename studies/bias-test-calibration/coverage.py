"""Coverage of the 95 % interval of ||b||/||g*|| over N seeds (demo target, R replicates). Usage: coverage.py N R"""
import argparse
import time
from typing import Any

import numpy as np
import torch

from gradbench import registry
from gradbench.stats import bias_norm_interval


def ppca(seed: int, d: int = 10, k: int = 3, n: int = 1, mean_shift: float = 0.5, cov_scale: float = 2.0) -> Any:
    """A PPCA target built through the registry (as a suite builds it), float64 on the CPU."""
    entry = registry.MODELS["ppca"]
    return entry.build(entry.params(data_dim=d, latent_dim=k, n_data=n),
                       entry.proposal(mean_shift=mean_shift, cov_scale=cov_scale), seed, torch.float64, "cpu", None)


iwae, oracle = registry.ESTIMATORS["iwae"].fn, registry.ESTIMATORS["oracle"].fn

EPS = float(np.finfo(float).eps)
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("N", type=int, help="seeds (independent samples)")
parser.add_argument("R", type=int, help="replicates per sample")
args = parser.parse_args()
n_seeds, R = args.N, args.R
t = ppca(seed=0)
g = t.reference("theta").value.numpy(); gn = np.linalg.norm(g)
t0 = time.time()
# truth for iwae K=2: 10^6 replicates (in blocks), with the s.e. of ||b|| by the delta method
gen = torch.Generator().manual_seed(123_456)
S1 = np.zeros_like(g); S2 = np.zeros((g.size, g.size)); n = 0
for _ in range(20):
    G = iwae(t, 50_000, gen, K=2).grads.numpy(); S1 += G.sum(0); n += len(G)
    S2 += (G - G.mean(0)).T @ (G - G.mean(0)) + len(G) * np.outer(G.mean(0), G.mean(0))
m = S1 / n; C = (S2 - n * np.outer(m, m)) / (n - 1)
b = m - g; bn = np.linalg.norm(b); u = b / bn
print(f"truth iwae K=2: ||b||/||g*|| = {bn/gn:.5f} ± {np.sqrt(u @ C @ u / n)/gn:.5f} (1e6 replicates, {time.time()-t0:.0f}s)")
for name, fn, truth in (("oracle", lambda gen: oracle(t, R, gen, S=1), 0.0), ("iwae K=2", lambda gen: iwae(t, R, gen, K=2), bn / gn)):
    cov, lo, hi = [], [], []
    for s in range(n_seeds):
        G = fn(torch.Generator().manual_seed(s)).grads.numpy()
        r = bias_norm_interval(G, g, EPS, np.random.default_rng(s))
        l, h = r.ci_low / gn, r.ci_high / gn
        cov.append(l <= truth <= h); lo.append(l); hi.append(h)
    c = np.mean(cov)
    print(f"{name} R={R}: coverage {c:.3f} ± {np.sqrt(c*(1-c)/n_seeds):.3f} over {n_seeds} seeds; "
          f"median interval [{np.median(lo):.4f}, {np.median(hi):.4f}], truth {truth:.4f}")
print(f"{time.time()-t0:.0f}s")
