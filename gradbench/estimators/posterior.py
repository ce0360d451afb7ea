"""Reference estimators that use the exact posterior (available for PPCA only).

* ``exact``: ĝ = ∇θ log p(x) in closed form, repeated R times; zero variance, zero cost.
* ``oracle``: ĝ = (1/S) Σ_s ∇θ log p(x, z_s), z_s ~ p(z | x) — unbiased by Fisher's identity,
  ∇θ log p(x) = E_{p(z|x)}[∇θ log p(x, z)] (Fisher 1925; see e.g. Dempster, Laird & Rubin 1977).
"""

from __future__ import annotations

import torch

from gradbench.core import GradSample, LatentTarget
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    ExactParams,
    OracleParams,
)


def exact(target: LatentTarget, R: int, gen: torch.Generator) -> GradSample:
    """The closed-form gradient, R times (the zero-variance, zero-bias end of every table)."""
    g = target.exact_grad()
    return GradSample(g.expand(R, -1).clone(), target.layout, torch.zeros(R, dtype=g.dtype, device=g.device))


def oracle(target: LatentTarget, R: int, gen: torch.Generator, *, S: int = 1) -> GradSample:
    """Average of the complete-data gradient over S exact-posterior samples per data point."""
    z = target.sample_posterior((R, S), gen)  # [R, S, N, k]
    weights = torch.full(z.shape[:-1], 1.0 / S, dtype=z.dtype, device=z.device)
    grads = target.weighted_grad_log_joint(z, weights)
    cost = torch.full((R,), float(S * target.n_data), dtype=z.dtype, device=z.device)
    return GradSample(grads, target.layout, cost)
