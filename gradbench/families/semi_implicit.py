"""Semi-implicit Gaussian family q_φ(z | x_n) = ∫ q(ε) N(z; T_φn(ε), diag d_φn²) dε (docs/design.md §5.6).

Mixing noise ε ~ N(0, I_m); per data point n a linear map, optionally plus a shared tanh MLP,
    T_φn(ε) = A_n ε + b_n [+ V tanh(U ε + c)],     z = T_φn(ε) + d_n ⊙ u,   u ~ N(0, I_k),
φ = (A [N, k, m], b [N, k], log_d [N, k] [, U [h, m], c [h], V [k, h]]). The one random draw (``noise``) is
the concatenation (ε, u) [..., N, m + k], so z is a deterministic, differentiable function of φ and the noise
(capability ``reparam``); the estimators only use the conditional q(z | ε) and ∇_z, ∇_ε of its log density
(capability ``implicit``).

**Exact case** (no MLP, ``hidden = 0``): the marginal is Gaussian,
    q_φ(z | x_n) = N(b_n, Σ_n),  Σ_n = A_n A_nᵀ + D_n,  D_n = diag d_n²,
and the reverse conditional is Gaussian,
    q(ε | z) = N(M_n⁻¹ A_nᵀ D_n⁻¹ (z − b_n), M_n⁻¹),  M_n = I + A_nᵀ D_n⁻¹ A_n,
so ``log_prob`` exists (capability ``log_prob``, used by references and by explicit-q estimators) and
``exact_reverse_sample`` draws from q(ε | z) exactly. :meth:`SemiImplicitGaussian.marginal_view` exposes the
marginal as a location–scale family z = b + chol(Σ) u, which is what the Gauss–Hermite ELBO rule
(``gradbench.references.quadrature.quadrature_elbo``) integrates against.

Starting point (``SemiImplicitProposal``): from a Gaussian approximation N(m*_n, S_n = L_n L_nᵀ) of the
posterior (exact for PPCA, Laplace for the VAE),
    b_n = m*_n + δ L_n 1/√k,   A_n = √s · L_n[:, :m] (zero-padded to m columns) + a_noise · G_n / √m,
    d_n = d0 · (S_n)_jj^{1/2},
with G_n ~ N(0, I) seeded: δ = 0, s = 1 − d0², m ≥ k and a_noise = 0 is close to exact (Σ_n = (1−d0²) S_n + D_n).

**Atoms** (``n_atoms = M > 0``): ε is uniform over M fixed atoms ε_1..ε_M ~ N(0, I_m) (drawn once from
``atom_seed``; not parameters). Then q is an exact Gaussian mixture, with a linear or an MLP T,
    q_φ(z | x_n) = (1/M) Σ_j N(z; T_φn(ε_j), D_n),
    log q_φ(z) = logsumexp_j log N(z; T_φn(ε_j), D_n) − log M,
and the reverse conditional is the discrete posterior over atoms q(j | z) = softmax_j log N(z; T_φn(ε_j), D_n),
so ``log_prob``, ``grad_log_prob_z`` (= Σ_j q(j|z) (T(ε_j) − z)/d²) and ``exact_reverse_sample`` are exact.
The noise is still (ε, u) with ε the chosen atom, so every estimator sees the same draw. There is no density
on ℝᵐ for ε (``log_mixing`` raises): HMC on q(ε | z) is not defined, use the exact discrete reverse.

References: Yin & Zhou (2018), "Semi-implicit variational inference", ICML; Titsias & Ruiz (2019),
"Unbiased implicit variational inference", AISTATS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradbench.contracts import LatentSpace, Params
from gradbench.core import ParamGroup, ParamLayout
from gradbench.models.params import SemiImplicitProposal

LOG_2PI = math.log(2 * math.pi)


@dataclass
class SemiImplicitGaussian:
    """ε ~ N(0, I_m) (or uniform over ``n_atoms`` atoms), z | ε ~ N(A_n ε + b_n [+ MLP(ε)], diag d_n²) per n."""

    latent_dim: int
    mixing_dim: int
    n_data: int
    hidden: int = 0
    n_atoms: int = 0
    atom_seed: int = 0
    latent: LatentSpace = field(init=False)
    layout: ParamLayout = field(init=False)
    capabilities: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        k, m, N, h = self.latent_dim, self.mixing_dim, self.n_data, self.hidden
        self.latent = LatentSpace("real", k)
        groups = [ParamGroup("A", (N, k, m)), ParamGroup("b", (N, k)), ParamGroup("log_d", (N, k))]
        if h > 0:
            groups += [ParamGroup("U", (h, m)), ParamGroup("c", (h,)), ParamGroup("V", (k, h))]
        self.layout = ParamLayout(tuple(groups))
        self.atoms: Tensor | None = None  # [M, m] float64, fixed
        if self.n_atoms > 0:
            gen = torch.Generator().manual_seed(self.atom_seed)
            self.atoms = torch.randn(self.n_atoms, m, generator=gen, dtype=torch.float64)
        self.capabilities = frozenset({"reparam", "implicit"} | ({"log_prob"} if self.exact else set())
                                      | ({"mixing_density"} if self.n_atoms == 0 else set()))

    @property
    def exact(self) -> bool:
        """log q exact: linear T with Gaussian mixing (Gaussian marginal) or atoms (Gaussian mixture)."""
        return self.gaussian_marginal or self.n_atoms > 0

    @property
    def gaussian_marginal(self) -> bool:
        """Linear T with Gaussian mixing: closed-form Gaussian marginal and Gaussian reverse conditional."""
        return self.hidden == 0 and self.n_atoms == 0

    def _atoms(self, like: Tensor) -> Tensor:
        assert self.atoms is not None
        return self.atoms.to(dtype=like.dtype, device=like.device)

    # -- the one random draw and the conditional -----------------------------------------------------
    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        """(ε, u) concatenated: [*shape, m + k]; u standard normal, ε standard normal or a uniformly chosen atom."""
        if self.n_atoms == 0:
            return torch.randn(*shape, self.mixing_dim + self.latent_dim, generator=gen, dtype=dtype, device=device)
        eps = self.mixing_noise(shape, gen, dtype, device)
        return torch.cat([eps, torch.randn(*shape, self.latent_dim, generator=gen, dtype=dtype, device=device)], -1)

    def split(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        return noise[..., : self.mixing_dim], noise[..., self.mixing_dim:]

    def mixing_noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        """ε ~ q(ε) = N(0, I_m) or uniform over the atoms, [*shape, m]."""
        if self.n_atoms == 0:
            return torch.randn(*shape, self.mixing_dim, generator=gen, dtype=dtype, device=device)
        index = torch.randint(self.n_atoms, shape, generator=gen, device=device)
        return self._atoms(torch.empty(0, dtype=dtype, device=device))[index]

    def transform(self, phi: Params, eps: Tensor) -> Tensor:
        """T_φn(ε) [..., N, k] for ε [..., N, m]."""
        out = torch.einsum("nkm,...nm->...nk", phi["A"], eps) + phi["b"]
        if self.hidden > 0:
            out = out + torch.tanh(eps @ phi["U"].T + phi["c"]) @ phi["V"].T
        return out

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        eps, u = self.split(noise)
        return self.transform(phi, eps) + torch.exp(phi["log_d"]) * u

    def log_conditional(self, phi: Params, z: Tensor, eps: Tensor) -> Tensor:
        """log q_φ(z | ε) = Σ_j log N(z_j; T_j(ε), d_j²), [..., N]."""
        r = (z - self.transform(phi, eps)) * torch.exp(-phi["log_d"])
        return -0.5 * (r * r).sum(-1) - phi["log_d"].sum(-1) - 0.5 * self.latent_dim * LOG_2PI

    def log_mixing(self, eps: Tensor) -> Tensor:
        """log q(ε) = log N(ε; 0, I_m), [...] (Gaussian mixing only: atoms have no density on ℝᵐ)."""
        if self.n_atoms > 0:
            raise TypeError("semi_implicit: ε uniform over atoms has no density on ℝᵐ (no HMC on q(ε | z); "
                            "use the exact discrete reverse conditional)")
        return -0.5 * (eps * eps).sum(-1) - 0.5 * self.mixing_dim * LOG_2PI

    # -- the exact case ---------------------------------------------------------------------------------
    def _require_exact(self, what: str) -> None:
        if not self.gaussian_marginal:
            raise TypeError(f"semi_implicit: {what} is only available for the Gaussian-marginal family "
                            "(linear T, hidden = 0, Gaussian ε)")

    def _require_log_prob(self, what: str) -> None:
        if not self.exact:
            raise TypeError(f"semi_implicit: {what} needs an exact family (linear T with Gaussian ε, or atoms)")

    def atom_log_conditionals(self, phi: Params, z: Tensor) -> Tensor:
        """log q_φ(z | ε_j) for every atom j, [..., N, M] (atoms)."""
        eps = self._atoms(z).view(self.n_atoms, *([1] * (z.dim() - 1)), self.mixing_dim)
        eps = eps.expand(self.n_atoms, *z.shape[:-1], self.mixing_dim)
        return self.log_conditional(phi, z.unsqueeze(0), eps).movedim(0, -1)

    def marginal(self, phi: Params) -> tuple[Tensor, Tensor]:
        """(b [N, k], Σ = A Aᵀ + D [N, k, k]) of the exact Gaussian marginal."""
        self._require_exact("the marginal")
        A = phi["A"]
        return phi["b"], A @ A.transpose(-1, -2) + torch.diag_embed(torch.exp(2 * phi["log_d"]))

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        """log N(z; b_n, Σ_n) [..., N] (Gaussian marginal), or the mixture's logsumexp_j log q(z | ε_j) − log M."""
        self._require_log_prob("log q")
        if self.n_atoms > 0:
            return torch.logsumexp(self.atom_log_conditionals(phi, z), dim=-1) - math.log(self.n_atoms)
        b, cov = self.marginal(phi)
        L = torch.linalg.cholesky(cov)
        r = torch.linalg.solve_triangular(L, (z - b).unsqueeze(-1), upper=False).squeeze(-1)
        logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * (r * r).sum(-1) - logdet - 0.5 * self.latent_dim * LOG_2PI

    def grad_log_prob_z(self, phi: Params, z: Tensor) -> Tensor:
        """∇_z log q_φ(z) = −Σ⁻¹ (z − b) [..., N, k], or Σ_j q(j | z) (T(ε_j) − z)/d² with atoms."""
        self._require_log_prob("∇_z log q")
        if self.n_atoms > 0:
            resp = torch.softmax(self.atom_log_conditionals(phi, z), dim=-1)  # [..., N, M]
            means = self.transform(phi, self._atoms(z)[:, None, :].expand(self.n_atoms, self.n_data, -1))  # [M, N, k]
            return (torch.einsum("...nj,jnk->...nk", resp, means) - z) * torch.exp(-2 * phi["log_d"])
        b, cov = self.marginal(phi)
        return -torch.linalg.solve(cov, (z - b).unsqueeze(-1)).squeeze(-1)

    def reverse_conditional(self, phi: Params, z: Tensor) -> tuple[Tensor, Tensor]:
        """q(ε | z) = N(mean [..., N, m], M⁻¹ = C Cᵀ, C [N, m, m]) with M = I + Aᵀ D⁻¹ A (exact case)."""
        self._require_exact("the reverse conditional")
        A, b = phi["A"], phi["b"]
        AtDinv = A.transpose(-1, -2) * torch.exp(-2 * phi["log_d"]).unsqueeze(-2)  # [N, m, k]
        M = torch.eye(self.mixing_dim, dtype=A.dtype, device=A.device) + AtDinv @ A
        cov = torch.linalg.inv(M)
        mean = torch.einsum("nij,njk,...nk->...ni", cov, AtDinv, z - b)
        return mean, torch.linalg.cholesky(cov)

    def exact_reverse_sample(self, phi: Params, z: Tensor, gen: torch.Generator) -> Tensor:
        """ε′ ~ q(ε | z) exactly, [..., N, m]: Gaussian, or an atom j ~ q(j | z) (inverse CDF of the softmax)."""
        self._require_log_prob("the exact reverse conditional")
        if self.n_atoms > 0:
            cdf = torch.softmax(self.atom_log_conditionals(phi, z), dim=-1).cumsum(-1)
            u = torch.rand(cdf.shape[:-1], generator=gen, dtype=cdf.dtype, device=cdf.device).unsqueeze(-1)
            index = (cdf < u).sum(-1).clamp(max=self.n_atoms - 1)
            return self._atoms(z)[index]
        mean, C = self.reverse_conditional(phi, z)
        w = torch.randn(mean.shape, generator=gen, dtype=mean.dtype, device=mean.device)
        return mean + torch.einsum("nij,...nj->...ni", C, w)

    def marginal_view(self) -> GaussianMarginalView:
        self._require_exact("the marginal view")
        return GaussianMarginalView(self)

    def mode(self, phi: Params, x: Tensor) -> Tensor:
        self._require_exact("the mode")
        return phi["b"]

    def init_params(self, mean: Tensor, chol: Tensor, proposal: SemiImplicitProposal, gen: torch.Generator) -> Params:
        """φ at the starting point of the module docstring from a Gaussian N(mean_n, chol_n chol_nᵀ) (float64)."""
        N, k = mean.shape
        m, f64 = self.mixing_dim, torch.float64
        mean, chol = mean.to(f64), chol.to(f64)
        b = mean + proposal.mean_shift * chol.sum(-1) / math.sqrt(k)
        A = torch.zeros(N, k, m, dtype=f64)
        cols = min(k, m)
        A[..., :cols] = math.sqrt(proposal.cov_scale) * chol[..., :cols]
        A = A + proposal.a_noise * torch.randn(N, k, m, generator=gen, dtype=f64) / math.sqrt(m)
        std = torch.sqrt(torch.diagonal(chol @ chol.transpose(-1, -2), dim1=-2, dim2=-1))
        phi: Params = {"A": A, "b": b, "log_d": torch.log(proposal.diag_scale * std)}
        if self.hidden > 0:
            h = self.hidden
            phi["U"] = torch.randn(h, m, generator=gen, dtype=f64) / math.sqrt(m)
            phi["c"] = torch.zeros(h, dtype=f64)
            phi["V"] = proposal.mlp_scale * torch.randn(k, h, generator=gen, dtype=f64) / math.sqrt(h)
        return phi


@dataclass
class GaussianMarginalView:
    """The exact marginal N(b_n, Σ_n) of a linear :class:`SemiImplicitGaussian` as a location–scale family with
    the same φ: ``sample(φ, x, u) = b + chol(Σ) u`` (u ~ N(0, I_k)), ``log_prob`` = the marginal's. Quadrature
    rules that integrate over q's own nodes (``quadrature.elbo_rule``) take it as the family."""

    base: SemiImplicitGaussian

    @property
    def latent(self) -> LatentSpace:
        return self.base.latent

    @property
    def layout(self) -> ParamLayout:
        return self.base.layout

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        return torch.randn(*shape, self.base.latent_dim, generator=gen, dtype=dtype, device=device)

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        b, cov = self.base.marginal(phi)
        return b + torch.einsum("nij,...nj->...ni", torch.linalg.cholesky(cov), noise)

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        return self.base.log_prob(phi, x, z)
