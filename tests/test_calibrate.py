"""gradbench calibrate: summary arithmetic, a tiny end-to-end run, and its negative control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradbench.calibrate import calibrate, reseeded, summarize
from gradbench.run.plan import load_suite
from tests.run.test_plan import write

SUITE = """\
name: cal-test
seed: 0
replicates: 200
targets:
  - model: ppca
    params: {data_dim: 3, latent_dim: 1, n_data: 1}
    proposal: {mean_shift: 1.0, cov_scale: 2.0}
estimators:
  - name: oracle
  - name: elbo
protocols: [bias]
"""


def test_summary_of_uniform_and_of_small_pvalues():
    """Uniform p-values (seed 0) pass; p-values piled near 0 (a biased estimator) are flagged."""
    rng = np.random.default_rng(0)
    uniform = pd.DataFrame({"cell": "u", "branch": "hotelling", "pvalue": rng.uniform(size=400)})
    biased = pd.DataFrame({"cell": "b", "branch": "hotelling", "pvalue": rng.uniform(size=400) ** 4})
    s = summarize(pd.concat([uniform, biased])).set_index("cell")
    assert s.loc["u", "verdict"] == "ok" and s.loc["b", "verdict"] == "MISCALIBRATED"
    assert s.loc["u", "se@0.05"] == pytest.approx(np.sqrt(0.05 * 0.95 / 400))


def test_inconclusive_seeds_are_listed_but_not_judged():
    """Seeds whose test is inconclusive (rare states) get their own row without a verdict and are left out of the
    cell's "all tested" row: uniform p-values (seed 0) stay "ok" next to 100 inconclusive p-values near 0."""
    rng = np.random.default_rng(0)
    tested = pd.DataFrame({"cell": "c", "branch": "hotelling", "pvalue": rng.uniform(size=400)})
    rare = pd.DataFrame({"cell": "c", "branch": "inconclusive", "pvalue": rng.uniform(size=100) ** 8})
    s = summarize(pd.concat([tested, rare], ignore_index=True)).set_index("branch")
    assert s.loc["inconclusive", "verdict"].startswith("not a verdict") and s.loc["inconclusive", "n"] == 100
    assert s.loc["all tested", "n"] == 400 and s.loc["all tested", "verdict"] == "ok"


def test_reseeding_changes_target_and_noise_only(tmp_path):
    _, cells = load_suite(write(tmp_path, SUITE))
    a, b = reseeded(cells[0], 0), reseeded(cells[0], 1)
    assert a.target.target_id != b.target.target_id and a.protocols == ("bias",)
    assert a.estimator == cells[0].estimator and a.replicates == cells[0].replicates


def test_end_to_end_flags_the_biased_estimator(tmp_path):
    """12 seeds: the oracle is not flagged; the ELBO with a mismatched proposal (biased; negative
    control) has every p-value below 0.01, so its rate at α = 0.01 is 1 — MISCALIBRATED."""
    _, cells = load_suite(write(tmp_path, SUITE))
    summary = calibrate(cells, 12, tmp_path / "cal").set_index("cell")
    oracle = next(c for c in summary.index if c.startswith("oracle"))
    elbo = next(c for c in summary.index if c.startswith("elbo"))
    assert summary.loc[elbo, "rate@0.01"] == 1.0 and summary.loc[elbo, "verdict"] == "MISCALIBRATED"
    assert summary.loc[oracle, "rate@0.05"] <= 4 / 12  # binomial(12, 0.05): P(≥ 5) < 0.001
    assert {p.name for p in (tmp_path / "cal").iterdir()} == {
        "calibration_pvalues.parquet", "calibration_summary.csv", "calibration_qq.png"}


def test_cli_command(tmp_path):
    """``gradbench calibrate SUITE --seeds 2`` prints the summary and writes the outputs (exit 0)."""
    from click.testing import CliRunner

    from gradbench.cli import cli

    suite = write(tmp_path, SUITE)
    res = CliRunner().invoke(cli, ["calibrate", str(suite), "--seeds", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "rate@0.01" in res.output and (tmp_path / "o" / "calibration_qq.png").is_file()
