# ruff: noqa  (a one-off check script, kept as it was run)
"""Issue 13: why unbiased score-function estimators are rejected on the discrete-sbn targets by the runner bias test.
On a mean-field copy of each SBN encoder (φ = the logits, exact logit-level ∇ELBO by enumeration), REINFORCE and RLOO
at R = 2000, seeds 0-3: Hotelling T² of the logit-level gradient and the share carried by its largest whitened direction,
with the q-probability of the rarest state of the coordinate that dominates it.
Usage: OMP_NUM_THREADS=1 python reports/discrete-estimators/rare_state_check.py"""
import numpy as np
import torch
from scipy import stats as sps

from gradbench.contracts import ComposedTarget
from gradbench.data import DataSpec, load
from gradbench.estimators import discrete
from gradbench.families.bernoulli import BernoulliMeanField
from gradbench.models.params import BernoulliProposal, SBNParams
from gradbench.models.sbn import build
from gradbench.references import enumeration
from gradbench.seeding import make_generator

x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
for params in [SBNParams(layers=[10], conditionals="linear"), SBNParams(layers=[6, 4], conditionals="mlp", hidden=16)]:
    t = build(params, BernoulliProposal(logit_noise=0.5), 0, data=x)
    ell = discrete.logits(t)
    mf = ComposedTarget(t.model, BernoulliMeanField(10, 10), t.x, t.theta, {"logits": ell}, reference_builders=enumeration.reference_builders())
    ref = mf.reference("phi_elbo").value.numpy()
    p = torch.sigmoid(ell).numpy().ravel()
    rare = np.minimum(p, 1 - p)
    print(params.layers, "min(p,1-p): smallest", np.sort(rare)[:6], "count < 1/2000:", (rare < 1/2000).sum())
    for name, S in [("reinforce", None), ("rloo", 2)]:
        Ts = []
        for seed in range(4):
            gen = make_generator(seed)
            if S is None:
                pp = torch.sigmoid(ell); b = (mf.draw_noise((2000,), gen) < pp).double()
                G = (discrete.signal(mf, b).unsqueeze(-1) * (b - pp)).reshape(2000, -1).numpy()
            else:
                G = discrete.rloo(mf, 2000, gen, S=2).grads.numpy()
            d = G.mean(0) - ref; C = np.cov(G.T) / len(G)
            w, V = np.linalg.eigh(C); keep = w > w.max() * 1e-12
            proj = V[:, keep].T @ d; T2 = float((proj**2 / w[keep]).sum()); r = int(keep.sum()); n = len(G)
            F = T2 * (n - r) / ((n - 1) * r); pF = sps.f.sf(F, r, n - r)
            zc = (proj**2 / w[keep]); top = np.argsort(zc)[-1]
            Ts.append(f"T²={T2:.0f} (r={r}, p={pF:.2g}; top dir. carries {zc[top]:.0f}, its largest |coord| at p-rarity {rare[np.abs(V[:, keep][:, top]).argmax()]:.1e})")
        print(" ", name, *Ts, sep="\n    ")
