"""PPCA with an amortised linear-Gaussian encoder: exact ELBO gradients and references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.models.ppca import PPCA
from gradbench.models.ppca_encoder import EncoderParams, PPCAEncoder, PPCAEncoderParams, optimal_encoder
from gradbench.seeding import make_generator


def make_encoder_target(d: int = 4, k: int = 2, n: int = 3, mean_noise: float = 1.0, log_std_shift: float = 0.3,
                        seed: int = 5, reference_replicates: int = 20_000) -> PPCAEncoder:
    return PPCAEncoder.synthetic(
        PPCAEncoderParams(data_dim=d, latent_dim=k, n_data=n, reference_replicates=reference_replicates),
        EncoderParams(mean_noise=mean_noise, log_std_shift=log_std_shift), seed=seed)


def orthogonal_target(d: int = 4, k: int = 2, n: int = 3) -> PPCAEncoder:
    """W with orthogonal columns: M = WᵀW + σ²I is diagonal, so the optimal diagonal encoder is the posterior."""
    gen = make_generator(0)
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    W = Q * torch.tensor([2.0, 0.7], dtype=torch.float64)[:k]
    mu = torch.randn(d, generator=gen, dtype=torch.float64)
    sigma = torch.tensor(0.8, dtype=torch.float64)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2
    A, b, c = optimal_encoder(W, mu, sigma)
    return PPCAEncoder(W, mu, sigma, x, A=A, b=b, c=c)


def _finite_difference(target: PPCAEncoder, which: str, h: float = 1e-6) -> torch.Tensor:
    params = target.encoder_params() if which == "phi" else target.parameters()
    out = []
    for name, value in params.items():
        flat = value.reshape(-1)
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += h
            minus[i] -= h
            f = lambda v, name=name, value=value: target.elbo(**{which: {name: v.reshape(value.shape)}})
            out.append((f(plus) - f(minus)) / (2 * h))
    return torch.stack(out)


@pytest.mark.parametrize("which", ["phi", "theta"])
def test_exact_elbo_gradient_equals_finite_differences(which):
    t = make_encoder_target()
    exact = t.elbo_grad_phi() if which == "phi" else t.elbo_grad_theta()
    fd = _finite_difference(t, which)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))


def test_closed_forms_equal_autograd_of_the_analytic_elbo():
    t = make_encoder_target(d=5, k=3, n=4)
    phi = {k: v.clone().requires_grad_(True) for k, v in t.encoder_params().items()}
    theta = {k: v.clone().requires_grad_(True) for k, v in t.parameters().items()}
    value = t.elbo(theta=theta, phi=phi)
    g_phi = torch.autograd.grad(value, list(phi.values()), retain_graph=True)
    g_theta = torch.autograd.grad(value, list(theta.values()))
    torch.testing.assert_close(t.elbo_grad_phi(), t.phi_layout.flatten(dict(zip(phi, g_phi))), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.elbo_grad_theta(), t.layout.flatten(dict(zip(theta, g_theta))), rtol=1e-12, atol=1e-12)


def test_analytic_elbo_equals_monte_carlo_elbo():
    """ELBO = E_q[log p(x,z) − log q(z|x)]: MCSE-scaled check (α = 0.001, fixed seed)."""
    t = make_encoder_target()
    z, log_q = t.sample_proposal((200_000,), make_generator(1))
    v = (t.log_joint(z) - log_q).sum(-1)
    z_score = (v.mean() - t.elbo()) / (v.std() / math.sqrt(v.numel()))
    assert abs(float(z_score)) < 3.29


def test_optimal_encoder_is_stationary_and_tight_when_the_posterior_is_diagonal():
    generic = make_encoder_target(mean_noise=0.0, log_std_shift=0.0)
    assert float(generic.elbo_grad_phi().abs().max()) < 1e-10  # ELBO-optimal within the diagonal family
    assert float(generic.elbo()) < float(generic.log_marginal())
    t = orthogonal_target()
    torch.testing.assert_close(t.elbo(), t.log_marginal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.elbo_grad_theta(), t.exact_grad(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t.q_mean, t.post_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diag(torch.exp(2 * t.c)), t.post_cov, rtol=1e-12, atol=1e-12)


def test_perturbations_move_the_encoder_as_documented():
    base = make_encoder_target(mean_noise=0.0, log_std_shift=0.0)
    shifted = make_encoder_target(mean_noise=0.0, log_std_shift=0.5)
    torch.testing.assert_close(shifted.c, base.c + 0.5)
    torch.testing.assert_close(shifted.A, base.A)
    noisy = make_encoder_target(mean_noise=2.0, log_std_shift=0.0)
    twice = make_encoder_target(mean_noise=4.0, log_std_shift=0.0)
    torch.testing.assert_close(twice.A - base.A, 2 * (noisy.A - base.A))  # one direction, scaled by δ
    assert torch.equal(noisy.W, base.W) and torch.equal(noisy.x, base.x)  # θ and data do not depend on the encoder


def test_score_and_kl_gradient_equal_autograd():
    t = make_encoder_target(d=3, k=2, n=2)
    z, _ = t.sample_proposal((5,), make_generator(2))
    phi = {k: v.clone().requires_grad_(True) for k, v in t.encoder_params().items()}
    score = t.log_q_score(z)  # [5, N, P]
    for r in range(5):
        for n in range(t.n_data):
            mean, log_std = t.encoder_mean_logstd(phi)
            u = (z[r, n] - mean[n]) / torch.exp(log_std[0])
            log_q = (-0.5 * u**2 - log_std[0]).sum()
            g = torch.autograd.grad(log_q, list(phi.values()))
            torch.testing.assert_close(score[r, n], t.phi_layout.flatten(dict(zip(phi, g))), rtol=1e-12, atol=1e-12)
    kl = t.kl_prior(phi).sum()
    g = torch.autograd.grad(kl, list(phi.values()))
    torch.testing.assert_close(t.kl_grad_phi(), t.phi_layout.flatten(dict(zip(phi, g))), rtol=1e-12, atol=1e-12)


def test_proposal_is_the_encoder():
    t = make_encoder_target()
    z, log_q = t.sample_proposal((3, 2), make_generator(4))
    eps = torch.randn(3, 2, t.n_data, t.latent_dim, generator=make_generator(4), dtype=torch.float64)
    torch.testing.assert_close(z, t.x @ t.A.T + t.b + torch.exp(t.c) * eps)
    torch.testing.assert_close(log_q, t.log_proposal(z))
    torch.testing.assert_close(t.log_proposal(z), PPCA.log_proposal(t, z))  # diagonal form = Cholesky form


def test_references():
    t = make_encoder_target(reference_replicates=2_000)
    assert t.reference("theta").kind == "exact" and torch.equal(t.reference("theta").value, t.exact_grad())
    assert torch.equal(t.reference("phi").value, t.elbo_grad_phi())
    assert torch.equal(t.reference("phi_elbo").value, t.elbo_grad_phi())
    assert torch.equal(t.reference("theta_elbo").value, t.elbo_grad_theta())
    assert torch.equal(t.reference("phi_iwae1").value, t.elbo_grad_phi())  # IWAE_1 is the ELBO
    ref = t.reference("phi_iwae4")
    assert ref.kind == "estimated" and ref.stderr is not None and ref.value.shape == (t.phi_layout.size,)
    assert bool((ref.stderr > 0).all())
    assert t.reference("phi_iwae4") is ref  # computed once per target
    assert ref.n == 2_000 and ref.cov is not None
    assert t.reference("theta_iwae4").value.shape == (t.layout.size,)
    with pytest.raises(ValueError, match="no reference"):
        t.reference("lambda")


def test_reference_covariance_merges_blocks_exactly(monkeypatch):
    """Blocks of 300 replicates (the last partial) merged by Chan et al.: equal to the covariance of the
    same replicates computed at once (deterministic, same generator sequence)."""
    from gradbench.estimators.pathwise import dreg
    from gradbench.references import estimated
    from gradbench.seeding import derive_seed, make_generator

    t = make_encoder_target(reference_replicates=2_000)
    monkeypatch.setattr(estimated, "MAX_PARTICLES", 300 * 4 * t.n_data)
    ref = t.reference("phi_iwae4")
    gen = make_generator(derive_seed(t.seed, "iwae-reference", "phi", 4), t.W.device)
    G = torch.cat([dreg(t, min(300, 2_000 - i), gen, K=4).grads for i in range(0, 2_000, 300)]).double()
    torch.testing.assert_close(ref.value, G.mean(0).to(ref.value.dtype))
    torch.testing.assert_close(ref.cov, torch.cov(G.T))
    torch.testing.assert_close(ref.stderr**2 * 2_000, torch.diagonal(ref.cov).to(ref.stderr.dtype))


def test_iwae_reference_moves_from_elbo_towards_log_likelihood():
    """∇θ IWAE_K lies between ∇θ ELBO (K=1) and ∇θ log p(x) (K→∞) in distance, decreasing in K."""
    t = make_encoder_target(reference_replicates=4_000)
    target = t.exact_grad()
    d1 = float((t.reference("theta_iwae1").value - target).norm())
    d16 = float((t.reference("theta_iwae16").value - target).norm())
    se16 = float(t.reference("theta_iwae16").stderr.norm())
    assert d16 + 3.29 * se16 < d1


def test_registered_and_buildable_through_the_registry():
    entry = registry.MODELS["ppca_encoder"]
    t = entry.build(entry.params(data_dim=3, latent_dim=2, n_data=2), entry.proposal(mean_noise=0.5), 7,
                    torch.float32, "cpu", None)
    assert t.A.dtype == torch.float32 and t.phi_layout.names == ("A", "b", "c")
    arrays = t.arrays()
    assert {"A", "b", "c", "grad_elbo_A", "grad_W", "x"} <= set(arrays)
    data = np.arange(6, dtype=np.float64).reshape(2, 3)
    t2 = entry.build(entry.params(data_dim=3, latent_dim=2, n_data=2), entry.proposal(), 7, torch.float64, "cpu", data)
    assert np.array_equal(t2.x.numpy(), data)
