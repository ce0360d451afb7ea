"""The vae model and its Gaussian families: densities against independent formulas, purity under torch.func,
sample_joint moments against exact values (MCSE-scaled, with a broken sampler as negative control), the
Laplace starting point, and the digits bias check (coupled chains and SUMO pass, ELBO and IWAE_2
are rejected at α = 0.001, seed 0).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as sps
import torch
from scipy.special import log_expit

from gradbench.contracts import ComposedTarget, Family, Model, per_replicate_grad
from gradbench.data import DataSpec, load
from gradbench.estimators import coupled, importance, sumo, variational
from gradbench.families.gaussian import GaussianEncoder, GaussianMeanField, GaussianProposal, laplace_targets
from gradbench.models.vae import PARAMS, PROPOSAL, VAE, VAEParams, build
from gradbench.references.quadrature import gauss_hermite, laplace
from gradbench.stats import ReferenceNoise, bias_test

ALPHA = 0.001
F64 = torch.float64


def numpy_log_joint(model: VAE, theta: dict, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log p(x, z) written out in numpy/scipy (independent of the torch code)."""
    h = z
    for l in range(model.n_layers):
        h = h @ theta[f"W{l}"].numpy().T + theta[f"b{l}"].numpy()
        if l < model.n_layers - 1:
            h = np.tanh(h) if model.activation == "tanh" else np.logaddexp(0.0, h)
    prior = sps.norm.logpdf(z).sum(-1)
    if model.likelihood == "bernoulli":
        lik = (x * log_expit(h) + (1 - x) * log_expit(-h)).sum(-1)
    else:
        lik = sps.norm.logpdf(x, loc=h, scale=model.noise_std).sum(-1)
    return prior + lik


@pytest.mark.parametrize("likelihood,activation", [("bernoulli", "tanh"), ("gaussian", "softplus"), ("bernoulli", "softplus")])
def test_log_joint_matches_numpy_and_broadcasts(likelihood, activation):
    model = VAE(2, 5, (4, 3), activation, likelihood, 0.8)
    gen = torch.Generator().manual_seed(0)
    theta = model.init_params(gen)
    x, _ = model.sample_joint(theta, 3, gen)
    z = torch.randn(7, 2, 3, 2, generator=gen, dtype=F64)  # [R, S, N, k]
    lj = model.log_joint(theta, x, z)
    assert lj.shape == (7, 2, 3)
    np.testing.assert_allclose(lj.numpy(), numpy_log_joint(model, theta, x.numpy(), z.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((model.log_prior(z) + model.log_lik(theta, x, z)).numpy(), lj.numpy(), rtol=0, atol=0)


def test_layout_names_and_protocols():
    model = VAE(2, 5, (4,))
    assert model.layout.names == ("W0", "b0", "W1", "b1")
    assert model.layout.size == 4 * 2 + 4 + 5 * 4 + 5
    assert isinstance(model, Model)
    assert isinstance(GaussianMeanField(2, 3), Family) and isinstance(GaussianEncoder(2, 5), Family)


@pytest.mark.parametrize("likelihood,activation,hidden", [("bernoulli", "tanh", ()), ("bernoulli", "softplus", (4, 3)),
                                                          ("gaussian", "tanh", (4,)), ("gaussian", "softplus", (4,)),
                                                          ("bernoulli", "tanh", (12,))])  # W0 [12, 2]: the ∇Wᵀ bmm
def test_fast_weighted_grad_equals_vmap_of_grad(likelihood, activation, hidden):
    """The hand-written backpropagation equals torch.func.vmap(grad(Σ w log_joint)) on the same draws."""
    model = VAE(2, 5, hidden, activation, likelihood, 0.7)
    gen = torch.Generator().manual_seed(0)
    theta = model.init_params(gen)
    x, _ = model.sample_joint(theta, 3, gen)
    z = torch.randn(6, 2, 4, 3, 2, generator=gen, dtype=F64)  # batch [6, 2], S = 4, N = 3
    w = torch.rand(6, 2, 4, 3, generator=gen, dtype=F64)
    fast = model.weighted_grad_log_joint(theta, x, z, w)

    def surrogate(th: dict, z1: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        return (w1 * model.log_joint(th, x, z1)).sum()

    slow = per_replicate_grad(surrogate, theta, z.reshape(12, 4, 3, 2), w.reshape(12, 4, 3))
    torch.testing.assert_close(fast, model.layout.flatten(slow, batch=(12,)).reshape(6, 2, -1), rtol=1e-12, atol=1e-12)


def test_weighted_grad_by_vmap_equals_autograd():
    """The target's weighted gradient (the model's fast path) equals per-replicate autograd of Σ w log p."""
    t = build(VAEParams(latent_dim=2, data_dim=5, n_data=3, hidden=[4]), GaussianProposal(mean_shift=0.3), seed=1)
    gen = torch.Generator().manual_seed(0)
    z, _ = t.sample_proposal((4, 6), gen)
    w = torch.rand(4, 6, 3, generator=gen, dtype=F64)
    g = t.weighted_grad_log_joint(z, w)
    for r in range(4):
        th = {k: v.clone().requires_grad_(True) for k, v in t.theta.items()}
        s = (w[r] * t.model.log_joint(th, t.x, z[r])).sum()
        ref = t.layout.flatten(dict(zip(th, torch.autograd.grad(s, list(th.values())))))
        torch.testing.assert_close(g[r], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["gaussian_mean_field", "gaussian_encoder"])
def test_log_q_score_equals_autograd(family):
    """ComposedTarget.log_q_score (vmap over samples and points) equals autograd of each log q_φ(z_n | x_n)."""
    t = build(VAEParams(latent_dim=2, data_dim=5, n_data=3, hidden=[4]),
              GaussianProposal(family=family, mean_shift=0.3, encoder_hidden=[3]), seed=1)
    z, _ = t.sample_proposal((2, 4), torch.Generator().manual_seed(0))
    S = t.log_q_score(z)
    assert S.shape == (2, 4, 3, t.phi_layout.size)
    ph = {k: v.clone().requires_grad_(True) for k, v in t.phi.items()}
    for a in range(2):
        for n in range(3):
            lp = t.family.log_prob(ph, t.x, z[a, 1])[n]
            g = t.phi_layout.flatten(dict(zip(ph, torch.autograd.grad(lp, list(ph.values())))))
            torch.testing.assert_close(S[a, 1, n], g, rtol=1e-12, atol=1e-12)


# -- sample_joint moments --------------------------------------------------------------------------
def exact_moments(model: VAE, theta: dict, n_nodes: int = 60) -> np.ndarray:
    """E[z], E[z²] (exact) and E[x_j] = E_z[σ(f_j(z))] or E_z[f_j(z)] by prior Gauss–Hermite (bounded smooth integrand)."""
    u, lw = gauss_hermite(n_nodes, model.latent_dim)
    f = model.decode(theta, u)
    mean_x = (torch.exp(lw).unsqueeze(-1) * (torch.sigmoid(f) if model.likelihood == "bernoulli" else f)).sum(0)
    k = model.latent_dim
    return np.concatenate([np.zeros(k), np.ones(k), mean_x.numpy()])


def moments_pvalue(x: torch.Tensor, z: torch.Tensor, exact: np.ndarray) -> float:
    """Šidák max-|z| p-value of the sample means of (z, z², x) against their exact values."""
    v = torch.cat([z, z * z, x], dim=1).numpy()
    zs = np.abs(v.mean(0) - exact) / (v.std(0, ddof=1) / math.sqrt(len(v)))
    return float(-np.expm1(len(zs) * np.log1p(-2 * sps.norm.sf(zs.max()))))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_sample_joint_moments(likelihood):
    model = VAE(2, 6, (5,), "tanh", likelihood, 0.5)
    theta = model.init_params(torch.Generator().manual_seed(1), weight_scale=1.5)
    x, z = model.sample_joint(theta, 40_000, torch.Generator().manual_seed(0))
    assert moments_pvalue(x, z, exact_moments(model, theta)) > ALPHA


def test_broken_sampler_is_detected():
    """Negative control: latents drawn with s.d. 1.1 instead of 1."""
    model = VAE(2, 6, (5,), "tanh", "bernoulli")
    theta = model.init_params(torch.Generator().manual_seed(1), weight_scale=1.5)
    gen = torch.Generator().manual_seed(0)
    z = 1.1 * torch.randn(40_000, 2, generator=gen, dtype=F64)
    x = (torch.rand(40_000, 6, generator=gen, dtype=F64) < torch.sigmoid(model.decode(theta, z))).to(F64)
    assert moments_pvalue(x, z, exact_moments(model, theta)) < ALPHA


# -- families and the Laplace starting point ------------------------------------------------------------
def test_gaussian_family_densities_match_torch_distributions():
    fam = GaussianMeanField(2, 3)
    gen = torch.Generator().manual_seed(0)
    phi = {"m": torch.randn(3, 2, generator=gen, dtype=F64), "log_s": 0.3 * torch.randn(3, 2, generator=gen, dtype=F64)}
    x = torch.zeros(3, 4, dtype=F64)
    eps = fam.noise((5, 3), gen, F64, "cpu")
    z = fam.sample(phi, x, eps)
    q = torch.distributions.Normal(phi["m"], phi["log_s"].exp())
    torch.testing.assert_close(z, phi["m"] + phi["log_s"].exp() * eps)
    torch.testing.assert_close(fam.log_prob(phi, x, z), q.log_prob(z).sum(-1))
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(fam.kl_standard_normal(phi, x), kl)
    torch.testing.assert_close(fam.mode(phi, x), phi["m"])
    assert fam.capabilities == {"reparam", "score", "log_prob", "analytic_kl"}  # analytic_kl: kl_standard_normal


def test_laplace_is_the_mode_with_the_hessian():
    model = VAE(2, 8, (5,), "tanh", "bernoulli")
    gen = torch.Generator().manual_seed(2)
    theta = model.init_params(gen, weight_scale=2.0)
    x, _ = model.sample_joint(theta, 4, gen)
    lap = laplace(model, theta, x)
    z = lap.mode.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.log_joint(theta, x, z).sum(), z)
    assert float(g.abs().max()) < 1e-10
    for n in range(4):
        H = torch.autograd.functional.hessian(lambda zn, n=n: model.log_joint(theta, x[n:n + 1], zn.unsqueeze(0)).sum(),
                                              lap.mode[n])
        torch.testing.assert_close(lap.precision[n], -H, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lap.chol[n] @ lap.chol[n].T, torch.linalg.inv(-H), rtol=1e-10, atol=1e-10)


def test_families_start_at_the_shifted_laplace_point():
    params = VAEParams(latent_dim=2, data_dim=6, n_data=4, hidden=[5])
    proposal = {"mean_shift": 0.8, "log_std_shift": -0.2}
    mf = build(params, GaussianProposal(**proposal), seed=0)
    lap = laplace(mf.model, mf.theta, mf.x)
    mean, log_std = laplace_targets(lap, 0.8, -0.2)
    torch.testing.assert_close(mf.phi["m"], mean)
    torch.testing.assert_close(mf.phi["log_s"], log_std)
    # the shift has Mahalanobis length δ under the Laplace posterior
    d = torch.linalg.solve_triangular(lap.chol, (mean - lap.mode).unsqueeze(-1), upper=False).squeeze(-1)
    torch.testing.assert_close(d.norm(dim=-1), torch.full((4,), 0.8, dtype=F64))
    # a linear encoder interpolates the targets when N ≤ d + 1; an MLP one fits them closely
    lin = build(params, GaussianProposal(family="gaussian_encoder", **proposal), seed=0)
    m, ls = lin.family.mean_logstd(lin.phi, lin.x)
    torch.testing.assert_close(m, mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ls, log_std, rtol=1e-9, atol=1e-9)
    mlp = build(params, GaussianProposal(family="gaussian_encoder", encoder_hidden=[8], **proposal), seed=0)
    m, ls = mlp.family.mean_logstd(mlp.phi, mlp.x)
    assert float((m - mean).abs().max()) < 1e-6 and float((ls - log_std).abs().max()) < 1e-6


def test_build_is_deterministic_and_checks_data_width():
    params = VAEParams(latent_dim=1, data_dim=4, n_data=3, hidden=[3])
    a, b = build(params, GaussianProposal(), seed=5), build(params, GaussianProposal(), seed=5)
    for k in a.theta:
        assert torch.equal(a.theta[k], b.theta[k])
    assert torch.equal(a.x, b.x) and torch.equal(a.phi["m"], b.phi["m"])
    with pytest.raises(ValueError, match="data_dim"):
        build(params, GaussianProposal(), seed=5, data=np.zeros((2, 7)))
    t = build(VAEParams(latent_dim=1, hidden=[3]), GaussianProposal(), seed=5, data=np.ones((2, 7)))
    assert t.x.shape == (2, 7) and PARAMS is VAEParams and PROPOSAL is GaussianProposal



def test_one_dimensional_elbo_reference_is_finite_at_its_default_nodes():
    """k = 1: the ELBO reference's default rule (200 nodes, doubled to 400 for its error estimate) is finite and
    equals the 150-node rule (doubled to 300, below the sizes where a three-term recurrence overflows) to 1e-10
    relative, as its own doubling error estimate says. Negative control: the 1-node rule is further than 1e-6 from
    it."""
    from gradbench.references.quadrature import quadrature_elbo

    t = build(VAEParams(latent_dim=1, data_dim=5, n_data=2, hidden=[4]), GaussianProposal(mean_shift=0.5), seed=0)
    full = quadrature_elbo(t.model, t.family, t.theta, t.phi, t.x)
    assert full.nodes == 200 and torch.isfinite(full.grad).all() and torch.isfinite(full.value)
    norm = torch.linalg.vector_norm(full.grad)
    assert float(torch.linalg.vector_norm(full.grad_error) / norm) <= 1e-10
    coarse = quadrature_elbo(t.model, t.family, t.theta, t.phi, t.x, nodes=150)
    assert float(torch.linalg.vector_norm(full.grad - coarse.grad) / norm) <= 1e-10
    assert abs(float(full.value - coarse.value)) <= 1e-10 * abs(float(full.value))
    with pytest.warns(Warning):
        rough = quadrature_elbo(t.model, t.family, t.theta, t.phi, t.x, nodes=1)
    assert float(torch.linalg.vector_norm(full.grad - rough.grad) / norm) > 1e-6


def test_build_fits_the_family_lazily_on_first_use_of_phi():
    """building a target does not fit the Laplace approximation; the first read of φ does, and gives
    exactly the eager fit (gaussian.build_family with the same generator); the family's structure is there before."""
    from gradbench.families import gaussian
    from gradbench.models.vae import LazyPhiTarget
    from gradbench.seeding import derive_seed, make_generator

    params = VAEParams(latent_dim=2, data_dim=6, n_data=5, hidden=[4])
    proposal = GaussianProposal(mean_shift=0.5, log_std_shift=-0.3)  # mean field (the encoder fits: test above)
    t = build(params, proposal, seed=3)
    assert isinstance(t, LazyPhiTarget) and not t.phi_fitted
    assert t.phi_layout.size == GaussianMeanField(2, 5).layout.size and "reparam" in t.capabilities
    assert not t.phi_fitted  # structure, capabilities and θ-side use need no fit
    _, eager = gaussian.build_family(t.model, t.theta, t.x, proposal, make_generator(derive_seed(3, "vae-family")))
    for k in eager:
        assert torch.equal(t.phi[k], eager[k])
    assert t.phi_fitted
    sub = build(params, proposal, seed=3).at(x=t.x[:2])  # at() without φ reads it: the fit happens then
    assert torch.equal(sub.phi["m"], eager["m"]) and type(sub) is LazyPhiTarget and sub.phi_fitted
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = t.nonsense

# -- the digits bias check -----------------------------------------------------------------------------
DIGITS_R = 1000
LOG_STD_SHIFT = 0.7


def digits_target() -> ComposedTarget:
    """The target of suites/vae-digits-bias.yaml: vae latent_dim 2, hidden [32], 10 dynamically binarised digits,
    mean-field q at the Laplace point shifted by δ = 0.5, log-std + 0.7 (q about twice as wide as Laplace: the
    posteriors' tails are wider than Laplace's; with + 0.3 the relative ESS of some points was 0.02 and the
    coupled estimators' replicates were heavy-tailed, max ‖ĝ − g‖ / median ≈ 200)."""
    x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
    return build(VAEParams(latent_dim=2, hidden=[32]), GaussianProposal(mean_shift=0.5, log_std_shift=LOG_STD_SHIFT), seed=0, data=x)


DIGITS_ESTIMATORS = {
    "coupled_isir": (coupled.coupled_isir, {"K": 8}, True),
    "coupled_pimh": (coupled.coupled_pimh, {"K": 8}, True),
    # SUMO: E‖∇Δ_j‖² decays like 1/j², so its variance Σ_j E‖∇Δ_j‖²/S(j) diverges for any tail with
    # finite E𝒦 (geometric or power); the default (power α = ½, infinite E𝒦 capped by max_terms) has a
    # Gaussian-type tail. With the narrower q of log_std_shift 0.3 (relative ESS down to 0.02) the old
    # default (α = 0.8) was rejected (p = 2e-4).
    "sumo": (sumo.sumo, {}, True),
    "iwae_K2": (importance.iwae, {"K": 2}, False),
    "elbo": (variational.elbo, {"S": 1}, False),
}


def digits_bias_table(R: int = DIGITS_R) -> dict[str, tuple[float, float, float, float]]:
    """name → (rel_bias, its s.e., bias p-value, max |z|) against the quadrature reference (seed 0 for every estimator)."""
    t = digits_target()
    ref = t.reference("theta")
    g = ref.value.numpy()
    out = {}
    for name, (fn, kw, _) in DIGITS_ESTIMATORS.items():
        s = fn(t, R, torch.Generator().manual_seed(0), **kw)
        G = s.grads.numpy()
        G = G[np.isfinite(G).all(1)]
        diff = G.mean(0) - g
        u = diff / np.linalg.norm(diff)
        se = float(((G - G.mean(0)) @ u).std(ddof=1) / math.sqrt(len(G)))
        test = bias_test(G, g, float(np.finfo(np.float64).eps), np.random.default_rng(0), ReferenceNoise(var=ref.error.numpy() ** 2))
        out[name] = (float(np.linalg.norm(diff) / np.linalg.norm(g)), se / float(np.linalg.norm(g)), test.pvalue, test.zmax)
    return out


def test_digits_bias_unbiased_pass_biased_rejected():
    table = digits_bias_table()
    for name, (_, _, unbiased) in DIGITS_ESTIMATORS.items():
        p = table[name][2]
        assert (p > ALPHA) if unbiased else (p < ALPHA), (name, table[name])


if __name__ == "__main__":  # the table of the closing note: python tests/models/test_vae.py
    for name, (rb, se, p, zmax) in digits_bias_table().items():
        print(f"{name:13s} rel_bias {rb:.4f} ± {se:.4f}  p = {p:.3g}  max|z| = {zmax:.2f}")
