"""Factorised categorical variational family for k categorical latents with C classes each.

    q_φ(z | x_n) = Π_j Cat(z_j; softmax(ℓ_j(x_n))),   log q = Σ_j Σ_c z_jc log softmax(ℓ_j(x_n))_c,

with z stored one-hot and flattened, [..., N, k·C] (latent j in columns j·C .. j·C + C − 1), and logits
ℓ(x) [N, k·C] from the amortised ``categorical_encoder``: linear ℓ = A x + b (φ = A [k·C, d], b [k·C]), or
with ``hidden`` = h a one-hidden-layer tanh MLP ℓ = W2 tanh(W1 x + b1) + b2 (the layout of
:class:`gradbench.families.bernoulli.BernoulliEncoder` with k·C outputs, so it is fitted by the same
:func:`~gradbench.families.bernoulli.fit_logits`).

Capabilities {score, log_prob, enumerate, relaxed}: not reparameterisable. The one random draw is a
uniform u ~ U(0,1)^{[..., N, k·C]}; with Gumbel noise g = −log(−log u), z_j = onehot(argmax_c ℓ_jc + g_jc)
(the Gumbel-max trick), and the same g gives the Concrete / Gumbel-softmax relaxation softmax((ℓ_j + g_j)/τ)
(Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017), so relaxed and discrete estimators share common
random numbers. ``mode`` is onehot(argmax_c ℓ_jc), the most probable state of q.

Reference: Kool, van Hoof & Welling (2020), "Estimating gradients for discrete random variables by
sampling without replacement" (ICLR), the categorical VAE with k = 2 latents of C = 10 classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradbench.contracts import LatentSpace, Params
from gradbench.families.bernoulli import AmortisedLogits, amortised_logits_layout

CAPABILITIES = frozenset({"score", "log_prob", "enumerate", "relaxed", "logits", "gumbel_noise"})


def blocks(t: Tensor, classes: int) -> Tensor:
    """[..., k·C] → [..., k, C]."""
    return t.reshape(*t.shape[:-1], t.shape[-1] // classes, classes)


def categorical_log_pmf(z: Tensor, logits: Tensor, classes: int) -> Tensor:
    """Σ_j Σ_c z_jc log softmax(ℓ_j)_c for one-hot (or relaxed, on the simplex) z [..., k·C] → [...]."""
    return (blocks(z, classes) * torch.log_softmax(blocks(logits, classes), -1)).sum((-2, -1))


def gumbel(u: Tensor) -> Tensor:
    """g = −log(−log u), standard Gumbel noise from uniforms."""
    return -torch.log(-torch.log(u))


def one_hot_argmax(scores: Tensor, classes: int) -> Tensor:
    """onehot(argmax_c scores_jc), flattened [..., k·C]."""
    s = blocks(scores, classes)
    return torch.nn.functional.one_hot(s.argmax(-1), classes).to(scores.dtype).reshape(scores.shape)


class CategoricalEncoder(AmortisedLogits):
    """Amortised q_φ(z|x) = Π_j Cat(softmax(ℓ_j(x))), ℓ linear (A, b) or a tanh MLP (W1, b1, W2, b2)."""

    capabilities: frozenset[str] = CAPABILITIES

    def __init__(self, latents: int, classes: int, data_dim: int, hidden: int | None = None) -> None:
        self.latent = LatentSpace("categorical", latents, classes)
        self.layout = amortised_logits_layout(latents * classes, data_dim, hidden)
        self.classes, self.n_logits, self.data_dim, self.hidden = classes, latents * classes, data_dim, hidden

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        """u ~ U(0,1)^{[*shape, k·C]} (``shape`` ends with N), kept away from 0 so that −log(−log u) is finite."""
        u = torch.rand(*shape, self.latent.dim * self.classes, generator=gen, dtype=dtype, device=device)
        return u.clamp_min(torch.finfo(dtype).tiny)

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        """z = onehot(argmax_c ℓ_jc − log(−log u_jc)) (Gumbel-max), [..., N, k·C]."""
        return one_hot_argmax(self.logits(phi, x) + gumbel(noise), self.classes)

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        return categorical_log_pmf(z, self.logits(phi, x), self.classes)

    def mode(self, phi: Params, x: Tensor) -> Tensor:
        """The most probable state onehot(argmax ℓ_j), [N, k·C]."""
        return one_hot_argmax(self.logits(phi, x), self.classes)

    def probs(self, phi: Params, x: Tensor) -> Tensor:
        """softmax(ℓ_j) per latent, flattened [N, k·C]."""
        return torch.softmax(blocks(self.logits(phi, x), self.classes), -1).reshape(x.shape[0], -1)
