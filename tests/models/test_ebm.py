"""EBM targets (rbm, ising): exact references by enumeration.

Tier 1 (exact): references vs central finite differences of the enumerated log p(x) (float64,
1e-7 relative), the analytic-sum log Z vs brute force over every (v, h), parameters/layout/arrays.
Tier 2 (statistical, α = 0.001, seed 0): the exact sampler and one Gibbs sweep from exact draws
have the law p_θ (chi-square goodness of fit on all 2^n visible states), each with a negative
control that the same test rejects.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench import registry
from gradbench.models.ebm import RBM, Ising, IsingParams, NoProposal, RBMParams, rbm_brute_force_log_z
from gradbench.seeding import make_generator

ALPHA = 1e-3
FD_REL_TOL = 1e-7


def rbm(n_v: int = 5, n_h: int = 3, n: int = 7, beta: float = 1.0, seed: int = 0, **kw) -> RBM:
    return RBM.build(RBMParams(n_visible=n_v, n_hidden=n_h, n_data=n, weight_scale=beta, **kw), NoProposal(), seed)


def ising(n: int = 6, N: int = 7, beta: float = 1.0, seed: int = 0) -> Ising:
    return Ising.build(IsingParams(n_spins=n, n_data=N, weight_scale=beta), NoProposal(), seed)


def central_differences(target, step: float = 1e-5) -> torch.Tensor:
    theta = target.flat_theta()
    fd = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = step
        fd[i] = (target.with_theta(theta + e).log_likelihood() - target.with_theta(theta - e).log_likelihood()) / (2 * step)
    return fd


# -- tier 1: exact references ----------------------------------------------------------------
@pytest.mark.parametrize("target", [rbm(), rbm(n_v=4, n_h=6, beta=2.0, seed=3), ising(), ising(n=5, beta=2.0, seed=4)],
                         ids=["rbm", "rbm-beta2", "ising", "ising-beta2"])
def test_exact_grad_matches_finite_differences(target):
    g = target.exact_grad()
    fd = central_differences(target)
    assert float((fd - g).norm() / g.norm()) < FD_REL_TOL


def test_digits_exact_grad_matches_finite_differences():
    t = rbm(n_v=64, n_h=3, n=20, beta=0.5, data="digits")
    g = t.exact_grad()
    assert float((central_differences(t) - g).norm() / g.norm()) < FD_REL_TOL


@pytest.mark.parametrize("n_v,n_h,beta", [(1, 1, 1.0), (3, 2, 1.0), (5, 4, 2.0), (6, 3, 3.0)])
def test_rbm_log_z_equals_brute_force_over_v_and_h(n_v, n_h, beta):
    t = rbm(n_v, n_h, beta=beta, seed=n_v)
    torch.testing.assert_close(t.log_z(), rbm_brute_force_log_z(t.W, t.b, t.c), rtol=1e-13, atol=1e-13)


def test_rbm_model_expectation_equals_brute_force():
    """E_p[∇F] by the h-enumeration equals Σ_{v,h} p(v, h) ∇F(v) over every joint state."""
    t = rbm(4, 3, beta=1.5, seed=2)
    V = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    p = torch.softmax(-t.free_energy(V), 0)  # p(v) = Σ_h p(v, h)
    brute = t.weighted_grad_free_energy(V.unsqueeze(0), p.unsqueeze(0))[0]
    torch.testing.assert_close(t.model_expectation(), brute, rtol=1e-12, atol=1e-12)


def test_rare_value_probability_equals_brute_force():
    """q_min of the rare-state rule (gradbench.stats.rare_state_verdict), by enumerating every state: the rbm's
    rarest visible-unit value min_i min(P(v_i = 1), P(v_i = 0)); the ising model's rarest value of a ±1 sufficient
    statistic (s_i s_j, s_i). Control: a colder model (β = 3) has rarer values than β = 0.5."""
    t = rbm(4, 3, beta=1.5, seed=2)
    V = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    ev = torch.softmax(-t.free_energy(V), 0) @ V
    assert t.rare_value_probability() == pytest.approx(float(torch.minimum(ev, 1 - ev).min()), rel=1e-12)
    m = ising(5, beta=1.5, seed=7)
    S = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=5)), dtype=torch.float64)
    p = torch.softmax(-m.free_energy(S), 0)
    stats = torch.cat([(S[:, :, None] * S[:, None, :]).reshape(len(S), -1), S], 1)  # all products s_i s_j, then s
    keep = [i * 5 + j for i in range(5) for j in range(i + 1, 5)] + list(range(25, 30))
    pos = p @ (stats[:, keep] > 0).double()
    assert m.rare_value_probability() == pytest.approx(float(torch.minimum(pos, 1 - pos).min()), rel=1e-12)
    assert rbm(4, 3, beta=3.0, seed=2).rare_value_probability() < rbm(4, 3, beta=0.5, seed=2).rare_value_probability()


def test_ising_log_z_equals_itertools_enumeration():
    t = ising(5, beta=1.5, seed=7)
    S = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=5)), dtype=torch.float64)
    J, h = t.J, t.h
    brute = torch.logsumexp(torch.stack([sum(J[i, j] * s[i] * s[j] for i in range(5) for j in range(i + 1, 5)) + h @ s
                                         for s in S]), 0)
    torch.testing.assert_close(t.log_z(), brute, rtol=1e-13, atol=1e-13)


def test_ising_chunked_enumeration_matches_one_chunk(monkeypatch):
    from gradbench.models import ebm

    t = ising(9, beta=1.2, seed=5)
    whole = (t.log_z(), t.model_expectation())
    monkeypatch.setattr(ebm, "ENUM_CHUNK", 64)
    t2 = ising(9, beta=1.2, seed=5)
    torch.testing.assert_close(t2.log_z(), whole[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(t2.model_expectation(), whole[1], rtol=1e-12, atol=1e-12)


def test_float32_target_has_float64_reference():
    for entry, params in [(registry.MODELS["rbm"], {"n_visible": 5, "n_hidden": 3}), (registry.MODELS["ising"], {"n_spins": 5})]:
        t64 = entry.build(entry.params(**params), entry.proposal(), 0, torch.float64, "cpu", None)
        t32 = entry.build(entry.params(**params), entry.proposal(), 0, torch.float32, "cpu", None)
        assert t32.x.dtype == torch.float32 and t32.reference().value.dtype == torch.float64
        torch.testing.assert_close(t32.reference().value, t64.reference().value, rtol=1e-5, atol=1e-5)
        assert t64.reference().kind == "enumerated"


def test_arrays_and_layout():
    t = rbm(5, 3)
    a = t.arrays()
    assert set(a) == {"W", "b", "c", "x", "grad_W", "grad_b", "grad_c", "log_z"}
    assert a["grad_W"].shape == (5, 3) and t.layout.size == 5 * 3 + 5 + 3
    s = ising(6)
    assert s.layout.size == 15 + 6 and set(s.arrays()) == {"J", "h", "x", "grad_J", "grad_h", "log_z"}
    assert np.allclose(s.arrays()["J"], s.arrays()["J"].T)


def test_digits_data():
    a = rbm(n_v=64, n_h=2, n=30, data="digits").x
    b = rbm(n_v=64, n_h=2, n=30, data="digits", binarize="dynamic").x
    assert a.shape == b.shape == (30, 64)
    assert bool(((a == 0) | (a == 1)).all()) and bool(((b == 0) | (b == 1)).all())
    assert not torch.equal(a, b)
    assert torch.equal(a, rbm(n_v=64, n_h=2, n=30, data="digits").x), "same seed → same images"


def test_params_validation():
    with pytest.raises(ValueError, match="n_visible: 64"):
        RBMParams(n_visible=8, data="digits")
    with pytest.raises(ValueError):
        RBMParams(n_hidden=17)
    with pytest.raises(ValueError):
        IsingParams(n_spins=21)


def test_theta_seed_makes_weight_scale_a_temperature():
    """With theta_seed, θ(β) = β θ(1) whatever the target seed; without it, each target draws its own θ."""
    a = RBM.build(RBMParams(weight_scale=1.0, theta_seed=5), NoProposal(), 1)
    b = RBM.build(RBMParams(weight_scale=2.5, theta_seed=5), NoProposal(), 2)
    torch.testing.assert_close(b.flat_theta(), 2.5 * a.flat_theta(), rtol=1e-15, atol=0)
    s1 = Ising.build(IsingParams(weight_scale=1.0, theta_seed=5), NoProposal(), 1)
    s2 = Ising.build(IsingParams(weight_scale=0.5, theta_seed=5), NoProposal(), 2)
    torch.testing.assert_close(s2.flat_theta(), 0.5 * s1.flat_theta(), rtol=1e-15, atol=0)
    assert not torch.equal(rbm(seed=1).W, rbm(seed=2).W)


def test_build_is_deterministic_and_seed_dependent():
    assert torch.equal(rbm(seed=1).W, rbm(seed=1).W) and not torch.equal(rbm(seed=1).W, rbm(seed=2).W)
    assert torch.equal(ising(seed=1).x, ising(seed=1).x)


# -- tier 2: samplers have the law p_θ (chi-square over all visible states) ------------------
def _state_index(v: torch.Tensor, spins: bool) -> np.ndarray:
    bits = ((v + 1) / 2 if spins else v).long()
    n = bits.shape[-1]
    return (bits * (2 ** torch.arange(n - 1, -1, -1))).sum(-1).reshape(-1).numpy()


def _chi2_pvalue(v: torch.Tensor, probs: np.ndarray, spins: bool) -> float:
    counts = np.bincount(_state_index(v, spins), minlength=probs.size)
    expected = probs * counts.sum()
    keep = expected >= 5  # pool the rare states into one cell
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(sps.chisquare(obs, exp).pvalue)


def _rbm_visible_probs(t: RBM) -> np.ndarray:
    V = torch.tensor(list(itertools.product([0.0, 1.0], repeat=t.n_visible)), dtype=torch.float64)
    return torch.softmax(-t.free_energy(V), 0).numpy()


def _ising_probs(t: Ising) -> np.ndarray:
    return torch.softmax(t.log_weights(), 0).numpy()


def test_exact_sampler_has_the_model_law():
    t, s = rbm(4, 3, beta=1.5), ising(4, beta=1.5)
    assert _chi2_pvalue(t.sample_exact((20000,), make_generator(0)), _rbm_visible_probs(t), False) > ALPHA
    assert _chi2_pvalue(s.sample_exact((20000,), make_generator(0)), _ising_probs(s), True) > ALPHA


def test_exact_sampler_of_a_perturbed_model_is_rejected():
    """Negative control: draws from θ + 0.3 are tested against p_θ."""
    t, s = rbm(4, 3, beta=1.5), ising(4, beta=1.5)
    t_off, s_off = t.with_theta(t.flat_theta() + 0.3), s.with_theta(s.flat_theta() + 0.3)
    assert _chi2_pvalue(t_off.sample_exact((20000,), make_generator(0)), _rbm_visible_probs(t), False) < ALPHA
    assert _chi2_pvalue(s_off.sample_exact((20000,), make_generator(0)), _ising_probs(s), True) < ALPHA


@pytest.mark.parametrize("kind", ["rbm", "ising"])
def test_gibbs_sweep_leaves_the_model_invariant(kind):
    """Exact draws → one sweep → still p_θ; a sweep of the perturbed model (negative control) is rejected."""
    t = rbm(4, 3, beta=1.5) if kind == "rbm" else ising(4, beta=1.5)
    probs = _rbm_visible_probs(t) if kind == "rbm" else _ising_probs(t)
    gen = make_generator(0)
    v = t.sample_exact((20000,), gen)
    u = torch.rand(20000, t.uniforms_per_sweep, generator=gen, dtype=torch.float64)
    assert _chi2_pvalue(t.sweep(v, u), probs, kind == "ising") > ALPHA
    off = t.with_theta(t.flat_theta() + 0.3)
    assert _chi2_pvalue(off.sweep(v, u), probs, kind == "ising") < ALPHA
