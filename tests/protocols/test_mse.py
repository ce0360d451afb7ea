"""The mse protocol: the identity MSE = bias² + tr Σ̂, and standard errors that cover the truth at their level."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats as sps

from gradbench.core import GradSample, ParamGroup, ParamLayout, Reference
from gradbench.protocols import ProtocolContext
from gradbench.protocols.mse import mse
from gradbench.protocols.variance import variance

LAYOUT = ParamLayout((ParamGroup("a", (2,)), ParamGroup("b", (1,))))
CTX = ProtocolContext(seed=0, eps=2.2e-16)
SD = np.array([1.0, 2.0, 0.5])  # per-coordinate s.d. of the replicates
COST = 4.0


def _sample(G: np.ndarray, cost: np.ndarray | float = COST) -> GradSample:
    g = torch.tensor(G)
    c = torch.as_tensor(cost, dtype=torch.float64).expand(g.shape[0]).clone()
    return GradSample(g, LAYOUT, c)


def _metrics(rows):
    return {(r["param_group"], r["metric"]): r for r in rows}


def test_identity_with_variance_and_no_rows_without_reference():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(400, 3)) * SD + 0.3
    ref = Reference(torch.zeros(3, dtype=torch.float64))
    m = _metrics(mse(_sample(G), ref, CTX))
    v = _metrics(variance(_sample(G), ref, CTX))
    for group in ("all", "a", "b"):
        # mean_r ‖g_r − g*‖² = ‖ḡ − g*‖² + (n−1)/n tr Σ̂ exactly: bias_sq + tr Σ̂, and variance's mse
        total = m[group, "bias_sq"]["value"] + v[group, "trace_cov"]["value"]
        assert math.isclose(m[group, "mse_debiased"]["value"], total, rel_tol=1e-12)
        assert math.isclose(m[group, "mse_debiased"]["value"], v[group, "mse"]["value"], rel_tol=1e-12)
        assert math.isclose(m[group, "work_norm_mse"]["value"], COST * total, rel_tol=1e-12)
    assert mse(_sample(G), None, CTX) == []


def test_standard_errors_cover_the_true_values():
    """200 independent Gaussian samples (R = 300) with bias b = (0.3, 0, 0.2) and a random cost: each estimate's
    z-score against the true ‖b‖², ‖b‖² + tr Σ and (‖b‖² + tr Σ)·E[cost] is within ±1.96 in 95 % of the samples.
    The count of covered samples is Binomial(200, 0.95) if the s.e. are right; accept it at the two-sided 0.1 %
    level of that binomial (a fixed seed)."""
    rng = np.random.default_rng(1)
    b = np.array([0.3, 0.0, 0.2])
    true = {"bias_sq": float(b @ b), "mse_debiased": float(b @ b + SD @ SD)}
    true["work_norm_mse"] = true["mse_debiased"] * COST  # cost ~ Exponential(mean COST)
    covered = dict.fromkeys(true, 0)
    reps = 200
    for _ in range(reps):
        G = rng.normal(size=(300, 3)) * SD + b
        m = _metrics(mse(_sample(G, rng.exponential(COST, size=300)), Reference(torch.zeros(3, dtype=torch.float64)),
                         CTX))
        for k, t in true.items():
            covered[k] += abs(m["all", k]["value"] - t) < 1.96 * m["all", k]["stderr"]
    lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, 0.95)
    for k, c in covered.items():
        assert lo <= c <= hi, (k, c, (lo, hi))


def test_negative_control_an_unbiased_estimator_has_no_resolved_bias():
    """bias_sq of unbiased replicates is within 3.29 s.e. of 0 (two-sided 0.1 %); of biased ones it is far above."""
    rng = np.random.default_rng(2)
    G = rng.normal(size=(2000, 3)) * SD
    ref = Reference(torch.zeros(3, dtype=torch.float64))
    unbiased = _metrics(mse(_sample(G), ref, CTX))["all", "bias_sq"]
    assert abs(unbiased["value"]) < 3.29 * unbiased["stderr"]
    biased = _metrics(mse(_sample(G + 0.3), ref, CTX))["all", "bias_sq"]
    assert biased["value"] > 3.29 * biased["stderr"]


def test_reference_noise_is_subtracted_and_widens_the_error():
    rng = np.random.default_rng(3)
    G = rng.normal(size=(500, 3)) * SD + 0.2
    exact = _metrics(mse(_sample(G), Reference(torch.zeros(3, dtype=torch.float64)), CTX))
    se_ref = torch.full((3,), 0.1, dtype=torch.float64)
    noisy = _metrics(mse(_sample(G), Reference(torch.zeros(3, dtype=torch.float64), "estimated", se_ref), CTX))
    assert math.isclose(noisy["all", "mse_debiased"]["value"], exact["all", "mse_debiased"]["value"] - 0.03, rel_tol=1e-9)
    assert noisy["all", "mse_debiased"]["stderr"] > exact["all", "mse_debiased"]["stderr"]
