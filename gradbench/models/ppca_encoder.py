"""PPCA with an amortised linear-Gaussian encoder: exact ELBO gradients w.r.t. θ *and* φ.

The model is :class:`gradbench.models.ppca.PPCA` (θ = (W, μ, σ), σ stored as itself); the
proposal is an encoder with parameters φ = (A, b, c):

    q_φ(z | x_n) = N(A x_n + b, diag(exp(2c))),   A [k, d], b [k], c [k]  (c = log std).

Write m_n = A x_n + b, v = exp(2c), r_n = x_n − μ − W m_n and w_j = ‖W_{:j}‖². The ELBO is analytic:

    ELBO = Σ_n [ −d log σ − (d/2) log 2π − (‖r_n‖² + Σ_j v_j w_j) / (2σ²) − KL_n ],
    KL_n = KL(q(·|x_n) ‖ N(0, I)) = ½ Σ_j (v_j + m_nj² − 1 − 2 c_j),

so, with g_n = Wᵀ r_n / σ² − m_n (the ELBO's derivative in m_n):

    ∇_A = Σ_n g_n x_nᵀ,  ∇_b = Σ_n g_n,  ∇_c = N (1 − v ⊙ (1 + w / σ²)),
    ∇_W = Σ_n r_n m_nᵀ / σ² − N W diag(v) / σ²,  ∇_μ = Σ_n r_n / σ²,
    ∇_σ = Σ_n [ (‖r_n‖² + Σ_j v_j w_j) / σ³ − d / σ ].

**Encoder configuration** (the suite's ``proposal`` block, :class:`EncoderParams`). The starting
point is the ELBO-optimal encoder of this diagonal family: the exact posterior mean is linear in x,
so A* = M⁻¹Wᵀ, b* = −M⁻¹Wᵀμ (M = WᵀW + σ²I), and the optimal diagonal variance is the inverse
posterior precision diagonal, c* = −½ log(M_jj / σ²). There ∇_φ ELBO = 0 exactly (and q is the
exact posterior when M is diagonal). Two controlled perturbations move it away:

* ``mean_noise`` δ: A = A* + δ diag(s) Ξ_A L_C⁻¹ / √d and b = b* + δ diag(s) ξ_b − ΔA μ, with
  s = exp(c*), L_C = chol(C) and Ξ_A, ξ_b standard normal, drawn from a seed derived from the
  target's data seed (the same directions for every δ). For x from the model, each coordinate of
  the encoder mean is then off by about δ √2 optimal posterior standard deviations.
* ``log_std_shift``: c = c* + log_std_shift (the encoder's standard deviations times e^shift).

**References** (``reference(wrt)``; the names are built by :func:`gradbench.estimators.pathwise.objective_wrt`):

* ``theta`` — ∇θ log p(x), exact (what Fisher-identity estimators target; the K → ∞ limit of IWAE_K).
* ``theta_elbo``, ``phi_elbo`` (alias ``phi``) — ∇θ ELBO and ∇φ ELBO, exact (closed forms above).
* ``theta_iwae<K>``, ``phi_iwae<K>`` — gradients of the IWAE_K bound
  E log (1/K Σ_k p(x, z_k)/q(z_k|x)). For K = 1 they are the ELBO gradients (exact). For K ≥ 2 there
  is no closed form: the reference is *estimated* (kind ``estimated`` with a per-coordinate standard
  error, and its sample covariance ``cov`` and count ``n`` up to ``references.estimated.MAX_COV_DIM`` coordinates) from ``reference_replicates`` replicates of an unbiased estimator with a seed derived from
  the data seed — DReG for φ (Tucker et al. 2019), the self-normalised IWAE θ-gradient for θ. A bias
  test of another unbiased φ-estimator (reparameterised IWAE, VIMCO) against it is therefore a
  two-sample agreement test between two estimators, both unbiased for ∇φ IWAE_K, and the bias
  protocol's test uses the reference's full covariance (:func:`gradbench.stats.bias_test`). Computed once per target and K.

Reference: Tipping & Bishop (1999) for PPCA; Kingma & Welling (2014) for the amortised encoder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from gradbench.core import ParamGroup, ParamLayout, Reference
from gradbench.models.params import (  # torch-free schemas, for `gradbench validate`
    EncoderParams,
    PPCAEncoderParams,
)
from gradbench.models.ppca import LOG_2PI, PPCA, ProposalParams
from gradbench.seeding import derive_seed, make_generator

_IWAE_WRT = re.compile(r"^(theta|phi)_iwae(\d+)$")


@dataclass
class PPCAEncoder(PPCA):
    """A PPCA target whose proposal is the amortised encoder q_φ(z|x) = N(A x + b, diag(exp(2c)))."""

    A: Tensor | None = None
    b: Tensor | None = None
    c: Tensor | None = None
    seed: int = 0
    reference_replicates: int = 20_000
    _reference_cache: dict[str, Reference] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        d, k = self.W.shape
        if self.A is None or self.b is None or self.c is None:
            raise ValueError("PPCAEncoder needs encoder parameters A, b, c (see PPCAEncoder.synthetic)")
        if self.A.shape != (k, d) or self.b.shape != (k,) or self.c.shape != (k,):
            raise ValueError(f"encoder shapes must be A [{k}, {d}], b [{k}], c [{k}]; got "
                             f"{tuple(self.A.shape)}, {tuple(self.b.shape)}, {tuple(self.c.shape)}")
        self.theta_layout = self.layout
        self.phi_layout = ParamLayout((ParamGroup("A", (k, d)), ParamGroup("b", (k,)), ParamGroup("c", (k,))))
        # The PPCA proposal machinery (sample_proposal) reads q_mean [N, k] and q_chol [k, k].
        self.q_mean = self.x @ self.A.T + self.b
        self.q_chol = torch.diag(torch.exp(self.c))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def synthetic(  # type: ignore[override]
        cls,
        params: PPCAEncoderParams,
        encoder: EncoderParams,
        seed: int,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        data: np.ndarray | None = None,
    ) -> PPCAEncoder:
        """θ and data as :meth:`PPCA.synthetic`; the encoder as described in the module docstring."""
        base = PPCA.synthetic(params, ProposalParams(), seed, torch.float64, "cpu", data)
        A, b, c = optimal_encoder(base.W, base.mu, base.sigma)
        gen = make_generator(derive_seed(seed, "encoder-perturbation"))
        k, d = A.shape
        xi_A = torch.randn(k, d, generator=gen, dtype=torch.float64)
        xi_b = torch.randn(k, generator=gen, dtype=torch.float64)
        s = torch.exp(c)
        L_C = torch.linalg.cholesky(base.marginal_cov())
        dA = encoder.mean_noise * s[:, None] * torch.linalg.solve_triangular(L_C, xi_A.T, upper=False).T / math.sqrt(d)
        A = A + dA
        b = b + encoder.mean_noise * s * xi_b - dA @ base.mu
        c = c + encoder.log_std_shift
        cast = lambda t: t.to(dtype=dtype, device=device)
        return cls(cast(base.W), cast(base.mu), cast(base.sigma), cast(base.x), A=cast(A), b=cast(b), c=cast(c),
                   seed=seed, reference_replicates=params.reference_replicates)

    def with_encoder(self, A: Tensor, b: Tensor, c: Tensor) -> PPCAEncoder:
        """The same model and data with another encoder."""
        return type(self)(self.W, self.mu, self.sigma, self.x, A=A, b=b, c=c, seed=self.seed,
                          reference_replicates=self.reference_replicates)

    # -- encoder (the contract's family interface, by hand) -------------------------------------
    capabilities = frozenset({"exact_posterior", "real_latent", "reparam", "score", "log_prob", "analytic_kl", "iwae_reference"})

    def encoder_params(self) -> dict[str, Tensor]:
        return {"A": self.A, "b": self.b, "c": self.c}

    def draw_noise(self, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """ε [..., N, k] ~ N(0, I): the same draw as :meth:`sample_proposal` makes."""
        return torch.randn(*batch, self.n_data, self.latent_dim, generator=gen, dtype=self.W.dtype, device=self.W.device)

    def rsample(self, phi: dict[str, Tensor], noise: Tensor) -> Tensor:
        """z = A x_n + b + e^c ⊙ ε, differentiable in φ (pure: torch.func may differentiate it)."""
        mean, log_std = self.encoder_mean_logstd(phi)
        return mean + torch.exp(log_std) * noise

    def log_q(self, phi: dict[str, Tensor], z: Tensor) -> Tensor:
        """log q_φ(z_n | x_n) [..., N], pure in φ."""
        mean, log_std = self.encoder_mean_logstd(phi)
        u = (z - mean) * torch.exp(-log_std)
        return (-0.5 * u**2 - log_std).sum(-1) - 0.5 * self.latent_dim * LOG_2PI

    def mode(self) -> Tensor:
        """The mode of q_φ(z | x_n), [N, k]."""
        return self.q_mean

    def encoder_mean_logstd(self, phi: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Encoder mean [..., N, k] and log std [..., 1, k] at (possibly batched) φ = (A [..., k, d], b, c).

        Differentiable in φ: pathwise estimators pass φ expanded to [R, ...] with ``requires_grad``.
        """
        mean = torch.einsum("...kd,nd->...nk", phi["A"], self.x) + phi["b"].unsqueeze(-2)
        return mean, phi["c"].unsqueeze(-2)

    def log_proposal(self, z: Tensor) -> Tensor:
        """log q_φ(z_n | x_n), shape [..., N] (diagonal: cheaper than the Cholesky form)."""
        u = (z - self.q_mean) * torch.exp(-self.c)
        return -0.5 * (u**2).sum(-1) - self.c.sum() - 0.5 * self.latent_dim * LOG_2PI

    def log_q_score(self, z: Tensor) -> Tensor:
        """Per-sample score ∇φ log q_φ(z_n | x_n) at fixed z, shape [..., N, P_φ] (closed form).

        With u = (z − m_n)/s: ∂/∂m = u/s, so ∇_A = (u/s) x_nᵀ, ∇_b = u/s, and ∇_c = u² − 1.
        """
        inv_s = torch.exp(-self.c)
        u = (z - self.q_mean) * inv_s
        gm = u * inv_s
        parts = {"A": gm.unsqueeze(-1) * self.x.unsqueeze(-2), "b": gm, "c": u**2 - 1}
        return self.phi_layout.flatten(parts, batch=z.shape[:-1])

    def kl_prior(self, phi: dict[str, Tensor] | None = None) -> Tensor:
        """KL(q_φ(·|x_n) ‖ N(0, I)) per data point, shape [..., N]; differentiable in φ."""
        mean, log_std = self.encoder_mean_logstd(phi if phi is not None else self.encoder_params())
        return 0.5 * (torch.exp(2 * log_std) + mean**2 - 1 - 2 * log_std).sum(-1)

    def kl_grad_phi(self) -> Tensor:
        """∇φ Σ_n KL_n in closed form: ∇_A = Σ_n m_n x_nᵀ, ∇_b = Σ_n m_n, ∇_c = N (v − 1)."""
        m = self.q_mean
        parts = {"A": m.T @ self.x, "b": m.sum(0), "c": self.n_data * (torch.exp(2 * self.c) - 1)}
        return self.phi_layout.flatten(parts)

    def log_lik(self, z: Tensor) -> Tensor:
        """log p(x_n | z_n), shape [..., N]."""
        e = self.x - z @ self.W.T - self.mu
        return -0.5 * (e**2).sum(-1) / self.sigma**2 - self.data_dim * torch.log(self.sigma) - 0.5 * self.data_dim * LOG_2PI

    # -- exact ELBO and its gradients ---------------------------------------------------------
    def elbo(self, theta: dict[str, Tensor] | None = None, phi: dict[str, Tensor] | None = None) -> Tensor:
        """Analytic ELBO Σ_n E_q[log p(x_n, z) − log q(z|x_n)] at (θ, φ) (defaults: the target's own)."""
        th = {**self.parameters(), **(theta or {})}
        ph = {**self.encoder_params(), **(phi or {})}
        W, mu, sigma = th["W"], th["mu"], th["sigma"].reshape(())
        m = self.x @ ph["A"].T + ph["b"]
        v = torch.exp(2 * ph["c"])
        r = self.x - mu - m @ W.T
        d, n = self.data_dim, self.n_data
        quad = (r**2).sum() + n * (v * (W**2).sum(0)).sum()
        kl = 0.5 * (n * (v - 1 - 2 * ph["c"]).sum() + (m**2).sum())
        return -n * d * torch.log(sigma) - 0.5 * n * d * LOG_2PI - quad / (2 * sigma**2) - kl

    def elbo_grad_phi(self) -> Tensor:
        """∇φ ELBO in closed form (module docstring), flattened in ``phi_layout`` order."""
        s2 = self.sigma**2
        m = self.q_mean
        r = self.x - self.mu - m @ self.W.T
        g = r @ self.W / s2 - m  # [N, k]
        v = torch.exp(2 * self.c)
        w = (self.W**2).sum(0)
        parts = {"A": g.T @ self.x, "b": g.sum(0), "c": self.n_data * (1 - v * (1 + w / s2))}
        return self.phi_layout.flatten(parts)

    def elbo_grad_theta(self) -> Tensor:
        """∇θ ELBO in closed form (module docstring), flattened in ``layout`` order."""
        s2 = self.sigma**2
        m = self.q_mean
        r = self.x - self.mu - m @ self.W.T
        v = torch.exp(2 * self.c)
        n, d = self.n_data, self.data_dim
        quad = (r**2).sum() + n * (v * (self.W**2).sum(0)).sum()
        parts = {
            "W": r.T @ m / s2 - n * self.W * v / s2,
            "mu": r.sum(0) / s2,
            "sigma": (quad / (s2 * self.sigma) - n * d / self.sigma).reshape(1),
        }
        return self.layout.flatten(parts)

    # -- references ---------------------------------------------------------------------------
    def reference(self, wrt: str = "theta") -> Reference:
        if wrt == "theta":
            return super().reference("theta")
        if self.W.dtype != torch.float64:  # references are float64: those of *these* rounded parameters
            if wrt not in self._reference_cache:
                f64 = lambda t: t.to(torch.float64)
                self._reference_cache[wrt] = type(self)(
                    f64(self.W), f64(self.mu), f64(self.sigma), f64(self.x), A=f64(self.A), b=f64(self.b), c=f64(self.c),
                    seed=self.seed, reference_replicates=self.reference_replicates).reference(wrt)
            return self._reference_cache[wrt]
        if wrt == "theta_elbo":
            return Reference(self.elbo_grad_theta(), kind="exact")
        if wrt in ("phi", "phi_elbo"):
            return Reference(self.elbo_grad_phi(), kind="exact")
        match = _IWAE_WRT.match(wrt)
        if match is None:
            raise ValueError(f"ppca_encoder has no reference for {wrt!r} (known: theta, theta_elbo, phi_elbo, "
                             "theta_iwae<K>, phi_iwae<K>)")
        base, K = match.group(1), int(match.group(2))
        if K < 1:
            raise ValueError(f"IWAE_K needs K ≥ 1, got {wrt!r}")
        if K == 1:  # IWAE_1 is the ELBO
            return self.reference(f"{base}_elbo")
        if wrt not in self._reference_cache:
            self._reference_cache[wrt] = self._estimate_iwae_reference(base, K)
        return self._reference_cache[wrt]

    def _estimate_iwae_reference(self, base: str, K: int) -> Reference:
        """Mean, s.e. and covariance of ``reference_replicates`` replicates of DReG (φ) or the IWAE θ-gradient
        (θ): the references layer's :func:`gradbench.references.estimated.iwae_bound_reference`."""
        from gradbench.contracts import Objective
        from gradbench.references.estimated import iwae_bound_reference

        return iwae_bound_reference(self, Objective(base, "iwae", K), self.reference_replicates, self.seed)  # type: ignore[arg-type]

    def arrays(self) -> dict[str, np.ndarray]:
        """PPCA arrays plus the encoder (``A``, ``b``, ``c``) and ∇φ ELBO (``grad_elbo_<name>``)."""
        out = super().arrays()
        out.update({name: t.detach().cpu().numpy() for name, t in self.encoder_params().items()})
        grads = self.phi_layout.unflatten(self.elbo_grad_phi())
        out.update({f"grad_elbo_{name}": g.detach().cpu().numpy() for name, g in grads.items()})
        return out


def optimal_encoder(W: Tensor, mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ELBO-optimal encoder of the diagonal family: A* = M⁻¹Wᵀ, b* = −A*μ, c* = −½ log(M_jj/σ²)."""
    k = W.shape[1]
    M = W.T @ W + sigma**2 * torch.eye(k, dtype=W.dtype, device=W.device)
    A = torch.linalg.solve(M, W.T)
    return A, -A @ mu, -0.5 * torch.log(torch.diagonal(M) / sigma**2)
