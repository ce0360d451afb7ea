"""Pathwise encoder-gradient estimators: exactness with injected noise, unbiasedness, agreement.

Statistical tests: fixed seeds, α = 0.001, MCSE-scaled through ``gradbench.stats.bias_test``; each
has a negative control (a deliberately broken estimator) that the same test rejects.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.estimators import pathwise
from gradbench.estimators.importance import iwae
from gradbench.estimators.pathwise import batched_phi, draw_eps, log_normal_diag, per_replicate_grad, reparam
from gradbench.seeding import make_generator
from gradbench.stats import ReferenceNoise, bias_test
from tests.models.test_ppca_encoder import make_encoder_target, orthogonal_target

ALPHA = 0.001
EPS64 = float(torch.finfo(torch.float64).eps)
PHI_ESTIMATORS = [name for name, e in registry.ESTIMATORS.items()  # those the PPCA encoder target can serve
                  if e.wrt != "theta" and e.required(e.params().model_dump()) <= registry.MODELS["ppca_encoder"].capabilities({})]


def _pvalue(sample: GradSample, ref, ref_var=None) -> float:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    return bias_test(sample.grads.numpy(), ref, EPS64, np.random.default_rng(0),
                     None if ref_var is None else ReferenceNoise(var=np.asarray(ref_var))).pvalue


def _gz(t, z):
    """∂ log p(x, z)/∂z = Wᵀ(x − W z − μ)/σ² − z."""
    return (t.x - z @ t.W.T - t.mu) @ t.W / t.sigma**2 - z


def _phi_grad(t, g_mean, g_c):
    """Flatten Σ_n g_mean,n x_nᵀ, Σ_n g_mean,n, Σ_n g_c,n for g [R, N, k]."""
    return t.phi_layout.flatten({"A": torch.einsum("rnk,nd->rkd", g_mean, t.x), "b": g_mean.sum(1), "c": g_c.sum(1)},
                                batch=(g_mean.shape[0],))


# -- tier 1: exactness with injected noise -----------------------------------------------------
def test_reparam_and_stl_equal_hand_derived_gradients():
    t = make_encoder_target()
    R = 4
    eps = torch.randn(R, 1, t.n_data, t.latent_dim, generator=make_generator(3), dtype=torch.float64)[:, 0]
    s = torch.exp(t.c)
    z = t.q_mean + s * eps
    g = _gz(t, z)
    mc = pathwise.reparam_elbo(t, R, make_generator(3), S=1, kl="mc")
    torch.testing.assert_close(mc.grads, _phi_grad(t, g, g * s * eps + 1), rtol=1e-10, atol=1e-10)
    g_lik = g + z
    analytic = pathwise.reparam_elbo(t, R, make_generator(3), S=1, kl="analytic")
    expected = _phi_grad(t, g_lik - t.q_mean, g_lik * s * eps - (s**2 - 1))
    torch.testing.assert_close(analytic.grads, expected, rtol=1e-10, atol=1e-10)
    path = g + eps / s  # STL: ∂/∂z [log p(x,z) − log q_{stop φ}(z)]
    stl = pathwise.stl(t, R, make_generator(3), S=1)
    torch.testing.assert_close(stl.grads, _phi_grad(t, path, path * s * eps), rtol=1e-10, atol=1e-10)
    assert mc.wrt == analytic.wrt == stl.wrt == "phi_elbo"


def test_iwae_and_dreg_equal_hand_derived_gradients():
    t = make_encoder_target()
    R, K = 3, 5
    eps = torch.randn(R, K, t.n_data, t.latent_dim, generator=make_generator(8), dtype=torch.float64)
    s = torch.exp(t.c)
    z = t.q_mean + s * eps
    g = _gz(t, z)  # [R, K, N, k]
    w = torch.softmax(t.log_joint(z) - t.log_proposal(z), dim=1).unsqueeze(-1)  # [R, K, N, 1]
    iw = pathwise.iwae_reparam(t, R, make_generator(8), K=K)
    torch.testing.assert_close(iw.grads, _phi_grad(t, (w * g).sum(1), (w * (g * s * eps + 1)).sum(1)), rtol=1e-10, atol=1e-10)
    path = g + eps / s
    dr = pathwise.dreg(t, R, make_generator(8), K=K)
    torch.testing.assert_close(dr.grads, _phi_grad(t, (w**2 * path).sum(1), (w**2 * path * s * eps).sum(1)),
                               rtol=1e-10, atol=1e-10)
    assert iw.wrt == dr.wrt == "phi_iwae5"


def test_common_random_numbers_identities():
    """IWAE_1 = ELBO, DReG_1 = STL, and the IWAE θ-gradient is the ``iwae`` estimator, draw for draw."""
    t = make_encoder_target()
    gen = lambda: make_generator(11)
    torch.testing.assert_close(pathwise.iwae_reparam(t, 6, gen(), K=1).grads, pathwise.reparam_elbo(t, 6, gen()).grads,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pathwise.dreg(t, 6, gen(), K=1).grads, pathwise.stl(t, 6, gen()).grads,
                               rtol=1e-12, atol=1e-12)
    theta = pathwise.iwae_reparam(t, 6, gen(), K=7, wrt="theta")
    torch.testing.assert_close(theta.grads, iwae(t, 6, gen(), K=7).grads, rtol=1e-10, atol=1e-10)
    assert theta.wrt == "theta_iwae7" and theta.layout == t.layout


def test_stl_sticks_the_landing_at_the_exact_posterior():
    """q = p(z|x) (diagonal posterior): every STL replicate is 0; the plain reparameterised estimator is not."""
    t = orthogonal_target()
    stl = pathwise.stl(t, 50, make_generator(0), S=2)
    assert float(stl.grads.abs().max()) < 1e-10
    rep = pathwise.reparam_elbo(t, 50, make_generator(0), S=2)
    assert float(rep.grads.std(0).max()) > 0.1


# -- contract over every registered encoder-gradient estimator --------------------------------
@pytest.mark.parametrize("name", PHI_ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encoder_estimator_contract(name, dtype):
    est = registry.ESTIMATORS[name]
    t = make_encoder_target(d=5, k=2, n=3, reference_replicates=200)
    if dtype != torch.float64:
        t = type(t)(*(v.to(dtype) for v in (t.W, t.mu, t.sigma, t.x)), A=t.A.to(dtype), b=t.b.to(dtype),
                    c=t.c.to(dtype), seed=t.seed, reference_replicates=200)
    params = est.params().model_dump()
    before = torch.random.get_rng_state()
    sample = est.fn(t, 7, make_generator(0), **params)
    assert torch.equal(torch.random.get_rng_state(), before), "estimators must not touch the global RNG"
    ref = t.reference(sample.wrt)
    assert sample.grads.shape == (7, ref.value.shape[0]) == (7, sample.layout.size)
    assert sample.grads.dtype == dtype and not sample.grads.requires_grad
    assert sample.cost.shape == (7,) and bool((sample.cost > 0).all())
    assert not sample.diagnostics["nonfinite"].any()
    assert all(v.shape[0] == 7 for v in sample.diagnostics.values())
    assert torch.equal(sample.grads, est.fn(t, 7, make_generator(0), **params).grads)
    assert not torch.equal(sample.grads, est.fn(t, 7, make_generator(1), **params).grads)


def test_encoder_estimators_refuse_a_target_without_encoder():
    from tests.conftest import make_ppca

    with pytest.raises(TypeError, match="needs a target whose family provides reparam"):
        pathwise.reparam_elbo(make_ppca(), 2, make_generator(0))


# -- tier 2: unbiasedness (MCSE-scaled, α = 0.001, fixed seed) ---------------------------------
def _entropy_dropped(t, R, gen, S=1):
    """Broken on purpose: the reparameterised gradient of E_q[log p(x, z)] alone (no −log q term)."""
    eps = draw_eps(t, R, S, gen)
    with torch.enable_grad():
        phi = batched_phi(t, R)
        z, _, _ = reparam(t, phi, eps)
        grads = per_replicate_grad(t.log_joint(z).sum(-1).mean(1), phi, t.phi_layout)
    return GradSample(grads, t.phi_layout, torch.ones(R, dtype=grads.dtype), wrt="phi_elbo")


@pytest.mark.parametrize("name,params", [("reparam_elbo", {"S": 1, "kl": "mc"}), ("reparam_elbo", {"S": 2, "kl": "analytic"}),
                                         ("stl", {"S": 1})])
def test_elbo_estimators_are_unbiased(name, params):
    t = make_encoder_target()
    sample = registry.ESTIMATORS[name].fn(t, 3000, make_generator(2024), **params)
    assert _pvalue(sample, t.reference(sample.wrt).value) > ALPHA


def test_negative_control_entropy_dropped_is_detected():
    t = make_encoder_target()
    assert _pvalue(_entropy_dropped(t, 3000, make_generator(2024)), t.elbo_grad_phi()) < ALPHA


def _iwae_stl(t, R, gen, K):
    """Broken on purpose: IWAE with the score term dropped (weights w̃, not DReG's w̃²) — biased (Tucker et al. 2019)."""
    eps = draw_eps(t, R, K, gen)
    with torch.enable_grad():
        phi = batched_phi(t, R)
        z, mean, log_std = reparam(t, phi, eps)
        log_w = t.log_joint(z) - log_normal_diag(z, mean.detach(), log_std.detach())
        obj = (torch.softmax(log_w.detach(), dim=1) * log_w).sum(dim=(1, 2))
        grads = per_replicate_grad(obj, phi, t.phi_layout)
    return GradSample(grads, t.phi_layout, torch.ones(R, dtype=grads.dtype), wrt=f"phi_iwae{K}")


def _two_sample_pvalue(a: GradSample, b: GradSample) -> float:
    """H0: E a = E b from independent samples: the two-sample bias test with b's full covariance."""
    Gb = b.grads.numpy()
    return bias_test(a.grads.numpy(), Gb.mean(0), EPS64, np.random.default_rng(0),
                     ReferenceNoise(cov=np.cov(Gb.T).reshape(Gb.shape[1], -1), n=Gb.shape[0])).pvalue


def test_iwae_reparam_and_dreg_agree_on_the_iwae_gradient():
    """The IWAE_K φ-reference: two estimators, both unbiased for ∇φ IWAE_K, agree (two-sample test)."""
    t = make_encoder_target()
    a = pathwise.iwae_reparam(t, 4000, make_generator(1), K=4)
    b = pathwise.dreg(t, 4000, make_generator(2), K=4)
    assert a.wrt == b.wrt == "phi_iwae4"
    assert _two_sample_pvalue(a, b) > ALPHA
    # negative controls: a biased estimator of the same gradient, and the right estimator of another K
    assert _two_sample_pvalue(_iwae_stl(t, 4000, make_generator(1), K=4), b) < ALPHA
    assert _two_sample_pvalue(pathwise.iwae_reparam(t, 4000, make_generator(1), K=1), b) < ALPHA


def test_iwae_reparam_is_unbiased_against_the_estimated_reference():
    """The runner's view: the bias protocol against the target's estimated ``phi_iwae<K>`` reference."""
    t = make_encoder_target(reference_replicates=8000)
    sample = pathwise.iwae_reparam(t, 3000, make_generator(5), K=4)
    ref = t.reference(sample.wrt)
    assert ref.kind == "estimated"
    assert _pvalue(sample, ref.value, ref.stderr.numpy() ** 2) > ALPHA
    broken = _iwae_stl(t, 3000, make_generator(5), K=4)
    assert _pvalue(broken, ref.value, ref.stderr.numpy() ** 2) < ALPHA


def test_theta_iwae_gradient_is_biased_for_the_log_likelihood_but_not_for_the_bound():
    t = make_encoder_target(reference_replicates=8000)
    sample = pathwise.iwae_reparam(t, 3000, make_generator(6), K=2, wrt="theta")
    ref = t.reference(sample.wrt)
    assert _pvalue(sample, ref.value, ref.stderr.numpy() ** 2) > ALPHA
    assert _pvalue(sample, t.exact_grad()) < ALPHA  # ∇θ IWAE_2 ≠ ∇θ log p(x): the bias the θ-tables show


@pytest.mark.slow
@pytest.mark.parametrize("K", [2, 16, 64])
def test_slow_iwae_reparam_and_dreg_agree_over_K(K):
    t = make_encoder_target(d=5, k=2, n=4)
    a = pathwise.iwae_reparam(t, 20_000, make_generator(10 + K), K=K)
    b = pathwise.dreg(t, 20_000, make_generator(20 + K), K=K)
    assert _two_sample_pvalue(a, b) > ALPHA
    assert math.isfinite(float(a.grads.mean()))
