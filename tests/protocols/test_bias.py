"""The bias protocol's rare-state rule: a test that cannot see a rare state is inconclusive, not a verdict.

End to end through the runner on a tiny SBN (k = 3, d = 5, N = 3; suite seed 0, never tuned), R = 500, α = 0.001:
* an encoder whose logits are shifted by 7 (q_min ≈ 1e-4, R·q_min ≈ 0.06 < log 10³): the unbiased REINFORCE and the
  biased wake-sleep φ-update both get "inconclusive", no q-value, and are left out of the multiplicity family;
* the same model without the shift (R·q_min ≈ 58): a verdict — wake-sleep (negative control; its bias is
  ~20 s.e. of the mean at this R, the 95 % interval of ‖b‖/‖g*‖ is [18, 28]) is rejected at q < α, REINFORCE is not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gradbench.protocols.bias import is_inconclusive, multiplicity_rows
from gradbench.run.plan import load_suite
from gradbench.run.runner import run_suite
from gradbench.stats import rare_state_verdict
from gradbench.terminal import format_run
from tests.run.test_plan import write

ALPHA = 0.001
LOG_1000 = 6.907755278982137  # the rare-state rule's R·q_min threshold, log(10³), written out (not read from stats)
SUITE = """\
name: rare-states
seed: 0
target_seed: 0
replicates: 500
targets:
  - model: sbn
    params: {layers: [3], conditionals: linear, data_dim: 5, n_data: 3}
    proposal: {family: bernoulli_encoder}
  - model: sbn
    params: {layers: [3], conditionals: linear, data_dim: 5, n_data: 3}
    proposal: {family: bernoulli_encoder, logit_shift: 7.0}
estimators:
  - name: reinforce
    params: {S: 1, baseline: none, kl: mc}
  - name: wake_sleep
protocols: [bias]
"""


def test_rare_state_verdict_threshold():
    """Inconclusive exactly when n·q_min < log(10³) = 6.9078 (written out: 6908 · 10⁻³ ≥ 6.9078 > 6907 · 10⁻³); the
    message gives the R needed; no q_min: no rule."""
    q = 1e-3
    n_ok = 6908
    assert rare_state_verdict(q, n_ok) == ""
    msg = rare_state_verdict(q, n_ok - 1)
    assert msg.startswith("inconclusive: rare states") and f"need R ≥ {n_ok}" in msg and is_inconclusive(msg)
    assert rare_state_verdict(None, 10) == "" and not is_inconclusive("hotelling+max-t(rank=3)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rare")
    suite, cells = load_suite(write(tmp, SUITE))
    return run_suite(suite, cells, tmp / "out", progress=False).table


def _all(table: pd.DataFrame, metric: str, estimator: str, shift: float) -> pd.Series:
    t = table[(table["metric"] == metric) & (table["param_group"] == "all") & (table["estimator"] == estimator)
              & (table["proposal.logit_shift"] == shift)]
    assert len(t) == 1
    return t.iloc[0]


def test_rare_target_is_inconclusive_not_biased(run):
    for est in ("reinforce", "wake_sleep"):
        p = _all(run, "bias_pvalue", est, 7.0)
        assert is_inconclusive(p["method"]) and "need R ≥" in p["method"], p["method"]
        assert np.isfinite(p["value"])  # the p-value is kept as a number
        assert _all(run, "bias_rare_count", est, 7.0)["value"] < LOG_1000
        assert math.isnan(_all(run, "bias_qvalue", est, 7.0)["value"])  # not in the family: never flagged
        assert is_inconclusive(_all(run, "rel_bias_ci_low", est, 7.0)["method"])
    text = format_run(run, ["bias"], alpha=ALPHA)
    rare_lines = [ln for ln in text.splitlines() if "logit_shift=7" in ln]
    assert len(rare_lines) == 2 and all("inconclusive (rare states)" in ln and "✱" not in ln for ln in rare_lines)


def test_adequate_R_still_rejects_the_biased_estimator(run):
    """Negative control: at R·q_min ≥ log(10³) the rule is silent and wake-sleep's biased φ-update is rejected."""
    for est in ("reinforce", "wake_sleep"):
        assert _all(run, "bias_rare_count", est, 0.0)["value"] >= LOG_1000
        assert not is_inconclusive(_all(run, "bias_pvalue", est, 0.0)["method"])
    q_ws = _all(run, "bias_qvalue", "wake_sleep", 0.0)
    assert q_ws["value"] < ALPHA and "2 bias tests" in q_ws["method"] and "2 inconclusive" in q_ws["method"]
    assert _all(run, "bias_qvalue", "reinforce", 0.0)["value"] >= ALPHA  # unbiased: not flagged
    text = format_run(run, ["bias"], alpha=ALPHA)
    assert any("wake_sleep" in ln and "✱" in ln for ln in text.splitlines() if "logit_shift=0" in ln)


def test_multiplicity_family_leaves_inconclusive_tests_out():
    """Two conclusive p-values {0.01, 0.04} and one inconclusive 1e-9: BH over m = 2 (q = 0.02, 0.04), not 3."""
    t = pd.DataFrame({"cell_id": ["a", "b", "c"], "metric": "bias_pvalue", "param_group": "all",
                      "value": [0.01, 0.04, 1e-9], "stderr": math.nan,
                      "method": ["hotelling", "max-t", rare_state_verdict(1e-4, 100) + "; hotelling"]})
    q = multiplicity_rows(t).query("metric == 'bias_qvalue'").set_index("cell_id")["value"]
    assert q["a"] == pytest.approx(0.02) and q["b"] == pytest.approx(0.04) and math.isnan(q["c"])
