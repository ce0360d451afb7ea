"""Power at α = 0.01 of the old (47b7c16) and new bias tests, same samples. Usage: power.py CASE N_SEEDS"""
import importlib.util
import sys
import time

import numpy as np
import torch

sys.path.insert(0, '.')
spec = importlib.util.spec_from_file_location("old_stats", "studies/issue12/old_stats.py"); old = importlib.util.module_from_spec(spec); sys.modules["old_stats"] = old; spec.loader.exec_module(old)
from gradbench.estimators.importance import iwae
from gradbench.stats import bias_test
from tests.conftest import make_ppca

EPS = float(np.finfo(float).eps)
case, n_seeds = sys.argv[1], int(sys.argv[2])
K, R, wide = {"wide4": (4, 300, True), "wide16": (16, 300, True), "demo32": (32, 1000, False)}[case]
demo = make_ppca(d=10, k=3, n=1, mean_shift=0.5, cov_scale=2.0, seed=0)
po, pn, methods = [], [], {}
t0 = time.time()
for s in range(n_seeds):
    t = make_ppca(d=30, k=5, n=2, mean_shift=0.5, cov_scale=2.0, seed=s) if wide else demo
    G = iwae(t, R, torch.Generator().manual_seed(10_000 + s), K=K).grads.numpy()
    g = t.exact_grad().numpy()
    po.append(old.bias_test(G, g, None, EPS).pvalue)
    res = bias_test(G, g, EPS, np.random.default_rng(s))
    pn.append(res.pvalue); methods[res.method.split("(")[0]] = methods.get(res.method.split("(")[0], 0) + 1
po, pn = np.array(po), np.array(pn)
for name, p in (("old", po), ("new", pn)):
    r = (p <= 0.01).mean()
    print(f"{case} {name}: power@0.01 = {r:.3f} ± {np.sqrt(r*(1-r)/len(p)):.3f} (n={len(p)})")
print(methods, f"{time.time()-t0:.0f}s")
