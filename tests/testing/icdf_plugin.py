"""A plugin written the way a new user writes one: a categorical encoder sampled by inverse CDF (one uniform per
latent, not C Gumbel uniforms), on the categorical VAE. It declares ``logits`` (its probabilities are
softmax(ℓ_j)) but not ``gumbel_noise``: estimators that draw through the family's sampler (rloo, nvil,
sum_and_sample) must be unbiased on it, and those that transform the noise themselves must be refused by validate.
Also a variant with no ``logits`` at all (``categorical_icdf_nologits``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradbench import registry
from gradbench.contracts import ComposedTarget, Params
from gradbench.families.categorical import CategoricalEncoder, blocks
from gradbench.models import categorical
from gradbench.models.params import CategoricalProposal, CategoricalVAEParams

CAPS = frozenset({"score", "log_prob", "enumerate", "logits"})


class InverseCDFCategorical(CategoricalEncoder):
    """q_φ(z|x) = Π_j Cat(softmax(ℓ_j(x))); z_j = the first class c with u_j < Σ_{c' ≤ c} softmax(ℓ_j)_{c'}."""

    capabilities = CAPS

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
        """u ~ U(0,1)^{[*shape, k]}: one uniform per latent."""
        return torch.rand(*shape, self.latent.dim, generator=gen, dtype=dtype, device=device)

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        cdf = torch.softmax(blocks(self.logits(phi, x), self.classes), -1).cumsum(-1)  # [N, k, C]
        idx = (noise.unsqueeze(-1) >= cdf).sum(-1).clamp_max(self.classes - 1)  # [..., N, k]
        return torch.nn.functional.one_hot(idx, self.classes).to(noise.dtype).flatten(-2)


class NoLogits(InverseCDFCategorical):
    """The same q without declaring ``logits``."""

    capabilities = frozenset({"score", "log_prob", "enumerate"})


def _build(family_cls: type) -> Any:
    def build(params: CategoricalVAEParams, proposal: CategoricalProposal, seed: int,
              dtype: torch.dtype = torch.float64, device: str = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
        t = categorical.build(params, proposal, seed, dtype, device, data)
        fam = t.family
        return dataclasses.replace(t, family=family_cls(fam.latent.dim, fam.classes, fam.data_dim, fam.hidden))
    return build


PROVIDES = frozenset({"categorical_latent", "exact_posterior", "iwae_reference", "state_probabilities"})
registry.register(
    registry.Model("categorical_icdf", _build(InverseCDFCategorical), CategoricalVAEParams, CategoricalProposal,
                   "categorical VAE with an inverse-CDF categorical encoder (test plugin)", CAPS | PROVIDES),
    registry.Model("categorical_icdf_nologits", _build(NoLogits), CategoricalVAEParams, CategoricalProposal,
                   "the same without declaring logits (test plugin)", NoLogits.capabilities | PROVIDES - {"state_probabilities"}),
)
