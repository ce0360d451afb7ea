"""Score-function encoder-gradient estimators: REINFORCE with every baseline, RLOO, VIMCO.

Statistical tests: fixed seeds, α = 0.001, MCSE-scaled; each has a negative control that fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import stats as sps

from gradbench import registry
from gradbench.core import GradSample
from gradbench.estimators import pathwise, score
from gradbench.models.ppca import LOG_2PI
from gradbench.seeding import make_generator
from gradbench.stats import ReferenceNoise, bias_test
from tests.models.test_ppca_encoder import make_encoder_target

ALPHA = 0.001
Z_ONE_SIDED = 3.090  # z_{1−α}, α = 0.001
EPS64 = float(torch.finfo(torch.float64).eps)
ALL_BASELINES = [("none", 0, 1), ("moving_average", 20, 2), ("learned_constant", 20, 2), ("learned_input", 20, 2),
                 ("point", 0, 1), ("optimal", 0, 4), ("rloo", 0, 4)]  # (baseline, warmup, S)


def _pvalue(sample: GradSample, ref: torch.Tensor, ref_var=None) -> float:
    return bias_test(sample.grads.numpy(), ref.numpy(), EPS64, np.random.default_rng(0),
                     None if ref_var is None else ReferenceNoise(var=np.asarray(ref_var))).pvalue


def _hand_score(t, z):
    """∇φ log q(z|x_n) written out: u = (z − m)/s; A: (u/s) x_nᵀ, b: u/s, c: u² − 1. [..., N, P]."""
    s = torch.exp(t.c)
    u = (z - (t.x @ t.A.T + t.b)) / s
    A = (u / s).unsqueeze(-1) * t.x.unsqueeze(-2)
    return torch.cat([A.flatten(-2), u / s, u**2 - 1], dim=-1)


def _hand_log_lik(t, z):
    e = t.x - z @ t.W.T - t.mu
    return -0.5 * (e**2).sum(-1) / t.sigma**2 - t.data_dim * torch.log(t.sigma) - 0.5 * t.data_dim * LOG_2PI


# -- tier 1: exactness with injected noise -----------------------------------------------------
def test_reinforce_without_baseline_equals_hand_formula():
    t = make_encoder_target()
    R, S = 3, 2
    z, log_q = t.sample_proposal((R, S), make_generator(4))
    f, c = _hand_log_lik(t, z), _hand_score(t, z)
    kl_grad = torch.cat([(t.q_mean.T @ t.x).flatten(), t.q_mean.sum(0), t.n_data * (torch.exp(2 * t.c) - 1)])
    expected = (f.unsqueeze(-1) * c).sum(2).mean(1) - kl_grad
    got = score.reinforce(t, R, make_generator(4), S=S)
    torch.testing.assert_close(got.grads, expected, rtol=1e-10, atol=1e-10)
    mc = score.reinforce(t, R, make_generator(4), S=S, kl="mc")
    torch.testing.assert_close(mc.grads, ((f + (-0.5 * z**2).sum(-1) - 0.5 * t.latent_dim * LOG_2PI - log_q)
                                          .unsqueeze(-1) * c).sum(2).mean(1), rtol=1e-10, atol=1e-10)


def test_leave_one_out_baselines_equal_loops():
    gen = make_generator(0)
    f = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    c = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    rloo = score.rloo_baseline(f, c)
    opt = score.optimal_loo_baseline(f, c)
    for s in range(5):
        others = [t for t in range(5) if t != s]
        torch.testing.assert_close(rloo[:, s], f[:, others].mean(1))
        c2 = c[:, others] ** 2
        torch.testing.assert_close(opt[:, s], (f[:, others].unsqueeze(-1) * c2).sum(1) / c2.sum(1))


def test_point_baseline_is_the_signal_at_the_mode():
    t = make_encoder_target()
    R, S = 2, 3
    z, _ = t.sample_proposal((R, S), make_generator(5))
    _, c = _hand_log_lik(t, z), _hand_score(t, z)
    b = _hand_log_lik(t, t.x @ t.A.T + t.b)  # [N]
    none = score.reinforce(t, R, make_generator(5), S=S)
    point = score.reinforce(t, R, make_generator(5), S=S, baseline="point")
    torch.testing.assert_close(none.grads - point.grads, (b.unsqueeze(-1) * c).sum(2).mean(1), rtol=1e-10, atol=1e-10)
    assert float(point.cost[0]) == (S + 1) * t.n_data


def test_warm_up_uses_fresh_latents_after_the_measured_draw():
    """Measured latents are the same as without a baseline; the baseline comes from a warm-up that follows."""
    t = make_encoder_target()
    R, S, steps = 4, 2, 7
    gen = make_generator(6)
    z, _log_q = t.sample_proposal((R, S), gen)
    bl = score.moving_average(0.2, t.n_data)
    state = score.warm_up(bl, bl.init(R, z), t, S, "analytic", steps, gen)
    assert isinstance(state, score.MovingAverageState) and state.steps == steps
    b = bl.value(state)  # [R, N]
    c = t.log_q_score(z)
    none = score.reinforce(t, R, make_generator(6), S=S)
    ma = score.reinforce(t, R, make_generator(6), S=S, baseline="moving_average", warmup=steps, rate=0.2)
    torch.testing.assert_close(none.grads - ma.grads, (b[:, None, :, None] * c).sum(2).mean(1), rtol=1e-10, atol=1e-10)
    assert torch.equal(ma.diagnostics["warmup_evals"], torch.full((R,), float(steps * S * t.n_data), dtype=torch.float64))
    zero = score.reinforce(t, R, make_generator(6), S=S, baseline="learned_input", warmup=0)
    torch.testing.assert_close(zero.grads, none.grads)  # no fitting step: b = 0


def test_stateful_baselines_fit_what_they_claim():
    """MA after one step = batch mean; learned constant → E f; learned b(x; ω) → E[f | x_n].

    MCSE-scaled at α = 0.001 (Bonferroni over the N data points for b(x)). Stationary noise of the
    fits: SGD b ← b − γ(b − m_t), γ = 2·rate, on batch means m_t of S·N signals has
    Var b = γ/(2 − γ) Var m_t; discounted least squares with forgetting λ weights step t by (1 − λ)^{T−t},
    so Var b(x_n) = λ/(2 − λ) Var(f_n)/S (with N < #features it interpolates the per-datum batch
    means). The truth is a 2·10⁵-sample mean with its own s.e. Negative controls: the same tests
    reject fits stopped after 5 steps (shrunk towards the initial 0)."""
    t = make_encoder_target(n=3)
    f = torch.randn(2, 4, 3, generator=make_generator(0), dtype=torch.float64)
    ma = score.moving_average(0.1, 3)
    torch.testing.assert_close(ma.value(ma.update(ma.init(2, f), f)), f.mean(dim=(1, 2)).unsqueeze(-1).expand(2, 3))
    z, _ = t.sample_proposal((200_000,), make_generator(1))
    sig = t.log_lik(z)  # [M, N]
    N, S = t.n_data, 64
    mean_n, var_n = sig.mean(0), sig.var(0)
    se_n2 = var_n / sig.shape[0]
    zc = sps.norm.isf(ALPHA / 2)
    gamma = 2 * 0.05
    se_const = math.sqrt(gamma / (2 - gamma) * float(var_n.sum()) / (S * N**2) + float(se_n2.sum()) / N**2)
    lc = score.learned_constant(0.05, N)
    for steps, ok in [(400, True), (5, False)]:
        b_const = score.warm_up(lc, lc.init(1, z), t, S, "analytic", steps, make_generator(2)).b
        assert (abs(float(b_const[0] - mean_n.mean())) < zc * se_const) == ok, steps
    lam = 0.01
    li = score.learned_input(score.quadratic_features(t.x), lam)
    se_x = (lam / (2 - lam) * var_n / S + se_n2).sqrt()
    zb = sps.norm.isf(ALPHA / (2 * N))
    for steps, ok in [(600, True), (5, False)]:
        b_x = li.value(score.warm_up(li, li.init(1, z), t, S, "analytic", steps, make_generator(3)))[0]
        assert bool(((b_x - mean_n).abs() < zb * se_x).all()) == ok, steps


def test_vimco_leave_one_out_bound_equals_naive_and_is_stable():
    gen = make_generator(0)
    log_w = torch.randn(3, 6, 2, generator=gen, dtype=torch.float64) * 3
    K = 6
    naive = torch.empty_like(log_w)
    for k in range(K):
        lw = log_w.clone()
        lw[:, k] = torch.cat([log_w[:, :k], log_w[:, k + 1:]], dim=1).mean(1)
        naive[:, k] = torch.logsumexp(lw, dim=1) - math.log(K)
    torch.testing.assert_close(score.vimco_loo_bound(log_w), naive, rtol=1e-12, atol=1e-12)
    extreme = torch.tensor([[[0.0], [-800.0], [-900.0]]], dtype=torch.float64)  # one weight dominates by e^800
    got = score.vimco_loo_bound(extreme)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got[0, 0, 0], torch.logaddexp(torch.tensor(-800.0), torch.tensor(-850.0)).double() - math.log(3))


def test_vimco_equals_hand_formula():
    t = make_encoder_target()
    R, K = 2, 4
    z, log_q = t.sample_proposal((R, K), make_generator(7))
    log_w = t.log_joint(z) - log_q
    L = torch.logsumexp(log_w, 1, keepdim=True) - math.log(K)
    w = torch.softmax(log_w, 1)
    c = _hand_score(t, z)
    expected = torch.zeros(R, t.phi_layout.size, dtype=torch.float64)
    for k in range(K):
        others = [j for j in range(K) if j != k]
        lw = log_w.clone()
        lw[:, k] = log_w[:, others].mean(1)
        L_minus = torch.logsumexp(lw, 1) - math.log(K)
        expected += (((L[:, 0] - L_minus) - w[:, k]).unsqueeze(-1) * c[:, k]).sum(1)
    got = score.vimco(t, R, make_generator(7), K=K)
    torch.testing.assert_close(got.grads, expected, rtol=1e-10, atol=1e-10)
    assert got.wrt == "phi_iwae4"


def test_parameter_checks():
    with pytest.raises(ValidationError, match="leave-one-out"):
        score.ReinforceParams(S=1, baseline="rloo")
    with pytest.raises(ValidationError, match="no state to warm up"):
        score.ReinforceParams(S=2, baseline="point", warmup=5)
    with pytest.raises(ValidationError):
        score.VIMCOParams(K=1)
    assert registry.ESTIMATORS["reinforce"].params(S=2, baseline="learned_input", warmup=50).warmup == 50


# -- tier 2: unbiasedness (MCSE-scaled, α = 0.001, fixed seed) ---------------------------------
@pytest.mark.parametrize("baseline,warmup,S", ALL_BASELINES)
def test_reinforce_is_unbiased_with_every_baseline(baseline, warmup, S):
    t = make_encoder_target()
    sample = score.reinforce(t, 3000, make_generator(77), S=S, baseline=baseline, warmup=warmup)
    assert _pvalue(sample, t.elbo_grad_phi()) > ALPHA


@pytest.mark.parametrize("baseline", ["none", "rloo"])
def test_reinforce_with_sampled_kl_is_unbiased(baseline):
    t = make_encoder_target()
    sample = score.reinforce(t, 3000, make_generator(78), S=4, baseline=baseline, kl="mc")
    assert _pvalue(sample, t.elbo_grad_phi()) > ALPHA


@pytest.mark.parametrize("broken", ["inclusive_mean", "own_signal"])
def test_negative_control_baseline_that_depends_on_the_sample_is_biased(broken):
    """b_sn = mean_t f_tn *including* s (bias (1/S) of the score term), or b_sn = f_sn (removes it)."""
    t = make_encoder_target()
    z, log_q = t.sample_proposal((3000, 2), make_generator(77))
    fn = (lambda f, c: f.mean(1, keepdim=True).expand_as(f)) if broken == "inclusive_mean" else (lambda f, c: f)
    sample = score.reinforce_with_baseline(t, z, log_q, fn)
    assert _pvalue(sample, t.elbo_grad_phi()) < ALPHA


def test_vimco_agrees_with_dreg_on_the_iwae_gradient():
    """Two-sample test (α = 0.001): VIMCO and DReG are both unbiased for ∇φ IWAE_4."""
    t = make_encoder_target()
    a = score.vimco(t, 4000, make_generator(31), K=4)
    b = pathwise.dreg(t, 4000, make_generator(32), K=4)
    Gb = b.grads.numpy()
    noise = ReferenceNoise(cov=np.cov(Gb.T).reshape(Gb.shape[1], -1), n=Gb.shape[0])
    assert bias_test(a.grads.numpy(), Gb.mean(0), EPS64, np.random.default_rng(0), noise).pvalue > ALPHA
    # negative control: VIMCO for K = 4 is not an estimator of ∇φ ELBO (a different objective)
    assert _pvalue(a, t.elbo_grad_phi()) < ALPHA


# -- variance: the optimal baseline does not increase the variance ------------------------------
def _trace_difference_z(a: GradSample, b: GradSample) -> float:
    """z of tr Σ_a − tr Σ_b for paired replicates (common random numbers), influence-function s.e."""
    Ga, Gb = a.grads.numpy(), b.grads.numpy()
    qa = ((Ga - Ga.mean(0)) ** 2).sum(1)
    qb = ((Gb - Gb.mean(0)) ** 2).sum(1)
    psi = qa - qb
    return float(psi.mean() / (psi.std(ddof=1) / math.sqrt(len(psi))))


def test_optimal_baseline_variance_not_above_no_baseline():
    """Stated test (seed 91, α = 0.001, one-sided): H0 tr Σ_optimal ≥ tr Σ_none is rejected.

    Same latents for both (common random numbers), so the paired difference of the per-replicate
    squared deviations gives the s.e. Negative control: a constant baseline offset by +30 nats (still
    unbiased) must *not* pass the same test.
    """
    t = make_encoder_target()
    R, S = 2000, 4
    none = score.reinforce(t, R, make_generator(91), S=S, baseline="none")
    opt = score.reinforce(t, R, make_generator(91), S=S, baseline="optimal")
    assert _trace_difference_z(none, opt) > Z_ONE_SIDED
    z, log_q = t.sample_proposal((R, S), make_generator(91))
    f_mean = float(t.log_lik(z).mean())
    bad = score.reinforce_with_baseline(t, z, log_q, lambda f, c: torch.full_like(f, f_mean + 30.0))
    assert not _trace_difference_z(none, bad) > Z_ONE_SIDED


@pytest.mark.slow
def test_slow_every_baseline_reduces_variance_after_warm_up():
    t = make_encoder_target(n=4)
    R, S = 10_000, 8
    none = score.reinforce(t, R, make_generator(92), S=S)
    for baseline, warmup in [("moving_average", 100), ("learned_constant", 100), ("learned_input", 100), ("point", 0),
                             ("optimal", 0), ("rloo", 0)]:
        other = score.reinforce(t, R, make_generator(92), S=S, baseline=baseline, warmup=warmup)
        assert _trace_difference_z(none, other) > Z_ONE_SIDED, baseline
    assert np.isfinite(none.grads.numpy()).all()
