"""EBM gradient estimators (exact_sampling, cd, pcd, coupled_gibbs).

Tier 1 (exact): the contract over the EBM estimators, the lockstep driver equal to H_{k:m} written
out term by term on the same draws, faithfulness, censoring, cost accounting, explicit PCD state.
Tier 2 (statistical): fixed seed 0 (never tuned), α = 0.001 per test, statistics scaled by their
Monte Carlo standard error; negative controls (CD-1, CD-5, couplings that are not maximal, a
coupled estimator without its bias correction) are rejected by the same tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.estimators import ebm as E
from gradbench.models.ebm import RBM, Ising, IsingParams, NoProposal, RBMParams
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

ALPHA = 1e-3
EPS64 = float(torch.finfo(torch.float64).eps)
EBM_ESTIMATORS = ["exact_sampling", "cd", "pcd", "coupled_gibbs"]
Z_CRIT = 3.2905  # two-sided normal quantile at α = 0.001


def rbm(n_v: int = 8, n_h: int = 4, n: int = 10, beta: float = 2.0, seed: int = 0, dtype=torch.float64) -> RBM:
    return RBM.build(RBMParams(n_visible=n_v, n_hidden=n_h, n_data=n, weight_scale=beta), NoProposal(), seed, dtype)


def ising(n: int = 8, N: int = 10, beta: float = 1.5, seed: int = 0, dtype=torch.float64) -> Ising:
    return Ising.build(IsingParams(n_spins=n, n_data=N, weight_scale=beta), NoProposal(), seed, dtype)


def estimate(name: str, target, R: int, **params) -> GradSample:
    return registry.ESTIMATORS[name].fn(target, R, make_generator(0), **params)


def pvalue(sample: GradSample, target) -> float:
    ok = ~sample.diagnostics["nonfinite"]
    return bias_test(sample.grads[ok].numpy(), target.exact_grad().numpy(), EPS64, np.random.default_rng(0), atoms=True).pvalue


# -- tier 1: contract and exactness ------------------------------------------------------------
@pytest.mark.parametrize("name", EBM_ESTIMATORS)
@pytest.mark.parametrize("make", [rbm, ising], ids=["rbm", "ising"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contract(name, make, dtype):
    target = make(n=5, N=3, beta=1.0, dtype=dtype) if make is ising else make(n_v=5, n_h=3, n=3, beta=1.0, dtype=dtype)
    est = registry.ESTIMATORS[name]
    params = est.params().model_dump()
    before = torch.random.get_rng_state()
    sample = est.fn(target, 7, make_generator(0), **params)
    assert torch.equal(torch.random.get_rng_state(), before), "estimators must not touch the global RNG"
    assert sample.grads.shape == (7, target.layout.size) and sample.grads.dtype == dtype
    assert sample.cost.shape == (7,) and bool((sample.cost > 0).all())
    assert not sample.diagnostics["nonfinite"].any()
    assert all(v.shape[0] == 7 for v in sample.diagnostics.values())
    assert torch.equal(sample.grads, est.fn(target, 7, make_generator(0), **params).grads)
    assert not torch.equal(sample.grads, est.fn(target, 7, make_generator(1), **params).grads)


def test_cost_accounting():
    t = rbm(n=10)
    assert torch.equal(estimate("cd", t, 3, k=4).cost, torch.full((3,), 40.0, dtype=torch.float64))
    assert torch.equal(estimate("pcd", t, 3, S=6, k=2, age=9).cost, torch.full((3,), 12.0, dtype=torch.float64))
    assert torch.equal(estimate("pcd", t, 3, S=6, k=2, age=9).diagnostics["chain_age"], torch.full((3,), 11.0, dtype=torch.float64))
    assert torch.equal(estimate("exact_sampling", t, 3, S=5).cost, torch.full((3,), 5.0, dtype=torch.float64))
    s = estimate("coupled_gibbs", t, 50, S=2, k=3, m=7, lag=2)
    # per replicate: Σ_s L + 2(τ_s − L) + max(0, m − τ_s) ≥ S m, and the batch's lockstep work is at least that on average
    assert bool((s.cost >= 2 * 7).all())
    assert float(s.diagnostics["lockstep_sweeps"][0]) >= float(s.cost.mean())


def test_cd_with_k_sweeps_equals_manual_sweeps():
    """CD-k is the data term plus Σ_n ∇F of k sweeps from each data point, on the same uniforms."""
    t = rbm(n=4)
    got = estimate("cd", t, 3, k=2).grads
    gen = make_generator(0)
    v = t.x.expand(3, 4, -1)
    for _ in range(2):
        v = t.sweep(v, torch.rand(3, 4, t.uniforms_per_sweep, generator=gen, dtype=torch.float64))
    expected = t.data_term() + t.weighted_grad_free_energy(v, torch.ones(3, 4, dtype=torch.float64))
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


def test_pcd_state_is_explicit():
    """pcd(age=a, k) = init → advance a sweeps → pcd_step(k), on one generator; steps compose."""
    t = ising(n=5, N=4)
    got = estimate("pcd", t, 3, S=4, k=2, age=5)
    gen = make_generator(0)
    state = E.pcd_advance(t, E.pcd_init(t, 3, 4, gen), 5, gen)
    sample, state = E.pcd_step(t, state, gen, k=2)
    assert torch.equal(sample.grads, got.grads) and state.age == 7
    gen_a, gen_b = make_generator(1), make_generator(1)
    s0 = E.pcd_init(t, 2, 3, gen_a)
    _, s1 = E.pcd_step(t, s0, gen_a, k=1)
    _, s2 = E.pcd_step(t, s1, gen_a, k=2)
    assert torch.equal(s2.v, E.pcd_advance(t, E.pcd_init(t, 2, 3, gen_b), 3, gen_b).v) and s2.age == 3


@pytest.mark.parametrize("make,coupling", [(rbm, "maximal"), (rbm, "block_maximal"), (ising, "maximal")],
                         ids=["rbm-maximal", "rbm-block_maximal", "ising-maximal"])
def test_coupled_sweep_is_faithful(make, coupling):
    """Run coupled sweeps far past meeting: once X_t = Y_t, they stay equal."""
    t = make()
    gen = make_generator(0)
    X, Y = E._from_data(t, (200, 1), gen), E._from_data(t, (200, 1), gen)
    met = torch.zeros(200, 1, dtype=torch.bool)
    n_met = 0
    for _ in range(100):
        X, Y = E._coupled_sweep(t, X, Y, gen, coupling)
        now = (X == Y).all(-1)
        assert not bool((met & ~now).any()), "chains separated after meeting"
        met |= now
        n_met = int(met.sum())
    assert n_met > 150


def _simulate(t, S: int, gen: torch.Generator, lag: int, T: int):
    """Full trajectories X_0..X_{T+L}, Y_0..Y_T (never stopped), consuming gen as the driver does for R = 1."""
    X, Y = E._from_data(t, (1, S), gen), E._from_data(t, (1, S), gen)
    xs, ys = [X], [Y]
    for _ in range(lag):
        xs.append(t.sweep(xs[-1], E._uniforms(t, (1, S), gen)))
    for _ in range(T):
        x, y = E._coupled_sweep(t, xs[-1], ys[-1], gen, "maximal")
        xs.append(x)
        ys.append(y)
    return xs, ys


@pytest.mark.parametrize("k,m,lag", [(0, 0, 1), (1, 1, 1), (2, 6, 1), (3, 9, 2), (4, 4, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_driver_equals_h_km_written_out(k, m, lag, seed):
    """The lockstep driver equals H_{k:m} of Jacob et al. (2020) written term by term on the same draws."""
    t, S = rbm(n_v=5, n_h=3, n=6, beta=1.5), 3
    got = E.coupled_gibbs(t, 1, make_generator(seed), S=S, k=k, m=m, lag=lag)
    xs, ys = _simulate(t, S, make_generator(seed), lag, T=400)
    grad_f = lambda v: t.weighted_grad_free_energy(v, torch.ones(1, 1, dtype=torch.float64))[0]
    total = torch.zeros(t.layout.size, dtype=torch.float64)
    for s in range(S):
        xs_s = [x[:, s:s + 1] for x in xs]
        ys_s = [y[:, s:s + 1] for y in ys]
        tau = next(tt for tt in range(lag, len(ys_s) + lag) if torch.equal(xs_s[tt], ys_s[tt - lag]))
        h = sum(grad_f(xs_s[tt]) for tt in range(k, m + 1))
        for tt in range(k + lag, tau):
            v = math.floor((tt - k) / lag) - math.ceil(max(lag, tt - m) / lag) + 1
            h = h + v * (grad_f(xs_s[tt]) - grad_f(ys_s[tt - lag]))
        total += h / (m - k + 1)
        assert float(got.diagnostics["tau"][0]) >= tau
    expected = t.data_term() + t.n_data / S * total
    torch.testing.assert_close(got.grads[0], expected, rtol=1e-12, atol=1e-12)


def test_censoring():
    """A cap below the meeting times: NaN rows, censored flags, τ = max_iter, and uncensored rows finite."""
    t = rbm(beta=3.0)
    s = estimate("coupled_gibbs", t, 200, k=0, m=0, max_iter=2)
    cens = s.diagnostics["censored"]
    assert 0 < int(cens.sum()) < 200
    assert bool(s.grads[cens].isnan().all()) and bool(torch.isfinite(s.grads[~cens]).all())
    assert bool((s.diagnostics["tau"][cens] == 2).all()) and torch.equal(s.diagnostics["nonfinite"], cens)


@pytest.mark.parametrize("name", EBM_ESTIMATORS)
def test_non_ebm_target_is_refused(name):
    from tests.conftest import make_ppca

    with pytest.raises(TypeError, match="energy-based target"):
        registry.ESTIMATORS[name].fn(make_ppca(), 2, make_generator(0))


def test_params_validation():
    with pytest.raises(ValueError):
        E.CoupledGibbsParams(k=5, m=3)
    with pytest.raises(ValueError):
        E.CoupledGibbsParams(k=5, m=50, max_iter=10)
    with pytest.raises(ValueError, match="defined for the rbm"):
        estimate("coupled_gibbs", ising(), 2, coupling="block_maximal")


# -- tier 2: couplings ----------------------------------------------------------------------------
def _z(count: int, n: int, p: float) -> float:
    """z-score of a binomial count against probability p (MCSE √(p(1−p)/n))."""
    return (count / n - p) / math.sqrt(p * (1 - p) / n)


def test_bernoulli_maximal_coupling_marginals_and_meeting_probability():
    n = 200_000
    p, q = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    u = torch.rand(n, generator=make_generator(0), dtype=torch.float64)
    x, y = E.coupled_bernoulli(p, q, u)
    assert abs(_z(int(x.sum()), n, 0.3)) < Z_CRIT and abs(_z(int(y.sum()), n, 0.55)) < Z_CRIT
    assert abs(_z(int((x == y).sum()), n, 1 - 0.25)) < Z_CRIT  # 1 − TV = 1 − |p − q|
    # negative control: independent uniforms (not maximal) meet with pq + (1−p)(1−q) = 0.48
    x2, y2 = E.coupled_bernoulli(p, q, u)[0], E.coupled_bernoulli(p, q, torch.rand(n, generator=make_generator(1), dtype=torch.float64))[1]
    assert abs(_z(int((x2 == y2).sum()), n, 1 - 0.25)) > Z_CRIT


def _product_bernoulli_tv(lp: torch.Tensor, lq: torch.Tensor) -> float:
    d = lp.shape[-1]
    states = torch.tensor([[float(b) for b in np.binary_repr(i, d)] for i in range(2**d)], dtype=torch.float64)
    return 0.5 * float((E._bernoulli_log_prob(states, lp).exp() - E._bernoulli_log_prob(states, lq).exp()).abs().sum())


def test_block_maximal_coupling_marginals_and_meeting_probability():
    """Per-unit marginals are p and q; P(X = Y) = 1 − TV(p, q) of the product laws (the maximum);
    the unit-by-unit coupling meets less often (negative control for the same z-test)."""
    n = 100_000
    lp = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    lq = torch.tensor([-0.3, -0.2, 0.9], dtype=torch.float64)
    x, y = E.block_maximal_bernoulli(lp.expand(n, 3), lq.expand(n, 3), make_generator(0))
    for mean, logits in ((x.mean(0), lp), (y.mean(0), lq)):
        pr = torch.sigmoid(logits)
        assert bool(((mean - pr).abs() / (pr * (1 - pr) / n).sqrt() < Z_CRIT).all())
    one_minus_tv = 1 - _product_bernoulli_tv(lp, lq)
    assert abs(_z(int((x == y).all(-1).sum()), n, one_minus_tv)) < Z_CRIT
    u = torch.rand(n, 3, generator=make_generator(0), dtype=torch.float64)
    xu, yu = E.coupled_bernoulli(torch.sigmoid(lp), torch.sigmoid(lq), u)
    assert _z(int((xu == yu).all(-1).sum()), n, one_minus_tv) < -Z_CRIT


# -- tier 2: bias against the enumerated gradient ------------------------------------------------
# Targets: rbm 8×4 at β = 2 and ising 8 spins at β = 1.5, 10 data points each (seed 0). These are
# slow-mixing enough for CD-5 to be biased; coupled_gibbs uses k ≈ the 99 % quantile of τ
# (Jacob et al.'s recipe; τ's quantiles are printed by the `meeting` protocol) and m = 5k.
R = 4000


@pytest.mark.parametrize("make", [rbm, ising], ids=["rbm", "ising"])
def test_exact_sampling_is_unbiased(make):
    assert pvalue(estimate("exact_sampling", make(), R, S=1), make()) > ALPHA


@pytest.mark.parametrize("make,k,m", [(rbm, 10, 50), (ising, 20, 100)], ids=["rbm", "ising"])
def test_coupled_gibbs_is_unbiased(make, k, m):
    sample = estimate("coupled_gibbs", make(), R, k=k, m=m)
    assert not sample.diagnostics["censored"].any()
    assert pvalue(sample, make()) > ALPHA


def test_coupled_gibbs_block_maximal_is_unbiased():
    assert pvalue(estimate("coupled_gibbs", rbm(), R, k=10, m=50, coupling="block_maximal"), rbm()) > ALPHA


@pytest.mark.parametrize("make", [rbm, ising], ids=["rbm", "ising"])
@pytest.mark.parametrize("k", [1, 5])
def test_cd_is_detected(make, k):
    assert pvalue(estimate("cd", make(), R, k=k), make()) < ALPHA


def test_coupled_gibbs_without_bias_correction_is_detected(monkeypatch):
    """Negative control for the unbiasedness test: v_t ≡ 0 drops the correction, leaving the MCMC
    average (1/(m−k+1)) Σ_{t=k}^{m} ∇F(X_t) from data starts — biased at k = 1, m = 5."""
    monkeypatch.setattr(E, "_v_weight", lambda t, k, m, lag: 0.0)
    assert pvalue(estimate("coupled_gibbs", rbm(), R, k=1, m=5), rbm()) < ALPHA
