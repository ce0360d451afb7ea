"""The ELBO rules of semi-implicit families on their own (quadrature.mixture_elbo_rule, quadrature.elbo_rule of the
Gaussian marginal, quadrature.box_elbo_rule and their doubling drivers): two independent rules — Gauss–Hermite in
q's own coordinates, per mixture component, and a composite Gauss–Legendre product rule in z-space — agree on the
banana target to 1e-8 relative, and the Gauss–Hermite ∇φ ELBO equals central differences of its own value (1e-7).
Negative control: a box that cuts q's mass off (half-width 2 instead of ≈ 10 s.d.) misses by more than 1e-3."""

from __future__ import annotations

import pytest

from gradbench.models.params import SemiImplicitProposal, Toy2DParams
from gradbench.models.toy2d import box_half_width, build
from gradbench.references import quadrature
from tests.differences import central_differences


def target(n_atoms: int):
    return build(Toy2DParams(density="banana"), SemiImplicitProposal(mixing_dim=3, mean_shift=0.5, n_atoms=n_atoms), 0)


@pytest.mark.parametrize("n_atoms", [0, 5])
def test_banana_gauss_hermite_reference_equals_the_box_rule_and_finite_differences(n_atoms: int) -> None:
    """Two independent rules agree: Gauss–Hermite in q's own coordinates (the reference) and the z-space composite
    Gauss–Legendre rule (1e-8 relative); the reference equals central differences of the GH ELBO (1e-7)."""
    t = target(n_atoms)
    ref = t.reference("phi_elbo").value
    _, _, box = quadrature.box_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, 12,
                                         half_width=box_half_width(t.family, t.phi, panel=1.0), panel=1.0)
    assert float((box - ref).norm() / ref.norm()) < 1e-8
    if n_atoms:
        value = lambda ph: quadrature.mixture_elbo_rule(t.model, t.family, t.theta, ph, t.x, 64)[0]
    else:
        value = lambda ph: quadrature.elbo_rule(t.model, t.family.marginal_view(), t.theta, ph, t.x, 8)[0]
    fd = central_differences(value, t.phi_layout, t.phi)
    assert float((fd - ref).norm() / ref.norm()) < 1e-7
    narrow = quadrature.box_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, 12, half_width=2.0, panel=1.0)[2]
    assert float((narrow - ref).norm() / ref.norm()) > 1e-3
