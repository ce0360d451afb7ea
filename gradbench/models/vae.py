"""VAE decoder: a nonlinear latent-variable model whose gradients are exact by quadrature (docs/design.md §5.3, §7.3).

Model: z ~ N(0, I_k); an MLP decoder f_θ maps z to the natural parameter of x | z,
    h_0 = z,  h_l = a(W_{l−1} h_{l−1} + b_{l−1}) (l = 1..L, hidden widths ``hidden``),  f_θ(z) = W_L h_L + b_L,
with a = tanh (default) or softplus on the hidden units and none on the output, and
    bernoulli: x_j | z ~ Bern(σ(f_j(z))),  log p(x | z) = Σ_j x_j f_j − softplus(f_j)   (x ∈ [0, 1], grey levels allowed);
    gaussian:  x_j | z ~ N(f_j(z), σ²) with a *fixed* σ = ``noise_std`` (not part of θ).
θ = all decoder weights, ParamLayout groups ``W0, b0, W1, b1, …, WL, bL`` (W_l has shape [out, in]).
Initial parameters (drawn from the seed in float64): W_l ~ N(0, weight_scale² / fan_in), b_l ~ N(0, bias_scale²).

``log_joint(θ, x, z)`` is pure in θ and broadcasts over leading batch dimensions of z ([..., N, k] → [..., N]),
so ``torch.func.vmap(torch.func.grad(...))`` gives per-replicate gradients. The build function composes the model
with a Gaussian family (``gradbench.families.gaussian``) at its Laplace approximation (with controlled mismatch;
fitted lazily, on first use of φ — ``train`` cells never use it), and attaches the quadrature references (``gradbench.references.quadrature``): exact up to a reported quadrature
error for latent_dim ≤ 3, estimated beyond.

Reference: Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gradbench.contracts import ComposedTarget, LatentSpace, Params
from gradbench.core import ParamGroup, ParamLayout
from gradbench.families import gaussian
from gradbench.models.params import VAEParams
from gradbench.references import quadrature
from gradbench.seeding import derive_seed, make_generator

LOG_2PI = math.log(2 * math.pi)
DESCRIPTION = ("VAE decoder (MLP, Bernoulli or Gaussian likelihood) with a Gaussian mean-field or amortised encoder; "
               "adaptive Gauss–Hermite references (latent_dim ≤ 3)")

# per-replicate ∇W = Σ δ hᵀ [fan_out, fan_in] by bmm: with fan_in ≤ 8 the batched GEMM has a narrow output and is
# slower than computing ∇Wᵀ [fan_in, fan_out] and copying it (MKL, B = 200, S = 16, fan_out 200, float64 / float32:
# 3.0 / 5.1× at fan_in 2, 1.5 / 2.4× at 8, but 0.83 / 0.80× at 20; reports/speed/fused_vae_kernels.py and
# reports/speed/README.md, "Wave 5")
_NARROW_FAN_IN = 8
_CPU_TANH_VIA_SIGMOID = True  # see _tanh_from_doubled; reports/speed/fused_vae_before_after.py flips both switches


def _tanh_from_doubled(u2: Tensor) -> Tensor:
    """tanh(u) = 2σ(2u) − 1, given 2u, computed in place over ``u2``.

    On the CPU torch's tanh is 4–7× slower than its sigmoid (float64 and float32; AMD EPYC, AVX-512), and the decoder's
    first hidden layer is the largest elementwise pass of the fused gradient; the factor 2 is folded into the
    layer's (small) weights. Largest absolute error against float64 tanh on a grid of 2·10⁶ points in [−30, 30]:
    1.5 ε in float64 and in float32 (ε = machine epsilon). Only the hand-written gradient uses it, never autograd.
    """
    return torch.sigmoid_(u2).mul_(2).sub_(1)


@dataclass
class VAE:
    """p_θ(x, z) with an MLP decoder; stateless apart from its architecture (pure in θ)."""

    batched_data: ClassVar[bool] = True  # log_joint and the weighted gradient broadcast x [..., N, d] against z
    capabilities: ClassVar[frozenset[str]] = frozenset({"analytic_kl"})  # log_lik under a N(0, I) prior

    latent_dim: int
    data_dim: int
    hidden: tuple[int, ...] = (16,)
    activation: str = "tanh"
    likelihood: str = "bernoulli"
    noise_std: float = 1.0

    def __post_init__(self) -> None:
        widths = (self.latent_dim, *self.hidden, self.data_dim)
        groups: list[ParamGroup] = []
        for l, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            groups += [ParamGroup(f"W{l}", (fan_out, fan_in)), ParamGroup(f"b{l}", (fan_out,))]
        self.latent = LatentSpace("real", self.latent_dim)
        self.layout = ParamLayout(tuple(groups))

    @property
    def n_layers(self) -> int:
        return len(self.hidden) + 1

    def init_params(self, gen: torch.Generator, dtype: torch.dtype = torch.float64, weight_scale: float = 1.0,
                    bias_scale: float = 0.5) -> Params:
        """W_l ~ N(0, weight_scale²/fan_in), b_l ~ N(0, bias_scale²), drawn in float64 and cast."""
        theta: Params = {}
        for g in self.layout.groups:
            scale = weight_scale / math.sqrt(g.shape[1]) if g.name.startswith("W") else bias_scale
            theta[g.name] = (scale * torch.randn(g.shape, generator=gen, dtype=torch.float64)).to(dtype)
        return theta

    # -- densities (pure in θ; z [..., N, k]) -----------------------------------------------------
    def decode(self, theta: Params, z: Tensor) -> Tensor:
        """f_θ(z) [..., N, d]: logits (bernoulli) or means (gaussian)."""
        h = z
        act = torch.tanh if self.activation == "tanh" else F.softplus
        for l in range(self.n_layers):
            h = F.linear(h, theta[f"W{l}"], theta[f"b{l}"])  # h Wᵀ + b with the bias fused into the matmul
            if l < self.n_layers - 1:
                h = act(h)
        return h

    def log_lik(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n | z_n) [..., N]."""
        return self._log_lik_from(self.decode(theta, z), x)

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z_n; 0, I) [..., N]."""
        return -0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * LOG_2PI

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x_n, z_n) = log p(z_n) + log p_θ(x_n | z_n), [..., N]."""
        return self.log_prior(z) + self.log_lik(theta, x, z)

    def weighted_grad_log_joint(self, theta: Params, x: Tensor, z: Tensor, weights: Tensor) -> Tensor:
        """Σ_{s,n} weights[..., s, n] ∇θ log p(x_n, z[..., s, n]) for z [..., S, N, k] → [..., P] (fast path).

        Hand-written backpropagation, batched over the leading dims (one pass, no per-replicate copies of θ):
        with δ_L = w (x − σ(f)) (bernoulli) or w (x − f)/σ² (gaussian), ∇W_l = Σ δ_l h_lᵀ, ∇b_l = Σ δ_l,
        δ_{l−1} = (δ_l W_l) ⊙ a′(pre-activation), a′ = 1 − tanh² or σ (softplus). The prior does not depend
        on θ. Equal to ``torch.func.vmap(grad(...))`` of :meth:`log_joint` (tested); used by ComposedTarget.
        """
        return self.log_joint_with_grad(theta, x, z)[1](weights)

    def log_joint_with_grad(self, theta: Params, x: Tensor, z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """(log p(x_n, z_n) [..., N], weights ↦ :meth:`weighted_grad_log_joint`) sharing one forward pass."""
        hs, pres, f = [z], [], None
        h = z
        for l in range(self.n_layers):
            W, b = theta[f"W{l}"], theta[f"b{l}"]
            if l == self.n_layers - 1:
                f = F.linear(h, W, b)  # h Wᵀ + b, bias fused (≈ 25 % faster than @ then +)
                break
            if self.activation == "tanh" and z.device.type == "cpu" and _CPU_TANH_VIA_SIGMOID:
                h = _tanh_from_doubled(F.linear(h, 2 * W, 2 * b))
            else:
                pre = F.linear(h, W, b)
                h = torch.tanh(pre) if self.activation == "tanh" else F.softplus(pre)
                pres.append(pre)
            hs.append(h)
        assert f is not None
        log_p = self.log_prior(z) + self._log_lik_from(f, x)

        def weighted_grad(weights: Tensor) -> Tensor:
            shape = torch.broadcast_shapes(z.shape[:-1], weights.shape)  # [..., S, N]
            batch = shape[:-2]
            B = math.prod(batch)

            def flat(t: Tensor) -> Tensor:
                return t.expand(*shape, t.shape[-1]).reshape(B, *shape[-2:], t.shape[-1])

            w = weights.expand(shape).reshape(B, *shape[-2:]).unsqueeze(-1)
            ff = flat(f)
            delta = w * (x - torch.sigmoid(ff)) if self.likelihood == "bernoulli" else w * (x - ff) / self.noise_std**2
            # every group is written in place into its block of the [B, P] result (no concatenation copy)
            out = delta.new_empty(B, self.layout.size)
            where = self.layout.slices()
            for l in range(self.n_layers - 1, -1, -1):
                # Σ_{s,n} δ hᵀ per replicate as one bmm on [B, S·N, ·] views (no permuted copies, unlike einsum)
                d2, h2 = delta.reshape(B, -1, delta.shape[-1]), flat(hs[l]).reshape(B, -1, hs[l].shape[-1])
                fan_out, fan_in = d2.shape[-1], h2.shape[-1]
                grad_W = out[:, where[f"W{l}"]].view(B, fan_out, fan_in)
                if fan_in <= _NARROW_FAN_IN < fan_out:  # e.g. W0 at latent_dim 2: ∇Wᵀ per replicate, then one copy
                    grad_W.copy_(torch.bmm(h2.transpose(1, 2), d2).transpose(1, 2))
                else:
                    torch.bmm(d2.transpose(1, 2), h2, out=grad_W)
                torch.sum(d2, 1, out=out[:, where[f"b{l}"]])
                if l > 0:
                    back = delta @ theta[f"W{l}"]
                    delta = (torch.ops.aten.tanh_backward(back, flat(hs[l])) if self.activation == "tanh"  # δ (1 − h²)
                             else back * torch.sigmoid(flat(pres[l - 1])))
            return out.reshape(*batch, self.layout.size)

        return log_p, weighted_grad

    def _log_lik_from(self, f: Tensor, x: Tensor) -> Tensor:
        if self.likelihood == "bernoulli":
            return (x * f - F.softplus(f)).sum(-1)
        s = self.noise_std
        return -0.5 * (((x - f) / s) ** 2).sum(-1) - self.data_dim * (math.log(s) + 0.5 * LOG_2PI)

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x [n, d], z [n, k]) ~ p_θ (drawn with the dtype of θ on the generator's device)."""
        dtype = theta["b0"].dtype
        z = torch.randn(n, self.latent_dim, generator=gen, dtype=dtype, device=gen.device)
        f = self.decode(theta, z)
        if self.likelihood == "bernoulli":
            x = (torch.rand(f.shape, generator=gen, dtype=dtype, device=gen.device) < torch.sigmoid(f)).to(dtype)
        else:
            x = f + self.noise_std * torch.randn(f.shape, generator=gen, dtype=dtype, device=gen.device)
        return x, z


PARAMS = VAEParams
PROPOSAL = gaussian.GaussianProposal


class LazyPhiTarget(ComposedTarget):
    """A :class:`ComposedTarget` whose φ is fitted on first access of ``target.phi``.

    The family's structure (latent space, layout, capabilities) is known without the fit, so the target is
    usable at once; the Laplace fit to every data point (seconds to minutes on real data) runs only when a cell
    reads φ. ``train`` cells never do (they train a fresh encoder), so they skip it. ``at(phi=…)`` and
    ``dataclasses.replace`` give an ordinary, eager target.
    """

    @classmethod
    def pending(cls, fit_phi: Callable[[], Params], model: VAE, family: gaussian._DiagonalGaussian, x: Tensor,
                theta: Params, **kwargs: Any) -> LazyPhiTarget:
        target = cls(model, family, x, theta, {}, **kwargs)
        del target.__dict__["phi"]  # so that reading ``phi`` falls through to __getattr__ until the fit
        target.__dict__["_fit_phi"] = fit_phi
        return target

    @property
    def phi_fitted(self) -> bool:
        return "phi" in self.__dict__

    def __getattr__(self, name: str) -> Any:  # only called for attributes not found the normal way
        fit = self.__dict__.get("_fit_phi")
        if name != "phi" or fit is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        phi = {k: v.detach() for k, v in fit().items()}
        self.__dict__["phi"] = phi
        del self.__dict__["_fit_phi"]
        return phi


def family_of(model: VAE, x: Tensor, proposal: gaussian.GaussianProposal) -> gaussian._DiagonalGaussian:
    """The family named by ``proposal`` (its structure only; φ comes from :func:`gaussian.build_family`)."""
    k, (N, d) = model.latent_dim, x.shape
    if proposal.family == "gaussian_mean_field":
        return gaussian.GaussianMeanField(k, N)
    return gaussian.GaussianEncoder(k, d, tuple(proposal.encoder_hidden))


def build(params: VAEParams, proposal: gaussian.GaussianProposal, seed: int, dtype: torch.dtype = torch.float64,
          device: str | torch.device = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """The ``vae`` target: θ (and synthetic data unless ``data`` is given) from ``seed``; the family at its
    Laplace-based starting point with the proposal's mismatch, fitted lazily on first use of φ
    (:class:`LazyPhiTarget`); quadrature references for latent_dim ≤ 3.

    Everything is computed in float64 on the CPU and then cast to ``dtype``/``device``.
    """
    gen = make_generator(seed)
    f64 = torch.float64
    if data is not None:
        x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        if x.ndim != 2:
            raise ValueError(f"vae data must be [N, d], got shape {tuple(x.shape)}")
        if params.data_dim is not None and params.data_dim != x.shape[1]:
            raise ValueError(f"vae: data_dim = {params.data_dim} but the data have {x.shape[1]} columns")
        d = x.shape[1]
    else:
        if params.data_dim is None:
            raise ValueError("vae: synthetic data need data_dim")
        d = params.data_dim
    model = VAE(params.latent_dim, d, tuple(params.hidden), params.activation, params.likelihood, params.noise_std)
    theta = model.init_params(gen, f64, params.weight_scale, params.bias_scale)
    if data is None:
        x, _ = model.sample_joint(theta, params.n_data, gen)
    builders = quadrature.reference_builders(params.latent_dim, nodes=params.quadrature_nodes,
                                             replicates=params.reference_replicates, seed=derive_seed(seed, "vae-reference"))
    cast = lambda t: t.to(dtype=dtype, device=device)

    def fit_phi() -> Params:
        _, phi = gaussian.build_family(model, theta, x, proposal, make_generator(derive_seed(seed, "vae-family")))
        return {k: cast(v) for k, v in phi.items()}

    return LazyPhiTarget.pending(fit_phi, model, family_of(model, x, proposal), cast(x), {k: cast(v) for k, v in theta.items()},
                                 reference_builders=builders, seed=seed)
