"""RWS wake-φ (K = 8, 64) against its own objective −∇φ KL(p(z|x) ‖ q) (enumerated) on the discrete-sbn targets.
Usage: python reports/discrete-estimators/rws_own_objective.py   (seed 0, 2000 replicates; seconds)"""

import numpy as np

from gradbench.data import DataSpec, load
from gradbench.estimators import discrete
from gradbench.models.params import BernoulliProposal, SBNParams
from gradbench.models.sbn import build
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
for params in [SBNParams(layers=[10], conditionals="linear"), SBNParams(layers=[6, 4], conditionals="mlp", hidden=16)]:
    t = build(params, BernoulliProposal(logit_noise=0.5), 0, data=x)
    own = discrete.wake_phi_reference(t)
    for K in (8, 64):
        g = discrete.reweighted_wake_sleep(t, 2000, make_generator(0), K=K).grads
        m, se = g.mean(0), (g.var(0).sum() / g.shape[0]).sqrt()
        p = bias_test(g.numpy(), own.numpy(), 2.2e-16, np.random.default_rng(0), atoms=True).pvalue
        print(f"{params.layers} {params.conditionals} K={K}: ‖E ĝ − ref‖/‖ref‖ = {float((m - own).norm() / own.norm()):.4f} "
              f"(noise floor {float(se / own.norm()):.4f}), p = {p:.3g}")
