"""tail_index (Hill, k = ceil(sqrt(R))) of ||g_r - median|| on the ppca-bias-demo target, R = 20 000, seed 0.

usage: tails.py [R]"""
import argparse
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
parser.add_argument("R", type=int, nargs="?", default=20_000, help="replicates per estimator")
R = parser.parse_args().R
t = ppca(seed=0)
for name, kw in [("sumo", {"truncation": "geometric", "rho": 0.8}), ("sumo", {"alpha": 0.8}), ("sumo", {}),
                 ("iwae", {"K": 8}),
                 ("coupled_isir", {"K": 4}), ("oracle", {"S": 1})]:
    s = registry.ESTIMATORS[name].fn(t, R, torch.Generator().manual_seed(0), **kw)
    G = s.grads[~s.diagnostics["nonfinite"]].numpy()
    a, se, k = hill_tail_index(np.linalg.norm(G - np.median(G, 0), axis=1))
    print(f"{name}({kw or 'default'}): tail_index {a:.2f} ± {se:.2f} (k={k}, n={len(G)}, censored {int(s.diagnostics['nonfinite'].sum())})")
