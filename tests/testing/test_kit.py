"""The conformance kit on plugins (``examples/my_model.py`` and an inverse-CDF categorical family), validate's one-line
refusals of what a family cannot serve, and the kit's own negative controls (it must reject broken code).

Stochastic checks: tests at α = 0.001 (``gradbench.testing.ALPHA``) with seed 0, scaled by the Monte Carlo s.e.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tests.testing.icdf_plugin
from gradbench.run.plan import SuiteError, load_suite
from gradbench.testing import ConformanceError, build, check_estimator, check_family, check_model
from tests.run.test_plan import write

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CAT = {"latents": 2, "classes": 4, "data_dim": 8, "n_data": 3}
CAT_Q = {"logit_noise": 0.5}


@pytest.fixture
def factor(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import my_model  # noqa: F401

    return build("factor", {"n_data": 2}, {"mean_shift": 0.3})


def test_kit_passes_the_example_plugin(factor):
    check_model("factor", {"n_data": 2}, {"mean_shift": 0.3})
    check_family(factor.family, factor.x, factor.phi)
    report = check_estimator("coupled_isir", factor, {"K": 8}, R=1000, unbiased=True)
    assert report.pvalues["negative_control"] < 0.001 < report.pvalues["bias"]


@pytest.mark.parametrize("estimator, params", [("rloo", {"S": 2}), ("nvil", {"warmup": 20}), ("sum_and_sample", {"m": 3})])
def test_inverse_cdf_family_estimators_are_unbiased(estimator, params):
    """rloo and nvil draw through the family's own sampler (one uniform per latent here), sum_and_sample through its
    log q: each passes the bias test against the enumerated ∇φ ELBO, and its broken variant is rejected."""
    t = build("categorical_icdf", CAT, CAT_Q)
    report = check_estimator(estimator, t, params, R=2000, unbiased=True)
    assert report.pvalues["negative_control"] < 0.001 < report.pvalues["bias"]
    assert report.pvalues["nonfinite_fraction"] == 0


def test_inverse_cdf_family_and_model_conform():
    t = build("categorical_icdf", CAT, CAT_Q)
    check_family(t.family, t.x, t.phi)
    check_model("categorical_icdf", CAT, CAT_Q)


SUITE = """\
name: refuse
seed: 0
replicates: 10
plugins: [tests.testing.icdf_plugin]
targets:
  - model: {model}
    params: {{latents: 2, classes: 4, data_dim: 8, n_data: 3}}
estimators:
  - name: {estimator}
protocols: [{protocols}]
"""


@pytest.mark.parametrize("model, estimator, protocols, missing", [
    ("categorical_icdf", "gumbel_softmax", "bias", "gumbel_noise"),
    ("categorical_icdf", "straight_through", "bias", "gumbel_noise"),
    ("categorical_icdf_nologits", "rloo", "bias", "logits"),
    ("categorical_icdf_nologits", "sum_and_sample", "bias", "logits"),
])
def test_validate_refuses_what_the_family_cannot_serve_in_one_line(tmp_path, model, estimator, protocols, missing):
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, SUITE.format(model=model, estimator=estimator, protocols=protocols)))
    message = str(info.value)
    assert "\n" not in message and f"estimator {estimator!r} needs {missing}," in message


def test_validate_refuses_vimco_without_an_iwae_reference_only_when_a_protocol_needs_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    text = SUITE.replace("tests.testing.icdf_plugin", "my_model").replace("model: {model}", "model: factor").replace(
        "{{latents: 2, classes: 4, data_dim: 8, n_data: 3}}", "{{n_data: 2}}")
    with pytest.raises(SuiteError, match=r"estimator 'vimco' needs iwae_reference, which targets\[0\]"):
        load_suite(write(tmp_path, text.format(estimator="vimco", protocols="bias")))
    load_suite(write(tmp_path, text.format(estimator="vimco", protocols="snr")))  # no reference needed


def test_rloo_and_nvil_run_on_the_inverse_cdf_family_with_nonzero_gradients():
    from gradbench.registry import ESTIMATORS
    from gradbench.seeding import make_generator

    t = build("categorical_icdf", CAT, CAT_Q)
    for name in ("rloo", "nvil"):  # (a replicate is 0 when its S draws tie; unbiasedness is tested above)
        g = ESTIMATORS[name].fn(t, 200, make_generator(0)).grads
        assert float((g != 0).any(1).double().mean()) > 0.5, f"{name}: mostly all-zero gradients"


# -- negative controls: the kit rejects broken code ------------------------------------------------------------
class IgnoresNoise(tests.testing.icdf_plugin.InverseCDFCategorical):
    def sample(self, phi, x, noise):
        return super().sample(phi, x, torch.rand(noise.shape, dtype=noise.dtype))  # hidden global RNG


class OffByOne(tests.testing.icdf_plugin.InverseCDFCategorical):
    def sample(self, phi, x, noise):
        z = super().sample(phi, x, noise)
        return z.reshape(*z.shape[:-1], -1, self.classes).roll(1, -1).flatten(-2)  # class c drawn as c + 1


class NoiseIgnorant(tests.testing.icdf_plugin.InverseCDFCategorical):
    capabilities = tests.testing.icdf_plugin.CAPS | {"gumbel_noise"}  # declared, not true


@pytest.mark.parametrize("family_cls, rule", [
    (IgnoresNoise, "differs for the same noise"),
    (OffByOne, "samples do not follow log_prob"),
    (NoiseIgnorant, "declares 'gumbel_noise' but"),
])
def test_kit_rejects_a_broken_family(family_cls, rule):
    t = build("categorical_icdf", CAT, CAT_Q)
    fam = family_cls(2, 4, 8)
    with pytest.raises(ConformanceError, match=rule):
        check_family(fam, t.x, t.phi)


def test_kit_rejects_a_biased_estimator():
    """REINFORCE with a baseline that includes the sample itself (f_s − mean_t f_t: scales the gradient by (S − 1)/S):
    biased; the bias test must reject it."""
    from gradbench.estimators import discrete

    def wrong_score_rloo(target, R, gen, S=2):
        ell = discrete.logits(target)
        p = discrete.probs(target, ell)
        b = discrete.sample_q(target, (R, S), gen)
        f = discrete.signal(target, b)
        centred = f - f.mean(1, keepdim=True)
        return discrete._sample(target, (centred.unsqueeze(-1) * (b - p)).mean(1), S * target.n_data)

    t = build("categorical_icdf", CAT, CAT_Q)
    with pytest.raises(ConformanceError, match="bias test rejects"):
        check_estimator(wrong_score_rloo, t, R=2000, unbiased=True)


# -- rare states: every sampler a verdict depends on, or a stated "not checked" ---------------------------------
def test_rare_state_guard_reads_q_and_the_exact_posterior_or_says_not_checked():
    from gradbench.protocols import measure as cell
    from gradbench.references.enumeration import posterior_marginals

    t = build("categorical_icdf", CAT, CAT_Q)
    table = t.state_probabilities()
    assert set(table) == {"q", "posterior"} and all(v.dtype == torch.float64 for v in table.values())
    post = posterior_marginals(t.model, t.theta, t.x)
    assert cell.rare_value_probability(t, ("posterior",)) == pytest.approx(float(post.min()), rel=1e-12)
    q = torch.softmax(tests.testing.icdf_plugin.blocks(t.family.logits(t.phi, t.x), 4), -1)
    assert cell.rare_value_probability(t, ("q",)) == pytest.approx(float(q.min()), rel=1e-12)
    assert cell.rare_state_unchecked(t, cell.rare_value_probability(t)) == ""

    bare = build("categorical_icdf_nologits", CAT, CAT_Q)  # discrete, but no logits and no state_probabilities
    assert "state_probabilities" not in bare.capabilities
    q_min = cell.rare_value_probability(bare)
    assert q_min is None and "rare latent values not checked" in cell.rare_state_unchecked(bare, q_min)
