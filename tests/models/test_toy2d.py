"""The 2-D banana and X-shaped targets: normalised densities with exact samplers, and their quadrature
∇φ ELBO references for the semi-implicit family (Gaussian ε and atoms) against finite differences and sampling
(α = 0.001, seed 0), each with a negative control. (The Gauss–Hermite rules against the independent z-space box rule:
tests/references/test_quadrature_rules.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from gradbench.estimators.pathwise import reparam_elbo
from gradbench.models.params import SemiImplicitProposal, Toy2DParams
from gradbench.models.toy2d import box_half_width, build
from gradbench.references import quadrature
from gradbench.stats import ReferenceNoise, bias_test
from tests.differences import central_differences

F64 = torch.float64
ALPHA = 1e-3
EPS = float(np.finfo(np.float64).eps)


def target(density: str, n_atoms: int = 0):
    return build(Toy2DParams(density=density), SemiImplicitProposal(mixing_dim=3, mean_shift=0.5, n_atoms=n_atoms), 0)


@pytest.mark.parametrize("density", ["banana", "x_shaped"])
def test_density_is_normalised_and_sampler_has_its_moments(density: str) -> None:
    """∫ p = 1 (Gauss–Legendre on [−40, 40]², 1e-8) and exact samples (n = 10⁵, seed 0) have the stated mean and
    variances (z-scores, Šidák at α = 0.001); the sampler of the other density (negative control) is rejected."""
    t = target(density)
    model, theta = t.model, t.theta
    u, w = np.polynomial.legendre.leggauss(400)
    grid = torch.as_tensor(40 * u, dtype=F64)
    z = torch.cartesian_prod(grid, grid).unsqueeze(1)
    mass = float((torch.as_tensor(np.outer(40 * w, 40 * w).reshape(-1)) * torch.exp(model.log_joint(theta, t.x, z)[:, 0])).sum())
    assert abs(mass - 1) < 1e-8
    mean, cov = model.moments(theta)

    def zmax(samples: torch.Tensor) -> float:
        n = samples.shape[0]
        c = samples - mean
        z_mean = c.mean(0) / torch.sqrt(torch.diagonal(cov) / n)
        sq = c * c
        z_var = (sq.mean(0) - torch.diagonal(cov)) / (sq.std(0) / math.sqrt(n))
        return float(torch.cat([z_mean, z_var]).abs().max())

    crit = sps.norm.isf((1 - (1 - ALPHA) ** (1 / 4)) / 2)
    gen = torch.Generator().manual_seed(0)
    assert zmax(model.sample_joint(theta, 100_000, gen)[1]) < crit
    other = target("x_shaped" if density == "banana" else "banana")
    assert zmax(other.model.sample_joint(other.theta, 100_000, gen)[1]) > crit


def _pvalue(t, ref, R: int) -> float:
    G = reparam_elbo(t, R, torch.Generator().manual_seed(0)).grads.numpy()
    noise = ReferenceNoise(var=ref.error.numpy() ** 2) if ref.error is not None else None
    return bias_test(G, ref.value.numpy(), EPS, np.random.default_rng(0), noise).pvalue


def test_banana_reference_matches_sampling_and_a_shifted_q_is_rejected() -> None:
    """10⁵ reparameterised gradients (exact mixture log q, seed 0) agree with the reference; the same gradients are
    rejected against the reference of q with another mean shift (negative control)."""
    t = target("banana", 5)
    assert _pvalue(t, t.reference("phi_elbo"), 100_000) > ALPHA
    shifted = build(Toy2DParams(), SemiImplicitProposal(mixing_dim=3, mean_shift=0.6, n_atoms=5), 0)
    assert _pvalue(t, shifted.reference("phi_elbo"), 100_000) < ALPHA


@pytest.mark.slow
@pytest.mark.parametrize("n_atoms", [0, 10])
def test_x_shaped_box_reference_converged_and_matches_million_samples(n_atoms: int) -> None:
    """X-shaped: the box rule's doubling error is < 1e-8 relative, it equals central differences of its own value
    (1e-7), and 10⁶ reparameterised gradients (seed 0) agree with it (α = 0.001)."""
    t = target("x_shaped", n_atoms)
    ref = t.reference("phi_elbo")
    assert float(ref.error.norm() / ref.value.norm()) < 1e-8
    W = box_half_width(t.family, t.phi)
    value = lambda ph: quadrature.box_elbo_rule(t.model, t.family, t.theta, ph, t.x, 8, half_width=W, panel=0.25)[0]
    fd = central_differences(value, t.phi_layout, t.phi)
    assert float((fd - ref.value).norm() / ref.value.norm()) < 1e-7
    assert _pvalue(t, ref, 1_000_000) > ALPHA
