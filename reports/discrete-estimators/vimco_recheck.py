"""VIMCO K=2 on the discrete-categorical target (τ = 3), seed 0, R = 2000: the runner's bias test takes the F-only
Hotelling branch (B·n·r² above gradbench.stats.HOTELLING_BOOT_MAX_FLOPS at r = 180) and rejects (p = 2.5e-5).
This re-runs the cell's sample and tests it (a) with the old cap (F only), (b) as the runner now does (cap 1e11: (bootstrap-calibrated
T² + max-t)), (c) RLOO on the same noise for comparison. Usage: python reports/discrete-estimators/vimco_recheck.py"""

from __future__ import annotations

import numpy as np

from gradbench import cell as cell_mod
from gradbench import stats
from gradbench.suite import load_suite

if __name__ == "__main__":
    _, cells = load_suite("suites/discrete-categorical.yaml")
    for name in ("vimco", "rloo"):
        c = next(x for x in cells if x.estimator == name)
        target = cell_mod.target_for(c)
        sample = cell_mod.sample_cell(c, target)
        ref = target.reference(sample.wrt).value.double().numpy()
        G = sample.grads.double().numpy()
        eps = float(np.finfo(G.dtype).eps)
        boot = stats.bias_test(G, ref, eps, np.random.default_rng(0), atoms=True)  # the runner's branch now
        cap, stats.HOTELLING_BOOT_MAX_FLOPS = stats.HOTELLING_BOOT_MAX_FLOPS, 4e9  # the cap before wave 4's merge
        f_only = stats.bias_test(G, ref, eps, np.random.default_rng(0), atoms=True)
        stats.HOTELLING_BOOT_MAX_FLOPS = cap
        print(f"{name}: old cap 4e9 (F only) p = {f_only.pvalue:.3g} ({f_only.method}); runner now (cap 1e11, bootstrap) p = {boot.pvalue:.3g} "
              f"({boot.method}); max|z| = {f_only.zmax:.3g}")
