"""SUMO: exact weights (tier 1) and unbiasedness of log p̂ and of its θ-gradient (tier 2).

Statistical tests: fixed seed 0 (never tuned), α = 0.001 per test, MCSE-scaled, each with a
negative control that the same test rejects: "SUMO without the 1/P(𝒦 ≥ j) reweighting", which is
IWAE_{K0+𝒦} at a random 𝒦 — a biased estimator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench.estimators import sumo as S
from gradbench.models.ppca import PPCA
from gradbench.stats import bias_test, hill_tail_index
from tests.conftest import make_ppca

ALPHA = 1e-3
EPS64 = float(torch.finfo(torch.float64).eps)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_log_px(log_w: torch.Tensor, n_terms: int, K_min: int, tail) -> torch.Tensor:
    """log p̂ = IWAE_{K0} + Σ_{j=1}^{𝒦} (IWAE_{K0+j} − IWAE_{K0+j−1}) / S(j), written out term by term."""
    iwae = [torch.logsumexp(log_w[:j], 0) - math.log(j) for j in range(1, K_min + n_terms + 1)]
    out = iwae[K_min - 1]
    for j in range(1, n_terms + 1):
        out = out + (iwae[K_min + j - 1] - iwae[K_min + j - 2]) / tail(j)
    return out


@pytest.mark.parametrize("truncation,K_min,n_terms", [("geometric", 1, 1), ("geometric", 1, 7), ("power", 3, 5),
                                                      ("power", 2, 1)])
def test_weights_equal_autograd_of_the_naive_formula(truncation, K_min, n_terms):
    """ω from log-space cumulative sums = autograd of the term-by-term log p̂, with huge weights."""
    t = make_ppca(d=4, k=2, n=1, mean_shift=1.0, cov_scale=2.0)
    J = K_min + n_terms + 2  # two unused particles must get weight 0
    z, log_q = t.sample_proposal((1, J), gen(4))
    rho, alpha = 0.7, 1.7
    params = {name: p.clone().requires_grad_() for name, p in t.parameters().items()}
    tg = PPCA(params["W"], params["mu"], params["sigma"].reshape(()), t.x, t.mean_shift, t.cov_scale)
    log_w_g = tg.log_joint(z) - log_q  # q and z held fixed
    tail = (lambda j: rho ** (j - 1)) if truncation == "geometric" else (lambda j: j ** (-alpha))
    lp = naive_log_px(log_w_g[0, :, 0] + 400.0, n_terms, K_min, tail) - 400.0  # shift: overflow must not matter
    lp.backward()
    expected = t.layout.flatten({k: v.grad for k, v in params.items()})
    log_w = (log_w_g.detach() + 400.0)
    omega, log_px = S.sumo_weights(log_w, torch.tensor([[float(n_terms)]]), K_min, truncation, rho, alpha)
    torch.testing.assert_close(float(log_px[0, 0]) - 400.0, float(lp.detach()), rtol=1e-10, atol=1e-10)
    assert torch.all(omega[0, K_min + n_terms:] == 0)
    torch.testing.assert_close(float(omega.sum()), 1.0, rtol=1e-12, atol=1e-12)
    got = t.weighted_grad_log_joint(z, omega)[0]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_truncation_law():
    """P(𝒦 ≥ j) = S(j) for both tails (binomial z-tests at j = 2, 3, 5, Bonferroni), α = 0.001."""
    n = 40000
    for trunc, rho, alpha in [("geometric", 0.6, 2.0), ("power", 0.6, 1.5)]:
        k = S.sample_terms((n,), gen(0), trunc, rho, alpha)
        ps = []
        for j in (2, 3, 5):
            p = float(S.tail(torch.tensor(float(j)), trunc, rho, alpha))
            ps.append(2 * sps.norm.sf(abs(float((k >= j).double().mean()) - p) / math.sqrt(p * (1 - p) / n)))
        assert min(ps) * 3 > ALPHA


@pytest.mark.parametrize("roulette", ["per_replicate", "per_point"])
def test_cost_and_censoring(roulette):
    """Cost = Σ_n (K0 + min(𝒦_n, M)) with 𝒦 the first draws of the stream (one per replicate, or per data point);
    a censored draw censors its replicate (NaN row) and is charged the work up to the cap."""
    t = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    s = S.sumo(t, 400, gen(0), K_min=2, truncation="geometric", rho=0.8, max_terms=6, roulette=roulette)
    k = S.sample_terms((400, 1 if roulette == "per_replicate" else 3), gen(0), "geometric", 0.8, 2.0)
    torch.testing.assert_close(s.cost, (2 + k.clamp(max=6)).expand(400, 3).sum(1))
    torch.testing.assert_close(s.diagnostics["n_terms"], k.mean(1))
    cens = (k > 6).any(1)
    assert cens.any() and torch.equal(s.diagnostics["censored"], cens)
    assert bool(torch.isnan(s.grads[cens]).all()) and bool(torch.isfinite(s.grads[~cens]).all())


def test_blocks_bound_padding_and_memory(monkeypatch):
    """Shared roulette: every target call holds ≤ BLOCK particle-points (a row longer than BLOCK/N is evaluated in
    particle chunks), and the particles evaluated are ≤ 2^{1/4} × Σ_r N (K0 + 𝒦_r) (the padding of a level);
    per-point roulette pads each replicate to its largest 𝒦_n (control: it evaluates more)."""
    t = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    monkeypatch.setattr(S, "BLOCK", 96)
    sampled, evaluated = [], []
    real_sample, real_log_joint, real_grad = t.sample_proposal, t.log_joint, t.weighted_grad_log_joint
    monkeypatch.setattr(t, "sample_proposal", lambda b, g: (sampled.append(math.prod(b) * 3), real_sample(b, g))[1])
    monkeypatch.setattr(t, "log_joint", lambda z: (evaluated.append(z[..., 0].numel()), real_log_joint(z))[1])
    monkeypatch.setattr(t, "weighted_grad_log_joint", lambda z, w: (evaluated.append(z[..., 0].numel()), real_grad(z, w))[1])
    S.sumo(t, 300, gen(0), K_min=2, alpha=0.5, max_terms=200)
    assert max(evaluated) <= 96 and max(sampled) > 96  # the long rows were chunked
    k = S.sample_terms((300, 1), gen(0), "power", 0.8, 0.5)[:, 0]
    work = float((2 + torch.where(k > 200, torch.ones_like(k), k)).sum() * 3)
    assert work <= sum(sampled) <= 2 ** 0.25 * work
    sampled.clear()
    S.sumo(t, 300, gen(0), K_min=2, alpha=0.5, max_terms=200, roulette="per_point")
    assert sum(sampled) > 2 * work


def test_chunked_evaluation_equals_fused():
    """_log_w_and_grad in particle chunks = one fused call on the same particles (tier 1, float64 rounding)."""
    t = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    z, log_q = t.sample_proposal((2, 50), gen(0))
    omega = torch.rand(2, 50, 3, generator=gen(1), dtype=torch.float64)
    lw, g = S._log_w_and_grad(t, z, log_q, block=10 ** 6)
    lw_c, g_c = S._log_w_and_grad(t, z, log_q, block=60)  # 10 particles per chunk
    torch.testing.assert_close(lw_c, lw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_c(omega), g(omega), rtol=1e-12, atol=1e-12)


def _broken_sumo(monkeypatch, target, R, **kw):
    """Negative control: drop the Russian-roulette reweighting (S ≡ 1): IWAE_{K0+𝒦}, biased."""
    real_tail = S.tail
    monkeypatch.setattr(S, "tail", lambda j, *a: torch.ones_like(j))
    try:
        return S.sumo(target, R, gen(0), **kw)
    finally:
        monkeypatch.setattr(S, "tail", real_tail)


CONFIGS = [{"truncation": "geometric", "rho": 0.6}, {"truncation": "power", "alpha": 2.0, "K_min": 2}]


@pytest.mark.parametrize("kw", CONFIGS)
def test_log_likelihood_is_unbiased(kw, monkeypatch):
    """z = (mean log p̂ − log p(x)) / MCSE, two-sided, α = 0.001; the broken version is rejected."""
    t = make_ppca(d=3, k=1, n=1, mean_shift=1.0, cov_scale=2.0)
    exact = float(t.log_marginal())

    def p(sample):
        lp = sample.diagnostics["log_px_hat"].numpy()
        return 2 * sps.norm.sf(abs(lp.mean() - exact) / (lp.std(ddof=1) / math.sqrt(lp.size)))

    assert p(S.sumo(t, 8000, gen(0), **kw)) > ALPHA
    assert p(_broken_sumo(monkeypatch, t, 8000, **kw)) < ALPHA


@pytest.mark.parametrize("kw", CONFIGS)
def test_gradient_is_unbiased(kw, monkeypatch):
    """gradbench.stats.bias_test (Hotelling T², R ≥ 10 P), α = 0.001; the broken version is rejected."""
    t = make_ppca(d=3, k=1, n=1, mean_shift=1.0, cov_scale=2.0)
    g = t.exact_grad().numpy()
    assert bias_test(S.sumo(t, 8000, gen(0), **kw).grads.numpy(), g, EPS64, np.random.default_rng(0)).pvalue > ALPHA
    assert bias_test(_broken_sumo(monkeypatch, t, 8000, **kw).grads.numpy(), g, EPS64, np.random.default_rng(0)).pvalue < ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("kw", CONFIGS + [{"truncation": "geometric", "rho": 0.9, "K_min": 4}])
def test_gradient_is_unbiased_study(kw):
    t = make_ppca(d=5, k=2, n=2, mean_shift=1.0, cov_scale=2.0)
    assert bias_test(S.sumo(t, 40000, gen(0), **kw).grads.numpy(), t.exact_grad().numpy(), EPS64, np.random.default_rng(0)).pvalue > ALPHA


@pytest.mark.parametrize("roulette,R", [("per_replicate", 2000),
                                       pytest.param("per_point", 6000, marks=pytest.mark.slow)])
def test_default_is_unbiased_on_several_points(roulette, R, monkeypatch):
    """The default (power α = ½, max_terms 10⁵) on N = 3 data points, both roulettes: log p̂ (z-test against the
    exact Σ_n log p(x_n)) and ĝ (Hotelling T² against the exact ∇θ log p(x), R ≥ 10 P), α = 0.001 each; the
    broken version (no reweighting) is rejected by both. Censored replicates (≈ 0.3 % / 1 %) are left out: the
    censoring bias, O(M^{−½}) of IWAE_1's, is far below the resolution of R ≤ 6000."""
    t = make_ppca(d=3, k=1, n=3, mean_shift=1.0, cov_scale=2.0)
    exact_lp, g = float(t.log_marginal()), t.exact_grad().numpy()

    def pvalues(sample):
        ok = ~sample.diagnostics["censored"]
        lp = sample.diagnostics["log_px_hat"][ok].numpy()
        p_lp = 2 * sps.norm.sf(abs(lp.mean() - exact_lp) / (lp.std(ddof=1) / math.sqrt(lp.size)))
        return p_lp, bias_test(sample.grads[ok].numpy(), g, EPS64, np.random.default_rng(0)).pvalue

    assert min(pvalues(S.sumo(t, R, gen(0), roulette=roulette))) > ALPHA
    assert max(pvalues(_broken_sumo(monkeypatch, t, R, roulette=roulette))) < ALPHA


def _hill(R: int, **kw) -> tuple[float, float]:
    t = make_ppca(d=10, k=3, n=1, mean_shift=0.5, cov_scale=2.0, seed=0)
    s = S.sumo(t, R, gen(0), **kw)
    G = s.grads[~s.diagnostics["nonfinite"]].numpy()
    return hill_tail_index(np.linalg.norm(G - np.median(G, 0), axis=1))[:2]


def test_default_truncation_has_finite_variance():
    """Hill tail index of ‖ĝ − median‖ (seed 0, k = ⌈√R⌉), one-sided bounds at α = 0.001: the default (α = ½:
    Gaussian-type tail; R = 4000) is above 2 (finite variance); α = 0.8 (theory 8/3; R = 2·10⁴) is above 2 and
    below 4 (heavy: infinite fourth moment). Negative control: the original default (geometric, ρ = 0.8;
    R = 2·10⁴) has an upper bound below 2 (infinite variance). The default's light tail: the slow test below."""
    z = sps.norm.isf(ALPHA)
    a, se = _hill(4000)
    assert a - z * se > 2
    a, se = _hill(20_000, alpha=0.8)
    assert 2 < a - z * se and a + z * se < 4
    a, se = _hill(20_000, truncation="geometric", rho=0.8)
    assert a + z * se < 2


@pytest.mark.slow
def test_default_truncation_is_light_tailed():
    """The default's Hill index at R = 2·10⁴ (seed 0, k = 142) is above 4 at α = 0.001 (one-sided); the control
    α = 0.8 is below 4 (test above)."""
    a, se = _hill(20_000)
    assert a - sps.norm.isf(ALPHA) * se > 4
