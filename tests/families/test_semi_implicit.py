"""The semi-implicit Gaussian family: exact marginal, exact reverse conditional, marginal view (deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench.families.semi_implicit import SemiImplicitGaussian
from gradbench.models.params import SemiImplicitProposal

F64 = torch.float64
ALPHA = 1e-3


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
    assert mlp.capabilities == frozenset({"reparam", "implicit", "mixing_density"})
    fam, phi = _family(hidden=4)
    noise = fam.noise((7, 4), torch.Generator().manual_seed(0), F64, "cpu")
    assert fam.sample(phi, None, noise).shape == (7, 4, 2)


# -- ε uniform over atoms: an exact Gaussian mixture ------------------------------------------------
def _atoms(hidden: int = 0) -> tuple[SemiImplicitGaussian, dict]:
    gen = torch.Generator().manual_seed(0)
    fam = SemiImplicitGaussian(2, 3, 4, hidden, n_atoms=5)
    mean = torch.randn(4, 2, generator=gen, dtype=F64)
    chol = torch.eye(2, dtype=F64).expand(4, 2, 2)
    return fam, fam.init_params(mean, chol, SemiImplicitProposal(mean_shift=0.5, a_noise=0.5, diag_scale=0.5), gen)


@pytest.mark.parametrize("hidden", [0, 4])
def test_atoms_bayes_rule_and_gradient_exact(hidden: int) -> None:
    """log q(ε_j) + log q(z|ε_j) = log q(z) + log q(j|z) with q(ε_j) = 1/M and q(j|z) the softmax, for linear and MLP
    T; ∇_z log q in closed form equals autograd of log q; log q integrates to 1 (Gauss–Legendre on a box, 1e-10)."""
    fam, phi = _atoms(hidden)
    assert "log_prob" in fam.capabilities
    z = 2 * torch.randn(5, 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    lc = fam.atom_log_conditionals(phi, z)  # [5, 4, M]
    log_post = torch.log_softmax(lc, -1)
    torch.testing.assert_close(lc - math.log(5), fam.log_prob(phi, None, z).unsqueeze(-1) + log_post, rtol=0, atol=1e-12)
    g = torch.func.grad(lambda zz: fam.log_prob(phi, None, zz).sum())(z)
    torch.testing.assert_close(fam.grad_log_prob_z(phi, z), g, rtol=1e-10, atol=1e-12)
    t, w = np.polynomial.legendre.leggauss(200)
    grid = torch.as_tensor(12 * t, dtype=F64)
    zz = torch.cartesian_prod(grid, grid).unsqueeze(1).expand(-1, 4, 2)
    mass = (torch.as_tensor(np.outer(12 * w, 12 * w).reshape(-1, 1)) * torch.exp(fam.log_prob(phi, None, zz))).sum(0)
    torch.testing.assert_close(mass, torch.ones(4, dtype=F64), rtol=0, atol=1e-10)


def test_atoms_exact_reverse_sample_is_the_discrete_posterior() -> None:
    """Frequencies of exact_reverse_sample at a fixed z match softmax_j log q(z|ε_j) (chi-square, α = 0.001); draws
    from the mixing distribution (the wrong reverse conditional, a negative control) are rejected."""
    fam, phi = _atoms()
    gen = torch.Generator().manual_seed(0)
    z = fam.sample(phi, None, fam.noise((1, 4), gen, F64, "cpu"))[0]  # [N, k]
    n = 20_000
    probs = torch.softmax(fam.atom_log_conditionals(phi, z), -1)[0].numpy()  # data point 0

    def counts(eps: torch.Tensor) -> np.ndarray:
        index = (eps[:, 0].unsqueeze(1) - fam.atoms.unsqueeze(0)).abs().sum(-1).argmin(-1)
        return np.bincount(index.numpy(), minlength=5)

    def pvalue(c: np.ndarray) -> float:
        keep = probs * n > 5
        c2 = np.append(c[keep], c[~keep].sum())
        e2 = np.append(probs[keep] * n, probs[~keep].sum() * n)
        e2, c2 = (e2, c2) if e2[-1] > 0 else (e2[:-1], c2[:-1])
        return float(sps.chisquare(c2, e2).pvalue)

    exact = fam.exact_reverse_sample(phi, z.expand(n, 4, 2), gen)
    assert pvalue(counts(exact)) > ALPHA
    assert pvalue(counts(fam.mixing_noise((n, 4), gen, F64, "cpu"))) < ALPHA
    with pytest.raises(TypeError):
        fam.log_mixing(exact)
