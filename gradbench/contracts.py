"""The contract between models, variational families, references and estimators (docs/design.md §3).

Every new p and every new q is one file that satisfies one of the two protocols below; generic code
composes them into a :class:`ComposedTarget`, the point (θ, φ, data) at which gradients are measured.

* :class:`Model` p_θ(x, z) — a latent space (:class:`LatentSpace`), θ as named tensors
  (:class:`~gradbench.core.ParamLayout`), ``log_joint(θ, x, z)`` *pure in θ* (so that
  ``torch.func.vmap(torch.func.grad(...))`` gives per-replicate gradients) and ``sample_joint``.
* :class:`Family` q_φ(z | x) — declares its :data:`Capability` set; the one random draw goes through
  ``noise(shape, gen)`` and ``sample(φ, x, noise)`` is a deterministic function of it, so common random
  numbers across estimators are a property of the contract, not of draw order.
* :class:`Objective` — what an estimator estimates: ∇θ log p(x), ∇θ/∇φ ELBO, ∇θ/∇φ IWAE_K (typed;
  ``key`` is only its name in tables and caches).
* :class:`Target` — every member an estimator, protocol or reference calls, with shapes and dtype rules;
  :class:`~gradbench.target.ComposedTarget` (``gradbench/target.py``) is the generic composition of a model and a
  family into it, with per-replicate gradients from torch.func.
* Capabilities (:data:`Capability`) are declared by families, models and hand-written targets, never inferred
  from the methods they happen to have; ``gradbench validate`` checks them, ``gradbench.testing`` checks that the
  declared ones are really there.
* References (``gradbench.references``) — exact | enumerated | quadrature (with an error bound) |
  estimated (with covariance, cached per target and objective).
* Estimators declare the objective they estimate and the capabilities they require
  (``gradbench.registry.Estimator``); ``gradbench validate`` checks them before any cell runs.

Hand-written targets (PPCA with its closed-form fused gradient) implement the same target interface
directly: generic estimators only call the methods of :class:`ComposedTarget`, and a target may
override any of them with a fast path.

Shapes: data x [N, d]; latents z [..., N, k] (one latent per data point, binary latents stored as
0/1 floats); log-densities [..., N]; gradients are sums over the N data points.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contract itself imports no torch: `gradbench list`/`validate` stay fast
    import torch
    from torch import Tensor

    from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference, per_replicate_grad

__all__ = [  # noqa: F822 — some names are provided lazily by __getattr__ (ComposedTarget by name only)
    "CAPABILITIES", "Capability", "ComposedTarget", "Family", "GradSample", "LatentSpace", "Model", "Objective",
    "ParamGroup", "ParamLayout", "Params", "Reference", "Target", "missing_capabilities", "per_replicate_grad",
]

Params = dict[str, "Tensor"]

_LAZY = {"GradSample": "gradbench.core", "ParamGroup": "gradbench.core", "ParamLayout": "gradbench.core",
         "Reference": "gradbench.core", "per_replicate_grad": "gradbench.core",
         "ComposedTarget": "gradbench.target"}  # by name only: the contract sits below the composition that implements it


def __getattr__(name: str) -> Any:
    """The currency (``GradSample``, ``ParamLayout``, ``Reference``) and the generic composition
    (``ComposedTarget``, ``per_replicate_grad``) are re-exported here, imported on first use (they need torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradbench.contracts' has no attribute {name!r}")

Capability = Literal[
    "reparam",  # z = sample(φ, x, noise) is differentiable in φ (pathwise estimators)
    "score",  # ∇φ log q_φ(z|x) at fixed z (score-function estimators)
    "log_prob",  # log q_φ(z|x) evaluable (importance weights)
    "enumerate",  # finite latent space whose states can be listed (enumerated references)
    "relaxed",  # a continuous relaxation of a discrete q (Concrete / Gumbel-softmax)
    "implicit",  # log q is not used by the estimators (semi-implicit families)
    "mixing_density",  # a semi-implicit q whose mixing ε has a continuous, evaluable density log q(ε) (HMC over ε)
    "analytic_kl",  # KL(q_φ(·|x) ‖ p(z)) in closed form and log p(x | z) (analytic-KL REINFORCE / reparam)
    "exact_posterior",  # (of a target) exact samples from p_θ(z | x)
    "energy_based",  # (of a target) p_θ(x) ∝ exp(−F_θ(x)) with enumerable normaliser and Gibbs kernels (no q)
    "real_latent",  # (of a target) z ∈ ℝᵏ
    "binary_latent",  # (of a target) z ∈ {0,1}ᵏ
    "categorical_latent",  # (of a target) z ∈ {0..C−1}ᵏ, stored one-hot flattened [..., N, k·C]
    "logits",  # (of a family) ``logits(φ, x)`` [N, D]: binary q(z_j = 1) = σ(ℓ_j); categorical q(z_j) = softmax(ℓ_j)
    "gumbel_noise",  # (of a family) noise u ~ U(0,1)^{[..., N, D]} and sample = 1[u < σ(ℓ)] (binary) or
    #                  onehot(argmax(ℓ − log(−log u))) (categorical): estimators that transform u themselves need it
    "iwae_reference",  # (of a target) references for the θ/φ IWAE_K objectives (``reference("phi_iwae8")``)
    "state_probabilities",  # (of a target) ``state_probabilities()``: what the rare-state guard checks
]
CAPABILITIES: frozenset[str] = frozenset(Capability.__args__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LatentSpace:
    """ℝᵏ (``real``), {0,1}ᵏ (``binary``), {0..C−1}ᵏ (``categorical``, stored one-hot and flattened: z [..., N, k·C],
    latent j in columns j·C .. j·C + C − 1) or none."""

    kind: Literal["real", "binary", "categorical", "none"]
    dim: int = 0
    classes: int | None = None

    @property
    def capability(self) -> str | None:
        return {"real": "real_latent", "binary": "binary_latent", "categorical": "categorical_latent"}.get(self.kind)

    def n_states(self) -> int | None:
        """Number of latent states of one data point (None for ℝᵏ)."""
        if self.kind == "binary":
            return 2**self.dim
        if self.kind == "categorical":
            return (self.classes or 0) ** self.dim
        return None

    def states(self, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Tensor:
        """All 2ᵏ binary states as a [2ᵏ, k] 0/1 tensor (state i is the binary expansion of i, bit 0 first)."""
        import torch

        dtype = dtype or torch.float64
        if self.kind != "binary":
            raise ValueError(f"cannot enumerate a {self.kind} latent space")
        idx = torch.arange(2**self.dim, device=device)
        return ((idx.unsqueeze(-1) >> torch.arange(self.dim, device=device)) & 1).to(dtype)


@dataclass(frozen=True)
class Objective:
    """What a gradient estimator estimates.

    ``wrt``: θ (model) or φ (variational family); ``kind``: ``log_marginal`` (∇θ log p(x), the K → ∞
    limit of IWAE_K), ``elbo``, or ``iwae`` (the K-sample bound E log (1/K Σ_k w_k); K = 1 is the ELBO).
    ``key`` is the name used in tables, caches and ``GradSample.wrt``: ``theta``, ``theta_elbo``,
    ``phi_elbo``, ``theta_iwae8``, ``phi_iwae8``.
    """

    wrt: Literal["theta", "phi"]
    kind: Literal["log_marginal", "elbo", "iwae"]
    K: int = 1

    def __post_init__(self) -> None:
        if self.kind == "log_marginal" and self.wrt != "theta":
            raise ValueError("log p(x) does not depend on φ: its objective is w.r.t. theta")
        if self.K < 1 or (self.kind != "iwae" and self.K != 1):
            raise ValueError(f"K = {self.K} is not valid for a {self.kind} objective")

    @property
    def key(self) -> str:
        if self.kind == "log_marginal":
            return "theta"
        return f"{self.wrt}_elbo" if self.kind == "elbo" else f"{self.wrt}_iwae{self.K}"

    def canonical(self) -> Objective:
        """IWAE_1 is the ELBO."""
        return Objective(self.wrt, "elbo") if self.kind == "iwae" and self.K == 1 else self

    @staticmethod
    def parse(key: str | Objective) -> Objective:
        if isinstance(key, Objective):
            return key
        if key == "theta":
            return LOG_MARGINAL
        if key == "phi":  # historical alias
            return Objective("phi", "elbo")
        m = re.fullmatch(r"(theta|phi)_(elbo|iwae(\d+))", key)
        if m is None:
            raise ValueError(f"unknown objective {key!r} (known: theta, theta_elbo, phi_elbo, theta_iwae<K>, phi_iwae<K>)")
        wrt = m.group(1)
        return Objective(wrt, "elbo") if m.group(2) == "elbo" else Objective(wrt, "iwae", int(m.group(3)))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.key


LOG_MARGINAL = Objective("theta", "log_marginal")


@runtime_checkable
class Model(Protocol):
    """p_θ(x, z). ``log_joint`` is pure in θ: no cached θ-dependent state, so torch.func can differentiate it."""

    latent: LatentSpace
    layout: ParamLayout  # θ

    def init_params(self, gen: torch.Generator, dtype: torch.dtype) -> Params: ...

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n, z_n) for z [..., N, k] → [..., N]."""
        ...

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x [n, d], z [n, k]) ~ p_θ."""
        ...


@runtime_checkable
class Family(Protocol):
    """q_φ(z | x) with declared capabilities; ``sample`` is a deterministic function of ``noise``.

    Optional members, each present exactly when its capability is declared (``CAPABILITY_MEMBERS``):
    ``logits(φ, x) → [N, D]`` (``logits``: binary q(z_j = 1) = σ(ℓ_j), categorical q(z_j = c) = softmax(ℓ_j)_c, the
    same q as ``log_prob``); ``kl_standard_normal(φ, x) → [N]`` (``analytic_kl``); ``log_mixing(ε)``
    (``mixing_density``); ``state_probabilities(φ, x) → [N, M]`` float64, the probability of every value of every
    coordinate (``state_probabilities``; derived from ``logits`` when absent). ``mode(φ, x) → [N, D]`` is used by the
    ``point`` baseline when defined. With ``gumbel_noise``, ``noise`` is uniforms [..., N, D] and ``sample`` is
    1[u < σ(ℓ)] (binary) or onehot(argmax(ℓ − log(−log u))) (categorical).
    """

    latent: LatentSpace
    layout: ParamLayout  # φ
    capabilities: frozenset[str]

    def init_params(self, x: Tensor, gen: torch.Generator, dtype: torch.dtype) -> Params: ...

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        """The one random draw behind ``sample``: shape ``[*shape, N, ...]`` (``shape`` ends with N)."""
        ...

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        """z [..., N, k] from noise; differentiable in φ when the family has ``reparam``."""
        ...

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        """log q_φ(z_n | x_n), [..., N] (families with ``log_prob``)."""
        ...


@runtime_checkable
class Target(Protocol):
    """The point (θ, φ, data x) at which gradients are measured: every member an estimator, protocol or reference calls.

    :class:`~gradbench.target.ComposedTarget` implements all of it from a :class:`Model` and a :class:`Family`; a
    hand-written target (PPCA) implements it directly. Members marked *(capability c)* are called only by
    estimators that require ``c``, which the target must then declare in ``capabilities`` (checked by
    ``gradbench validate`` from the registry's ``provides``, and by :func:`gradbench.testing.check_model` on the
    built target).

    Shapes: N data points, latent width D (k real/binary latents; k·C one-hot columns for categorical ones),
    P = ``layout.size`` θ-coordinates, P_φ = ``phi_layout.size``; ``batch`` is any tuple of leading dimensions.
    Dtypes: every tensor a target returns has the target's ``dtype`` (float64 or float32) and lives on ``x``'s
    device, except :meth:`reference`, which is float64 whatever the run's dtype (the gradient of *these* rounded
    parameters, computed in float64).
    """

    capabilities: frozenset[str]  # declared, never inferred (see CAPABILITIES)
    layout: ParamLayout  # θ
    phi_layout: ParamLayout  # φ
    x: Tensor  # data [N, d]
    theta: Params
    phi: Params
    seed: int
    model: Model
    family: Family

    @property
    def n_data(self) -> int: ...

    @property
    def latent_dim(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def parameters(self) -> Params:
        """θ by name."""
        ...

    def encoder_params(self) -> Params:
        """φ by name."""
        ...

    def at(self, *, theta: Params | None = None, phi: Params | None = None, x: Tensor | None = None) -> Target:
        """The same target at new (θ, φ, x) (training loops); references are not carried over."""
        ...

    # the one random draw and q
    def draw_noise(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """The family's noise for ``batch`` replicates: [*batch, N, ...] (e.g. N(0, I) for a Gaussian, uniforms for a
        discrete family); the only randomness of a draw from q."""
        ...

    def rsample(self, phi: Params, noise: Tensor) -> Tensor:
        """z [*batch, N, D] = the family's ``sample(φ, x, noise)``: deterministic in the noise (same noise → same z);
        differentiable in φ with ``reparam``."""
        ...

    def log_q(self, phi: Params, z: Tensor) -> Tensor:
        """log q_φ(z_n | x_n) [*batch, N], pure in φ *(capability log_prob)*."""
        ...

    def sample_proposal(self, batch: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(z ~ q_φ [*batch, N, D], log q_φ(z) [*batch, N]) at the target's φ."""
        ...

    def log_proposal(self, z: Tensor) -> Tensor:
        """log q_φ(z) [*batch, N] at the target's φ."""
        ...

    def log_q_score(self, z: Tensor) -> Tensor:
        """∇φ log q_φ(z_n | x_n) at fixed z: [*batch, N, P_φ] *(capability score)*."""
        ...

    def mode(self) -> Tensor:
        """The mode of q_φ(·|x_n) [N, D] (the ``point`` baseline; families that define ``mode``)."""
        ...

    def kl_prior(self, phi: Params | None = None) -> Tensor:
        """KL(q_φ(·|x_n) ‖ N(0, I)) [N], pure in φ *(capability analytic_kl)*."""
        ...

    def kl_grad_phi(self) -> Tensor:
        """∇φ Σ_n KL(q_φ(·|x_n) ‖ N(0, I)) [P_φ] *(capability analytic_kl)*."""
        ...

    # the model
    def log_joint(self, z: Tensor) -> Tensor:
        """log p_θ(x_n, z_n) [*batch, N] for z [*batch, N, D]."""
        ...

    def log_lik(self, z: Tensor) -> Tensor:
        """log p_θ(x_n | z_n) [*batch, N] *(capability analytic_kl)*."""
        ...

    def weighted_grad_log_joint(self, z: Tensor, weights: Tensor) -> Tensor:
        """Σ_{s,n} w[..., s, n] ∇θ log p_θ(x_n, z[..., s, n]) → [..., P] (``weights`` broadcasts against z[..., 0])."""
        ...

    def log_joint_at(self, z: Tensor, points: Tensor) -> Tensor:
        """log p(x_{points[r, j]}, z[r, ..., j]) for z [R', ..., W, D], points [R', W] → [R', ..., W] (coupled chains)."""
        ...

    def log_joint_with_grad_at(self, z: Tensor, points: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(:meth:`log_joint_at`, weights ↦ :meth:`weighted_grad_log_joint_at`) sharing one forward pass."""
        ...

    def weighted_grad_log_joint_at(self, z: Tensor, weights: Tensor, points: Tensor) -> Tensor:
        """Σ_{s,j} w[r, s, j] ∇θ log p(x_{points[r, j]}, z[r, s, j]) → [R', P]."""
        ...

    def sample_posterior(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Exact draws z ~ p_θ(z | x_n), [*batch, N, D] *(capability exact_posterior)*."""
        ...

    # references and the rare-state guard
    def reference(self, wrt: str | Objective = "theta") -> Reference:
        """The reference gradient of an objective (``theta``, ``phi_elbo``, ``phi_iwae8`` …), float64, cached;
        IWAE objectives *(capability iwae_reference)*. ValueError when the target has none for ``wrt``."""
        ...

    def exact_grad(self) -> Tensor:
        """``reference("theta").value``."""
        ...

    def state_probabilities(self) -> dict[str, Tensor]:
        """*(capability state_probabilities)* For each sampler a verdict depends on (``"q"``: the proposal;
        ``"posterior"``: the exact posterior ``sample_posterior`` draws from, when there is one), the probability of
        every value of every discrete coordinate at every data point, float64 (e.g. [N, D]: q(z_j = c | x_n)).
        The rare-state guard (:func:`gradbench.protocols.measure.rare_value_probability`) takes the smallest."""
        ...


CAPABILITY_MEMBERS: dict[str, tuple[tuple[str, str], ...]] = {
    # capability → (object, member) that must exist when the capability is declared ("family" or "target")
    "log_prob": (("family", "log_prob"),),
    "logits": (("family", "logits"),),
    "analytic_kl": (("family", "kl_standard_normal"), ("model", "log_lik")),
    "exact_posterior": (("target", "sample_posterior"),),
    "mixing_density": (("family", "log_mixing"),),
    "state_probabilities": (("target", "state_probabilities"),),
}


def missing_capabilities(requires: frozenset[str], provides: frozenset[str]) -> list[str]:
    return sorted(requires - provides)
