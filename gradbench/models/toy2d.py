"""The 2-D toy targets of the SIVI and UIVI papers as models without data (docs/design.md §5.8).

A "model" whose ``log_joint(θ, x, z)`` is a normalised log density p_θ(z) of z ∈ ℝ²; θ are the density's parameters
and x is a placeholder [1, 1] (one "data point", no content), so ∇θ log p(x) = ∇θ log ∫ p_θ(z) dz = 0 exactly.
* ``banana`` (Yin & Zhou 2018, §5; Titsias & Ruiz 2019, §4.1): z₁ ~ N(0, s₁²), z₂ | z₁ ~ N(c z₁², s₂²),
      log p(z) = log N(z₁; 0, s₁²) + log N(z₂; c z₁², s₂²),   θ = (log s = (log s₁, log s₂), c); papers: s = (2, 1), c = ¼.
  Moments: mean (0, c s₁²), covariance diag(s₁², s₂² + 2c² s₁⁴).
* ``x_shaped`` (same papers): p(z) = ½ N(z; 0, [[v, r], [r, v]]) + ½ N(z; 0, [[v, −r], [−r, v]]),  θ = (v, r);
  papers: v = 2, r = 1.8. Moments: mean 0, covariance v I.
``build`` composes the model with the semi-implicit family (``gradbench.families.semi_implicit``) started from the
moment-matched Gaussian N(m, S) (``SemiImplicitProposal``'s δ, s, d0, a_noise as on the other targets).

References (∇θ/∇φ ELBO; ``error`` = the doubling change |g_{2n} − g_n|):
* banana: Gauss–Hermite (``models.semi_implicit.quadrature_phi_elbo``) over the exact Gaussian marginal (linear T,
  Gaussian ε: log p is a polynomial of degree 4 in z, so E_q log p is exact for ≥ 3 nodes per axis and the entropy is
  closed form) or over every component of the mixture (atoms);
* x_shaped: log p = Q(z) + log 2cosh(a z₁z₂) − log 2 (a = r/(v² − r²)) has complex poles at distance π/(2a|z₂|) from
  the axis z₁ = 0 (and symmetrically), so Gauss–Hermite converges slowly (measured: 9e-3 relative at 128 → 256 nodes per
  axis); a composite Gauss–Legendre rule in z-space with the axes as panel edges (``quadrature.quadrature_box_elbo``)
  reaches ~1e-12 (measured: 8 → 16 nodes per panel).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradbench.contracts import ComposedTarget, LatentSpace, Objective, Params
from gradbench.core import ParamGroup, ParamLayout, Reference
from gradbench.models.params import SemiImplicitProposal, Toy2DParams
from gradbench.seeding import derive_seed, make_generator

LOG_2PI = math.log(2 * math.pi)
F64 = torch.float64


def _log_normal(z: Tensor, mean: Tensor, log_sd: Tensor) -> Tensor:
    r = (z - mean) * torch.exp(-log_sd)
    return -0.5 * r * r - log_sd - 0.5 * LOG_2PI


class Banana:
    """z₁ ~ N(0, s₁²), z₂ | z₁ ~ N(c z₁², s₂²) (module docstring)."""

    latent = LatentSpace("real", 2)
    layout = ParamLayout((ParamGroup("log_scale", (2,)), ParamGroup("curvature", (1,))))

    def __init__(self, scales: tuple[float, float] = (2.0, 1.0), curvature: float = 0.25) -> None:
        self.scales, self.curvature = scales, curvature

    def init_params(self, gen: torch.Generator | None = None, dtype: torch.dtype = F64) -> Params:
        return {"log_scale": torch.log(torch.tensor(self.scales, dtype=dtype)),
                "curvature": torch.tensor([self.curvature], dtype=dtype)}

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(z) [..., N] for z [..., N, 2] (x is not used)."""
        ls, c = theta["log_scale"], theta["curvature"].reshape(())
        z1, z2 = z[..., 0], z[..., 1]
        return _log_normal(z1, torch.zeros_like(z1), ls[0]) + _log_normal(z2, c * z1 * z1, ls[1])

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        s, c = torch.exp(theta["log_scale"]), theta["curvature"].reshape(())
        e = torch.randn(n, 2, generator=gen, dtype=s.dtype)
        z1 = s[0] * e[:, 0]
        return torch.zeros(n, 1, dtype=s.dtype), torch.stack([z1, c * z1 * z1 + s[1] * e[:, 1]], -1)

    def moments(self, theta: Params) -> tuple[Tensor, Tensor]:
        s, c = torch.exp(theta["log_scale"]), theta["curvature"].reshape(())
        mean = torch.stack([torch.zeros_like(c), c * s[0] ** 2])
        return mean, torch.diag(torch.stack([s[0] ** 2, s[1] ** 2 + 2 * c**2 * s[0] ** 4]))


class XShaped:
    """½ N(0, [[v, r], [r, v]]) + ½ N(0, [[v, −r], [−r, v]]) (module docstring)."""

    latent = LatentSpace("real", 2)
    layout = ParamLayout((ParamGroup("var", (1,)), ParamGroup("cov", (1,))))

    def __init__(self, var: float = 2.0, cov: float = 1.8) -> None:
        if not abs(cov) < var:
            raise ValueError(f"x_shaped: need |cov| < var (got var={var}, cov={cov})")
        self.var, self.cov = var, cov

    def init_params(self, gen: torch.Generator | None = None, dtype: torch.dtype = F64) -> Params:
        return {"var": torch.tensor([self.var], dtype=dtype), "cov": torch.tensor([self.cov], dtype=dtype)}

    def log_joint(self, theta: Params, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(z) [..., N]: for [[v, ±r], [±r, v]], det = v² − r², quadratic form (v(z₁² + z₂²) ∓ 2r z₁z₂)/det."""
        v, r = theta["var"].reshape(()), theta["cov"].reshape(())
        det = v * v - r * r
        z1, z2 = z[..., 0], z[..., 1]
        base = v * (z1 * z1 + z2 * z2)
        comps = torch.stack([base - 2 * r * z1 * z2, base + 2 * r * z1 * z2], -1)
        log_comp = -0.5 * comps / det - 0.5 * torch.log(det) - LOG_2PI
        return torch.logsumexp(log_comp, -1) - math.log(2)

    def sample_joint(self, theta: Params, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        v, r = theta["var"].reshape(()), theta["cov"].reshape(())
        sign = torch.where(torch.rand(n, generator=gen, dtype=v.dtype) < 0.5, 1.0, -1.0).to(v.dtype)
        e = torch.randn(n, 2, generator=gen, dtype=v.dtype)
        a, b = torch.sqrt((v + r) / 2), torch.sqrt((v - r) / 2)  # along (1, ±1)/√2 the variances are v ± r
        z = torch.stack([a * e[:, 0] + b * e[:, 1], sign * (a * e[:, 0] - b * e[:, 1])], -1)
        return torch.zeros(n, 1, dtype=v.dtype), z

    def moments(self, theta: Params) -> tuple[Tensor, Tensor]:
        v = theta["var"].reshape(())
        return torch.zeros(2, dtype=v.dtype), v * torch.eye(2, dtype=v.dtype)


def box_half_width(family: Any, phi: Params, panel: float = 0.25, sds: float = 10.0) -> float:
    """A box [−W, W]² holding q up to ``sds`` conditional s.d. beyond every component mean (a multiple of ``panel``)."""
    if family.gaussian_marginal:
        means, cov = family.marginal(phi)
        sd = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))
    else:
        means = family.transform(phi, family.atoms.to(phi["b"])[:, None, :])  # [M, 1, 2]
        sd = torch.exp(phi["log_d"])
    reach = float(means.abs().max() + sds * sd.max())
    return panel * math.ceil(reach / panel)


def box_reference(t: ComposedTarget, o: Objective) -> Reference:
    """∇θ/∇φ ELBO by the composite Gauss–Legendre rule in z-space (``quadrature.quadrature_box_elbo``; 6 → 12 nodes
    per 0.25-wide panel, the axes panel edges): Gauss–Hermite converges slowly on the X-shaped density."""
    from gradbench.references import quadrature

    res = quadrature.quadrature_box_elbo(t.model, t.family, t.theta, t.phi, t.x, 6,
                                         half_width=box_half_width(t.family, t.phi), panel=0.25)
    P = t.model.layout.size
    sl = slice(0, P) if o.wrt == "theta" else slice(P, None)
    return Reference(res.grad[sl].to(t.x.device), kind="quadrature", error=res.grad_error[sl].to(t.x.device))


def make_model(params: Toy2DParams) -> Banana | XShaped:
    if params.density == "banana":
        return Banana(tuple(params.banana_scales), params.banana_curvature)  # type: ignore[arg-type]
    return XShaped(params.x_var, params.x_cov)


def build(params: Toy2DParams, proposal: SemiImplicitProposal, seed: int, dtype: torch.dtype = F64,
          device: str | torch.device = "cpu", data: np.ndarray | None = None) -> ComposedTarget:
    """``toy2d_semi_implicit``: the banana or X-shaped density with a semi-implicit q started from its moments."""
    from gradbench.models.semi_implicit import _family, quadrature_phi_elbo

    if data is not None:
        raise ValueError("toy2d_semi_implicit is a density of z without data: no data block")
    model = make_model(params)
    theta = model.init_params(None, F64)
    mean, cov = model.moments(theta)
    x = torch.zeros(1, 1, dtype=F64)
    family = _family(2, 1, proposal)
    phi = family.init_params(mean.unsqueeze(0), torch.linalg.cholesky(cov).unsqueeze(0), proposal,
                             make_generator(derive_seed(seed, "semi-implicit-family")))

    def normalised(t: ComposedTarget, o: Objective) -> Reference:  # ∇θ log ∫ p_θ(z) dz = ∇θ log 1 = 0
        return Reference(torch.zeros(t.model.layout.size, dtype=F64, device=t.x.device), kind="exact")

    builders: dict[str, Any] = {"theta": normalised}
    if family.exact:
        quad = quadrature_phi_elbo(params.quadrature_nodes) if params.density == "banana" else box_reference
        builders.update(phi_elbo=quad, theta_elbo=quad)
    cast = lambda t: t.to(dtype=dtype, device=device)
    return ComposedTarget(model, family, cast(x), {k: cast(v) for k, v in theta.items()},
                          {k: cast(v) for k, v in phi.items()}, reference_builders=builders, seed=seed)
