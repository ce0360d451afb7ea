"""Probabilistic PCA: the target with closed-form log-likelihood gradients.

Model (DESIGN §2): z ~ N(0, I_k), x | z ~ N(W z + μ, σ² I_d), θ = (W, μ, σ). We store and
differentiate with respect to σ itself (not log σ). Data x has N rows; the log-likelihood and
all gradients are *sums* over the N data points.

* Marginal: x ~ N(μ, C), C = W Wᵀ + σ² I. With r_n = x_n − μ and G_C = ½ Σ_n (C⁻¹ r_n r_nᵀ C⁻¹ − C⁻¹):
  ∇_W = 2 G_C W, ∇_μ = Σ_n C⁻¹ r_n, ∇_σ = 2σ tr(G_C).
* Posterior: z | x ~ N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹), M = Wᵀ W + σ² I.
* Complete-data gradient, e = x − W z − μ: ∇_W = e zᵀ/σ², ∇_μ = e/σ², ∇_σ = ‖e‖²/σ³ − d/σ.
* Proposal with controlled mismatch (δ = mean_shift, s = cov_scale), with L = chol(σ² M⁻¹):
  q(z | x_n) = N(m_n + δ L 1/√k, s L Lᵀ). The shift has Mahalanobis length exactly δ under the
  posterior, so δ is comparable across dimensions; δ = 0, s = 1 is the exact posterior.

Reference: Tipping & Bishop (1999), "Probabilistic principal component analysis", JRSS B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from gradbench.core import ParamGroup, ParamLayout, Reference
from gradbench.seeding import make_generator

LOG_2PI = math.log(2 * math.pi)


class PPCAParams(BaseModel):
    """Suite parameters of a synthetic PPCA target."""

    model_config = ConfigDict(extra="forbid", strict=True)
    data_dim: int = Field(gt=0, description="d, dimension of x")
    latent_dim: int = Field(gt=0, description="k, dimension of z")
    n_data: int = Field(1, gt=0, description="N, number of data points (gradients are sums over them)")
    noise_std: float = Field(1.0, gt=0, description="σ, observation noise standard deviation")
    weight_scale: float = Field(1.0, gt=0, description="entries of W are N(0, weight_scale²)")


class ProposalParams(BaseModel):
    """Mismatch of the proposal q(z|x) relative to the exact posterior."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mean_shift: float = Field(0.0, ge=0, description="δ, Mahalanobis length of the mean shift")
    cov_scale: float = Field(1.0, gt=0, description="s, multiplies the posterior covariance")


@dataclass
class PPCA:
    """A PPCA model at parameters θ = (W, μ, σ), a data set x [N, d] and a proposal."""

    W: Tensor
    mu: Tensor
    sigma: Tensor
    x: Tensor
    mean_shift: float = 0.0
    cov_scale: float = 1.0

    def __post_init__(self) -> None:
        d, k = self.W.shape
        if self.x.ndim != 2 or self.x.shape[1] != d:
            raise ValueError(f"data must have shape [N, {d}], got {tuple(self.x.shape)}")
        self.sigma = torch.as_tensor(self.sigma, dtype=self.W.dtype, device=self.W.device).reshape(())
        self.layout = ParamLayout((ParamGroup("W", (d, k)), ParamGroup("mu", (d,)), ParamGroup("sigma", (1,))))
        eye_k = torch.eye(k, dtype=self.W.dtype, device=self.W.device)
        M = self.W.T @ self.W + self.sigma**2 * eye_k
        self.post_cov = self.sigma**2 * torch.linalg.inv(M)
        self.post_chol = torch.linalg.cholesky(self.post_cov)
        self.post_mean = torch.linalg.solve(M, self.W.T @ (self.x - self.mu).T).T  # [N, k]
        shift = self.mean_shift * self.post_chol.sum(dim=1) / math.sqrt(k)
        self.q_mean = self.post_mean + shift
        self.q_chol = math.sqrt(self.cov_scale) * self.post_chol

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def synthetic(
        cls,
        params: PPCAParams,
        proposal: ProposalParams,
        seed: int,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        data: np.ndarray | None = None,
    ) -> PPCA:
        """Parameters (and data, unless given) drawn from the model under ``seed``.

        Everything is drawn in float64 on the CPU and then cast, so a target is the same on every
        device and dtype up to that cast.
        """
        gen = make_generator(seed)
        d, k, n = params.data_dim, params.latent_dim, params.n_data
        f64 = torch.float64
        W = params.weight_scale * torch.randn(d, k, generator=gen, dtype=f64)
        mu = torch.randn(d, generator=gen, dtype=f64)
        sigma = torch.tensor(params.noise_std, dtype=f64)
        if data is None:
            z = torch.randn(n, k, generator=gen, dtype=f64)
            x = z @ W.T + mu + sigma * torch.randn(n, d, generator=gen, dtype=f64)
        else:
            x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        cast = lambda t: t.to(dtype=dtype, device=device)  # noqa: E731
        return cls(cast(W), cast(mu), cast(sigma), cast(x), proposal.mean_shift, proposal.cov_scale)

    # -- shapes -------------------------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    @property
    def n_data(self) -> int:
        return self.x.shape[0]

    def parameters(self) -> dict[str, Tensor]:
        return {"W": self.W, "mu": self.mu, "sigma": self.sigma.reshape(1)}

    # -- exact quantities ---------------------------------------------------------------------
    def marginal_cov(self) -> Tensor:
        return self.W @ self.W.T + self.sigma**2 * torch.eye(self.data_dim, dtype=self.W.dtype, device=self.W.device)

    def log_marginal(self) -> Tensor:
        """log p(x) = Σ_n log N(x_n; μ, C)."""
        C = self.marginal_cov()
        L = torch.linalg.cholesky(C)
        r = (self.x - self.mu).T  # [d, N]
        u = torch.linalg.solve_triangular(L, r, upper=False)
        logdet = 2 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (u**2).sum() - 0.5 * self.n_data * (logdet + self.data_dim * LOG_2PI)

    def exact_grad(self) -> Tensor:
        """∇θ log p(x), flattened in ``layout`` order (closed form, DESIGN §2)."""
        C = self.marginal_cov()
        Cinv = torch.cholesky_inverse(torch.linalg.cholesky(C))
        r = self.x - self.mu  # [N, d]
        a = r @ Cinv  # rows C⁻¹ r_n
        G = 0.5 * (a.T @ a - self.n_data * Cinv)
        parts = {"W": 2 * G @ self.W, "mu": a.sum(0), "sigma": (2 * self.sigma * torch.trace(G)).reshape(1)}
        return self.layout.flatten(parts)

    def reference(self, wrt: str = "theta") -> Reference:
        if wrt != "theta":
            raise ValueError(f"PPCA has no reference for gradients w.r.t. {wrt!r}")
        return Reference(self.exact_grad(), kind="exact")

    # -- latent densities and samplers (z has shape [..., N, k]) ------------------------------
    def sample_posterior(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        eps = torch.randn(*batch, self.n_data, self.latent_dim, generator=gen, dtype=self.W.dtype, device=self.W.device)
        return self.post_mean + eps @ self.post_chol.T

    def log_posterior(self, z: Tensor) -> Tensor:
        return _log_normal_chol(z, self.post_mean, self.post_chol)

    def sample_proposal(self, batch: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """z ~ q(z | x_n) for every data point, and log q(z) (shape [..., N])."""
        eps = torch.randn(*batch, self.n_data, self.latent_dim, generator=gen, dtype=self.W.dtype, device=self.W.device)
        z = self.q_mean + eps @ self.q_chol.T
        log_q = -0.5 * (eps**2).sum(-1) - torch.log(torch.diagonal(self.q_chol)).sum() - 0.5 * self.latent_dim * LOG_2PI
        return z, log_q

    def log_proposal(self, z: Tensor) -> Tensor:
        return _log_normal_chol(z, self.q_mean, self.q_chol)

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(x_n, z_n) for every data point: shape [..., N]."""
        e = self.x - z @ self.W.T - self.mu
        d, k = self.data_dim, self.latent_dim
        return (
            -0.5 * (z**2).sum(-1)
            - 0.5 * (e**2).sum(-1) / self.sigma**2
            - d * torch.log(self.sigma)
            - 0.5 * (d + k) * LOG_2PI
        )

    def grad_log_joint(self, z: Tensor) -> Tensor:
        """Per-sample ∇θ log p(x_n, z_n), shape [..., N, P] (for tests; estimators use the weighted form)."""
        s2 = self.sigma**2
        e = self.x - z @ self.W.T - self.mu
        parts = {
            "W": e.unsqueeze(-1) * z.unsqueeze(-2) / s2,
            "mu": e / s2,
            "sigma": ((e**2).sum(-1) / (s2 * self.sigma) - self.data_dim / self.sigma).unsqueeze(-1),
        }
        return self.layout.flatten(parts, batch=z.shape[:-1])

    def weighted_grad_log_joint(self, z: Tensor, weights: Tensor) -> Tensor:
        """Σ_{s,n} weights[..., s, n] ∇θ log p(x_n, z[..., s, n]) for z [..., S, N, k] → [..., P].

        Never materialises the per-sample gradients: cost O(S N d k) per replicate.
        """
        s2 = self.sigma**2
        e = self.x - z @ self.W.T - self.mu  # [..., S, N, d]
        we = weights.unsqueeze(-1) * e
        gW = torch.einsum("...snd,...snk->...dk", we, z) / s2
        gmu = we.sum(dim=(-3, -2)) / s2
        sq = (e**2).sum(-1)
        gsigma = (weights * (sq / (s2 * self.sigma) - self.data_dim / self.sigma)).sum(dim=(-2, -1))
        batch = z.shape[:-3]
        return self.layout.flatten({"W": gW, "mu": gmu, "sigma": gsigma.unsqueeze(-1)}, batch=batch)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every model parameter under its name, the data as ``x``, exact gradient as ``grad_<name>``."""
        out = {name: t.detach().cpu().numpy() for name, t in self.parameters().items()}
        out["x"] = self.x.detach().cpu().numpy()
        grads = self.layout.unflatten(self.exact_grad())
        out.update({f"grad_{name}": g.detach().cpu().numpy() for name, g in grads.items()})
        return out


def _log_normal_chol(z: Tensor, mean: Tensor, chol: Tensor) -> Tensor:
    diff = (z - mean).unsqueeze(-1)
    L = chol.expand(*diff.shape[:-2], *chol.shape)
    u = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
    k = z.shape[-1]
    return -0.5 * (u**2).sum(-1) - torch.log(torch.diagonal(chol)).sum() - 0.5 * k * LOG_2PI
