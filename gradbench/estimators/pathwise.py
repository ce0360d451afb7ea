"""Pathwise (reparameterised) estimators of encoder gradients ∇φ, for continuous latents.

The encoder is a diagonal Gaussian q_φ(z|x_n) = N(m_n(φ), diag(s(φ)²)), sampled as
z = m + s ⊙ ε with ε ~ N(0, I) drawn as ``randn(R, S, N, k)`` from the generator — the same draw as
``target.sample_proposal((R, S), gen)``, so every estimator on a target sees the same latents
(common random numbers). Write log w = log p(x, z) − log q_φ(z|x).

* ``reparam_elbo`` (Kingma & Welling 2014): ĝ = ∇φ (1/S) Σ_s Σ_n log w(z_sn(φ)) (``kl="mc"``), or
  ∇φ [(1/S) Σ_s Σ_n log p(x_n | z_sn(φ)) − Σ_n KL(q_φ(·|x_n) ‖ p(z))] with the KL analytic
  (``kl="analytic"``). Unbiased for ∇φ ELBO.
* ``stl``, sticking the landing (Roeder, Wu & Duvenaud 2017): as ``reparam_elbo`` (mc) but the
  parameters inside log q are stopped, so only the path through z remains; the dropped term is the
  score, whose expectation is zero. Unbiased for ∇φ ELBO, and zero variance when q = p(z|x).
* ``iwae_reparam`` (Burda et al. 2016): ĝ = ∇φ Σ_n log (1/K Σ_k w_kn(φ)) (``wrt="phi"``), or the
  θ-gradient Σ_n Σ_k w̃_kn ∇θ log p(x_n, z_kn) (``wrt="theta"``: z does not depend on θ, so this is
  the same number as the ``iwae`` estimator under the same generator). Unbiased for ∇ IWAE_K.
* ``dreg``, doubly reparameterised (Tucker, Lawson, Gu & Maddison 2019): the surrogate
  Σ_n Σ_k stop(w̃_kn²) log w_kn(z_kn(φ)) with q's parameters stopped inside log q; its gradient
  Σ_k w̃_k² ∂ log w_k/∂z_k ∂z_k/∂φ is unbiased for ∇φ IWAE_K (K = 1: it is STL).

What each estimates is in ``GradSample.wrt`` (names from :func:`objective_wrt`): ``phi_elbo``,
``phi_iwae<K>`` or ``theta_iwae<K>``; the target's ``reference(wrt)`` knows them.

Per-replicate gradients come from one backward pass: φ is expanded to [R, ...] leaves, replicate r
uses only slice r, so the gradient of the sum of the R objectives is the stack of their gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Protocol

import torch
from torch import Tensor

from gradbench.contracts import Objective
from gradbench.core import GradSample, LatentTarget, ParamLayout
from gradbench.core import per_replicate_grad as per_replicate_grad_func
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    DReGParams,
    IWAEReparamParams,
    ReparamELBOParams,
    STLParams,
)

LOG_2PI = math.log(2 * math.pi)


class EncoderTarget(LatentTarget, Protocol):
    """What encoder-gradient estimators need besides :class:`LatentTarget` (the contract v2 target:
    :class:`gradbench.contracts.ComposedTarget`; PPCA's ``models/ppca_encoder.py`` implements it by hand).

    ``draw_noise`` is the one random draw, ``rsample(φ, noise)`` is deterministic given it (and
    differentiable in φ for ``reparam`` families), ``log_q(φ, z)`` is pure in φ, so per-replicate
    gradients come from ``torch.func.vmap(torch.func.grad(...))`` over the replicates.
    """

    phi_layout: ParamLayout
    x: Tensor  # data [N, d] (input-dependent baselines read it)
    capabilities: frozenset[str]

    @property
    def latent_dim(self) -> int: ...

    def encoder_params(self) -> dict[str, Tensor]: ...

    def draw_noise(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor: ...

    def rsample(self, phi: dict[str, Tensor], noise: Tensor) -> Tensor: ...

    def log_q(self, phi: dict[str, Tensor], z: Tensor) -> Tensor: ...

    def log_proposal(self, z: Tensor) -> Tensor: ...

    def log_q_score(self, z: Tensor) -> Tensor: ...


def objective_wrt(base: Literal["theta", "phi"], objective: Literal["elbo", "iwae"], K: int = 1) -> str:
    """The ``wrt`` key of a gradient: ``phi_elbo``, ``theta_elbo``, ``phi_iwae<K>``, ``theta_iwae<K>``."""
    return Objective(base, "elbo" if objective == "elbo" else "iwae", K if objective == "iwae" else 1).key


def require(target: object, capabilities: set[str], estimator: str) -> None:
    """Refuse a target whose declared capabilities lack what the estimator needs (``validate`` checks this first)."""
    have = getattr(target, "capabilities", frozenset())
    missing = sorted(set(capabilities) - set(have))
    if missing:
        raise TypeError(f"estimator {estimator!r} needs a target whose family provides {', '.join(missing)} "
                        f"({type(target).__name__} provides {', '.join(sorted(have)) or 'nothing'})")


def require_encoder(target: object, estimator: str) -> None:
    require(target, {"reparam"}, estimator)


def _stop(phi: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in phi.items()}


def phi_grads(target: EncoderTarget, objective: Callable[[dict[str, Tensor], Tensor], Tensor], noise: Tensor) -> Tensor:
    """[R, P_φ]: ∇φ objective(φ, noise[r]) for every replicate r (vmap of grad; φ shared, not copied)."""
    g = per_replicate_grad_func(objective, target.encoder_params(), noise)
    return target.phi_layout.flatten(g, batch=(noise.shape[0],)).detach()


def phi_grads_with_weights(target: EncoderTarget, objective: Callable[[dict[str, Tensor], Tensor], tuple[Tensor, Tensor]],
                           noise: Tensor) -> tuple[Tensor, Tensor]:
    """As :func:`phi_grads` for an objective returning ``(value, w̃)``: also the normalised importance weights
    [R, K, N] of the same forward pass (for the ESS diagnostic)."""
    g, w_tilde = per_replicate_grad_func(objective, target.encoder_params(), noise, has_aux=True)
    return target.phi_layout.flatten(g, batch=(noise.shape[0],)).detach(), w_tilde.detach()


# -- helpers (expanded-φ form, used by tests of the PPCA encoder) -------------------------------
def batched_phi(target: EncoderTarget, R: int) -> dict[str, Tensor]:
    """φ expanded to [R, ...] leaf tensors that require grad: one copy per replicate."""
    return {k: v.detach().unsqueeze(0).repeat(R, *([1] * v.ndim)).requires_grad_(True)
            for k, v in target.encoder_params().items()}


def draw_eps(target: EncoderTarget, R: int, S: int, gen: torch.Generator) -> Tensor:
    """ε [R, S, N, k], the same draw as ``target.sample_proposal((R, S), gen)``."""
    return target.draw_noise((R, S), gen)


def reparam(target: EncoderTarget, phi: dict[str, Tensor], eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """z = m + s ⊙ ε for batched φ [R, ...] and ε [R, S, N, k]; also m [R, 1, N, k] and log s [R, 1, 1, k]."""
    mean, log_std = target.encoder_mean_logstd(phi)
    mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
    return mean + torch.exp(log_std) * eps, mean, log_std


def log_normal_diag(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(2 log_std))) summed over the last dimension."""
    u = (z - mean) * torch.exp(-log_std)
    return (-0.5 * u**2 - log_std).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def per_replicate_grad(objective: Tensor, phi: dict[str, Tensor], layout: ParamLayout) -> Tensor:
    """[R, P] gradients of the R per-replicate objectives w.r.t. their own slice of φ."""
    names = list(phi)
    grads = torch.autograd.grad(objective.sum(), [phi[n] for n in names])
    R = objective.shape[0]
    return layout.flatten(dict(zip(names, grads)), batch=(R,)).detach()


def _cost(target: EncoderTarget, R: int, per_replicate: int, like: Tensor) -> Tensor:
    return torch.full((R,), float(per_replicate * target.n_data), dtype=like.dtype, device=like.device)


# -- estimators --------------------------------------------------------------------------------


def reparam_elbo(target: EncoderTarget, R: int, gen: torch.Generator, *, S: int = 1,
                 kl: Literal["mc", "analytic"] = "mc") -> GradSample:
    """Reparameterised ∇φ ELBO with S samples per data point."""
    require(target, {"reparam"} | ({"log_prob"} if kl == "mc" else {"analytic_kl"}), "reparam_elbo")
    noise = target.draw_noise((R, S), gen)

    def elbo_hat(phi: dict[str, Tensor], eps: Tensor) -> Tensor:
        z = target.rsample(phi, eps)  # [S, N, k]
        if kl == "mc":
            return (target.log_joint(z) - target.log_q(phi, z)).sum(-1).mean(0)
        return target.log_lik(z).sum(-1).mean(0) - target.kl_prior(phi).sum(-1)

    grads = phi_grads(target, elbo_hat, noise)
    return GradSample(grads, target.phi_layout, _cost(target, R, S, grads), wrt=objective_wrt("phi", "elbo"))


def stl(target: EncoderTarget, R: int, gen: torch.Generator, *, S: int = 1) -> GradSample:
    """Sticking the landing: ∇φ (1/S) Σ_s Σ_n [log p(x_n, z_sn(φ)) − log q_{stop φ}(z_sn(φ))]."""
    require(target, {"reparam", "log_prob"}, "stl")
    noise = target.draw_noise((R, S), gen)

    def path_only(phi: dict[str, Tensor], eps: Tensor) -> Tensor:
        z = target.rsample(phi, eps)
        return (target.log_joint(z) - target.log_q(_stop(phi), z)).sum(-1).mean(0)

    grads = phi_grads(target, path_only, noise)
    return GradSample(grads, target.phi_layout, _cost(target, R, S, grads), wrt=objective_wrt("phi", "elbo"))


def iwae_reparam(target: EncoderTarget, R: int, gen: torch.Generator, *, K: int = 8,
                 wrt: Literal["phi", "theta"] = "phi") -> GradSample:
    """Gradient of the K-sample IWAE bound Σ_n log (1/K Σ_k w_kn), reparameterised for φ."""
    require(target, {"reparam", "log_prob"} if wrt == "phi" else {"log_prob"}, "iwae_reparam")
    noise = target.draw_noise((R, K), gen)
    if wrt == "theta":
        with torch.no_grad():
            z = target.rsample(target.encoder_params(), noise)
            w_tilde = torch.softmax(target.log_joint(z) - target.log_proposal(z), dim=1)
            grads = target.weighted_grad_log_joint(z, w_tilde)
        layout = target.layout
    else:
        def iwae_bound(phi: dict[str, Tensor], eps: Tensor) -> tuple[Tensor, Tensor]:
            z = target.rsample(phi, eps)
            log_w = target.log_joint(z) - target.log_q(phi, z)  # [K, N]
            return (torch.logsumexp(log_w, dim=0) - math.log(K)).sum(-1), torch.softmax(log_w.detach(), dim=0)

        grads, w_tilde = phi_grads_with_weights(target, iwae_bound, noise)
        layout = target.phi_layout
    ess = 1.0 / (w_tilde**2).sum(1)
    return GradSample(grads, layout, _cost(target, R, K, grads), {"ess_mean": ess.mean(-1)},
                      wrt=objective_wrt(wrt, "iwae", K))


def dreg(target: EncoderTarget, R: int, gen: torch.Generator, *, K: int = 8) -> GradSample:
    """Doubly reparameterised ∇φ IWAE_K: ∇φ Σ_n Σ_k stop(w̃_kn²) log w_kn with q's parameters stopped."""
    require(target, {"reparam", "log_prob"}, "dreg")
    noise = target.draw_noise((R, K), gen)

    def surrogate(phi: dict[str, Tensor], eps: Tensor) -> tuple[Tensor, Tensor]:
        z = target.rsample(phi, eps)
        log_w = target.log_joint(z) - target.log_q(_stop(phi), z)  # [K, N]
        w_tilde = torch.softmax(log_w.detach(), dim=0)
        return (w_tilde**2 * log_w).sum(), w_tilde

    grads, w_tilde = phi_grads_with_weights(target, surrogate, noise)
    ess = 1.0 / (w_tilde**2).sum(1)
    return GradSample(grads, target.phi_layout, _cost(target, R, K, grads), {"ess_mean": ess.mean(-1)},
                      wrt=objective_wrt("phi", "iwae", K))
