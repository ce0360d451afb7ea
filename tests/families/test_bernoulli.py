"""Factorised Bernoulli families: exact normalisation and score (tier 1), sampling law against the
exact probabilities with a negative control (tier 2, α = 0.001, seed 0), and the fitted initialisation."""

from __future__ import annotations

import pytest
import torch
from scipy import stats as sps

from gradbench.contracts import ComposedTarget
from gradbench.families.bernoulli import (
    MAX_LOGIT,
    BernoulliEncoder,
    BernoulliMeanField,
    BernoulliProposal,
    fit_logits,
    marginal_logits,
)
from gradbench.models.sbn import SBNParams, build
from gradbench.references import enumeration as en
from gradbench.seeding import make_generator

ALPHA = 0.001
FAMILIES = [("encoder", None), ("encoder", 4), ("mean_field", None)]


def family_and_phi(kind: str, hidden: int | None, k: int = 3, d: int = 5, n: int = 4):
    gen = make_generator(0)
    x = (torch.rand(n, d, generator=gen, dtype=torch.float64) < 0.5).double()
    fam = BernoulliEncoder(k, d, hidden) if kind == "encoder" else BernoulliMeanField(k, n)
    phi = fam.init_params(x, gen, torch.float64)
    if kind == "mean_field":
        phi = {"logits": torch.randn(n, k, generator=gen, dtype=torch.float64)}
    return fam, phi, x


@pytest.mark.parametrize("kind,hidden", FAMILIES)
def test_log_prob_normalises_and_mode_is_the_argmax(kind, hidden):
    fam, phi, x = family_and_phi(kind, hidden)
    states = en.binary_states(3).unsqueeze(1)  # [8, 1, 3] broadcast over the N points
    log_q = fam.log_prob(phi, x, states)  # [8, N]
    torch.testing.assert_close(torch.logsumexp(log_q, 0), torch.zeros(x.shape[0], dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(fam.mode(phi, x), en.binary_states(3)[log_q.argmax(0)], rtol=0, atol=0)
    assert fam.capabilities == frozenset({"score", "log_prob", "enumerate", "relaxed", "logits", "gumbel_noise"})


@pytest.mark.parametrize("kind,hidden", FAMILIES)
def test_sampling_frequencies_match_q(kind, hidden):
    """χ² of the state counts of z = 1[u < σ(ℓ)] against q(z|x_n) summed over the N points."""
    fam, phi, x = family_and_phi(kind, hidden)
    z = fam.sample(phi, x, fam.noise((20_000, x.shape[0]), make_generator(0), torch.float64, "cpu"))
    assert _chi2_pvalue(z, torch.exp(fam.log_prob(phi, x, en.binary_states(3).unsqueeze(1)))) > ALPHA


def test_sampling_with_flipped_threshold_is_detected():
    """Negative control: z = 1[u > σ(ℓ)] samples σ(−ℓ), not q."""
    fam, phi, x = family_and_phi("encoder", None)
    u = fam.noise((20_000, x.shape[0]), make_generator(0), torch.float64, "cpu")
    z = (u > torch.sigmoid(fam.logits(phi, x))).double()
    assert _chi2_pvalue(z, torch.exp(fam.log_prob(phi, x, en.binary_states(3).unsqueeze(1)))) < ALPHA


def _chi2_pvalue(z: torch.Tensor, probs: torch.Tensor) -> float:
    idx = (z.long() * (2 ** torch.arange(z.shape[-1]))).sum(-1)  # [R, N]
    R, N = idx.shape
    stat = sum(float(((torch.bincount(idx[:, n], minlength=probs.shape[0]) - R * probs[:, n]) ** 2 / (R * probs[:, n])).sum())
               for n in range(N))
    return float(sps.chi2.sf(stat, N * (probs.shape[0] - 1)))


def test_score_is_z_minus_sigmoid_times_features():
    """ComposedTarget.log_q_score (vmap of grad) against ∂ log q/∂ℓ = z − σ(ℓ) for the linear encoder."""
    t: ComposedTarget = build(SBNParams(layers=[3], data_dim=5, n_data=4), BernoulliProposal(logit_noise=0.5), 0)
    z, _ = t.sample_proposal((2,), make_generator(0))
    score = t.log_q_score(z)  # [2, N, P_φ]
    resid = z - torch.sigmoid(t.family.logits(t.phi, t.x))  # [2, N, k]
    expect = torch.cat([(resid.unsqueeze(-1) * t.x.unsqueeze(-2)).flatten(-2), resid], -1)
    torch.testing.assert_close(score, expect, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("hidden", [None, 6])
def test_fit_reproduces_target_logits_then_applies_temperature_and_shift(hidden):
    gen = make_generator(0)
    x = (torch.rand(4, 5, generator=gen, dtype=torch.float64) < 0.5).double()
    t = 3 * torch.randn(4, 3, generator=gen, dtype=torch.float64)
    fam = BernoulliEncoder(3, 5, hidden)
    phi = fit_logits(fam, x, t, BernoulliProposal(), make_generator(1))
    torch.testing.assert_close(fam.logits(phi, x), t, rtol=0, atol=1e-4)  # N ≤ m + 1: ridge interpolates
    phi = fit_logits(fam, x, t, BernoulliProposal(temperature=2.0, logit_shift=-0.5), make_generator(1))
    torch.testing.assert_close(fam.logits(phi, x), t / 2 - 0.5, rtol=0, atol=1e-4)
    mf = BernoulliMeanField(3, 4)
    torch.testing.assert_close(fit_logits(mf, x, t, BernoulliProposal(), gen)["logits"], t, rtol=0, atol=0)


def test_logit_noise_has_the_stated_scale():
    """E over the noise of mean_n,j Δℓ_nj² = ε² (the scaling in the docstring): 400 independent draws,
    mean of the per-draw average squared perturbation within 4 standard errors of ε² (and a wrong scale,
    2ε, is outside them)."""
    gen = make_generator(0)
    x = (torch.rand(6, 5, generator=gen, dtype=torch.float64) < 0.5).double()
    fam, t, eps = BernoulliEncoder(3, 5), torch.zeros(6, 3, dtype=torch.float64), 0.7
    base = fam.logits(fit_logits(fam, x, t, BernoulliProposal(), make_generator(0)), x)
    msq = torch.stack([((fam.logits(fit_logits(fam, x, t, BernoulliProposal(logit_noise=eps), make_generator(s)), x) - base) ** 2).mean()
                       for s in range(400)])
    se = float(msq.std() / 400**0.5)
    assert abs(float(msq.mean()) - eps**2) < 4 * se
    assert abs(float(msq.mean()) - (2 * eps) ** 2) > 4 * se


def test_marginal_logits_are_clipped():
    m = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(marginal_logits(m), torch.tensor([[-MAX_LOGIT, 0.0, MAX_LOGIT]], dtype=torch.float64))


def test_mean_field_score_is_per_point():
    """log_q_score on per-datapoint logits: point n's score is z_n − σ(ℓ_n) in its own row, zero elsewhere."""
    t: ComposedTarget = build(SBNParams(layers=[3], data_dim=5, n_data=4), BernoulliProposal(family="bernoulli_mean_field"), 0)
    z, _ = t.sample_proposal((2,), make_generator(0))
    resid = z - torch.sigmoid(t.phi["logits"])  # [2, N, k]
    expect = torch.diag_embed(resid.transpose(1, 2)).permute(0, 2, 3, 1)  # [2, N(point), N(row), k]
    torch.testing.assert_close(t.log_q_score(z), expect.reshape(2, 4, 12), rtol=1e-13, atol=1e-13)
