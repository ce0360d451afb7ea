"""One contract test over the whole estimator registry (shapes, dtype, cost, determinism, RNG)."""

from __future__ import annotations

import pytest
import torch

from gradbench import registry
from gradbench.core import GradSample
from tests.conftest import make_ppca

PPCA_CAPABILITIES = registry.MODELS["ppca"].capabilities({})
PSEUDO = {"train"}  # not an estimator: a training run (training cells; tests/training/test_loop.py)
THETA_ESTIMATORS = [name for name, e in registry.ESTIMATORS.items()
                    if name not in PSEUDO and e.wrt == "theta" and e.required(e.params().model_dump()) <= PPCA_CAPABILITIES]


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
    z, _log_q = t.sample_proposal((1, K), torch.Generator().manual_seed(9))
    w = torch.softmax(t.log_joint(z) - t.log_proposal(z), dim=1)
    expected = (w.unsqueeze(-1) * t.grad_log_joint(z)).sum(dim=(1, 2))
    got = registry.ESTIMATORS["iwae"].fn(t, 1, torch.Generator().manual_seed(9), K=K).grads
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# -- every registered estimator on every shipped model whose capabilities it needs -------------
SMALL_TARGETS = {
    "ppca_encoder": ({"data_dim": 4, "latent_dim": 2, "n_data": 2, "reference_replicates": 50}, {"mean_noise": 0.3}),
    "sbn": ({"layers": [3], "data_dim": 5, "n_data": 2}, {"family": "bernoulli_encoder"}),
    "vae": ({"latent_dim": 2, "data_dim": 5, "n_data": 2, "hidden": [4]}, {"family": "gaussian_encoder"}),
    # Semi-implicit q (linear T: exact log q)
    "ppca_semi_implicit": ({"data_dim": 4, "latent_dim": 2, "n_data": 2}, {"mixing_dim": 3}),
    "toy2d_semi_implicit": ({"density": "x_shaped"}, {"mixing_dim": 3}),  # a density of z without data (N = 1)
    # Categorical latents (k = 2 latents × C = 3 classes, 9 states)
    "categorical_vae": ({"latents": 2, "classes": 3, "data_dim": 5, "n_data": 2, "reference_replicates": 50},
                        {"logit_noise": 0.3}),
}
VARIANTS = [(name, e.params().model_dump()) for name, e in registry.ESTIMATORS.items() if name not in PSEUDO] + [
    ("reinforce", registry.ESTIMATORS["reinforce"].params(kl="mc", S=3, baseline="rloo").model_dump()),
    ("reinforce", registry.ESTIMATORS["reinforce"].params(kl="mc", S=2, baseline="learned_input", warmup=3).model_dump()),
    ("iwae_reparam", registry.ESTIMATORS["iwae_reparam"].params(K=3, wrt="theta").model_dump()),
]
PAIRS = [(name, model, params) for model, (_, proposal) in SMALL_TARGETS.items() for name, params in VARIANTS
         if registry.ESTIMATORS[name].required(params) <= registry.MODELS[model].capabilities(proposal)]


@pytest.fixture(scope="module")
def small_targets():
    out = {}
    for model, (params, proposal) in SMALL_TARGETS.items():
        entry = registry.MODELS[model]
        out[model] = entry.build(entry.params(**params), entry.proposal(**proposal), 5, torch.float64, "cpu", None)
    return out


def test_capabilities_pair_every_estimator_with_some_shipped_model():
    paired = {est for est, _, _ in PAIRS} | set(THETA_ESTIMATORS)
    ebm = {n for n, e in registry.ESTIMATORS.items() if "energy_based" in e.required(e.params().model_dump())}
    assert set(registry.ESTIMATORS) - ebm - PSEUDO <= paired, "an estimator no shipped target can serve"
    on_sbn = {name for name, model, _ in PAIRS if model == "sbn"}
    assert {"reinforce", "vimco", "iwae", "coupled_isir", "oracle"} <= on_sbn and "reparam_elbo" not in on_sbn


@pytest.mark.parametrize("name, model, params", PAIRS)
def test_contract_on_every_model(name, model, params, small_targets):
    """Shapes, cost, finiteness, determinism under a generator, no global RNG use, declared objective."""
    target = small_targets[model]
    est = registry.ESTIMATORS[name]
    before = torch.random.get_rng_state()
    sample = est.fn(target, 5, torch.Generator().manual_seed(0), **params)
    assert torch.equal(torch.random.get_rng_state(), before), "estimators must not touch the global RNG"
    layout = target.layout if est.objective(params).wrt == "theta" else target.phi_layout
    assert sample.grads.shape == (5, layout.size) and sample.layout == layout
    assert sample.wrt == est.objective(params).key, "the sample says what the registry declares it estimates"
    assert bool((sample.cost > 0).all()) or name == "exact"
    assert not sample.diagnostics["nonfinite"].any()
    assert torch.equal(sample.grads, est.fn(target, 5, torch.Generator().manual_seed(0), **params).grads)
