"""Plain variational (ELBO) estimator of ∇θ log p(x).

ĝ = (1/S) Σ_s ∇θ log p(x, z_s), z_s ~ q(z | x). Its expectation is ∇θ ELBO(θ, q), which equals
∇θ log p(x) only when q is the exact posterior; the bias is ∇θ KL(q ‖ p(z | x)) up to sign.
Reference: Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR.
"""

from __future__ import annotations

import torch

from gradbench.core import GradSample, LatentTarget
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    ELBOParams,
)


def elbo(target: LatentTarget, R: int, gen: torch.Generator, *, S: int = 1) -> GradSample:
    """θ-gradient of the S-sample Monte Carlo ELBO with q fixed."""
    z, _ = target.sample_proposal((R, S), gen)  # [R, S, N, k]
    weights = torch.full(z.shape[:-1], 1.0 / S, dtype=z.dtype, device=z.device)
    grads = target.weighted_grad_log_joint(z, weights)
    cost = torch.full((R,), float(S * target.n_data), dtype=z.dtype, device=z.device)
    return GradSample(grads, target.layout, cost)
