"""Sum-and-sample: the Rao–Blackwellised score-function estimator over an enumerable discrete q.

For each data point n, let C_n be the m states of the joint latent space (2ᵏ binary or Cᵏ categorical states)
with the largest q_φ(z | x_n), Q_n = Σ_{s∈C_n} q(s) their mass, and b_n one draw from q restricted to the
complement, q(s) / (1 − Q_n) for s ∉ C_n. With f the learning signal (log p(x, z) − log q_φ̄(z | x), or the
target's own ``signal``) and any β_n that does not depend on b_n,

    ĝ_n = Σ_{s∈C_n} q(s) (f(s) − β_n) ∇φ log q(s) + (1 − Q_n) (f(b_n) − β_n) ∇φ log q(b_n),

is unbiased for ∇φ E_q f = E_q[f ∇φ log q] (the sum is the exact part of that expectation, the second term an
importance-free single-sample estimate of the rest: E[(1 − Q) h(b)] = Σ_{s∉C} q(s) h(s)), and β_n drops out in
expectation because Σ_s q(s) ∇φ log q(s) = 0. It is the conditional expectation of a single-sample REINFORCE
estimator given which states were summed (Rao–Blackwellisation), so its variance is at most that of
REINFORCE with the same β (Liu et al. 2019, Thm 1), and exact (zero variance) when m = all states.
``baseline = "summed"`` uses β_n = Σ_{s∈C} q(s) f(s) / Q_n, the q-mean of f over the summed states (known
before b_n is drawn); ``none``: β = 0. At the logits ℓ_n the score is ∂ℓ log q(s) = s − E_q[s] (σ(ℓ) or the
blockwise softmax), and ĝ is chained to φ as every estimator of :mod:`gradbench.estimators.discrete` is.

q is tabulated over all states of one data point (``enumerate``; S · N values), the summed set is
``topk`` of that table, and b_n is drawn by inverse CDF of the table with the summed states zeroed (one
uniform per replicate and data point, from the generator: not common random numbers with the family's
noise). Cost: (m + 1) evaluations of f per data point (the m summed states are the same in every
replicate, but each estimate needs them).

Reference: Liu, Regier, Tripuraneni, Jordan & McAuliffe (2019), "Rao-Blackwellized stochastic gradients for
discrete distributions", ICML; Kool, van Hoof & Welling (2020), "Estimating gradients for discrete random
variables by sampling without replacement", ICLR (§2.3, "sum-and-sample").
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from gradbench.core import GradSample
from gradbench.estimators.discrete import _check, _sample, logits, probs, signal
from gradbench.estimators.params import SumAndSampleParams
from gradbench.references.enumeration import latent_states


def summed_states(target: Any, m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(all states [S, D], q table [S, N], indices of the m most probable states per point [m, N], their q [m, N])."""
    x = target.x
    states = latent_states(target.model.latent, dtype=x.dtype, device=x.device)  # [S, D]
    q = torch.exp(target.log_q(target.phi, states.unsqueeze(1)))  # [S, N]
    top_q, top = torch.topk(q, min(m, states.shape[0]), dim=0)  # [m, N]
    return states, q, top, top_q


def sample_complement(q: Tensor, top: Tensor, R: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(indices [R, N] of b_n ~ q(s)/(1 − Q_n) on s ∉ C_n, 1 − Q_n [N]) by inverse CDF of the masked table."""
    rest = q.scatter(0, top, torch.zeros_like(top, dtype=q.dtype)).T.contiguous()  # [N, S], summed states zeroed
    mass = rest.sum(-1)  # [N]: 1 − Q_n, summed over the complement (no cancellation)
    cdf = rest.cumsum(-1)
    u = torch.rand(rest.shape[0], R, generator=gen, dtype=q.dtype, device=q.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(q.shape[0] - 1)  # [N, R]
    return idx.T, mass


def sum_and_sample(target: Any, R: int, gen: torch.Generator, *, m: int = 3,
                   baseline: Literal["none", "summed"] = "summed") -> GradSample:
    """Sum-and-sample ∇φ ELBO (Liu et al. 2019): the m most probable states summed exactly, one sampled from the rest."""
    SumAndSampleParams(m=m, baseline=baseline)
    _check(target, "sum_and_sample", categorical=True)
    require_enumerable(target)
    states, q, top, top_q = summed_states(target, m)
    idx, rest_mass = sample_complement(q, top, R, gen)
    N = target.n_data
    p = probs(target, logits(target))  # [N, D]
    z_top = states[top]  # [m, N, D]
    f_top = signal(target, z_top)  # [m, N]
    b = states[idx]  # [R, N, D]
    f_b = signal(target, b)  # [R, N]
    beta = (top_q * f_top).sum(0) / top_q.sum(0) if baseline == "summed" else torch.zeros_like(rest_mass)
    summed = ((top_q * (f_top - beta)).unsqueeze(-1) * (z_top - p)).sum(0)  # [N, D]
    sampled = (rest_mass * (f_b - beta)).unsqueeze(-1) * (b - p)  # [R, N, D]
    diag = {"summed_mass": top_q.sum(0).mean().expand(R).clone()}
    return _sample(target, summed + sampled, (top.shape[0] + 1) * N, diag)


def require_enumerable(target: Any) -> None:
    if "enumerate" not in getattr(target, "capabilities", frozenset({"enumerate"})):
        raise TypeError("sum_and_sample needs a family whose states can be enumerated (capability 'enumerate')")
