"""Exact ∇φ ELBO references of the semi-implicit targets:
closed form (PPCA) and quadrature (VAE) against finite differences (float64, 1e-7 relative), the closed form
against quadrature, and against a 10⁶-sample reparameterised estimate within its standard error (α = 0.001)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradbench.estimators.pathwise import reparam_elbo
from gradbench.models.params import PPCAParams, SemiImplicitProposal, VAEParams
from gradbench.models.semi_implicit import build_ppca, build_vae, ppca_elbo
from gradbench.references import quadrature
from gradbench.stats import bias_test

F64 = torch.float64
ALPHA = 1e-3
PROPOSAL = SemiImplicitProposal(mixing_dim=3, mean_shift=0.5)


def ppca_target():
    return build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), PROPOSAL, 0)


def vae_target():
    return build_vae(VAEParams(latent_dim=2, data_dim=6, n_data=3, hidden=[5]), PROPOSAL, 0)


def central_differences(fn, target, h: float = 1e-5) -> torch.Tensor:
    """(f(φ + h e_i) − f(φ − h e_i)) / 2h for every flattened coordinate i (error O(h²))."""
    flat = target.phi_layout.flatten(target.phi)
    out = torch.empty_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        out[i] = (fn(target.phi_layout.unflatten(flat + e)) - fn(target.phi_layout.unflatten(flat - e))) / (2 * h)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_ppca_closed_form_matches_finite_differences() -> None:
    t = ppca_target()
    fd = central_differences(lambda ph: ppca_elbo(t.family, t.theta, t.x, ph), t)
    assert rel(t.reference("phi_elbo").value, fd) < 1e-7


def test_ppca_closed_form_matches_quadrature() -> None:
    """The closed-form ELBO and its gradient equal Gauss–Hermite over the exact marginal (PPCA: exact rule)."""
    t = ppca_target()
    res = quadrature.quadrature_elbo(t.model, t.family.marginal_view(), t.theta, t.phi, t.x, nodes=8)
    P = t.model.layout.size
    assert abs(float(res.value - ppca_elbo(t.family, t.theta, t.x, t.phi))) < 1e-10 * abs(float(res.value))
    assert rel(res.grad[P:], t.reference("phi_elbo").value) < 1e-10


def test_ppca_closed_form_matches_million_sample_estimate() -> None:
    """10⁶ reparameterised ∇φ ELBO replicates (explicit log q of the exact marginal, seed 0): bias test p > α."""
    t = ppca_target()
    gen = torch.Generator().manual_seed(0)
    G = torch.cat([reparam_elbo(t, 100_000, gen).grads for _ in range(10)]).numpy()
    ref = t.reference("phi_elbo").value.numpy()
    assert bias_test(G, ref, float(np.finfo(np.float64).eps), np.random.default_rng(0)).pvalue > ALPHA
    z = np.abs(G.mean(0) - ref) / (G.std(0, ddof=1) / np.sqrt(G.shape[0]))
    assert z.max() < 5.0  # Šidák bound at α = 0.001 over 30 coordinates is about 4.4


def test_vae_quadrature_matches_finite_differences() -> None:
    t = vae_target()
    nodes = 64
    res = quadrature.quadrature_elbo(t.model, t.family.marginal_view(), t.theta, t.phi, t.x, nodes=nodes)
    P = t.model.layout.size

    def value(ph):
        return quadrature.elbo_rule(t.model, t.family.marginal_view(), t.theta, ph, t.x, 2 * nodes)[0]

    fd = central_differences(value, t)
    assert rel(res.grad[P:], fd) < 1e-7
    assert float(res.grad_error[P:].norm() / res.grad[P:].norm()) < 1e-6  # the doubling error estimate


@pytest.mark.parametrize("build", [build_ppca, build_vae])
def test_mlp_family_has_no_log_prob_and_no_reference(build) -> None:
    params = PPCAParams(data_dim=4, latent_dim=2, n_data=2) if build is build_ppca else VAEParams(data_dim=4, n_data=2)
    t = build(params, SemiImplicitProposal(hidden=4), 0)
    assert "log_prob" not in t.capabilities and "implicit" in t.capabilities
    with pytest.raises(ValueError):
        t.reference("phi_elbo")


# -- ε uniform over atoms: q an exact Gaussian mixture, quadrature on every component ----------------
ATOMS = SemiImplicitProposal(mixing_dim=3, mean_shift=0.5, n_atoms=5)


def ppca_atoms_target(hidden: int = 0):
    return build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), ATOMS.model_copy(update={"hidden": hidden}), 0)


@pytest.mark.parametrize("hidden", [pytest.param(0, marks=pytest.mark.slow), 4])
def test_atoms_mixture_rule_matches_finite_differences(hidden: int) -> None:
    """The mixture ELBO rule's ∇φ (autograd) equals central differences of its value (float64, 1e-7 relative) and
    its doubling error is small (linear and MLP T: both exact mixtures; the linear case is in the slow set)."""
    t = ppca_atoms_target(hidden)
    ref = t.reference("phi_elbo")
    assert float(ref.error.norm() / ref.value.norm()) < 1e-7
    nodes = 16
    _, _, g = quadrature.mixture_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, nodes)
    fd = central_differences(lambda ph: quadrature.mixture_elbo_rule(t.model, t.family, t.theta, ph, t.x, nodes)[0], t)
    assert rel(g, fd) < 1e-7


def _sample(t, R: int, blocks: int = 1) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    return torch.cat([reparam_elbo(t, R, gen).grads for _ in range(blocks)]).numpy()


def _pvalue(G: np.ndarray, ref: torch.Tensor) -> float:
    return bias_test(G, ref.numpy(), float(np.finfo(np.float64).eps), np.random.default_rng(0)).pvalue


def test_atoms_reference_matches_sampling_and_gaussian_mixing_reference_is_rejected() -> None:
    """5·10⁴ reparameterised gradients with the exact mixture log q (seed 0) agree with the quadrature reference
    (α = 0.001); the reference of the Gaussian-mixing family at the same φ (another q) is rejected (negative control)."""
    t = ppca_atoms_target()
    G = _sample(t, 50_000)
    assert _pvalue(G, t.reference("phi_elbo").value) > ALPHA
    gaussian = build_ppca(PPCAParams(data_dim=5, latent_dim=2, n_data=3), PROPOSAL, 0)
    assert _pvalue(G, gaussian.reference("phi_elbo").value) < ALPHA


@pytest.mark.slow
def test_atoms_reference_matches_million_sample_estimate() -> None:
    t = ppca_atoms_target(hidden=4)
    assert _pvalue(_sample(t, 100_000, blocks=10), t.reference("phi_elbo").value) > ALPHA
