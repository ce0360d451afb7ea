"""The semi-implicit Gaussian family: exact marginal, exact reverse conditional, marginal view (deterministic)."""

from __future__ import annotations

import math

import torch

from gradbench.families.semi_implicit import SemiImplicitGaussian
from gradbench.models.params import SemiImplicitProposal

F64 = torch.float64


def _family(k: int = 2, m: int = 3, N: int = 4, hidden: int = 0, seed: int = 0) -> tuple[SemiImplicitGaussian, dict]:
    gen = torch.Generator().manual_seed(seed)
    fam = SemiImplicitGaussian(k, m, N, hidden)
    mean = torch.randn(N, k, generator=gen, dtype=F64)
    chol = torch.linalg.cholesky(torch.eye(k, dtype=F64) + 0.3 * torch.ones(k, k, dtype=F64)).expand(N, k, k)
    return fam, fam.init_params(mean, chol, SemiImplicitProposal(mean_shift=0.5, a_noise=0.5), gen)


def test_bayes_rule_identity_exact_to_roundoff() -> None:
    """log q(ε) + log q(z|ε) = log q(z) + log q(ε|z) at arbitrary (z, ε): marginal and reverse conditional exact."""
    fam, phi = _family()
    gen = torch.Generator().manual_seed(1)
    z = 2 * torch.randn(5, 4, 2, generator=gen, dtype=F64)
    eps = 2 * torch.randn(5, 4, 3, generator=gen, dtype=F64)
    joint = fam.log_mixing(eps) + fam.log_conditional(phi, z, eps)
    mean, C = fam.reverse_conditional(phi, z)
    r = torch.linalg.solve_triangular(C, (eps - mean).unsqueeze(-1), upper=False).squeeze(-1)
    log_rev = -0.5 * (r * r).sum(-1) - torch.log(torch.diagonal(C, dim1=-2, dim2=-1)).sum(-1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(joint, fam.log_prob(phi, None, z) + log_rev, rtol=0, atol=1e-12)


def test_grad_log_prob_z_is_autograd_of_log_prob() -> None:
    fam, phi = _family()
    z = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    g = torch.func.grad(lambda zz: fam.log_prob(phi, None, zz).sum())(z)
    torch.testing.assert_close(fam.grad_log_prob_z(phi, z), g, rtol=1e-12, atol=1e-12)


def test_marginal_view_pushes_standard_normal_to_the_marginal() -> None:
    """b + chol(Σ) u has density N(b, Σ): the view's sample is the marginal's (checked by the change of variables)."""
    fam, phi = _family()
    view = fam.marginal_view()
    u = torch.randn(6, 4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    z = view.sample(phi, None, u)
    _, cov = fam.marginal(phi)
    log_det = torch.log(torch.diagonal(torch.linalg.cholesky(cov), dim1=-2, dim2=-1)).sum(-1)
    expected = -0.5 * (u * u).sum(-1) - log_det - math.log(2 * math.pi)
    torch.testing.assert_close(view.log_prob(phi, None, z), expected, rtol=0, atol=1e-12)


def test_capabilities_log_prob_only_when_exact() -> None:
    assert "log_prob" in SemiImplicitGaussian(2, 2, 1).capabilities
    mlp = SemiImplicitGaussian(2, 2, 1, hidden=4)
    assert mlp.capabilities == frozenset({"reparam", "implicit"})
    fam, phi = _family(hidden=4)
    noise = fam.noise((7, 4), torch.Generator().manual_seed(0), F64, "cpu")
    assert fam.sample(phi, None, noise).shape == (7, 4, 2)
