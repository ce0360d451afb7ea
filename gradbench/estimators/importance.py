"""Importance-weighted (IWAE / self-normalised importance sampling) estimator of ∇θ log p(x).

With z_1..z_K ~ q(z | x) and w_k = p(x, z_k) / q(z_k | x), w̃_k = w_k / Σ_j w_j:
    ĝ = Σ_k w̃_k ∇θ log p(x, z_k)  = ∇θ log (1/K Σ_k w_k)   (q fixed),
the θ-gradient of the IWAE bound. It is biased, with bias O(1/K), and consistent as K → ∞.
Reference: Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
"""

from __future__ import annotations

import math

import torch

from gradbench.core import GradSample, LatentTarget, log_joint_with_grad
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    IWAEParams,
)


def iwae(target: LatentTarget, R: int, gen: torch.Generator, *, K: int = 8) -> GradSample:
    """Self-normalised importance-weighted gradient, K particles per data point."""
    z, log_q = target.sample_proposal((R, K), gen)  # z [R, K, N, k], log_q [R, K, N]
    log_p, weighted_grad = log_joint_with_grad(target, z)  # shares work between the two passes
    log_w = log_p - log_q
    log_sum_w = torch.logsumexp(log_w, dim=1, keepdim=True)  # [R, 1, N]
    weights = torch.exp(log_w - log_sum_w)  # softmax over k, and log Σ_k w_k reused below
    grads = weighted_grad(weights)
    ess = 1.0 / (weights**2).sum(dim=1)  # [R, N]
    cost = torch.full((R,), float(K * target.n_data), dtype=z.dtype, device=z.device)
    log_px_hat = (log_sum_w.squeeze(1) - math.log(K)).sum(-1)
    return GradSample(grads, target.layout, cost, {"ess_mean": ess.mean(-1), "log_px_hat": log_px_hat})
