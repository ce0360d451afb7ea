"""The categorical VAE and its enumerated references: exact against brute force and finite
differences (tier 1, float64, ≤ 1e-7 relative), the categorical encoder's and the exact posterior's
sampling laws (tier 2: χ², α = 0.001, seed 0), each with a negative control."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench.contracts import ComposedTarget, LatentSpace
from gradbench.families.categorical import CategoricalEncoder, one_hot_argmax
from gradbench.models.categorical import build
from gradbench.models.params import CategoricalProposal, CategoricalVAEParams
from gradbench.references import enumeration as en
from gradbench.seeding import make_generator

ALPHA = 0.001


def tiny(decoder: str = "linear", k: int = 2, C: int = 3, d: int = 4, n: int = 3, **proposal) -> ComposedTarget:
    params = CategoricalVAEParams(latents=k, classes=C, decoder=decoder, hidden=3, data_dim=d, n_data=n)
    return build(params, CategoricalProposal(logit_noise=0.5, **proposal), 1)


def _fd(f, params, h=1e-5):
    out = {}
    for name, v in params.items():
        g = torch.zeros(v.shape, dtype=v.dtype)
        for i in range(v.numel()):
            e = torch.zeros(v.numel(), dtype=v.dtype)
            e[i] = h
            e = e.reshape(v.shape)
            g.reshape(-1)[i] = (f({**params, name: v + e}) - f({**params, name: v - e})) / (2 * h)
        out[name] = g
    return out


def _rel(a, b, layout) -> float:
    fa, fb = layout.flatten(a), layout.flatten(b)
    return float(torch.linalg.norm(fa - fb) / torch.linalg.norm(fb))


# -- states and a brute-force joint (numpy, a Python loop over states) ---------------------------
def test_categorical_states_are_the_base_C_digits_one_hot():
    states = en.categorical_states(2, 3)
    assert states.shape == (9, 6) and torch.equal(states.reshape(9, 2, 3).sum(-1), torch.ones(9, 2, dtype=torch.float64))
    digits = [tuple(int(s.reshape(2, 3)[j].argmax()) for j in range(2)) for s in states]
    assert digits == [(i % 3, i // 3) for i in range(9)]  # digit 0 (latent 0) first
    assert torch.equal(en.categorical_states(2, 3, 4, 7), states[4:7])
    assert en.n_states(LatentSpace("categorical", 2, 10)) == 100
    with pytest.raises(ValueError):
        en.categorical_states(5, 10)  # 10^5 > 2^16


def _brute_log_joint(t: ComposedTarget, n: int, digits: tuple[int, ...]) -> float:
    th = {k: v.numpy() for k, v in t.theta.items()}
    a = th["prior_logits"]
    lp = sum(a[j, c] - math.log(np.exp(a[j]).sum()) for j, c in enumerate(digits))
    z = np.zeros(a.size)
    for j, c in enumerate(digits):
        z[j * a.shape[1] + c] = 1.0
    f = th["x_W"] @ z + th["x_b"] if "x_W" in th else th["x_V"] @ np.tanh(th["x_U"] @ z + th["x_c"]) + th["x_b"]
    x = t.x[n].numpy()
    return lp + float(np.sum(x * f - np.log1p(np.exp(f))))


@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_log_marginal_equals_brute_force(decoder):
    t = tiny(decoder)
    brute = sum(math.log(sum(math.exp(_brute_log_joint(t, n, dg)) for dg in itertools.product(range(3), repeat=2)))
                for n in range(t.n_data))
    assert abs(float(en.log_marginal(t.model, t.theta, t.x)) - brute) <= 1e-12 * abs(brute)


# -- tier 1: enumerated gradients against central finite differences ---------------------------
@pytest.mark.parametrize("decoder", ["linear", "mlp"])
def test_enumerated_gradients_match_finite_differences(decoder):
    t = tiny(decoder)
    _, g_log_px = en.log_marginal_and_grad(t.model, t.theta, t.x)
    fd_log_px = _fd(lambda th: float(en.log_marginal(t.model, th, t.x)), t.theta)
    assert _rel(g_log_px, fd_log_px, t.layout) < 1e-7
    _, gt, gp = en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)
    assert _rel(gt, _fd(lambda th: float(en.elbo_and_grads(t.model, t.family, th, t.phi, t.x)[0]), t.theta), t.layout) < 1e-7
    assert _rel(gp, _fd(lambda ph: float(en.elbo_and_grads(t.model, t.family, t.theta, ph, t.x)[0]), t.phi), t.phi_layout) < 1e-7
    # negative control: the same comparison tells ∇θ ELBO (q ≠ posterior) from ∇θ log p(x)
    assert _rel(gt, fd_log_px, t.layout) > 1e-3


def test_iwae_gradient_matches_finite_differences_and_bounds_are_ordered():
    t = tiny("mlp", C=2, n=2)
    _, _, gp = en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, 3)
    f = lambda ph: float(en.iwae_and_grads(t.model, t.family, t.theta, ph, t.x, 3)[0])
    assert _rel(gp, _fd(f, t.phi), t.phi_layout) < 1e-7
    log_px = float(en.log_marginal(t.model, t.theta, t.x))
    elbo = float(en.elbo_and_grads(t.model, t.family, t.theta, t.phi, t.x)[0])
    iw2 = float(en.iwae_and_grads(t.model, t.family, t.theta, t.phi, t.x, 2)[0])
    assert elbo < iw2 < log_px


def test_references_are_wired_and_enumerated():
    t = tiny()
    for key in ("theta", "theta_elbo", "phi_elbo", "phi_iwae2", "theta_iwae2"):
        assert t.reference(key).kind == "enumerated"
    assert t.capabilities >= {"categorical_latent", "enumerate", "relaxed", "score", "log_prob", "exact_posterior"}
    assert "binary_latent" not in t.capabilities


# -- the encoder and the exact posterior: sampling laws -----------------------------------------
def _chi2_pvalue(z: torch.Tensor, probs: torch.Tensor, C: int) -> float:
    """z [R, N, k·C] one-hot against probs [S, N] over the Cᵏ states (state index = Σ_j c_j Cʲ)."""
    k = z.shape[-1] // C
    digits = z.reshape(*z.shape[:-1], k, C).argmax(-1)
    idx = (digits * C ** torch.arange(k)).sum(-1)  # [R, N]
    R, N = idx.shape
    stat = sum(float(((torch.bincount(idx[:, n], minlength=probs.shape[0]) - R * probs[:, n]) ** 2 / (R * probs[:, n])).sum())
               for n in range(N))
    return float(sps.chi2.sf(stat, N * (probs.shape[0] - 1)))


def test_encoder_normalises_and_gumbel_max_samples_q():
    t = tiny()
    fam: CategoricalEncoder = t.family  # type: ignore[assignment]
    states = en.latent_states(fam.latent).unsqueeze(1)
    q = torch.exp(fam.log_prob(t.phi, t.x, states))  # [9, N]
    torch.testing.assert_close(q.sum(0), torch.ones(t.n_data, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(fam.mode(t.phi, t.x), states[q.argmax(0), 0], rtol=0, atol=0)
    u = fam.noise((20_000, t.n_data), make_generator(0), torch.float64, "cpu")
    assert _chi2_pvalue(fam.sample(t.phi, t.x, u), q, 3) > ALPHA
    # negative control: Gumbel-max with the noise subtracted samples another law
    wrong = one_hot_argmax(fam.logits(t.phi, t.x) + torch.log(-torch.log(u)), 3)
    assert _chi2_pvalue(wrong, q, 3) < ALPHA


def test_exact_posterior_sampling_and_negative_control():
    t = tiny()
    post = en.posterior_table(t.model, t.theta, t.x)
    z = t.sample_posterior((20_000,), make_generator(0))
    assert z.shape == (20_000, t.n_data, 6) and _chi2_pvalue(z, post, 3) > ALPHA
    q, _ = t.sample_proposal((20_000,), make_generator(0))  # negative control: q is not the posterior
    assert _chi2_pvalue(q, post, 3) < ALPHA


def test_kool_configuration_builds_on_digits():
    """k = 2, C = 10 (100 states) on 10 binarised digits: data checked, encoder fitted, references finite."""
    from gradbench.data import DataSpec, load

    x = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))[0]
    t = build(CategoricalVAEParams(), CategoricalProposal(logit_noise=0.5), 0, data=x)
    assert en.n_states(t.model.latent) == 100 and t.x.shape == (10, 64)
    assert torch.isfinite(t.reference("phi_elbo").value).all() and torch.isfinite(t.exact_grad()).all()
    with pytest.raises(ValueError, match="binary"):
        build(CategoricalVAEParams(), CategoricalProposal(), 0, data=np.full((3, 64), 0.5))
