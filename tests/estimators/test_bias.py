"""Tier 2: bias against the exact PPCA gradient, MCSE-scaled, with negative controls.

Every test uses α = 0.001 and a fixed seed (0, never tuned). "Passes" means the bias test does
not reject H0: unbiased; "detected" means it rejects at α.
"""

from __future__ import annotations

import numpy as np
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.stats import bias_test

ALPHA = 0.001


def _pvalue(sample: GradSample, target) -> float:
    return bias_test(sample.grads.numpy(), target.exact_grad().numpy(), float(torch.finfo(torch.float64).eps),
                     np.random.default_rng(0)).pvalue


def _estimate(name: str, target, R: int, **params) -> GradSample:
    return registry.ESTIMATORS[name].fn(target, R, torch.Generator().manual_seed(0), **params)


def broken_oracle(target, R: int, gen: torch.Generator, S: int = 1) -> GradSample:
    """Negative control: samples a posterior whose covariance is inflated by 30 % — biased σ-gradient."""
    z = target.post_mean + 1.3**0.5 * (target.sample_posterior((R, S), gen) - target.post_mean)
    w = torch.full(z.shape[:-1], 1.0 / S, dtype=z.dtype)
    return GradSample(target.weighted_grad_log_joint(z, w), target.layout, torch.full((R,), float(S * target.n_data)))


def test_oracle_is_unbiased(mismatched_ppca):
    assert _pvalue(_estimate("oracle", mismatched_ppca, 4000, S=1), mismatched_ppca) > ALPHA


def test_oracle_multi_sample_multi_data_is_unbiased(ppca):
    assert _pvalue(_estimate("oracle", ppca, 4000, S=3), ppca) > ALPHA


def test_broken_estimator_is_detected(mismatched_ppca):
    sample = broken_oracle(mismatched_ppca, 4000, torch.Generator().manual_seed(0))
    assert _pvalue(sample, mismatched_ppca) < ALPHA


def test_iwae_k2_with_mismatched_proposal_is_detected(mismatched_ppca):
    assert _pvalue(_estimate("iwae", mismatched_ppca, 4000, K=2), mismatched_ppca) < ALPHA


def test_elbo_with_mismatched_proposal_is_detected(mismatched_ppca):
    assert _pvalue(_estimate("elbo", mismatched_ppca, 4000, S=1), mismatched_ppca) < ALPHA


def test_elbo_with_exact_proposal_is_unbiased(ppca):
    assert _pvalue(_estimate("elbo", ppca, 4000, S=2), ppca) > ALPHA


def test_exact_estimator_has_pvalue_one(ppca):
    sample = _estimate("exact", ppca, 50)
    assert _pvalue(sample, ppca) == 1.0


def test_iwae_bias_shrinks_with_K(mismatched_ppca):
    """The relative bias at K = 32 is below the one at K = 2 by more than 5 combined s.e."""
    from gradbench.protocols import ProtocolContext
    from gradbench.protocols.bias import bias

    ref = mismatched_ppca.reference()
    ctx = ProtocolContext(seed=0, eps=2.2e-16)
    rb = {}
    for K in (2, 32):
        rows = bias(_estimate("iwae", mismatched_ppca, 2000, K=K), ref, ctx)
        r = next(r for r in rows if r["param_group"] == "all" and r["metric"] == "rel_bias")
        rb[K] = (r["value"], r["stderr"])
    diff = rb[2][0] - rb[32][0]
    assert diff / np.hypot(rb[2][1], rb[32][1]) > 5
