"""The REBAR/RELAX toy problem (Tucker et al. 2017, §6.1; Grathwohl et al. 2018, §6.1) as a target.

    minimise over φ ∈ ℝᴰ:   L(φ) = E_{b ~ q_φ} f(b),   q_φ(b) = Π_j Bern(b_j; σ(φ_j)),   f(b) = Σ_j (b_j − t)²,

with exact gradient ∂L/∂φ_j = [(1 − t)² − t²] σ(φ_j)(1 − σ(φ_j)) = (1 − 2t) σ(φ_j)(1 − σ(φ_j)) (at t = 0.499,
φ = 0: 5·10⁻⁴ per coordinate, tiny next to the single-sample noise — the point of the problem).

As a target: one "data point" (x = [[0]], N = 1), the family :class:`BernoulliMeanField` (φ = ``logits``
[1, D]), and ``signal(b)`` = f(b) — the integrand every discrete estimator differentiates
(``gradbench.estimators.discrete``). On the SBN the integrand is f = log p(x, b) − log q(b|x) and its
expectation is the ELBO, so the toy reuses the objective key ``phi_elbo``: **on this target ``phi_elbo``
means ∇φ E_q f(b)** (no contract change). Its reference is the closed form above, also checked by
enumerating the 2ᴰ states in the tests. ``log_joint`` is overridden to f(b) + log q_φ(b) (φ fixed) so
that generic score-function code sees the learning signal log p − log q = f. The model part is a placeholder with θ = {t} whose
``log_joint`` is −f (so generic code that calls it runs); no θ-objective has a reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradbench.contracts import LatentSpace, Objective, Params
from gradbench.core import ParamGroup, ParamLayout, Reference
from gradbench.families.bernoulli import BernoulliMeanField
from gradbench.models.params import BernoulliToyParams, BernoulliToyProposal
from gradbench.target import ComposedTarget

DESCRIPTION = "REBAR/RELAX toy: min_φ E_{b~Bern(σ(φ))} Σ_j (b_j − t)², exact ∇φ = (1 − 2t)σ(φ)(1 − σ(φ))"
PARAMS = BernoulliToyParams
PROPOSAL = BernoulliToyProposal


class ToyLoss:
    """Placeholder model over b ∈ {0,1}ᴰ: θ = {t [D]}, log_joint = −Σ_j (b_j − t_j)² (not a density)."""

    def __init__(self, dim: int) -> None:
        self.latent = LatentSpace("binary", dim)
        self.layout = ParamLayout((ParamGroup("t", (dim,)),))

    def init_params(self, gen: torch.Generator, dtype: torch.dtype) -> Params:
        return {"t": torch.full((self.latent.dim,), 0.499, dtype=dtype)}

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        return -((z - theta["t"]) ** 2).sum(-1)

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError("the toy loss is not a generative model")


def exact_gradient(logits: Tensor, t: Tensor | float) -> Tensor:
    """∂/∂φ_j E f(b) = (1 − 2t) σ(φ_j)(1 − σ(φ_j))."""
    p = torch.sigmoid(logits)
    return (1 - 2 * t) * p * (1 - p)


def _toy_reference(target: ComposedTarget, objective: Objective) -> Reference:
    return Reference(exact_gradient(target.phi["logits"], target.theta["t"]).flatten(), "exact")


class BernoulliToyTarget(ComposedTarget):
    """The toy as a :class:`ComposedTarget` whose ``signal`` is the loss f(b) (also for relaxed b ∈ [0,1]ᴰ)."""

    def signal(self, b: Tensor) -> Tensor:
        """f(b) = Σ_j (b_j − t_j)², [..., N]."""
        return ((b - self.theta["t"]) ** 2).sum(-1)

    def log_joint(self, z: Tensor) -> Tensor:
        """A pseudo log-joint f(b) + log q_φ(b) (φ the target's, held fixed), so that the learning signal
        log p − log q of the generic score estimators (``reinforce`` with ``kl: mc``) is exactly f."""
        return self.signal(z) + self.log_q(self.phi, z)


def build(params: BernoulliToyParams, proposal: BernoulliToyProposal | None = None, seed: int = 0,
          dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", data: object = None) -> BernoulliToyTarget:
    """The target at φ_j = logit + logit_spread·(j/(D−1) − ½) (deterministic: the seed is unused)."""
    D = params.dim
    offsets = torch.linspace(-0.5, 0.5, D, dtype=torch.float64) if D > 1 else torch.zeros(1, dtype=torch.float64)
    logits = (params.logit + params.logit_spread * offsets).reshape(1, D)
    t = torch.full((D,), params.t, dtype=torch.float64)
    cast = lambda v: v.to(dtype=dtype, device=device)
    return BernoulliToyTarget(ToyLoss(D), BernoulliMeanField(D, 1), cast(torch.zeros(1, 1)), {"t": cast(t)},
                              {"logits": cast(logits)}, reference_builders={"phi_elbo": _toy_reference}, seed=seed)


def relaxed_expected_gradient(logit: float, t: float, tau: float, straight_through: bool = False,
                              nodes: int = 400) -> tuple[float, float]:
    """E_u ∂ℓ f(b̃) of the one-coordinate Gumbel-softmax (b̃ = s) or straight-through (b̃ = H(z) forward) gradient,
    s = σ(z/τ), z = ℓ − logit u:  E_u [2(b̃ − t) s(1 − s)/τ], by Gauss–Legendre on u ∈ (0, σ(ℓ)) and (σ(ℓ), 1)
    (the integrand is smooth on each piece). Returns (value, error bound), the bound being the change
    from ``nodes`` to 2·``nodes`` nodes. The exact biased expectation these estimators follow, for their
    relative bias on the toy."""
    import numpy as np

    def integral(n: int) -> float:
        x, w = np.polynomial.legendre.leggauss(n)
        cut = 1.0 / (1.0 + np.exp(-logit))
        total = 0.0
        for a, b in ((0.0, cut), (cut, 1.0)):
            u = 0.5 * (b - a) * x + 0.5 * (a + b)
            z = logit - np.log(u) + np.log1p(-u)
            s = 1.0 / (1.0 + np.exp(-z / tau))
            fwd = (z > 0).astype(float) if straight_through else s
            total += 0.5 * (b - a) * float(np.sum(w * 2 * (fwd - t) * s * (1 - s) / tau))
        return total

    coarse, fine = integral(nodes), integral(2 * nodes)
    return fine, abs(fine - coarse)
