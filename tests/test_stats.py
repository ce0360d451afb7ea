"""The statistical tests are themselves tested: calibrated under H0, powerful under H1.

Fixed seeds; each meta-test states its α.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from gradbench.stats import (
    ReferenceNoise,
    bh_qvalues,
    bias_norm_interval,
    bias_test,
    bootstrap_snr_medians,
    hill_tail_index,
    holm_adjust,
    influence_se,
)

EPS = float(np.finfo(np.float64).eps)


ALPHA = 0.001  # level of every meta-test below
Z = sps.norm.isf(ALPHA / 2)


def _rate_bound(a: float, n: int) -> float:
    """Upper α-level bound of a false-alarm rate at nominal level a over n independent data sets."""
    return a + Z * np.sqrt(a * (1 - a) / n)


def _null_pvalues(gen, n_sets: int = 300, noise: ReferenceNoise | None = None) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    out = [bias_test(G := gen(rng), np.zeros(G.shape[1]), EPS, rng, noise, n_boot=499) for _ in range(n_sets)]
    return np.array([t.pvalue for t in out]), [t.method for t in out]


SKEW_A = np.random.default_rng(10).normal(size=(60, 60))
NULLS = {
    "hotelling": lambda r: r.normal(size=(400, 5)) @ SKEW_A[:5, :5],
    "max-t, skewed, n=30 < p=60": lambda r: (r.chisquare(1, size=(30, 60)) - 1) @ SKEW_A,
    "max-t, equicorrelated p=200": lambda r: r.normal(size=(300, 200)) * np.sqrt(0.1) + r.normal(size=(300, 1)) * np.sqrt(0.9),
}


@pytest.mark.parametrize("name", NULLS)
def test_pvalues_uniform_under_null(name):
    """300 null data sets per branch: KS uniformity not rejected and false-alarm rates at α = .01, .05
    within their binomial bound, at level ALPHA (skewed gradients at small R and strongly correlated
    coordinates are the regimes where the old max-|z| + Šidák test was anti-conservative / conservative)."""
    p, methods = _null_pvalues(NULLS[name])
    assert methods[0].startswith(name.split(",")[0]), methods[0]
    assert sps.kstest(p, "uniform").pvalue > ALPHA
    for a in (0.01, 0.05):
        assert np.mean(p <= a) <= _rate_bound(a, p.size)


def test_negative_control_sidak_normal_tails_are_anticonservative_at_small_n():
    """The old rule (Šidák on normal tails, n = 30 skewed) must fail the same check: the meta-test has power."""
    rng = np.random.default_rng(0)
    p = []
    for _ in range(300):
        G = NULLS["max-t, skewed, n=30 < p=60"](rng)
        z = np.abs(G.mean(0)) / (G.std(0, ddof=1) / np.sqrt(G.shape[0]))
        p.append(-np.expm1(G.shape[1] * np.log1p(-2 * sps.norm.sf(z.max()))))
    assert np.mean(np.array(p) <= 0.01) > _rate_bound(0.01, 300)


@pytest.mark.parametrize("name", ["hotelling", "max-t, skewed, n=30 < p=60"])
def test_detects_a_shift(name):
    """Negative control for the calibration test: a shifted mean (0.5 s.d. for n = 400, 1.5 s.d. for n = 30)."""
    rng = np.random.default_rng(1)
    G = NULLS[name](rng)
    shift = np.zeros(G.shape[1])
    shift[0] = (0.5 if G.shape[0] > 100 else 1.5) * G[:, 0].std()
    assert bias_test(G + shift, np.zeros(G.shape[1]), EPS, rng).pvalue < ALPHA


def test_singular_covariance_uses_rank():
    """Rows living on a 2-dimensional subspace of R^6: Hotelling on the rank-2 support."""
    rng = np.random.default_rng(2)
    B = rng.normal(size=(2, 6))
    G = rng.normal(size=(500, 2)) @ B
    res = bias_test(G, np.zeros(6), EPS, rng)
    assert res.method.startswith("hotelling+max-t(rank=2, df=499") and res.pvalue > ALPHA
    off_support = np.linalg.svd(B)[2][-1]  # a direction with zero variance
    res = bias_test(G, -1e-3 * off_support, EPS, rng)
    assert res.pvalue == 0.0 and res.method.startswith("deterministic")


def test_rank_threshold_does_not_scale_with_the_reference_norm():
    """A huge ‖g*‖ must not hide a small bias in a low-variance direction (old tol: √eps ‖g*‖ ≈ 1.5e-2)."""
    rng = np.random.default_rng(3)
    G = np.column_stack([1e6 + rng.normal(size=500), 1e-6 * rng.normal(size=500)])
    ref = np.array([1e6, 0.0])
    assert bias_test(G, ref, EPS, rng).pvalue > ALPHA
    assert bias_test(G, ref - np.array([0.0, 1e-6]), EPS, rng).pvalue < ALPHA  # 22 s.e. in coordinate 2


def test_estimated_reference_is_a_two_sample_problem():
    """A reference with covariance: Hotelling with Nel–van der Merwe df; widening accounts for its noise."""
    rng = np.random.default_rng(4)
    G = rng.normal(size=(1000, 3))
    ref = np.array([0.2, 0.0, 0.0])  # 6 MC s.e. away if the reference were exact ...
    assert bias_test(G, ref, EPS, rng).pvalue < ALPHA
    noise = ReferenceNoise(cov=np.eye(3) * 40.0, n=1000)  # ... within 1 s.e. of a noisy reference
    res = bias_test(G, ref, EPS, rng, noise)
    assert res.method.startswith("hotelling") and "two-sample" in res.method and res.pvalue > 0.05


def test_two_sample_pvalues_uniform_with_unequal_covariances():
    """Two-sample null (reference = mean of 300 replicates with a different covariance), 300 sets."""
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4)) * 3
    p = []
    for _ in range(300):
        G, H = rng.normal(size=(200, 4)) @ A, rng.normal(size=(300, 4)) @ B
        p.append(bias_test(G, H.mean(0), EPS, rng, ReferenceNoise(cov=np.cov(H.T), n=300)).pvalue)
    p = np.array(p)
    assert sps.kstest(p, "uniform").pvalue > ALPHA and np.mean(p <= 0.01) <= _rate_bound(0.01, 300)
    # negative control: ignoring the reference's noise is anti-conservative
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(4, 4)), rng.normal(size=(4, 4)) * 3
    bad = [bias_test(G, (rng.normal(size=(300, 4)) @ B).mean(0), EPS, rng).pvalue
           for G in (rng.normal(size=(200, 4)) @ A for _ in range(300))]
    assert np.mean(np.array(bad) <= 0.01) > _rate_bound(0.01, 300)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3])
def test_bias_norm_interval_covers(shift):
    """95 % interval of ‖b‖ covers the truth in ≥ 95 % − Z s.e. of 300 sets, at zero and small biases;
    negative control: the plug-in "‖d‖ ± 1.96 s.e." misses ‖b‖ = 0 far more often."""
    rng = np.random.default_rng(6)
    A = rng.normal(size=(5, 5)) / np.sqrt(5)
    b = np.zeros(5)
    b[0] = shift
    cover, plugin_cover = [], []
    for _ in range(300):
        G = rng.normal(size=(400, 5)) @ A + b
        bn = bias_norm_interval(G, np.zeros(5), EPS, rng)
        cover.append(bn.ci_low <= np.linalg.norm(b) <= bn.ci_high)
        u = G.mean(0) / np.linalg.norm(G.mean(0))
        se = (G @ u).std(ddof=1) / np.sqrt(400)
        plugin_cover.append(abs(bn.plugin - np.linalg.norm(b)) <= 1.96 * se)
    bound = 0.95 - Z * np.sqrt(0.95 * 0.05 / 300)
    assert np.mean(cover) >= bound
    if shift == 0.0:
        assert np.mean(plugin_cover) < bound


def test_bias_norm_interval_is_never_zero_width_at_a_small_observation():
    """‖d‖² far below its null law (an ultra-close mean) used to give [0, 0]: the upper end now stays at
    the sensitivity, the upper end at the null law's median (deterministic: no draw is tested)."""
    rng = np.random.default_rng(0)
    G = rng.normal(size=(400, 5))
    G_tiny = G - G.mean(0)  # ḡ = g* exactly: ‖d‖² = 0
    tiny = bias_norm_interval(G_tiny, np.zeros(5), EPS, np.random.default_rng(1))
    assert tiny.ci_low == 0.0 and tiny.ci_high > 0.0  # coverage: test_bias_norm_interval_covers


def test_bias_norm_squared_is_unbiased():
    """Mean over 300 sets of ‖d‖² − tr Σ̂/n equals ‖b‖² within Z MC s.e.; the plug-in ‖d‖² does not."""
    rng = np.random.default_rng(7)
    b = np.array([0.05, 0.0, 0.0])
    est = np.array([bias_norm_interval(rng.normal(size=(200, 3)) + b, np.zeros(3), EPS, rng).sq_unbiased
                    for _ in range(300)])
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - b @ b) < Z * se
    assert abs(est.mean() + 3 / 200 - b @ b) > Z * se  # plug-in: + tr Σ / n


def test_hill_index_of_pareto():
    """Pareto(α = 1.5) data: Hill's α̂ within Z s.e. of 1.5; Gaussian norms (negative control) far above 2."""
    rng = np.random.default_rng(8)
    a, se, k = hill_tail_index(rng.pareto(1.5, size=20_000) + 1)
    assert abs(a - 1.5) < Z * se and k == int(np.ceil(np.sqrt(20_000)))
    a, se, _ = hill_tail_index(np.linalg.norm(rng.normal(size=(20_000, 3)), axis=1))
    assert a - Z * se > 2


def test_bh_and_holm_match_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan])
    np.testing.assert_allclose(bh_qvalues(p)[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    np.testing.assert_allclose(holm_adjust(p)[:4], [0.04, 0.09, 0.09, 0.5])
    assert np.isnan(bh_qvalues(p)[4]) and np.isnan(holm_adjust(p)[4])


def test_influence_se_matches_classical_formula():
    x = np.random.default_rng(4).normal(size=1000)
    assert influence_se(x - x.mean()) == pytest.approx(x.std(ddof=1) / np.sqrt(1000))


def test_bootstrap_snr_standard_error_is_calibrated():
    """Bootstrap s.e. of the SNR median vs the spread over 200 independent data sets (within 25 %)."""
    rng = np.random.default_rng(5)
    mean = np.array([0.5, 1.0, 2.0])
    groups = {"all": slice(None)}
    point = [bootstrap_snr_medians(rng.normal(mean, 1.0, size=(400, 3)), groups, rng, 50)["all"][0] for _ in range(200)]
    se = bootstrap_snr_medians(rng.normal(mean, 1.0, size=(400, 3)), groups, rng, 400)["all"][1]
    assert se == pytest.approx(np.std(point, ddof=1), rel=0.25)


def test_constant_rows_with_rounding_noise_are_unbiased():
    """Rows equal up to float64 rounding (a zero-variance estimator) must not look biased."""
    g = np.random.default_rng(6).normal(size=8) * 10
    G = np.tile(g, (600, 1)) * (1 + EPS * np.random.default_rng(7).integers(-2, 3, size=(600, 8)))
    rng = np.random.default_rng(0)
    res = bias_test(G, g, EPS, rng)
    assert res.pvalue == 1.0, res
    assert bias_test(G, g + 1e-6, EPS, rng).pvalue == 0.0


def test_unseen_rare_atom_is_no_deterministic_bias_with_atoms():
    """A discrete estimator whose rare state (probability 2e-4) never shows in 1000 draws: the missing
    direction is no deterministic bias when the test knows the gradients have atoms; a bias beyond
    what an unseen atom could cause still is (negative control). Without ``atoms`` the old verdict stands."""
    rng = np.random.default_rng(0)
    values = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 50.0]])
    probs = np.array([0.6, 0.3998, 2e-4])
    truth = probs @ values
    G = values[rng.choice(3, size=1000, p=probs)]
    assert (G[:, 2] == 0).all(), "seed 0 draws no rare state (fixed, not tuned: P = 0.82)"
    assert bias_test(G, truth, EPS, np.random.default_rng(0)).pvalue == 0.0
    assert bias_test(G, truth, EPS, np.random.default_rng(0), atoms=True).pvalue > ALPHA
    far = truth + np.array([0.0, 0.0, 5.0])  # 10 % of the atom's size: needs probability 0.1, not unseen
    assert bias_test(G, far, EPS, np.random.default_rng(0), atoms=True).pvalue == 0.0


def test_wishart_draws_have_the_sampling_law_of_an_estimated_covariance():
    """stats._wishart_draws (the two-sample bootstrap's re-estimated reference covariance): mean V and
    Var(V*_ij) = (V_ij² + V_ii V_jj)/df, z-tests over 4000 draws, Bonferroni over 2 entries, α = 0.001,
    seed 0. Negative control: the same test rejects draws on the wrong df (df/4)."""
    from gradbench.stats import _wishart_draws

    A = np.array([[1.0, 0.0], [0.6, 0.8]])
    V, df, b = A @ A.T, 30.0, 4000

    def pvalue(draws: np.ndarray) -> float:
        ps = []
        for i, j in ((0, 0), (0, 1)):
            x = draws[:, i, j]
            var = (V[i, j] ** 2 + V[i, i] * V[j, j]) / df
            ps.append(2 * sps.norm.sf(abs(x.mean() - V[i, j]) / np.sqrt(var / b)))  # mean
            c2 = (x - x.mean()) ** 2  # the sample variance's influence values: its MCSE is sd(c2)/√b
            ps.append(2 * sps.norm.sf(abs(x.var(ddof=1) - var) / (c2.std(ddof=1) / np.sqrt(b))))
        return min(1.0, min(ps) * len(ps))

    assert pvalue(_wishart_draws(A, df, b, np.random.default_rng(0))) > ALPHA
    assert pvalue(_wishart_draws(A, df / 4, b, np.random.default_rng(0))) < ALPHA


def test_a_singular_resample_does_not_poison_the_hotelling_bootstrap():
    """A direction carried by 4 of 200 rows (a rare atom) makes ≈ e⁻⁴ ≈ 1.8 % of the row resamples singular; each such
    resample counts as exceeding (conservative), but the others must keep their finite T²*: a 7-s.e. bias in the
    other coordinate is then found by T²: p_T2 < α = 0.05 (its floor here is about the singular share, 0.018);
    before, one singular resample in a batch made every T²* infinite and p_T2 = 1. Control: without the bias,
    p_T2 > 0.05 (a level-0.05 test, seed 0)."""
    rng = np.random.default_rng(0)
    n = 200
    G = np.zeros((n, 2))
    G[4:, 0] = rng.standard_normal(n - 4)
    G[4:, 0] -= G[4:, 0].mean()  # the covariance is exactly diagonal: a resample without rows 0..3 is exactly singular
    G[:4, 1] = rng.choice([-1.0, 1.0], 4)
    mean = G.mean(0)

    def p_t2(shift: float) -> float:
        res = bias_test(G, mean - np.array([shift * G[:, 0].std() / math.sqrt(n), 0.0]), 2.2e-16,
                        np.random.default_rng(1))
        assert res.method.startswith("hotelling"), res.method
        return float(res.method.split("p_T2=")[1].split(",")[0])

    assert p_t2(7.0) < 0.05
    assert p_t2(0.0) > 0.05


def test_min_p_combination_is_exact_for_exchangeable_draws():
    """stats._min_p_count (the Hotelling branch's T² + max-t combination) on exchangeable statistics: the observed
    (T, M) and B = 19 draws are i.i.d. (T = ‖z‖², M = max_j |w_j|, z, w ~ N(0, I_3) independent), so
    p = (1 + count)/20 must be uniform on {1/20, …, 1} (up to the rare ties the rule counts conservatively): χ² test
    of the 20 cell counts and a binomial test of P(p = 1/20) = 1/20, over 1000 replications, α = 0.001, seed 0.
    Negative control: the rule before wave 4 (each draw ranked within the draws only) puts up to twice the mass at
    p = 1/20 and fails the binomial test."""
    from gradbench.stats import _min_p_count

    rng = np.random.default_rng(0)
    B, n_rep, r = 19, 1000, 3
    z, w = rng.standard_normal((2, n_rep, B + 1, r))
    T, M = (z**2).sum(2), np.abs(w).max(2)

    def old_rule(T: np.ndarray, M: np.ndarray) -> int:
        Tb, Mb = T[1:], M[1:]
        p_min = min((1 + (Tb >= T[0]).sum()) / (B + 1), (1 + (Mb >= M[0]).sum()) / (B + 1))
        pt_b = (B + 1 - np.searchsorted(np.sort(Tb), Tb, side="left")) / (B + 1)
        pm_b = (B + 1 - np.searchsorted(np.sort(Mb), Mb, side="left")) / (B + 1)
        return int((np.minimum(pt_b, pm_b) <= p_min).sum())

    def smallest_p_pvalue(counts: np.ndarray) -> float:
        return float(sps.binomtest(int((counts == 0).sum()), counts.size, 1 / (B + 1)).pvalue)

    new = np.array([_min_p_count(T[i, 0], M[i, 0], T[i, 1:], M[i, 1:]) for i in range(n_rep)])
    assert sps.chisquare(np.bincount(new, minlength=B + 1)).pvalue > ALPHA
    assert smallest_p_pvalue(new) > ALPHA
    old = np.array([old_rule(T[i], M[i]) for i in range(n_rep)])
    assert smallest_p_pvalue(old) < ALPHA and np.mean(old == 0) > 1 / (B + 1)


def test_worst_case_reference_keeps_the_estimators_eigenvalues_and_one_reference_component():
    """stats._worst_case_reference on a constructed root with known singular values: centred replicates
    Xc = √(n(n−1)) Q diag(σ) (Q orthonormal columns) give the estimator's part Q diag(σ) exactly, so its eigenvalues
    are σ² = 1, 0.25, 1e-6, 1e-12; a diagonal-only estimated reference with variances 0.1 and 0.2 on the first two
    coordinates adds one component of weight 0.3. With eps = 1e-6 the numerical floor is ≈ 2.3e-5 (s.d.), so 1e-12
    (s.d. 1e-6) is below it and left out while 1e-6 (s.d. 1e-3) is kept: the law is [1, 0.25, 1e-6, 0.3].
    Control: the same decomposition with an exact reference has no reference component."""
    from gradbench.stats import ReferenceNoise, _worst_case_reference, diff_noise

    n, sigma = 20, np.array([1.0, 0.5, 1e-3, 1e-6])
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, 4)))
    Xc = math.sqrt(n * (n - 1)) * Q * sigma
    ref = ReferenceNoise(var=np.array([0.1, 0.2, 0.0, 0.0]), estimated_diagonal=True)
    dn = diff_noise(Xc, ref, 1e-6, 1.0)
    assert dn.diagonal_only and 1e-5 < dn.floor < 1e-4
    lam = _worst_case_reference(dn)
    np.testing.assert_allclose(lam, [1.0, 0.25, 1e-6, 0.3], rtol=1e-9)
    exact = diff_noise(Xc, ReferenceNoise(), 1e-6, 1.0)
    np.testing.assert_allclose(_worst_case_reference(exact), [1.0, 0.25, 1e-6, 0.0], rtol=1e-9)


def test_accurate_mean_is_the_correctly_rounded_mean_where_the_plain_mean_is_not():
    """Column means with one refinement step: on columns of 10 000 values near 1 (numpy's sequential float64 sum
    drifts by up to ~n·eps), ``accurate_mean`` equals the exactly computed mean (math.fsum / n) to 1 ulp in every
    column. Negative control: the plain ``G.mean(0)`` misses by more than 1 ulp in some column. Fixed seed 0."""
    from gradbench.stats import accurate_mean

    rng = np.random.default_rng(0)
    G = 1.0 + rng.random((10_000, 8)) * 1e-3 + rng.integers(0, 2, (10_000, 8)) * 0.1
    exact = np.array([math.fsum(G[:, j]) / G.shape[0] for j in range(G.shape[1])])
    ulp = np.spacing(exact)
    assert np.all(np.abs(accurate_mean(G) - exact) <= ulp)
    assert np.any(np.abs(G.mean(0) - exact) > ulp)
