"""The ``sbn`` target: model exactness (tier 1), sampling laws (tier 2, α = 0.001, seed 0), and the
θ-estimators end to end against the enumerated ∇θ log p(x) on k = 10 (digits and synthetic data)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import stats as sps

from gradbench.contracts import ComposedTarget, per_replicate_grad
from gradbench.core import GradSample
from gradbench.data import DataSpec, load
from gradbench.estimators import coupled, importance, posterior, sumo, variational
from gradbench.families.bernoulli import BernoulliProposal
from gradbench.models.sbn import PARAMS, PROPOSAL, SBN, SBNParams, build
from gradbench.protocols import ProtocolContext
from gradbench.protocols.bias import bias
from gradbench.protocols.meeting import meeting
from gradbench.references import enumeration as en
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

ALPHA = 0.001
CONFIGS = [([3], "linear"), ([2, 2], "linear"), ([3], "mlp"), ([2, 2], "mlp")]


def tiny(layers, conditionals, d=5, n=3, seed=1, **proposal) -> ComposedTarget:
    return build(SBNParams(layers=layers, conditionals=conditionals, hidden=3, data_dim=d, n_data=n), BernoulliProposal(**proposal), seed)


# -- tier 1: the model ------------------------------------------------------------------------
@pytest.mark.parametrize("layers,cond", CONFIGS)
def test_log_joint_is_sum_of_bernoulli_terms(layers, cond):
    """log p(x, z) against torch.distributions.Bernoulli layer by layer (top-down), for a batch of z."""
    t = tiny(layers, cond)
    m, th = t.model, t.theta
    z = (torch.rand(4, 2, t.n_data, t.latent_dim, generator=make_generator(0), dtype=torch.float64) < 0.5).double()
    z1, top = m.split(z)
    bern = lambda logits, y: torch.distributions.Bernoulli(logits=logits).log_prob(y).sum(-1)
    expect = bern(th["prior_logits"].expand_as(top), top)
    if len(layers) == 2:
        expect = expect + bern(m._logits(th, "z1", top), z1)
    expect = expect + bern(m._logits(th, "x", z1), t.x.expand(*z.shape[:-1], -1))
    got = t.log_joint(z)
    assert got.shape == (4, 2, t.n_data)
    torch.testing.assert_close(got, expect, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(m.log_prior(th, z) + m.log_lik(th, t.x, z), got, rtol=0, atol=0)


def test_log_joint_is_stable_for_large_logits():
    m = SBN(2, (1,), "linear")
    th = {"prior_logits": torch.tensor([800.0], dtype=torch.float64), "x_W": torch.tensor([[-900.0], [900.0]], dtype=torch.float64),
          "x_b": torch.zeros(2, dtype=torch.float64)}
    z = torch.ones(1, 1, dtype=torch.float64)
    assert torch.isfinite(m.log_joint(th, torch.tensor([[1.0, 1.0]], dtype=torch.float64), z)).all()
    assert abs(float(m.log_joint(th, torch.tensor([[0.0, 1.0]], dtype=torch.float64), z))) < 1e-300


@pytest.mark.parametrize("layers,cond", CONFIGS)
def test_fast_weighted_gradient_equals_vmap_grad(layers, cond):
    """The closed-form ``weighted_grad_log_joint`` against torch.func vmap(grad) of the pure log_joint."""
    t = tiny(layers, cond)
    z, log_q = t.sample_proposal((6, 4), make_generator(0))
    w = torch.softmax(t.log_joint(z) - log_q, 1)
    x, model = t.x, t.model

    def surrogate(theta, z1, w1):
        return (w1 * model.log_joint(theta, x, z1)).sum()

    generic = t.layout.flatten(per_replicate_grad(surrogate, t.theta, z, w), batch=(6,))
    torch.testing.assert_close(t.weighted_grad_log_joint(z, w), generic, rtol=1e-12, atol=1e-12)
    # broadcasting weights over a leading dimension, as the estimators do
    torch.testing.assert_close(t.weighted_grad_log_joint(z[:1], w), t.weighted_grad_log_joint(z[:1].expand_as(z), w),
                               rtol=0, atol=0)


# -- tier 2: ancestral sampling ---------------------------------------------------------------
def _joint_chi2_pvalue(model: SBN, theta, x: torch.Tensor, z: torch.Tensor) -> float:
    """Pearson χ² of the counts of (x, z) configurations against exp(log p(x, z)) over all of them."""
    d, k = x.shape[1], z.shape[1]
    codes = torch.cat([x, z], 1).long() @ (2 ** torch.arange(d + k))
    counts = torch.bincount(codes, minlength=2 ** (d + k)).double()
    configs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d + k)), dtype=torch.float64).flip(-1)  # code order
    probs = torch.exp(model.log_joint(theta, configs[:, :d], configs[:, d:].unsqueeze(0)).squeeze(0))
    assert abs(float(probs.sum()) - 1) < 1e-12
    expected = len(x) * probs
    return float(sps.chi2.sf(float(((counts - expected) ** 2 / expected).sum()), len(probs) - 1))


@pytest.mark.parametrize("layers,cond", [([2], "linear"), ([1, 1], "mlp")])
def test_sample_joint_frequencies_match_joint_probabilities(layers, cond):
    t = tiny(layers, cond, d=2)
    x, z = t.model.sample_joint(t.theta, 20_000, make_generator(0))
    assert x.shape == (20_000, 2) and z.shape == (20_000, t.latent_dim)
    assert _joint_chi2_pvalue(t.model, t.theta, x, z) > ALPHA


def test_sampler_with_swapped_layers_is_detected():
    """Negative control: the two latent layers of a [1, 1] net returned in swapped order."""
    t = tiny([1, 1], "mlp", d=2)
    x, z = t.model.sample_joint(t.theta, 20_000, make_generator(0))
    assert _joint_chi2_pvalue(t.model, t.theta, x, z.flip(-1)) < ALPHA


# -- build ------------------------------------------------------------------------------------
def test_build_contract_and_validation():
    assert PARAMS is SBNParams and PROPOSAL is BernoulliProposal
    t = tiny([2, 2], "mlp")
    assert {"binary_latent", "exact_posterior", "score", "log_prob", "enumerate"} <= t.capabilities
    assert "reparam" not in t.capabilities
    again = tiny([2, 2], "mlp")
    assert all(torch.equal(t.theta[n], again.theta[n]) for n in t.theta) and torch.equal(t.x, again.x)
    assert bool(((t.x == 0) | (t.x == 1)).all())
    f32 = build(SBNParams(layers=[2, 2], conditionals="mlp", hidden=3, data_dim=5, n_data=3), BernoulliProposal(), 1, dtype=torch.float32)
    assert f32.x.dtype == torch.float32 and f32.reference().value.dtype == torch.float64
    torch.testing.assert_close(f32.theta["x_V"].double(), t.theta["x_V"], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValidationError):
        SBNParams(layers=[10, 7])
    with pytest.raises(ValueError, match="data_dim"):
        build(SBNParams(layers=[2]), BernoulliProposal(), 0)
    with pytest.raises(ValueError, match="binary"):
        build(SBNParams(layers=[2]), BernoulliProposal(), 0, data=np.full((3, 4), 0.5))
    with pytest.raises(ValueError, match="data_dim"):
        build(SBNParams(layers=[2], data_dim=5), BernoulliProposal(), 0, data=np.ones((3, 4)))
    mf = build(SBNParams(layers=[3], data_dim=4, n_data=2), BernoulliProposal(family="bernoulli_mean_field"), 0)
    assert mf.phi["logits"].shape == (2, 3)


def test_unperturbed_proposal_has_exact_marginals_but_biased_elbo():
    """q fitted to the posterior marginals reproduces them (N ≤ d + 1), yet ∇θ ELBO ≠ ∇θ log p(x): explaining away."""
    t = build(SBNParams(layers=[6], data_dim=12, n_data=4), BernoulliProposal(), 0)
    marg = en.posterior_marginals(t.model, t.theta, t.x)
    torch.testing.assert_close(t.family.probs(t.phi, t.x), marg.clamp(3.3e-4, 1 - 3.3e-4), rtol=1e-4, atol=1e-5)
    g, g_elbo = t.reference("theta").value, t.reference("theta_elbo").value
    assert float(torch.linalg.norm(g - g_elbo) / torch.linalg.norm(g)) > 1e-3


# -- tier 2: every θ-estimator end to end on k = 10 --------------------------------------------
ESTIMATORS = [
    ("oracle", posterior.oracle, {}, True),
    ("coupled_isir", coupled.coupled_isir, {"K": 8}, True),
    ("coupled_pimh", coupled.coupled_pimh, {"K": 8}, True),
    ("sumo", sumo.sumo, {}, True),
    ("iwae", importance.iwae, {"K": 2}, False),
    ("elbo", variational.elbo, {"S": 1}, False),
]
R_E2E = 1000


@pytest.fixture(scope="module", params=["digits", "synthetic"])
def sbn10(request) -> ComposedTarget:
    if request.param == "digits":
        x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic"))
        return build(SBNParams(layers=[10]), BernoulliProposal(), 0, data=x)
    return build(SBNParams(layers=[10], data_dim=64, n_data=10), BernoulliProposal(), 0)


@pytest.mark.parametrize("name,fn,params,unbiased", ESTIMATORS, ids=[e[0] for e in ESTIMATORS])
def test_theta_estimators_against_enumerated_gradient(sbn10, name, fn, params, unbiased):
    """Unbiased estimators pass the bias test against the enumerated ∇θ log p(x) (α = 0.001, seed 0);
    iwae K = 2 and elbo (the negative controls: q is factorised, the posterior is not) are rejected."""
    sample: GradSample = fn(sbn10, R_E2E, make_generator(0), **params)
    ref = sbn10.reference("theta")
    assert ref.kind == "enumerated"
    ok = ~sample.diagnostics["nonfinite"]  # censored replicates (sumo: 𝒦 > max_terms) are left out, as in `bias`
    test = bias_test(sample.grads[ok].numpy(), ref.value.numpy(), float(torch.finfo(torch.float64).eps), np.random.default_rng(0),
                     atoms=True)  # binary latents: unsampled rare states are no deterministic bias
    assert (test.pvalue > ALPHA) == unbiased, f"{name}: p = {test.pvalue:.3g} ({test.method})"
    if name.startswith("coupled"):
        tau = sample.diagnostics["tau"]
        assert bool(torch.isfinite(tau.double()).all()) and not bool(sample.diagnostics["censored"].any())
        rows = {r["metric"]: r for r in meeting(sample, None, ProtocolContext(seed=0, eps=2.2e-16))}
        assert math.isfinite(rows["tau_mean"]["value"]) and rows["n_censored"]["value"] == 0
        assert rows["tau_max"]["value"] >= 2  # lag 1: the chains cannot meet before t = 2
    rows = {r["metric"]: r for r in bias(sample, ref, ProtocolContext(seed=0, eps=2.2e-16)) if r["param_group"] == "all"}
    assert math.isfinite(rows["rel_bias"]["value"]) and rows["rel_bias"]["stderr"] > 0


def test_shipped_suite_entries_validate():
    """suites/sbn-bias.yaml: its target blocks validate against PARAMS / PROPOSAL / DataSpec and build,
    its estimators and protocols exist with valid parameters (the registry wiring is the lead's)."""
    import itertools
    from pathlib import Path

    import yaml

    from gradbench import registry

    suite = yaml.safe_load((Path(__file__).parents[2] / "suites" / "sbn-bias.yaml").read_text())
    for entry in suite["targets"]:
        assert entry["model"] == "sbn"
        x, _ = load(DataSpec(**entry["data"]))
        t = build(PARAMS(**entry["params"]), PROPOSAL(**entry["proposal"]), suite["seed"], data=x)
        assert t.latent_dim == 10 and t.n_data == 10
    for e in suite["estimators"]:
        grid = {k: v if isinstance(v, list) else [v] for k, v in e.get("params", {}).items()}
        for combo in itertools.product(*grid.values()):
            registry.ESTIMATORS[e["name"]].params(**dict(zip(grid, combo)))
    assert set(suite["protocols"]) <= set(registry.PROTOCOLS)


@pytest.mark.slow
def test_shipped_suite_table(capsys):
    """The bias table of suites/sbn-bias.yaml computed directly (same targets, estimators, replicates and
    seed; until the registry wires ``sbn``): ``pytest tests/models/test_sbn.py -m slow -k table -s``.
    Unbiased estimators pass at α = 0.001; elbo and iwae K = 2 are rejected on both targets."""
    import itertools
    from pathlib import Path

    import yaml

    fns = {"oracle": posterior.oracle, "elbo": variational.elbo, "iwae": importance.iwae, "coupled_isir": coupled.coupled_isir,
           "coupled_pimh": coupled.coupled_pimh, "sumo": sumo.sumo}
    suite = yaml.safe_load((Path(__file__).parents[2] / "suites" / "sbn-bias.yaml").read_text())
    ctx = ProtocolContext(seed=0, eps=2.2e-16)
    lines = []
    for entry in suite["targets"]:
        x, _ = load(DataSpec(**entry["data"]))
        t = build(PARAMS(**entry["params"]), PROPOSAL(**entry["proposal"]), suite["seed"], data=x)
        ref = t.reference("theta")
        for e in suite["estimators"]:
            grid = {k: v if isinstance(v, list) else [v] for k, v in e.get("params", {}).items()}
            for combo in itertools.product(*grid.values()):
                kw = dict(zip(grid, combo))
                s = fns[e["name"]](t, suite["replicates"], make_generator(suite["seed"]), **kw)
                r = {r["metric"]: r for r in bias(s, ref, ctx) if r["param_group"] == "all"}
                p = r["bias_pvalue"]["value"]
                tau = ""
                if "tau" in s.diagnostics:
                    m = {r["metric"]: r for r in meeting(s, None, ctx)}
                    tau = f"{m['tau_mean']['value']:.2f} ± {m['tau_mean']['stderr']:.2f} (max {m['tau_max']['value']:.0f})"
                lines.append(f"{entry['params']['layers']!s:8} {e['name']:13} {kw!s:10} "
                             f"{r['rel_bias']['value']:.4f} ± {r['rel_bias']['stderr']:.4f}  p = {p:.3g}  {tau}")
                if e["name"] in ("oracle", "coupled_isir", "coupled_pimh", "sumo"):
                    assert p > ALPHA, lines[-1]
                if e["name"] == "elbo" or (e["name"] == "iwae" and kw["K"] == 2):
                    assert p < ALPHA, lines[-1]
    with capsys.disabled():
        print("\nlayers   estimator     params     rel_bias ± s.e.    p (H0: unbiased)  tau_mean ± s.e.\n" + "\n".join(lines))


def test_rare_latent_values_are_flagged_when_R_cannot_see_them():
    """``rare_state_warning``: q with a latent value of probability q_min is flagged when R·q_min < log(10³)
    (the value is then absent from the sample with probability > 1e-3); control: the same target with R large
    enough that R·q_min ≥ log(10³) is not flagged, and a shift that makes the logits extreme lowers q_min."""
    from gradbench.core import GradSample
    from gradbench.protocols.measure import rare_state_warning

    t = tiny([3], "linear", logit_shift=6.0)
    q = t.family.probs(t.encoder_params(), t.x).double()
    q_min = float(torch.cat([q, 1 - q]).min())
    assert q_min < 1e-2  # logits shifted by 6: P(z_j = 0) ≈ e⁻⁶ at most

    def sample(R: int) -> GradSample:
        return GradSample(torch.zeros(R, t.layout.size, dtype=torch.float64), t.layout, torch.ones(R, dtype=torch.float64))

    small = int(6.907755278982137 / q_min) - 1
    assert "rare latent values" in rare_state_warning(t, sample(small))
    assert rare_state_warning(t, sample(int(6.907755278982137 / q_min) + 1)) == ""
    t0 = tiny([3], "linear")
    q0 = t0.family.probs(t0.encoder_params(), t0.x).double()
    assert float(torch.cat([q0, 1 - q0]).min()) > q_min
