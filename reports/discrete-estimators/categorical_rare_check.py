# ruff: noqa  (a one-off check script, kept as it was run)
"""Issue 13: the same check on the discrete-categorical target (k = 2, C = 10, digits): logit-level gradients of RLOO
and sum-and-sample (m = 5), R = 2000, seeds 0-3, against the enumerated logit-level ∇ELBO: T², its dominant direction
and the class probability there; pooled z-scores over all coordinates and over classes with q > 0.01, 0.05.
Usage: OMP_NUM_THREADS=1 python reports/discrete-estimators/categorical_rare_check.py"""
import numpy as np
import torch
from scipy import stats as sps

from gradbench.data import DataSpec, load
from gradbench.estimators import discrete
from gradbench.estimators.sum_and_sample import sum_and_sample
from gradbench.families.categorical import categorical_log_pmf
from gradbench.models import categorical
from gradbench.models.params import CategoricalProposal, CategoricalVAEParams
from gradbench.references.enumeration import latent_states
from gradbench.seeding import make_generator

x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
t = categorical.build(CategoricalVAEParams(), CategoricalProposal(logit_noise=0.5), 0, data=x)
ell0 = discrete.logits(t).detach()
states = latent_states(t.model.latent).unsqueeze(1)  # [100, 1, 20]
lj = t.log_joint(states)  # [100, N]
ell = ell0.clone().requires_grad_(True)
lq = categorical_log_pmf(states, ell, 10)
(mref,) = torch.autograd.grad((lq.exp() * (lj - lq)).sum(), ell)
mref = mref.reshape(-1).numpy()
q = torch.softmax(ell0.reshape(10, 2, 10), -1)
print("smallest class probabilities", np.sort(q.numpy().ravel())[:5], "count < 1/2000:", int((q < 1 / 2000).sum()))
import gradbench.estimators.discrete as D

orig = D._sample
for name, fn in [("rloo", lambda g: discrete.rloo(t, 2000, g, S=2)), ("s&s m=5", lambda g: sum_and_sample(t, 2000, g, m=5))]:
    cap = {}
    D._sample = lambda target, gl, evals, diag=None: cap.setdefault("g", gl) is None  # capture logit-level ĝ_ℓ
    import gradbench.estimators.sum_and_sample as SS; SS._sample = D._sample
    blocks = []
    for seed in range(4):
        cap.clear(); fn(make_generator(seed)); G = cap["g"].reshape(2000, -1).numpy(); blocks.append(G)
        d = G.mean(0) - mref; C = np.cov(G.T) / len(G); w, V = np.linalg.eigh(C); keep = w > w.max() * 1e-10
        proj = V[:, keep].T @ d; zc = proj**2 / w[keep]; top = zc.argmax(); r = int(keep.sum()); n = len(G)
        pF = sps.f.sf(zc.sum() * (n - r) / ((n - 1) * r), r, n - r)
        j = np.abs(V[:, keep][:, top]).argmax()
        print(name, seed, f"logit-level T² {zc.sum():.0f} (r={r}, F p={pF:.2g}); top direction {zc[top]:.0f}, mostly coord {j} with q = {q.numpy().ravel()[j]:.1e}")
    G = np.concatenate(blocks); d = G.mean(0) - mref; se = G.std(0, ddof=1) / np.sqrt(len(G)); live = se > 1e-12; z = d[live] / se[live]
    qq = q.numpy().ravel()[live]
    for lo in (0.01, 0.05):
        zz = z[qq > lo]
        print(name, f"pooled, classes with q > {lo}: {zz.size} coords, mean z² {np.mean(zz**2):.3f}, max|z| {np.abs(zz).max():.2f}, Bonferroni p {min(1, 2 * sps.norm.sf(np.abs(zz).max()) * zz.size):.2g}")
    print(name, "pooled n", len(G), "mean z²", round(float(np.mean(z**2)), 3), "max|z|", round(float(np.abs(z).max()), 2), "Bonferroni p", min(1, 2 * sps.norm.sf(np.abs(z).max()) * z.size))
    D._sample = orig; SS._sample = orig
