"""Categorical VAE: k categorical latents with C classes each, Bernoulli pixels, exact enumerated references.

    z_j ~ Cat(softmax(a_j)), j = 1..k (independent),   x | z ~ Π_i Bern(σ(f(z)_i)),

with z one-hot and flattened [..., N, k·C] and the decoder f either ``linear`` (f(z) = W z + b, W [d, k·C])
or ``mlp`` (f(z) = V tanh(U z + c) + b, one tanh hidden layer of width ``hidden``). θ = (``prior_logits``
a [k, C], ``x_W``, ``x_b``) or (``prior_logits``, ``x_U``, ``x_c``, ``x_V``, ``x_b``).

    log p_θ(x, z) = Σ_j Σ_c z_jc log softmax(a_j)_c + Σ_i [x_i f_i − log(1 + e^{f_i})],

a pure function of θ that broadcasts over the leading dimensions of z (and accepts relaxed z on the
simplex, which is what the Gumbel-softmax estimators evaluate). With Kool et al.'s k = 2, C = 10 there
are 100 states per data point, so log p(x), ∇θ log p(x), ∇θ/∇φ ELBO (and IWAE_K for small K) are
enumerated exactly by :mod:`gradbench.references.enumeration`, and ``sample_posterior`` draws exactly
from the enumerated posterior (so the θ-estimators oracle, iwae, coupled chains and sumo run here).

Target parameters (``build``): weights N(0, weight_scale²/fan_in), biases and prior logits N(0,
bias_scale²), float64 on the CPU from ``make_generator(seed)``; data given (binary rows) or drawn from
the model. The ``categorical_encoder`` (:mod:`gradbench.families.categorical`) is fitted by ridge least
squares to the centred log posterior marginals log P(z_j = c | x_n) (clipped below at −8) and then
perturbed (``temperature``, ``logit_noise``), as the Bernoulli encoder of the SBN is.

Reference: Kool, van Hoof & Welling (2020), "Estimating gradients for discrete random variables by
sampling without replacement", ICLR (§6: the categorical VAE with 2 latents of 10 classes); Jang, Gu &
Poole (2017), "Categorical reparameterization with Gumbel-softmax".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gradbench.contracts import ComposedTarget, LatentSpace, Params
from gradbench.core import ParamGroup, ParamLayout
from gradbench.families.bernoulli import bernoulli_log_pmf, fit_logits
from gradbench.families.categorical import CategoricalEncoder, categorical_log_pmf
from gradbench.models.params import BernoulliProposal, CategoricalProposal, CategoricalVAEParams
from gradbench.models.sbn import binary_data
from gradbench.references import enumeration
from gradbench.seeding import derive_seed, make_generator

DESCRIPTION = ("categorical VAE (k latents × C classes, linear or MLP decoder to Bernoulli pixels): ∇θ log p(x), ∇θ/∇φ "
               "ELBO enumerated over C^k states; exact posterior sampling")
PARAMS = CategoricalVAEParams
PROPOSAL = CategoricalProposal
MIN_LOG_MARGINAL = -8.0  # the encoder is fitted to log P(z_j = c | x_n) clipped below at −8


class CategoricalVAE:
    """p_θ(x, z) with k independent categorical latents; implements :class:`gradbench.contracts.Model`."""

    capabilities = frozenset({"exact_posterior"})  # sample_posterior: exact, by enumeration

    def __init__(self, data_dim: int, latents: int, classes: int, decoder: str = "linear", hidden: int = 32) -> None:
        self.data_dim, self.classes, self.decoder = data_dim, classes, decoder
        self.hidden = hidden if decoder == "mlp" else 0
        self.latent = LatentSpace("categorical", latents, classes)
        width = latents * classes
        groups = [ParamGroup("prior_logits", (latents, classes))]
        if decoder == "linear":
            groups += [ParamGroup("x_W", (data_dim, width)), ParamGroup("x_b", (data_dim,))]
        else:
            groups += [ParamGroup("x_U", (hidden, width)), ParamGroup("x_c", (hidden,)),
                       ParamGroup("x_V", (data_dim, hidden)), ParamGroup("x_b", (data_dim,))]
        self.layout = ParamLayout(tuple(groups))

    def init_params(self, gen: torch.Generator, dtype: torch.dtype, weight_scale: float = 2.0, bias_scale: float = 1.0) -> Params:
        """Weights N(0, weight_scale²/fan_in) (fan_in = k for the one-hot input: k ones), biases N(0, bias_scale²)."""
        out = {}
        for g in self.layout.groups:
            if g.name == "prior_logits" or len(g.shape) == 1:
                std = bias_scale
            else:
                std = weight_scale / (self.latent.dim if g.name in ("x_W", "x_U") else g.shape[1]) ** 0.5
            out[g.name] = std * torch.randn(g.shape, generator=gen, dtype=torch.float64)
        return {n: t.to(dtype) for n, t in out.items()}

    def pixel_logits(self, theta: Params, z: Tensor) -> Tensor:
        """f(z) [..., d]."""
        if self.decoder == "linear":
            return z @ theta["x_W"].T + theta["x_b"]
        return torch.tanh(z @ theta["x_U"].T + theta["x_c"]) @ theta["x_V"].T + theta["x_b"]

    def log_prior(self, theta: Params, z: Tensor) -> Tensor:
        """log p_θ(z) [...] = Σ_j Σ_c z_jc log softmax(a_j)_c."""
        return categorical_log_pmf(z, theta["prior_logits"].reshape(-1), self.classes)

    def log_lik(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n | z_n) for z [..., N, k·C] → [..., N]."""
        return bernoulli_log_pmf(x, self.pixel_logits(theta, z))

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n, z_n) for z [..., N, k·C] → [..., N]."""
        return self.log_prior(theta, z) + self.log_lik(theta, x, z)

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Ancestral sampling: z by Gumbel-max from the prior, x = 1[u < σ(f(z))]: (x [n, d], z [n, k·C])."""
        a = theta["prior_logits"]
        k, C = a.shape
        u = torch.rand(n, k, C, generator=gen, dtype=a.dtype, device=a.device).clamp_min(torch.finfo(a.dtype).tiny)
        z = torch.nn.functional.one_hot((a - torch.log(-torch.log(u))).argmax(-1), C).to(a.dtype).reshape(n, k * C)
        p = torch.sigmoid(self.pixel_logits(theta, z))
        x = (torch.rand(p.shape, generator=gen, dtype=a.dtype, device=a.device) < p).to(a.dtype)
        return x, z

    def sample_posterior(self, theta: Params, x: Tensor, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Exact draws from p_θ(z | x_n) by enumeration, [*batch, N, k·C]."""
        return enumeration.sample_posterior(self, theta, x, batch, gen)


def fitted_encoder(model: CategoricalVAE, theta: Params, x: Tensor, proposal: CategoricalProposal,
                   gen: torch.Generator) -> tuple[CategoricalEncoder, Params]:
    """The ``categorical_encoder`` fitted to the centred, clipped log posterior marginals, then perturbed."""
    family = CategoricalEncoder(model.latent.dim, model.classes, x.shape[1], proposal.hidden)
    marginals = enumeration.posterior_marginals(model, theta, x)  # [N, k·C]
    log_m = torch.log(marginals.clamp_min(1e-300)).clamp_min(MIN_LOG_MARGINAL).reshape(x.shape[0], -1, model.classes)
    target_logits = (log_m - log_m.mean(-1, keepdim=True)).reshape(x.shape[0], -1)
    shared = BernoulliProposal(hidden=proposal.hidden, temperature=proposal.temperature, logit_noise=proposal.logit_noise)
    return family, fit_logits(family, x, target_logits, shared, gen)  # type: ignore[arg-type]  (same layout as the Bernoulli encoder)


def build(params: CategoricalVAEParams, proposal: CategoricalProposal, seed: int, dtype: torch.dtype = torch.float64,
          device: str | torch.device = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """The ``categorical_vae`` target: θ (and synthetic data) from ``make_generator(seed)``, the encoder fitted to
    the exact posterior marginals and perturbed with a generator derived from the seed; float64 on the CPU, then cast."""
    gen = make_generator(seed)
    d, x_np = binary_data("categorical_vae", data, params.data_dim)
    model = CategoricalVAE(d, params.latents, params.classes, params.decoder, params.hidden)
    theta = model.init_params(gen, torch.float64, params.weight_scale, params.bias_scale)
    x = model.sample_joint(theta, params.n_data, gen)[0] if data is None else torch.as_tensor(x_np)
    family, phi = fitted_encoder(model, theta, x, proposal, make_generator(derive_seed("categorical_proposal", seed)))
    cast = lambda p: {n: t.to(dtype=dtype, device=device) for n, t in p.items()}
    return ComposedTarget(model, family, x.to(dtype=dtype, device=device), cast(theta), cast(phi),
                          reference_builders=enumeration.reference_builders(params.reference_replicates), seed=seed)
