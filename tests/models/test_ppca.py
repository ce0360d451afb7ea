"""Tier 1: exactness of the PPCA target (deterministic, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from gradbench.models.ppca import PPCA
from gradbench.stats import influence_se
from tests.conftest import make_ppca


def _with_params(t: PPCA, flat: torch.Tensor) -> PPCA:
    p = t.layout.unflatten(flat)
    return PPCA(p["W"], p["mu"], p["sigma"].reshape(()), t.x, t.mean_shift, t.cov_scale)


def _flat_params(t: PPCA) -> torch.Tensor:
    return t.layout.flatten(t.parameters())


def test_exact_gradient_matches_central_finite_differences(ppca):
    theta = _flat_params(ppca)
    h = 1e-6
    fd = torch.stack([
        (_with_params(ppca, theta + h * e).log_marginal() - _with_params(ppca, theta - h * e).log_marginal()) / (2 * h)
        for e in torch.eye(theta.numel(), dtype=theta.dtype)
    ])
    exact = ppca.exact_grad()
    assert torch.linalg.norm(exact - fd) / torch.linalg.norm(exact) < 1e-6


def test_exact_gradient_matches_autograd_of_marginal(ppca):
    theta = _flat_params(ppca).requires_grad_(True)
    _with_params(ppca, theta).log_marginal().backward()
    torch.testing.assert_close(ppca.exact_grad(), theta.grad, rtol=1e-10, atol=1e-10)


def test_log_marginal_matches_torch_distributions(ppca):
    mvn = torch.distributions.MultivariateNormal(ppca.mu, ppca.marginal_cov())
    torch.testing.assert_close(ppca.log_marginal(), mvn.log_prob(ppca.x).sum(), rtol=1e-12, atol=1e-12)


def test_posterior_matches_gaussian_conditioning(ppca):
    """Closed form σ²M⁻¹ and M⁻¹Wᵀ(x−μ) against conditioning the joint Gaussian of (z, x)."""
    W, C = ppca.W, ppca.marginal_cov()
    gain = W.T @ torch.linalg.inv(C)  # Cov(z, x) C⁻¹
    torch.testing.assert_close(ppca.post_cov, torch.eye(ppca.latent_dim, dtype=W.dtype) - gain @ W, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ppca.post_mean, (ppca.x - ppca.mu) @ gain.T, rtol=1e-10, atol=1e-12)


def test_bayes_rule_identity(ppca):
    """log p(x,z) − log p(z|x) = log p(x) for every z (ties joint, posterior and marginal together)."""
    z = torch.randn(5, ppca.n_data, ppca.latent_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lhs = (ppca.log_joint(z) - ppca.log_posterior(z)).sum(-1)
    torch.testing.assert_close(lhs, ppca.log_marginal().expand(5), rtol=1e-10, atol=1e-10)


def test_posterior_sampler_moments_within_mcse(ppca):
    """Sample mean and variance of every coordinate within z_{α} MCSE of the closed form.

    α = 0.001 per coordinate with Šidák over all 2·N·k checks; seed fixed at 0, n = 20 000.
    """
    n = 20_000
    z = ppca.sample_posterior((n,), torch.Generator().manual_seed(0)).reshape(n, -1).numpy()
    mean = ppca.post_mean.reshape(-1).numpy()
    var = torch.diagonal(ppca.post_cov).repeat(ppca.n_data).numpy()
    checks = 2 * z.shape[1]
    crit = norm.isf((1 - (1 - 0.001) ** (1 / checks)) / 2)
    for j in range(z.shape[1]):
        assert abs(z[:, j].mean() - mean[j]) / influence_se(z[:, j]) < crit
        sq = (z[:, j] - mean[j]) ** 2
        assert abs(sq.mean() - var[j]) / influence_se(sq) < crit


def test_proposal_density_and_mismatch(mismatched_ppca):
    t = mismatched_ppca
    z, log_q = t.sample_proposal((4, 3), torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_q, t.log_proposal(z), rtol=1e-10, atol=1e-10)
    shift = t.q_mean - t.post_mean
    mahalanobis = torch.linalg.solve_triangular(t.post_chol, shift.T, upper=False).norm(dim=0)
    torch.testing.assert_close(mahalanobis, torch.full_like(mahalanobis, 0.5))
    torch.testing.assert_close(t.q_chol @ t.q_chol.T, 2.0 * t.post_cov)


def test_exact_proposal_is_the_posterior(ppca):
    z, log_q = ppca.sample_proposal((7,), torch.Generator().manual_seed(2))
    torch.testing.assert_close(log_q, ppca.log_posterior(z))
    z_post = ppca.sample_posterior((7,), torch.Generator().manual_seed(2))
    assert torch.equal(z, z_post), "same generator stream → same latents (common random numbers)"


def test_complete_data_gradient_hand_derived_under_injected_noise():
    """Injected noise: W = [[1, 2], [0, −1], [3, 1]], μ = (0.5, −1, 2), σ = 2, x = (1, 1, 1), z = (1, −1).
    e = x − W z − μ = (1, 1, 1) − (−1, 1, 2) − (0.5, −1, 2) = (1.5, 1, −3); ‖e‖² = 12.25.
    ∇_W = e zᵀ/σ² = [[.375, −.375], [.25, −.25], [−.75, .75]]; ∇_μ = e/4 = (.375, .25, −.75);
    ∇_σ = ‖e‖²/σ³ − d/σ = 12.25/8 − 1.5 = 0.03125."""
    t64 = torch.float64
    t = PPCA(torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]], dtype=t64), torch.tensor([0.5, -1.0, 2.0], dtype=t64),
             torch.tensor(2.0, dtype=t64), torch.ones(1, 3, dtype=t64))
    g = t.grad_log_joint(torch.tensor([[1.0, -1.0]], dtype=t64))[0]
    expected = torch.tensor([0.375, -0.375, 0.25, -0.25, -0.75, 0.75, 0.375, 0.25, -0.75, 0.03125], dtype=t64)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-14)


def test_complete_data_gradient_matches_autograd(ppca):
    z = ppca.sample_posterior((3,), torch.Generator().manual_seed(4))  # [3, N, k]
    theta = _flat_params(ppca).requires_grad_(True)
    lj = _with_params(ppca, theta).log_joint(z)  # [3, N]
    auto = torch.stack([torch.autograd.grad(lj[r, n], theta, retain_graph=True)[0]
                        for r in range(3) for n in range(ppca.n_data)]).reshape(3, ppca.n_data, -1)
    torch.testing.assert_close(ppca.grad_log_joint(z), auto, rtol=1e-10, atol=1e-10)


def test_weighted_gradient_equals_weighted_sum_of_per_sample(ppca):
    gen = torch.Generator().manual_seed(5)
    z = ppca.sample_posterior((4, 6), gen)  # [R=4, S=6, N, k]
    w = torch.rand(4, 6, ppca.n_data, generator=gen, dtype=torch.float64)
    per_sample = ppca.grad_log_joint(z)  # [4, 6, N, P]
    expected = (w.unsqueeze(-1) * per_sample).sum(dim=(1, 2))
    torch.testing.assert_close(ppca.weighted_grad_log_joint(z, w), expected, rtol=1e-12, atol=1e-12)


def test_fisher_identity_by_quadrature():
    """∇θ log p(x) = E_{p(z|x)}[∇θ log p(x,z)], checked with Gauss–Hermite quadrature (k = 1)."""
    t = make_ppca(d=4, k=1, n=2, seed=7)
    x_nodes, w_nodes = np.polynomial.hermite_e.hermegauss(40)
    nodes = torch.tensor(x_nodes, dtype=torch.float64)
    w = torch.tensor(w_nodes / math.sqrt(2 * math.pi), dtype=torch.float64)
    z = t.post_mean + nodes.reshape(-1, 1, 1) * t.post_chol.reshape(1, 1, 1)  # [Q, N, 1]
    weights = w.reshape(1, -1, 1).expand(1, -1, t.n_data)
    got = t.weighted_grad_log_joint(z.unsqueeze(0), weights)[0]
    torch.testing.assert_close(got, t.exact_grad(), rtol=1e-10, atol=1e-10)


def test_float32_and_data_supplied():
    t32 = make_ppca(dtype=torch.float32)
    t64 = make_ppca()
    assert t32.exact_grad().dtype == torch.float32
    torch.testing.assert_close(t32.exact_grad().double(), t64.exact_grad(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        PPCA(t64.W, t64.mu, t64.sigma, torch.zeros(2, 3, dtype=torch.float64))


def test_pure_model_equals_the_fused_fast_path():
    """The contract-v2 PPCAModel (pure log_joint, differentiated by torch.func) and the target's closed-form
    fused gradient agree: the fast path is an optimisation, not a different model."""
    from gradbench.contracts import per_replicate_grad
    from tests.conftest import make_ppca

    t = make_ppca(d=5, k=2, n=3, mean_shift=0.4, cov_scale=1.3)
    gen = torch.Generator().manual_seed(0)
    z, _ = t.sample_proposal((4, 6), gen)  # [R, S, N, k]
    w = torch.rand(4, 6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(t.model.log_joint(t.theta, t.x, z), t.log_joint(z), rtol=1e-12, atol=1e-12)
    g = per_replicate_grad(lambda th, z1, w1: (w1 * t.model.log_joint(th, t.x, z1)).sum(), t.theta, z, w)
    torch.testing.assert_close(t.layout.flatten(g, batch=(4,)), t.weighted_grad_log_joint(z, w), rtol=1e-10, atol=1e-10)
    # negative control: a σ off by 1 % is visible at this tolerance
    wrong = {**t.theta, "sigma": t.theta["sigma"] * 1.01}
    assert not torch.allclose(t.model.log_joint(wrong, t.x, z), t.log_joint(z), rtol=1e-6)
