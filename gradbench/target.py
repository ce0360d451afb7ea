"""The generic target: a contract-v2 model and family composed at (θ, φ) on data x (``gradbench.contracts``).

:class:`ComposedTarget` implements the target interface every estimator calls (``sample_proposal``,
``log_joint``, ``weighted_grad_log_joint``, ``log_q_score`` …) from the two pure protocols, with
per-replicate gradients from ``torch.func`` (``vmap(grad(...))``: one batched backward pass, no Python
loop over replicates). A model or target may override any of them with a fast path.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradbench.contracts import LOG_MARGINAL, Family, Model, Objective, Params
from gradbench.core import Reference, per_replicate_grad


def value_probabilities(latent: Any, marginals: Tensor) -> Tensor:
    """Probabilities of every value of every coordinate from marginals: binary P(z_j = 1) [N, k] → [N, 2k] (both
    values); categorical P(z_j = c) [N, k·C] as it is."""
    return torch.cat([marginals, 1 - marginals], -1) if latent.kind == "binary" else marginals


JOINT = frozenset({"analytic_kl"})  # a target has these only when the model and the family both declare them


def declared_capabilities(model: Model, family: Family, provides: frozenset[str] = frozenset(),
                          reference_builders: Mapping[str, Any] | None = None) -> frozenset[str]:
    """A composed target's capabilities, from what its parts declare (nothing is inferred from the methods they
    happen to have): the family's ``capabilities``, the model's (``capabilities``, optional, e.g. ``exact_posterior``),
    the latent space's kind, ``provides`` given by the builder; ``analytic_kl`` when both model (log p(x | z) under a
    N(0, I) prior) and family (KL to N(0, I)) declare it; ``iwae_reference`` when a builder for an IWAE objective is
    given; ``state_probabilities`` when the family declares ``logits`` or ``state_probabilities``."""
    fam, mod = frozenset(getattr(family, "capabilities", ())), frozenset(getattr(model, "capabilities", ()))
    caps = set((fam | mod) - JOINT) | set(provides) | (fam & mod & JOINT)
    if model.latent.capability:
        caps.add(model.latent.capability)
    if {"theta_iwae", "phi_iwae"} & set(reference_builders or ()):
        caps.add("iwae_reference")
    if {"logits", "state_probabilities"} & fam:
        caps.add("state_probabilities")
    return frozenset(caps)


@dataclass
class ComposedTarget:
    """A model and a variational family at (θ, φ) on data x: what generic estimators and references use.

    Implements the target interface used by every estimator (``sample_proposal``, ``log_joint``,
    ``weighted_grad_log_joint``, ``log_q_score`` …) from the two pure protocols with torch.func.
    ``references`` maps an :class:`Objective` key to a callable building its reference (see
    ``gradbench.references``); results are cached on the target (once per process; the runner also
    caches estimated references in the run folder).
    """

    model: Model
    family: Family
    x: Tensor
    theta: Params
    phi: Params
    reference_builders: Mapping[str, Callable[[ComposedTarget, Objective], Reference]] = field(default_factory=dict)
    seed: int = 0
    provides: frozenset[str] = frozenset()
    _references: dict[str, Reference] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model.latent != self.family.latent:
            raise ValueError(f"model latent space {self.model.latent} does not match the family's {self.family.latent}")
        self.theta = {k: v.detach() for k, v in self.theta.items()}
        self.phi = {k: v.detach() for k, v in self.phi.items()}
        self.layout = self.model.layout
        self.phi_layout = self.family.layout
        self.capabilities = declared_capabilities(self.model, self.family, self.provides, self.reference_builders)

    def at(self, *, theta: Params | None = None, phi: Params | None = None, x: Tensor | None = None) -> ComposedTarget:
        """The same model and family at new (θ, φ) and/or data x (e.g. a training minibatch); references are not
        carried over (they depend on all three)."""
        return dataclasses.replace(self, theta=self.theta if theta is None else theta,
                                   phi=self.phi if phi is None else phi, x=self.x if x is None else x)

    # -- shapes -------------------------------------------------------------------------------
    @property
    def n_data(self) -> int:
        return self.x.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.model.latent.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def parameters(self) -> Params:
        return self.theta

    def encoder_params(self) -> Params:
        return self.phi

    # -- the one random draw ------------------------------------------------------------------
    def draw_noise(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        return self.family.noise((*batch, self.n_data), gen, self.x.dtype, self.x.device)

    def rsample(self, phi: Params, noise: Tensor) -> Tensor:
        return self.family.sample(phi, self.x, noise)

    def log_q(self, phi: Params, z: Tensor) -> Tensor:
        return self.family.log_prob(phi, self.x, z)

    def sample_proposal(self, batch: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """z ~ q_φ(z|x) [..., N, k] and log q [..., N]."""
        z = self.rsample(self.phi, self.draw_noise(batch, gen))
        return z, self.log_q(self.phi, z)

    def log_proposal(self, z: Tensor) -> Tensor:
        return self.log_q(self.phi, z)

    def sample_posterior(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        if "exact_posterior" not in self.capabilities:
            raise TypeError(f"{type(self.model).__name__} has no exact posterior sampler")
        return self.model.sample_posterior(self.theta, self.x, batch, gen)  # type: ignore[attr-defined]

    # -- model terms --------------------------------------------------------------------------
    def log_joint(self, z: Tensor) -> Tensor:
        return self.model.log_joint(self.theta, self.x, z)

    def log_joint_with_grad(self, z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(log_joint(z), weights ↦ weighted_grad_log_joint(z, weights)), sharing the model's forward pass when the
        model has a fused ``log_joint_with_grad(θ, x, z)`` (what ``core.log_joint_with_grad`` looks for)."""
        fused = getattr(self.model, "log_joint_with_grad", None)
        if fused is not None:
            return fused(self.theta, self.x, z)
        return self.log_joint(z), lambda weights: self.weighted_grad_log_joint(z, weights)

    def weighted_grad_log_joint(self, z: Tensor, weights: Tensor) -> Tensor:
        """Σ_{s,n} weights[..., s, n] ∇θ log p(x_n, z[..., s, n]) → [..., P] by vmap(grad) over the batch."""
        fast = getattr(self.model, "weighted_grad_log_joint", None)
        if fast is not None:
            return fast(self.theta, self.x, z, weights)
        shape = torch.broadcast_shapes(z.shape[:-1], weights.shape)
        batch = shape[:-2]
        B = math.prod(batch)
        zb = z.expand(*shape, z.shape[-1]).reshape(B, *shape[-2:], z.shape[-1])
        wb = weights.expand(shape).reshape(B, *shape[-2:])
        model, x = self.model, self.x

        def surrogate(theta: Params, z1: Tensor, w1: Tensor) -> Tensor:
            return (w1 * model.log_joint(theta, x, z1)).sum()

        grads = per_replicate_grad(surrogate, self.theta, zb, wb)
        return self.layout.flatten(grads, batch=(B,)).reshape(*batch, self.layout.size)

    def _x_at(self, points: Tensor, z: Tensor) -> tuple[Tensor, bool]:
        """(x[points] shaped to broadcast against z [R', ..., W, k], whether the model takes batched data)."""
        x = self.x[points]  # [R', W, d]
        if getattr(self.model, "batched_data", False):
            return x.reshape(x.shape[0], *([1] * (z.dim() - 3)), *x.shape[1:]), True
        return x, False

    def log_joint_at(self, z: Tensor, points: Tensor) -> Tensor:
        """log p(x_{points[r, j]}, z[r, ..., j]) for z [R', ..., W, k] and data-point indices points [R', W] → [R', ..., W].

        The log-joint on a per-row subset of the data points (the coupled driver's per-point compaction: only
        chains that have not met are evaluated). Models with ``batched_data = True`` broadcast x [R', 1, W, d]
        themselves; others go through ``torch.func.vmap`` over the rows.
        """
        x, batched = self._x_at(points, z)
        if batched:
            return self.model.log_joint(self.theta, x, z)
        model, theta = self.model, self.theta
        return torch.func.vmap(lambda x1, z1: model.log_joint(theta, x1, z1))(x, z)

    def log_joint_with_grad_at(self, z: Tensor, points: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(:meth:`log_joint_at`, weights ↦ :meth:`weighted_grad_log_joint_at`), sharing the model's forward pass when
        it has a fused ``log_joint_with_grad`` and takes batched data."""
        x, batched = self._x_at(points, z)
        fused = getattr(self.model, "log_joint_with_grad", None)
        if batched and fused is not None:
            return fused(self.theta, x, z)
        return self.log_joint_at(z, points), lambda weights: self.weighted_grad_log_joint_at(z, weights, points)

    def weighted_grad_log_joint_at(self, z: Tensor, weights: Tensor, points: Tensor) -> Tensor:
        """Σ_{s,j} weights[r, s, j] ∇θ log p(x_{points[r, j]}, z[r, s, j]) → [R', P] (see :meth:`log_joint_at`)."""
        x, batched = self._x_at(points, z)
        fast = getattr(self.model, "weighted_grad_log_joint", None)
        if batched and fast is not None:
            return fast(self.theta, x, z, weights)
        model = self.model

        def surrogate(theta: Params, z1: Tensor, w1: Tensor, x1: Tensor) -> Tensor:
            return (w1 * model.log_joint(theta, x1, z1)).sum()

        if batched:  # the vmapped rows see x [1, W, d] (broadcasting) instead of [W, d]
            x = x.reshape(x.shape[0], *x.shape[-2:])
        grads = per_replicate_grad(surrogate, self.theta, z, weights.expand(z.shape[:-1]), x)
        return self.layout.flatten(grads, batch=(z.shape[0],))

    # -- family terms -------------------------------------------------------------------------
    def log_q_score(self, z: Tensor) -> Tensor:
        """Per-sample ∇φ log q_φ(z_n | x_n) at fixed z: [..., N, P_φ] (vmap of grad over samples and points)."""
        batch = z.shape[:-2]
        N, k = z.shape[-2:]
        flat = z.reshape(-1, N, k)
        family, x = self.family, self.x

        def one(phi: Params, z1: Tensor) -> Tensor:  # z1 [N, k] → log q of every point [N]
            return family.log_prob(phi, x, z1.unsqueeze(0)).squeeze(0)

        # the Jacobian of the N per-point log q's (indexing a point with a vmapped index is data-dependent)
        g = torch.func.vmap(torch.func.jacrev(one), in_dims=(None, 0))(self.phi, flat)  # {name: [M, N, *shape]}
        return self.phi_layout.flatten(g, batch=(flat.shape[0], N)).reshape(*batch, N, self.phi_layout.size)

    def mode(self) -> Tensor:
        """The mode of q_φ(z | x_n), [N, k] (families that define ``mode``: the point baseline)."""
        return self.family.mode(self.phi, self.x)  # type: ignore[attr-defined]

    def log_lik(self, z: Tensor) -> Tensor:
        """log p_θ(x_n | z_n) [..., N] (models that define ``log_lik``)."""
        return self.model.log_lik(self.theta, self.x, z)  # type: ignore[attr-defined]

    def kl_prior(self, phi: Params | None = None) -> Tensor:
        """KL(q_φ(·|x_n) ‖ N(0, I)) [N], pure in φ (Gaussian families over a standard-normal prior)."""
        return self.family.kl_standard_normal(self.phi if phi is None else phi, self.x)  # type: ignore[attr-defined]

    def kl_grad_phi(self) -> Tensor:
        """∇φ Σ_n KL(q_φ(·|x_n) ‖ N(0, I)), flattened."""
        g = torch.func.grad(lambda phi: self.kl_prior(phi).sum())(self.phi)
        return self.phi_layout.flatten(g)

    # -- references ---------------------------------------------------------------------------
    def reference(self, wrt: str | Objective = "theta") -> Reference:
        """The reference of an objective, float64 whatever the target's dtype: a builder of a float32 target gets a
        float64 copy of it (the same rounded θ, φ, x), and every tensor of the result is cast to float64."""
        objective = Objective.parse(wrt).canonical()
        if objective.key not in self._references:
            builder = self.reference_builders.get(objective.key) or self.reference_builders.get(
                f"{objective.wrt}_{objective.kind}")
            if builder is None:
                raise ValueError(f"{type(self.model).__name__} target has no reference for {objective.key!r} "
                                 f"(has: {', '.join(self.reference_builders) or 'none'})")
            f64 = lambda p: {k: v.detach().to(torch.float64) for k, v in p.items()}
            at64 = self if self.dtype == torch.float64 else self.at(theta=f64(self.theta), phi=f64(self.phi),
                                                                   x=self.x.to(torch.float64))
            ref = builder(at64, objective)
            self._references[objective.key] = dataclasses.replace(ref, **{
                k: v.to(torch.float64) for k, v in vars(ref).items() if isinstance(v, Tensor) and v.is_floating_point()})
        return self._references[objective.key]

    def exact_grad(self) -> Tensor:
        return self.reference(LOG_MARGINAL).value

    # -- the rare-state guard -----------------------------------------------------------------
    def state_probabilities(self) -> dict[str, Tensor]:
        """Probability of every value of every discrete latent coordinate at every data point, float64, per sampler:
        ``q`` (the family's ``state_probabilities(φ, x)``, or from its ``logits``) and ``posterior`` (the exact
        posterior that ``sample_posterior`` draws from, marginals by enumeration) when the target has them.
        Binary latents give [N, 2k] (P(z_j = 1), P(z_j = 0)); categorical ones [N, k·C]."""
        out: dict[str, Tensor] = {}
        caps, latent = getattr(self.family, "capabilities", ()), self.model.latent
        with torch.no_grad():
            phi = {k: v.double() for k, v in self.phi.items()}
            x = self.x.double()
            if "state_probabilities" in caps:
                out["q"] = self.family.state_probabilities(phi, x).double()  # type: ignore[attr-defined]
            elif "logits" in caps and latent.kind in ("binary", "categorical"):
                ell = self.family.logits(phi, x)  # type: ignore[attr-defined]
                out["q"] = value_probabilities(latent, torch.sigmoid(ell) if latent.kind == "binary"
                                               else torch.softmax(ell.reshape(*ell.shape[:-1], -1, latent.classes), -1)
                                               .reshape(ell.shape))
            if "exact_posterior" in self.capabilities and latent.kind in ("binary", "categorical"):
                from gradbench.references.enumeration import posterior_marginals

                theta = {k: v.double() for k, v in self.theta.items()}
                out["posterior"] = value_probabilities(latent, posterior_marginals(self.model, theta, x))
        return out

    def arrays(self) -> dict[str, Any]:
        """θ and φ by name (``phi.<name>``), the data as ``x``."""
        out: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in self.theta.items()}
        out.update({f"phi.{k}": v.detach().cpu().numpy() for k, v in self.phi.items()})
        out["x"] = self.x.detach().cpu().numpy()
        return out
