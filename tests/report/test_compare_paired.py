"""`gradbench compare` on the paired protocol's rows: a pair's log ratio L = log(θ_A/θ_B) is compared between two runs
(D = L_B − L_A, two-sample bootstrap-t over both runs' paired.parquet, else z with both paired s.e.s), each row aligned
with the row of the same pair.

Real tiny runs (ppca, elbo and iwae K = 2, 8, 500 replicates, fixed seeds, never tuned), α = 0.01 family-wise (Holm):
* negative controls: the same seed twice gives identical rows (every p = 1); a new noise seed on the same targets flags
  nothing;
* detection: iwae's spread scaled by 2 (variance × 4, mean kept) moves the elbo/iwae ratios of tr Σ by 1/4 (about
  7–9 s.e. of D here; Holm over the 48 tested rows needs about 3.7) — flagged for both elbo-vs-iwae pairs, in the
  direction "A gained on B" (an improvement for A = elbo), a regression when the runs are swapped; the iwae K=2 vs
  K=8 pair, inflated on both sides, is not flagged.
The level of the two-run test itself is checked on synthetic skewed replicates (where the z on D is anti-conservative).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from gradbench import registry
from gradbench.protocols.paired import paired_log_ratio, pseudo_values, two_run_bootstrap_t_p
from gradbench.report.compare import (
    LOG_DIFF_TEST,
    PAIRED_BOOT_TEST,
    compare_runs,
    diff_test,
    format_comparison,
)
from tests.report.report_helpers import run_to, write_suite
from tests.report.test_compare import _inflate_variance

ALPHA = 0.01
META_ALPHA = 0.001  # level of the calibration meta-test
ESTIMATORS = [{"name": "elbo", "params": {"S": 1}}, {"name": "iwae", "params": {"K": [2, 8]}}]
LOG_RATIOS = [f"paired_{q}_log_ratio" for q in ("trace_cov", "work_norm_var", "mse", "snr")]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"), "pair", ["paired"], estimators=ESTIMATORS, replicates=500)


@pytest.fixture(scope="module")
def baseline(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_to(suite, tmp_path_factory.mktemp("a") / "run")


def _paired(c) -> pd.DataFrame:
    return c.table[(c.table["protocol"] == "paired") & c.table["metric"].isin(LOG_RATIOS)]


def test_same_seed_twice_reports_no_difference(suite: Path, baseline: Path, tmp_path: Path) -> None:
    same = run_to(suite, tmp_path / "same")
    c = compare_runs(baseline, same, alpha=ALPHA)
    rows = _paired(c)
    # 3 pairs × 4 groups (all, W, mu, sigma) × 4 quantities, each tested by the two-run bootstrap-t
    assert len(rows) == 48 and (rows["test"] == PAIRED_BOOT_TEST).all(), rows["test"].value_counts()
    assert (rows["p"] == 1.0).all() and (rows["effect"] == 0).all()
    assert c.regressions.empty and c.improvements.empty
    assert rows["cell"].str.contains(" vs ").all()


def test_new_noise_on_the_same_targets_flags_nothing(suite: Path, baseline: Path, tmp_path: Path) -> None:
    b = run_to(suite, tmp_path / "b", seed=11)
    c = compare_runs(baseline, b, alpha=ALPHA)
    rows = _paired(c)
    assert len(rows) == 48 and rows["p"].notna().all()
    assert not np.allclose(rows["value_a"], rows["value_b"])  # the noise really differs
    assert c.regressions.empty and c.improvements.empty, c.table[c.table["flag"] != ""].to_string()


def test_a_shifted_ratio_is_flagged(suite: Path, baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ESTIMATORS, "iwae", _inflate_variance(2.0))
    b = run_to(suite, tmp_path / "b", seed=11)
    c = compare_runs(baseline, b, alpha=ALPHA)
    rows = _paired(c)
    trace = rows[(rows["metric"] == "paired_trace_cov_log_ratio") & (rows["param_group"] == "all")]
    elbo_vs_iwae = trace[trace["estimator"] == "elbo"]
    assert len(elbo_vs_iwae) == 2 and (elbo_vs_iwae["flag"] == "improvement").all(), elbo_vs_iwae.to_string()
    # the A/B ratio moved by 1/4 (one block of replicates: iwae's tr Σ exactly × 4 on the same noise), D = −log 4 up
    # to the two runs' noise: within Z s.e.(D), Z the two-sided 0.1 % normal quantile
    se = np.hypot(elbo_vs_iwae["stderr_a"], elbo_vs_iwae["stderr_b"])
    assert ((elbo_vs_iwae["effect"] + math.log(4.0)).abs() <= sps.norm.isf(META_ALPHA / 2) * se).all(), \
        (elbo_vs_iwae["effect"], se)
    iwae_pair = rows[rows["estimator"] == "iwae"]
    assert len(iwae_pair) == 16 and (iwae_pair["flag"] == "").all(), iwae_pair[iwae_pair["flag"] != ""].to_string()
    text = format_comparison(c)
    assert "elbo (S=1) vs iwae (K=2)" in text and "A/B ×" in text
    back = compare_runs(b, baseline, alpha=ALPHA)
    flipped = _paired(back)
    flipped = flipped[(flipped["metric"] == "paired_trace_cov_log_ratio") & (flipped["param_group"] == "all")
                      & (flipped["estimator"] == "elbo")]
    assert (flipped["flag"] == "regression").all() and len(flipped) == 2


def test_rows_align_with_their_own_partner(baseline: Path, tmp_path: Path) -> None:
    """elbo has two partners. With the elbo-vs-iwae(K=2) rows removed from run B, elbo's remaining rows must align
    with the K=8 pair (by the partner's content), not with the first pair in order of appearance: p = 1."""
    d = tmp_path / "b"
    shutil.copytree(baseline, d)
    r = pd.read_parquet(d / "results.parquet")
    cells = r.drop_duplicates("cell_id").set_index("cell_id")
    k2 = cells.index[(cells["estimator"] == "iwae") & (cells["estimator.K"] == 2)][0]
    r = r[~((r["versus"] == k2) & (r["estimator"] == "elbo"))]
    r.to_parquet(d / "results.parquet", index=False)
    c = compare_runs(baseline, d)
    rows = _paired(c)
    assert c.only_a > 0 and len(rows[rows["estimator"] == "elbo"]) == 16
    assert (rows["p"] == 1.0).all() and (rows["effect"] == 0).all()


def test_without_side_tables_the_z_on_the_difference_is_used(baseline: Path, tmp_path: Path) -> None:
    """Runs without paired.parquet (results only): the rule's z on D = L_B − L_A with both s.e.s."""
    d = tmp_path / "b"
    shutil.copytree(baseline, d)
    (d / "paired.parquet").unlink()
    rows = _paired(compare_runs(baseline, d))
    assert len(rows) == 48 and (rows["test"] == LOG_DIFF_TEST).all() and (rows["p"] == 1.0).all()


def _skewed_run(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """One run's tr Σ pseudo-values of a pair sharing noise z, lognormal replicates with different laws for A and B."""
    z = rng.normal(size=(n, 4))
    out = []
    for scale, own in ((1.0, 0.5), (0.8, 0.7)):
        g = np.exp(scale * z + own * rng.normal(size=(n, 4)))
        gbar = g.mean(0)
        out.append(pseudo_values("trace_cov", ((g - gbar) ** 2).sum(1), (g - gbar) @ gbar, float(gbar @ gbar),
                                 np.zeros(n), np.ones(n))[1])
    return out[0], out[1]


def test_the_two_run_bootstrap_t_holds_its_level_on_skewed_replicates() -> None:
    """Negative control of the test itself: two independent runs of the same lognormal pair (n = 200, seed 5), 400 run
    pairs, B = 499. The bootstrap-t rejects within the two-sided 0.1 % binomial bounds at α = 1 % and 5 %. The wrong
    formula it replaces — the normal-theory z on D, what compare uses without paired.parquet — is computed on the
    same draws and resolved above the upper bound at α = 5 % (measured here: bootstrap-t 1 and 13 of 400 at α = 1 % / 5 %,
    z 9 and 38 against the upper bound 36; over 4000 pairs the z gave 3.3 % / 10.5 %)."""
    rng = np.random.default_rng(5)
    reps = 400
    p_boot, p_z = np.empty(reps), np.empty(reps)
    for i in range(reps):
        r1, r2 = _skewed_run(rng), _skewed_run(rng)
        _, _, p_boot[i] = two_run_bootstrap_t_p(r1, r2, rng, n_boot=499)
        (l1, s1), (l2, s2) = ((res["log_ratio"], res["se"]) for res in
                              (paired_log_ratio(float(a.mean()), a, float(b.mean()), b) for a, b in (r1, r2)))
        p_z[i] = diff_test(l1, s1, l2, s2)[0]
    for a in (0.01, 0.05):
        lo, hi = sps.binom.ppf(META_ALPHA / 2, reps, a), sps.binom.isf(META_ALPHA / 2, reps, a)
        assert lo <= (p_boot < a).sum() <= hi, (a, (p_boot < a).mean(), (lo, hi))
    assert (p_z < 0.05).sum() > sps.binom.isf(META_ALPHA / 2, reps, 0.05), (p_z < 0.05).mean()
    assert np.isfinite(p_boot).all()
