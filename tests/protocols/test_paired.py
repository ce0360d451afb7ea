"""The paired protocol: exact paired statistics on hand-made data, calibration under H0 with shared noise (a
negative control), the power pairing buys over an unpaired test, and a real run with known ratios."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference
from gradbench.protocols import ProtocolContext
from gradbench.protocols.paired import (
    QUANTITIES,
    bootstrap_t_p,
    pair_rows,
    paired,
    paired_log_ratio,
    pseudo_values,
    replicate_frame,
    sign_flip_p,
)
from gradbench.stats import bh_qvalues

LAYOUT = ParamLayout((ParamGroup("a", (2,)), ParamGroup("b", (1,))))
CTX = ProtocolContext(seed=0, eps=2.2e-16)


def _sample(G: np.ndarray, cost: np.ndarray) -> GradSample:
    return GradSample(torch.tensor(G), LAYOUT, torch.tensor(cost, dtype=torch.float64))


def _binomial_bounds(n: int, p: float, level: float = 1e-3) -> tuple[int, int]:
    """Two-sided acceptance region of a Binomial(n, p) count at ``level``."""
    return int(sps.binom.ppf(level / 2, n, p)), int(sps.binom.isf(level / 2, n, p))


# -- exactness ------------------------------------------------------------------------------------
def test_pseudo_values_are_the_statistics_on_hand_made_data():
    G = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0], [0.0, 0.5, 2.0], [2.0, 1.0, -1.0], [-1.0, 0.0, 0.5]])
    cost = np.array([1.0, 2.0, 3.0, 2.0, 2.0])
    ref = np.array([0.5, 0.5, 0.5])
    fr = replicate_frame(_sample(G, cost), Reference(torch.tensor(ref)))
    f = fr[fr["param_group"] == "all"]
    args = (f["sqdev"].to_numpy(), f["proj"].to_numpy(), float(f["mean_sq"].iloc[0]), f["sqerr"].to_numpy(),
            f["cost"].to_numpy())
    trace = float(np.trace(np.cov(G.T)))
    theta, phi = pseudo_values("trace_cov", *args)
    assert math.isclose(theta, trace, rel_tol=1e-13) and math.isclose(phi.mean(), trace, rel_tol=1e-13)
    theta, phi = pseudo_values("work_norm_var", *args)
    assert math.isclose(theta, trace * 2.0, rel_tol=1e-13) and math.isclose(phi.mean(), theta, rel_tol=1e-13)
    theta, _ = pseudo_values("mse", *args)
    assert math.isclose(theta, float(((G - ref) ** 2).sum(1).mean()), rel_tol=1e-13)
    theta, phi = pseudo_values("snr", *args)
    gbar = G.mean(0)
    assert math.isclose(theta, math.sqrt((gbar @ gbar - trace / 5) / trace), rel_tol=1e-13)
    assert math.isclose(phi.mean(), theta, rel_tol=1e-12)
    assert list(dict.fromkeys(fr["param_group"])) == ["all", "a", "b"]


def test_paired_log_ratio_by_hand():
    """L = log tr Σ̂_A − log tr Σ̂_B, s.e. = sd(ψ_A − ψ_B)/√n with ψ = u/tr Σ̂ − 1, the t p-value and interval;
    the difference d_r = u^A_r − u^B_r (R/(R−1) × the squared deviations) has mean tr Σ̂_A − tr Σ̂_B."""
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) * 1.3
    uA = ((A - A.mean(0)) ** 2).sum(1) * 12 / 11
    uB = ((B - B.mean(0)) ** 2).sum(1) * 12 / 11
    tA, tB = np.trace(np.cov(A.T)), np.trace(np.cov(B.T))
    assert math.isclose((uA - uB).mean(), tA - tB, rel_tol=1e-12)
    res = paired_log_ratio(tA, uA, tB, uB)
    psi = uA / tA - uB / tB
    se = psi.std(ddof=1) / math.sqrt(12)
    L = math.log(tA / tB)
    assert math.isclose(res["log_ratio"], L, rel_tol=1e-13) and math.isclose(res["se"], se, rel_tol=1e-12)
    assert math.isclose(res["p_t"], 2 * sps.t.sf(abs(L) / se, 11), rel_tol=1e-10)
    t = sps.t.ppf(0.975, 11)
    assert math.isclose(res["low"], math.exp(L - t * se), rel_tol=1e-12)
    assert math.isclose(res["high"], math.exp(L + t * se), rel_tol=1e-12)


def test_sign_flip_p_matches_full_enumeration():
    """With n = 8 all 256 sign patterns give the exact permutation p-value p₀; the Monte Carlo p from 1999
    random flips is then (1 + Binomial(1999, p₀))/2000: accepted within its two-sided 0.1 % bounds (seed 3)."""
    d = np.array([1.3, -0.2, 0.8, 2.1, 0.4, -0.5, 1.1, 0.9])
    n = len(d)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    means = signs @ d / n
    sds = np.sqrt((d @ d - n * means ** 2) / (n - 1) / n)
    obs = abs(d.mean()) / math.sqrt((d @ d - n * d.mean() ** 2) / (n - 1) / n)
    p0 = float(np.mean(np.abs(means) / sds >= obs * (1 - 1e-12)))
    p = sign_flip_p(d, np.random.default_rng(3))
    lo, hi = _binomial_bounds(1999, p0)
    assert (1 + lo) / 2000 <= p <= (1 + hi) / 2000, (p, p0)


def test_bootstrap_t_matches_resampling_the_pairs():
    """The bootstrap-t p-value from resampling counts equals the one from resampling replicate pairs by index and
    recomputing L* and s.e.* on the resample (the same 199 resamples, seed 4)."""
    rng = np.random.default_rng(0)
    pa, pb = rng.gamma(2.0, size=30), rng.gamma(2.0, size=30) * 1.2
    ta, tb = pa.mean(), pb.mean()
    p = bootstrap_t_p(ta, pa, tb, pb, np.random.default_rng(4), n_boot=199)
    resamples = np.random.default_rng(4).integers(0, 30, size=(199, 30))
    L = math.log(ta / tb)
    obs = abs(L) / ((pa / ta - pb / tb).std(ddof=1) / math.sqrt(30))
    hits = 0
    for idx in resamples:
        ma, mb = pa[idx].mean(), pb[idx].mean()
        se = (pa[idx] / ma - pb[idx] / mb).std(ddof=1) / math.sqrt(30)
        hits += abs(math.log(ma / mb) - L) / se >= obs
    assert math.isclose(p, (1 + hits) / 200, rel_tol=1e-12)


def _run_table(frames: dict[str, pd.DataFrame], target: str = "t") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A results table of paired_replicates anchors and the run's side table for hand-made cells."""
    rows, sides = [], []
    for cell, fr in frames.items():
        for g in dict.fromkeys(fr["param_group"]):
            rows.append({"cell_id": cell, "target_id": target, "model": "toy", "estimator": cell, "n_replicates":
                         int(fr.loc[fr["param_group"] == g, "finite"].sum()), "seed": 0, "protocol": "paired",
                         "param_group": g, "metric": "paired_replicates", "value": 1.0, "stderr": math.nan,
                         "method": "", "warning": ""})
        sides.append(fr.assign(cell_id=cell, target_id=target, seed=0, device="cpu", estimator=cell, objective="o"))
    return pd.DataFrame(rows), pd.concat(sides, ignore_index=True)


def test_run_rows_pair_cells_sharing_noise_and_adjust_by_bh():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(60, 3))
    cost = np.full(60, 4.0)
    ref = Reference(torch.zeros(3, dtype=torch.float64))
    frames = {c: replicate_frame(_sample(z * s + rng.normal(size=(60, 3)) * 0.3, cost), ref)
              for c, s in (("A", 1.0), ("B", 1.2), ("C", 0.9))}
    table, side = _run_table(frames)
    out = pair_rows(table, {"paired": side})
    assert set(zip(out["cell_id"], out["versus"])) == {("A", "B"), ("A", "C"), ("B", "C")}
    assert {m[len("paired_"):-len("_log_ratio")] for m in out["metric"] if m.endswith("_log_ratio")} >= {
        "trace_cov", "work_norm_var", "mse", "snr"}
    one = out[(out["cell_id"] == "A") & (out["versus"] == "B") & (out["param_group"] == "all")].set_index("metric")
    fa, fb = (frames[c][frames[c]["param_group"] == "all"] for c in "AB")
    uA, uB = (f["sqdev"].to_numpy() * 60 / 59 for f in (fa, fb))
    assert math.isclose(one.at["paired_trace_cov_log_ratio", "value"], math.log(uA.mean() / uB.mean()), rel_tol=1e-12)
    p = out[out["metric"].str.endswith("_pvalue")]
    q = out[out["metric"].str.endswith("_qvalue")]
    np.testing.assert_allclose(q["value"].to_numpy(), bh_qvalues(p["value"].to_numpy()))
    assert len(p) == 3 * 3 * len(QUANTITIES)  # pairs × groups (all, a, b) × quantities

    # a warning of either cell reaches the pair's rows
    table.loc[table["cell_id"] == "C", "warning"] = "tail index 1.5"
    warned = pair_rows(table, {"paired": side})
    bc = warned[(warned["cell_id"] == "B") & (warned["versus"] == "C")]
    assert (bc["warning"] == "B: tail index 1.5").all()
    assert (warned[(warned["cell_id"] == "A") & (warned["versus"] == "B")]["warning"] == "").all()

    # different non-finite replicates: not paired, and said so
    frames["B"].loc[frames["B"]["replicate"] == 5, "finite"] = False
    table, side = _run_table(frames)
    out = pair_rows(table, {"paired": side})
    ab = out[(out["cell_id"] == "A") & (out["versus"] == "B") & ~out["metric"].str.endswith("_qvalue")]
    assert ab["value"].isna().all() and ab["method"].str.contains("not paired").all()


def test_protocol_rows_and_side_frame_cached_on_the_sample():
    G = np.random.default_rng(0).normal(size=(20, 3))
    s = _sample(G, np.ones(20))
    rows = paired(s, None, CTX)
    assert [(r["param_group"], r["value"]) for r in rows] == [("all", 20), ("a", 20), ("b", 20)]
    assert s._paired_frame["sqerr"].isna().all() and len(s._paired_frame) == 60
    # Gaussian replicates carry no warning; Cauchy ones (tail index 1) carry variance's infinite-variance warning
    # (Hill's rule at R = 2000, seed 0)
    light = paired(_sample(np.random.default_rng(0).normal(size=(2000, 3)), np.ones(2000)), None, CTX)
    assert all("warning" not in r for r in light)
    heavy = paired(_sample(np.random.default_rng(0).standard_cauchy(size=(2000, 3)), np.ones(2000)), None, CTX)
    assert all("variance may be infinite" in r.get("warning", "") for r in heavy)


# -- calibration and power -------------------------------------------------------------------------
def _shared_noise_pair(rng: np.random.Generator, n: int, p: int, rho: float, scale_b: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """g^A_r = ρ z_r + √(1−ρ²) ε^A_r, g^B_r = √scale_b (ρ z_r + √(1−ρ²) ε^B_r) (+ a mean 0.5) with shared z_r;
    costs i.i.d. Gamma(4, 1) per replicate and estimator. tr Σ_B / tr Σ_A = scale_b."""
    z = rng.normal(size=(n, p))
    own = math.sqrt(1 - rho ** 2)
    ga = 0.5 + rho * z + own * rng.normal(size=(n, p))
    gb = 0.5 + math.sqrt(scale_b) * (rho * z + own * rng.normal(size=(n, p)))
    return ga, gb, rng.gamma(4.0, size=n), rng.gamma(4.0, size=n)


def _stats(G: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    mean = G.mean(0)
    c = G - mean
    return (c ** 2).sum(1), c @ mean, float(mean @ mean)


def test_paired_tests_hold_their_level_under_h0_with_shared_noise():
    """Negative control: two estimators with equal covariance (and equal mean, cost law and SNR), correlated through
    shared noise (ρ = 0.9), n = 200 replicates, P = 4. Over 400 repetitions (seed 20) the number of rejections at
    α = 0.05 of each paired test (bootstrap-t, paired t and sign-flip, for tr Σ, tr Σ × cost; bootstrap-t and t for
    SNR) is Binomial(400, 0.05) when calibrated: accepted within its two-sided 0.1 % bounds (measured 16–24 of 400)."""
    rng = np.random.default_rng(20)
    reps, alpha = 400, 0.05
    keys = ("p_boot", "p_t", "p_flip")
    rejections = {(q, k): 0 for q in ("trace_cov", "work_norm_var", "snr") for k in keys}
    for _ in range(reps):
        ga, gb, ca, cb = _shared_noise_pair(rng, 200, 4, 0.9, 1.0)
        sa, sb = _stats(ga), _stats(gb)
        for q in ("trace_cov", "work_norm_var", "snr"):
            res = paired_log_ratio(*pseudo_values(q, *sa, np.zeros(200), ca), *pseudo_values(q, *sb, np.zeros(200), cb),
                                   rng)
            for k in keys:
                rejections[q, k] += bool(res[k] < alpha)
    del rejections["snr", "p_flip"]  # not reported for SNR (anti-conservative on skewed replicates)
    lo, hi = _binomial_bounds(reps, alpha)
    for key, count in rejections.items():
        assert lo <= count <= hi, (key, count, (lo, hi))


def test_bootstrap_t_holds_its_level_on_skewed_replicates():
    """Negative control with skewed, heavy-ish replicates: g = exp(z + ε/2) per coordinate with shared z (lognormal,
    equal laws for A and B), n = 200, P = 4, 400 repetitions (seed 21). The bootstrap-t and sign-flip tests of tr Σ
    keep α = 0.05 within the two-sided 0.1 % binomial bounds (measured 23 and 25 of 400). Not asserted, the limits
    stated in the docs: the paired t on the log ratio is anti-conservative here (49 of 400 in this loop), and so is
    the SNR bootstrap-t (40 and 36 of 400 in a separate loop at seeds 21, 22) and its sign-flip test (91, 94; not
    reported); variance's heavy-tail warning, which the paired rows carry, fires on 94 of 100 such samples."""
    rng = np.random.default_rng(21)
    reps, alpha = 400, 0.05
    counts = {"p_boot": 0, "p_flip": 0}
    for _ in range(reps):
        z = rng.normal(size=(200, 4))
        ga, gb = (np.exp(z + 0.5 * rng.normal(size=(200, 4))) for _ in range(2))
        res = paired_log_ratio(*pseudo_values("trace_cov", *_stats(ga), np.zeros(200), np.ones(200)),
                               *pseudo_values("trace_cov", *_stats(gb), np.zeros(200), np.ones(200)), rng)
        for k in counts:
            counts[k] += bool(res[k] < alpha)
    lo, hi = _binomial_bounds(reps, alpha)
    for key, count in counts.items():
        assert lo <= count <= hi, (key, count, (lo, hi))


def _unpaired_p(ta: tuple[float, np.ndarray], tb: tuple[float, np.ndarray]) -> float:
    """The same log-ratio test treating A and B as independent samples: s.e.² = s.e.(log θ_A)² + s.e.(log θ_B)²."""
    (a, pa), (b, pb) = ta, tb
    n = len(pa)
    se = math.sqrt((pa / a).var(ddof=1) / n + (pb / b).var(ddof=1) / n)
    return float(2 * sps.norm.sf(abs(math.log(a / b)) / se))


def test_pairing_detects_a_ten_percent_variance_difference_an_unpaired_test_misses():
    """tr Σ_B = 1.1 tr Σ_A with shared noise (ρ = 0.97), n = 200, P = 4. At seed 5 the paired test rejects at
    α = 0.05 and the unpaired one does not; over 200 repetitions (seed 6) the paired test's power exceeds 0.9 and the
    unpaired one's is below 0.5, each checked against the 0.1 % binomial bound of the stated rate. (The unpaired s.e.
    is √(2·2/(nP)) ≈ 0.071 for log(1.1) ≈ 0.095; the correlation shrinks the log ratio's real s.d. to ≈ 0.023, so the
    unpaired z stays near 1.35 and rarely passes 1.96: measured 196/200 paired vs 6/200 unpaired.)"""
    def tests(rng: np.random.Generator) -> tuple[float, float]:
        ga, gb, ca, cb = _shared_noise_pair(rng, 200, 4, 0.97, 1.1)
        ta = pseudo_values("trace_cov", *_stats(ga), np.zeros(200), ca)
        tb = pseudo_values("trace_cov", *_stats(gb), np.zeros(200), cb)
        return paired_log_ratio(*ta, *tb, rng)["p_boot"], _unpaired_p(ta, tb)

    p_paired, p_unpaired = tests(np.random.default_rng(5))
    assert p_paired < 0.05 <= p_unpaired, (p_paired, p_unpaired)
    rng = np.random.default_rng(6)
    hits = np.array([[p < 0.05 for p in tests(rng)] for _ in range(200)]).sum(0)
    assert hits[0] > sps.binom.isf(1e-3, 200, 0.9), hits
    assert hits[1] < sps.binom.ppf(1e-3, 200, 0.5), hits


# -- a real run --------------------------------------------------------------------------------------
SUITE = """\
name: paired-test
seed: 3
replicates: 400
targets:
  - model: ppca
    params: {data_dim: 4, latent_dim: 2, n_data: 2}
    proposal: {mean_shift: 0.5}
estimators:
  - name: elbo
    params: {S: [1, 4]}
  - name: iwae
    params: {K: 8}
protocols: [mse, paired]
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from gradbench.run.plan import load_suite
    from gradbench.run.runner import run_suite
    from tests.run.test_plan import write

    tmp = tmp_path_factory.mktemp("paired")
    suite, cells = load_suite(write(tmp, SUITE))
    return tmp / "out", suite, run_suite(suite, cells, tmp / "out", progress=False).table


def test_real_run_recovers_known_ratios(real_run):
    """elbo(S=1) vs elbo(S=4) on PPCA: the S = 4 estimate is the mean of 4 i.i.d. S = 1 estimates, so the tr Σ ratio
    is 4 and the work-normalised ratio (cost 1 vs 4 per data point) is 1: each log-ratio is within 3.29 s.e.
    (two-sided 0.1 %) of the truth (seed 3 of the suite). Both are measured against the exact ∇ log p(x) (ELBO
    gradients are biased for it), so the MSE ratio is (‖b‖² + tr Σ)/(‖b‖² + tr Σ/4), not 4: it equals the ratio of
    the mse protocol's estimates exactly (exact reference). elbo vs iwae share that reference too."""
    out, _, table = real_run
    assert (out / "paired.parquet").exists()
    pairs = table[table["versus"].notna()]
    cells = table.drop_duplicates("cell_id").set_index("cell_id")
    s = cells["estimator.S"]
    a, b = s[s == 1].index[0], s[s == 4].index[0]
    m = pairs[(pairs["cell_id"] == a) & (pairs["versus"] == b) & (pairs["param_group"] == "all")].set_index("metric")
    for q, truth in (("trace_cov", 4.0), ("work_norm_var", 1.0)):
        L, se = m.at[f"paired_{q}_log_ratio", "value"], m.at[f"paired_{q}_log_ratio", "stderr"]
        assert abs(L - math.log(truth)) <= 3.29 * se, (q, L, se)
    mse = table[(table["metric"] == "mse_debiased") & (table["param_group"] == "all")].set_index("cell_id")["value"]
    assert math.isclose(m.at["paired_mse_log_ratio", "value"], math.log(mse[a] / mse[b]), rel_tol=1e-9)
    iw = cells.index[cells["estimator"] == "iwae"][0]
    other = pairs[(pairs["cell_id"] == a) & (pairs["versus"] == iw)]
    assert {"paired_mse_log_ratio", "paired_snr_log_ratio"} <= set(other["metric"])


def test_real_run_prints_a_vs_b(real_run):
    from gradbench.terminal import format_run

    _, suite, table = real_run
    text = format_run(table, ["paired"], suite)
    assert "A vs B" in text and "elbo(S=1) vs elbo(S=4)" in text and "tr Σ A/B [95% CI]" in text
