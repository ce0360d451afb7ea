"""tail_index (Hill, k = ceil(sqrt(R))) of ||g_r - median|| on the ppca-bias-demo target, R = 20 000, seed 0."""
import sys

import numpy as np
import torch

sys.path.insert(0, '.')
from gradbench import registry
from gradbench.stats import hill_tail_index
from tests.conftest import make_ppca

t = make_ppca(d=10, k=3, n=1, mean_shift=0.5, cov_scale=2.0, seed=0)
for name, kw in [("sumo", {"truncation": "geometric", "rho": 0.8}), ("sumo", {"alpha": 0.8}), ("sumo", {}),
                 ("iwae", {"K": 8}),
                 ("coupled_isir", {"K": 4}), ("oracle", {"S": 1})]:
    s = registry.ESTIMATORS[name].fn(t, 20_000, torch.Generator().manual_seed(0), **kw)
    G = s.grads[~s.diagnostics["nonfinite"]].numpy()
    a, se, k = hill_tail_index(np.linalg.norm(G - np.median(G, 0), axis=1))
    print(f"{name}({kw or 'default'}): tail_index {a:.2f} ± {se:.2f} (k={k}, n={len(G)}, censored {int(s.diagnostics['nonfinite'].sum())})")
