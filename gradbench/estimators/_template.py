"""<Family name>: one-line summary.

Formula: ĝ = ...  (state exactly what is averaged and with which weights)
Reference: Author et al. (year), "Title", venue.

Copy this file, implement the function, and add one line to ``gradbench/registry.py``.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradbench.core import GradSample, LatentTarget


class MyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    K: int = Field(8, gt=0, description="number of particles")


def my_estimator(target: LatentTarget, R: int, gen: torch.Generator, *, K: int = 8) -> GradSample:
    """ĝ = ... for R independent replicates, each using K fresh particles per data point."""
    z, log_q = target.sample_proposal((R, K), gen)  # [R, K, N, k]
    weights = torch.full(log_q.shape, 1.0 / K, dtype=log_q.dtype, device=log_q.device)
    grads = target.weighted_grad_log_joint(z, weights)
    cost = torch.full((R,), float(K * target.n_data), dtype=grads.dtype, device=grads.device)
    return GradSample(grads, target.layout, cost)
