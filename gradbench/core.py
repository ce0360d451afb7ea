"""The one currency between targets, estimators and protocols.

* :class:`ParamLayout` names the slices of a flattened parameter vector (``W``, ``mu``, ...).
* :class:`GradSample` is what every estimator returns: gradients ``[R, P]`` with a leading
  replicate dimension, the cost of each replicate in log-joint evaluations, and per-replicate
  diagnostics (always including ``nonfinite``).
* :class:`Reference` is the value a bias protocol compares against: exact (PPCA), enumerated,
  or estimated with a per-coordinate standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class ParamGroup:
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParamLayout:
    """Ordered parameter groups of a flattened gradient vector."""

    groups: tuple[ParamGroup, ...]

    @property
    def size(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for g in self.groups:
            out[g.name] = slice(start, start + g.size)
            start += g.size
        return out

    def flatten(self, parts: dict[str, Tensor], batch: tuple[int, ...] = ()) -> Tensor:
        """Concatenate named parts (each ``[*batch, *group.shape]``) into ``[*batch, P]``."""
        return torch.cat([parts[g.name].reshape(*batch, g.size) for g in self.groups], dim=-1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        batch = flat.shape[:-1]
        return {g.name: flat[..., s].reshape(*batch, *g.shape) for g, s in zip(self.groups, self.slices().values())}


@dataclass
class GradSample:
    """R independent replicates of a gradient estimator.

    ``grads[r]`` is replicate r's estimate of the gradient w.r.t. the parameters in ``layout``;
    ``cost[r]`` is the number of single-data-point log-joint evaluations it needed.
    ``diagnostics`` maps names to ``[R]`` tensors; ``nonfinite`` is added automatically.
    """

    grads: Tensor
    layout: ParamLayout
    cost: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    wrt: str = "theta"  # the estimated objective's key (``gradbench.contracts.Objective``); an Objective is accepted

    def __post_init__(self) -> None:
        self.wrt = str(self.wrt)
        R, P = self.grads.shape
        if P != self.layout.size:
            raise ValueError(f"grads have {P} columns but the layout has {self.layout.size}")
        if self.cost.shape != (R,):
            raise ValueError(f"cost must have shape ({R},), got {tuple(self.cost.shape)}")
        if "nonfinite" not in self.diagnostics:
            # one reduction over [R, P] instead of isfinite's four elementwise passes (a third of iwae's time on a
            # one-point VAE); rows whose sum is not finite are re-checked exactly (a finite row's sum may overflow)
            bad = ~torch.isfinite(self.grads.sum(dim=1))
            if bool(bad.any()):
                bad[bad.clone()] = ~torch.isfinite(self.grads[bad]).all(dim=1)
            self.diagnostics["nonfinite"] = bad

    @property
    def replicates(self) -> int:
        return self.grads.shape[0]

    @staticmethod
    def cat(samples: list[GradSample]) -> GradSample:
        first = samples[0]
        keys = set(first.diagnostics).intersection(*(s.diagnostics for s in samples))
        return GradSample(
            grads=torch.cat([s.grads for s in samples]),
            layout=first.layout,
            cost=torch.cat([s.cost for s in samples]),
            diagnostics={k: torch.cat([s.diagnostics[k] for s in samples]) for k in sorted(keys)},
            wrt=first.wrt,
        )


@dataclass(frozen=True)
class Reference:
    """What the estimated gradient is compared against.

    ``stderr`` is ``None`` for exact references and a per-coordinate standard error for
    estimated ones; protocols add its variance to the Monte Carlo variance. An estimated reference
    that is the mean of ``n`` i.i.d. replicates may also carry their sample covariance ``cov``
    [P, P] (its sufficient statistics): the bias test is then a two-sample test with the full
    covariance. ``error`` is a per-coordinate error bound of a quadrature/enumerated reference,
    treated like a standard error.
    """

    value: Tensor
    kind: Literal["exact", "enumerated", "quadrature", "estimated"] = "exact"
    stderr: Tensor | None = None
    cov: Tensor | None = None
    n: int | None = None
    error: Tensor | None = None


def log_joint_with_grad(target: LatentTarget, z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``(target.log_joint(z), weights ↦ target.weighted_grad_log_joint(z, weights))``.

    A target may provide a method of the same name that shares work between the two (PPCA computes
    the centred latents once); this falls back to the two separate calls for targets that do not.
    """
    fused = getattr(target, "log_joint_with_grad", None)
    if fused is not None:
        return fused(z)
    return target.log_joint(z), lambda weights: target.weighted_grad_log_joint(z, weights)


class LatentTarget(Protocol):
    """What generic estimators of ∇θ log p(x) need from a latent-variable target.

    Latents ``z`` have shape ``[..., N, k]`` (one latent per data point); log-densities return
    ``[..., N]``. Gradients are sums over the N data points.
    """

    layout: ParamLayout

    @property
    def n_data(self) -> int: ...

    def sample_posterior(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor: ...

    def sample_proposal(self, batch: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]: ...

    def log_joint(self, z: Tensor) -> Tensor: ...

    def weighted_grad_log_joint(self, z: Tensor, weights: Tensor) -> Tensor: ...

    def exact_grad(self) -> Tensor: ...

    def reference(self, wrt: str = "theta") -> Reference: ...


def per_replicate_grad(fn: Callable[..., Any], params: dict[str, Tensor], *batched: Tensor, has_aux: bool = False) -> Any:
    """``{name: [B, *shape]}``: the gradient of ``fn(params, *batched[b])`` w.r.t. ``params`` for every b.

    ``torch.func.vmap(torch.func.grad(fn))`` over the leading dimension of ``batched``: one batched
    backward pass, no Python loop over replicates (the parameters are shared, not copied R times).
    With ``has_aux``, ``fn`` returns ``(value, aux)`` and the result is ``(grads, aux batched over b)``:
    diagnostics of the same forward pass, not a second one.
    """
    grad = torch.func.grad(fn, has_aux=has_aux)
    return torch.func.vmap(grad, in_dims=(None, *([0] * len(batched))))(params, *batched)
