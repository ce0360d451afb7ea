"""Adaptive Gauss–Hermite references of the vae target against independent brute force (docs/design.md §7.3).

(a) log p(x) and ∇θ log p(x) agree with scipy's adaptive quadrature (k = 1) and a dense trapezoid grid
    (k = 2, exponentially accurate for analytic integrands) to 1e-8 relative;
(b) they agree with a 10⁶-sample importance-sampling estimate (prior proposal: bounded weights) within its
    standard error: max-|z| with Šidák over coordinates, α = 0.001, seed 0;
(c) the reported doubling error estimate bounds the true error, also for deliberately coarse rules;
(d) ∇θ/∇φ ELBO agree with autograd of a brute-force (grid, density-weighted) ELBO to 1e-8 relative;
(e) negative controls: a non-adaptive rule (prior-centred, few nodes) on a peaked posterior fails the
    brute-force check *and* the importance-sampling z-test, and its doubling estimate reports it;
(f) the estimated ∇θ log p(x) (self-normalised IS, Laplace proposal) agrees with quadrature by the same Šidák z-test
    and rejects ∇θ ELBO; an explicit node count reaches the quadrature rule.
(g) exactness where the integrand is a polynomial: a linear-Gaussian VAE at k = 3 against closed forms with 2 nodes
    per axis (a dropped node as control); the doubling driver on a recorded rule.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.integrate
import scipy.stats as sps
import torch

from gradbench.contracts import ComposedTarget, Objective
from gradbench.families.gaussian import GaussianEncoder, GaussianMeanField, GaussianProposal, build_family
from gradbench.models.vae import VAE, VAEParams, build
from gradbench.references import quadrature as Q
from gradbench.references.quadrature import QuadratureWarning
from tests.references.twins import float32_twins

ALPHA = 0.001
F64 = torch.float64


def small_vae(k: int, likelihood: str = "bernoulli", activation: str = "tanh", noise_std: float = 1.0, d: int = 4,
              n: int = 2, seed: int = 3) -> tuple[VAE, dict, torch.Tensor]:
    """A small decoder (hidden [3]) with data drawn from itself."""
    gen = torch.Generator().manual_seed(seed)
    model = VAE(k, d, (3,), activation, likelihood, noise_std)
    theta = model.init_params(gen, F64, weight_scale=1.5)
    x, _ = model.sample_joint(theta, n, gen)
    return model, theta, x


def grid_log_marginal(model: VAE, theta: dict, x: torch.Tensor, half_width: float = 10.0, h: float = 0.025):
    """log p(x), ∇θ log p(x) by the trapezoid rule on [−w, w]² (k = 2): autograd of Σ_n logsumexp over the grid."""
    axis = torch.arange(-half_width, half_width + h / 2, h, dtype=F64)
    z = torch.cartesian_prod(axis, axis).unsqueeze(1).expand(-1, x.shape[0], 2)
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    lp = (torch.logsumexp(model.log_joint(th, x, z), dim=0) + 2 * math.log(h)).sum()
    g = torch.autograd.grad(lp, list(th.values()))
    return float(lp.detach()), model.layout.flatten(dict(zip(th, g)))


def scipy_log_marginal(model: VAE, theta: dict, x: torch.Tensor):
    """log p(x), ∇θ log p(x) for k = 1 by scipy's adaptive quad_vec of p(x_n, z) [1, ∇θ log p(x_n, z)]."""
    lp, grad = 0.0, torch.zeros(model.layout.size, dtype=F64)
    for n in range(x.shape[0]):
        xn = x[n:n + 1]

        def integrand(z: float, xn=xn) -> np.ndarray:
            th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
            lj = model.log_joint(th, xn, torch.tensor([[z]], dtype=F64)).sum()
            g = model.layout.flatten(dict(zip(th, torch.autograd.grad(lj, list(th.values())))))
            return math.exp(lj.detach().item()) * np.concatenate([[1.0], g.numpy()])

        val, _ = scipy.integrate.quad_vec(integrand, -12.0, 12.0, epsabs=0.0, epsrel=1e-13)
        lp += math.log(val[0])
        grad += torch.as_tensor(val[1:] / val[0])
    return lp, grad


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


CASES = [("bernoulli", "tanh", 1.0), ("gaussian", "softplus", 0.7)]


# -- (a) brute force ------------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood,activation,noise_std", CASES)
def test_log_marginal_matches_scipy_k1(likelihood, activation, noise_std):
    model, theta, x = small_vae(1, likelihood, activation, noise_std)
    res = Q.quadrature_log_marginal(model, theta, x)
    lp, g = scipy_log_marginal(model, theta, x)
    assert abs(float(res.value) - lp) <= 1e-8 * abs(lp)
    assert rel_err(res.grad, g) <= 1e-8


@pytest.mark.parametrize("likelihood,activation,noise_std", CASES)
def test_log_marginal_matches_dense_grid_k2(likelihood, activation, noise_std):
    model, theta, x = small_vae(2, likelihood, activation, noise_std)
    res = Q.quadrature_log_marginal(model, theta, x)
    lp, g = grid_log_marginal(model, theta, x)
    assert abs(float(res.value) - lp) <= 1e-8 * abs(lp)
    assert rel_err(res.grad, g) <= 1e-8


# -- (b) importance sampling, and (e) the wrong rule it must reject ----------------------------------
def is_pvalue(model: VAE, theta: dict, x: torch.Tensor, log_px: float, grad: torch.Tensor, S: int = 1_000_000,
              chunk: int = 200_000) -> float:
    """Šidák max-|z| p-value of H0: (p(x), ∇θ p(x)) = exp(log_px) (1, grad) against S prior-proposal samples
    (one data point; w = p(x | z) is bounded, so every moment is finite)."""
    gen = torch.Generator().manual_seed(0)

    def lik_and_grad(th: dict, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ll = model.log_lik(th, x, z1.unsqueeze(0)).sum()
        return ll, ll

    per_sample = torch.func.vmap(torch.func.grad(lik_and_grad, has_aux=True), in_dims=(None, 0))
    s1 = torch.zeros(model.layout.size + 1, dtype=F64)
    s2 = torch.zeros_like(s1)
    for _ in range(S // chunk):
        z = torch.randn(chunk, model.latent_dim, generator=gen, dtype=F64)
        g, ll = per_sample(theta, z)
        w = torch.exp(ll)
        v = torch.cat([w.unsqueeze(1), w.unsqueeze(1) * model.layout.flatten(g, batch=(chunk,))], 1)
        s1 += v.sum(0)
        s2 += (v * v).sum(0)
    mean = s1 / S
    se = torch.sqrt((s2 / S - mean**2) / (S - 1))
    exact = math.exp(log_px) * torch.cat([torch.ones(1, dtype=F64), grad])
    live = se > 0
    zmax = float(((mean - exact).abs()[live] / se[live]).max())
    m = int(live.sum())
    return float(-np.expm1(m * np.log1p(-2 * sps.norm.sf(zmax))))


def test_log_marginal_agrees_with_importance_sampling():
    model, theta, x = small_vae(2, n=1)
    res = Q.quadrature_log_marginal(model, theta, x)
    assert is_pvalue(model, theta, x, float(res.value), res.grad) > ALPHA


def peaked_vae() -> tuple[VAE, dict, torch.Tensor]:
    """Gaussian likelihood with σ = 0.2, d = 6: a posterior with s.d. ≈ 0.1, far from N(0, I)."""
    return small_vae(2, "gaussian", "tanh", noise_std=0.2, d=6, n=1, seed=5)


def prior_centred_rule(model: VAE, theta: dict, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative control: the same rule centred at 0 with the prior's scale (not adaptive)."""
    k = model.latent_dim
    N = x.shape[0]
    lap = Q.Laplace(torch.zeros(N, k, dtype=F64), torch.eye(k, dtype=F64).expand(N, k, k), torch.eye(k, dtype=F64).expand(N, k, k),
                    torch.zeros(N, dtype=F64))
    return Q.log_marginal_rule(model, theta, x, lap, n)


def test_adaptive_rule_on_peaked_posterior_passes_both_checks():
    model, theta, x = peaked_vae()
    res = Q.quadrature_log_marginal(model, theta, x)
    _, g = grid_log_marginal(model, theta, x, half_width=6.0, h=0.01)
    assert rel_err(res.grad, g) <= 1e-8
    assert is_pvalue(model, theta, x, float(res.value), res.grad) > ALPHA


def test_prior_centred_rule_is_detected_on_peaked_posterior():
    model, theta, x = peaked_vae()
    lp_bad, g_bad = prior_centred_rule(model, theta, x, 8)
    _, g = grid_log_marginal(model, theta, x, half_width=6.0, h=0.01)
    assert rel_err(g_bad, g) > 1e-2  # the brute-force check fails …
    assert is_pvalue(model, theta, x, float(lp_bad), g_bad) < ALPHA  # … and so does the importance-sampling test
    _, g_bad2 = prior_centred_rule(model, theta, x, 16)
    assert rel_err(g_bad, g_bad2) > 1e-2  # its own doubling estimate says it is not converged


# -- (c) the error estimate bounds the true error ------------------------------------------------------
@pytest.mark.parametrize("nodes", [3, 4, 6, 8, 12, 20])
def test_doubling_error_estimate_bounds_true_error(nodes):
    model, theta, x = small_vae(2)
    lp, g = grid_log_marginal(model, theta, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuadratureWarning)
        res = Q.quadrature_log_marginal(model, theta, x, nodes)
    floor = 1e-12 * float(torch.linalg.vector_norm(g))  # round-off of the brute force itself
    assert abs(float(res.value) - lp) <= float(res.value_error) + 1e-12 * abs(lp)
    assert float(torch.linalg.vector_norm(res.grad - g)) <= float(torch.linalg.vector_norm(res.grad_error)) + floor


def test_coarse_rule_warns():
    model, theta, x = small_vae(2)
    with pytest.warns(QuadratureWarning, match="not small"):
        Q.quadrature_log_marginal(model, theta, x, 3)


# -- (d) ELBO gradients against autograd of a brute-force ELBO ------------------------------------------
def grid_elbo(model: VAE, family, theta: dict, phi: dict, x: torch.Tensor, half_width: float = 10.0, h: float = 0.025):
    """ELBO = Σ_n Σ_grid h² q_φ(z|x_n) [log p(x_n, z) − log q_φ(z|x_n)], differentiated through the density q_φ
    (the score form), on a fixed grid: independent of the reparameterised Gauss–Hermite rule."""
    axis = torch.arange(-half_width, half_width + h / 2, h, dtype=F64)
    z = torch.cartesian_prod(axis, axis).unsqueeze(1).expand(-1, x.shape[0], 2)
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    ph = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    log_q = family.log_prob(ph, x, z)
    elbo = (h * h * torch.exp(log_q) * (model.log_joint(th, x, z) - log_q)).sum()
    grads = torch.autograd.grad(elbo, [*th.values(), *ph.values()])
    gt = model.layout.flatten(dict(zip(th, grads[: len(th)])))
    gp = family.layout.flatten(dict(zip(ph, grads[len(th):])))
    return float(elbo.detach()), gt, gp


@pytest.mark.parametrize("family_name", ["gaussian_mean_field", "gaussian_encoder"])
def test_elbo_gradients_match_brute_force(family_name):
    model, theta, x = small_vae(2)
    proposal = GaussianProposal(family=family_name, mean_shift=0.7, log_std_shift=0.3)
    family, phi = build_family(model, theta, x, proposal, torch.Generator().manual_seed(0))
    assert isinstance(family, GaussianMeanField if family_name == "gaussian_mean_field" else GaussianEncoder)
    res = Q.quadrature_elbo(model, family, theta, phi, x)
    elbo, gt, gp = grid_elbo(model, family, theta, phi, x)
    P = model.layout.size
    assert abs(float(res.value) - elbo) <= 1e-8 * abs(elbo)
    assert rel_err(res.grad[:P], gt) <= 1e-8
    assert rel_err(res.grad[P:], gp) <= 1e-8


def test_elbo_gradient_of_a_wrong_family_is_detected():
    """Negative control for (d): q's rule with the wrong scale (log s + 0.1 inside the nodes) disagrees."""
    model, theta, x = small_vae(2)
    family, phi = build_family(model, theta, x, GaussianProposal(mean_shift=0.7), torch.Generator().manual_seed(0))
    wrong = {"m": phi["m"], "log_s": phi["log_s"] + 0.1}
    _, _, gp_wrong = Q.elbo_rule(model, family, theta, wrong, x, 64)
    _, _, gp = grid_elbo(model, family, theta, phi, x)
    assert rel_err(gp_wrong, gp) > 1e-3


# -- references on a built target ----------------------------------------------------------------------
def _target(k: int = 2, **proposal) -> ComposedTarget:
    return build(VAEParams(latent_dim=k, data_dim=5, n_data=2, hidden=[4], reference_replicates=4000),
                 GaussianProposal(**proposal), seed=0)


def test_target_references_kinds_and_error_fields():
    t = _target(mean_shift=0.5)
    for key in ("theta", "theta_elbo", "phi_elbo"):
        ref = t.reference(key)
        assert ref.kind == "quadrature" and ref.error is not None
        assert float(ref.error.max()) < 1e-6 * float(ref.value.norm())
    assert t.reference("theta_iwae2").kind == "estimated"
    assert t.reference("phi_iwae2").value.shape == (t.phi_layout.size,)


@pytest.mark.parametrize("family", ["gaussian_mean_field", "gaussian_encoder"])
def test_estimated_elbo_gradient_agrees_with_quadrature(family):
    """The estimated (reparameterised, K = 1) path against the quadrature ELBO gradients: Šidák max-|z|, α = 0.001,
    for a mean-field and an amortised (encoder: q depends on x) family; all 4000 replicates count (chunks of 256)."""
    t = _target(family=family, mean_shift=0.5, log_std_shift=0.2)
    for wrt in ("theta", "phi"):
        quad = t.reference(Objective(wrt, "elbo"))
        est = Q.estimated_iwae(t, Objective(wrt, "elbo"), replicates=4000, seed=0)
        assert est.n == 4000
        z = ((est.value - quad.value).abs() / est.stderr).max().item()
        m = est.value.numel()
        assert -math.expm1(m * math.log1p(-2 * sps.norm.sf(z))) > ALPHA


def test_estimated_iwae2_gradient_is_not_the_elbo_gradient():
    """Negative control for the check above: the same test rejects ∇φ IWAE_2 as an estimate of ∇φ ELBO."""
    t = _target(mean_shift=0.5, log_std_shift=0.2)
    quad = t.reference(Objective("phi", "elbo"))
    est = Q.estimated_iwae(t, Objective("phi", "iwae", 2), replicates=4000, seed=0)
    z = ((est.value - quad.value).abs() / est.stderr).max().item()
    assert -math.expm1(est.value.numel() * math.log1p(-2 * sps.norm.sf(z))) < ALPHA
    small = [Q.estimated_iwae(t, Objective("phi", "iwae", 2), replicates=300, seed=s).value for s in (0, 0, 1)]
    assert torch.equal(small[0], small[1]) and not torch.equal(small[0], small[2])  # the seed fixes the draws


def test_float32_target_gets_float64_quadrature():
    t = build(VAEParams(latent_dim=1, data_dim=5, n_data=2, hidden=[4]), GaussianProposal(), 0, dtype=torch.float32)
    ref = t.reference("theta")
    assert ref.value.dtype == F64 and t.x.dtype == torch.float32


def test_large_latent_dim_gets_estimated_references():
    t = build(VAEParams(latent_dim=4, data_dim=5, n_data=2, hidden=[4], reference_replicates=200),
              GaussianProposal(), 0)
    assert t.reference("theta").kind == "estimated"
    assert t.reference("phi_elbo").kind == "estimated"


def _sidak_p(est, value: torch.Tensor) -> float:
    """Šidák-combined p-value of max_j |est_j − value_j| / s.e._j (independent-coordinates form, conservative here)."""
    z = ((est.value - value).abs() / est.stderr).max().item()
    return -math.expm1(est.value.numel() * math.log1p(-2 * sps.norm.sf(z)))


def test_estimated_log_marginal_gradient_agrees_with_quadrature():
    """The self-normalised importance-sampling estimate of ∇θ log p(x) (Laplace proposal, K = 1024 particles) against
    the quadrature reference of a k = 2 target: Šidák max-|z| by its own s.e., α = 0.001, seed 0 (its O(1/K) bias is
    small against the s.e. of 200 replicates). The 200 replicates come in chunks of 64 (NODE_BUDGET / (K N)), the last
    one partial, and all count; the same seed gives the same draws, another seed others. Negative control: the same
    test rejects ∇θ ELBO, a different gradient, as an estimate of ∇θ log p(x)."""
    t = _target(mean_shift=0.5, log_std_shift=0.2)
    objective = Objective("theta", "log_marginal")
    est = Q.estimated_log_marginal(t, objective, replicates=200, seed=0)
    assert est.kind == "estimated" and est.n == 200 and Q.NODE_BUDGET // (1024 * t.x.shape[0]) == 64
    assert _sidak_p(est, t.reference(objective).value) > ALPHA
    assert _sidak_p(est, t.reference(Objective("theta", "elbo")).value) < ALPHA
    assert torch.equal(Q.estimated_log_marginal(t, objective, replicates=200, seed=0).value, est.value)
    assert not torch.equal(Q.estimated_log_marginal(t, objective, replicates=200, seed=1).value, est.value)


def test_quadrature_reference_uses_the_nodes_asked_for():
    """An explicit node count reaches the rule: the reference's value and error are those of n = 3 and 6 nodes per
    axis (deterministic); negative control: the default count gives another error estimate. θ and φ ELBO take their
    own slices of the concatenated gradient; other objectives have no quadrature reference."""
    t = _target(mean_shift=0.5)
    lm = Objective("theta", "log_marginal")
    res = Q.quadrature_log_marginal(t.model, t.theta, t.x, 3)
    ref = Q.quadrature_reference(t, lm, nodes=3)
    assert torch.equal(ref.value, res.grad) and torch.equal(ref.error, res.grad_error)
    assert not torch.equal(Q.quadrature_reference(t, lm).error, res.grad_error)
    elbo = Q.quadrature_elbo(t.model, t.family, t.theta, t.phi, t.x, 3)
    P = t.model.layout.size
    assert torch.equal(Q.quadrature_reference(t, Objective("theta", "elbo"), nodes=3).value, elbo.grad[:P])
    phi = Q.quadrature_reference(t, Objective("phi", "elbo"), nodes=3)
    assert torch.equal(phi.value, elbo.grad[P:]) and torch.equal(phi.error, elbo.grad_error[P:])
    assert not torch.equal(Q.quadrature_reference(t, Objective("phi", "elbo")).error, elbo.grad_error[P:])
    with pytest.raises(ValueError, match="no quadrature reference for theta_iwae2"):
        Q.quadrature_reference(t, Objective("theta", "iwae", 2))


def test_reference_builders_route_each_objective(monkeypatch):
    """Quadrature for latent_dim ≤ 3 (∇θ log p(x), θ/φ ELBO), estimated otherwise and for every IWAE_K; each builder
    passes the target, the objective and its own settings on (node count; replicates and seed, by default 20 000 and
    0). Recorded by stand-ins for the three reference functions (no computation)."""
    calls = []
    for name in ("quadrature_reference", "estimated_iwae", "estimated_log_marginal"):
        monkeypatch.setattr(Q, name, lambda t, o, *rest, _name=name: calls.append((_name, t, o, rest)) or _name)
    keys = {"theta", "theta_elbo", "phi_elbo", "theta_iwae", "phi_iwae"}
    o = Objective("theta", "elbo")
    expected = {3: {"theta": "quadrature_reference", "theta_elbo": "quadrature_reference",
                    "phi_elbo": "quadrature_reference", "theta_iwae": "estimated_iwae", "phi_iwae": "estimated_iwae"},
                4: {"theta": "estimated_log_marginal", "theta_elbo": "estimated_iwae", "phi_elbo": "estimated_iwae",
                    "theta_iwae": "estimated_iwae", "phi_iwae": "estimated_iwae"}}
    for k, routes in expected.items():
        builders = Q.reference_builders(k, nodes=5, replicates=77, seed=9)
        assert set(builders) == keys
        for key, name in routes.items():
            calls.clear()
            assert builders[key]("target", o) == name
            assert calls == [(name, "target", o, (5,) if name == "quadrature_reference" else (77, 9))]
    calls.clear()
    Q.reference_builders(4)["theta"]("target", o)
    Q.reference_builders(4)["phi_iwae"]("target", o)
    Q.reference_builders(2)["theta"]("target", o)
    assert [c[3] for c in calls] == [(20_000, 0), (20_000, 0), (None,)]


def test_quadrature_elbo_latent_dim_bound():
    """ELBO quadrature up to latent_dim 3 (a coarse 4/8-node rule here: it may warn), none above."""
    for k in (3, 4):
        model, theta, x = small_vae(k)
        family, phi = build_family(model, theta, x, GaussianProposal(mean_shift=0.5),
                                   torch.Generator().manual_seed(0))
        if k == 3:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", QuadratureWarning)
                assert Q.quadrature_elbo(model, family, theta, phi, x, 4).nodes == 4
        else:
            with pytest.raises(ValueError, match="latent_dim ≤ 3, got 4"):
                Q.quadrature_elbo(model, family, theta, phi, x, 4)


def test_coarse_elbo_rule_warns_per_block():
    """A 2/4-node ELBO rule on a k = 2 target: the doubling change is reported for θ and φ separately, each relative
    to its own block (the values recomputed here from the result); negative control: the default rule does not warn."""
    model, theta, x = small_vae(2)
    family, phi = build_family(model, theta, x, GaussianProposal(mean_shift=0.7, log_std_shift=0.3),
                               torch.Generator().manual_seed(0))
    P = model.layout.size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = Q.quadrature_elbo(model, family, theta, phi, x, 2)
    messages = [str(w.message) for w in caught if issubclass(w.category, QuadratureWarning)]
    for name, sl in (("θ-gradient", slice(0, P)), ("φ-gradient", slice(P, None))):
        rel = float(torch.linalg.vector_norm(res.grad_error[sl]) / torch.linalg.vector_norm(res.grad[sl]))
        assert rel > Q.WARN_RELATIVE_ERROR
        expected = (f"ELBO quadrature: doubling error estimate not small (n = 2 → 4 nodes per axis changes the "
                    f"{name} by {rel:.2e} relative)")
        assert sum(m.startswith(expected) for m in messages) == 1, (expected, messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuadratureWarning)
        Q.quadrature_elbo(model, family, theta, phi, x)


def test_float32_target_gets_float64_estimated_references():
    """The estimated references of a float32 target are computed in float64 from its values: bit for bit those of a
    float64 copy of the same parameters and data, same seed. Negative control: moving one θ entry by one float32 ulp
    in the copy changes the bits (the comparison sees float32-sized differences)."""
    t32 = build(VAEParams(latent_dim=2, data_dim=5, n_data=2, hidden=[4]), GaussianProposal(mean_shift=0.5), 0,
                dtype=torch.float32)
    up = lambda p: {k: v.double() for k, v in p.items()}
    t64 = t32.at(theta=up(t32.theta), phi=up(t32.phi), x=t32.x.double())
    name = next(iter(t32.theta))
    nudged = {**up(t32.theta), name: t32.theta[name].double() * (1 + 2.0**-23)}
    for fn, objective in ((Q.estimated_iwae, Objective("phi", "iwae", 2)),
                          (Q.estimated_log_marginal, Objective("theta", "log_marginal"))):
        a, b = (fn(t, objective, replicates=64, seed=0).value for t in (t32, t64))
        assert a.dtype == b.dtype == F64 and torch.equal(a, b), fn.__name__
        assert not torch.equal(fn(t64.at(theta=nudged), objective, replicates=64, seed=0).value, a)


def test_gaussian_vae_rules_are_exact_with_two_nodes(monkeypatch):
    """A linear decoder with a Gaussian likelihood (x | z ~ N(W z + b, σ² I), z ~ N(0, I), k = 3 — the largest
    latent dimension quadrature serves) makes log p(x, z) quadratic in z: the adaptive rule (Laplace centre = the
    exact posterior) and the ELBO rule under a Gaussian q integrate it exactly with 2 nodes per axis (degree ≤ 3),
    every node counted. Checked against closed forms written with torch.distributions and autograd:
    log p(x_n) = log N(x_n; b, W Wᵀ + σ² I) and ELBO = Σ_n [log N(x_n; W m_n + b, σ² I) − tr(W S_n Wᵀ)/2σ²
    + log N(m_n; 0, I) − tr S_n / 2 + ½ log det(2πe S_n)], S_n = diag(e^{2 log_s}), to 1e-12 relative. Negative
    control: the same rules with the first product node left out miss by more than 1e-6."""
    sigma = 0.7
    t = build(VAEParams(latent_dim=3, data_dim=4, n_data=2, hidden=[], likelihood="gaussian", noise_std=sigma),
              GaussianProposal(mean_shift=0.5, log_std_shift=0.3), seed=0)
    x = t.x.double()

    def log_px(th):
        cov = th["W0"] @ th["W0"].T + sigma**2 * torch.eye(4, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(th["b0"], cov).log_prob(x).sum()

    def elbo(th, ph):
        m, s2 = ph["m"], torch.exp(2 * ph["log_s"])
        lik = torch.distributions.Normal(m @ th["W0"].T + th["b0"], sigma).log_prob(x).sum(-1)
        lik = lik - ((th["W0"] ** 2) @ s2.T).sum(0) / (2 * sigma**2)
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(m).sum(-1) - s2.sum(-1) / 2
        entropy = 0.5 * torch.log(2 * math.pi * math.e * s2).sum(-1)
        return (lik + prior + entropy).sum()

    theta = {k: v.double() for k, v in t.theta.items()}
    phi = {k: v.double() for k, v in t.phi.items()}
    g_px = t.layout.flatten(torch.func.grad(log_px)(theta))
    g_t, g_p = (lay.flatten(g) for lay, g in zip((t.layout, t.phi_layout), torch.func.grad(elbo, (0, 1))(theta, phi)))
    rel = lambda a, b: float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
    lap = Q.laplace(t.model, theta, x)
    v, g = Q.log_marginal_rule(t.model, theta, x, lap, 2)
    assert abs(float(v - log_px(theta))) <= 1e-12 * abs(float(v)) and rel(g, g_px) <= 1e-12
    res = Q.quadrature_log_marginal(t.model, theta, x, nodes=2)
    assert res.nodes == 2 and rel(res.grad, g_px) <= 1e-12 and float(res.value_error) <= 1e-10
    v, gt, gp = Q.elbo_rule(t.model, t.family, theta, phi, x, 2)
    assert abs(float(v - elbo(theta, phi))) <= 1e-12 * abs(float(v))
    assert rel(gt, g_t) <= 1e-12 and rel(gp, g_p) <= 1e-12
    full = Q.quadrature_elbo(t.model, t.family, theta, phi, x, nodes=2)
    assert rel(full.grad, torch.cat([g_t, g_p])) <= 1e-12
    # a node budget of 8 = M nodes × 1 point: the log p(x) rule runs one data point per chunk, the ELBO rule 4 nodes
    # per chunk; chunking changes nothing
    monkeypatch.setattr(Q, "NODE_BUDGET", 8)
    v1, g1 = Q.log_marginal_rule(t.model, theta, x, lap, 2)
    assert abs(float(v1 - log_px(theta))) <= 1e-12 * abs(float(v1)) and rel(g1, g_px) <= 1e-12
    v1, gt1, gp1 = Q.elbo_rule(t.model, t.family, theta, phi, x, 2)
    assert abs(float(v1 - elbo(theta, phi))) <= 1e-12 * abs(float(v1)) and rel(gt1, g_t) <= 1e-12 and rel(gp1, g_p) <= 1e-12
    monkeypatch.undo()
    # negative control: drop the first product node (a rule that skips a node, or a chunk loop starting at 1)
    u, lw = Q.gauss_hermite(2, 3)
    monkeypatch.setattr(Q, "gauss_hermite", lambda n, k: (u[1:], lw[1:]))
    _, g_short = Q.log_marginal_rule(t.model, theta, x, lap, 2)
    _, gt_short, _ = Q.elbo_rule(t.model, t.family, theta, phi, x, 2)
    assert rel(g_short, g_px) > 1e-6 and rel(gt_short, g_t) > 1e-6


def test_with_doubling_evaluates_n_and_2n_and_warns_by_block():
    """quadrature._with_doubling on a recorded rule: it evaluates n then 2n nodes, keeps the 2n value, reports
    |·_2n − ·_n| as the error and n as ``nodes``; a block whose change exceeds WARN_RELATIVE_ERROR (relative to the
    block) gets one QuadratureWarning naming the rule, the block, n → 2n and the change, and a value change beyond
    it another. Control: a rule whose two sizes agree warns nothing."""
    calls: list[int] = []

    def rule(m: int):
        calls.append(m)
        return torch.tensor(100.0 + m), torch.tensor([1.0, 1.0, 1.0 + m])  # block "b" moves, block "a" does not

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = Q._with_doubling(rule, 4, "test rule", {"a": slice(0, 2), "b": slice(2, None)})
    assert calls == [4, 8] and res.nodes == 4 and float(res.value) == 108.0 and float(res.value_error) == 4.0
    assert res.grad.tolist() == [1.0, 1.0, 9.0] and res.grad_error.tolist() == [0.0, 0.0, 4.0]
    texts = [str(w.message) for w in caught if issubclass(w.category, QuadratureWarning)]
    assert texts == [("test rule: doubling error estimate not small (n = 4 → 8 nodes per axis changes the b by "
                      "4.44e-01 relative); increase quadrature_nodes or check for a multimodal posterior"),
                     "test rule: doubling error estimate of the value is 4.00e+00"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Q._with_doubling(rule, 4, "test rule")  # one block by default, named "gradient"
    assert "changes the gradient by" in str(caught[0].message)
    steady = lambda m: (torch.tensor(100.0), torch.tensor([1.0, 2.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(Q._with_doubling(steady, 4, "test rule").value_error) == 0.0


@pytest.mark.parametrize("value, change, warns", [(1e6, 0.9, False), (1e6, 1.1, True),
                                                   (0.5, 0.9e-6, False), (0.5, 1.1e-6, True)])
def test_doubling_value_warning_is_relative_above_one_and_absolute_below(value, change, warns):
    """The value's doubling change warns beyond WARN_RELATIVE_ERROR · max(1, |value|) (1e-6): relative for a large
    value (1e6: a change of 0.9 is quiet, 1.1 warns), absolute for a small one (0.5: 0.9e-6 quiet, 1.1e-6 warns)."""
    rule = lambda m: (torch.tensor(value + (change if m == 8 else 0.0), dtype=torch.float64),
                      torch.ones(2, dtype=torch.float64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Q._with_doubling(rule, 4, "test rule")
    texts = [str(w.message) for w in caught if issubclass(w.category, QuadratureWarning)]
    assert texts == ([f"test rule: doubling error estimate of the value is {change:.2e}"] if warns else [])


@pytest.mark.filterwarnings("ignore::gradbench.references.quadrature.QuadratureWarning")  # 4 nodes: coarse, on purpose
def test_a_float32_targets_quadrature_reference_is_computed_in_float64():
    """The rules cast θ, φ and x to float64 before integrating: a float32 target's quadrature references (∇θ log p(x),
    ∇θ/∇φ ELBO) equal, to 1e-12, those of the float64 target at the same (float32-representable) values. Negative
    control: the same rule evaluated in float32 differs by more than 1e-9."""
    t = build(VAEParams(latent_dim=2, data_dim=4, n_data=2, hidden=[3]), GaussianProposal(mean_shift=0.5), seed=0)
    t32, t64 = float32_twins(t)
    rel = lambda a, b: float(torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b))
    for objective in (Objective("theta", "log_marginal"), Objective("theta", "elbo"), Objective("phi", "elbo")):
        ours, theirs = Q.quadrature_reference(t32, objective, 4), Q.quadrature_reference(t64, objective, 4)
        assert rel(ours.value, theirs.value) < 1e-12, objective
    g64 = Q.elbo_rule(t.model, t.family, t64.theta, t64.phi, t64.x, 4)[2]
    u, log_w = Q.gauss_hermite(4, 2)  # the same nodes and integrand with float32 parameters and no cast
    g_f32 = Q._node_sum(t.model, t.family, t32.theta, t32.phi, t32.x, u.float(), torch.exp(log_w).float(),
                        Q._reparam_integrand(t.model, t.family, t32.x))[2]
    assert rel(g_f32, g64) > 1e-9
