"""Probabilistic PCA: the target with closed-form log-likelihood gradients.

Model (docs/design.md §5.1): z ~ N(0, I_k), x | z ~ N(W z + μ, σ² I_d), θ = (W, μ, σ). We store and
differentiate with respect to σ itself (not log σ). Data x has N rows; the log-likelihood and
all gradients are *sums* over the N data points.

* Marginal: x ~ N(μ, C), C = W Wᵀ + σ² I. With r_n = x_n − μ and G_C = ½ Σ_n (C⁻¹ r_n r_nᵀ C⁻¹ − C⁻¹):
  ∇_W = 2 G_C W, ∇_μ = Σ_n C⁻¹ r_n, ∇_σ = 2σ tr(G_C).
* Posterior: z | x ~ N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹), M = Wᵀ W + σ² I.
* Complete-data gradient, e = x − W z − μ: ∇_W = e zᵀ/σ², ∇_μ = e/σ², ∇_σ = ‖e‖²/σ³ − d/σ.
* Proposal with controlled mismatch (δ = mean_shift, s = cov_scale), with L = chol(σ² M⁻¹):
  q(z | x_n) = N(m_n + δ L 1/√k, s L Lᵀ). The shift has Mahalanobis length exactly δ under the
  posterior, so δ is comparable across dimensions; δ = 0, s = 1 is the exact posterior.
* Evaluation: ``log_joint`` and ``weighted_grad_log_joint`` never form the d-dimensional
  residuals; they use the quadratic form of e in u = z − (posterior mean) and the weighted moments
  of u (O(k²) per particle instead of O(d k); see ``log_joint_with_grad``). ``grad_log_joint`` is
  the direct per-sample formula above, which the tests compare them with.

Reference: Tipping & Bishop (1999), "Probabilistic principal component analysis", JRSS B.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gradbench.core import ParamGroup, ParamLayout, Reference
from gradbench.models.params import (  # torch-free schemas, for `gradbench validate`
    PPCAParams,
    ProposalParams,
)
from gradbench.seeding import make_generator

LOG_2PI = math.log(2 * math.pi)


class PPCAModel:
    """p_θ(x, z) of PPCA as a contract-v2 :class:`~gradbench.contracts.Model`: ``log_joint`` pure in θ = (W, μ, σ).

    The direct per-sample formula; the :class:`PPCA` target's fused closed-form gradient is its fast path, and
    ``tests/models/test_ppca.py`` checks that the two agree (``torch.func`` of this against the fast path).
    """

    def __init__(self, d: int, k: int) -> None:
        from gradbench.contracts import LatentSpace

        self.latent = LatentSpace("real", k)
        self.layout = ParamLayout((ParamGroup("W", (d, k)), ParamGroup("mu", (d,)), ParamGroup("sigma", (1,))))

    def log_joint(self, theta: dict[str, Tensor], x: Tensor, z: Tensor) -> Tensor:
        """log N(z; 0, I) + log N(x; W z + μ, σ² I), [..., N]."""
        sigma = theta["sigma"].reshape(())
        e = x - z @ theta["W"].T - theta["mu"]
        d, k = theta["W"].shape
        return (-0.5 * (e**2).sum(-1) / sigma**2 - d * torch.log(sigma) - 0.5 * (z**2).sum(-1)
                - 0.5 * (d + k) * LOG_2PI)

    def sample_joint(self, theta: dict[str, Tensor], n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        W = theta["W"]
        z = torch.randn(n, W.shape[1], generator=gen, dtype=W.dtype, device=W.device)
        x = z @ W.T + theta["mu"] + theta["sigma"].reshape(()) * torch.randn(n, W.shape[0], generator=gen, dtype=W.dtype,
                                                                           device=W.device)
        return x, z


@dataclass
class PPCA:
    """A PPCA model at parameters θ = (W, μ, σ), a data set x [N, d] and a proposal.

    A hand-written contract-v2 target (``gradbench.contracts``): the closed-form fused gradient is its
    fast path; its proposal is a fixed Gaussian (no φ to differentiate).
    """

    capabilities = frozenset({"exact_posterior", "real_latent", "log_prob"})

    W: Tensor
    mu: Tensor
    sigma: Tensor
    x: Tensor
    mean_shift: float = 0.0
    cov_scale: float = 1.0
    _centred_cache: _Centred | None = field(default=None, init=False, repr=False, compare=False)

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
        cast = lambda t: t.to(dtype=dtype, device=device)
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

    @property
    def model(self) -> PPCAModel:
        """The pure model p_θ(x, z) behind this target (generic code may differentiate it with torch.func)."""
        return PPCAModel(self.data_dim, self.latent_dim)

    @property
    def theta(self) -> dict[str, Tensor]:
        return self.parameters()

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
        """∇θ log p(x), flattened in ``layout`` order (closed form, docs/design.md §5.1)."""
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
        if self.W.dtype != torch.float64:  # the exact gradient of *these* (rounded) parameters, in float64
            f64 = PPCA(self.W.double(), self.mu.double(), self.sigma.double(), self.x.double(), self.mean_shift, self.cov_scale)
            return Reference(f64.exact_grad(), kind="exact")
        return Reference(self.exact_grad(), kind="exact")

    # -- latent densities and samplers (z has shape [..., N, k]) ------------------------------
    def sample_posterior(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        eps = torch.randn(*batch, self.n_data, self.latent_dim, generator=gen, dtype=self.W.dtype, device=self.W.device)
        z = eps @ self.post_chol.T
        z += self.post_mean  # in place: one pass fewer than post_mean + (...), same values
        return z

    def log_posterior(self, z: Tensor) -> Tensor:
        return _log_normal_chol(z, self.post_mean, self.post_chol)

    def sample_proposal(self, batch: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """z ~ q(z | x_n) for every data point, and log q(z) (shape [..., N])."""
        eps = torch.randn(*batch, self.n_data, self.latent_dim, generator=gen, dtype=self.W.dtype, device=self.W.device)
        z = eps @ self.q_chol.T
        z += self.q_mean  # in place: one pass fewer than q_mean + (...), same values
        log_q = -0.5 * _sq_norm(eps) - (torch.log(torch.diagonal(self.q_chol)).sum() + 0.5 * self.latent_dim * LOG_2PI)
        return z, log_q

    def log_proposal(self, z: Tensor) -> Tensor:
        return _log_normal_chol(z, self.q_mean, self.q_chol)

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(x_n, z_n) for every data point: shape [..., N]."""
        return self.log_joint_with_grad(z)[0]

    def log_joint_with_grad(self, z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """log p(x_n, z_n) [..., N], and ``weights ↦ weighted_grad_log_joint(z, weights)`` sharing u = z − c.

        Both work in the k-dimensional latent space and never form the d-dimensional residuals
        e = x − W z − μ. With a centre c_n (the posterior mean), u = z − c_n and r_n = x_n − μ − W c_n,
        e = r_n − W u, so ‖e‖² = uᵀ G u − 2 b_nᵀ u + ‖r_n‖², G = WᵀW, b_n = Wᵀ r_n, and
            ‖z‖² + ‖e‖²/σ² = uᵀ A u − 2 β_nᵀ u + γ_n,  A = I + G/σ², β_n = b_n/σ² − c_n,
            γ_n = ‖r_n‖²/σ² + ‖c_n‖².
        Any centre gives the same values; the posterior mean keeps u small, so the expansion adds
        no cancellation. Cost O(k²) per particle instead of O(d k).
        """
        q = self._centred()
        u = z - q.c
        t = (u @ q.A).sub_(q.two_beta)  # uᵀA − 2βᵀ, in place on the fresh product
        log_p = -0.5 * (torch.linalg.vecdot(u, t) + q.gamma) - q.log_norm
        return log_p, lambda weights: self._weighted_grad(u, weights)

    def _centred(self) -> _Centred:
        """The θ- and data-dependent constants of the centred forms (cached unless θ requires grad,
        so that autograd through θ builds a fresh graph on every call)."""
        if self.W.requires_grad or self.mu.requires_grad or self.sigma.requires_grad or self.x.requires_grad:
            return _Centred.of(self)
        if self._centred_cache is None:
            self._centred_cache = _Centred.of(self)
        return self._centred_cache

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

        Never materialises the per-sample gradients: cost O(S N k²) per replicate (``_weighted_grad``).
        """
        return self._weighted_grad(z - self._centred().c, weights)

    def _weighted_grad(self, u: Tensor, weights: Tensor) -> Tensor:
        """Σ w ∇θ log p(x, z) from the centred latents u = z − c (see :meth:`log_joint_with_grad`).

        Only the weighted moments of u per (replicate, data point) are needed: s0 = Σ_s w,
        s1 = Σ_s w u, S2 = Σ_s w u uᵀ. With z = c_n + u and e = r_n − W u,
            Σ w e zᵀ = Σ_n r_n (s0 c_n + s1)ᵀ − W (s1 c_nᵀ + S2),   Σ w e = Σ_n r_n s0 − W s1,
            Σ w ‖e‖² = Σ_n s0 ‖r_n‖² − 2 b_nᵀ s1 + ⟨G, S2⟩,
        and ∇_W = Σ w e zᵀ/σ², ∇_μ = Σ w e/σ², ∇_σ = Σ w ‖e‖²/σ³ − d Σ w/σ.
        """
        d, k = self.data_dim, self.latent_dim
        shape = torch.broadcast_shapes(u.shape[:-1], weights.shape)  # [..., S, N]
        batch, (S, N) = shape[:-2], shape[-2:]
        B = math.prod(batch)
        w = weights.expand(shape).reshape(B, S, N)
        u = u.expand(*shape, k).reshape(B, S, N, k)
        wu = w.unsqueeze(-1) * u
        if N == 1:
            S2 = torch.bmm(wu.reshape(B, S, k).transpose(1, 2), u.reshape(B, S, k)).unsqueeze(1)  # [B, 1, k, k]
        else:
            S2 = torch.einsum("bsnj,bsnl->bnjl", wu, u)  # [B, N, k, k]
        s1 = wu.sum(1)  # [B, N, k]
        s0 = w.sum(1)  # [B, N]
        q = self._centred()
        c, r, s2 = q.c, q.r, self.sigma**2
        m = s0.unsqueeze(-1) * c + s1  # [B, N, k]: Σ_s w z per data point
        gW = (r.T @ m - self.W @ (s1.transpose(1, 2) @ c + S2.sum(1))) / s2  # [B, d, k]
        gmu = (s0 @ r - s1.sum(1) @ self.W.T) / s2  # [B, d]
        wsq = s0 @ q.r_sq - 2 * (s1 * q.b).sum(dim=(-2, -1)) + (S2.sum(1) * q.G).sum(dim=(-2, -1))
        gsigma = wsq / (s2 * self.sigma) - d * s0.sum(1) / self.sigma
        flat = torch.cat([gW.reshape(B, d * k), gmu, gsigma.reshape(B, 1)], dim=-1)
        return flat.reshape(*batch, self.layout.size)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every model parameter under its name, the data as ``x``, exact gradient as ``grad_<name>``."""
        out = {name: t.detach().cpu().numpy() for name, t in self.parameters().items()}
        out["x"] = self.x.detach().cpu().numpy()
        grads = self.layout.unflatten(self.exact_grad())
        out.update({f"grad_{name}": g.detach().cpu().numpy() for name, g in grads.items()})
        return out


class _Centred(NamedTuple):
    """Constants of the centred quadratic forms (see :meth:`PPCA.log_joint_with_grad`)."""

    c: Tensor  # centre c_n = posterior mean [N, k]
    r: Tensor  # r_n = x_n − μ − W c_n [N, d]
    r_sq: Tensor  # ‖r_n‖² [N]
    G: Tensor  # WᵀW [k, k]
    b: Tensor  # b_n = Wᵀ r_n [N, k]
    A: Tensor  # I + G/σ² [k, k]
    two_beta: Tensor  # 2 β_n = 2 (b_n/σ² − c_n) [N, k]
    gamma: Tensor  # γ_n = ‖r_n‖²/σ² + ‖c_n‖² [N]
    log_norm: Tensor  # d log σ + (d + k)/2 log 2π

    @staticmethod
    def of(t: PPCA) -> _Centred:
        c = t.post_mean.detach()  # the values do not depend on the centre, so neither do their θ-gradients
        r = t.x - t.mu - c @ t.W.T
        r_sq = (r * r).sum(-1)
        G, b, s2 = t.W.T @ t.W, r @ t.W, t.sigma**2
        A = torch.eye(t.latent_dim, dtype=G.dtype, device=G.device) + G / s2
        gamma = r_sq / s2 + (c * c).sum(-1)
        log_norm = t.data_dim * torch.log(t.sigma) + 0.5 * (t.data_dim + t.latent_dim) * LOG_2PI
        return _Centred(c, r, r_sq, G, b, A, 2 * (b / s2 - c), gamma, log_norm)


def _sq_norm(t: Tensor) -> Tensor:
    """‖t‖² over the last dimension in one reduction pass (no squared temporary)."""
    return torch.linalg.vector_norm(t, dim=-1).square()


def _log_normal_chol(z: Tensor, mean: Tensor, chol: Tensor) -> Tensor:
    diff = (z - mean).unsqueeze(-1)
    L = chol.expand(*diff.shape[:-2], *chol.shape)
    u = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
    k = z.shape[-1]
    return -0.5 * (u**2).sum(-1) - torch.log(torch.diagonal(chol)).sum() - 0.5 * k * LOG_2PI
