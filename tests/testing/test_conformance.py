"""The conformance kit (``gradbench.testing``) over every shipped model, family and estimator, on small targets.

Fast (well under a minute on one core): every model and family, every estimator's structural checks, and the bias
test with its negative control for a few unbiased estimators; every unbiased estimator's bias test runs with
``-m slow``. Stochastic checks are tests at α = 0.001 with seed 0, scaled by the Monte Carlo standard error.
"""

from __future__ import annotations

import pytest
import torch

from gradbench import registry
from gradbench.testing import build, check_estimator, check_family, check_model

SMALL: dict[str, tuple[dict, dict]] = {  # model → (params, proposal): tiny targets, in the order estimators pick them
    "ppca": ({"data_dim": 3, "latent_dim": 1, "n_data": 2}, {"mean_shift": 0.3}),
    "ppca_encoder": ({"data_dim": 3, "latent_dim": 1, "n_data": 2, "reference_replicates": 2000}, {"mean_noise": 0.3}),
    "vae": ({"latent_dim": 2, "hidden": [3], "data_dim": 3, "n_data": 2, "reference_replicates": 2000}, {"fit_steps": 50}),
    "sbn": ({"layers": [3], "data_dim": 4, "n_data": 2, "reference_replicates": 2000}, {"logit_noise": 0.5}),
    "categorical_vae": ({"latents": 2, "classes": 3, "data_dim": 4, "n_data": 2, "reference_replicates": 2000},
                        {"logit_noise": 0.5}),
    "bernoulli_toy": ({"dim": 3, "t": 0.3, "logit": 0.5, "logit_spread": 3.0}, {}),
    "rbm": ({"n_visible": 4, "n_hidden": 2, "n_data": 3}, {}),
    "ising": ({"n_spins": 4, "n_data": 3}, {}),
    "ppca_semi_implicit": ({"data_dim": 3, "latent_dim": 1, "n_data": 2}, {}),
    "vae_semi_implicit": ({"latent_dim": 2, "hidden": [3], "data_dim": 3, "n_data": 2}, {}),
    "toy2d_semi_implicit": ({}, {}),
}
FAMILIES = {  # family objects of shipped targets: model, proposal
    "gaussian_mean_field": ("vae", {"fit_steps": 50}),
    "gaussian_encoder": ("vae", {"family": "gaussian_encoder", "fit_steps": 50}),
    "bernoulli_encoder": ("sbn", {"logit_noise": 0.5}),
    "bernoulli_mean_field": ("bernoulli_toy", {}),
    "categorical_encoder": ("categorical_vae", {"logit_noise": 0.5}),
    "semi_implicit": ("ppca_semi_implicit", {}),
    "semi_implicit_atoms": ("ppca_semi_implicit", {"n_atoms": 3}),
}
UNBIASED = {"exact", "oracle", "coupled_isir", "coupled_pimh", "sumo", "reparam_elbo", "stl", "iwae_reparam", "dreg",
            "reinforce", "vimco", "arm", "disarm", "rloo", "nvil", "rebar", "relax", "sum_and_sample", "exact_sampling",
            "coupled_gibbs"}
FAST_BIAS = {"oracle", "reparam_elbo", "rloo", "arm", "sum_and_sample"}  # bias test + negative control in CI
SHIPPED_MODELS = [m for m in registry.MODELS if m in SMALL]
SHIPPED_ESTIMATORS = [e for e in registry.ESTIMATORS if e != "train" and registry.ESTIMATORS[e].fn.__module__
                      .startswith("gradbench.")]
_TARGETS: dict[str, object] = {}


def small_target(model: str):
    if model not in _TARGETS:
        _TARGETS[model] = build(model, *SMALL[model])
    return _TARGETS[model]


def target_for(estimator: str) -> str:
    """The first small target that provides what the estimator needs (with a reference of its objective if unbiased)."""
    entry = registry.ESTIMATORS[estimator]
    params = entry.params().model_dump()
    for model in SMALL:
        if entry.required(params) <= registry.MODELS[model].capabilities(SMALL[model][1]):
            return model
    raise LookupError(f"no small target serves {estimator}")


def test_every_shipped_entry_is_covered():
    assert set(SHIPPED_MODELS) == {m for m in registry.MODELS if registry.MODELS[m].module_of("build").startswith("gradbench.")}
    assert len(SHIPPED_ESTIMATORS) >= 30


@pytest.mark.parametrize("model", SHIPPED_MODELS)
def test_model(model):
    check_model(model, *SMALL[model])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family(name):
    model, proposal = FAMILIES[name]
    t = build(model, SMALL[model][0], proposal)
    check_family(t.family, t.x, t.phi, R=2000, name=name)


def _bias_param(e: str):
    marks = () if e in FAST_BIAS else pytest.mark.slow
    return pytest.param(e, marks=marks)


@pytest.mark.parametrize("estimator", SHIPPED_ESTIMATORS)
def test_estimator_structure(estimator):
    check_estimator(estimator, small_target(target_for(estimator)), R=6)


@pytest.mark.parametrize("estimator", [_bias_param(e) for e in SHIPPED_ESTIMATORS if e in UNBIASED])
def test_unbiased_estimator_passes_and_its_broken_variant_is_rejected(estimator):
    report = check_estimator(estimator, small_target(target_for(estimator)), R=2000, unbiased=True)
    assert report.pvalues["negative_control"] < 0.001 < report.pvalues["bias"]


def test_float32_targets_keep_float64_references():
    t = build("categorical_vae", *SMALL["categorical_vae"], dtype=torch.float32)
    assert t.reference("phi_elbo").value.dtype == torch.float64
