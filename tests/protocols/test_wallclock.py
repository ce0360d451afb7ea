"""Wall-clock protocol: row names, positivity, consistency of its figures, and the runner wiring.

Timings are never asserted against a speed; only what must hold on any machine is checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.estimators.importance import iwae
from gradbench.protocols import ProtocolContext
from gradbench.protocols import wallclock as wc
from gradbench.protocols.variance import variance
from gradbench.run.plan import load_suite
from gradbench.run.runner import run_suite
from gradbench.seeding import make_generator
from tests.conftest import make_ppca
from tests.run.test_plan import write

TIMING_ROWS = ("seconds_per_estimate", "seconds_per_estimate_iqr", "evals_per_second", "evals_per_second_iqr")


def _rows(rows):
    return {(r["param_group"], r["metric"]): r for r in rows}


@pytest.fixture
def fast_timing(monkeypatch):
    """Keep the protocol's timing loop short in tests."""
    monkeypatch.setattr(wc, "BUDGET_S", 0.0)
    monkeypatch.setattr(wc, "MIN_REPEATS", 3)
    monkeypatch.setattr(wc, "WARMUP", 1)


def _ctx(target, K: int, calls: list[int] | None = None) -> ProtocolContext:
    def rerun(R: int) -> GradSample:
        if calls is not None:
            calls.append(R)
        return iwae(target, R, make_generator(5), K=K)

    return ProtocolContext(seed=0, eps=2.2e-16, device="cpu", rerun=rerun)


def test_rows_names_positivity_and_method(fast_timing):
    t = make_ppca(d=5, k=2, n=2)
    sample = iwae(t, 64, make_generator(1), K=4)
    calls: list[int] = []
    rows = _rows(wc.wallclock(sample, t.reference(), _ctx(t, 4, calls)))
    for metric in TIMING_ROWS:
        assert ("all", metric) in rows
    for group in ("all", "W", "mu", "sigma"):
        assert (group, "work_norm_var_seconds") in rows
    for (group, metric), r in rows.items():
        assert math.isfinite(r["value"]) and r["value"] >= 0, (group, metric)
    assert rows[("all", "seconds_per_estimate")]["value"] > 0
    assert rows[("all", "evals_per_second")]["value"] > 0
    method = rows[("all", "seconds_per_estimate")]["method"]
    assert f"torch={torch.__version__}" in method and f"threads={torch.get_num_threads()}" in method
    assert "device=" in method and "cuda=" in method
    # warm-up plus at least MIN_REPEATS timed calls, each on the whole batch (all 64 replicates)
    assert len(calls) >= wc.WARMUP + wc.MIN_REPEATS and set(calls) == {64}


def test_work_normalised_variance_is_trace_times_seconds(fast_timing):
    t = make_ppca(d=4, k=2, n=1)
    sample = iwae(t, 200, make_generator(2), K=8)
    rows = _rows(wc.wallclock(sample, None, _ctx(t, 8)))
    trace = _rows(variance(sample, None, ProtocolContext(seed=0, eps=2.2e-16)))
    spe = rows[("all", "seconds_per_estimate")]["value"]
    for group in ("all", "W", "mu", "sigma"):
        expected = trace[(group, "trace_cov")]["value"] * spe
        assert rows[(group, "work_norm_var_seconds")]["value"] == pytest.approx(expected, rel=1e-12)


def test_evals_per_second_matches_cost_and_seconds(fast_timing):
    """evals/s and s/estimate are medians of per-call figures: for one timed call they are exact inverses
    (× evaluations per estimate)."""
    t = make_ppca(d=4, k=2, n=3)
    sample = iwae(t, 10, make_generator(3), K=5)
    ctx = _ctx(t, 5)
    wc_min, wc_max = wc.MIN_REPEATS, wc.MAX_REPEATS
    try:
        wc.MIN_REPEATS = wc.MAX_REPEATS = 1
        rows = _rows(wc.wallclock(sample, None, ctx))
    finally:
        wc.MIN_REPEATS, wc.MAX_REPEATS = wc_min, wc_max
    evals_per_estimate = 5 * 3
    spe = rows[("all", "seconds_per_estimate")]["value"]
    assert rows[("all", "evals_per_second")]["value"] == pytest.approx(evals_per_estimate / spe, rel=1e-9)
    assert rows[("all", "seconds_per_estimate_iqr")]["value"] == 0.0


def test_needs_rerun():
    t = make_ppca()
    sample = iwae(t, 8, make_generator(0), K=2)
    with pytest.raises(ValueError, match="rerun"):
        wc.wallclock(sample, None, ProtocolContext(seed=0, eps=2.2e-16))


def test_time_calls_counts_and_budget():
    n = []
    timing = wc.time_calls(lambda: n.append(1), warmup=2, min_repeats=4, max_repeats=4, budget_s=10.0)
    assert len(timing.seconds) == 4 and len(n) == 6
    assert (timing.seconds >= 0).all() and timing.iqr >= 0 and timing.median >= 0
    timing = wc.time_calls(lambda: None, warmup=0, min_repeats=2, max_repeats=50, budget_s=0.0)
    assert len(timing.seconds) == 2
    with pytest.raises(ValueError):
        wc.time_calls(lambda: None, min_repeats=3, max_repeats=2)


def test_device_info_cpu():
    info = wc.device_info("cpu")
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert isinstance(info["device_name"], str) and info["device_name"]


def test_registered():
    assert registry.PROTOCOLS["wallclock"].fn is wc.wallclock


SUITE = """\
name: wallclock-test
seed: 3
replicates: 40
targets:
  - model: ppca
    params: {data_dim: 3, latent_dim: 2, n_data: 1}
estimators:
  - name: exact
  - name: iwae
    params: {K: 4}
protocols: [variance, wallclock]
"""


def test_runner_wires_rerun_and_device(tmp_path, fast_timing):
    suite, cells = load_suite(write(tmp_path, SUITE))
    table = run_suite(suite, cells, tmp_path / "out", progress=False).table
    wall = table[table.protocol == "wallclock"]
    assert set(TIMING_ROWS) <= set(wall.metric)
    for est, grp in wall.groupby("estimator"):
        spe = grp[(grp.metric == "seconds_per_estimate")].value.iloc[0]
        assert spe > 0, est
        eps = grp[(grp.metric == "evals_per_second")].value.iloc[0]
        assert (eps == 0) if est == "exact" else (eps > 0)
        assert (grp.device == "cpu").all()
    iw = wall[(wall.estimator == "iwae") & (wall.metric == "work_norm_var_seconds")]
    assert set(iw.param_group) == {"all", "W", "mu", "sigma"} and np.all(iw.value > 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_timing_synchronises(fast_timing):
    from gradbench.models.ppca import PPCA, PPCAParams, ProposalParams

    target = PPCA.synthetic(PPCAParams(data_dim=4, latent_dim=2), ProposalParams(), 0, torch.float64, "cuda")
    sample = iwae(target, 32, make_generator(0, "cuda"), K=4)
    ctx = ProtocolContext(seed=0, eps=2.2e-16, device="cuda",
                          rerun=lambda R: iwae(target, R, make_generator(1, "cuda"), K=4))
    rows = _rows(wc.wallclock(sample, None, ctx))
    assert rows[("all", "seconds_per_estimate")]["value"] > 0
    assert "cuda=" in rows[("all", "seconds_per_estimate")]["method"]
