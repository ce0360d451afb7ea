"""False-alarm rate of the old (47b7c16) and new tests on the unbiased oracle, wide PPCA R=300, and demo R=1000."""
import importlib.util
import sys

import numpy as np
import torch

sys.path.insert(0, '.')
spec = importlib.util.spec_from_file_location("old_stats", "studies/issue12/old_stats.py"); old = importlib.util.module_from_spec(spec); sys.modules["old_stats"] = old; spec.loader.exec_module(old)
from gradbench.estimators.posterior import oracle
from tests.conftest import make_ppca

EPS = float(np.finfo(float).eps)
for label, mk, R in (("wide R=300", lambda s: make_ppca(d=30, k=5, n=2, mean_shift=0.5, cov_scale=2.0, seed=s), 300),):
    po = []
    for s in range(300):
        t = mk(s); G = oracle(t, R, torch.Generator().manual_seed(10_000 + s), S=1).grads.numpy()
        po.append(old.bias_test(G, t.exact_grad().numpy(), None, EPS).pvalue)
    po = np.array(po)
    print(f"old test, oracle {label}: false alarms {np.mean(po<=0.01):.3f} @0.01, {np.mean(po<=0.05):.3f} @0.05 (n=300)")
