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
from typing import Literal, Protocol

import torch
from torch import Tensor

from gradbench.core import GradSample, LatentTarget, ParamLayout
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    DReGParams,
    IWAEReparamParams,
    ReparamELBOParams,
    STLParams,
)

LOG_2PI = math.log(2 * math.pi)


class EncoderTarget(LatentTarget, Protocol):
    """What encoder-gradient estimators need besides :class:`LatentTarget` (see ``models/ppca_encoder.py``)."""

    phi_layout: ParamLayout
    x: Tensor  # data [N, d] (input-dependent baselines read it)

    @property
    def latent_dim(self) -> int: ...

    def encoder_params(self) -> dict[str, Tensor]: ...

    def encoder_mean_logstd(self, phi: dict[str, Tensor]) -> tuple[Tensor, Tensor]: ...

    def log_lik(self, z: Tensor) -> Tensor: ...

    def log_proposal(self, z: Tensor) -> Tensor: ...

    def kl_prior(self, phi: dict[str, Tensor] | None = None) -> Tensor: ...

    def log_q_score(self, z: Tensor) -> Tensor: ...

    def kl_grad_phi(self) -> Tensor: ...


def objective_wrt(base: Literal["theta", "phi"], objective: Literal["elbo", "iwae"], K: int = 1) -> str:
    """The ``wrt`` name of a gradient: ``phi_elbo``, ``theta_elbo``, ``phi_iwae<K>``, ``theta_iwae<K>``."""
    return f"{base}_elbo" if objective == "elbo" else f"{base}_iwae{K}"


def require_encoder(target: object, estimator: str) -> None:
    if not hasattr(target, "encoder_mean_logstd"):
        raise TypeError(f"estimator {estimator!r} needs a target with an encoder q_φ(z|x) (e.g. model 'ppca_encoder'), "
                        f"got {type(target).__name__}")


# -- helpers -----------------------------------------------------------------------------------
def batched_phi(target: EncoderTarget, R: int) -> dict[str, Tensor]:
    """φ expanded to [R, ...] leaf tensors that require grad: one copy per replicate."""
    return {k: v.detach().unsqueeze(0).repeat(R, *([1] * v.ndim)).requires_grad_(True)
            for k, v in target.encoder_params().items()}


def draw_eps(target: EncoderTarget, R: int, S: int, gen: torch.Generator) -> Tensor:
    """ε [R, S, N, k], the same draw as ``target.sample_proposal((R, S), gen)``."""
    ref = target.encoder_params()["c"]
    return torch.randn(R, S, target.n_data, target.latent_dim, generator=gen, dtype=ref.dtype, device=ref.device)


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
    require_encoder(target, "reparam_elbo")
    eps = draw_eps(target, R, S, gen)
    with torch.enable_grad():
        phi = batched_phi(target, R)
        z, mean, log_std = reparam(target, phi, eps)
        if kl == "mc":
            obj = (target.log_joint(z) - log_normal_diag(z, mean, log_std)).sum(-1).mean(1)
        else:
            obj = target.log_lik(z).sum(-1).mean(1) - target.kl_prior(phi).sum(-1)
        grads = per_replicate_grad(obj, phi, target.phi_layout)
    return GradSample(grads, target.phi_layout, _cost(target, R, S, grads), wrt=objective_wrt("phi", "elbo"))


def stl(target: EncoderTarget, R: int, gen: torch.Generator, *, S: int = 1) -> GradSample:
    """Sticking the landing: ∇φ (1/S) Σ_s Σ_n [log p(x_n, z_sn(φ)) − log q_{stop φ}(z_sn(φ))]."""
    require_encoder(target, "stl")
    eps = draw_eps(target, R, S, gen)
    with torch.enable_grad():
        phi = batched_phi(target, R)
        z, mean, log_std = reparam(target, phi, eps)
        obj = (target.log_joint(z) - log_normal_diag(z, mean.detach(), log_std.detach())).sum(-1).mean(1)
        grads = per_replicate_grad(obj, phi, target.phi_layout)
    return GradSample(grads, target.phi_layout, _cost(target, R, S, grads), wrt=objective_wrt("phi", "elbo"))


def iwae_reparam(target: EncoderTarget, R: int, gen: torch.Generator, *, K: int = 8,
                 wrt: Literal["phi", "theta"] = "phi") -> GradSample:
    """Gradient of the K-sample IWAE bound Σ_n log (1/K Σ_k w_kn), reparameterised for φ."""
    require_encoder(target, "iwae_reparam")
    eps = draw_eps(target, R, K, gen)
    if wrt == "theta":
        with torch.no_grad():
            phi = {k: v.unsqueeze(0) for k, v in target.encoder_params().items()}
            z, mean, log_std = reparam(target, phi, eps)
            log_w = target.log_joint(z) - log_normal_diag(z, mean, log_std)
            grads = target.weighted_grad_log_joint(z, torch.softmax(log_w, dim=1))
        layout = target.layout
    else:
        with torch.enable_grad():
            phi = batched_phi(target, R)
            z, mean, log_std = reparam(target, phi, eps)
            log_w = target.log_joint(z) - log_normal_diag(z, mean, log_std)  # [R, K, N]
            obj = (torch.logsumexp(log_w, dim=1) - math.log(K)).sum(-1)
            grads = per_replicate_grad(obj, phi, target.phi_layout)
        layout = target.phi_layout
    ess = 1.0 / (torch.softmax(log_w.detach(), dim=1) ** 2).sum(1)
    return GradSample(grads, layout, _cost(target, R, K, grads), {"ess_mean": ess.mean(-1)},
                      wrt=objective_wrt(wrt, "iwae", K))


def dreg(target: EncoderTarget, R: int, gen: torch.Generator, *, K: int = 8) -> GradSample:
    """Doubly reparameterised ∇φ IWAE_K: ∇φ Σ_n Σ_k stop(w̃_kn²) log w_kn with q's parameters stopped."""
    require_encoder(target, "dreg")
    eps = draw_eps(target, R, K, gen)
    with torch.enable_grad():
        phi = batched_phi(target, R)
        z, mean, log_std = reparam(target, phi, eps)
        log_w = target.log_joint(z) - log_normal_diag(z, mean.detach(), log_std.detach())  # [R, K, N]
        w_tilde = torch.softmax(log_w.detach(), dim=1)
        obj = (w_tilde**2 * log_w).sum(dim=(1, 2))
        grads = per_replicate_grad(obj, phi, target.phi_layout)
    ess = 1.0 / (w_tilde**2).sum(1)
    return GradSample(grads, target.phi_layout, _cost(target, R, K, grads), {"ess_mean": ess.mean(-1)},
                      wrt=objective_wrt("phi", "iwae", K))
