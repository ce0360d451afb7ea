"""Factorised Bernoulli variational families for binary latents z ∈ {0,1}ᵏ.

    q_φ(z | x_n) = Π_j Bern(z_j; σ(ℓ_j(x_n))),   log q = Σ_j [z_j log σ(ℓ_j) + (1 − z_j) log σ(−ℓ_j)],

with logits ℓ(x) from
* ``bernoulli_encoder`` (amortised): linear ℓ = A x + b (φ = A [k, d], b [k]), or with ``hidden`` = h a
  one-hidden-layer tanh MLP ℓ = W2 tanh(W1 x + b1) + b2;
* ``bernoulli_mean_field``: free logits per data point, φ = ``logits`` [N, k].

Capabilities {score, log_prob, enumerate, relaxed}: not reparameterisable (``relaxed``: the binary Concrete
relaxation σ((ℓ − logit u)/τ) of the same u, used by the Gumbel-softmax estimators). The one random draw is a uniform
u ~ U(0,1)^{[..., N, k]} and z = 1[u < σ(ℓ)] — the same u that ARM, DisARM and REBAR use (Yin & Zhou
2019; Dong et al. 2020; Tucker et al. 2017), so they share common random numbers with every other
estimator. ``mode`` is 1[ℓ > 0], the most probable state of q.

Initialisation with a controlled mismatch (:func:`fit_logits`, :class:`BernoulliProposal`): the
target logits are the logits of the exact posterior marginals t_nj = logit P(z_j = 1 | x_n) (by
enumeration, clipped to [−``MAX_LOGIT``, ``MAX_LOGIT``]); the encoder is fitted to them by ridge least
squares (closed form, ridge ``RIDGE``: exact when N ≤ d + 1; the MLP's hidden layer is a fixed random
tanh layer and only its output layer is fitted), the mean-field family takes them as they are. A
factorised q with the exact marginals is still not the posterior (an SBN's posterior correlates
its latents: explaining away), so the ELBO is biased even at zero perturbation. Then, in this order:
* ``temperature`` τ: ℓ ← ℓ / τ (τ > 1 flattens q towards ½, τ < 1 sharpens it);
* ``logit_shift`` s: ℓ ← ℓ + s (every latent more often on, s > 0, or off);
* ``logit_noise`` ε: Gaussian perturbation of the output weights and bias, ΔA = ε Ξ_A / √(m + 1),
  Δb = ε ξ_b / √(m + 1), m = mean_n ‖h_n‖² of the output layer's inputs h (x, or the hidden units),
  so that the logit perturbation Δℓ_nj has variance ε² on average over the data; mean field:
  Δℓ = ε ξ. Drawn from the generator passed in (the build derives it from the target's seed).

References: Neal (1992), "Connectionist learning of belief networks"; Mnih & Gregor (2014), "Neural
variational inference and learning in belief networks" (amortised factorised Bernoulli q).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gradbench.contracts import LatentSpace, Params
from gradbench.core import ParamGroup, ParamLayout
from gradbench.models.params import BernoulliProposal  # torch-free schema

MAX_LOGIT = 8.0  # fitted logits are clipped to ±8 (probabilities 3.4e-4 .. 1 − 3.4e-4)
RIDGE = 1e-6
CAPABILITIES = frozenset({"score", "log_prob", "enumerate", "relaxed", "logits", "gumbel_noise"})


def bernoulli_log_pmf(z: Tensor, logits: Tensor) -> Tensor:
    """Σ_j log Bern(z_j; σ(ℓ_j)) = Σ_j [z_j log σ(ℓ_j) + (1 − z_j) log σ(−ℓ_j)] = Σ_j [z_j ℓ_j + log σ(−ℓ_j)]
    (log σ(ℓ) − log σ(−ℓ) = ℓ; one ``logsigmoid`` pass, stable for any ℓ)."""
    return (z * logits + F.logsigmoid(-logits)).sum(-1)


class _Factorised:
    """Shared noise/sample/log_prob/mode of a factorised Bernoulli family given ``logits(φ, x)``."""

    latent: LatentSpace
    layout: ParamLayout
    capabilities: frozenset[str] = CAPABILITIES

    def logits(self, phi: Params, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        """u ~ U(0,1)^{[*shape, k]} (``shape`` ends with N)."""
        return torch.rand(*shape, self.latent.dim, generator=gen, dtype=dtype, device=device)

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        """z = 1[u < σ(ℓ(x))] as 0/1 floats [..., N, k]."""
        return (noise < torch.sigmoid(self.logits(phi, x))).to(noise.dtype)

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        return bernoulli_log_pmf(z, self.logits(phi, x))

    def mode(self, phi: Params, x: Tensor) -> Tensor:
        """The most probable state 1[ℓ > 0], [N, k]."""
        logits = self.logits(phi, x)
        return (logits > 0).to(logits.dtype)

    def probs(self, phi: Params, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(phi, x))


def amortised_logits_layout(n_logits: int, data_dim: int, hidden: int | None) -> ParamLayout:
    """φ of an amortised logit network: linear ℓ = A x + b, or with ``hidden`` = h ℓ = W2 tanh(W1 x + b1) + b2."""
    if hidden is None:
        return ParamLayout((ParamGroup("A", (n_logits, data_dim)), ParamGroup("b", (n_logits,))))
    return ParamLayout((ParamGroup("W1", (hidden, data_dim)), ParamGroup("b1", (hidden,)),
                        ParamGroup("W2", (n_logits, hidden)), ParamGroup("b2", (n_logits,))))


class AmortisedLogits:
    """The logit network ℓ_φ(x) [N, n_logits] shared by the Bernoulli and categorical encoders (layout
    :func:`amortised_logits_layout`)."""

    n_logits: int
    data_dim: int
    hidden: int | None

    def features(self, phi: Params, x: Tensor) -> Tensor:
        """The output layer's inputs h(x): x itself (linear) or tanh(W1 x + b1)."""
        return x if self.hidden is None else torch.tanh(x @ phi["W1"].T + phi["b1"])

    def logits(self, phi: Params, x: Tensor) -> Tensor:
        """ℓ_φ(x) [N, n_logits]."""
        if self.hidden is None:
            return x @ phi["A"].T + phi["b"]
        return self.features(phi, x) @ phi["W2"].T + phi["b2"]

    def init_params(self, x: Tensor, gen: torch.Generator, dtype: torch.dtype) -> Params:
        """Random φ (output weights N(0, 1/fan_in), zero output bias); :func:`fit_logits` fits it instead."""
        d, h, out = self.data_dim, self.hidden, self.n_logits
        params = {}
        if h is not None:
            params["W1"] = torch.randn(h, d, generator=gen, dtype=torch.float64) / d**0.5
            params["b1"] = torch.randn(h, generator=gen, dtype=torch.float64)
        fan_in = d if h is None else h
        params["A" if h is None else "W2"] = torch.randn(out, fan_in, generator=gen, dtype=torch.float64) / fan_in**0.5
        params["b" if h is None else "b2"] = torch.zeros(out, dtype=torch.float64)
        return {n: t.to(dtype=dtype, device=x.device) for n, t in params.items()}


class BernoulliEncoder(AmortisedLogits, _Factorised):
    """Amortised q_φ(z|x) = Π_j Bern(σ(ℓ_j(x))), ℓ linear (A, b) or a tanh MLP (W1, b1, W2, b2)."""

    def __init__(self, latent_dim: int, data_dim: int, hidden: int | None = None) -> None:
        self.latent = LatentSpace("binary", latent_dim)
        self.layout = amortised_logits_layout(latent_dim, data_dim, hidden)
        self.n_logits, self.data_dim, self.hidden = latent_dim, data_dim, hidden


class BernoulliMeanField(_Factorised):
    """Per-datapoint free logits: q(z | x_n) = Π_j Bern(σ(logits[n, j]))."""

    def __init__(self, latent_dim: int, n_data: int) -> None:
        self.latent = LatentSpace("binary", latent_dim)
        self.n_data = n_data
        self.layout = ParamLayout((ParamGroup("logits", (n_data, latent_dim)),))

    def logits(self, phi: Params, x: Tensor) -> Tensor:
        if x.shape[0] != self.n_data:
            raise ValueError(f"mean-field family has logits for {self.n_data} data points, got {x.shape[0]}")
        return phi["logits"]

    def init_params(self, x: Tensor, gen: torch.Generator, dtype: torch.dtype) -> Params:
        return {"logits": torch.zeros(self.n_data, self.latent.dim, dtype=dtype, device=x.device)}


def marginal_logits(marginals: Tensor) -> Tensor:
    """logit P(z_j = 1 | x_n), clipped to ±MAX_LOGIT."""
    m = marginals.clamp(1e-300, 1.0)
    return (torch.log(m) - torch.log1p(-m.clamp_max(1 - 1e-16))).clamp(-MAX_LOGIT, MAX_LOGIT)


def fit_logits(family: BernoulliEncoder | BernoulliMeanField, x: Tensor, target_logits: Tensor, proposal: BernoulliProposal,
               gen: torch.Generator) -> Params:
    """φ whose logits fit ``target_logits`` [N, k], then temperature, shift and noise (module docstring). float64."""
    x = x.to(torch.float64)
    t = target_logits.to(torch.float64) / proposal.temperature + proposal.logit_shift
    if isinstance(family, BernoulliMeanField):
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)
        return {"logits": t + proposal.logit_noise * noise}
    phi = family.init_params(x, gen, torch.float64)  # fixed random hidden layer for the MLP
    h = family.features(phi, x)  # [N, m]
    H = torch.cat([h, torch.ones_like(h[:, :1])], 1)  # [N, m + 1]
    # ridge least squares β = (HᵀH + λI)⁻¹ Hᵀ t = Hᵀ (H Hᵀ + λI)⁻¹ t (the dual form when N ≤ m + 1: interpolates)
    N, m1 = H.shape
    if N <= m1:
        beta = H.T @ torch.linalg.solve(H @ H.T + RIDGE * torch.eye(N, dtype=H.dtype, device=H.device), t)
    else:
        beta = torch.linalg.solve(H.T @ H + RIDGE * torch.eye(m1, dtype=H.dtype, device=H.device), H.T @ t)  # [m + 1, k]
    scale = proposal.logit_noise / (float((h**2).sum(1).mean()) + 1.0) ** 0.5
    noise = torch.randn(beta.T.shape, generator=gen, dtype=torch.float64).to(beta.device)
    W = (beta[:-1].T + scale * noise[:, :-1]).contiguous()
    b = beta[-1] + scale * noise[:, -1]
    out_w, out_b = ("A", "b") if family.hidden is None else ("W2", "b2")
    phi[out_w], phi[out_b] = W, b
    return phi
