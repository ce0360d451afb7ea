"""Diagonal Gaussian variational families q_φ(z | x_n) = N(m_φ(x_n), diag exp(2 ℓ_φ(x_n))).

* ``gaussian_mean_field``: per-data-point parameters φ = (m [N, k], log_s [N, k]).
* ``gaussian_encoder``: amortised, an MLP (tanh hidden units, widths ``encoder_hidden``, possibly empty: a
  linear map) from x_n to [m_n, ℓ_n] ∈ ℝ^{2k}; φ = (W0, b0, …, WL, bL), W_l of shape [out, in].

Both: ``noise(shape)`` is ε ~ N(0, I) [*shape, k], ``sample(φ, x, ε) = m + e^ℓ ⊙ ε`` (reparameterised),
log q = Σ_j [−½ ((z_j − m_j)/s_j)² − ℓ_j − ½ log 2π], capabilities {reparam, score, log_prob}; extras
``mode`` (= m), ``mean_logstd`` and ``kl_standard_normal`` = ½ Σ_j (s_j² + m_j² − 1 − 2ℓ_j).

**Starting point with controlled mismatch** (the suite's ``proposal`` block, :class:`GaussianProposal`), as for
PPCA: the Laplace approximation of each data point's posterior (mode m*_n, precision Λ_n, covariance
S_n = L_n L_nᵀ = Λ_n⁻¹; ``gradbench.references.quadrature.laplace``), made diagonal by the KL(q ‖ p)-optimal
choice for a Gaussian, s*_nj = (Λ_n)_jj^{−1/2}. Then
    m_n = m*_n + δ L_n 1/√k   (Mahalanobis length exactly δ = ``mean_shift`` under the Laplace posterior),
    ℓ_n = log s*_n + ``log_std_shift``.
The mean-field family takes these values exactly. The encoder is fitted to them: a linear encoder by
minimum-norm least squares on [x_n, 1] (exact interpolation when N ≤ d + 1), an MLP by ``fit_steps`` full-batch
Adam steps on the squared error from a seeded initialisation.

Reference: Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradbench.contracts import LatentSpace, Params
from gradbench.core import ParamGroup, ParamLayout
from gradbench.models.params import GaussianProposal  # torch-free schema
from gradbench.references.quadrature import laplace

LOG_2PI = math.log(2 * math.pi)
GAUSSIAN_CAPABILITIES = frozenset({"reparam", "score", "log_prob", "analytic_kl"})  # analytic_kl: kl_standard_normal


class _DiagonalGaussian:
    """Shared methods: everything follows from ``mean_logstd(φ, x)``."""

    latent: LatentSpace
    layout: ParamLayout
    capabilities: frozenset[str] = GAUSSIAN_CAPABILITIES

    def mean_logstd(self, phi: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        return torch.randn(*shape, self.latent.dim, generator=gen, dtype=dtype, device=device)

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        m, log_s = self.mean_logstd(phi, x)
        return m + torch.exp(log_s) * noise

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        m, log_s = self.mean_logstd(phi, x)
        u = (z - m) * torch.exp(-log_s)
        return -0.5 * (u * u).sum(-1) - log_s.sum(-1) - 0.5 * self.latent.dim * LOG_2PI

    def mode(self, phi: Params, x: Tensor) -> Tensor:
        return self.mean_logstd(phi, x)[0]

    def kl_standard_normal(self, phi: Params, x: Tensor) -> Tensor:
        """KL(q_φ(·|x_n) ‖ N(0, I)) [N]."""
        m, log_s = self.mean_logstd(phi, x)
        return 0.5 * (torch.exp(2 * log_s) + m * m - 1 - 2 * log_s).sum(-1)


@dataclass
class GaussianMeanField(_DiagonalGaussian):
    """φ = (m [N, k], log_s [N, k]): one Gaussian per data point."""

    latent_dim: int
    n_data: int
    latent: LatentSpace = field(init=False)
    layout: ParamLayout = field(init=False)

    def __post_init__(self) -> None:
        self.latent = LatentSpace("real", self.latent_dim)
        shape = (self.n_data, self.latent_dim)
        self.layout = ParamLayout((ParamGroup("m", shape), ParamGroup("log_s", shape)))

    def init_params(self, x: Tensor, gen: torch.Generator, dtype: torch.dtype) -> Params:
        """The prior N(0, I) for every data point."""
        zeros = torch.zeros(self.n_data, self.latent_dim, dtype=dtype, device=x.device)
        return {"m": zeros, "log_s": zeros.clone()}

    def mean_logstd(self, phi: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        return phi["m"], phi["log_s"]


@dataclass
class GaussianEncoder(_DiagonalGaussian):
    """φ = MLP weights: x_n ↦ [m_n, log s_n] (tanh hidden units)."""

    latent_dim: int
    data_dim: int
    hidden: tuple[int, ...] = ()
    latent: LatentSpace = field(init=False)
    layout: ParamLayout = field(init=False)

    def __post_init__(self) -> None:
        self.latent = LatentSpace("real", self.latent_dim)
        widths = (self.data_dim, *self.hidden, 2 * self.latent_dim)
        groups: list[ParamGroup] = []
        for l, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            groups += [ParamGroup(f"W{l}", (fan_out, fan_in)), ParamGroup(f"b{l}", (fan_out,))]
        self.layout = ParamLayout(tuple(groups))

    def init_params(self, x: Tensor, gen: torch.Generator, dtype: torch.dtype) -> Params:
        """W_l ~ N(0, 1/fan_in), b_l = 0 (drawn in float64, cast)."""
        phi: Params = {}
        for g in self.layout.groups:
            if g.name.startswith("W"):
                phi[g.name] = torch.randn(g.shape, generator=gen, dtype=torch.float64) / math.sqrt(g.shape[1])
            else:
                phi[g.name] = torch.zeros(g.shape, dtype=torch.float64)
        return {k: v.to(dtype=dtype, device=x.device) for k, v in phi.items()}

    def features(self, phi: Params, x: Tensor) -> Tensor:
        h = x
        for l in range(len(self.hidden)):
            h = torch.tanh(h @ phi[f"W{l}"].T + phi[f"b{l}"])
        return h

    def mean_logstd(self, phi: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        L = len(self.hidden)
        out = self.features(phi, x) @ phi[f"W{L}"].T + phi[f"b{L}"]
        return out[..., : self.latent_dim], out[..., self.latent_dim:]

    def fit(self, x: Tensor, mean: Tensor, log_std: Tensor, gen: torch.Generator, steps: int) -> Params:
        """φ whose outputs match (mean, log_std) [N, k]: least squares (linear) or Adam on the squared error."""
        x = x.to(torch.float64)
        target = torch.cat([mean, log_std], dim=-1)
        phi = self.init_params(x, gen, torch.float64)
        L = len(self.hidden)
        if L > 0 and steps > 0:
            params = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
            opt = torch.optim.Adam(params.values(), lr=1e-2)
            for _ in range(steps):
                opt.zero_grad()
                m, ls = self.mean_logstd(params, x)
                loss = ((torch.cat([m, ls], -1) - target) ** 2).mean()
                loss.backward()
                opt.step()
            phi = {k: v.detach() for k, v in params.items()}
        # the output layer: minimum-norm least squares on the (fitted) features, exact when N ≤ width + 1
        feats = self.features(phi, x)
        A = torch.cat([feats, torch.ones(feats.shape[0], 1, dtype=torch.float64)], dim=-1)
        sol = torch.linalg.pinv(A) @ target  # [width + 1, 2k]
        phi[f"W{L}"], phi[f"b{L}"] = sol[:-1].T.contiguous(), sol[-1].contiguous()
        return phi


def laplace_targets(lap: Any, mean_shift: float, log_std_shift: float) -> tuple[Tensor, Tensor]:
    """(m_n, ℓ_n) [N, k]: the Laplace mode shifted by δ L_n 1/√k, and log (Λ_n)_jj^{−1/2} + log_std_shift."""
    k = lap.mode.shape[-1]
    mean = lap.mode + mean_shift * lap.chol.sum(-1) / math.sqrt(k)
    log_std = -0.5 * torch.log(torch.diagonal(lap.precision, dim1=-2, dim2=-1)) + log_std_shift
    return mean, log_std


def build_family(model: Any, theta: Params, x: Tensor, proposal: GaussianProposal,
                 gen: torch.Generator) -> tuple[_DiagonalGaussian, Params]:
    """The family named by ``proposal`` and its φ (float64) at the Laplace-based point with the mismatch."""
    lap = laplace(model, theta, x)
    mean, log_std = laplace_targets(lap, proposal.mean_shift, proposal.log_std_shift)
    N, k = mean.shape
    if proposal.family == "gaussian_mean_field":
        return GaussianMeanField(k, N), {"m": mean, "log_s": log_std}
    enc = GaussianEncoder(k, x.shape[1], tuple(proposal.encoder_hidden))
    return enc, enc.fit(x, mean, log_std, gen, proposal.fit_steps)


FAMILIES = {"gaussian_mean_field": GaussianMeanField, "gaussian_encoder": GaussianEncoder}
