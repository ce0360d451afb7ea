"""Coupled-chain estimators (pimh, isir, coupled_pimh, coupled_isir).

Tier 1 (exact): common random numbers, faithfulness, cost accounting, censoring.
Tier 2 (statistical): every test uses a fixed seed (0, never tuned), α = 0.001 per test, and a
statistic scaled by its Monte Carlo standard error; each has a negative control — a broken or
biased estimator that the *same* test rejects, kept here as a test.
Tier 3: ``@pytest.mark.slow`` studies with more configurations and replicates.
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
from gradbench.estimators import coupled as C
from gradbench.stats import bias_test
from tests.conftest import make_ppca

ALPHA = 1e-3
EPS64 = float(torch.finfo(torch.float64).eps)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pvalue(sample: GradSample, target) -> float:
    ok = ~sample.diagnostics["nonfinite"]
    return bias_test(sample.grads[ok].numpy(), target.exact_grad().numpy(), EPS64, np.random.default_rng(0)).pvalue


def estimate(name: str, target, R: int, **params) -> GradSample:
    return registry.ESTIMATORS[name].fn(target, R, gen(0), **params)


# -- tier 1: exactness -----------------------------------------------------------------------
def test_zero_steps_is_iwae():
    """h(X_0) of the IS state is the IWAE gradient: same generator → equal estimates (to rounding)."""
    t = make_ppca(d=4, k=2, n=2, mean_shift=0.5, cov_scale=2.0)
    iw = estimate("iwae", t, 6, K=5)
    for name in ("isir", "pimh"):
        torch.testing.assert_close(estimate(name, t, 6, K=5, t=0).grads, iw.grads, rtol=1e-12, atol=1e-12)


def test_isir_step_keeps_selected_particle_in_slot_zero():
    t = make_ppca(d=4, k=2, n=3, mean_shift=0.5, cov_scale=2.0)
    g = gen()
    x = C.init_state(t, 5, 4, g)
    z_sel, lw_sel = C.selected(x)
    y = C.isir_step(t, x, g)
    assert torch.equal(y.z[:, 0], z_sel) and torch.equal(y.log_w[:, 0], lw_sel)
    fresh_log_w = t.log_joint(y.z[:, 1:]) - t.log_proposal(y.z[:, 1:])
    torch.testing.assert_close(y.log_w[:, 1:], fresh_log_w, rtol=1e-12, atol=1e-12)


KERNELS = {
    "pimh": (C.pimh_step, C.coupled_pimh_step),
    "isir-maximal": (C.isir_step, lambda t, x, y, g: C.coupled_isir_step(t, x, y, g, "maximal")),
    "isir-common_uniform": (C.isir_step, lambda t, x, y, g: C.coupled_isir_step(t, x, y, g, "common_uniform")),
    "isir-independent": (C.isir_step, lambda t, x, y, g: C.coupled_isir_step(t, x, y, g, "independent")),
}


@pytest.mark.parametrize("kernel", KERNELS)
def test_coupled_kernel_is_faithful_on_equal_inputs(kernel):
    """Equal states in → equal states out, for 30 steps, including a badly mismatched proposal."""
    t = make_ppca(d=4, k=2, n=2, mean_shift=2.0, cov_scale=0.5)
    g = gen()
    x = C.init_state(t, 50, 3, g)
    y = x
    for _ in range(30):
        x, y = KERNELS[kernel][1](t, x, y, g)
        assert bool(C.states_equal(x, y).all())


@pytest.mark.parametrize("kernel", ["pimh", "isir-maximal", "isir-common_uniform"])
@pytest.mark.parametrize("lag", [1, 3])
def test_met_chains_stay_equal(kernel, lag):
    """On real coupled trajectories: once X_t = Y_{t−L}, X_s = Y_{s−L} for every later s."""
    t = make_ppca(d=4, k=2, n=2, mean_shift=1.0, cov_scale=2.0)
    step, cstep = KERNELS[kernel]
    xs, ys = C.simulate_coupled(t, 200, gen(), step, cstep, K=4, lag=lag, T=25)
    eq = torch.stack([C.states_equal(xs[s + lag], ys[s]) for s in range(len(ys))])  # [T+1, R, N]
    met_before = torch.cumsum(eq.long(), 0) > 0
    assert torch.equal(eq, met_before), "a pair separated after meeting"
    assert bool(eq[-1].float().mean() > 0.9), "most pairs meet within 25 steps here"


def test_exact_proposal_coupled_pimh_meets_at_first_coupled_step():
    """All weights equal ⇒ Ẑ* = Ẑ ⇒ both chains accept: τ = L + 1 for every replicate (deterministic)."""
    t = make_ppca(d=4, k=2, n=3)
    for lag in (1, 2, 5):
        s = estimate("coupled_pimh", t, 200, K=3, lag=lag)
        assert bool((s.diagnostics["tau"] == lag + 1).all())
        assert not s.diagnostics["censored"].any()


def test_cost_accounting_and_diagnostics():
    """Exact proposal PIMH: τ_n = L + 1 = 2 for all n, so cost = N (2K + K max(m, τ)) exactly."""
    t = make_ppca(d=4, k=2, n=3)
    K, m = 3, 4
    s = estimate("coupled_pimh", t, 10, K=K, k=1, m=m)
    assert torch.equal(s.cost, torch.full((10,), 3.0 * (2 * K + K * max(m, 2)), dtype=torch.float64))
    # kernel steps per point: L + 2(τ − L) + max(0, m − τ) = 1 + 2 + 2
    assert torch.equal(s.diagnostics["kernel_steps"], torch.full((10,), 3.0 * 5, dtype=torch.float64))
    # every replicate finishes at the same step, so the batch paid exactly the replicate cost
    torch.testing.assert_close(s.diagnostics["lockstep_cost"], s.cost)
    i = estimate("coupled_isir", make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0), 50, K=K)
    tau_lower = (2 * K + (K - 1) * i.diagnostics["tau"])  # the replicate's slowest point
    assert bool((i.cost >= tau_lower).all()) and bool((i.cost <= 3 * tau_lower).all())
    assert bool((i.diagnostics["lockstep_cost"] >= i.cost.mean() - 1e-9).all())


def _brute_force_H(target, xs, ys, k: int, m: int, lag: int, rb: bool) -> torch.Tensor:
    """H_{k:m} written out from stored trajectories: per point τ_n = first t ≥ L with X_t = Y_{t−L},
    (1/(m−k+1)) [Σ_{t=k}^{m} h(X_t) + Σ_{t=k+L}^{τ_n−1} v_t (h(X_t) − h(Y_{t−L}))]."""
    T = len(xs) - 1
    eq = torch.stack([C.states_equal(xs[t], ys[t - lag]) for t in range(lag, T + 1)])  # [T−L+1, R, N]
    tau = lag + eq.long().argmax(0)  # first meeting (all pairs meet within the horizon: checked by caller)
    out = 0.0
    for t in range(T + 1):
        cx = torch.full(tau.shape, 1.0 if k <= t <= m else 0.0, dtype=torch.float64)
        cy = torch.zeros(tau.shape, dtype=torch.float64)
        if t >= k + lag:
            v = math.floor((t - k) / lag) - math.ceil(max(lag, t - m) / lag) + 1
            live = (t <= tau - 1).double()
            cx, cy = cx + v * live, v * live
        out = out + target.weighted_grad_log_joint(xs[t].z, cx.unsqueeze(1) * C.h_weights(xs[t], rb))
        if t >= lag:
            out = out - target.weighted_grad_log_joint(ys[t - lag].z, cy.unsqueeze(1) * C.h_weights(ys[t - lag], rb))
    return out / (m - k + 1), tau


@pytest.mark.parametrize("kind,coupling", [("isir", "maximal"), ("isir", "common_uniform"), ("pimh", "maximal")])
@pytest.mark.parametrize("k,m,lag,rb", [(0, 0, 1, True), (2, 9, 1, True), (1, 14, 3, False), (3, 5, 2, True)])
def test_estimator_equals_the_formula_on_the_same_draws(kind, coupling, k, m, lag, rb):
    """Common random numbers: run_coupled and H_{k:m} written term by term on stored trajectories
    agree to rounding. One replicate (N = 2 points) per generator seed, so the driver draws exactly
    what the trajectory simulation draws (it never drops a replicate while it is still running)."""
    t = make_ppca(d=4, k=2, n=2, mean_shift=0.3, cov_scale=1.3)
    K, horizon = 8, 20
    kd = C._kind(kind, coupling)
    for seed in range(3):
        xs, ys = C.simulate_coupled(t, 1, gen(seed), kd.step, kd.coupled, K=K, lag=lag, T=horizon - lag)
        assert bool(C.states_equal(xs[-1], ys[-1]).all()), "horizon too short for this target"
        expected, tau = _brute_force_H(t, xs, ys, k, m, lag, rb)
        run = C.run_coupled(t, 1, gen(seed), kd, K=K, k=k, m=m, lag=lag, rao_blackwell=rb, max_iter=1000)
        assert torch.equal(run.tau_point.long(), tau)
        torch.testing.assert_close(run.grads, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["coupled_isir", "coupled_pimh"])
def test_censoring(name):
    """Replicates not met by max_iter: NaN gradient, flagged, τ = max_iter; the others untouched."""
    t = make_ppca(d=4, k=2, n=1, mean_shift=1.5, cov_scale=3.0)
    s = estimate(name, t, 300, K=2, max_iter=3)
    cens = s.diagnostics["censored"]
    assert 0 < int(cens.sum()) < 300
    assert bool(torch.isnan(s.grads[cens]).all()) and bool(torch.isfinite(s.grads[~cens]).all())
    assert torch.equal(s.diagnostics["nonfinite"], cens)
    assert bool((s.diagnostics["tau"][cens] == 3).all()) and bool((s.diagnostics["tau"][~cens] <= 3).all())
    # the uncensored replicates are exactly those of an uncapped run with the same generator
    full = estimate(name, t, 300, K=2)
    assert torch.equal(full.diagnostics["tau"] > 3, cens)


def test_k_auto_uses_pilot_quantile():
    t = make_ppca(d=4, k=2, n=1, mean_shift=1.0, cov_scale=2.0)
    s = estimate("coupled_isir", t, 20, K=4, k="auto", pilot_replicates=300)
    g = gen(0)
    pilot = C.run_coupled(t, 300, g, C._kind("isir"), K=4, k=0, m=0, lag=1, rao_blackwell=True, max_iter=10_000,
                          with_estimate=False)
    k = math.ceil(float(torch.quantile(pilot.tau_point.max(1).values, 0.95)))
    assert float(s.diagnostics["k"][0]) == k and float(s.diagnostics["m"][0]) == 5 * k
    assert float(s.diagnostics["pilot_cost"][0]) == pytest.approx(pilot.lockstep_evals / 20)


def test_params_are_strict():
    with pytest.raises(ValidationError):
        C.CoupledISIRParams(k=3, m=2)
    with pytest.raises(ValidationError):
        C.CoupledISIRParams(k="3")
    with pytest.raises(ValidationError):
        C.CoupledISIRParams(coupling="greedy")
    assert C.CoupledISIRParams(k="auto").k == "auto"


# -- tier 2: coupling of the index draw ------------------------------------------------------
def broken_maximal(px, py, g, coupling="maximal"):
    """Negative control: a 'coupling' that draws one index from px and gives it to both chains."""
    i = C._inverse_cdf(px, C._uniform((px.shape[0], px.shape[2]), px, g))
    return i, i


def test_maximal_coupling_marginals_and_overlap():
    """Each index has its own law (χ² test) and P(i = j) = Σ_k min(px_k, py_k) (binomial z-test), α = 0.001."""
    n = 20000
    px = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    py = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    PX, PY = px.view(1, 4, 1).expand(n, 4, 1), py.view(1, 4, 1).expand(n, 4, 1)

    def check(fn) -> float:
        ix, iy = fn(PX, PY, gen(0), "maximal")
        p1 = sps.chisquare(np.bincount(ix.view(-1).numpy(), minlength=4), n * px.numpy()).pvalue
        p2 = sps.chisquare(np.bincount(iy.view(-1).numpy(), minlength=4), n * py.numpy()).pvalue
        overlap = float(torch.minimum(px, py).sum())
        same = float((ix == iy).double().mean())
        p3 = 2 * sps.norm.sf(abs(same - overlap) / math.sqrt(overlap * (1 - overlap) / n))
        return min(p1, p2, p3) * 3  # Bonferroni over the three checks

    assert check(C.coupled_categorical) > ALPHA
    assert check(broken_maximal) < ALPHA


# -- tier 2: marginal correctness ------------------------------------------------------------
def broken_coupled_isir(t, x, y, g):
    """Negative control: both chains use chain X's selection probabilities (Y's law is wrong)."""
    zx0, lwx0 = C.selected(x)
    zy0, lwy0 = C.selected(y)
    zf, lwf = C._propose(t, x.z.shape[0], x.z.shape[1] - 1, g)
    lwx, lwy = torch.cat([lwx0.unsqueeze(1), lwf], 1), torch.cat([lwy0.unsqueeze(1), lwf], 1)
    i, _ = broken_maximal(torch.softmax(lwx, 1), None, g)
    return (C.ChainState(torch.cat([zx0.unsqueeze(1), zf], 1), lwx, i),
            C.ChainState(torch.cat([zy0.unsqueeze(1), zf], 1), lwy, i))


MARGINAL_T = 3
MARGINAL_R = 6000


def _marginal_pvalue(step, cstep, target, lag: int = 1) -> float:
    """KS two-sample tests of the selected particle's first coordinate (and the Rao–Blackwellised
    h projected on the exact gradient) at t = T: X_T and Y_T of the coupled run against X_T of the
    uncoupled kernel, Bonferroni over the four tests."""
    xs, ys = C.simulate_coupled(target, MARGINAL_R, gen(0), step, cstep, K=3, lag=lag, T=MARGINAL_T)
    g_ref = gen(1)  # the uncoupled reference chain: independent draws
    ref = C.init_state(target, MARGINAL_R, 3, g_ref)
    for _ in range(MARGINAL_T):
        ref = step(target, ref, g_ref)
    g_star = target.exact_grad()

    def proj(s):
        zsel = C.selected(s)[0][:, 0, 0].numpy()
        h = target.weighted_grad_log_joint(s.z, C.h_weights(s, True)) @ g_star
        return zsel, h.numpy()

    px, hx = proj(xs[MARGINAL_T])
    py, hy = proj(ys[MARGINAL_T])
    pr, hr = proj(ref)
    ps = [sps.ks_2samp(a, b).pvalue for a, b in [(px, pr), (py, pr), (hx, hr), (hy, hr)]]
    return min(ps) * len(ps)


@pytest.mark.parametrize("kernel", ["pimh", "isir-maximal", "isir-common_uniform"])
def test_each_coupled_chain_has_the_uncoupled_law(kernel):
    """Marginal correctness at a fixed t = 3 from the IS state, on a mismatched target (not yet
    stationary, so a wrong kernel shows), α = 0.001."""
    target = make_ppca(d=4, k=2, n=1, mean_shift=1.5, cov_scale=3.0)
    step, cstep = KERNELS[kernel]
    assert _marginal_pvalue(step, cstep, target) > ALPHA


def test_marginal_test_rejects_a_broken_coupling():
    target = make_ppca(d=4, k=2, n=1, mean_shift=1.5, cov_scale=3.0)
    assert _marginal_pvalue(C.isir_step, broken_coupled_isir, target) < ALPHA


# -- tier 2: meeting-time law with an exact-posterior proposal -------------------------------
def _geometric_law_pvalue(tau: np.ndarray, lag: int, p: float) -> float:
    """χ² goodness of fit of G = τ − L − 1 to Geometric(p) on {1, 2, ...}, bins 1, 2, 3, ≥ 4,
    Bonferroni-combined with a z-test of mean G = 1/p (MCSE from the geometric variance)."""
    G = tau - lag - 1
    probs = np.array([p, p * (1 - p), p * (1 - p) ** 2, (1 - p) ** 3])
    counts = np.array([(G == 1).sum(), (G == 2).sum(), (G == 3).sum(), (G >= 4).sum()])
    if (G < 1).any():
        return 0.0
    p_chi = sps.chisquare(counts, probs * len(G)).pvalue
    z = (G.mean() - 1 / p) / math.sqrt((1 - p) / p**2 / len(G))
    return 2 * min(p_chi, 2 * sps.norm.sf(abs(z)))


@pytest.mark.parametrize("coupling", ["maximal", "common_uniform"])
@pytest.mark.parametrize("K,lag", [(2, 1), (4, 1), (3, 2)])
def test_exact_proposal_isir_meeting_is_geometric(K, lag, coupling):
    """All weights equal ⇒ a common index; the selected particles coincide when it is a fresh slot
    (probability (K−1)/K), the full states one step later: τ − L − 1 ~ Geometric((K−1)/K), α = 0.001."""
    t = make_ppca(d=4, k=2, n=1)
    s = estimate("coupled_isir", t, 3000, K=K, lag=lag, coupling=coupling)
    assert _geometric_law_pvalue(s.diagnostics["tau"].numpy(), lag, (K - 1) / K) > ALPHA


def test_meeting_law_test_rejects_uncoupled_indices():
    """Negative control: independent index draws meet with probability (K−1)/K² per step, not (K−1)/K."""
    t = make_ppca(d=4, k=2, n=1)
    s = estimate("coupled_isir", t, 3000, K=2, coupling="independent")
    assert _geometric_law_pvalue(s.diagnostics["tau"].numpy(), 1, 0.5) < ALPHA


# -- tier 2: unbiasedness --------------------------------------------------------------------
# (name, K, δ, s, lag, extra params). R = 2000 each; bias_test: Hotelling T² (R ≥ 10 P), α = 0.001.
UNBIASED = [
    ("coupled_isir", 2, 1.0, 2.0, 1, {}),  # the seed's form, t0 = 0
    ("coupled_isir", 8, 0.5, 0.7, 2, {"k": 1, "m": 5}),
    ("coupled_isir", 4, 1.0, 2.0, 1, {"k": "auto", "pilot_replicates": 100}),
    ("coupled_isir", 4, 1.0, 2.0, 3, {"k": 2, "m": 6, "rao_blackwell": False, "coupling": "common_uniform"}),
    ("coupled_pimh", 4, 1.0, 2.0, 1, {}),
    ("coupled_pimh", 2, 0.5, 0.7, 3, {"k": 2, "m": 8}),
]


@pytest.mark.parametrize("name,K,delta,s,lag,extra", UNBIASED)
def test_coupled_estimators_are_unbiased(name, K, delta, s, lag, extra):
    t = make_ppca(d=4, k=2, n=1, mean_shift=delta, cov_scale=s)
    sample = estimate(name, t, 2000, K=K, lag=lag, **extra)
    assert not sample.diagnostics["censored"].any()
    assert pvalue(sample, t) > ALPHA


@pytest.mark.parametrize("name,params", [
    ("isir", {"K": 2, "t": 1}),
    ("pimh", {"K": 2, "t": 1}),
    ("isir", {"K": 2, "t": 2}),
    ("iwae", {"K": 2}),
])
def test_bias_test_rejects_finite_t_chains_and_iwae(name, params):
    """Negative controls on the same target, replicates and α: single chains at small t and IWAE
    at small K are biased, and the test says so."""
    t = make_ppca(d=4, k=2, n=1, mean_shift=1.0, cov_scale=2.0)
    assert pvalue(estimate(name, t, 2000, **params), t) < ALPHA


def test_multiple_data_points_unbiased():
    t = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    sample = estimate("coupled_isir", t, 2000, K=4, lag=2, k=1, m=4)
    assert pvalue(sample, t) > ALPHA
    assert pvalue(estimate("isir", t, 2000, K=4, t=1), t) < ALPHA  # negative control, same target


# -- tier 3: studies -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["coupled_isir", "coupled_pimh"])
@pytest.mark.parametrize("K", [2, 4, 16])
@pytest.mark.parametrize("delta,s", [(0.5, 0.7), (1.5, 3.0)])
@pytest.mark.parametrize("lag,k,m", [(1, 0, 0), (2, 2, 10)])
def test_unbiased_study(name, K, delta, s, lag, k, m):
    t = make_ppca(d=5, k=2, n=2, mean_shift=delta, cov_scale=s)
    assert pvalue(estimate(name, t, 6000, K=K, lag=lag, k=k, m=m), t) > ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("K", [2, 8, 32])
def test_exact_proposal_geometric_study(K):
    t = make_ppca(d=6, k=3, n=1)
    s = estimate("coupled_isir", t, 20000, K=K)
    assert _geometric_law_pvalue(s.diagnostics["tau"].numpy(), 1, (K - 1) / K) > ALPHA
