"""A complete gradbench plugin: a model, a variational family, an exact reference, registered from outside.

Model ("factor", a one-factor analyser with a heavy prior scale): z ~ N(0, I_k),
x | z ~ N(A z + b, diag(exp(2 log_s))), θ = (A, b, log_s). Its marginal is Gaussian,
x ~ N(b, AAᵀ + diag(exp(2 log_s))), so ∇θ log p(x) is exact: autograd of the closed-form marginal.
Family ("shifted_prior"): q_φ(z | x_n) = N(m_n, diag(exp(2 ℓ))) with per-datapoint means m [N, k] and one
shared log-std ℓ [k]: reparameterisable, scoreable, with a log density.

Use it from a suite (this folder on PYTHONPATH, or installed with an entry point in the group
``gradbench.models``):

```yaml
plugins: [my_model]
targets:
  - model: factor
    params: {data_dim: 4, latent_dim: 2, n_data: 3}
    proposal: {mean_shift: 0.3}
```

or from the command line: ``gradbench --plugin my_model show factor`` / ``validate`` / ``run``. Check it against the
contract with the conformance kit (``gradbench.testing``; ``tests/testing/test_kit.py`` runs exactly this)::

    check_model("factor", {"n_data": 2})        # ∇θ log p(x) vs finite differences of log_marginal, float64 references
    t = build("factor", {"n_data": 2}, {"mean_shift": 0.3})
    check_family(t.family, t.x, t.phi)          # same noise → same sample; E_q ∇φ log q = 0
    check_estimator("coupled_isir", t, {"K": 8}, R=1000, unbiased=True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from gradbench import registry
from gradbench.contracts import LOG_MARGINAL, ComposedTarget, LatentSpace, Objective, ParamGroup, ParamLayout, Params
from gradbench.core import Reference
from gradbench.seeding import make_generator

LOG_2PI = math.log(2 * math.pi)


class FactorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    data_dim: int = Field(4, gt=0, description="d, dimension of x")
    latent_dim: int = Field(2, gt=0, description="k, dimension of z")
    n_data: int = Field(3, gt=0, description="N, data points (synthetic)")


class ShiftedPriorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    mean_shift: float = Field(0.0, description="added to every coordinate of the exact posterior mean")


class Factor:
    """p_θ(x, z) = N(z; 0, I) N(x; A z + b, diag(exp(2 log_s))) — pure in θ."""

    def __init__(self, d: int, k: int) -> None:
        self.latent = LatentSpace("real", k)
        self.layout = ParamLayout((ParamGroup("A", (d, k)), ParamGroup("b", (d,)), ParamGroup("log_s", (d,))))

    def init_params(self, gen: torch.Generator, dtype: torch.dtype) -> Params:
        d, k = self.layout.groups[0].shape
        return {"A": torch.randn(d, k, generator=gen, dtype=dtype), "b": torch.randn(d, generator=gen, dtype=dtype),
                "log_s": 0.3 * torch.randn(d, generator=gen, dtype=dtype)}

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        mean = z @ theta["A"].T + theta["b"]
        u = (x - mean) * torch.exp(-theta["log_s"])
        log_lik = (-0.5 * u**2 - theta["log_s"]).sum(-1) - 0.5 * x.shape[-1] * LOG_2PI
        return log_lik - 0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        A = theta["A"]
        z = torch.randn(n, A.shape[1], generator=gen, dtype=A.dtype)
        x = z @ A.T + theta["b"] + torch.exp(theta["log_s"]) * torch.randn(n, A.shape[0], generator=gen, dtype=A.dtype)
        return x, z

    def log_marginal(self, theta: Params, x: Tensor) -> Tensor:
        """Σ_n log N(x_n; b, AAᵀ + diag(exp(2 log_s)))."""
        C = theta["A"] @ theta["A"].T + torch.diag(torch.exp(2 * theta["log_s"]))
        dist = torch.distributions.MultivariateNormal(theta["b"], covariance_matrix=C)
        return dist.log_prob(x).sum()

    def posterior(self, theta: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact posterior means [N, k] and covariance [k, k]."""
        A, prec_x = theta["A"], torch.exp(-2 * theta["log_s"])
        P = torch.eye(A.shape[1], dtype=A.dtype) + A.T @ (prec_x[:, None] * A)
        cov = torch.linalg.inv(P)
        return ((x - theta["b"]) * prec_x) @ A @ cov, cov


class ShiftedPrior:
    """q_φ(z | x_n) = N(m_n, diag(exp(2 ℓ))); the noise is ε ~ N(0, I), z = m + e^ℓ ε."""

    capabilities = frozenset({"reparam", "score", "log_prob"})

    def __init__(self, n: int, k: int) -> None:
        self.latent = LatentSpace("real", k)
        self.layout = ParamLayout((ParamGroup("m", (n, k)), ParamGroup("log_std", (k,))))

    def noise(self, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: object) -> Tensor:
        return torch.randn(*shape, self.latent.dim, generator=gen, dtype=dtype, device=device)

    def sample(self, phi: Params, x: Tensor, noise: Tensor) -> Tensor:
        return phi["m"] + torch.exp(phi["log_std"]) * noise

    def log_prob(self, phi: Params, x: Tensor, z: Tensor) -> Tensor:
        u = (z - phi["m"]) * torch.exp(-phi["log_std"])
        return (-0.5 * u**2 - phi["log_std"]).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def exact_log_marginal_grad(target: ComposedTarget, objective: Objective) -> Reference:
    """∇θ log p(x) by autograd of the closed-form Gaussian marginal (exact)."""
    g = torch.func.grad(lambda theta: target.model.log_marginal(theta, target.x))(target.theta)
    return Reference(target.layout.flatten(g), kind="exact")


def build(params: FactorParams, proposal: ShiftedPriorParams, seed: int, dtype: torch.dtype = torch.float64,
          device: str = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """θ from ``seed``; data drawn from the model unless given; q at the exact posterior shifted by ``mean_shift``."""
    model = Factor(params.data_dim, params.latent_dim)
    gen = make_generator(seed)
    theta = model.init_params(gen, torch.float64)
    x = model.sample_joint(theta, params.n_data, gen)[0] if data is None else torch.as_tensor(data, dtype=torch.float64)
    family = ShiftedPrior(x.shape[0], params.latent_dim)
    mean, cov = model.posterior(theta, x)
    phi = {"m": mean + proposal.mean_shift, "log_std": 0.5 * torch.log(torch.diagonal(cov))}
    cast = lambda p: {k: v.to(dtype=dtype, device=device) for k, v in p.items()}
    return ComposedTarget(model, family, x.to(dtype=dtype, device=device), cast(theta), cast(phi),
                          reference_builders={LOG_MARGINAL.key: exact_log_marginal_grad}, seed=seed)


registry.register(registry.Model(
    "factor", build, FactorParams, ShiftedPriorParams,
    "example plugin: one-factor analyser with a shifted-posterior Gaussian family (exact ∇θ log p(x))",
    provides=frozenset({"real_latent", "reparam", "score", "log_prob"}),
))
