"""Meeting-time protocol: metric contract, censoring, and the geometric tail fit.

Statistical tests: fixed seed 0 (never tuned), α = 0.001 per test; z-scores use the protocol's own
standard errors (so they also check that those are right), and each has a negative control.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from gradbench.core import GradSample, ParamGroup, ParamLayout
from gradbench.protocols import ProtocolContext
from gradbench.protocols.meeting import geometric_tail_fit, meeting
from gradbench.run.plan import load_suite
from gradbench.run.runner import run_suite
from tests.run.test_plan import write

ALPHA = 1e-3
LAYOUT = ParamLayout((ParamGroup("a", (2,)),))
CTX = ProtocolContext(seed=0, eps=2.2e-16)
METRICS = {"n_censored", "censored_frac", "tau_mean", "tau_q50", "tau_q90", "tau_q99", "tau_max", "tail_rate"}
LOCKSTEP_METRICS = {"lockstep_efficiency", "lockstep_seconds", "lockstep_seconds_lost"}  # estimators reporting their work


def _sample(tau: np.ndarray, censored: np.ndarray | None = None) -> GradSample:
    R = tau.size
    g = torch.zeros(R, 2, dtype=torch.float64)
    diag = {"tau": torch.tensor(tau, dtype=torch.float64)}
    if censored is not None:
        diag["censored"] = torch.tensor(censored)
        g[diag["censored"]] = math.nan
    return GradSample(g, LAYOUT, torch.ones(R, dtype=torch.float64), diag)


def _rows(sample):
    return {r["metric"]: r for r in meeting(sample, None, CTX)}


def _geometric(p: float, n: int, offset: int, seed: int = 0) -> np.ndarray:
    return offset + np.random.default_rng(seed).geometric(p, size=n).astype(float)


def test_no_tau_no_rows():
    s = GradSample(torch.zeros(3, 2, dtype=torch.float64), LAYOUT, torch.ones(3, dtype=torch.float64))
    assert meeting(s, None, CTX) == []


def test_contract_on_a_constructed_sample():
    tau = np.array([2.0, 3, 3, 4, 10])
    rows = _rows(_sample(tau))
    assert set(rows) == METRICS and all(r["param_group"] == "all" for r in rows.values())
    assert rows["tau_mean"]["value"] == 4.4 and rows["tau_max"]["value"] == 10
    assert rows["tau_q50"]["value"] == 3 and rows["n_censored"]["value"] == 0
    assert rows["tau_mean"]["stderr"] == pytest.approx(tau.std(ddof=1) / math.sqrt(5))
    assert math.isnan(rows["tau_max"]["stderr"])


def test_censoring_is_reported_not_averaged():
    """Censored τ (= max_iter, a lower bound) is out of the mean, +∞ in quantiles and the max."""
    tau = np.array([2.0, 3, 4, 5, 50, 50])
    cens = np.array([False, False, False, False, True, True])
    rows = _rows(_sample(tau, cens))
    assert rows["n_censored"]["value"] == 2
    assert rows["censored_frac"]["value"] == pytest.approx(2 / 6)
    assert rows["censored_frac"]["stderr"] == pytest.approx(math.sqrt(2 / 6 * 4 / 6 / 6))
    assert "censored" in rows["censored_frac"]["warning"]  # 1/3 × √6 > 0.25
    many = np.zeros(10_000, bool)
    many[:2] = True  # 2 of 10⁴: c √R = 0.02, negligible at this resolution
    assert "warning" not in _rows(_sample(np.where(many, 50.0, 3.0), many))["censored_frac"]
    assert rows["tau_mean"]["value"] == 3.5 and "2 censored" in rows["tau_mean"]["method"]
    assert rows["tau_max"]["value"] == math.inf and rows["tau_q99"]["value"] == math.inf
    assert rows["tau_q50"]["value"] == 4
    # exposure: t0 = median − 1 = 3; τ > 3: 4, 5 met (exposure 1 + 2), two censored (47 each, no event)
    _lam, _se, n_e, h = geometric_tail_fit(tau, cens, 3.0)
    assert n_e == 2 and h == pytest.approx(2 / 97)
    assert rows["tail_rate"]["value"] == pytest.approx(-math.log1p(-2 / 97))


def test_every_replicate_meeting_at_once_has_infinite_rate():
    rows = _rows(_sample(np.full(50, 2.0)))
    assert rows["tail_rate"]["value"] == math.inf and rows["tau_q99"]["value"] == 2


@pytest.mark.parametrize("p", [0.3, 0.75])
def test_tail_rate_recovers_a_geometric_law(p):
    """τ = 2 + Geometric(p): λ = −log(1 − p); z = (λ̂ − λ)/se(λ̂) two-sided, α = 0.001. A reported
    quantile v is consistent with the exact law when q lies in the exact CDF's jump at v,
    [F(v − 1), F(v)], widened by z_α binomial s.e. √(q(1 − q)/n) of the empirical CDF."""
    tau = _geometric(p, 5000, offset=2)
    rows = _rows(_sample(tau))
    lam = -math.log1p(-p)
    z = (rows["tail_rate"]["value"] - lam) / rows["tail_rate"]["stderr"]
    assert 2 * sps.norm.sf(abs(z)) > ALPHA
    zm = (rows["tau_mean"]["value"] - (2 + 1 / p)) / rows["tau_mean"]["stderr"]
    assert 2 * sps.norm.sf(abs(zm)) > ALPHA
    for name, q in [("tau_q50", 0.5), ("tau_q90", 0.9)]:
        assert _quantile_consistent(rows[name]["value"], q, p, tau.size)
        assert not _quantile_consistent(rows[name]["value"], q, p / 2, tau.size)  # negative control: wrong law


def _quantile_consistent(v: float, q: float, p: float, n: int) -> bool:
    z = sps.norm.isf(ALPHA / 2) * math.sqrt(q * (1 - q) / n)
    return sps.geom.cdf(v - 3, p) - z <= q <= sps.geom.cdf(v - 2, p) + z


def test_tail_rate_test_rejects_the_wrong_law():
    """Negative control: the same z-test, fed a Geometric(0.3) sample, rejects λ of Geometric(0.4)."""
    rows = _rows(_sample(_geometric(0.3, 5000, offset=2)))
    z = (rows["tail_rate"]["value"] + math.log1p(-0.4)) / rows["tail_rate"]["stderr"]
    assert 2 * sps.norm.sf(abs(z)) < ALPHA


def test_tail_rate_with_censoring_is_unbiased():
    """Censoring at the cap: the censored MLE still recovers λ (z-test, α = 0.001); dropping the
    censored replicates instead (the silent-averaging mistake) overestimates it (negative control)."""
    p, cap = 0.1, 12
    tau = _geometric(p, 5000, offset=0)
    cens = tau > cap
    tau_c = np.minimum(tau, cap)
    rows = _rows(_sample(tau_c, cens))
    lam = -math.log1p(-p)
    assert 2 * sps.norm.sf(abs((rows["tail_rate"]["value"] - lam) / rows["tail_rate"]["stderr"])) > ALPHA
    l2, se2, _, _ = geometric_tail_fit(tau_c[~cens], np.zeros((~cens).sum(), bool), rows["tau_q50"]["value"] - 1)
    assert 2 * sps.norm.sf(abs((l2 - lam) / se2)) < ALPHA


SUITE = """\
name: meeting-test
seed: 3
replicates: 300
targets:
  - model: ppca
    params: {data_dim: 4, latent_dim: 2, n_data: 2}
    proposal: {mean_shift: 1.0, cov_scale: 2.0}
estimators:
  - name: coupled_isir
    params: {K: [2, 8], max_iter: 6}
  - name: iwae
    params: {K: 4}
protocols: [meeting, bias]
"""


def test_runner_writes_meeting_rows_and_raw_times(tmp_path):
    suite, cells = load_suite(write(tmp_path, SUITE))
    summary = run_suite(suite, cells, tmp_path / "out", progress=False)
    t = summary.table
    m = t[t.protocol == "meeting"]
    assert set(m.metric) == METRICS | LOCKSTEP_METRICS and set(m.estimator) == {"coupled_isir"}
    raw = pd.read_parquet(tmp_path / "out" / "meeting_times.parquet")
    assert len(raw) == 600 and set(raw.columns) >= {"cell_id", "replicate", "tau", "censored"}
    for cid, grp in raw.groupby("cell_id"):
        n_cens = m[(m.cell_id == cid) & (m.metric == "n_censored")].value.iloc[0]
        assert grp.censored.sum() == n_cens
        # censored replicates are excluded from the gradient moments and counted as non-finite
        assert (t[t.cell_id == cid].n_replicates == 300 - n_cens).all()
    assert raw.censored.any()


# -- lockstep efficiency ------------------------------------------------------------------------------
def _lockstep_sample(cost: np.ndarray, evaluated: np.ndarray) -> GradSample:
    s = _sample(np.full(cost.size, 3.0))
    s.cost = torch.tensor(cost, dtype=torch.float64)
    s.diagnostics["lockstep_evaluated"] = torch.tensor(evaluated, dtype=torch.float64)
    return s


def test_lockstep_efficiency_standard_error():
    """Replicates with e_r ~ 20 + Poisson(30) evaluations of which c_r ~ Binomial(e_r, 0.7) were needed: the ratio
    Σc/Σe estimates 0.7, and its z-score by the row's own s.e. is within the α = 0.001 bounds; negative control:
    the same z-test rejects 0.72 (a 2.2 % error, ~4 s.e. at R = 4000)."""
    rng = np.random.default_rng(0)
    e = 20.0 + rng.poisson(30.0, size=4000)
    c = rng.binomial(e.astype(int), 0.7).astype(float)
    r = _rows(_lockstep_sample(c, e))["lockstep_efficiency"]
    z_crit = sps.norm.isf(ALPHA / 2)
    assert abs(r["value"] - 0.7) / r["stderr"] < z_crit
    assert abs(r["value"] - 0.72) / r["stderr"] > z_crit
    assert r["value"] == pytest.approx(c.sum() / e.sum(), rel=1e-15)


def test_lockstep_rows_of_the_coupled_estimators():
    """From real runs: exact-proposal coupled PIMH (every pair meets at L + 1, every replicate stops together)
    needs all the batch did — efficiency exactly 1, no seconds lost; coupled i-SIR on a mismatched 3-point PPCA
    target (no per-point packing: points wait for their replicate's slowest) and coupled Gibbs on an RBM (met pairs
    keep sweeping until m) do less: efficiency < 1, seconds lost > 0; Σ_r e_r is the batch's total in every case."""
    from gradbench import registry
    from gradbench.models.ebm import RBM, NoProposal, RBMParams
    from gradbench.seeding import make_generator
    from tests.conftest import make_ppca

    ppca = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    rbm = RBM.build(RBMParams(n_visible=6, n_hidden=3, n_data=5, weight_scale=2.0), NoProposal(), 0, torch.float64)
    runs = {
        "exact": (registry.ESTIMATORS["coupled_pimh"].fn(make_ppca(d=4, k=2, n=3), 50, make_generator(0), K=3),
                  "lockstep_cost"),
        "isir": (registry.ESTIMATORS["coupled_isir"].fn(ppca, 200, make_generator(0), K=4), "lockstep_cost"),
        "gibbs": (registry.ESTIMATORS["coupled_gibbs"].fn(rbm, 200, make_generator(0), S=3, k=2, m=6),
                  "lockstep_sweeps"),
    }
    for name, (s, total) in runs.items():
        rows = _rows(s)
        e = s.diagnostics["lockstep_evaluated"]
        assert float(e.sum()) == pytest.approx(float(s.diagnostics[total].sum()), rel=1e-12)
        assert bool((e >= s.cost - 1e-9).all())  # no replicate is charged more than its rows cost the batch
        if name == "exact":
            assert rows["lockstep_efficiency"]["value"] == 1.0
        else:
            assert rows["lockstep_efficiency"]["value"] < 1.0
            assert math.isfinite(rows["lockstep_efficiency"]["stderr"])
        assert 0.0 <= rows["lockstep_seconds_lost"]["value"] <= rows["lockstep_seconds"]["value"]  # wall clock


def test_measured_seconds_lost_on_a_constructed_run():
    """Steps of 1.0 s / 100 evaluations, 1.2 s / 80, then two narrow ones of 0.5 s / 10: β = min(1.0/100, 1.2/80) =
    0.01 s per evaluation over the wide steps; a 3.5 s call that needed 150 evaluations lost 3.5 − 1.5 = 2 s."""
    from gradbench.estimators.coupling import LaggedRun, full_batch_rate, lockstep_diagnostics

    run = LaggedRun(torch.zeros(4, 2), torch.zeros(4, 1), torch.ones(4, 1, dtype=torch.bool),
                    np.array([80.0, 60.0, 40.0, 20.0]), 3.5, np.array([1.0, 1.2, 0.5, 0.5]), np.array([100.0, 80, 10, 10]))
    assert full_batch_rate(run) == pytest.approx(0.01)
    d = lockstep_diagnostics(torch.tensor([60.0, 50.0, 30.0, 10.0], dtype=torch.float64), run)
    assert float(d["lockstep_seconds_lost"].sum()) == pytest.approx(2.0)
    assert float(d["lockstep_seconds"].sum()) == pytest.approx(3.5)
    assert float(d["lockstep_efficiency"][0]) == pytest.approx(150 / 200)
