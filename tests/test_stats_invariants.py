"""Tests that fail when the statistics are wrong: each pins one formula of :mod:`gradbench.stats` against an
independent computation (scipy's F law, a brute-force rank count, literal thresholds) and, where the formula
sets a level, a calibration sized so that a plausible wrong formula is resolved by several standard errors.

Each test names the wrong formula it would catch (its negative control: the test computes that formula too
and checks that it is resolved). Fixed seeds; meta-tests at level ALPHA.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from gradbench import stats
from gradbench.stats import _min_p_count, bias_test, rare_state_verdict, replicates_needed

EPS = float(np.finfo(np.float64).eps)
ALPHA = 0.001  # level of every meta-test below
Z = sps.norm.isf(ALPHA / 2)


def _within(rate: float, a: float, n: int) -> bool:
    """``rate`` (a proportion over n independent draws) within its two-sided level-ALPHA binomial band around a."""
    return abs(rate - a) <= Z * math.sqrt(a * (1 - a) / n)


# -- Hotelling T² through its F reference ---------------------------------------------------------------------


def _hotelling_f_pvalue(G: np.ndarray, ref: np.ndarray) -> float:
    """Hotelling's one-sample test from the textbook formula: T² = n d̄ᵀ S⁻¹ d̄ (S on n − 1 df) and
    T² (n − r) / (r (n − 1)) ~ F(r, n − r) for Gaussian rows (Anderson, An Introduction to Multivariate
    Statistical Analysis, 3rd ed., §5.2.2)."""
    n, r = G.shape
    d = G.mean(0) - ref
    t2 = n * float(d @ np.linalg.solve(np.cov(G, rowvar=False), d))
    return float(sps.f.sf(t2 * (n - r) / (r * (n - 1)), r, n - r))


def _wrong_f_pvalue(G: np.ndarray, ref: np.ndarray) -> float:
    """The negative control: the conversion n·T² / (r (n − 1)) (degrees of freedom ignored in the numerator)."""
    n, r = G.shape
    d = G.mean(0) - ref
    t2 = n * float(d @ np.linalg.solve(np.cov(G, rowvar=False), d))
    return float(sps.f.sf(t2 * n / (r * (n - 1)), r, n - r))


@pytest.fixture
def f_only(monkeypatch):
    """The Hotelling branch with its F reference alone (as above HOTELLING_BOOT_MAX_FLOPS)."""
    monkeypatch.setattr(stats, "HOTELLING_BOOT_MAX_FLOPS", 0.0)


@pytest.mark.parametrize("n, r, shift", [(52, 5, 0.0), (52, 5, 0.2), (102, 10, 0.3), (502, 50, 0.1)])
def test_hotelling_f_branch_equals_the_textbook_f_test(f_only, n, r, shift):
    """The F-only branch's p-value equals Hotelling's exact F p-value to 1e-8 relative, on Gaussian rows with a
    full-rank covariance (ν = n − 1 > 10 r, away from the branch boundary). Negative control: the n·T²/(r(n − 1)) conversion differs by more than
    1e-3 relative on the same data (the test resolves it by five orders of magnitude)."""
    rng = np.random.default_rng(n + r)
    G = rng.normal(size=(n, r)) @ rng.normal(size=(r, r)) + shift
    ref = np.zeros(r)
    res = bias_test(G, ref, EPS, np.random.default_rng(0))
    assert res.method.startswith("hotelling(") and res.method.endswith(", F)"), res.method
    exact = _hotelling_f_pvalue(G, ref)
    assert 1e-12 < exact, exact  # not underflowed: the comparison is relative
    assert res.pvalue == pytest.approx(exact, rel=1e-8, abs=0)
    assert abs(_wrong_f_pvalue(G, ref) - exact) > 1e-3 * exact


def test_hotelling_f_branch_is_reached_without_patching():
    """Above B·n·r² = HOTELLING_BOOT_MAX_FLOPS (1e11; here 499 · 25000 · 100² ≈ 1.2e11) the branch is F-only, with
    the textbook p-value (1e-8 relative); the negative control's p-value is off by more than 5 %."""
    rng = np.random.default_rng(7)
    n, r = 25_000, 100
    G = rng.normal(size=(n, r)) + 0.005
    ref = np.zeros(r)
    res = bias_test(G, ref, EPS, np.random.default_rng(0))
    assert res.method.endswith(", F)"), res.method
    exact = _hotelling_f_pvalue(G, ref)
    assert res.pvalue == pytest.approx(exact, rel=1e-8, abs=0)
    assert 1e-8 < exact < 0.5, exact  # a p-value in the range where decisions are made
    assert abs(_wrong_f_pvalue(G, ref) - exact) > 0.05 * exact


def test_hotelling_f_branch_is_calibrated(f_only):
    """4000 Gaussian null data sets (n = 102, r = 10): false-alarm rates at α = 1 % and 5 % within their two-sided
    binomial bands at level ALPHA (±0.52 % and ±1.13 %), and KS uniformity not rejected. Negative control: the
    n·T²/(r(n − 1)) conversion has size 2.0 % / 8.2 % here (exact, from the F law), 1.9 and 2.8 band half-widths
    away — computed on the same data sets, it must fail the same bands."""
    rng = np.random.default_rng(1)
    n, r, n_sets = 102, 10, 4000
    A = rng.normal(size=(r, r))
    p, p_wrong = np.empty(n_sets), np.empty(n_sets)
    for i in range(n_sets):
        G = rng.normal(size=(n, r)) @ A
        res = bias_test(G, np.zeros(r), EPS, rng)
        assert res.method.endswith(", F)"), res.method
        p[i] = res.pvalue
        p_wrong[i] = _wrong_f_pvalue(G, np.zeros(r))
    for a in (0.01, 0.05):
        assert _within(float(np.mean(p <= a)), a, n_sets), (a, np.mean(p <= a))
    assert sps.kstest(p, "uniform").pvalue > ALPHA
    assert not all(_within(float(np.mean(p_wrong <= a)), a, n_sets) for a in (0.01, 0.05))


# -- the min-p combination of T² and max-t -------------------------------------------------------------------


def _brute_min_p_count(t2: float, m_obs: float, Tb: np.ndarray, Mb: np.ndarray) -> int:
    """The rule of :func:`gradbench.stats._min_p_count`, written out member by member: in the pool of the observed
    and the draws, rank_T(i) = #{j: T_j ≥ T_i} (NaN as +inf), the same for M; member i is at least as extreme as the
    observed when (min, max) of its two ranks is lexicographically ≤ the observed's."""
    T = np.nan_to_num(np.concatenate([[t2], Tb]), nan=np.inf)
    M = np.nan_to_num(np.concatenate([[m_obs], Mb]), nan=np.inf)
    keys = []
    for i in range(T.size):
        rt = sum(1 for v in T if v >= T[i])
        rm = sum(1 for v in M if v >= M[i])
        keys.append((min(rt, rm), max(rt, rm)))
    return sum(1 for k in keys[1:] if k <= keys[0])


@pytest.mark.parametrize("t2, m_obs, Tb, Mb, expected", [
    # observed ranks (T 1, M 3): draw 1 has the swapped ranks (3, 1) — a tie, counted; draw 2 has (2, 2)
    (3.0, 1.0, [1.0, 2.0], [3.0, 2.0], 1),
    # value ties: pool T [2, 2, 1, 3, 2] → ranks [4, 4, 5, 1, 4]; M [2, 1, 2, 0, 2] → [3, 4, 3, 5, 3];
    # keys: observed (3, 4); draws (4, 4) no, (3, 5) no, (1, 5) yes, (3, 4) equal yes
    (2.0, 2.0, [2.0, 1.0, 3.0, 2.0], [1.0, 2.0, 0.0, 2.0], 2),
    # a NaN draw ranks as +inf (the top): pool T [2, inf, 1] → [2, 1, 3], M [2, 3, 1] → [2, 1, 3];
    # keys: observed (2, 2); draws (1, 1) yes, (3, 3) no
    (2.0, 2.0, [np.nan, 1.0], [3.0, 1.0], 1),
    # the observed is the top of both: nothing reaches it
    (9.0, 9.0, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 0),
])
def test_min_p_count_hand_examples(t2, m_obs, Tb, Mb, expected):
    """Small pools worked by hand (the comments give the ranks); the brute-force rule agrees."""
    Tb, Mb = np.array(Tb), np.array(Mb)
    assert _brute_min_p_count(t2, m_obs, Tb, Mb) == expected
    assert _min_p_count(t2, m_obs, Tb, Mb) == expected


def test_min_p_count_equals_brute_force_with_ties():
    """2000 random pools of B = 9 draws on a 4-value grid (so value ties and swapped-rank ties are frequent):
    the vectorised count equals the member-by-member rule exactly. Negative control: not counting swapped-rank
    ties (ranks (a, b) against (b, a)) changes the count on more than 1 % of these pools."""
    rng = np.random.default_rng(3)
    swapped_differs = 0
    for _ in range(2000):
        T, M = rng.integers(0, 4, size=(2, 10)).astype(float)
        got = _min_p_count(T[0], M[0], T[1:], M[1:])
        assert got == _brute_min_p_count(T[0], M[0], T[1:], M[1:]), (T, M)
        swapped_differs += got != _brute_count_without_swapped_ties(T, M)
    assert swapped_differs > 20


def _brute_count_without_swapped_ties(T: np.ndarray, M: np.ndarray) -> int:
    rt = [int((T >= v).sum()) for v in T]
    rm = [int((M >= v).sum()) for v in M]
    k0 = (min(rt[0], rm[0]), max(rt[0], rm[0]))
    return sum(1 for a, b in zip(rt[1:], rm[1:])
               if (min(a, b), max(a, b)) < k0 or (a, b) == (rt[0], rm[0]))


def test_min_p_count_level_at_b19_resolves_swapped_ties():
    """Exchangeable pools of B + 1 = 20 members with independent random ranks for T and M: the rank-1 member of T
    (A) and of M (B) have keys (1, rank_M(A)) and (1, rank_T(B)), tied with probability (19/20)(1/19) = 1/20, so the
    observed is the unique smallest key — count 0 — with probability exactly (19/20)/20 = 4.75 %. 60000 pools:
    P(count = 0) within its band (±0.29 %, level ALPHA). Negative control: without the swapped-tie rule the
    probability is 4.75 % + 2·(1/20)/20 = 5.25 %, 0.50 % away (5.8 s.e.) — checked on the same pools."""
    rng = np.random.default_rng(5)
    B, n_rep = 19, 60_000
    ranks = np.argsort(rng.random((2, n_rep, B + 1)), axis=2).astype(float)
    zero = np.array([_min_p_count(ranks[0, i, 0], ranks[1, i, 0], ranks[0, i, 1:], ranks[1, i, 1:]) == 0
                     for i in range(n_rep)])
    assert _within(float(zero.mean()), 19 / 400, n_rep), zero.mean()
    rt, rm = B + 1 - ranks[0], B + 1 - ranks[1]  # ranks from the top, 1..20 (no value ties: permutations)
    key = np.minimum(rt, rm) * (B + 2) + np.maximum(rt, rm)
    assert np.array_equal(zero, (key[:, 1:] > key[:, :1]).all(1))  # the rule, vectorised here
    zero_wrong = (key[:, 1:] >= key[:, :1]).all(1)  # equal keys are swapped-rank ties: the wrong rule drops them
    assert not _within(float(zero_wrong.mean()), 19 / 400, n_rep), zero_wrong.mean()


def _hotelling_ps(res) -> tuple[float, float]:
    tail = res.method.split("p_T2=")[1]
    return float(tail.split(",")[0]), float(tail.split("p_max=")[1].rstrip(")"))


@pytest.mark.parametrize("B", [19, 499])
def test_min_p_pvalue_invariants(B):
    """On 200 data sets in the Hotelling bootstrap branch (half null, half shifted), with p_T2 and p_max the two
    marginal bootstrap p-values: (1) p ≥ min(p_T2, p_max) — the combination can never be more significant than
    its more significant part — unless no draw reached the observed, and then p ≤ 1/(B + 1) and
    min(p_T2, p_max) = 1/(B + 1) exactly; (2) p > 0; (3) p is k/(B + 1) with k ≥ 2 or p ≤ 1/(B + 1), and
    p = 1/(B + 1) exactly only in the no-draw case (refined by 2·p_F when that is smaller). Negative control:
    p = count/(B + 1) (the observed not counted in the pool) breaks (1) on most data sets."""
    rng = np.random.default_rng(B)
    A = rng.normal(size=(3, 3))
    no_draw = 0
    for i in range(200):
        G = rng.normal(size=(120, 3)) @ A + (0.25 if i % 2 else 0.0)
        res = bias_test(G, np.zeros(3), EPS, rng, n_boot=B)
        assert res.method.startswith("hotelling+max-t") and f"B={B}" in res.method, res.method
        p, (p_t, p_m) = res.pvalue, _hotelling_ps(res)
        assert p > 0
        k = p * (B + 1)
        if k <= 1 + 1e-9:
            no_draw += 1
            assert min(p_t, p_m) == pytest.approx(1 / (B + 1), rel=1e-12)
        else:
            assert p >= min(p_t, p_m) - 1e-12
            assert abs(k - round(k)) < 1e-9 and round(k) >= 2
    assert 0 < no_draw < 200  # both cases were exercised


_ONE_D_REFERENCES = {
    "exact": None,
    "known variance": stats.ReferenceNoise(var=np.array([0.02])),
    "estimated": stats.ReferenceNoise(cov=np.array([[0.9]]), n=40),
    "estimated + known variance": stats.ReferenceNoise(cov=np.array([[0.9]]), n=40, var=np.array([0.02])),
}


@pytest.mark.parametrize("kind", list(_ONE_D_REFERENCES))
def test_in_one_dimension_t2_is_the_squared_max_t(kind):
    """With one coordinate Hotelling's T² is the squared t statistic (Anderson, §5.2.1), and so are its bootstrap
    draws: T²* = m*² / (S*/n + V_ref*) and M* = |m*| / √(S*/n + V_ref*) come from the same resamples, reference
    noise and Wishart draws. So the two marginal bootstrap p-values of the Hotelling branch are equal on every data
    set, for every kind of reference — the observed max-t's standard error √(s²/(n(n − 1)) + V_ref) and the
    known-variance part of its draws (beside an estimated reference's) must match T²'s exactly. n = 20 replicates,
    the mean about one standard error off the reference (p-values mid-range, so the draws straddle the observed).
    Negative control: in two correlated dimensions (n = 40) T² ≠ max t², and the two p-values differ on most data
    sets."""
    rng = np.random.default_rng(20)
    for _ in range(10):
        G = rng.normal(size=(20, 1)) + 0.25
        res = bias_test(G, np.zeros(1), EPS, rng, noise=_ONE_D_REFERENCES[kind])
        assert res.method.startswith("hotelling+max-t(rank=1"), res.method
        p_t, p_m = _hotelling_ps(res)
        assert p_t == p_m, (kind, res.method)
    rng = np.random.default_rng(2)
    A = np.array([[1.0, 0.0], [0.8, 0.6]])
    differ = 0
    for _ in range(40):
        G = rng.normal(size=(40, 2)) @ A + 0.2
        res = bias_test(G, np.zeros(2), EPS, rng)
        assert res.method.startswith("hotelling+max-t(rank=2"), res.method
        differ += len(set(_hotelling_ps(res))) == 2
    assert differ >= 20, differ  # measured: 92 % of 200 such data sets


def test_min_p_pvalue_is_calibrated_at_b19():
    """bias_test with B = 19 on 2000 Gaussian null data sets (n = 200, r = 2; the bootstrap is near-exact there):
    P(p ≤ 1/20) ≤ 5 % + its band (0.50 % s.e., level ALPHA: ≤ 6.6 %) and P(p ≤ 2/20) ≤ 11.7 %. Negative control:
    p = count/(B + 1) puts P(p ≤ 1/20) near 2/20 = 10 %, 10 s.e. above 5 %."""
    rng = np.random.default_rng(11)
    n_sets, B = 2000, 19
    p = np.array([bias_test(rng.normal(size=(200, 2)), np.zeros(2), EPS, rng, n_boot=B).pvalue
                  for _ in range(n_sets)])
    for k in (1, 2):
        a = k / (B + 1)
        assert np.mean(p <= a + 1e-12) <= a + Z * math.sqrt(a * (1 - a) / n_sets), (k, np.mean(p <= a + 1e-12))


# -- the rare-state rule: literal thresholds ------------------------------------------------------------------


@pytest.mark.parametrize("q, n_inconclusive, n_verdict", [
    (0.01, 690, 691),    # log(10³) = 6.9078: 690 · 0.01 = 6.90 < 6.9078 ≤ 6.91
    (1e-3, 6907, 6908),  # 6.907 < 6.9078 ≤ 6.908
    (0.5, 13, 14),       # 6.5 < 6.9078 ≤ 7
])
def test_rare_state_threshold_is_log_1000(q, n_inconclusive, n_verdict):
    """Inconclusive exactly when n·q_min < log(10³) = 6.9078 (numbers written out, not read from the constant):
    the last inconclusive n, the first n with a verdict, and the R the message asks for."""
    assert rare_state_verdict(q, n_inconclusive).startswith("inconclusive: rare states")
    assert f"need R ≥ {n_verdict}" in rare_state_verdict(q, n_inconclusive)
    assert rare_state_verdict(q, n_verdict) == ""
    assert replicates_needed(q) == n_verdict
    assert stats.RARE_STATE_COUNT == pytest.approx(6.907755278982137, rel=1e-15)


def test_terminal_marks_inconclusive_at_the_same_threshold():
    """The run table's verdict column uses the same rule: R·q_min = 6.90 is inconclusive, 6.91 is a verdict."""
    from gradbench.terminal import verdict_column

    cell = verdict_column("verdict", "bias_qvalue", alpha=0.05).show
    row = {"bias_qvalue": (0.2, math.nan), "bias_pvalue": (0.1, math.nan)}
    assert "inconclusive" in cell({**row, "bias_rare_count": (6.90, math.nan)})
    assert "inconclusive" not in cell({**row, "bias_rare_count": (6.91, math.nan)})


def test_rare_state_rule_edges():
    """At R·q_min = log(10³) exactly the rule is silent (the inequality is strict); the message states R·q_min
    (6.9 at R = 690, q_min = 0.01); q_min = 0 needs infinitely many replicates; no q_min or a non-finite one: no rule."""
    q = 6.907755278982137 / 1000
    assert 1000 * q == 6.907755278982137  # exact in floating point, so this is the boundary itself
    assert rare_state_verdict(q, 1000) == ""
    assert "R·q_min = 6.9 < log(10³) (q_min = 0.01)" in rare_state_verdict(0.01, 690)
    assert replicates_needed(0.0) == math.inf
    assert rare_state_verdict(None, 1) == "" and rare_state_verdict(math.nan, 1) == ""


# -- small helpers, pinned exactly ----------------------------------------------------------------------------


def test_influence_se_needs_two_replicates():
    """se = sd(ψ; ddof 1)/√n for n ≥ 2 (n = 2: |ψ₁ − ψ₂|/2), NaN for n = 1 (no spread to estimate)."""
    assert math.isnan(stats.influence_se(np.array([3.0])))
    assert stats.influence_se(np.array([1.0, 4.0])) == pytest.approx(1.5, rel=1e-15)


def test_reference_noise_slices_every_field():
    cov = np.arange(16.0).reshape(4, 4)
    var = np.arange(4.0) + 1
    part = stats.ReferenceNoise(cov, 7, var).sliced(slice(1, 3))
    np.testing.assert_array_equal(part.cov, cov[1:3, 1:3])
    np.testing.assert_array_equal(part.var, var[1:3])
    assert part.n == 7 and not part.exact and not part.estimated_diagonal
    assert stats.ReferenceNoise(var=var, estimated_diagonal=True).sliced(slice(1, 3)).estimated_diagonal
    assert stats.ReferenceNoise().sliced(slice(0, 2)).exact


def test_sample_noise_is_diff_noise_of_the_centred_replicates():
    """sample_noise(G, noise) = diff_noise(G − mean, noise, eps, max|G|): same basis, singular values and floor, with
    rows far from zero (a sign error in the centring shows), with an estimated reference's noise kept, and with
    entries below 1 whose spread is at rounding level (the floor then scales with max|G|)."""
    rng = np.random.default_rng(2)
    noise = stats.ReferenceNoise(np.eye(3) * 0.02, 100)
    for G, nz in [(5.0 + rng.normal(size=(40, 3)) * 0.1, None), (5.0 + rng.normal(size=(40, 3)) * 0.1, noise),
                  (1e-3 * (5.0 + rng.normal(size=(40, 3)) * 1e-12), None)]:  # |g| < 1, floor set by rounding
        got = stats.sample_noise(G, nz, EPS)
        want = stats.diff_noise(G - stats.accurate_mean(G), nz or stats.ReferenceNoise(), EPS, float(np.abs(G).max()))
        np.testing.assert_allclose(got.sv, want.sv, rtol=1e-12)
        np.testing.assert_allclose(np.abs(got.basis), np.abs(want.basis), rtol=1e-9, atol=1e-12)
        assert got.floor == pytest.approx(want.floor, rel=1e-12)
        assert len(got.parts) == (1 if nz is None else 2)


def test_bisect_finds_the_threshold_of_a_monotone_predicate():
    """The smallest x in [lo, hi] with pred(x) true, to 2⁻⁶⁰ of the bracket (60 halvings)."""
    assert stats._bisect(lambda x: x >= 0.3, 0.0, 1.0) == pytest.approx(0.3, abs=2e-18)
    assert stats._bisect(lambda x: x >= 7.5, 5.0, 10.0) == pytest.approx(7.5, abs=1e-16)
    assert stats._bisect(lambda x: True, 2.0, 3.0) == pytest.approx(2.0, abs=1e-17)


def test_hill_tail_index_edges():
    """Hill's estimate uses the positive finite values only and is scale-free: adding zeros, negatives and ±inf
    changes nothing, multiplying by 10⁻³ changes nothing; fewer than 10 usable values → NaN, exactly 10 → a number;
    a tail of equal values (mean log-spacing 0) → α̂ = inf."""
    x = np.random.default_rng(8).pareto(1.5, size=400) + 1
    base = stats.hill_tail_index(x)
    assert stats.hill_tail_index(np.concatenate([x, np.zeros(1000), -x, [np.inf, -np.inf, np.nan]])) == base
    a, se, k = stats.hill_tail_index(1e-3 * x)
    assert a == pytest.approx(base[0], rel=1e-9) and se == pytest.approx(base[1], rel=1e-9) and k == base[2]
    assert math.isnan(stats.hill_tail_index(x[:9])[0]) and math.isfinite(stats.hill_tail_index(x[:10])[0])
    assert math.isnan(stats.hill_tail_index(np.concatenate([x[:5], np.zeros(100)]))[0])
    assert stats.hill_tail_index(np.full(50, 2.0))[0] == math.inf


def test_bh_and_holm_small_families():
    """A single p-value is its own adjusted value; Holm caps at 1 ((m − j + 1) p can exceed 1); BH's q-values
    are ≤ 1 by construction; an empty or all-NaN family gives NaN."""
    np.testing.assert_array_equal(stats.bh_qvalues([0.03]), [0.03])
    np.testing.assert_array_equal(stats.holm_adjust([0.03]), [0.03])
    np.testing.assert_allclose(stats.holm_adjust([0.6, 0.7]), [1.0, 1.0])
    np.testing.assert_allclose(stats.bh_qvalues([0.6, 0.7]), [0.7, 0.7])
    assert np.isnan(stats.bh_qvalues([np.nan])).all() and stats.holm_adjust([]).size == 0


def test_bootstrap_snr_medians_equal_a_direct_resampling():
    """Point value: median over each group's coordinates of |mean_j| / sd_j (ddof 1); s.e.: the s.d. (ddof 1) over
    the default 200 resamples of the same median recomputed on the resampled rows (the same multinomial counts,
    drawn from an identically seeded generator) — equal to 1e-9 relative. Rows far from 0 (the centring shows)."""
    rng = np.random.default_rng(4)
    n = 30
    G = 3.0 + rng.normal(size=(n, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0, 0.2])
    groups = {"a": slice(0, 3), "b": slice(3, 6)}
    got = stats.bootstrap_snr_medians(G, groups, np.random.default_rng(1))
    counts = np.random.default_rng(1).multinomial(n, np.full(n, 1.0 / n), size=200)
    for name, sl in groups.items():
        point = float(np.median((np.abs(G.mean(0)) / G.std(0, ddof=1))[sl]))
        boot = []
        for c in counts:
            Gb = G[np.repeat(np.arange(n), c)]
            boot.append(np.median((np.abs(Gb.mean(0)) / Gb.std(0, ddof=1))[sl]))
        assert got[name][0] == pytest.approx(point, rel=1e-12)
        assert got[name][1] == pytest.approx(float(np.std(boot, ddof=1)), rel=1e-9)


# -- the ‖b‖ interval -----------------------------------------------------------------------------------------


def _one_coordinate(shift: float, n: int = 50, seed: int = 6) -> tuple[np.ndarray, np.ndarray, float]:
    """n rows of one coordinate with mean 3 + shift·s.e. against the reference 3 (G and ref both far from 0)."""
    g = np.random.default_rng(seed).normal(size=(n, 1))
    g = (g - g.mean()) / g.std(ddof=1)  # sample s.d. exactly 1: the s.e. of the mean is 1/√n
    return 3.0 + g + shift / math.sqrt(n), np.array([3.0]), 1.0 / n


@pytest.mark.parametrize("shift, level", [(6.0, 0.95), (6.0, 0.8), (0.3, 0.95), (0.3, 0.8)])
def test_bias_norm_interval_matches_the_noncentral_chi2_inversion(shift, level):
    """One coordinate: ‖d‖² = λ (z + β/√λ)² with λ = V̂ = s²/n, a scaled noncentral χ²₁(β²/λ) (scipy.stats.ncx2).
    The interval's ends solve F_β(‖d‖²) = 1 − a (lower; 0 when F_0(‖d‖²) ≤ 1 − a) and F_β(max(‖d‖², median)) = a
    (upper), a = (1 − level)/2, where the library estimates F from N_CI_DRAWS = 4000 Gaussian draws. At its ends the
    exact F must be within 3.29 Monte Carlo s.e. (√(a(1 − a)/4000)) of its target. Also exact: plug-in ‖d‖ and
    ‖d‖² − λ. A 6-s.e. bias has a lower end > 0; a 0.3-s.e. one has the lower end 0."""
    G, ref, lam = _one_coordinate(shift)
    res = stats.bias_norm_interval(G, ref, EPS, np.random.default_rng(0), level=level)
    d2 = (shift / math.sqrt(G.shape[0])) ** 2
    assert res.plugin == pytest.approx(math.sqrt(d2), rel=1e-9)
    assert res.sq_unbiased == pytest.approx(d2 - lam, rel=1e-9, abs=1e-15)
    a = (1 - level) / 2
    tol = Z * math.sqrt(a * (1 - a) / stats.N_CI_DRAWS)

    def F(beta: float, o: float) -> float:
        return float(sps.ncx2.cdf(o / lam, 1, beta**2 / lam))

    if shift > 3:
        assert res.ci_low > 0 and abs(F(res.ci_low, d2) - (1 - a)) <= tol
    else:
        assert res.ci_low == 0.0 and F(0.0, d2) <= 1 - a + tol
    o_hi = max(d2, lam * float(sps.chi2.median(1)))
    assert abs(F(res.ci_high, o_hi) - a) <= tol


def test_bias_norm_interval_adds_a_deterministic_offset():
    """A second coordinate without variance, 0.5 off its reference, enters as a fixed offset: with the same
    generator the ends are √(end₁² + 0.25) of the one-coordinate interval (exactly: same draws), the plug-in
    √(‖d₁‖² + 0.25) and the unbiased ‖b‖² estimate grows by 0.25."""
    G1, ref1, _ = _one_coordinate(6.0)
    one = stats.bias_norm_interval(G1, ref1, EPS, np.random.default_rng(0))
    G2 = np.column_stack([G1[:, 0], np.full(G1.shape[0], 2.5)])
    two = stats.bias_norm_interval(G2, np.array([3.0, 2.0]), EPS, np.random.default_rng(0))
    assert two.ci_low == pytest.approx(math.sqrt(one.ci_low**2 + 0.25), rel=1e-12)
    assert two.ci_high == pytest.approx(math.sqrt(one.ci_high**2 + 0.25), rel=1e-12)
    assert two.plugin == pytest.approx(math.sqrt(one.plugin**2 + 0.25), rel=1e-12)
    assert two.sq_unbiased == pytest.approx(one.sq_unbiased + 0.25, rel=1e-12)


def _support_split(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors inside and outside the row span of G's centred replicates."""
    _, sv, Vt = np.linalg.svd(G - G.mean(0))
    r = int((sv > 1e-10 * sv[0]).sum())
    return Vt[0], Vt[r]


@pytest.mark.parametrize("n, rank, saturated", [(4, 10, True), (30, 3, False), (5, 3, False)])
def test_bias_norm_interval_off_support_offset_only_when_the_support_is_known(n, rank, saturated):
    """n replicates in P = 10 coordinates, and d = ḡ − g* of norm 2 either inside the replicates' span or outside
    it. Saturated (n = 4: the n − 1 = 3 centred replicates are independent, so a direction without sample variance
    may just be unsampled): all of d is noise, and the interval is the same wherever d points (the law of ‖d‖²
    depends on d only through ‖d‖², same draws). Negative control, not saturated (n = 30, and n = 5 — one replicate
    more than a saturated sample needs — in a rank-3 subspace): the outside part is a deterministic offset, so the
    lower end is at least its norm 2, and the interval differs from the inside one."""
    rng = np.random.default_rng(31)
    G = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, 10))
    inside, outside = _support_split(G)
    at = {where: stats.bias_norm_interval(G, G.mean(0) - 2.0 * u, EPS, np.random.default_rng(0))
          for where, u in (("inside", inside), ("outside", outside))}
    assert at["outside"].plugin == pytest.approx(2.0, rel=1e-12) == at["inside"].plugin
    ends = {w: (b.ci_low, b.ci_high) for w, b in at.items()}
    if saturated:
        assert ends["outside"] == pytest.approx(ends["inside"], rel=1e-9)
    else:
        assert at["outside"].ci_low >= 2.0 * (1 - 1e-12) and at["inside"].ci_low < 2.0
        assert ends["outside"] != pytest.approx(ends["inside"], rel=1e-3)


@pytest.mark.parametrize("scale", [1.0, 1e-3])
@pytest.mark.parametrize("ulps, offset", [(0.99, False), (1.01, True)])
def test_bias_norm_interval_rounding_tolerance_is_64_ulps(ulps, offset, scale):
    """A coordinate without variance off its reference by δ = ulps × 64 eps (max|G| + max|ref|) √P — the
    documented rounding tolerance, written here as its literal 64 ulps — is rounding below it (the interval is the
    one with δ = 0, exactly: same draws) and a deterministic offset above it. P = 2: one coordinate with 50
    replicates 0.3 s.e. off its reference (so the δ = 0 interval's lower end is 0 and an offset of δ shows as a
    lower end of exactly δ), one constant at 2.5; the same at scale 10⁻³ (the tolerance follows max|G| + max|ref|
    below 1 too: no floor of 1 in it)."""
    G1, _, _ = _one_coordinate(0.3)
    G = scale * np.column_stack([G1[:, 0], np.full(G1.shape[0], 2.5)])
    base = stats.bias_norm_interval(G, scale * np.array([3.0, 2.5]), EPS, np.random.default_rng(0))
    assert base.ci_low == 0.0
    delta = ulps * 64 * EPS * (float(np.abs(G).max()) + scale * 3.0) * math.sqrt(2)
    ref2 = scale * 2.5 - delta
    assert abs((scale * 2.5 - ref2) - delta) < 0.003 * delta  # δ survives the subtraction's rounding (ulp(2.5) ≈ 0.3 % of δ)
    res = stats.bias_norm_interval(G, np.array([scale * 3.0, ref2]), EPS, np.random.default_rng(0))
    if offset:
        assert res.ci_low == pytest.approx(scale * 2.5 - ref2, rel=1e-9, abs=0)
        assert res.ci_high == pytest.approx(math.sqrt(base.ci_high**2 + (scale * 2.5 - ref2) ** 2), rel=1e-12, abs=0)
    else:
        assert (res.ci_low, res.ci_high) == (base.ci_low, base.ci_high)


def test_bias_norm_interval_degenerate_samples():
    """n = 2: a full answer; zero variance: the point ‖d‖ with ‖d‖² as the estimate."""
    two = stats.bias_norm_interval(np.array([[1.0], [2.0]]), np.zeros(1), EPS, np.random.default_rng(0))
    assert all(map(math.isfinite, (two.sq_unbiased, two.ci_low, two.ci_high)))
    flat = stats.bias_norm_interval(np.full((5, 2), 2.0), np.array([1.0, 0.0]), EPS, np.random.default_rng(0))
    assert (flat.plugin, flat.ci_low, flat.ci_high) == pytest.approx((math.sqrt(5),) * 3, rel=1e-12)
    assert flat.sq_unbiased == pytest.approx(5.0, rel=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_bias_norm_interval_of_one_replicate_is_the_plugin_only():
    """n = 1: the documented answer is the plug-in ‖d‖ with NaN for the rest."""
    one = stats.bias_norm_interval(np.array([[1.0, 2.0]]), np.zeros(2), EPS, np.random.default_rng(0))
    assert one.plugin == pytest.approx(math.sqrt(5)) and all(map(math.isnan, (one.sq_unbiased, one.ci_low, one.ci_high)))


# -- the max-t branch with an estimated reference; the bootstrap's helpers -----------------------------------


def test_max_t_branch_with_an_estimated_reference_is_calibrated():
    """Max-t branch (R = 30 < 10 × rank) against a reference that is itself the mean of 60 replicates with a
    different covariance (ReferenceNoise(cov, 60)): 300 null data sets, KS uniformity not rejected and false
    alarms at α = 5 % within the level-ALPHA binomial bound. Negative control: the same data with the reference
    taken as exact — the two-sample noise ignored — is anti-conservative beyond that bound."""
    rng = np.random.default_rng(12)
    A, B = rng.normal(size=(20, 20)) / 4, rng.normal(size=(20, 20))
    p, p_exact = [], []
    for _ in range(300):
        G, H = rng.normal(size=(30, 20)) @ A, rng.normal(size=(60, 20)) @ B
        res = bias_test(G, H.mean(0), EPS, rng, stats.ReferenceNoise(cov=np.cov(H.T), n=60), n_boot=499)
        assert res.method.startswith("max-t") and "two-sample" in res.method, res.method
        p.append(res.pvalue)
        p_exact.append(bias_test(G, H.mean(0), EPS, rng, n_boot=499).pvalue)
    p, p_exact = np.array(p), np.array(p_exact)
    bound = 0.05 + Z * math.sqrt(0.05 * 0.95 / 300)
    assert sps.kstest(p, "uniform").pvalue > ALPHA and np.mean(p <= 0.05) <= bound
    assert np.mean(p_exact <= 0.05) > bound


def test_wishart_draws_have_mean_v_on_every_diagonal_entry():
    """E[V*] = V for V* = A W Aᵀ/df, W ~ Wishart(df, I): with A = I₄ and df = 8 each diagonal mean is 1 (Bartlett:
    E T_ii² + Σ_{j<i} E T_ij² = (df − i) + i); 20000 draws, each within 4 s.e. (sd/√20000, Bonferroni-safe at
    ALPHA for 4 entries). A χ² on df + i degrees of freedom would put entry i at 1 + 2i/8."""
    draws = stats._wishart_draws(np.eye(4), 8.0, 20_000, np.random.default_rng(0))
    diag = np.diagonal(draws, axis1=1, axis2=2)
    se = diag.std(0, ddof=1) / math.sqrt(diag.shape[0])
    assert (np.abs(diag.mean(0) - 1.0) <= 4 * se).all(), (diag.mean(0), se)


def test_sym_root_of_a_singular_matrix_is_finite():
    """A rank-one V = v vᵀ has eigenvalues that rounding makes slightly negative (about −5e-16 here): the root clips
    them to 0, so A is finite and A Aᵀ = V to rounding."""
    v = np.array([1.0, 2.0, 3.0])
    V = np.outer(v, v)
    assert np.linalg.eigvalsh(V).min() < 0  # the case being tested
    root = stats._sym_root(V)
    assert np.isfinite(root).all()
    np.testing.assert_allclose(root @ root.T, V, atol=1e-13 * 14)


def test_bias_norm_interval_is_scale_equivariant_with_a_95_percent_default():
    """Multiplying the replicates and the reference by c multiplies every end by c (same generator: same draws;
    1e-9 relative, the bisection's resolution), for c = 10⁻³ and 10³ (large variances included); the default
    level is 0.95."""
    G, ref, _ = _one_coordinate(6.0)
    base = stats.bias_norm_interval(G, ref, EPS, np.random.default_rng(0))
    assert base == stats.bias_norm_interval(G, ref, EPS, np.random.default_rng(0), level=0.95)
    for c in (1e-3, 1e3):
        scaled = stats.bias_norm_interval(c * G, c * ref, EPS, np.random.default_rng(0))
        for got, want in zip((scaled.plugin, scaled.ci_low, scaled.ci_high), (base.plugin, base.ci_low, base.ci_high)):
            assert got == pytest.approx(c * want, rel=1e-9)


def test_bootstrap_snr_se_with_two_resamples():
    """Two resamples give a finite s.e. (the s.d. of two medians); one gives NaN."""
    G = 3.0 + np.random.default_rng(1).normal(size=(20, 2))
    assert math.isfinite(stats.bootstrap_snr_medians(G, {"all": slice(None)}, np.random.default_rng(0), 2)["all"][1])
    assert math.isnan(stats.bootstrap_snr_medians(G, {"all": slice(None)}, np.random.default_rng(0), 1)["all"][1])


def test_max_t_with_an_estimated_reference_ignores_a_dead_coordinate():
    """A coordinate with no variance in the replicates nor in the reference, and no difference, changes nothing:
    the max-t p-value with it equals the p-value without it (same generator, same draws)."""
    rng = np.random.default_rng(3)
    G, H = rng.normal(size=(20, 30)), rng.normal(size=(40, 30))
    noise = stats.ReferenceNoise(cov=np.cov(H.T), n=40)
    without = bias_test(G, H.mean(0), EPS, np.random.default_rng(0), noise, n_boot=199)
    G1, ref1 = np.column_stack([G, np.ones(20)]), np.append(H.mean(0), 1.0)
    cov1 = np.zeros((31, 31))
    cov1[:30, :30] = noise.cov
    with_dead = bias_test(G1, ref1, EPS, np.random.default_rng(0), stats.ReferenceNoise(cov=cov1, n=40), n_boot=199)
    assert without.method.startswith("max-t") and with_dead.method.startswith("max-t")
    assert with_dead.pvalue == without.pvalue


# -- an estimated reference with per-coordinate variances only, R below the estimator's covariance rank -------------


def _rotated_root(setup: np.random.Generator, P: int, decay: float, scale: float) -> np.ndarray:
    """A root A of a covariance A Aᵀ with eigenvalues ∝ k^(−decay) summing to scale·P, in a random orthonormal basis."""
    Q, _ = np.linalg.qr(setup.standard_normal((P, P)))
    lam = (1.0 + np.arange(P)) ** (-decay)
    return Q * np.sqrt(scale * P * lam / lam.sum())


def _diagonal_reference_case(rep: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, stats.ReferenceNoise]:
    """R = 20 rows of full-rank Gaussian noise in P = 120 coordinates; the reference is the mean of 5000 rows of a
    3000× larger, differently shaped covariance, passed as a known diagonal variance (what an estimated reference
    keeps above its covariance cap). ``shift`` adds a true bias of that many reference s.e. to 5 coordinates."""
    P, R, n_ref = 120, 20, 5000
    setup = np.random.default_rng(7)

    A, B = _rotated_root(setup, P, 0.5, 1.0), _rotated_root(setup, P, 1.0, 3000.0)
    mu = setup.standard_normal(P)
    rng = np.random.default_rng([11, rep])
    G = mu + rng.standard_normal((R, P)) @ A.T
    Y = rng.standard_normal((n_ref, P)) @ B.T
    var = Y.var(0, ddof=1) / n_ref
    ref = mu + Y.mean(0)
    ref[:5] -= shift * np.sqrt(var[:5] + (A[:5] ** 2).sum(1) / R)
    return G, ref, stats.ReferenceNoise(var=var, estimated_diagonal=True)


def test_a_diagonal_estimated_reference_with_few_replicates_is_calibrated():
    """The Hotelling-F branch used to take this regime (the Welch ν counts only the estimator's plug-in share, and
    the estimator's variance outside the span of its n − 1 centred replicates was taken as 0): 8.5 % / 13 % false
    alarms at α = 1 % / 5 % over these 200 cases. Now max-t: rejections within the binomial 0.1 % upper bounds."""
    p = np.empty(200)
    for rep in range(200):
        G, ref, noise = _diagonal_reference_case(rep)
        res = stats.bias_test(G, ref, EPS, np.random.default_rng([11, rep, 0]), noise)
        assert res.method.startswith("max-t"), res.method
        p[rep] = res.pvalue
    for alpha in (0.01, 0.05):
        assert (p < alpha).sum() <= sps.binom.ppf(0.999, 200, alpha), (alpha, (p < alpha).mean())


def test_the_diagonal_reference_branch_still_detects_a_bias():
    """Negative control: a bias of 6 s.e. in 5 of the 120 coordinates is found in most cases (same data law)."""
    hits = 0
    for rep in range(40):
        G, ref, noise = _diagonal_reference_case(rep, shift=6.0)
        res = stats.bias_test(G, ref, EPS, np.random.default_rng([11, rep, 0]), noise)
        assert res.method.startswith("max-t"), res.method
        hits += res.pvalue < 0.01
    assert hits >= 30, hits


# -- a diagonal-only estimated reference with R above the rank: Hotelling is reachable, its whitening is not known ------


def _correlated_diagonal_reference_case(rep: int, ref_scale: float, shift: float = 0.0,
                                        estimated_diagonal: bool = True) -> tuple[np.ndarray, np.ndarray,
                                                                                   stats.ReferenceNoise]:
    """R = 200 rows of full-rank Gaussian noise in P = 20 coordinates (r = 20 < R − 1: the replicates are not
    saturated and the Welch ν is large, so only the reference's noise model can keep the test off Hotelling). The
    reference is the mean of 5000 rows of a strongly correlated covariance (eigenvalues ∝ k⁻², random rotation:
    tr R² = 114 for its correlation matrix R against r = 20) of total variance ``ref_scale`` × P, passed by its
    diagonal only — what an estimated reference keeps above MAX_COV_DIM. ``shift`` adds a true bias of that many
    s.e. to 3 coordinates."""
    P, R, n_ref = 20, 200, 5000
    setup = np.random.default_rng(7)

    A, B = _rotated_root(setup, P, 0.5, 1.0), _rotated_root(setup, P, 2.0, ref_scale)
    mu = setup.standard_normal(P)
    rng = np.random.default_rng([11, rep])
    G = mu + rng.standard_normal((R, P)) @ A.T
    Y = rng.standard_normal((n_ref, P)) @ B.T
    var = Y.var(0, ddof=1) / n_ref
    ref = mu + Y.mean(0)
    ref[:3] -= shift * np.sqrt(var[:3] + (A[:3] ** 2).sum(1) / R)
    return G, ref, stats.ReferenceNoise(var=var, estimated_diagonal=estimated_diagonal)


@pytest.mark.parametrize("ref_scale", [3000.0, 30.0])  # reference variance 120× / 1.2× the estimator's (per mean)
def test_a_diagonal_only_estimated_reference_never_takes_hotelling(ref_scale):
    """Wrong formula caught: whitening a correlated reference by its diagonal (the Hotelling branch with the
    reference's variance taken as a known diagonal), T² ≈ Σ_k λ_k χ²₁ with variance 2 tr R² instead of 2r. Over these
    200 cases it gave 7.0 % / 13.0 % (ref_scale 3000) and 5.0 % / 10.5 % (30) false alarms at α = 1 % / 5 % — the
    control below recomputes it and checks it is resolved above the binomial 0.1 % upper bound at α = 1 %. Marked
    ``estimated_diagonal``, the test is max-t: rejections within that bound at α = 1 % and 5 % (measured 0.0 % /
    3.5 % and 1.0 % / 4.0 %; the max-t bootstrap draws the reference's noise independent across coordinates,
    conservative by Šidák's inequality when the reference dominates, see stats.bias_test)."""
    cases = 200
    p, p_old = np.empty(cases), np.empty(cases)
    for rep in range(cases):
        G, ref, noise = _correlated_diagonal_reference_case(rep, ref_scale)
        res = stats.bias_test(G, ref, EPS, np.random.default_rng([11, rep, 0]), noise)
        assert res.method.startswith("max-t") and "diagonal-only estimated ref" in res.method, res.method
        p[rep] = res.pvalue
        G, ref, bound = _correlated_diagonal_reference_case(rep, ref_scale, estimated_diagonal=False)
        old = stats.bias_test(G, ref, EPS, np.random.default_rng([11, rep, 0]), bound)
        assert old.method.startswith("hotelling"), old.method  # a deterministic bound keeps Hotelling
        p_old[rep] = old.pvalue
    for alpha in (0.01, 0.05):
        assert (p < alpha).sum() <= sps.binom.ppf(1 - ALPHA, cases, alpha), (alpha, (p < alpha).mean())
    assert (p_old < 0.01).sum() > sps.binom.ppf(1 - ALPHA, cases, 0.01), (p_old < 0.01).mean()


def test_the_diagonal_only_estimated_reference_still_detects_a_bias():
    """Negative control of the test above: a bias of 3 s.e. in 3 of the 20 coordinates (reference-dominated case)
    is found at α = 1 % in at least 20 of 40 cases (measured 29 of these 40 and 71 % over 200; 20/40 is 2.9
    binomial s.e. below 71 %)."""
    hits = 0
    for rep in range(40):
        G, ref, noise = _correlated_diagonal_reference_case(rep, 3000.0, shift=3.0)
        res = stats.bias_test(G, ref, EPS, np.random.default_rng([11, rep, 0]), noise)
        assert res.method.startswith("max-t"), res.method
        hits += res.pvalue < 0.01
    assert hits >= 20, hits


def test_a_negligible_diagonal_estimated_reference_keeps_hotelling():
    """An estimated reference whose variance is below 1e-6 of the estimator's in every coordinate is left out of
    Cov(d) (diff_noise), and so is its off-diagonal part (|C_ij| ≤ √(C_ii C_jj)): the reference is as good as exact
    and Hotelling stays valid — the diagonal-only rule does not cost this case its power."""
    rng = np.random.default_rng(5)
    G = rng.standard_normal((200, 6))
    noise = stats.ReferenceNoise(var=np.full(6, 1e-12), estimated_diagonal=True)
    res = stats.bias_test(G, np.zeros(6), EPS, np.random.default_rng(0), noise, n_boot=199)
    assert res.method.startswith("hotelling"), res.method
    assert not stats.sample_noise(G, noise, EPS).diagonal_only


@pytest.mark.parametrize("ref_scale", [3000.0, 30.0])
def test_the_bias_norm_interval_covers_zero_with_a_diagonal_only_estimated_reference(ref_scale):
    """At b = 0 the 95 % interval's lower end must exceed 0 in at most 2.5 % of cases. With the correlated reference
    whitened as independent coordinates (its diagonal taken as V's) it did in 9.5 % (ref_scale 3000) and 8.5 % (30)
    of these 200 cases; the reference's share taken as one component carrying its whole trace (the heaviest upper
    tail, stats._worst_case_reference) gives 1.0 % in both. Checked: within the binomial 0.1 % upper bound at 2.5 %;
    control: the same data with the reference passed as a known per-coordinate bound (the old eigenvalues) exceeds it,
    so the test resolves the defect it guards."""
    cases = 200
    low, low_old = np.empty(cases, bool), np.empty(cases, bool)
    for rep in range(cases):
        G, ref, noise = _correlated_diagonal_reference_case(rep, ref_scale)
        low[rep] = stats.bias_norm_interval(G, ref, EPS, np.random.default_rng([11, rep, 1]), noise).ci_low > 0
        G, ref, bound = _correlated_diagonal_reference_case(rep, ref_scale, estimated_diagonal=False)
        low_old[rep] = stats.bias_norm_interval(G, ref, EPS, np.random.default_rng([11, rep, 1]), bound).ci_low > 0
    limit = sps.binom.ppf(1 - ALPHA, cases, 0.025)
    assert low.sum() <= limit, low.mean()
    assert low_old.sum() > limit, low_old.mean()


def test_the_conservative_bias_norm_interval_still_excludes_zero_for_a_large_bias():
    """Negative control of the test above: a bias of 20 s.e. in 3 of the 20 coordinates (reference-dominated case)
    gives a lower end above 0 in at least 30 of 40 cases (measured: 40 of 40, and 40 of 40 at 10 s.e.)."""
    hits = 0
    for rep in range(40):
        G, ref, noise = _correlated_diagonal_reference_case(rep, 3000.0, shift=20.0)
        hits += stats.bias_norm_interval(G, ref, EPS, np.random.default_rng([11, rep, 1]), noise).ci_low > 0
    assert hits >= 30, hits


def test_welch_df_in_one_dimension_is_welch_satterthwaite():
    """With one coordinate, Nel & van der Merwe's ν = (r + r²) / Σ_i [tr(A_i²) + tr(A_i)²] / df_i reduces to the
    Welch–Satterthwaite ν = (a₁ + a₂)² / (a₁²/(n₁ − 1) + a₂²/(n₂ − 1)), a₁ = s₁²/n₁ (the replicates), a₂ = v/n₂ (an
    estimated reference of n₂ replicates of variance v) — the textbook formula written out here. A known-variance
    part (df = ∞) adds nothing to the denominator. Negative control: the sample part alone gives n₁ − 1, not ν."""
    rng = np.random.default_rng(0)
    n1, n2, v = 12, 30, 2.5
    X = rng.standard_normal((n1, 1)) * 1.7
    Xc = X - X.mean(0)
    a1, a2 = float(Xc[:, 0].var(ddof=1)) / n1, v / n2
    welch = (a1 + a2) ** 2 / (a1**2 / (n1 - 1) + a2**2 / (n2 - 1))
    dn = stats.diff_noise(Xc, stats.ReferenceNoise(cov=np.array([[v]]), n=n2), EPS, float(np.abs(X).max()))
    assert dn.welch_df() == pytest.approx(welch, rel=1e-12) and abs(welch - (n1 - 1)) > 1
    known = stats.diff_noise(Xc, stats.ReferenceNoise(cov=np.array([[v]]), n=n2, var=np.array([0.5])), EPS,
                             float(np.abs(X).max()))
    assert len(known.parts) == 3 and known.parts[2][1] == math.inf
    b1, b2, b3 = a1, a2, 0.5  # the known part dilutes the shares, adds no d.f. term
    assert known.welch_df() == pytest.approx((b1 + b2 + b3) ** 2 / (b1**2 / (n1 - 1) + b2**2 / (n2 - 1)), rel=1e-12)
    alone = stats.diff_noise(Xc, stats.ReferenceNoise(), EPS, float(np.abs(X).max()))
    assert alone.welch_df() == pytest.approx(n1 - 1, rel=1e-12)


@pytest.mark.parametrize("factor, kept", [(0.99, False), (1.01, True)])
def test_a_known_reference_variance_counts_from_1e6_of_the_monte_carlo_variance(factor, kept):
    """A known (quadrature/enumeration) reference variance enters Cov(ḡ − g*) as its own part only where it exceeds
    10⁻⁶ of the same coordinate's Monte Carlo variance Σ x²/(n(n − 1)) (literal edge, per coordinate: two
    coordinates whose variances differ by 100×, the reference variance set at 0.99 and 1.01 of each one's edge)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2)) * np.array([1.0, 10.0])
    Xc = X - X.mean(0)
    mc_var = (Xc * Xc).sum(0) / (20 * 19)
    for j in (0, 1):
        var = np.zeros(2)
        var[j] = factor * 1e-6 * mc_var[j]
        dn = stats.diff_noise(Xc, stats.ReferenceNoise(var=var), EPS, float(np.abs(X).max()))
        assert (len(dn.parts) == 2) is kept, j


# -- the max-t bootstrap's p-value at its two ends ---------------------------------------------------------------------


def test_max_t_pvalue_is_one_when_the_mean_is_the_reference():
    """n = 8 replicates in 30 coordinates (saturated: the max-t branch) whose mean is the reference to the last bit:
    the observed max-t is 0, every one of the B draws reaches it, p = (1 + B)/(B + 1) = 1 exactly. Negative control:
    a bootstrap that drew one draw fewer (B − 1 counted over B + 1) gives B/(B + 1) = 0.995 at B = 199."""
    rng = np.random.default_rng(5)
    G = rng.normal(size=(8, 30))
    ref = stats.accurate_mean(G)
    res = bias_test(G, ref, EPS, rng, n_boot=199)
    assert res.method.startswith("max-t bootstrap(B=199"), res.method
    assert res.pvalue == 1.0 and 199 / 200 != 1.0


@pytest.mark.parametrize("n", [12, 25])
def test_max_t_pvalue_beyond_every_draw_is_bonferroni_on_t_tails(n):
    """A mean 30 standard errors off in one of 40 coordinates (n < 40: the max-t branch): no bootstrap draw reaches
    it, so p = min(1/(B + 1), m · 2 · P(t_{n−1} > t)) with t = |ḡ_j − g*_j| / (s_j / √n), s_j on n − 1 df —
    computed here from numpy's ddof = 1 standard deviation, to 1e-9 relative. Negative control: the standard error
    on n − 2 df, s_j √((n − 1)/(n − 2)), moves that p-value by far more than 1e-9 (a factor ≥ 1.2 measured below)."""
    rng = np.random.default_rng(n)
    m = 40
    G = rng.normal(size=(n, m))
    se = G.std(0, ddof=1) / math.sqrt(n)
    ref = G.mean(0)
    ref[3] -= 30 * se[3]
    res = bias_test(G, ref, EPS, rng, n_boot=199)
    assert res.method.startswith(f"max-t bootstrap(B=199, m={m}"), res.method
    t = np.abs(G.mean(0) - ref) / se
    expected = min(1 / 200, m * 2 * float(sps.t.sf(t.max(), n - 1)))
    assert expected < 1 / 200  # the refinement is what is tested
    assert res.pvalue == pytest.approx(expected, rel=1e-9, abs=0)
    wrong = m * 2 * float(sps.t.sf(t.max() * math.sqrt((n - 1) / (n - 2)), n - 1))
    assert abs(wrong / expected - 1) > 0.2


# -- the Hotelling branch's bootstrap: the reference's known variance per coordinate, and the draw count ------------


def test_p_max_with_an_estimated_reference_and_one_known_variance_is_calibrated():
    """The Hotelling branch's max-t draws, for an estimated reference (Wishart-redrawn covariance) plus a known
    variance in coordinate 1 only (100× the estimator's): each coordinate's draws are studentised by its own known
    variance. 2000 Gaussian null data sets (n = 100, n_ref = 400, r = 2, B = 199): P(p_max ≤ 0.05) within its
    level-ALPHA band around 5 % (± 1.6 %; measured 5.1 %), and so is P(p_T2 ≤ 0.05). Negative control: the known
    variance of coordinate 1 added to every coordinate (a sum over all coordinates, or over the part's rows) makes
    coordinate 2's draws ≈ 0, so p_max is the tail of one coordinate's draw against the larger of two observed —
    9.6 % measured, 4 s.e. beyond the band."""
    rng = np.random.default_rng(31)
    n, n_ref, v1, sets = 100, 400, 1.0, 2000
    p_t, p_max = np.empty(sets), np.empty(sets)
    for i in range(sets):
        G, H = rng.normal(size=(n, 2)), rng.normal(size=(n_ref, 2))
        ref = H.mean(0)
        ref[0] += rng.normal() * math.sqrt(v1)
        noise = stats.ReferenceNoise(cov=np.cov(H.T), n=n_ref, var=np.array([v1, 0.0]))
        res = bias_test(G, ref, EPS, rng, noise=noise, n_boot=199)
        assert res.method.startswith("hotelling+max-t(rank=2"), res.method
        p_t[i], p_max[i] = _hotelling_ps(res)
    assert _within(float((p_max <= 0.05).mean()), 0.05, sets), (p_max <= 0.05).mean()
    assert _within(float((p_t <= 0.05).mean()), 0.05, sets), (p_t <= 0.05).mean()
    assert not _within(0.096, 0.05, sets)


def test_hotelling_bootstrap_in_two_blocks_draws_exactly_b():
    """r = 65 coordinates (n = 700, ν = 699 ≥ 10 r): the [n, r²] outer products are used and a block of draws is
    bounded by 64 MiB / ((r² + r) · 8 B) = 488 < B = 499, so the draws come in two blocks. The p-value is
    (1 + count)/(B + 1) with exactly B = 499 draws: 500 p is an integer (a null data set, p mid-range, so no F
    refinement). Negative controls: blocks that overshoot the remaining draws give 976 draws (500 p = 500 k/977 is
    not an integer here); a block size that is not an integer cannot draw at all."""
    rng = np.random.default_rng(65)
    G = rng.normal(size=(700, 65))
    res = bias_test(G, np.zeros(65), EPS, rng)
    assert res.method.startswith("hotelling+max-t(rank=65, df=699, bootstrap B=499"), res.method
    assert 0.01 < res.pvalue < 1
    assert res.pvalue * 500 == pytest.approx(round(res.pvalue * 500), abs=1e-9)
    assert (1 << 24) // ((65 * 65 + 65) * 8) == 488 and 500 * 15 / 977 != round(500 * 15 / 977)


@pytest.mark.parametrize("n", [1900, 2100])
def test_hotelling_bootstrap_agrees_with_f_on_either_side_of_the_outer_product_cap(n):
    """r = 65 Gaussian coordinates with standard deviations 0.5 … 3, a null data set: n r² = 8.0·10⁶ (n = 1900) uses the [n, r²] outer products,
    8.9·10⁶ (n = 2100) is above their 2²³ cap and takes the batched [r, n] @ [n, r] products. For Gaussian rows at
    ν = n − 1 ≥ 29 r the bootstrap law of T² is close to Hotelling's F, so the bootstrap p_T2 is within 4 Monte
    Carlo standard errors √(p(1 − p)/B) (B = 499; level 6·10⁻⁵ for the Monte Carlo part) plus 0.005 of the textbook
    F p-value — on both paths. Negative control: a wrong Σ c_i y_i y_iᵀ on the batched path (a quotient for the
    product, a wrong axis) or the outer products where there are none does not reach this (p_T2 at 1/500 or 1, or
    an error; with unit variances a quotient c_i / y_ij would still put Σ c_i ≈ n on the diagonal, hence the scales)."""
    rng = np.random.default_rng(n)
    G = rng.normal(size=(n, 65)) * np.linspace(0.5, 3.0, 65)
    res = bias_test(G, np.zeros(65), EPS, rng)
    assert res.method.startswith("hotelling+max-t(rank=65"), res.method
    p_t, _ = _hotelling_ps(res)
    p_f = _hotelling_f_pvalue(G, np.zeros(65))
    assert abs(p_t - p_f) <= 4 * math.sqrt(p_f * (1 - p_f) / 499) + 0.005, (p_t, p_f)


@pytest.mark.parametrize("copies, branch", [(10, "hotelling+max-t(rank=2"), (4, "max-t bootstrap(B=1999")])
def test_bootstrap_ties_count_as_reaching_the_observed(copies, branch):
    """Rows (±1, ±1), each of the four ``copies`` times (n = 40: the Hotelling branch; n = 16, ν = 15 < 10 r: max-t),
    and the reference their exact mean: the observed statistics are 0, and every draw — including the resamples
    whose counts balance in both coordinates, so that T²* = M* = 0 exactly — reaches them: p = 1 (and p_T2 = p_max = 1).
    Negative control: counting only draws strictly beyond the observed leaves out the balanced resamples (p < 1)."""
    G = np.array([[a, b] for a in (-1.0, 1.0) for b in (-1.0, 1.0)] * copies)
    res = bias_test(G, np.zeros(2), EPS, np.random.default_rng(0))
    assert res.method.startswith(branch), res.method
    assert res.pvalue == 1.0
    if branch.startswith("hotelling"):
        assert _hotelling_ps(res) == (1.0, 1.0)


@pytest.mark.parametrize("n, branch", [(30, "hotelling+max-t(rank=2"), (20, "max-t bootstrap(B=1999")])
def test_bootstrap_zero_over_zero_counts_as_exceeding(n, branch):
    """Coordinate 1 is zero in n − 2 rows and ±1 in the other two; coordinate 2 is Gaussian with the reference
    10 s.e. off (n = 30: the Hotelling branch; n = 20, ν = 19 < 10 r: max-t). A resample that misses both ±1 rows
    (probability (1 − 2/n)ⁿ: 12.6 %, 12.2 %) has m* = se* = 0 there: 0/0, which counts as +∞ (the draw exceeds the
    observed: conservative). So the max-t p-value is at least the share of such draws, itself ≥ 8 % over B = 499 or
    1999 draws except with probability < 10⁻³ (binomial lower tail); ≥ 0.05 is tested. Negative control: 0/0 read as
    0 leaves coordinate 2's draws, which (almost) never reach 10 s.e.: p near 1/(B + 1)."""
    rng = np.random.default_rng(3)
    G = np.column_stack([np.r_[np.zeros(n - 2), 1.0, -1.0], rng.normal(size=n)])
    ref = np.array([0.0, G[:, 1].mean() - 10 * G[:, 1].std(ddof=1) / math.sqrt(n)])
    res = bias_test(G, ref, EPS, np.random.default_rng(1))
    assert res.method.startswith(branch), res.method
    assert (_hotelling_ps(res)[1] if branch.startswith("hotelling") else res.pvalue) >= 0.05
    B = 499 if branch.startswith("hotelling") else 1999
    assert sps.binom.ppf(1e-3, B, (1 - 2 / n) ** n) / B > 0.08


def test_hotelling_no_draw_refinement_is_twice_the_f_pvalue():
    """A mean far off the reference in the Hotelling branch (n = 200, r = 3, each coordinate 1 s.d. off): no draw
    reaches the observed, and p = min(1/(B + 1), 2 p_F) — Bonferroni over the two statistics, with p_F the textbook
    Hotelling F p-value — to 1e-8 relative. Negative control: 3 p_F (or p_F) differs by a factor 1.5 (2)."""
    rng = np.random.default_rng(8)
    G = rng.normal(size=(200, 3)) + 1.0
    res = bias_test(G, np.zeros(3), EPS, rng)
    assert res.method.startswith("hotelling+max-t(rank=3"), res.method
    p_f = _hotelling_f_pvalue(G, np.zeros(3))
    assert 2 * p_f < 1 / 500
    assert res.pvalue == pytest.approx(2 * p_f, rel=1e-8, abs=0)


# -- the max-t bootstrap: scale, blocks, and agreement with the Hotelling branch's max-t -----------------------------


def test_max_t_bootstrap_is_scale_equivariant_with_a_rank_deficient_reference():
    """n = 10 replicates in 30 coordinates (max-t), an estimated reference from 12 replicates (its covariance has
    rank 11 < 30: 19 zero eigenvalues, which must draw no noise) plus a known variance on 10 coordinates. Scaling
    every input by s (G, g*: s; covariance and variance: s²) changes no studentised statistic, and with the same
    generator no draw: p is the same at s = 1, 10⁻⁸ and 10⁴. Negative controls: an eigenvalue cut-off with an absolute
    floor (at s = 10⁻⁸ every eigenvalue of C/n is below eps, so the reference's noise vanishes) or unit noise put on
    the discarded eigenvalues (not scaled by s) change p."""
    setup = np.random.default_rng(12)
    G, H = setup.normal(size=(10, 30)), setup.normal(size=(12, 30))
    var = np.r_[np.full(10, 0.05), np.zeros(20)]
    ref = H.mean(0) + 0.3
    ps = []
    for s in (1.0, 1e-8, 1e4):
        noise = stats.ReferenceNoise(cov=np.cov(H.T) * s * s, n=12, var=var * s * s)
        res = bias_test(G * s, ref * s, EPS, np.random.default_rng(0), noise, n_boot=999)
        assert res.method.startswith("max-t bootstrap(B=999, m=30"), res.method
        ps.append(res.pvalue)
    assert 0.001 < ps[0] < 1 and ps[1] == ps[0] and ps[2] == ps[0], ps


def test_max_t_bootstrap_in_several_blocks_counts_exactly_b_draws():
    """m = 4200 coordinates, n = 20: a block of draws is bounded by 2²³ / max(n, m) = 1997 < B = 1999 multinomial
    rows, so the draws come in two blocks and the count is summed over both. With the reference the replicates' exact
    mean every draw reaches the observed 0, so p = (1 + B)/(B + 1) = 1 exactly. Negative controls: blocks that
    overshoot the remaining draws (1997 + 1997 counted: p = 1.997), a count kept from the last block only
    (p = 3/2000), a non-integer block size (no draw at all), a loop that never ends (timeout)."""
    rng = np.random.default_rng(4200)
    G = rng.normal(size=(20, 4200))
    res = bias_test(G, stats.accurate_mean(G), EPS, rng)
    assert res.method.startswith("max-t bootstrap(B=1999, m=4200"), res.method
    assert (1 << 23) // 4200 == 1997
    assert res.pvalue == 1.0


@pytest.mark.parametrize("kind", ["exact", "known variance"])
def test_in_one_dimension_the_max_t_branch_equals_the_hotelling_branchs_max_t(monkeypatch, kind):
    """One coordinate, n = 8 (ν = 7 < 10: the max-t branch). Forced into the Hotelling branch
    (HOTELLING_MIN_RATIO = 0) with the same generator and B = 499, the Hotelling branch's marginal max-t draws
    M* = |m*| / √(s*²/n + V_ref) come from the same multinomial counts and Gaussian reference noise as the max-t
    branch's t*: its p_max equals the max-t branch's p on every data set (10 data sets, a mean ½ s.e. off). Negative
    control: the resample variance on n + 1 or n − 2 df in one branch only, which moves p on most data sets."""
    noise = None if kind == "exact" else stats.ReferenceNoise(var=np.array([0.01]))
    rng = np.random.default_rng(17)
    for _ in range(10):
        G = rng.normal(size=(8, 1)) + 0.5 / math.sqrt(8)
        seed = int(rng.integers(2**31))
        res_t = bias_test(G, np.zeros(1), EPS, np.random.default_rng(seed), noise, n_boot=499)
        assert res_t.method.startswith("max-t bootstrap(B=499, m=1"), res_t.method
        with monkeypatch.context() as patch:
            patch.setattr(stats, "HOTELLING_MIN_RATIO", 0)
            res_h = bias_test(G, np.zeros(1), EPS, np.random.default_rng(seed), noise, n_boot=499)
        assert res_h.method.startswith("hotelling+max-t(rank=1"), res_h.method
        assert _hotelling_ps(res_h)[1] == pytest.approx(res_t.pvalue, abs=5e-4), (res_h.method, res_t.pvalue)


# -- bias_test's edges: too few replicates, no coordinates, zmax, the deterministic and the saturation thresholds ----


def test_bias_test_edges():
    """One replicate: no test (NaN, NaN, "none: fewer than 2 replicates"). Two replicates are enough for the max-t
    bootstrap (a finite p-value). No coordinates, or replicates that are all zero with the reference 0: p = 1,
    zmax = 0, "zero variance" (also with ``atoms``). Negative controls: a floor at 3 replicates (NaN at n = 2); a
    z-score of 0/0 in a coordinate without variance (zmax NaN); a largest entry of an empty array (an error)."""
    rng = np.random.default_rng(2)
    one = bias_test(rng.normal(size=(1, 3)), np.zeros(3), EPS, rng)
    assert math.isnan(one.pvalue) and math.isnan(one.zmax) and one.method == "none: fewer than 2 replicates"
    two = bias_test(rng.normal(size=(2, 3)), np.zeros(3), EPS, rng)
    assert two.method.startswith("max-t bootstrap") and 0 < two.pvalue <= 1, two
    for G, atoms in [(np.zeros((5, 0)), False), (np.zeros((5, 0)), True), (np.zeros((5, 3)), False)]:
        res = bias_test(G, np.zeros(G.shape[1]), EPS, rng, atoms=atoms)
        assert (res.pvalue, res.zmax, res.method) == (1.0, 0.0, "zero variance"), (G.shape, atoms, res)


@pytest.mark.parametrize("kind, n, f_only", [("exact", 30, False), ("known variance", 30, False),
                                             ("exact", 300, False), ("exact", 300, True)])
def test_zmax_is_the_largest_studentised_difference(monkeypatch, kind, n, f_only):
    """zmax = max_j |ḡ_j − g*_j| / √(s_j²/n + v_j) over the coordinates with variance (s_j on n − 1 df from numpy,
    v_j the reference's known variance), to 1e-12 relative; a coordinate without variance (constant, no
    difference) contributes nothing — here every z is below 1. Every branch reports it: max-t (n = 30), Hotelling's
    bootstrap (n = 300) and its F reference alone (forced). Negative controls: the difference times the standard
    error, 1 for the constant coordinate, or no zmax at all (0 or None)."""
    if f_only:
        monkeypatch.setattr(stats, "HOTELLING_BOOT_MAX_FLOPS", 0.0)
    rng = np.random.default_rng(30)
    G = np.column_stack([rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 3.0], np.full(n, 7.0)])
    var = np.r_[np.full(4, 0.01), 0.0] if kind == "known variance" else np.zeros(5)
    se = np.sqrt(G.var(0, ddof=1) / n + var)
    ref = G.mean(0) - np.r_[0.1, -0.4, 0.7, 0.2, 0.0] * np.where(se > 0, se, 1.0)
    noise = stats.ReferenceNoise(var=var) if kind == "known variance" else None
    res = bias_test(G, ref, EPS, rng, noise=noise, n_boot=99)
    if kind == "exact":
        assert res.method.startswith("max-t" if n == 30 else "hotelling(" if f_only else "hotelling+max-t"), res.method
    assert res.zmax == pytest.approx(0.7, rel=1e-12, abs=0)
    live = se > 0
    assert res.zmax == pytest.approx(float((np.abs(G.mean(0) - ref)[live] / se[live]).max()), rel=1e-12, abs=0)


@pytest.mark.parametrize("p", [1, 4])
def test_deterministic_bias_threshold_is_64_ulps_times_root_p(p):
    """A constant coordinate (1.0 in every replicate; other coordinates Gaussian with |g| < 1) whose reference is off
    by δ: a deterministic bias ("bias in a zero-variance coordinate", p = 0) exactly when δ > 64 eps (max|g| +
    max|g*|) √p — tested at 0.9 and 1.1 times that threshold, for p = 1 and 4 coordinates. Negative controls: √p
    replaced by 1/√p (p = 4: 0.9 is then a verdict) or √max(p, 2) (p = 1: 1.1 is then none)."""
    rng = np.random.default_rng(p)
    n = 20
    G = np.column_stack([np.ones(n), 0.1 * rng.normal(size=(n, p - 1))])
    assert np.abs(G).max() == 1.0
    tol = stats.DETERMINISTIC_ULPS * EPS * 2.0 * math.sqrt(p)
    assert stats.DETERMINISTIC_ULPS == 64.0
    for k, verdict in [(0.9, False), (1.1, True)]:
        ref = stats.accurate_mean(G)
        ref[0] = 1.0 - k * tol
        res = bias_test(G, ref, EPS, rng, n_boot=99)
        assert (res.method == "deterministic: bias in a zero-variance coordinate") == verdict, (k, res)
        assert (res.pvalue == 0.0) == verdict


@pytest.mark.parametrize("k, saturated", [(0.9, False), (1.1, True)])
def test_saturation_counts_directions_above_the_floor(k, saturated):
    """n = 4 replicates in 10 coordinates: two directions of scale 1, a third whose standard error (its singular value
    of Xc / √(n(n − 1))) is k times the rounding floor (4 eps · max|g| / √n, with max|g| = 10⁶ from a constant
    coordinate), and a reference off by 10⁻³ in a direction orthogonal to all three. With k = 1.1 the third direction
    is variance, the centred replicates have rank 3 = n − 1 (saturated: more directions could exist unseen), and the
    off-support difference is no verdict; with k = 0.9 it is rounding, rank 2 < n − 1, and the difference is a
    deterministic bias outside the rank-2 support. Negative controls: a rank cut-off on another scale (numpy's default,
    the floor times √(n/(n − 1)), √(n(n + 1)), √(n(n − 2)) or 1/√(n(n − 1))) or saturation at rank n − 2."""
    n, P = 4, 10
    setup = np.random.default_rng(40)
    Q, _ = np.linalg.qr(np.column_stack([np.ones(n), setup.normal(size=(n, 3))]))
    V, _ = np.linalg.qr(setup.normal(size=(P - 1, P - 1)))
    floor = stats.ROUNDING_ULPS * EPS * 1e6 / math.sqrt(n)
    sv = np.array([1.0, 0.5, k * floor]) * math.sqrt(n * (n - 1))
    G = np.column_stack([Q[:, 1:] * sv @ V[:, :3].T, np.full(n, 1e6)])
    dn = stats.sample_noise(G, None, EPS)
    assert dn.floor == pytest.approx(floor, rel=1e-12) and dn.rank == (3 if saturated else 2)
    ref = stats.accurate_mean(G)
    ref[:P - 1] -= 1e-3 * V[:, 5]
    res = bias_test(G, ref, EPS, np.random.default_rng(0), n_boot=99)
    assert res.method.startswith("deterministic: bias outside") != saturated, res.method


def test_bias_test_is_scale_equivariant_down_to_1e_minus_20():
    """G, g* scaled by 10⁻²⁰: the Hotelling branch's p-value is the same as at scale 1 with the same generator, and a
    constant coordinate off by 10⁻³ of its scale is still a deterministic bias — no threshold has an absolute part.
    Negative controls: a largest |g| or |g*| floored at 1 (the rounding floor, then every direction, or the
    deterministic tolerance, then every bias, is below it at this scale)."""
    rng = np.random.default_rng(20)
    G = rng.normal(size=(200, 3)) + 0.1
    base = bias_test(G, np.zeros(3), EPS, np.random.default_rng(1))
    tiny = bias_test(G * 1e-20, np.zeros(3), EPS, np.random.default_rng(1))
    assert base.method.startswith("hotelling+max-t(rank=3") and tiny.method == base.method
    assert tiny.pvalue == base.pvalue
    Gc = np.column_stack([G, np.ones(200)]) * 1e-20
    ref = np.r_[stats.accurate_mean(Gc)[:3], 0.999e-20]
    res = bias_test(Gc, ref, EPS, np.random.default_rng(1))
    assert res.method == "deterministic: bias in a zero-variance coordinate", res.method


@pytest.mark.parametrize("k, verdict", [(0.9999, False), (1.0001, True)])
def test_atoms_unseen_state_bound_is_twice_log_1000_over_n(k, verdict):
    """``atoms``: n = 100 replicates, coordinate 2 in {−¼, ¼} (range ½), coordinate 1 constant 5 with the reference
    off by δ. An off-support difference is a deterministic bias only beyond the largest mean shift of an unseen state,
    2 log(10³)/n × (the largest coordinate range) = 0.0691 — tested at 0.9999 and 1.0001 of it. Negative controls:
    3 log(10³)/n; log(1001) for log(1000) (1.000145 times the bound: 1.0001 is then no verdict); a range from the
    overall max or min, or max + min, or floored at 1 (each at least 5.5 or 1 here)."""
    rng = np.random.default_rng(100)
    G = np.column_stack([np.full(100, 5.0), np.where(rng.random(100) < 0.3, 0.25, -0.25)])
    bound = 2 * math.log(1e3) / 100 * 0.5
    ref = np.array([5.0 - k * bound, G[:, 1].mean()])
    res = bias_test(G, ref, EPS, rng, atoms=True, n_boot=99)
    assert res.method.startswith("deterministic: bias outside") == verdict, res.method
    assert math.log(1001) / math.log(1000) > 1.0001


_SUFFIXES = {
    "exact": (None, ""),
    "estimated": (stats.ReferenceNoise(cov=np.eye(2), n=400), ", two-sample"),
    "known variance": (stats.ReferenceNoise(var=np.full(2, 1e-3)), ", known ref variance"),
    "diagonal-only": (stats.ReferenceNoise(var=np.full(2, 1e-3), estimated_diagonal=True),
                      ", diagonal-only estimated ref"),
}


@pytest.mark.parametrize("kind", list(_SUFFIXES))
def test_the_method_names_the_kind_of_reference(kind):
    """The ``method`` text after the degrees of freedom (Hotelling) or the rank (max-t) names the reference's noise:
    nothing for an exact reference, ", two-sample", ", known ref variance", ", diagonal-only estimated ref" (which
    always takes max-t). n = 200 Gaussian replicates in 2 coordinates. Negative control: any other text."""
    noise, suffix = _SUFFIXES[kind]
    rng = np.random.default_rng(9)
    res = bias_test(rng.normal(size=(200, 2)), np.zeros(2), EPS, rng, noise=noise, n_boot=99)
    if kind == "diagonal-only":
        assert res.method == f"max-t bootstrap(B=99, m=2, rank=2{suffix})", res.method
    else:
        assert res.method.startswith("hotelling+max-t(rank=2, df="), res.method
        assert res.method.split(", bootstrap B=")[0].split("df=")[1].lstrip("0123456789") == suffix, res.method


@pytest.mark.parametrize("P, branch", [(4, "hotelling+max-t(rank=4"), (5, "max-t bootstrap(B=199, m=5, rank=5")])
def test_saturated_replicates_with_more_directions_than_they_can_show_take_max_t(P, branch):
    """n = 5 replicates (n − 1 = 4 centred directions, saturated) against a reference with a known variance 100×
    the estimator's in every coordinate (ν ≈ 10⁴ ≥ 10 r). In P = 4 coordinates the replicates show the whole
    rank-4 support: Hotelling. In P = 5 the rank is 5 > n − 1: the estimator's variance in the fifth direction is
    unobserved, Hotelling's T² would be inflated, and the test takes max-t. Negative controls: r ≥ n − 1, r > n − 2
    or saturation alone (P = 4 then takes max-t), r > n + 1 or no such rule (P = 5 then takes Hotelling)."""
    rng = np.random.default_rng(5)
    G = rng.normal(size=(5, P))
    var = 100 * G.var(0, ddof=1) / 5
    res = bias_test(G, np.zeros(P), EPS, rng, noise=stats.ReferenceNoise(var=var), n_boot=199)
    assert res.method.startswith(branch), res.method


@pytest.mark.parametrize("n, branch", [(21, "hotelling+max-t(rank=2, df=20,"), (20, "max-t bootstrap(B=1999, m=2")])
def test_hotelling_needs_nu_at_least_ten_times_the_rank(n, branch):
    """An exact reference, r = 2: ν = n − 1 = 20 = 10 r takes Hotelling, ν = 19 takes max-t (ν is n − 1 exactly:
    the Nel–van der Merwe formula gave 19.999999999999982 here). Negative control: ν > 10 r (n = 21 then takes
    max-t)."""
    assert stats.HOTELLING_MIN_RATIO == 10
    rng = np.random.default_rng(n)
    res = bias_test(rng.normal(size=(n, 2)), np.zeros(2), EPS, rng)
    assert res.method.startswith(branch), res.method


def test_a_deterministic_estimator_against_a_known_variance_reference_uses_chi2():
    """Replicates that are all equal (a deterministic estimator: no variance of its own) against a reference with a
    known variance v (quadrature error bounds): Cov(d) = diag(v) is known exactly, ν = ∞ ("df=inf"), and
    T² = Σ d_j² / v_j ~ χ²(r). Off by 6 reference s.e. in each of 3 coordinates no bootstrap draw reaches T², so
    p = 2 P(χ²₃ > T²) (the no-draw refinement), to 1e-8 relative. Negative control: the F law with ν = ∞ (NaN)."""
    rng = np.random.default_rng(6)
    var = np.array([1e-2, 4e-2, 1e-3])
    G = np.tile(rng.normal(size=3), (50, 1))
    ref = G[0] - 6 * np.sqrt(var)
    res = bias_test(G, ref, EPS, rng, noise=stats.ReferenceNoise(var=var))
    assert res.method.startswith("hotelling+max-t(rank=3, df=inf, known ref variance,"), res.method
    expected = 2 * float(sps.chi2.sf(float(((G[0] - ref) ** 2 / var).sum()), 3))
    assert expected < 1 / 500
    assert res.pvalue == pytest.approx(expected, rel=1e-8, abs=0)
