"""Discrete-latent ∇φ estimators on the Bernoulli toy and a small SBN, against exact references.

Tier 1: exactness with injected noise (hand-derived formulas on the toy, the chain rule on the SBN encoder).
Tier 2: unbiased estimators pass the bias test (α = 0.001, seed 0) against the closed-form / enumerated
∇φ; negative controls — the biased estimators (Gumbel-softmax, straight-through, wake-sleep, RWS) and a
broken variant of each unbiased estimator — are rejected (p < α) on the same targets and seed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.estimators import discrete, score
from gradbench.models import bernoulli_toy as toy
from gradbench.models.params import BernoulliProposal, BernoulliToyParams, SBNParams
from gradbench.models.sbn import build as build_sbn
from gradbench.seeding import make_generator
from gradbench.stats import bias_test

ALPHA = 0.001
EPS64 = float(torch.finfo(torch.float64).eps)
T = 0.499


def _pvalue(grads: torch.Tensor, ref: torch.Tensor) -> float:
    return bias_test(grads.numpy(), ref.numpy(), EPS64, np.random.default_rng(0), atoms=True).pvalue


def toy_target(dim: int = 1, logit: float = 0.0, spread: float = 0.0, t: float = T):
    return toy.build(BernoulliToyParams(dim=dim, t=t, logit=logit, logit_spread=spread))


def sbn_target():
    """k = 4 latents, 8-dimensional synthetic data, N = 3, perturbed linear encoder (enumerated ∇φ ELBO)."""
    return build_sbn(SBNParams(layers=[4], data_dim=8, n_data=3), BernoulliProposal(logit_noise=0.5), 0)


# -- the toy's reference ------------------------------------------------------------------------
def test_toy_reference_equals_enumeration():
    t = toy_target(dim=3, logit=0.3, spread=2.0)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64).unsqueeze(1)  # [8, 1, 3]
    logits = t.phi["logits"].clone().requires_grad_(True)
    expectation = (torch.exp(t.family.log_prob({"logits": logits}, t.x, states)) * t.signal(states)).sum()
    (enumerated,) = torch.autograd.grad(expectation, logits)
    torch.testing.assert_close(t.reference("phi_elbo").value, enumerated.flatten(), rtol=1e-12, atol=1e-15)
    sig = torch.sigmoid(torch.tensor(0.3 - 1.0, dtype=torch.float64))  # φ_0 = logit − spread/2
    assert abs(float(t.reference("phi_elbo").value[0]) - (1 - 2 * T) * float(sig * (1 - sig))) < 1e-15
    # the pseudo log-joint makes the generic learning signal log p − log q equal to f
    b = states.squeeze(1).unsqueeze(1)
    torch.testing.assert_close(t.log_joint(b) - t.log_proposal(b), t.signal(b), rtol=0, atol=1e-14)


# -- tier 1: exactness with injected noise ------------------------------------------------------
R_SMALL = 6


def _toy_u(seed: int, shape=(R_SMALL,)) -> torch.Tensor:
    return toy_target().draw_noise(shape, make_generator(seed))[..., 0, 0]


def test_arm_and_disarm_equal_hand_formulas_on_the_toy():
    logit = 0.4
    t = toy_target(logit=logit)
    u = _toy_u(1)
    p = torch.sigmoid(torch.tensor(logit, dtype=torch.float64))
    b1, b2 = (u > 1 - p).double(), (u < p).double()
    f1, f2 = (b1 - T) ** 2, (b2 - T) ** 2
    arm = discrete.arm(t, R_SMALL, make_generator(1))
    torch.testing.assert_close(arm.grads[:, 0], (f1 - f2) * (u - 0.5), rtol=1e-12, atol=1e-15)
    disarm = discrete.disarm(t, R_SMALL, make_generator(1))
    hand = 0.5 * (f1 - f2) * (-1) ** b2 * (b1 != b2).double() * torch.sigmoid(p.new_tensor(abs(logit)))
    torch.testing.assert_close(disarm.grads[:, 0], hand, rtol=1e-12, atol=1e-15)
    assert arm.cost.tolist() == [2.0] * R_SMALL and disarm.wrt == "phi_elbo"


def test_disarm_is_exact_in_one_dimension_at_zero_logit():
    """At φ = 0 the antithetic pair always differs and ½ Δ σ(0) = (1 − 2t)/4 = the exact gradient: zero variance."""
    g = discrete.disarm(toy_target(), 50, make_generator(0)).grads[:, 0]
    torch.testing.assert_close(g, torch.full_like(g, (1 - 2 * T) / 4), rtol=1e-12, atol=1e-15)


def test_rloo_equals_hand_formula():
    t, S = toy_target(logit=-0.3), 3
    u = toy_target().draw_noise((R_SMALL, S), make_generator(2))[..., 0, 0]
    p = torch.sigmoid(torch.tensor(-0.3, dtype=torch.float64))
    b = (u < p).double()
    f = (b - T) ** 2
    hand = sum((f[:, s] - (f.sum(1) - f[:, s]) / (S - 1)) * (b[:, s] - p) for s in range(S)) / S
    torch.testing.assert_close(discrete.rloo(t, R_SMALL, make_generator(2), S=S).grads[:, 0], hand, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("st", [False, True])
def test_relaxed_equal_hand_formulas(st):
    t, tau, logit = toy_target(logit=0.2), 0.7, 0.2
    u = _toy_u(3)
    z = logit - torch.logit(u)
    s = torch.sigmoid(z / tau)
    fwd = (z > 0).double() if st else s
    fn = discrete.straight_through if st else discrete.gumbel_softmax
    torch.testing.assert_close(fn(t, R_SMALL, make_generator(3), tau=tau).grads[:, 0], 2 * (fwd - T) * s * (1 - s) / tau,
                               rtol=1e-12, atol=1e-15)


def test_rebar_with_eta_zero_is_reinforce_and_equals_hand_formula():
    t, logit, eta, lam = toy_target(logit=0.5), 0.5, 0.8, 0.6
    gen = make_generator(4)
    u, v = _toy_u(4, (2, R_SMALL))  # rebar draws u then v from the same generator
    p = torch.sigmoid(torch.tensor(logit, dtype=torch.float64))
    b = (u < p).double()
    g0 = discrete.rebar(t, R_SMALL, gen, eta=0.0).grads[:, 0]
    torch.testing.assert_close(g0, (b - T) ** 2 * (b - p), rtol=1e-12, atol=1e-15)
    # hand REBAR: c(z) = η (σ(z/λ) − t)², dz/dℓ = 1, dz̃/dℓ by finite differences of the closed form
    z = logit - torch.logit(u)

    def z_tilde(ell):
        q = torch.sigmoid(torch.tensor(ell, dtype=torch.float64))
        return ell + torch.logit(torch.where(b > 0, 1 - q + v * q, v * (1 - q)))

    h = 1e-6
    dzt = (z_tilde(logit + h) - z_tilde(logit - h)) / (2 * h)
    zt = z_tilde(logit)
    c = lambda zz: eta * (torch.sigmoid(zz / lam) - T) ** 2
    dc = lambda zz: eta * 2 * (torch.sigmoid(zz / lam) - T) * torch.sigmoid(zz / lam) * (1 - torch.sigmoid(zz / lam)) / lam
    hand = ((b - T) ** 2 - c(zt)) * (b - p) + dc(z) - dc(zt) * dzt
    got = discrete.rebar(t, R_SMALL, make_generator(4), eta=eta, tau=lam).grads[:, 0]
    torch.testing.assert_close(got, hand, rtol=1e-6, atol=1e-9)


def test_chain_rule_to_encoder_parameters():
    """to_phi(g) = Σ_n (∂ℓ_n/∂φ)ᵀ g_n, checked against the full Jacobian of the encoder's logits."""
    t = sbn_target()
    g = torch.randn(2, t.n_data, t.latent_dim, generator=make_generator(5), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda flat: t.family.logits(t.phi_layout.unflatten(flat), t.x),
                                             t.phi_layout.flatten(t.phi))  # [N, k, P]
    torch.testing.assert_close(discrete.to_phi(t, g), torch.einsum("rnk,nkp->rp", g, jac), rtol=1e-12, atol=1e-12)


def test_every_discrete_estimator_is_registered():
    for name in ["arm", "disarm", "rebar", "relax", "wake_sleep", "reweighted_wake_sleep"]:  # binary only
        est = registry.ESTIMATORS[name]
        assert est.objective({}).key == "phi_elbo" and "binary_latent" in est.required({})
    for name in ["rloo", "nvil", "gumbel_softmax", "straight_through", "sum_and_sample"]:  # binary or categorical
        est = registry.ESTIMATORS[name]
        assert est.objective({}).key == "phi_elbo" and "enumerate" in est.required({})
        assert "binary_latent" not in est.required({})
    assert "relaxed" in registry.ESTIMATORS["gumbel_softmax"].required({})
    assert "bernoulli_toy" in registry.MODELS and "categorical_vae" in registry.MODELS


def test_relaxed_toy_expectation_matches_quadrature():
    """The Gumbel-softmax sample mean agrees with its exact (quadrature) expectation, not with ∇ E f."""
    value, err = toy.relaxed_expected_gradient(1.0, 0.2, 1.0)
    assert err < 1e-12
    g = discrete.gumbel_softmax(toy_target(logit=1.0, t=0.2), 20_000, make_generator(0), tau=1.0).grads
    exact = toy_target(logit=1.0, t=0.2).reference("phi_elbo").value
    assert _pvalue(g, torch.tensor([value], dtype=torch.float64)) > ALPHA
    assert _pvalue(g, exact) < ALPHA  # negative control: the relaxed gradient is not ∇ E f(b)


# -- tier 2: unbiasedness at α = 0.001 (seed 0) and negative controls ----------------------------
UNBIASED = [("arm", {}), ("disarm", {}), ("rloo", {"S": 2}), ("nvil", {"warmup": 20}), ("rebar", {}),
            ("rebar", {"warmup": 20, "lr": 0.05}), ("relax", {"warmup": 20, "lr": 0.05})]


@pytest.mark.parametrize("name,params", UNBIASED, ids=[f"{n}{p}" for n, p in UNBIASED])
@pytest.mark.parametrize("which", ["toy", "sbn"])
def test_unbiased_estimators_pass_the_bias_test(name, params, which):
    t = toy_target(dim=3, logit=0.5, spread=3.0, t=0.3) if which == "toy" else sbn_target()
    sample: GradSample = getattr(discrete, name)(t, 4000, make_generator(0), **params)
    assert _pvalue(sample.grads, t.reference("phi_elbo").value) > ALPHA


@pytest.mark.parametrize("name,params", [("gumbel_softmax", {"tau": 0.5}), ("straight_through", {"tau": 0.5}),
                                         ("wake_sleep", {}), ("reweighted_wake_sleep", {"K": 8})])
def test_biased_estimators_are_rejected_on_the_sbn(name, params):
    t = sbn_target()
    assert _pvalue(getattr(discrete, name)(t, 4000, make_generator(0), **params).grads, t.reference("phi_elbo").value) < ALPHA


def _pair_signals(t, R, gen):
    ell, u = discrete.logits(t), t.draw_noise((R,), gen)
    b1, b2 = discrete.antithetic_pair(ell, u)
    return ell, u, b1, b2, discrete.signal(t, b1), discrete.signal(t, b2)


def _broken_arm(t, R, gen):
    """ARM without the (u − ½) factor."""
    _ell, u, _b1, _b2, f1, f2 = _pair_signals(t, R, gen)
    return discrete.to_phi(t, (f1 - f2).unsqueeze(-1).expand_as(u))


def _disarm_without_indicator(t, R, gen):
    """DisARM without the indicator 1[b¹ ≠ b²]: NOT broken — u ↦ 1 − u swaps b¹ and b², so the dropped terms
    (b¹_j = b²_j) are odd under it and have mean 0; only the variance grows."""
    ell, _u, _b1, b2, f1, f2 = _pair_signals(t, R, gen)
    return discrete.to_phi(t, 0.5 * (f1 - f2).unsqueeze(-1) * (1 - 2 * b2) * torch.sigmoid(ell.abs()))


def _broken_disarm(t, R, gen):
    """DisARM with σ(ℓ) in place of σ(|ℓ|) (wrong wherever ℓ < 0)."""
    ell, _u, b1, b2, f1, f2 = _pair_signals(t, R, gen)
    return discrete.to_phi(t, 0.5 * (f1 - f2).unsqueeze(-1) * (1 - 2 * b2) * (b1 != b2).double() * torch.sigmoid(ell))


def _broken_rloo(t, R, gen, S=2):
    """RLOO whose baseline includes the sample it multiplies (the mean over all S): E = (1 − 1/S) ∇."""
    p = torch.sigmoid(discrete.logits(t))
    b = (t.draw_noise((R, S), gen) < p).double()
    f = discrete.signal(t, b)
    return discrete.to_phi(t, ((f - f.mean(1, keepdim=True)).unsqueeze(-1) * (b - p)).mean(1))


def _broken_nvil(t, R, gen):
    """NVIL with a baseline fitted to the measured sample itself (b = ½ f(b)): E = ½ ∇."""
    p = torch.sigmoid(discrete.logits(t))
    b = (t.draw_noise((R,), gen) < p).double()
    f = discrete.signal(t, b)
    return discrete.to_phi(t, (0.5 * f).unsqueeze(-1) * (b - p))


def _broken_control(t, R, gen, relax=False):
    """REBAR/RELAX without the correction −∂ℓ c(z̃) of the conditional relaxation."""
    ell0 = discrete.logits(t)
    u, v = t.draw_noise((R,), gen), t.draw_noise((R,), gen)
    eta, log_lam = ell0.new_ones(R), torch.log(0.5 * ell0.new_ones(R))
    ell = ell0.expand(u.shape).clone().requires_grad_(True)
    z = ell - torch.logit(u)
    b = (z > 0).double()
    w = 0.3 if relax else 0.0  # RELAX: a surrogate with a free term Σ_j w σ(z_j/λ)
    c = lambda zz: discrete._relaxed_signal(t, zz, eta, log_lam) + (w * torch.sigmoid(zz / 0.5)).sum(-1)
    zt = discrete.conditional_relaxation(ell, b, v).detach()
    (dc,) = torch.autograd.grad(c(z).sum(), ell)
    return discrete.to_phi(t, (discrete.signal(t, b) - c(zt)).unsqueeze(-1) * (b - torch.sigmoid(ell0)) + dc)


BROKEN = {"arm": _broken_arm, "disarm": _broken_disarm, "rloo": _broken_rloo, "nvil": _broken_nvil,
          "rebar": _broken_control, "relax": lambda t, R, gen: _broken_control(t, R, gen, relax=True)}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_variants_are_rejected_on_the_sbn(name):
    t = sbn_target()
    assert _pvalue(BROKEN[name](t, 4000, make_generator(0)), t.reference("phi_elbo").value) < ALPHA


def test_disarm_indicator_only_reduces_variance():
    t = sbn_target()
    ref = t.reference("phi_elbo").value
    g_full = discrete.disarm(t, 4000, make_generator(0)).grads
    g_free = _disarm_without_indicator(t, 4000, make_generator(0))
    assert _pvalue(g_free, ref) > ALPHA
    # same u: the indicator-free version has larger total variance (paired, one-sided z at α = 0.001)
    d = (g_free - ref).pow(2).sum(1) - (g_full - ref).pow(2).sum(1)
    assert d.mean() / (d.std() / len(d) ** 0.5) > 3.090


def test_score_reinforce_runs_on_the_toy_with_the_toys_signal():
    """The generic REINFORCE (kl = mc) sees f through the pseudo log-joint: unbiased for the toy's gradient."""
    t = toy_target(dim=3, logit=0.5, spread=3.0, t=0.3)
    g = score.reinforce(t, 4000, make_generator(0), S=1, kl="mc").grads
    assert _pvalue(g, t.reference("phi_elbo").value) > ALPHA


def test_reweighted_wake_sleep_approaches_its_own_objective():
    """RWS wake-φ follows −∇φ KL(p(z|x) ‖ q) (enumerated), with bias O(1/K): ‖E ĝ − ref‖ shrinks from K = 2 to K = 64
    by more than 3.09 s.e. (one-sided, α = 0.001), and at K = 64 it is far closer to it than to ∇φ ELBO."""
    t = sbn_target()
    own, elbo = discrete.wake_phi_reference(t), t.reference("phi_elbo").value

    def bias_sq(K):  # ‖mean − ref‖² minus its noise term tr Σ / R (unbiased for ‖bias‖²), and an s.e. by the delta method
        g = discrete.reweighted_wake_sleep(t, 4000, make_generator(0), K=K).grads
        m, R = g.mean(0), g.shape[0]
        return (m - own).pow(2).sum() - g.var(0).sum() / R, 2 * (m - own).norm() * (g.var(0).sum() / R).sqrt(), m

    b2, se2, _ = bias_sq(2)
    b64, se64, m64 = bias_sq(64)
    assert (b2 - b64) / (se2**2 + se64**2).sqrt() > 3.090
    assert (m64 - own).norm() < 0.2 * (m64 - elbo).norm()
