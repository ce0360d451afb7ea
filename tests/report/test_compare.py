"""`gradbench compare`: detects an injected variance regression, stays quiet on independent
replications of the same code (new Monte Carlo noise, same targets), refuses different targets.

Significance level: α = 0.01 family-wise (Holm over every test of a comparison), so a quiet
comparison of two replications fails with probability ≤ 0.01 *if* the standard errors are right;
the replications use fixed salts, so the outcome is deterministic, and two independent pairs
are checked, which would expose a miscalibrated test rather than a lucky seed.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gradbench import registry
from gradbench.cli import cli
from gradbench.core import GradSample
from gradbench.report.compare import compare_runs, holm, ratio_test
from tests.report.report_helpers import add_meeting, run_to, write_suite

ALPHA = 0.01
REPLICATES = 500


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"), "cmp", ["bias", "variance"], replicates=REPLICATES)


@pytest.fixture(scope="module")
def baseline(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_to(suite, tmp_path_factory.mktemp("a") / "run")


def _inflate_variance(factor: float):
    """iwae with its spread around the block mean scaled by ``factor`` (variance × factor²):
    the mean, hence the bias, is unchanged — a pure variance regression, e.g. a lost control variate."""
    original = registry.ESTIMATORS["iwae"]

    def noisy(target, R, gen, **params) -> GradSample:
        s = original.fn(target, R, gen, **params)
        g = s.grads.mean(0, keepdim=True) + factor * (s.grads - s.grads.mean(0, keepdim=True))
        return dataclasses.replace(s, grads=g, diagnostics={k: v for k, v in s.diagnostics.items() if k != "nonfinite"})

    return dataclasses.replace(original, fn=noisy)


@pytest.mark.parametrize("seed", [11, 12])
def test_quiet_on_independent_replications_of_the_same_code(suite: Path, baseline: Path, tmp_path: Path,
                                                            seed: int) -> None:
    """Same code and targets (fixed target_seed), new noise seed: nothing is flagged at α."""
    b = run_to(suite, tmp_path / "b", seed=seed)
    c = compare_runs(baseline, b, alpha=ALPHA)
    assert c.n_tests >= 40  # every cell's variance, SNR, MSE, cost and bias metrics were tested
    assert not c.table["value_a"].equals(c.table["value_b"])  # the noise really differs
    assert c.regressions.empty and c.improvements.empty, c.table[c.table["flag"] != ""].to_string()
    res = CliRunner().invoke(cli, ["compare", str(baseline), str(b)])
    assert res.exit_code == 0, res.output
    assert "0 significant regression(s)" in res.output


def test_detects_injected_variance_regression(suite: Path, baseline: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ESTIMATORS, "iwae", _inflate_variance(1.5))
    b = run_to(suite, tmp_path / "b", seed=11)
    c = compare_runs(baseline, b, alpha=ALPHA)
    reg = c.regressions
    # tr Σ̂ of every iwae cell (group 'all') went up ×2.25 and is flagged; nothing else regressed
    flagged = reg[(reg["metric"] == "trace_cov") & (reg["param_group"] == "all")]
    assert set(flagged["estimator"]) == {"iwae"} and len(flagged) == 3
    assert set(reg["estimator"]) == {"iwae"}
    assert set(reg["metric"]) <= {"trace_cov", "mse", "work_norm_var", "snr_median"}
    ratio = flagged["value_b"] / flagged["value_a"]
    assert ratio.between(1.8, 2.8).all()
    res = CliRunner().invoke(cli, ["compare", str(baseline), str(b), "--csv", str(tmp_path / "cmp.csv")])
    assert res.exit_code == 1, res.output
    assert "REGRESSION" in res.output and "trace_cov" in res.output
    assert (tmp_path / "cmp.csv").is_file()
    # the improvement direction: B → A is the same changes, flagged as improvements
    back = compare_runs(b, baseline, alpha=ALPHA)
    assert back.regressions.empty and not back.improvements.empty


def test_different_seeds_are_different_targets(suite: Path, baseline: Path, tmp_path: Path) -> None:
    """Another target_seed draws other synthetic targets: compare refuses (exit 2) unless asked."""
    from gradbench.run.plan import load_suite
    from gradbench.run.runner import run_suite

    spec, cells = load_suite(suite, {"target_seed": 4})
    run_suite(spec, cells, tmp_path / "b", progress=False)
    res = CliRunner().invoke(cli, ["compare", str(baseline), str(tmp_path / "b")])
    assert res.exit_code == 2 and "different parameters/data" in res.output
    assert "give both runs the same target_seed" in res.output and "--target-seed" in res.output
    c = compare_runs(baseline, tmp_path / "b", allow_different_targets=True)
    assert any("warning" in n for n in c.notes)
    assert len(c.table) > 0 and c.only_a == 0 and c.only_b == 0  # they still align by content


def test_alignment_ignores_seed_ids_and_provenance(baseline: Path, tmp_path: Path) -> None:
    """Same content, different ids, seed and timestamps, integer vs float params: all rows align,
    nothing changes."""
    import pandas as pd

    d = tmp_path / "b"
    shutil.copytree(baseline, d)
    r = pd.read_parquet(d / "results.parquet")
    r["cell_id"] = "x" + r["cell_id"]
    r["seed"] = 99
    r["started_at"] = "2030-01-01T00:00:00+00:00"
    r["gradbench_version"] = "9.9"
    r = r[list(reversed(r.columns))]  # column order does not matter
    r.to_parquet(d / "results.parquet", index=False)
    c = compare_runs(baseline, d)
    assert c.only_a == 0 and c.only_b == 0 and len(c.table) == len(r)
    assert (c.table["p"].dropna() == 1.0).all()


def test_meeting_time_shift_detected_with_raw_taus(baseline: Path, tmp_path: Path) -> None:
    a, b, same = tmp_path / "a", tmp_path / "b", tmp_path / "same"
    for d in (a, b, same):
        shutil.copytree(baseline, d)
    add_meeting(a, seed=1)
    add_meeting(same, seed=2)  # new draws, same distribution
    add_meeting(b, seed=2, tau_scale=2.0)  # twice the excess meeting time
    quiet = compare_runs(a, same, skip=("bias", "variance"))
    assert (quiet.table["metric"] == "tau (raw)").sum() == 3
    assert quiet.regressions.empty
    shifted = compare_runs(a, b, skip=("bias", "variance"))
    reg = shifted.regressions
    assert set(reg.loc[reg["metric"] == "tau (raw)", "estimator"]) == {"coupled_isir"}
    assert len(reg[reg["metric"] == "tau (raw)"]) >= 2
    assert not (shifted.table["metric"] == "tau_mean").any() or shifted.table.loc[
        shifted.table["metric"] == "tau_mean", "p"].isna().all()  # raw τ replace the tau_mean z-test


def test_holm_and_ratio_test_units() -> None:
    p = np.array([0.01, 0.04, np.nan, 0.03])
    adj = holm(p)
    assert np.allclose(adj[[0, 3, 1]], [0.03, 0.06, 0.06]) and np.isnan(adj[2])
    p_same, ratio, _ = ratio_test(2.0, 0.1, 2.0, 0.1)
    assert p_same == 1.0 and ratio == 1.0
    p_big, ratio, _ = ratio_test(1.0, 0.01, 2.0, 0.02)
    assert p_big < 1e-10 and ratio == 2.0
    assert ratio_test(1.0, 0.0, 1.0, 0.0)[0] == 1.0 and ratio_test(1.0, 0.0, 2.0, 0.0)[0] == 0.0


def test_compare_input_errors(baseline: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["compare", str(baseline), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such run folder" in res.output


@pytest.mark.parametrize("change", [{"mean_shift": 1.0, "cov_scale": 2.0}, "float32"])
def test_changed_proposal_or_dtype_compares_with_allow_different_targets(suite: Path, baseline: Path, tmp_path: Path,
                                                                         change) -> None:
    """A changed proposal (or dtype) shares no content key with the baseline: without the flag,
    "nothing to compare" says to pass it; with it, the cells align target by target."""
    import yaml

    from gradbench.report.data import RunError

    spec = yaml.safe_load(suite.read_text())
    if isinstance(change, dict):
        spec["targets"][0]["proposal"] = change
    else:
        spec["dtype"] = change
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec, sort_keys=False))
    other = run_to(changed, tmp_path / "b")
    with pytest.raises(RunError, match="nothing to compare.*pass --allow-different-targets"):
        compare_runs(baseline, other)
    c = compare_runs(baseline, other, allow_different_targets=True)
    assert len(c.table) > 0 and c.only_a == 0 and c.only_b == 0


def test_missing_standard_error_is_not_tested() -> None:
    """A NaN s.e. on either side is never read as 0 (the old code called such differences exact, p = 0)."""
    from gradbench.report.compare import NOT_TESTED_SE, diff_test

    for test in (ratio_test, diff_test):
        for sa, sb in [(float("nan"), 0.1), (0.1, float("nan")), (float("nan"), float("nan"))]:
            p, _, method = test(1.0, sa, 2.0, sb)
            assert np.isnan(p) and method == NOT_TESTED_SE
    # control: with both s.e. exactly zero the difference is deterministic
    assert diff_test(1.0, 0.0, 2.0, 0.0)[0] == 0.0
