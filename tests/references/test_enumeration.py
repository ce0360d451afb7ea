"""Enumerated references (gradbench.references.enumeration): exact against brute force and finite
differences (tier 1, float64), exact posterior sampling and the estimated IWAE_K reference against
their exact laws (tier 2: α = 0.001, seed 0), each with a negative control."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench.contracts import ComposedTarget, Objective
from gradbench.families.bernoulli import BernoulliEncoder, BernoulliProposal
from gradbench.models.sbn import SBN, SBNParams, build
from gradbench.references import enumeration as en
from gradbench.seeding import derive_seed, make_generator
from tests.differences import central_differences
from tests.references.recording import record_blocks
from tests.references.twins import float32_twins

ALPHA = 0.001
CONFIGS = [([3], "linear"), ([2, 2], "linear"), ([3], "mlp"), ([2, 2], "mlp")]


def tiny(layers: list[int], conditionals: str, d: int = 5, n: int = 3, seed: int = 1, **proposal) -> ComposedTarget:
    params = SBNParams(layers=layers, conditionals=conditionals, hidden=3, data_dim=d, n_data=n)
    return build(params, BernoulliProposal(**proposal), seed)


# -- an independent brute-force evaluation: numpy, a Python loop over states ------------------
def _np(theta):
    return {k: v.detach().numpy() for k, v in theta.items()}


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _bern_prob(y, logits):
    p = _sig(logits)
    return float(np.prod(np.where(y > 0.5, p, 1 - p)))


def _brute_logits(th, model: SBN, name: str, u):
    if model.conditionals == "linear":
        return th[f"{name}_W"] @ u + th[f"{name}_b"]
    return th[f"{name}_V"] @ np.tanh(th[f"{name}_U"] @ u + th[f"{name}_c"]) + th[f"{name}_b"]


def brute_joint(model: SBN, th, x_n, z) -> float:
    """p(x_n, z) as a product of Bernoulli probabilities (no logs, no torch)."""
    k1 = model.layers[0]
    z1, top = (z[:k1], z[k1:]) if len(model.layers) == 2 else (z, z)
    p = _bern_prob(top, th["prior_logits"])
    if len(model.layers) == 2:
        p *= _bern_prob(z1, _brute_logits(th, model, "z1", top))
    return p * _bern_prob(x_n, _brute_logits(th, model, "x", z1))


def brute_states(k: int):
    return [np.array(bits[::-1], dtype=float) for bits in itertools.product((0, 1), repeat=k)]  # bit 0 first


# -- states and tables ------------------------------------------------------------------------
def test_states_match_latent_space_order():
    from gradbench.contracts import LatentSpace

    assert torch.equal(en.binary_states(5), LatentSpace("binary", 5).states())
    assert torch.equal(en.binary_states(5, 7, 19), en.binary_states(5)[7:19])
    with pytest.raises(ValueError):
        en.binary_states(17)


@pytest.mark.parametrize("layers,cond", CONFIGS)
def test_log_joint_table_matches_brute_force(layers, cond):
    t = tiny(layers, cond)
    th, x = _np(t.theta), t.x.numpy()
    table = en.log_joint_table(t.model, t.theta, t.x)
    brute = np.array([[math.log(brute_joint(t.model, th, x[n], z)) for n in range(len(x))] for z in brute_states(t.latent_dim)])
    np.testing.assert_allclose(table.numpy(), brute, rtol=1e-12, atol=0)
    log_px = sum(math.log(sum(brute_joint(t.model, th, x[n], z) for z in brute_states(t.latent_dim))) for n in range(len(x)))
    assert abs(float(en.log_marginal(t.model, t.theta, t.x)) - log_px) <= 1e-12 * abs(log_px)


def test_chunked_table_equals_one_chunk():
    t = tiny([2, 2], "mlp")
    whole = en.log_joint_table(t.model, t.theta, t.x)
    assert len(list(en.state_chunks(16, 3, 5, chunk_elements=20))) > 1
    torch.testing.assert_close(en.log_joint_table(t.model, t.theta, t.x, chunk_elements=20), whole, rtol=1e-14, atol=0)  # BLAS blocking: last bits


def test_dropped_state_or_wrong_order_is_detected():
    """Negative controls: a table missing one state, or marginals computed with reversed bit order, disagree
    with brute force by far more than the 1e-12 tolerance the real ones meet."""
    t = tiny([3], "linear")
    th, x = _np(t.theta), t.x.numpy()
    states = brute_states(3)
    exact = sum(math.log(sum(brute_joint(t.model, th, x[n], z) for z in states)) for n in range(len(x)))
    dropped = float(torch.logsumexp(en.log_joint_table(t.model, t.theta, t.x)[:-1], 0).sum())
    assert abs(dropped - exact) > 1e-6 * abs(exact)
    post = en.posterior_table(t.model, t.theta, t.x)
    marg = en.posterior_marginals(t.model, t.theta, t.x)
    reversed_marg = post.T @ en.binary_states(3).flip(-1)
    brute_marg = np.array([sum(brute_joint(t.model, th, x[n], z) * z for z in states) / sum(brute_joint(t.model, th, x[n], z) for z in states)
                           for n in range(len(x))])
    np.testing.assert_allclose(marg.numpy(), brute_marg, rtol=1e-12, atol=1e-15)
    assert np.abs(reversed_marg.numpy() - brute_marg).max() > 1e-3


# -- gradients against central finite differences (float64, 1e-7 relative) ---------------------
def _fd(f, params, layout):
    """Central differences of f at params (tests/differences.py), as a parameter dictionary."""
    return layout.unflatten(central_differences(f, layout, params))


def _rel(a, b, layout) -> float:
    fa, fb = layout.flatten(a), layout.flatten(b)
    return float(torch.linalg.norm(fa - fb) / torch.linalg.norm(fb))


@pytest.mark.parametrize("layers,cond", CONFIGS)
def test_log_marginal_gradient_matches_finite_differences(layers, cond):
    t = tiny(layers, cond)
    _, grad = en.log_marginal_and_grad(t.model, t.theta, t.x)
    fd = _fd(lambda th: float(en.log_marginal(t.model, th, t.x)), t.theta, t.layout)
    assert _rel(grad, fd, t.layout) < 1e-7


def test_log_marginal_gradient_equals_autograd_of_logsumexp():
    t = tiny([2, 2], "mlp")
    _, grad = en.log_marginal_and_grad(t.model, t.theta, t.x)

    def lse(th):
        z = en.binary_states(4).unsqueeze(1).expand(16, t.n_data, 4)
        return torch.logsumexp(t.model.log_joint(th, t.x, z), 0).sum()

    auto = torch.func.grad(lse)(t.theta)
    assert _rel(grad, auto, t.layout) < 1e-13


@pytest.mark.parametrize("layers,cond", CONFIGS)
def test_elbo_gradients_match_finite_differences(layers, cond):
    t = tiny(layers, cond, logit_noise=0.5)
    value, gt, gp = en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)
    elbo_theta = lambda th: float(en.elbo_and_grads(t.model, t.family, th, t.phi, t.x)[0])
    elbo_phi = lambda ph: float(en.elbo_and_grads(t.model, t.family, t.theta, ph, t.x)[0])
    assert _rel(gt, _fd(elbo_theta, t.theta, t.layout), t.layout) < 1e-7
    assert _rel(gp, _fd(elbo_phi, t.phi, t.phi_layout), t.phi_layout) < 1e-7
    # the ELBO itself against brute force: Σ_n Σ_z q (log p − log q)
    th, x = _np(t.theta), t.x.numpy()
    q = torch.exp(t.family.log_prob(t.phi, t.x, en.binary_states(t.latent_dim).unsqueeze(1))).numpy()  # [S, N]
    brute = sum(q[s, n] * (math.log(brute_joint(t.model, th, x[n], z)) - math.log(q[s, n]))
                for s, z in enumerate(brute_states(t.latent_dim)) for n in range(len(x)))
    assert abs(float(value) - brute) <= 1e-12 * abs(brute)


def test_elbo_below_log_marginal_and_iwae_between():
    t = tiny([3], "linear", logit_noise=1.0)
    log_px = float(en.log_marginal(t.model, t.theta, t.x))
    elbo = float(en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)[0])
    iw = [float(en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, K)[0]) for K in (1, 2, 4)]
    assert abs(iw[0] - elbo) <= 1e-12 * abs(elbo)
    assert elbo < iw[1] < iw[2] < log_px


def test_iwae_enumeration_matches_brute_force_tuples():
    t = tiny([2], "linear", n=2, logit_noise=1.0)
    th, x = _np(t.theta), t.x.numpy()
    states = brute_states(2)
    q = torch.exp(t.family.log_prob(t.phi, t.x, en.binary_states(2).unsqueeze(1))).numpy()  # [S, N]
    brute = 0.0
    for n in range(2):
        for i, j in itertools.product(range(4), repeat=2):
            w = [brute_joint(t.model, th, x[n], states[s]) / q[s, n] for s in (i, j)]
            brute += q[i, n] * q[j, n] * math.log(sum(w) / 2)
    value = float(en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, 2)[0])
    assert abs(value - brute) <= 1e-12 * abs(brute)


@pytest.mark.parametrize("wrt", ["theta", "phi"])
def test_iwae_gradients_match_finite_differences(wrt):
    t = tiny([2, 1], "mlp", n=2, logit_noise=1.0)
    _, gt, gp = en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, 3)
    if wrt == "theta":
        f = lambda th: float(en.iwae_and_grads(t.model, t.family, th, t.phi, t.x, 3)[0])
        assert _rel(gt, _fd(f, t.theta, t.layout), t.layout) < 1e-7
    else:
        f = lambda ph: float(en.iwae_and_grads(t.model, t.family, t.theta, ph, t.x, 3)[0])
        assert _rel(gp, _fd(f, t.phi, t.phi_layout), t.phi_layout) < 1e-7


# -- exact posterior sampling -----------------------------------------------------------------
def _chi2_pvalue(z: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson χ² of state counts of z [R, N, k] against probs [S, N], summed over the N independent points."""
    k = z.shape[-1]
    idx = (z.long() * (2 ** torch.arange(k))).sum(-1)  # [R, N]
    R, N = idx.shape
    stat, df = 0.0, 0
    for n in range(N):
        counts = torch.bincount(idx[:, n], minlength=probs.shape[0]).double()
        expected = R * probs[:, n]
        live = expected > 0
        if bool((counts[~live] > 0).any()):
            return 0.0
        stat += float(((counts[live] - expected[live]) ** 2 / expected[live]).sum())
        df += int(live.sum()) - 1
    return float(sps.chi2.sf(stat, df))


def test_sample_posterior_frequencies_match_enumerated_posterior():
    t = tiny([2, 1], "linear", n=2)
    z = t.sample_posterior((20_000,), make_generator(0))
    assert z.shape == (20_000, 2, 3)
    assert _chi2_pvalue(z, en.posterior_table(t.model, t.theta, t.x)) > ALPHA


def test_sampler_with_reversed_bit_order_is_detected():
    t = tiny([2, 1], "linear", n=2)
    z = t.sample_posterior((20_000,), make_generator(0)).flip(-1)
    assert _chi2_pvalue(z, en.posterior_table(t.model, t.theta, t.x)) < ALPHA


# -- the estimated IWAE_K reference -----------------------------------------------------------
def test_vimco_coefficients_match_their_definition():
    log_w = torch.randn(4, 5, 3, generator=make_generator(0), dtype=torch.float64)  # [B, K, N]
    c = en.vimco_coefficients(log_w)
    K = 5
    for k in range(K):
        others = torch.cat([log_w[:, :k], log_w[:, k + 1:]], 1)
        replaced = torch.cat([log_w[:, :k], others.mean(1, keepdim=True), log_w[:, k + 1:]], 1)
        expect = (torch.logsumexp(log_w, 1) - torch.logsumexp(replaced, 1)) - torch.softmax(log_w, 1)[:, k]
        torch.testing.assert_close(c[:, k], expect, rtol=1e-13, atol=1e-13)


def _agreement_pvalue(est, exact) -> float:
    """Max-|z| with Šidák correction over coordinates with non-zero s.e."""
    se = est.stderr.numpy()
    live = se > 0
    z = np.abs(est.value.numpy() - exact.numpy())[live] / se[live]
    return float(-np.expm1(live.sum() * np.log1p(-2 * sps.norm.sf(z.max()))))


@pytest.mark.parametrize("wrt", ["theta", "phi"])
def test_estimated_iwae_reference_agrees_with_enumeration(wrt):
    t = tiny([2, 1], "linear", n=2, logit_noise=1.0)
    obj = Objective(wrt, "iwae", 4)
    _, gt, gp = en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, 4)
    exact = t.layout.flatten(gt) if wrt == "theta" else t.phi_layout.flatten(gp)
    est = en.estimated_iwae_gradient(t, obj, 20_000, seed=0)
    assert est.kind == "estimated"
    assert _agreement_pvalue(est, exact) > ALPHA
    assert t.reference(obj).kind == "enumerated"  # small enough to enumerate: the builder does
    torch.testing.assert_close(t.reference(obj).value, exact, rtol=1e-12, atol=1e-12)


def test_estimated_phi_iwae_without_pathwise_term_is_detected():
    """Negative control: the φ-estimator with its −w̃_k ∇φ log q term dropped (score part only) is biased."""
    t = tiny([2, 1], "linear", n=2, logit_noise=1.0)
    _, _, gp = en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, 4)
    original = en.vimco_coefficients
    try:
        en.vimco_coefficients = lambda log_w: original(log_w) + torch.softmax(log_w, -2)  # type: ignore[assignment]
        est = en.estimated_iwae_gradient(t, Objective("phi", "iwae", 4), 20_000, seed=0)
    finally:
        en.vimco_coefficients = original  # type: ignore[assignment]
    assert _agreement_pvalue(est, t.phi_layout.flatten(gp)) < ALPHA


def test_large_iwae_reference_is_estimated_and_cached():
    t = build(SBNParams(layers=[10], data_dim=8, n_data=2, reference_replicates=200), BernoulliProposal(), 0)
    ref = t.reference("theta_iwae8")
    assert ref.kind == "estimated" and ref.stderr is not None and ref.value.shape == (t.layout.size,)
    assert t.reference("theta_iwae8") is ref
    assert isinstance(t.family, BernoulliEncoder)


def test_sample_table_draws_the_softmax_law():
    """``sample_table`` draws z_n ~ softmax(log_table[:, n]) over the 2ᵏ states, independently over n: Pearson χ²
    goodness of fit of each data point's state counts and of the pair (z_0, z_1) against the product law, at
    α = 0.001 each (20 000 draws, k = 3, seed 0, never tuned). The binary path (k an int: the bits of the state index,
    bit 0 first) and the LatentSpace path give the same states from the same generator, the same seed the same draws;
    a float32 table gives float32 states. Negative control: the same χ² test rejects the law of a table with one
    log-weight moved by 0.3."""
    from gradbench.contracts import LatentSpace

    k, S, B = 3, 8, 20_000
    log_table = torch.randn(S, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_table[:, 1] = log_table[:, 0]  # equal laws: a shared uniform would make z_0 = z_1 always
    z = en.sample_table(log_table, k, (B,), make_generator(0))
    assert z.shape == (B, 2, k) and z.dtype == torch.float64
    space = en.sample_table(log_table, LatentSpace("binary", k), (B,), make_generator(0))
    assert torch.equal(space, z) and torch.equal(en.sample_table(log_table, k, (B,), make_generator(0)), z)
    idx = (z.long() << torch.arange(k)).sum(-1)  # [B, 2] state index
    p = torch.softmax(log_table[:, 0], 0).numpy()

    def chi2_p(counts: np.ndarray, probs: np.ndarray) -> float:
        return float(sps.chisquare(counts, B * probs).pvalue)

    for n in range(2):
        assert chi2_p(np.bincount(idx[:, n].numpy(), minlength=S), p) > 0.001
    pair = np.bincount((idx[:, 0] * S + idx[:, 1]).numpy(), minlength=S * S)
    assert chi2_p(pair, np.outer(p, p).ravel()) > 0.001
    moved = log_table[:, 0].clone()
    moved[0] += 0.3
    assert chi2_p(np.bincount(idx[:, 0].numpy(), minlength=S), torch.softmax(moved, 0).numpy()) < 0.001
    z32 = en.sample_table(log_table.float(), LatentSpace("binary", k), (4,), make_generator(0))
    assert z32.dtype == torch.float32 and en.sample_table(log_table.float(), k, (4,), make_generator(0)).dtype == torch.float32


def test_reference_builders_give_the_enumerated_gradients():
    """The builders of a float32 target compute in float64: ∇θ log p(x) and ∇θ/∇φ ELBO are the enumerated gradients
    of the float64 parameters, flattened in each layout, kind "enumerated"; IWAE_1 is the ELBO. Deterministic (exact
    equality). Negative control: the θ and φ ELBO references are different vectors."""
    t = build(SBNParams(layers=[3], conditionals="linear", hidden=3, data_dim=5, n_data=3), BernoulliProposal(), 1,
              dtype=torch.float32)
    f64 = lambda p: {n: v.double() for n, v in p.items()}
    theta, phi, x = f64(t.theta), f64(t.phi), t.x.double()
    _, g_lm = en.log_marginal_and_grad(t.model, theta, x)
    _, gt, gp = en.elbo_and_grads(t.model, t.family, theta, phi, x)
    builders = en.reference_builders(iwae_replicates=10)
    expected = {"theta": t.layout.flatten(g_lm), "theta_elbo": t.layout.flatten(gt), "phi_elbo": t.phi_layout.flatten(gp)}
    objectives = {"theta": Objective("theta", "log_marginal"), "theta_elbo": Objective("theta", "elbo"),
                  "phi_elbo": Objective("phi", "elbo")}
    for key, value in expected.items():
        ref = builders[key](t, objectives[key])
        assert ref.kind == "enumerated" and ref.value.dtype == torch.float64 and torch.equal(ref.value, value), key
    for wrt in ("theta", "phi"):
        assert torch.equal(builders[f"{wrt}_iwae"](t, Objective(wrt, "iwae", 1)).value, expected[f"{wrt}_elbo"])
    assert not torch.equal(expected["theta_elbo"], expected["phi_elbo"])


def test_enumeration_edges_and_seeds():
    """VIMCO coefficients of one replicate [K, N] are those of the same replicate in a batch [B, K, N]; estimated IWAE
    references need K ≥ 2 (K = 1 is the enumerated ELBO, K = 2 is estimated) and their draws, like exact posterior
    draws, are fixed by the seed (negative control: another seed, other draws); IWAE enumeration refuses a tuple
    space above its limit and says how large it is."""
    log_w = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(en.vimco_coefficients(log_w[1]), en.vimco_coefficients(log_w)[1], rtol=1e-14, atol=0)
    t = tiny([3], "linear", n=2)
    with pytest.raises(ValueError, match=r"^estimated IWAE references need K ≥ 2 \(K = 1 is the enumerated ELBO\)$"):
        en.estimated_iwae_gradient(t, Objective("phi", "iwae", 1), 10, 0)
    draws = [en.estimated_iwae_gradient(t, Objective(wrt, "iwae", 2), 20, s).value
             for wrt in ("theta", "phi") for s in (0, 0, 1)]
    for i in (0, 3):
        assert torch.equal(draws[i], draws[i + 1]) and not torch.equal(draws[i], draws[i + 2])
    posterior = [en.sample_posterior(t.model, t.theta, t.x, (50,), make_generator(s)) for s in (0, 0, 1)]
    assert torch.equal(posterior[0], posterior[1]) and not torch.equal(posterior[0], posterior[2])
    S = en.n_states(t.model.latent)
    K = next(K for K in range(2, 64) if not en.iwae_enumerable(S, K, t.n_data))
    assert en.iwae_enumerable(S, K - 1, t.n_data)
    with pytest.raises(ValueError, match=rf"IWAE_{K} over {S} states per point is too large to enumerate \({S**K} tuples\)"):
        en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, K)


def test_gradients_accumulate_over_state_chunks(monkeypatch):
    """∇θ log p(x) and (ELBO, ∇θ, ∇φ) summed over chunks of 3 states (8 states: chunks 3, 3, 2) equal the one-chunk
    values to rounding (deterministic, 1e-12 relative); negative control: the last chunk alone is far off."""
    t = tiny([3], "linear")
    one_lm = en.log_marginal_and_grad(t.model, t.theta, t.x)
    one_elbo = en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)
    S = en.n_states(t.model.latent)
    monkeypatch.setattr(en, "_chunks", lambda model, x: ((a, min(S, a + 3)) for a in range(0, S, 3)))
    lm = en.log_marginal_and_grad(t.model, t.theta, t.x)
    elbo = en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)
    flat = lambda g, layout: layout.flatten(g)
    pairs = [(lm[0], one_lm[0]), (flat(lm[1], t.layout), flat(one_lm[1], t.layout)), (elbo[0], one_elbo[0]),
             (flat(elbo[1], t.layout), flat(one_elbo[1], t.layout)),
             (flat(elbo[2], t.phi_layout), flat(one_elbo[2], t.phi_layout))]
    for a, b in pairs:
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14 * float(b.abs().max()))
    monkeypatch.setattr(en, "_chunks", lambda model, x: iter([(6, S)]))
    last = en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)
    assert not torch.allclose(flat(last[1], t.layout), flat(one_elbo[1], t.layout), rtol=1e-3)


def test_iwae_builder_enumerates_small_k():
    """IWAE_2 of a small target is enumerated over the K-tuples (kind "enumerated", the ∇ of ``iwae_and_grads`` in
    float64), not the ELBO's gradient (negative control: the two differ)."""
    t = tiny([3], "linear", n=2)
    build_iwae = en.reference_builders()["phi_iwae"]
    f64 = lambda p: {n: v.double() for n, v in p.items()}
    _, gt, gp = en.iwae_and_grads(t.model, t.family, f64(t.theta), f64(t.phi), t.x.double(), 2)
    for wrt, value in (("theta", t.layout.flatten(gt)), ("phi", t.phi_layout.flatten(gp))):
        ref = build_iwae(t, Objective(wrt, "iwae", 2))
        assert ref.kind == "enumerated" and torch.equal(ref.value, value)
        assert not torch.allclose(value, en.elbo_reference(t, Objective(wrt, "elbo")).value, rtol=1e-6)


# -- categorical latents (one-hot states, C^k per data point) ---------------------------------
def _categorical_target(decoder: str = "linear", n: int = 3):
    from gradbench.models.categorical import build as build_categorical
    from gradbench.models.params import CategoricalProposal, CategoricalVAEParams

    params = CategoricalVAEParams(latents=2, classes=3, decoder=decoder, hidden=3, data_dim=4, n_data=n)
    return build_categorical(params, CategoricalProposal(logit_noise=0.7), 2)


def _one_hot_product(k: int, C: int) -> np.ndarray:
    """Every state of {0..C−1}ᵏ one-hot and flattened, digit 0 (latent 0) varying fastest — by itertools."""
    eye = np.eye(C)
    return np.array([np.concatenate([eye[d] for d in reversed(t)]) for t in itertools.product(range(C), repeat=k)])


def test_categorical_states_against_itertools():
    """categorical_states(k, C) equals the itertools enumeration (state i has class (i // Cʲ) mod C at latent j), also
    in slices, and is what latent_states and n_states give for a categorical space; binary spaces still get bits;
    C < 2, k < 1, Cᵏ > 2¹⁶, a range past the last state and a real space are refused."""
    from gradbench.contracts import LatentSpace

    for k, C in [(1, 2), (2, 3), (3, 4)]:
        S = en.categorical_states(k, C)
        assert S.dtype == torch.float64 and S.shape == (C**k, k * C)
        np.testing.assert_array_equal(S.numpy(), _one_hot_product(k, C))
        np.testing.assert_array_equal(en.categorical_states(k, C, 1, C**k - 1).numpy(), S[1:-1].numpy())
        space = LatentSpace("categorical", k, C)
        assert en.n_states(space) == C**k
        assert torch.equal(en.latent_states(space), S) and torch.equal(en.latent_states(space, 1, 2), S[1:2])
        with pytest.raises(ValueError, match="outside"):  # past the last state an index would wrap around
            en.latent_states(space, 1, C**k + 1)
    assert en.categorical_states(2, 3, dtype=torch.float32).dtype == torch.float32
    assert torch.equal(en.latent_states(LatentSpace("binary", 3)), en.binary_states(3))
    assert en.n_states(LatentSpace("binary", 3)) == 8
    with pytest.raises(ValueError, match="outside"):
        en.binary_states(3, 5, 9)
    assert en.categorical_states(2, 256).shape == (2**16, 512)  # the largest allowed: exactly 2¹⁶ states
    for k, C in [(0, 3), (2, 1), (17, 2), (3, 41)]:
        with pytest.raises(ValueError, match="categorical states"):
            en.categorical_states(k, C)
    for bad in (LatentSpace("real", 2), LatentSpace("none")):
        with pytest.raises(ValueError, match="cannot enumerate"):
            en.latent_states(bad)
    with pytest.raises(ValueError, match="cannot enumerate"):
        en.n_states(LatentSpace("real", 2))


@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_categorical_log_marginal_and_elbo_against_brute_force(decoder):
    """A categorical VAE (k = 2, C = 3: 9 states): log p(x), ∇θ log p(x), the ELBO and ∇θ, ∇φ ELBO from the
    enumeration module against a logsumexp / q-weighted sum over the itertools states and autograd of those sums
    (1e-12 relative); the posterior table's rows sum to 1. Negative control: the same sums over the states with the
    last one dropped differ by more than 1e-6."""
    t = _categorical_target(decoder)
    states = torch.as_tensor(_one_hot_product(2, 3)).unsqueeze(1).expand(9, t.x.shape[0], 6)

    def brute_log_px(th, z=states):
        return torch.logsumexp(t.model.log_joint(th, t.x, z), 0).sum()

    def brute_elbo(th, ph, z=states):
        log_q = t.family.log_prob(ph, t.x, z)
        return (torch.exp(log_q) * (t.model.log_joint(th, t.x, z) - log_q)).sum()

    value, grad = en.log_marginal_and_grad(t.model, t.theta, t.x)
    assert abs(float(value - brute_log_px(t.theta))) <= 1e-12 * abs(float(value))
    assert float(en.log_marginal(t.model, t.theta, t.x) - value).__abs__() <= 1e-12 * abs(float(value))
    assert _rel(grad, torch.func.grad(brute_log_px)(t.theta), t.layout) < 1e-12
    post = en.posterior_table(t.model, t.theta, t.x)
    assert post.shape == (9, t.x.shape[0]) and torch.allclose(post.sum(0), torch.ones(t.x.shape[0], dtype=torch.float64),
                                                               rtol=0, atol=1e-14)
    elbo, gt, gp = en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)
    assert abs(float(elbo - brute_elbo(t.theta, t.phi))) <= 1e-12 * abs(float(elbo))
    auto_t, auto_p = torch.func.grad(brute_elbo, argnums=(0, 1))(t.theta, t.phi)
    assert _rel(gt, auto_t, t.layout) < 1e-12 and _rel(gp, auto_p, t.phi_layout) < 1e-12
    assert float(elbo) < float(value)
    short = states[:-1]
    assert abs(float(value - brute_log_px(t.theta, short))) > 1e-6 * abs(float(value))
    assert abs(float(elbo - brute_elbo(t.theta, t.phi, short))) > 1e-6 * abs(float(elbo))


@pytest.mark.parametrize("k, ok", [(0, False), (1, True), (16, True), (17, False)])
def test_binary_states_allow_1_to_16_latents(k, ok):
    """The documented range, as literals: 1 ≤ k ≤ 16 binary latents (2¹⁶ states per point); a short state range
    (the last two states) is their binary digits."""
    if not ok:
        with pytest.raises(ValueError, match=rf"1 ≤ k ≤ 16 binary latents, got k = {k}"):
            en.binary_states(k, 0, 1)
        return
    states = en.binary_states(k, 2**k - 2, 2**k)
    assert states.shape == (2, k)
    assert [int(sum(int(b) << j for j, b in enumerate(row))) for row in states.tolist()] == [2**k - 2, 2**k - 1]


@pytest.mark.parametrize("k, C, ok", [(8, 4, True), (16, 2, True), (11, 3, False), (0, 3, False), (3, 1, False)])
def test_categorical_states_allow_at_most_2_to_the_16_states(k, C, ok):
    """C^k ≤ 2¹⁶ categorical states (literal edges: 4⁸ = 2¹⁶ allowed, 3¹¹ = 177 147 not), k ≥ 1, C ≥ 2."""
    if not ok:
        with pytest.raises(ValueError, match=r"C\^k ≤ 2\^16 categorical states"):
            en.categorical_states(k, C, 0, 1)
        return
    last = C**k - 1
    one_hot = en.categorical_states(k, C, last, last + 1).reshape(k, C)
    assert torch.equal(one_hot.argmax(1), torch.full((k,), C - 1))  # the last state: every digit C − 1


@pytest.mark.parametrize("S, K, n_data, ok", [(4, 9, 1, True), (4, 9, 2, False), (3, 11, 1, True), (3, 11, 2, False),
                                              (2, 18, 1, True), (2, 19, 1, False), (2, 1, 1 << 17, True)])
def test_iwae_enumerable_at_its_literal_limit(S, K, n_data, ok):
    """S^K tuples × N points ≤ 2¹⁸ (literal edges, exact in integers: 4⁹ = 2¹⁸ fits for one point, not for two)."""
    assert en.iwae_enumerable(S, K, n_data) is ok


def test_iwae_reference_enumerates_up_to_the_limit_and_estimates_in_float64_above_it():
    """The builder enumerates IWAE_K while S^K · N ≤ 2¹⁸ and estimates above (literal edge: k = 3 binary latents, S = 8,
    N = 2: K = 5 gives 2¹⁶ tuple-points, K = 6 gives 2¹⁹). Above the limit the estimate runs on the target's float64
    copy: a float32 target's reference equals, bit for bit, that of the float64 target at the same values (same
    derived seed, same draws); negative control: the float32 target's own values differ (the draws are taken in
    float32)."""
    t = tiny([3], "linear", n=2)
    build_ref = en.iwae_reference(30)
    for wrt in ("theta", "phi"):
        assert build_ref(t, Objective(wrt, "iwae", 5)).kind == "enumerated"
        assert build_ref(t, Objective(wrt, "iwae", 6)).kind == "estimated"
    t32, t64 = float32_twins(t)
    for wrt in ("theta", "phi"):
        objective = Objective(wrt, "iwae", 6)
        ours, theirs = build_ref(t32, objective), build_ref(t64, objective)
        assert torch.equal(ours.value, theirs.value) and torch.equal(ours.stderr, theirs.stderr)
        in_float32 = en.estimated_iwae_gradient(t32, objective, 30, derive_seed("iwae_reference", t32.seed, objective.key))
        assert not torch.equal(in_float32.value.double(), theirs.value.double())


def test_estimated_iwae_gradient_draws_in_blocks_of_its_element_budget(monkeypatch: pytest.MonkeyPatch):
    """With a block budget of 24 elements and K · N = 2 · 3, blocks of 4 replicates (integer sizes: 4, 4, 2 for 10)
    merge into one reference of all 10 (the draws recorded and compared with their one-pass mean)."""
    import gradbench.references.enumeration as E

    t = tiny([2], "linear", n=3)

    monkeypatch.setattr(E, "REFERENCE_BLOCK_ELEMENTS", 24)
    sizes, drawn = record_blocks(monkeypatch, E)
    ref = E.estimated_iwae_gradient(t, Objective("theta", "iwae", 2), 10, 0)
    assert sizes == [4, 4, 2] and all(type(R) is int for R in sizes) and ref.n == 10
    np.testing.assert_allclose(ref.value.numpy(), torch.cat(drawn).mean(0).numpy(), rtol=1e-12, atol=1e-14)
