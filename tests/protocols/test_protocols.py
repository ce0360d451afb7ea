"""Bias and variance protocols: metric names, standard errors, exactness on constructed samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference
from gradbench.protocols import ProtocolContext
from gradbench.protocols.bias import bias
from gradbench.protocols.variance import variance

LAYOUT = ParamLayout((ParamGroup("a", (2,)), ParamGroup("b", (1,))))
CTX = ProtocolContext(seed=0, eps=2.2e-16)


def _sample(G: np.ndarray, cost: float = 3.0) -> GradSample:
    g = torch.tensor(G)
    return GradSample(g, LAYOUT, torch.full((g.shape[0],), cost, dtype=torch.float64))


def _metrics(rows):
    return {(r["param_group"], r["metric"]): r for r in rows}


def test_metric_names_and_groups():
    rng = np.random.default_rng(0)
    sample = _sample(rng.normal(size=(500, 3)))
    ref = Reference(torch.zeros(3, dtype=torch.float64))
    rows = _metrics(bias(sample, ref, CTX) + variance(sample, ref, CTX))
    for group in ("all", "a", "b"):
        for metric in ("bias_norm", "rel_bias", "bias_pvalue", "bias_zmax", "trace_cov", "mean_var", "snr_median",
                       "mse", "work_norm_var"):
            assert (group, metric) in rows
    assert ("all", "evals_mean") in rows
    for (group, metric), r in rows.items():
        if metric not in ("bias_pvalue", "bias_zmax", "rel_bias", "rel_bias_debiased", "rel_bias_ci_low",
                          "rel_bias_ci_high", "tail_index"):
            assert math.isfinite(r["stderr"]), (group, metric)


def test_variance_values_against_numpy():
    rng = np.random.default_rng(1)
    G = rng.normal(size=(800, 3)) * np.array([1.0, 2.0, 3.0]) + 1.0
    m = _metrics(variance(_sample(G, cost=4.0), Reference(torch.ones(3, dtype=torch.float64)), CTX))
    tr = G.var(0, ddof=1).sum()
    assert m[("all", "trace_cov")]["value"] == pytest.approx(tr)
    assert m[("a", "mean_var")]["value"] == pytest.approx(G[:, :2].var(0, ddof=1).mean())
    assert m[("all", "work_norm_var")]["value"] == pytest.approx(4.0 * tr)
    assert m[("all", "mse")]["value"] == pytest.approx(((G - 1.0) ** 2).sum(1).mean())
    assert m[("b", "snr_median")]["value"] == pytest.approx(abs(G[:, 2].mean()) / G[:, 2].std(ddof=1))
    # s.e. of the trace of a diagonal Gaussian: Var(s²_j) ≈ 2σ⁴/n summed over j
    assert m[("all", "trace_cov")]["stderr"] == pytest.approx(np.sqrt(2 * (1 + 16 + 81) / 800), rel=0.15)


def test_trace_cov_standard_error_covers_truth():
    """Over 200 independent samples, |trace − truth|/s.e. has the N(0,1) spread (within 20 %)."""
    rng = np.random.default_rng(2)
    z = []
    for _ in range(200):
        m = _metrics(variance(_sample(rng.normal(size=(300, 3))), None, CTX))
        z.append((m[("all", "trace_cov")]["value"] - 3.0) / m[("all", "trace_cov")]["stderr"])
    assert np.std(z) == pytest.approx(1.0, rel=0.2)


def test_bias_norm_and_nonfinite_rows_excluded():
    G = np.tile([1.0, 0.0, 0.0], (100, 1)) + np.random.default_rng(3).normal(scale=1e-3, size=(100, 3))
    G[5] = np.nan
    sample = _sample(G)
    rows = _metrics(bias(sample, Reference(torch.zeros(3, dtype=torch.float64)), CTX))
    assert sample.diagnostics["nonfinite"].sum() == 1
    assert rows[("all", "bias_norm")]["value"] == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(rows[("all", "rel_bias")]["value"])  # ‖g*‖ = 0
    assert rows[("all", "bias_pvalue")]["value"] < 1e-10


def test_no_reference_means_no_bias_rows():
    assert bias(_sample(np.zeros((10, 3))), None, CTX) == []


def test_tail_index_warns_on_infinite_variance_only():
    """Student-t(1.5) rows (infinite variance) put a warning on the variance-type rows; Gaussian rows
    (negative control) do not. Seed 0, n = 4000 (k = 64): the Hill s.e. is ~α/8."""
    rng = np.random.default_rng(0)
    heavy = _metrics(variance(_sample(rng.standard_t(1.5, size=(4000, 3))), None, CTX))
    light = _metrics(variance(_sample(rng.normal(size=(4000, 3))), None, CTX))
    assert heavy[("all", "tail_index")]["value"] < 2 and "infinite" in heavy[("all", "trace_cov")]["warning"]
    assert "warning" in heavy[("a", "mean_var")] and "warning" not in heavy[("all", "snr_median")]
    assert light[("all", "tail_index")]["value"] > 2 and not any("warning" in r for r in light.values())


def test_reference_covariance_enters_the_bias_test():
    """An estimated reference with covariance: two-sample Hotelling; its interval is wider than with an exact one."""
    rng = np.random.default_rng(1)
    G = rng.normal(size=(500, 3))
    exact = _metrics(bias(_sample(G), Reference(torch.zeros(3, dtype=torch.float64) + 0.1), CTX))
    noisy_ref = Reference(torch.zeros(3, dtype=torch.float64) + 0.1, "estimated", torch.full((3,), 0.1, dtype=torch.float64),
                          cov=torch.eye(3, dtype=torch.float64) * 5.0, n=500)
    noisy = _metrics(bias(_sample(G), noisy_ref, CTX))
    assert "two-sample" in noisy[("all", "bias_pvalue")]["method"]
    assert noisy[("all", "bias_pvalue")]["value"] > exact[("all", "bias_pvalue")]["value"]
    assert noisy[("all", "rel_bias_ci_high")]["value"] > exact[("all", "rel_bias_ci_high")]["value"]
