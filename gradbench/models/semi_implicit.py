"""Targets with a semi-implicit q (``gradbench.families.semi_implicit``) and exact ∇φ ELBO references (docs/design.md §5.6).

* ``ppca_semi_implicit``: PPCA's p_θ(x, z) (``PPCAModel``, θ and synthetic data drawn as for ``ppca``) with the
  family started from the exact posterior N(m_n, S); ∇θ log p(x) is PPCA's closed form. With the exact (linear) family, q_n = N(b_n, Σ_n) and
      ELBO(φ) = Σ_n [ −(‖x_n − W b_n − μ‖² + tr(WᵀW Σ_n))/(2σ²) − d log σ − (‖b_n‖² + tr Σ_n)/2
                      + ½ log det Σ_n + k/2 − (d/2) log 2π ],
  so ∇φ ELBO is exact (``torch.func.grad`` of this closed form; tested against finite differences). Also
  exact: ∇φ [ELBO − Σ_n KL(p(z|x_n) ‖ q_n)], the t → ∞ limit of the VCD objective (``phi_vcd_limit``), with
      KL(N(m, S) ‖ N(b, Σ)) = ½ [tr(Σ⁻¹S) + (b − m)ᵀΣ⁻¹(b − m) − k + log det Σ − log det S].
* ``vae_semi_implicit``: the ``vae`` decoder (θ, data as ``vae``) with the family started from the Laplace
  approximation; ∇φ ELBO by adaptive Gauss–Hermite over the exact marginal (latent_dim ≤ 3), error bound in
  ``Reference.error``.

With ``n_atoms = M > 0`` q is an exact Gaussian mixture (linear or MLP T) and ∇φ ELBO comes from Gauss–Hermite on
every component (``quadrature.quadrature_mixture_elbo``, doubling error in ``Reference.error``) on both targets.
With ``hidden > 0`` and Gaussian ε (no exact marginal) no ∇φ ELBO reference is attached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradbench.contracts import ComposedTarget, Objective, Params
from gradbench.core import Reference
from gradbench.families.semi_implicit import SemiImplicitGaussian
from gradbench.models.params import PPCAParams, SemiImplicitProposal, VAEParams
from gradbench.models.ppca import PPCAModel
from gradbench.seeding import derive_seed, make_generator

LOG_2PI = math.log(2 * math.pi)
F64 = torch.float64


def ppca_posterior(theta: Params, x: Tensor) -> tuple[Tensor, Tensor]:
    """PPCA's exact posterior: mean [N, k] and covariance S [k, k] (shared), S = σ² (WᵀW + σ² I)⁻¹."""
    W, mu, sigma = theta["W"], theta["mu"], theta["sigma"].reshape(())
    k = W.shape[1]
    M = W.T @ W + sigma**2 * torch.eye(k, dtype=W.dtype, device=W.device)
    return torch.linalg.solve(M, W.T @ (x - mu).T).T, sigma**2 * torch.linalg.inv(M)


def ppca_elbo(family: SemiImplicitGaussian, theta: Params, x: Tensor, phi: Params) -> Tensor:
    """The closed-form ELBO (module docstring) of PPCA under the exact semi-implicit q, summed over data points."""
    W, mu, sigma = theta["W"], theta["mu"], theta["sigma"].reshape(())
    d, k = W.shape
    b, cov = family.marginal(phi)
    r = x - b @ W.T - mu
    tr_wtw_cov = torch.einsum("ij,nji->n", W.T @ W, cov)
    tr_cov = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    e_log_joint = (-0.5 * ((r * r).sum(-1) + tr_wtw_cov) / sigma**2 - d * torch.log(sigma)
                   - 0.5 * ((b * b).sum(-1) + tr_cov) - 0.5 * (d + k) * LOG_2PI)
    entropy = 0.5 * torch.linalg.slogdet(cov)[1] + 0.5 * k * (1 + LOG_2PI)
    return (e_log_joint + entropy).sum()


def ppca_kl_posterior_to_q(family: SemiImplicitGaussian, theta: Params, x: Tensor, phi: Params) -> Tensor:
    """Σ_n KL(p(z | x_n) ‖ q_φ(z | x_n)) in closed form (module docstring)."""
    m, S = ppca_posterior(theta, x)
    b, cov = family.marginal(phi)
    k = b.shape[-1]
    prec = torch.linalg.inv(cov)
    diff = b - m
    quad = torch.einsum("ni,nij,nj->n", diff, prec, diff)
    tr = torch.einsum("nij,ji->n", prec, S)
    return 0.5 * (tr + quad - k + torch.linalg.slogdet(cov)[1] - torch.linalg.slogdet(S)[1]).sum()


def _phi_gradient(target: ComposedTarget, fn: Any) -> Reference:
    theta = {k: v.detach().to(device="cpu", dtype=F64) for k, v in target.theta.items()}
    phi = {k: v.detach().to(device="cpu", dtype=F64) for k, v in target.phi.items()}
    x = target.x.detach().to(device="cpu", dtype=F64)
    g = torch.func.grad(lambda ph: fn(target.family, theta, x, ph))(phi)
    return Reference(target.phi_layout.flatten(g).to(target.x.device), kind="exact")


def ppca_elbo_reference(target: ComposedTarget, objective: Objective) -> Reference:
    """Exact ∇φ ELBO (closed form)."""
    return _phi_gradient(target, ppca_elbo)


def ppca_vcd_limit_reference(target: ComposedTarget) -> Reference:
    """Exact ∇φ [ELBO − KL(p ‖ q)]: the gradient of −L_VCD as t → ∞ (HMC exactly at the posterior)."""
    return _phi_gradient(target, lambda f, th, x, ph: ppca_elbo(f, th, x, ph) - ppca_kl_posterior_to_q(f, th, x, ph))


def _family(k: int, N: int, proposal: SemiImplicitProposal) -> SemiImplicitGaussian:
    return SemiImplicitGaussian(k, proposal.mixing_dim or k, N, proposal.hidden, proposal.n_atoms, proposal.atom_seed)


def quadrature_phi_elbo(nodes: int | None = None) -> Any:
    """Builder of the quadrature ∇θ/∇φ ELBO reference of a semi-implicit target: Gauss–Hermite over the Gaussian
    marginal (linear T, Gaussian ε) or over every component of the mixture (atoms); ``error`` = doubling change."""
    from gradbench.references import quadrature

    def quad(t: ComposedTarget, o: Objective) -> Reference:
        if t.family.gaussian_marginal:  # type: ignore[attr-defined]
            res = quadrature.quadrature_elbo(t.model, t.family.marginal_view(), t.theta, t.phi, t.x, nodes)  # type: ignore[attr-defined]
        else:
            res = quadrature.quadrature_mixture_elbo(t.model, t.family, t.theta, t.phi, t.x, nodes)
        P = t.model.layout.size
        sl = slice(0, P) if o.wrt == "theta" else slice(P, None)
        return Reference(res.grad[sl].to(t.x.device), kind="quadrature", error=res.grad_error[sl].to(t.x.device))

    return quad


def proposal_nodes(k: int) -> int:
    """Gauss–Hermite nodes per axis (coarse rule; the reference uses twice as many) for a mixture q (64 for k = 2: doubling error ~1e-8)."""
    return {1: 96, 2: 64, 3: 24}.get(k, 24)


def build_ppca(params: PPCAParams, proposal: SemiImplicitProposal, seed: int, dtype: torch.dtype = F64,
               device: str | torch.device = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """``ppca_semi_implicit``: θ and data as ``ppca`` (same seed, same draws); q started at the exact posterior."""
    from gradbench.models.params import ProposalParams
    from gradbench.models.ppca import PPCA

    base = PPCA.synthetic(params, ProposalParams(), seed, F64, "cpu", data)
    theta = {"W": base.W, "mu": base.mu, "sigma": base.sigma.reshape(1)}
    x = base.x
    mean, S = ppca_posterior(theta, x)
    N, k = mean.shape
    family = _family(k, N, proposal)
    chol = torch.linalg.cholesky(S).expand(N, k, k)
    phi = family.init_params(mean, chol, proposal, make_generator(derive_seed(seed, "semi-implicit-family")))
    theta_ref = base.reference("theta")  # exact ∇θ log p(x) (closed form, float64; docs/design.md §5.1)

    def log_marginal(t: ComposedTarget, o: Objective) -> Reference:
        return Reference(theta_ref.value.to(t.x.device), kind="exact")

    builders: dict[str, Any] = {"theta": log_marginal}
    if family.gaussian_marginal:
        builders["phi_elbo"] = ppca_elbo_reference
    elif family.exact:  # atoms: Gaussian mixture, quadrature per component (log p quadratic: exact in it)
        builders["phi_elbo"] = quadrature_phi_elbo(proposal_nodes(k))
    cast = lambda t: t.to(dtype=dtype, device=device)
    return ComposedTarget(PPCAModel(*base.W.shape), family, cast(x), {k_: cast(v) for k_, v in theta.items()},
                          {k_: cast(v) for k_, v in phi.items()}, reference_builders=builders, seed=seed)


def build_vae(params: VAEParams, proposal: SemiImplicitProposal, seed: int, dtype: torch.dtype = F64,
              device: str | torch.device = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """``vae_semi_implicit``: decoder θ and data as ``vae``; q started at the Laplace approximation; quadrature
    ∇φ ELBO over the exact marginal (latent_dim ≤ 3)."""
    from gradbench.models import vae
    from gradbench.references import quadrature

    gen = make_generator(seed)
    if data is not None:
        x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        d = x.shape[1]
    else:
        if params.data_dim is None:
            raise ValueError("vae_semi_implicit: synthetic data need data_dim")
        d = params.data_dim
    model = vae.VAE(params.latent_dim, d, tuple(params.hidden), params.activation, params.likelihood, params.noise_std)
    theta = model.init_params(gen, F64, params.weight_scale, params.bias_scale)
    if data is None:
        x, _ = model.sample_joint(theta, params.n_data, gen)
    lap = quadrature.laplace(model, theta, x)
    N, k = lap.mode.shape
    family = _family(k, N, proposal)
    phi = family.init_params(lap.mode, lap.chol, proposal, make_generator(derive_seed(seed, "semi-implicit-family")))

    quad = quadrature_phi_elbo(params.quadrature_nodes)
    builders = {"phi_elbo": quad, "theta_elbo": quad} if family.exact and k <= quadrature.MAX_QUADRATURE_DIM else {}
    cast = lambda t: t.to(dtype=dtype, device=device)
    return ComposedTarget(model, family, cast(x), {k_: cast(v) for k_, v in theta.items()},
                          {k_: cast(v) for k_, v in phi.items()}, reference_builders=builders, seed=seed)
