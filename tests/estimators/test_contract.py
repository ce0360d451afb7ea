"""One contract test over the whole estimator registry (shapes, dtype, cost, determinism, RNG)."""

from __future__ import annotations

import pytest
import torch

from gradbench import registry
from gradbench.core import GradSample
from tests.conftest import make_ppca

THETA_ESTIMATORS = [name for name, e in registry.ESTIMATORS.items() if e.wrt == "theta"]


def _run(name: str, target, R: int, seed: int) -> GradSample:
    est = registry.ESTIMATORS[name]
    params = est.params().model_dump()
    return est.fn(target, R, torch.Generator().manual_seed(seed), **params)


@pytest.mark.parametrize("name", THETA_ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contract(name, dtype):
    target = make_ppca(d=5, k=2, n=3, mean_shift=0.3, cov_scale=1.5, dtype=dtype)
    before = torch.random.get_rng_state()
    sample = _run(name, target, R=7, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before), "estimators must not touch the global RNG"
    assert sample.grads.shape == (7, target.layout.size)
    assert sample.grads.dtype == dtype
    assert sample.cost.shape == (7,) and bool((sample.cost >= 0).all())
    assert not sample.diagnostics["nonfinite"].any()
    assert all(v.shape[0] == 7 for v in sample.diagnostics.values())
    again = _run(name, target, R=7, seed=0)
    assert torch.equal(sample.grads, again.grads), "same generator seed → identical output"


@pytest.mark.parametrize("name", THETA_ESTIMATORS)
def test_replicates_are_independent_draws(name):
    """Different seeds give different draws (unless the estimator is deterministic)."""
    target = make_ppca(d=5, k=2, n=1, mean_shift=0.3, cov_scale=1.5)
    a, b = _run(name, target, 4, 0), _run(name, target, 4, 1)
    deterministic = float(a.cost.sum()) == 0.0
    assert torch.equal(a.grads, b.grads) == deterministic


def test_cost_accounting():
    t = make_ppca(d=5, k=2, n=3)
    assert torch.equal(registry.ESTIMATORS["iwae"].fn(t, 2, torch.Generator().manual_seed(0), K=4).cost, torch.full((2,), 12.0, dtype=torch.float64))
    assert torch.equal(registry.ESTIMATORS["oracle"].fn(t, 2, torch.Generator().manual_seed(0), S=5).cost, torch.full((2,), 15.0, dtype=torch.float64))
    assert torch.equal(registry.ESTIMATORS["exact"].fn(t, 2, torch.Generator()).cost, torch.zeros(2, dtype=torch.float64))


def test_common_random_numbers_oracle_equals_elbo_at_exact_proposal():
    """With δ = 0, s = 1 the proposal *is* the posterior: the same generator gives bitwise-equal estimates."""
    t = make_ppca(d=5, k=2, n=2)
    a = registry.ESTIMATORS["oracle"].fn(t, 5, torch.Generator().manual_seed(3), S=4)
    b = registry.ESTIMATORS["elbo"].fn(t, 5, torch.Generator().manual_seed(3), S=4)
    assert torch.equal(a.grads, b.grads)


def test_iwae_with_one_sample_is_elbo():
    t = make_ppca(d=5, k=2, n=2, mean_shift=0.4, cov_scale=2.0)
    a = registry.ESTIMATORS["iwae"].fn(t, 5, torch.Generator().manual_seed(3), K=1)
    b = registry.ESTIMATORS["elbo"].fn(t, 5, torch.Generator().manual_seed(3), S=1)
    torch.testing.assert_close(a.grads, b.grads, rtol=1e-14, atol=1e-14)


def test_iwae_weights_hand_checked():
    """iwae = Σ_k w̃_k ∇ log p(x,z_k) with w̃ recomputed from the densities of the same draws."""
    t = make_ppca(d=4, k=2, n=1, mean_shift=0.5, cov_scale=2.0)
    K = 6
    z, log_q = t.sample_proposal((1, K), torch.Generator().manual_seed(9))
    w = torch.softmax(t.log_joint(z) - t.log_proposal(z), dim=1)
    expected = (w.unsqueeze(-1) * t.grad_log_joint(z)).sum(dim=(1, 2))
    got = registry.ESTIMATORS["iwae"].fn(t, 1, torch.Generator().manual_seed(9), K=K).grads
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
