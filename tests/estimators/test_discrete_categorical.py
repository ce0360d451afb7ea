"""Discrete estimators on categorical latents and the sum-and-sample estimator, against enumerated
references: unbiased estimators pass the bias test (α = 0.001, seed 0), the relaxed ones and broken variants
are rejected on the same target and seed, and ``validate`` refuses the binary-only estimators on categorical
targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.estimators import discrete, score
from gradbench.estimators import sum_and_sample as ss
from gradbench.models.categorical import build
from gradbench.models.params import BernoulliProposal, CategoricalProposal, CategoricalVAEParams, SBNParams
from gradbench.models.sbn import build as build_sbn
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

ALPHA = 0.001
EPS64 = float(torch.finfo(torch.float64).eps)
R = 4000


def _pvalue(grads: torch.Tensor, ref: torch.Tensor) -> float:
    return bias_test(grads.numpy(), ref.numpy(), EPS64, np.random.default_rng(0), atoms=True).pvalue


def cat_target():
    """k = 2 latents × C = 4 classes (16 states), 8-dimensional synthetic data, N = 3, perturbed linear encoder."""
    return build(CategoricalVAEParams(latents=2, classes=4, data_dim=8, n_data=3), CategoricalProposal(logit_noise=0.5), 0)


def sbn_target():
    return build_sbn(SBNParams(layers=[4], data_dim=8, n_data=3), BernoulliProposal(logit_noise=0.5), 0)


SLOW = pytest.mark.slow
UNBIASED = [  # in CI: rloo, sum_and_sample and plain REINFORCE; the rest with -m slow
    (discrete.rloo, {"S": 2}, ()), (discrete.nvil, {"warmup": 20}, SLOW),
    (ss.sum_and_sample, {"m": 3}, ()), (ss.sum_and_sample, {"m": 1, "baseline": "none"}, SLOW),
    (score.reinforce, {"kl": "mc"}, ()), (score.reinforce, {"kl": "mc", "baseline": "moving_average", "warmup": 20}, SLOW),
    (score.reinforce, {"kl": "mc", "baseline": "point"}, SLOW), (score.reinforce, {"kl": "mc", "S": 3, "baseline": "optimal"}, SLOW),
]


@pytest.mark.parametrize("fn,params", [pytest.param(f, p, marks=m, id=f"{f.__name__}{p}") for f, p, m in UNBIASED])
def test_unbiased_estimators_pass_on_categorical(fn, params):
    t = cat_target()
    sample = fn(t, R, make_generator(0), **params)
    assert sample.wrt == "phi_elbo" and _pvalue(sample.grads, t.reference("phi_elbo").value) > ALPHA


@pytest.mark.slow
def test_vimco_is_unbiased_for_the_enumerated_iwae_gradient_on_categorical():
    t = cat_target()
    assert _pvalue(score.vimco(t, R, make_generator(0), K=2).grads, t.reference("phi_iwae2").value) > ALPHA


@pytest.mark.parametrize("name", ["gumbel_softmax", pytest.param("straight_through", marks=SLOW)])
def test_relaxed_estimators_are_rejected_on_categorical(name):
    t = cat_target()
    assert _pvalue(getattr(discrete, name)(t, R, make_generator(0), tau=0.5).grads, t.reference("phi_elbo").value) < ALPHA


def test_straight_through_forward_is_the_hard_sample():
    """The categorical ST estimator evaluates f at onehot(argmax(ℓ + g)), the family's own Gumbel-max draw."""
    t = cat_target()
    u = t.draw_noise((5,), make_generator(3))
    ell = discrete.logits(t)
    torch.testing.assert_close(discrete.draw(t, ell, u), t.rsample(t.phi, u), rtol=0, atol=0)
    soft = torch.softmax((ell + discrete.gumbel(u)).reshape(5, 3, 2, 4) / 1e-3, -1).reshape(5, 3, 8)
    torch.testing.assert_close(soft, t.rsample(t.phi, u), rtol=0, atol=1e-6)  # τ → 0: relaxation → the hard sample


# -- sum-and-sample: exactness, unbiasedness on binary targets, negative controls -----------------
def test_sum_and_sample_over_all_states_is_exact():
    t = cat_target()
    g = ss.sum_and_sample(t, 5, make_generator(0), m=16).grads
    torch.testing.assert_close(g, t.reference("phi_elbo").value.expand(5, -1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("which", [pytest.param("sbn", marks=SLOW), "toy"])
def test_sum_and_sample_is_unbiased_on_binary_targets(which):
    from gradbench.models import bernoulli_toy as toy
    from gradbench.models.params import BernoulliToyParams

    t = sbn_target() if which == "sbn" else toy.build(BernoulliToyParams(dim=3, t=0.3, logit=0.5, logit_spread=3.0))
    assert _pvalue(ss.sum_and_sample(t, R, make_generator(0), m=2).grads, t.reference("phi_elbo").value) > ALPHA


def _sum_and_sample_broken(t, R, gen, weight: bool):
    """weight: the sampled term without its factor (1 − Q_n); else: the summed part alone (the sample dropped)."""
    states, q, top, top_q = ss.summed_states(t, 3)
    idx, _rest = ss.sample_complement(q, top, R, gen)
    p = discrete.probs(t, discrete.logits(t))
    z_top, b = states[top], states[idx]
    summed = (top_q * discrete.signal(t, z_top)).unsqueeze(-1).mul(z_top - p).sum(0)
    sampled = discrete.signal(t, b).unsqueeze(-1) * (b - p) if weight else torch.zeros_like(b)
    return discrete.to_phi(t, summed + sampled)


@pytest.mark.parametrize("weight", [True, False], ids=["no_1-Q_weight", "no_sampled_term"])
def test_broken_sum_and_sample_is_rejected(weight):
    t = cat_target()
    g = _sum_and_sample_broken(t, R, make_generator(0), weight)
    assert _pvalue(g, t.reference("phi_elbo").value) < ALPHA


def test_broken_variant_reproduces_the_estimator_when_repaired():
    """The negative control's pieces are the estimator's: with the weight restored it equals sum_and_sample (β = 0)."""
    t = cat_target()
    states, q, top, top_q = ss.summed_states(t, 3)
    idx, rest = ss.sample_complement(q, top, 7, make_generator(0))
    p = discrete.probs(t, discrete.logits(t))
    z_top, b = states[top], states[idx]
    g = discrete.to_phi(t, (top_q * discrete.signal(t, z_top)).unsqueeze(-1).mul(z_top - p).sum(0)
                        + (rest * discrete.signal(t, b)).unsqueeze(-1) * (b - p))
    torch.testing.assert_close(g, ss.sum_and_sample(t, 7, make_generator(0), m=3, baseline="none").grads)


# -- θ-estimators run unchanged; binary-only estimators are refused -------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("coupled_isir", {}), ("sumo", {})])
def test_unbiased_theta_estimators_run_on_categorical(name, params):
    t = cat_target()
    sample = registry.ESTIMATORS[name].fn(t, 1000, make_generator(0), **params)
    assert _pvalue(sample.grads, t.exact_grad()) > ALPHA


@pytest.mark.slow
def test_iwae_runs_and_its_bias_is_detected_on_categorical():
    t = cat_target()
    sample = registry.ESTIMATORS["iwae"].fn(t, R, make_generator(0), K=2)
    assert torch.isfinite(sample.grads).all() and _pvalue(sample.grads, t.exact_grad()) < ALPHA  # biased O(1/K)


@pytest.mark.parametrize("name", ["arm", "disarm", "rebar", "relax", "wake_sleep", "reweighted_wake_sleep"])
def test_binary_only_estimators_are_refused_on_categorical(name, tmp_path):
    from gradbench.run.plan import load_suite

    with pytest.raises(TypeError, match="binary"):
        getattr(discrete, name)(cat_target(), 2, make_generator(0))
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nreplicates: 10\ntargets:\n  - model: categorical_vae\n"
                     "    params: {latents: 2, classes: 3, data_dim: 4}\n    proposal: {}\n"
                     f"estimators:\n  - name: {name}\n  - name: rloo\nprotocols: [bias]\n")
    with pytest.raises(Exception, match=f"{name}.*binary_latent"):
        load_suite(suite)
    suite.write_text(suite.read_text().replace(f"  - name: {name}\n", "  - name: sum_and_sample\n  - name: gumbel_softmax\n"))
    assert len(load_suite(suite)[1]) == 3  # the categorical-capable ones are accepted
