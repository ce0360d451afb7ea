"""The floors a gradient estimator is compared with: the forward floor (sample + one batched log-joint) and
floor (a) (the same + one backward pass to θ), and the generic ``vmap(grad)`` path of per-replicate gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradbench.core import per_replicate_grad


def floor_sample_log_joint(target: Any, R: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """Forward floor: draw R × K particles per data point and evaluate the log-joint once, batched (no gradient)."""
    z, _ = target.sample_proposal((R, K), gen)
    return target.log_joint(z)


def has_backward_floor(target: Any) -> bool:
    """Targets built from a pure model (contract v2: ``model.log_joint(θ, x, z)``) have floor (a) with a backward."""
    return hasattr(target, "model") and hasattr(target, "theta") and hasattr(target.model, "log_joint")


def floor_log_joint_backward(target: Any, R: int, K: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Floor (a): draw R × K particles per data point, one batched ``log_joint`` (for the VAE: one batched decoder
    forward) and one backward pass to θ of its sum — the least a θ-gradient estimator that evaluates E = R·K·N
    particles must do. It returns one summed gradient, not R of them (an [R, P] result costs more)."""
    z, _ = target.sample_proposal((R, K), gen)
    theta = {k: v.detach().requires_grad_() for k, v in target.theta.items()}
    with torch.enable_grad():
        total = target.model.log_joint(theta, target.x, z).sum()
        return torch.autograd.grad(total, list(theta.values()))


def floor_a(target: Any) -> Callable[[Any, int, int, torch.Generator], Any]:
    """Floor (a) of a target: forward + backward where the target has a pure model, else the forward floor."""
    return floor_log_joint_backward if has_backward_floor(target) else floor_sample_log_joint


def vmap_weighted_grad(target: Any, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_{k,n} weights[r, k, n] ∇θ log p(x_n, z[r, k, n]) for every replicate r → [R, P], by
    ``torch.func.vmap(grad(·))`` of the weighted surrogate: the generic path of
    :meth:`gradbench.target.ComposedTarget.weighted_grad_log_joint`, bypassing a model's hand-written one."""
    model, x = target.model, target.x

    def surrogate(theta: Any, z1: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        return (w1 * model.log_joint(theta, x, z1)).sum()

    grads = per_replicate_grad(surrogate, target.theta, z, weights)
    return target.layout.flatten(grads, batch=(z.shape[0],))


def _matched_R(evals: float, K: int, n_data: int) -> int:
    """Replicates of a K-particle call that evaluate ``evals`` single-point log-joints."""
    return max(1, round(evals / (K * n_data)))


def _particles(params: dict[str, Any], default: int) -> int:
    for key in ("K", "S"):
        if isinstance(params.get(key), int):
            return int(params[key])
    return default
