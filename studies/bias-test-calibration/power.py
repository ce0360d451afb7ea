"""Power at α = 0.01 of the bias test against iwae's O(1/K) bias (same samples per seed). Usage: power.py CASE N_SEEDS

Cases: wide4, wide16 (iwae K = 4, 16 on wide PPCA targets d = 30, k = 5, N = 2, R = 300, δ = 0.5, s = 2),
wide4mild, wide16mild (the same with a milder proposal, δ = 0.1, s = 1.3), demo32 (iwae K = 32 on the demo target,
R = 1000). Each seed s draws a fresh wide target (seed s) and fresh noise (10 000 + s)."""
import argparse
import time
from typing import Any

import numpy as np
import torch

from gradbench import registry
from gradbench.stats import bias_test


def ppca(seed: int, d: int = 10, k: int = 3, n: int = 1, mean_shift: float = 0.5, cov_scale: float = 2.0) -> Any:
    """A PPCA target built through the registry (as a suite builds it), float64 on the CPU."""
    entry = registry.MODELS["ppca"]
    return entry.build(entry.params(data_dim=d, latent_dim=k, n_data=n),
                       entry.proposal(mean_shift=mean_shift, cov_scale=cov_scale), seed, torch.float64, "cpu", None)


EPS = float(np.finfo(float).eps)
CASES = {"wide4": (4, 300, True), "wide16": (16, 300, True), "demo32": (32, 1000, False), "wide4mild": (4, 300, True),
         "wide16mild": (16, 300, True)}  # case → (K, R, wide target)
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("CASE", choices=sorted(CASES))
parser.add_argument("N_SEEDS", type=int)
args = parser.parse_args()
case, n_seeds = args.CASE, args.N_SEEDS
K, R, wide = CASES[case]
mild = "mild" in case
iwae = registry.ESTIMATORS["iwae"].fn
demo = ppca(seed=0)
pn, methods = [], {}
t0 = time.time()
for s in range(n_seeds):
    t = ppca(s, d=30, k=5, n=2, mean_shift=0.1 if mild else 0.5, cov_scale=1.3 if mild else 2.0) if wide else demo
    G = iwae(t, R, torch.Generator().manual_seed(10_000 + s), K=K).grads.numpy()
    g = t.reference("theta").value.numpy()
    res = bias_test(G, g, EPS, np.random.default_rng(s))
    pn.append(res.pvalue); methods[res.method.split("(")[0]] = methods.get(res.method.split("(")[0], 0) + 1
p = np.array(pn)
r = (p <= 0.01).mean()
print(f"{case}: power@0.01 = {r:.3f} ± {np.sqrt(r*(1-r)/len(p)):.3f} (n={len(p)})")
print(methods, f"{time.time()-t0:.0f}s")
