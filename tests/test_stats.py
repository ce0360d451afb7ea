"""The statistical tests are themselves tested: calibrated under H0, powerful under H1.

Fixed seeds; each meta-test states its α.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from gradbench.stats import bias_test, bootstrap_snr_medians, influence_se

EPS = float(np.finfo(np.float64).eps)


@pytest.mark.parametrize("n,p", [(400, 5), (60, 30)])  # Hotelling path, max-z path
def test_pvalues_uniform_under_null(n, p):
    """300 null data sets: KS test of p-value uniformity not rejected at α = 0.001."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(p, p))
    pvals = [bias_test(rng.normal(size=(n, p)) @ A, np.zeros(p), None, EPS).pvalue for _ in range(300)]
    if n >= 10 * p:
        assert sps.kstest(pvals, "uniform").pvalue > 0.001
    else:  # Šidák max-z is conservative: P(p ≤ a) ≤ a (+ 3 binomial s.e. at a = 0.05)
        assert np.mean(np.array(pvals) <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)


@pytest.mark.parametrize("n,p", [(400, 5), (60, 30)])
def test_detects_a_shift_of_half_a_standard_deviation(n, p):
    rng = np.random.default_rng(1)
    G = rng.normal(size=(n, p))
    G[:, 0] += 0.5  # shift of 0.5 sd in one coordinate
    assert bias_test(G, np.zeros(p), None, EPS).pvalue < 0.001


def test_singular_covariance_uses_rank():
    """Rows living on a 2-dimensional subspace of R^6: Hotelling on the rank-2 support."""
    rng = np.random.default_rng(2)
    B = rng.normal(size=(2, 6))
    G = rng.normal(size=(500, 2)) @ B
    res = bias_test(G, np.zeros(6), None, EPS)
    assert res.method == "hotelling(rank=2)" and res.pvalue > 0.001
    off_support = np.linalg.svd(B)[2][-1]  # a direction with zero variance
    res = bias_test(G, -1e-3 * off_support, None, EPS)
    assert res.pvalue == 0.0 and res.method.startswith("deterministic")


def test_estimated_reference_widens_the_test():
    """A reference with s.e. forces the max-z test and accounts for the reference's noise."""
    rng = np.random.default_rng(3)
    G = rng.normal(size=(1000, 3))
    ref = np.array([0.2, 0.0, 0.0])  # 6 MC s.e. away if the reference were exact ...
    assert bias_test(G, ref, None, EPS).pvalue < 0.001
    res = bias_test(G, ref, np.full(3, 0.2**2), EPS)  # ... but within 1 s.e. of a noisy reference
    assert res.method.startswith("max-z") and res.pvalue > 0.05


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
    res = bias_test(G, g, None, EPS)
    assert res.pvalue == 1.0, res
    assert bias_test(G, g + 1e-6, None, EPS).pvalue == 0.0
