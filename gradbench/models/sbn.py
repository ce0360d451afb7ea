"""Sigmoid belief net (SBN): binary latents with exact enumerated references (docs/design.md §5.4, §7.2).

One or two stochastic layers, ``layers: [k1]`` or ``[k1, k2]`` (k1 next to the data, k2 on top):

    one layer:   z1 ~ Π_j Bern(σ(a_j)),                x | z1 ~ Π_i Bern(σ(f_x(z1)_i));
    two layers:  z2 ~ Π_j Bern(σ(a_j)),  z1 | z2 ~ Π_j Bern(σ(f_1(z2)_j)),  x | z1 as above,

with conditionals f either ``linear`` (f(u) = W u + b) or ``mlp`` (f(u) = V tanh(U u + c) + b, one
tanh hidden layer of width ``hidden``). The latent vector is z = [z1, z2] (k = k1 + k2 ≤ 16), stored
as 0/1 floats. θ = all weights, by name: ``prior_logits`` a [k_top]; ``z1_W``, ``z1_b`` (or
``z1_U``, ``z1_c``, ``z1_V``, ``z1_b``) for f_1; ``x_W``, ``x_b`` (or ``x_U``, ``x_c``, ``x_V``,
``x_b``) for f_x. log p(x, z) is the sum of the three Bernoulli log-pmfs, each
Σ_i [y_i log σ(ℓ_i) + (1 − y_i) log σ(−ℓ_i)] with ``logsigmoid`` (stable for any logit), a pure
function of θ (torch.func differentiates it) that broadcasts over the leading dimensions of z.

Target parameters (``build``): weight matrices N(0, weight_scale²/fan_in), biases and prior logits
N(0, bias_scale²), drawn in float64 on the CPU from ``make_generator(seed)``; data either given
(binary rows [N, d]) or drawn from the model at θ (``n_data`` rows of dimension ``data_dim``).
The variational family (``proposal:``, :class:`gradbench.families.bernoulli.BernoulliProposal`) is
fitted to the exact posterior marginals and then perturbed.

References (gradbench.references.enumeration): ∇θ log p(x), ∇θ/∇φ ELBO enumerated over the 2ᵏ
states; ∇θ/∇φ IWAE_K enumerated over K-tuples when small, else estimated with
``reference_replicates`` replicates. ``sample_posterior`` draws from the enumerated posterior, so the
``oracle`` estimator runs on this model.

Reference: Neal (1992), "Connectionist learning of belief networks", Artificial Intelligence 56.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gradbench.contracts import ComposedTarget, LatentSpace, Params
from gradbench.core import ParamGroup, ParamLayout
from gradbench.families.bernoulli import (
    BernoulliEncoder,
    BernoulliMeanField,
    BernoulliProposal,
    bernoulli_log_pmf,
    fit_logits,
    marginal_logits,
)
from gradbench.models.params import SBNParams  # torch-free schema
from gradbench.references import enumeration
from gradbench.seeding import derive_seed, make_generator

DESCRIPTION = ("sigmoid belief net (binary latents, 1–2 layers, linear or MLP conditionals): ∇θ log p(x), ∇θ/∇φ ELBO "
               "enumerated over 2^k states; exact posterior sampling; IWAE_K references enumerated or estimated")


PARAMS = SBNParams
PROPOSAL = BernoulliProposal


class SBN:
    """p_θ(x, z) of a sigmoid belief net; implements :class:`gradbench.contracts.Model`."""

    batched_data = True  # log_joint and weighted_grad_log_joint broadcast x [..., N, d] against z [..., N, k]
    capabilities = frozenset({"exact_posterior"})  # sample_posterior: exact, by enumeration

    def __init__(self, data_dim: int, layers: tuple[int, ...], conditionals: str = "linear", hidden: int = 16) -> None:
        self.data_dim, self.layers, self.conditionals = data_dim, tuple(layers), conditionals
        self.hidden = hidden if conditionals == "mlp" else 0
        self.latent = LatentSpace("binary", sum(self.layers))
        k1, k_top = self.layers[0], self.layers[-1]
        groups = [ParamGroup("prior_logits", (k_top,))]
        if len(self.layers) == 2:
            groups += self._conditional("z1", k_top, k1)
        groups += self._conditional("x", k1, data_dim)
        self.layout = ParamLayout(tuple(groups))

    def _conditional(self, name: str, n_in: int, n_out: int) -> list[ParamGroup]:
        if self.conditionals == "linear":
            return [ParamGroup(f"{name}_W", (n_out, n_in)), ParamGroup(f"{name}_b", (n_out,))]
        h = self.hidden
        return [ParamGroup(f"{name}_U", (h, n_in)), ParamGroup(f"{name}_c", (h,)),
                ParamGroup(f"{name}_V", (n_out, h)), ParamGroup(f"{name}_b", (n_out,))]

    def _logits(self, theta: Params, name: str, u: Tensor) -> Tensor:
        if self.conditionals == "linear":
            return u @ theta[f"{name}_W"].T + theta[f"{name}_b"]
        return torch.tanh(u @ theta[f"{name}_U"].T + theta[f"{name}_c"]) @ theta[f"{name}_V"].T + theta[f"{name}_b"]

    def init_params(self, gen: torch.Generator, dtype: torch.dtype, weight_scale: float = 2.0, bias_scale: float = 1.0) -> Params:
        """Weights N(0, weight_scale²/fan_in), biases N(0, bias_scale²), drawn in float64 then cast."""
        out = {}
        for g in self.layout.groups:
            std = weight_scale / g.shape[1] ** 0.5 if len(g.shape) == 2 else bias_scale
            out[g.name] = std * torch.randn(g.shape, generator=gen, dtype=torch.float64)
        return {n: t.to(dtype) for n, t in out.items()}

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(z1, top layer) of z [..., k]; one layer: both are z."""
        k1 = self.layers[0]
        return z[..., :k1], z[..., k1:] if len(self.layers) == 2 else z

    def log_prior(self, theta: Params, z: Tensor) -> Tensor:
        """log p_θ(z) [...]."""
        z1, top = self.split(z)
        lp = bernoulli_log_pmf(top, theta["prior_logits"])
        if len(self.layers) == 2:
            lp = lp + bernoulli_log_pmf(z1, self._logits(theta, "z1", top))
        return lp

    def log_lik(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n | z_n) for z [..., N, k] → [..., N]."""
        return bernoulli_log_pmf(x, self._logits(theta, "x", self.split(z)[0]))

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n, z_n) for z [..., N, k] → [..., N]."""
        return self.log_prior(theta, z) + self.log_lik(theta, x, z)

    def weighted_grad_log_joint(self, theta: Params, x: Tensor, z: Tensor, weights: Tensor) -> Tensor:
        """Σ_{s,n} weights[..., s, n] ∇θ log p(x_n, z[..., s, n]) → [..., P], in closed form (the fast path
        :class:`~gradbench.contracts.ComposedTarget` uses instead of vmap(grad); tested equal to it).

        Every Bernoulli layer y | u with logits ℓ = f(u) has ∂ log p/∂ℓ = y − σ(ℓ); with δ = w (y − σ(ℓ)):
        linear f: ∇W = Σ δ uᵀ, ∇b = Σ δ; MLP f = V tanh(U u + c) + b, h = tanh(U u + c):
        ∇V = Σ δ hᵀ, ∇b = Σ δ, δ_h = (Vᵀ δ) ⊙ (1 − h²), ∇U = Σ δ_h uᵀ, ∇c = Σ δ_h; prior: ∇a = Σ w (z_top − σ(a)).
        """
        shape = torch.broadcast_shapes(z.shape[:-1], weights.shape)
        batch = shape[:-2]
        B, M = math.prod(batch), shape[-2] * shape[-1]
        zb = z.expand(*shape, z.shape[-1]).reshape(B, M, z.shape[-1])
        w = weights.expand(shape).reshape(B, M, 1)
        d = x.shape[-1]  # x [N, d], or batched [..., N, d] (``batched_data``: per-row data subsets)
        xb = x.expand(*shape[-2:], d).reshape(1, M, d) if x.dim() == 2 else x.expand(*shape, d).reshape(B, M, d)
        z1, top = self.split(zb)
        grads = {"prior_logits": (w * (top - torch.sigmoid(theta["prior_logits"]))).sum(1)}
        if len(self.layers) == 2:
            grads.update(self._layer_grad(theta, "z1", top, z1, w))
        grads.update(self._layer_grad(theta, "x", z1, xb, w))
        return self.layout.flatten(grads, batch=(B,)).reshape(*batch, self.layout.size)

    def _layer_grad(self, theta: Params, name: str, u: Tensor, y: Tensor, w: Tensor) -> Params:
        """Σ_m w_m ∇ log Bern(y_m; σ(f(u_m))) for u [B, M, n_in], y [B or 1, M, n_out], w [B, M, 1]."""
        if self.conditionals == "linear":
            delta = w * (y - torch.sigmoid(u @ theta[f"{name}_W"].T + theta[f"{name}_b"]))
            return {f"{name}_W": delta.transpose(1, 2) @ u, f"{name}_b": delta.sum(1)}
        h = torch.tanh(u @ theta[f"{name}_U"].T + theta[f"{name}_c"])
        delta = w * (y - torch.sigmoid(h @ theta[f"{name}_V"].T + theta[f"{name}_b"]))
        delta_h = (delta @ theta[f"{name}_V"]) * (1 - h * h)
        return {f"{name}_U": delta_h.transpose(1, 2) @ u, f"{name}_c": delta_h.sum(1),
                f"{name}_V": delta.transpose(1, 2) @ h, f"{name}_b": delta.sum(1)}

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Ancestral sampling, top-down, y = 1[u < σ(ℓ)]: (x [n, d], z [n, k])."""
        ref = theta["prior_logits"]

        def bern(logits: Tensor) -> Tensor:
            return (torch.rand(logits.shape, generator=gen, dtype=ref.dtype, device=ref.device) < torch.sigmoid(logits)).to(ref.dtype)

        top = bern(ref.expand(n, -1))
        z1 = bern(self._logits(theta, "z1", top)) if len(self.layers) == 2 else top
        x = bern(self._logits(theta, "x", z1))
        z = torch.cat([z1, top], -1) if len(self.layers) == 2 else z1
        return x, z

    def sample_posterior(self, theta: Params, x: Tensor, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
        """Exact draws from p_θ(z | x_n) by enumeration, [*batch, N, k]."""
        return enumeration.sample_posterior(self, theta, x, batch, gen)


def binary_data(model: str, data: np.ndarray | None, data_dim: int | None) -> tuple[int, np.ndarray | None]:
    """(d, the data as float64 [N, d] or None) for a model of binary observations: synthetic data (None) needs
    ``data_dim``; given data must be 0/1 rows and agree with ``data_dim`` where it is set. Errors name the model."""
    if data is None:
        if data_dim is None:
            raise ValueError(f"{model}: synthetic data needs data_dim")
        return data_dim, None
    x_np = np.asarray(data, dtype=np.float64)
    if x_np.ndim != 2 or not np.isin(x_np, (0.0, 1.0)).all():
        raise ValueError(f"{model}: data must be binary rows [N, d] (binarize it: data: {{..., binarize: dynamic}})")
    d = x_np.shape[1]
    if data_dim is not None and data_dim != d:
        raise ValueError(f"{model}: data_dim = {data_dim} but the data has {d} columns")
    return d, x_np


def build(params: SBNParams, proposal: BernoulliProposal, seed: int, dtype: torch.dtype = torch.float64,
          device: str | torch.device = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """The ``sbn`` target: θ (and synthetic data) from ``make_generator(seed)``, q fitted to the exact
    posterior marginals and perturbed with a generator derived from the seed; all in float64 on the CPU,
    then cast to ``dtype``/``device``."""
    gen = make_generator(seed)
    d, x_np = binary_data("sbn", data, params.data_dim)
    model = SBN(d, tuple(params.layers), params.conditionals, params.hidden)
    theta = model.init_params(gen, torch.float64, params.weight_scale, params.bias_scale)
    x = model.sample_joint(theta, params.n_data, gen)[0] if data is None else torch.as_tensor(x_np)
    k, N = model.latent.dim, x.shape[0]
    if proposal.family == "bernoulli_encoder":
        family: BernoulliEncoder | BernoulliMeanField = BernoulliEncoder(k, d, proposal.hidden)
    else:
        if proposal.hidden is not None:
            raise ValueError("bernoulli_mean_field has no hidden layer (hidden: null)")
        family = BernoulliMeanField(k, N)
    target_logits = marginal_logits(enumeration.posterior_marginals(model, theta, x))
    phi = fit_logits(family, x, target_logits, proposal, make_generator(derive_seed("sbn_proposal", seed)))
    cast = lambda p: {n: t.to(dtype=dtype, device=device) for n, t in p.items()}
    return ComposedTarget(model, family, x.to(dtype=dtype, device=device), cast(theta), cast(phi),
                          reference_builders=enumeration.reference_builders(params.reference_replicates), seed=seed)
