"""Wake-sleep's sleep-phase φ-update against the objective it follows, on the discrete-sbn targets (suite as shipped).

The sleep phase follows g_sleep = ∇φ −E_{p_θ(x)} KL(p_θ(z|x) ‖ q_φ(z|x)) · N = N E_{p_θ(x, z)}[∇φ log q_φ(z | x)].
x has 64 pixels, so E_{p_θ(x)} is not enumerable; the reference is computed another way than the estimator: exactly
over the 2^k latent states z (prior mass π_z by enumeration, top-down) and by Monte Carlo over x ~ p_θ(x | z) only,
stratified (every z gets M_x draws), in B independent batches whose spread gives the reference's per-coordinate
variance (entered as ReferenceNoise(var), the two-sample form of the bias test). The same sample the suite's run
draws (seed 0, R = 2000) is tested against it, against a broken objective (top-layer prior logits set to 0: the
negative control) and against ∇φ ELBO (the suite's verdict: rejected).
Usage (repository root): OMP_NUM_THREADS=1 python reports/discrete-estimators/wake_sleep_own_objective.py > reports/discrete-estimators/wake-sleep-own.txt
"""

from __future__ import annotations

import numpy as np
import torch

from gradbench import cell as cell_mod
from gradbench.estimators.discrete import to_phi
from gradbench.references.enumeration import binary_states
from gradbench.seeding import make_generator
from gradbench.stats import ReferenceNoise, bias_test
from gradbench.suite import load_suite

B, M_X = 40, 64  # batches × draws of x per latent state and batch


def prior_log_mass(model, theta, Z: torch.Tensor) -> torch.Tensor:
    """log p_θ(z) of every state (z = [z1, top] for two layers, as sbn.sample_joint returns it)."""
    def logp(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y * torch.nn.functional.logsigmoid(logits) + (1 - y) * torch.nn.functional.logsigmoid(-logits)).sum(-1)

    k1 = model.layers[0]
    top = Z[:, k1:] if len(model.layers) == 2 else Z
    lp = logp(theta["prior_logits"].expand_as(top), top)
    if len(model.layers) == 2:
        lp = lp + logp(model._logits(theta, "z1", top), Z[:, :k1])
    return lp


def sleep_reference(target, gen: torch.Generator, flat_top: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(reference, its per-coordinate variance); ``flat_top``: the negative control, the top layer's prior logits
    replaced by 0 (a broken sleep objective the test must reject)."""
    model, theta = target.model, dict(target.theta)
    if flat_top:
        theta["prior_logits"] = torch.zeros_like(theta["prior_logits"])
    Z = binary_states(sum(model.layers), dtype=torch.float64)
    pi = prior_log_mass(model, theta, Z).exp()
    z1 = Z[:, : model.layers[0]]
    x_logits = model._logits(theta, "x", z1)  # [J, d]
    batches = []
    for _ in range(B):
        x = (torch.rand((M_X, *x_logits.shape), generator=gen, dtype=torch.float64) < torch.sigmoid(x_logits)).double()
        x = x.reshape(-1, x.shape[-1])  # [M_X·J, d], state j at rows j, J + j, …
        zz = Z.repeat(M_X, 1)
        w = (target.n_data * pi / M_X).repeat(M_X).unsqueeze(-1)
        g = w * (zz - torch.sigmoid(target.family.logits(target.phi, x)))
        batches.append(to_phi(target, g.unsqueeze(0), x)[0].numpy())
    A = np.stack(batches)
    return A.mean(0), A.var(0, ddof=1) / B


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    _, cells = load_suite("suites/discrete-sbn.yaml")
    for c in (x for x in cells if x.estimator == "wake_sleep"):
        target = cell_mod.target_for(c)
        sample = cell_mod.sample_cell(c, target)
        G = sample.grads.double().numpy()
        own, var = sleep_reference(target, make_generator(12345))
        elbo = target.reference(sample.wrt).value.double().numpy()
        eps = float(np.finfo(np.float64).eps)
        t_own = bias_test(G, own, eps, np.random.default_rng(0), ReferenceNoise(var=var), atoms=True)
        t_elbo = bias_test(G, elbo, eps, np.random.default_rng(0), atoms=True)
        m = G.mean(0)
        rel = lambda ref, m=m: float(np.linalg.norm(m - ref) / np.linalg.norm(ref))
        floor = float(np.sqrt(G.var(0, ddof=1).sum() / G.shape[0]))
        print(f"{c.target.params.get('layers')} {c.target.params.get('conditionals')}: R = {G.shape[0]}, P = {G.shape[1]}; "
              f"reference s.e. / test s.e. (rms) = {np.sqrt(var.sum()) / floor:.3f}")
        print(f"  vs own (sleep) objective: ‖ḡ − g‖/‖g‖ = {rel(own):.4f} (noise floor {floor / np.linalg.norm(own):.4f}), "
              f"p = {t_own.pvalue:.3g} [{t_own.method}]")
        bad, bad_var = sleep_reference(target, make_generator(12345), flat_top=True)
        t_bad = bias_test(G, bad, eps, np.random.default_rng(0), ReferenceNoise(var=bad_var), atoms=True)
        print(f"  negative control, top prior logits set to 0: p = {t_bad.pvalue:.3g}")
        print(f"  vs ∇φ ELBO:               ‖ḡ − g‖/‖g‖ = {rel(elbo):.4f}, p = {t_elbo.pvalue:.3g} [{t_elbo.method}]")
