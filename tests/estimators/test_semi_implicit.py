"""sivi, uivi, vcd on the semi-implicit targets. Every stochastic test: fixed seed 0, α = 0.001,
error scaled by the Monte Carlo standard error, and a negative control that must be rejected."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench.estimators.pathwise import stl
from gradbench.estimators.semi_implicit import chain_ess, density_ratio, hmc_init, hmc_step, sivi, uivi, vcd
from gradbench.models.params import PPCAParams, SemiImplicitProposal, VAEParams
from gradbench.models.semi_implicit import build_ppca, build_vae, ppca_vcd_limit_reference
from gradbench.stats import ReferenceNoise, bias_test

ALPHA = 1e-3
EPS = float(np.finfo(np.float64).eps)
PROPOSAL = SemiImplicitProposal(mixing_dim=3, mean_shift=0.5)


@pytest.fixture(scope="module")
def ppca():
    return build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), PROPOSAL, 0)


@pytest.fixture(scope="module")
def vae():
    return build_vae(VAEParams(latent_dim=2, data_dim=6, n_data=3, hidden=[5]), PROPOSAL, 0,)


def _noise(ref):
    """The reference's uncertainty: a quadrature error bound (``error``) or an estimated s.e."""
    v = ref.error if ref.error is not None else ref.stderr
    return None if v is None else ReferenceNoise(var=v.numpy() ** 2)


def pvalue(G: torch.Tensor, ref) -> float:
    return bias_test(G.numpy(), ref.value.numpy(), EPS, np.random.default_rng(0), _noise(ref)).pvalue


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_uivi_with_exact_score_is_stl_on_the_same_draws(ppca) -> None:
    """reverse: marginal (∇_z log q exact, J = ∞) is (∇_z log p − ∇_z log q) ∂z/∂φ = sticking the landing, draw by draw."""
    torch.testing.assert_close(uivi(ppca, 50, gen(), reverse="marginal").grads, stl(ppca, 50, gen()).grads,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["ppca", "vae"])
def test_uivi_exact_reverse_unbiased_and_controls_rejected(name, request) -> None:
    target = request.getfixturevalue(name)
    ref = target.reference("phi_elbo")
    assert pvalue(uivi(target, 4000, gen(), reverse="exact").grads, ref) > ALPHA
    assert pvalue(uivi(target, 4000, gen(), reverse="exact", samples=4).grads, ref) > ALPHA
    assert pvalue(uivi(target, 4000, gen(), reverse="generating").grads, ref) < ALPHA  # ε′ = ε⁰: no HMC step
    assert pvalue(uivi(target, 4000, gen(), reverse="prior").grads, ref) < ALPHA  # wrong reverse conditional


def test_uivi_hmc_bias_falls_with_burn_in(ppca) -> None:
    """Zero burn-in (one HMC iteration from ε⁰) is detectably biased; after 20 iterations it is not, at R = 4000."""
    ref = ppca.reference("phi_elbo")
    short = uivi(ppca, 4000, gen(), burn_in=0)
    long = uivi(ppca, 4000, gen(), burn_in=20)
    assert pvalue(short.grads, ref) < ALPHA
    assert pvalue(long.grads, ref) > ALPHA
    acc = long.diagnostics["acceptance"]
    assert acc.shape == (4000,) and bool(((acc > 0.5) & (acc <= 1)).all())
    assert float(long.cost[0]) == ppca.n_data * (1 + 21 * 5)


def test_hmc_leaves_the_reverse_conditional_invariant(ppca) -> None:
    """Chains started at exact draws of q(ε|z): after 10 HMC iterations the whitened draws still have mean 0 and
    variance 1 per coordinate (z-scores with Šidák correction at α = 0.001)."""
    fam, phi = ppca.family, ppca.phi
    g = gen()
    n = 20_000
    z = fam.sample(phi, ppca.x, ppca.draw_noise((n,), g))
    mean, C = fam.reverse_conditional(phi, z)

    def log_density(e: torch.Tensor) -> torch.Tensor:
        return fam.log_mixing(e) + fam.log_conditional(phi, z, e)

    state = hmc_init(log_density, fam.exact_reverse_sample(phi, z, g))
    for _ in range(10):
        state, _ = hmc_step(log_density, state, g, step_size=0.3, leapfrog=5, jitter=0.5)
    w = torch.linalg.solve_triangular(C, (state.position - mean).unsqueeze(-1), upper=False).squeeze(-1).reshape(n, -1)
    z_mean = w.mean(0) / math.sqrt(1 / n)
    z_var = (w.pow(2).mean(0) - 1) / math.sqrt(2 / n)  # Var(w²) = 2 for a standard normal
    crit = sps.norm.isf((1 - (1 - ALPHA) ** (1 / (2 * w.shape[1]))) / 2)
    assert float(torch.cat([z_mean, z_var]).abs().max()) < crit


def test_sivi_bias_shrinks_with_K_and_K0_is_rejected(ppca) -> None:
    """The bias of the SIVI-bound gradient against ∇φ ELBO, projected on the K = 1 bias direction (estimated from an
    independent run), falls with K: weighted least-squares slope of log bias on log K, slope + z·s.e. < 0."""
    ref = ppca.reference("phi_elbo").value
    g = gen()
    assert pvalue(sivi(ppca, 4000, g, K=0).grads, ppca.reference("phi_elbo")) < ALPHA  # q(z|ε⁰) taken as q(z)
    direction = sivi(ppca, 4000, g, K=1).grads.mean(0) - ref
    direction = direction / direction.norm()
    Ks = [1, 2, 4, 8, 16, 32]
    b, se = [], []
    for K in Ks:
        proj = (sivi(ppca, 4000, g, K=K).grads - ref) @ direction
        b.append(float(proj.mean()))
        se.append(float(proj.std() / math.sqrt(proj.numel())))
    b_arr, se_arr = np.array(b), np.array(se)
    assert (b_arr > 4 * se_arr).all()  # every K still detectably biased in that direction at this budget
    x, y, w = np.log(Ks), np.log(b_arr), (b_arr / se_arr) ** 2  # delta method: s.e.(log b) = s.e.(b)/b
    xm = (w * x).sum() / w.sum()
    slope = (w * (x - xm) * y).sum() / (w * (x - xm) ** 2).sum()
    slope_se = 1 / math.sqrt((w * (x - xm) ** 2).sum())
    assert slope + sps.norm.isf(ALPHA) * slope_se < 0


def test_vcd_reaches_its_t_to_infinity_limit(ppca) -> None:
    """On PPCA, −∇φ L_VCD → ∇φ [ELBO − KL(p ‖ q)] (exact): t = 20 HMC iterations pass against that limit and are
    rejected against ∇φ ELBO (VCD optimises a different objective); t = 1 is rejected against the limit."""
    limit = ppca_vcd_limit_reference(ppca)
    far = vcd(ppca, 2000, gen(), t=20)
    assert pvalue(far.grads, limit) > ALPHA
    assert pvalue(far.grads, ppca.reference("phi_elbo")) < ALPHA
    assert pvalue(vcd(ppca, 2000, gen(), t=1).grads, limit) < ALPHA
    assert float(far.cost[0]) == ppca.n_data * 2 * (1 + 20 * 5)


def test_vcd_needs_two_samples_for_the_loo_control_variate(ppca) -> None:
    with pytest.raises(ValueError):
        vcd(ppca, 2, gen(), S=1)


def test_estimators_refuse_an_explicit_family() -> None:
    from gradbench.models.params import GaussianProposal
    from gradbench.models.vae import build

    target = build(VAEParams(latent_dim=2, data_dim=4, n_data=2), GaussianProposal(), 0)
    with pytest.raises(TypeError):
        sivi(target, 2, gen())
    with pytest.raises(TypeError):
        uivi(target, 2, gen())


def test_density_ratio_bias_comes_from_the_classifier(ppca) -> None:
    """Untrained (T = 0: q taken as the prior) and 2-step classifiers are rejected; 20 damped Newton steps on
    256 + 256 fresh draws pass against the exact ∇φ ELBO (R = 400, seed 0)."""
    ref = ppca.reference("phi_elbo")
    assert pvalue(density_ratio(ppca, 400, gen(), steps=0).grads, ref) < ALPHA
    assert pvalue(density_ratio(ppca, 400, gen(), steps=2).grads, ref) < ALPHA
    trained = density_ratio(ppca, 400, gen(), steps=20)
    assert pvalue(trained.grads, ref) > ALPHA
    assert float(trained.cost[0]) == ppca.n_data * (1 + 2 * 256 * 20)


# -- ε over atoms: uivi with the exact discrete reverse conditional ---------------------------------
@pytest.fixture(scope="module")
def banana_atoms():
    from gradbench.models.params import Toy2DParams
    from gradbench.models.toy2d import build

    return build(Toy2DParams(density="banana"), SemiImplicitProposal(mixing_dim=3, mean_shift=0.5, n_atoms=5), 0)


def test_uivi_exact_discrete_reverse_unbiased_and_controls_rejected(banana_atoms) -> None:
    """Atoms: ε′ ~ q(j | z) (the exact discrete posterior) passes the bias test against the quadrature ∇φ ELBO on
    the banana (R = 4000, seed 0); ε′ = ε⁰ and ε′ ~ q(ε) are rejected; HMC is refused (no density on ℝᵐ)."""
    ref = banana_atoms.reference("phi_elbo")
    assert pvalue(uivi(banana_atoms, 4000, gen(), reverse="exact").grads, ref) > ALPHA
    assert pvalue(uivi(banana_atoms, 4000, gen(), reverse="generating").grads, ref) < ALPHA
    assert pvalue(uivi(banana_atoms, 4000, gen(), reverse="prior").grads, ref) < ALPHA
    with pytest.raises(ValueError):
        uivi(banana_atoms, 2, gen(), reverse="hmc")


# -- effective sample size of the reverse chain ----------------------------------------------------
def _ar1(phi: float, T: int, B: int, C: int, g: torch.Generator) -> torch.Tensor:
    e = torch.randn(T, B, C, generator=g, dtype=torch.float64)
    x = torch.empty_like(e)
    x[0] = e[0] / math.sqrt(1 - phi**2)
    for t in range(1, T):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_chain_ess_recovers_the_ar1_autocorrelation_time() -> None:
    """AR(1), φ = 0.5: τ = (1 + φ)/(1 − φ) = 3. T/ESS over 100 independent groups of 10 chains of length 2000 (seed 0)
    is within z_{α/2}·s.e. + τ²/T of 3 (the second term bounds the known O(τ²/T) downward bias of centred, 1/T-normalised
    autocovariances); AR(1) chains with φ = 0.7 (τ = 5.67), judged against τ = 3, are rejected (negative control)."""
    g = gen()
    T, tau = 2000, 3.0
    crit = sps.norm.isf(ALPHA / 2)

    def within(phi: float) -> bool:
        t_hat = T / chain_ess(_ar1(phi, T, 100, 10, g))
        se = float(t_hat.std() / math.sqrt(t_hat.numel()))
        return abs(float(t_hat.mean()) - tau) < crit * se + tau**2 / T

    assert within(0.5)
    assert not within(0.7)


def test_uivi_reports_ess_and_mcmc_protocol_rows(ppca) -> None:
    """uivi with HMC reports per-replicate ESS of its burn_in + 2 state chain (1 ≤ ESS ≤ T log₁₀ T) next to the
    acceptance; the mcmc protocol turns both into mean ± s.e. rows; chains shorter than 10 states and the exact reverse
    (no chain) report NaN, hence no row."""
    from gradbench.protocols import ProtocolContext
    from gradbench.protocols.mcmc import mcmc

    s = uivi(ppca, 200, gen(), burn_in=10)
    ess = s.diagnostics["ess"]
    assert ess.shape == (200,) and bool(((ess > 1) & (ess <= 12 * math.log10(12))).all())
    rows = {r["metric"]: r for r in mcmc(s, None, ProtocolContext(seed=0, eps=EPS))}
    assert set(rows) == {"acceptance", "ess"} and rows["ess"]["stderr"] > 0
    assert bool(uivi(ppca, 20, gen(), burn_in=2).diagnostics["ess"].isnan().all())  # 4 states: too short for an ESS
    exact = uivi(ppca, 20, gen(), reverse="exact")
    assert [r["metric"] for r in mcmc(exact, None, ProtocolContext(seed=0, eps=EPS))] == []


def test_validate_refuses_hmc_reverse_on_atoms_and_accepts_it_on_a_continuous_mixing(tmp_path) -> None:
    """HMC over ε needs a continuous mixing density: uivi reverse: hmc on an atoms target is refused at validate
    time with the missing capability named; the same suite with continuous ε (control) and reverse: exact on
    atoms (control) load."""
    from gradbench.run.plan import SuiteError, load_suite

    suite = """name: t
seed: 0
target_seed: 0
replicates: 10
targets:
  - model: toy2d_semi_implicit
    params: {{density: banana}}
    proposal: {{mixing_dim: 3, {atoms}}}
estimators:
  - {{name: uivi, params: {{reverse: {reverse}}}}}
protocols: [bias]
"""
    path = tmp_path / "s.yaml"
    path.write_text(suite.format(atoms="n_atoms: 10", reverse="hmc"))
    with pytest.raises(SuiteError, match="mixing_density"):
        load_suite(path)
    path.write_text(suite.format(atoms="n_atoms: 0", reverse="hmc"))
    load_suite(path)
    path.write_text(suite.format(atoms="n_atoms: 10", reverse="exact"))
    load_suite(path)
