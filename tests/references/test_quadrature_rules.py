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


@pytest.mark.parametrize("driver", ["box", "mixture"])
def test_doubling_drivers_return_the_fine_rule_and_the_change_from_the_coarse_one(driver: str) -> None:
    """``quadrature_box_elbo`` / ``quadrature_mixture_elbo`` with n nodes: value and [∇θ, ∇φ] are the 2n-node rule's
    (bit for bit), value_error and grad_error are |rule(2n) − rule(n)| (the θ and φ blocks in the layout's order),
    nodes = n; n = 3 is coarse, so each warns that its doubling change is not small, naming its rule. Defaults pinned:
    the box driver's 12 Legendre nodes per panel of width 0.25 on [−16, 16]²."""
    import inspect

    import torch

    t = target(5)
    n = 3
    if driver == "box":
        kw = {"half_width": 4.0, "panel": 1.0}
        with pytest.warns(quadrature.QuadratureWarning, match=r"^box ELBO quadrature: doubling error estimate not small"):
            res = quadrature.quadrature_box_elbo(t.model, t.family, t.theta, t.phi, t.x, n, **kw)
        rule = lambda m: quadrature.box_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, m, **kw)
        defaults = {p.name: p.default for p in inspect.signature(quadrature.quadrature_box_elbo).parameters.values()}
        assert (defaults["nodes"], defaults["half_width"], defaults["panel"]) == (12, 16.0, 0.25)
    else:
        with pytest.warns(quadrature.QuadratureWarning, match=r"^mixture ELBO quadrature: doubling error estimate"):
            res = quadrature.quadrature_mixture_elbo(t.model, t.family, t.theta, t.phi, t.x, n)
        rule = lambda m: quadrature.mixture_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, m)
    (v1, gt1, gp1), (v2, gt2, gp2) = rule(n), rule(2 * n)
    assert res.nodes == n and torch.equal(res.value, v2) and torch.equal(res.grad, torch.cat([gt2, gp2]))
    assert torch.equal(res.value_error, (v2 - v1).abs())
    assert torch.equal(res.grad_error, torch.cat([gt2 - gt1, gp2 - gp1]).abs())
    assert res.grad.shape == (t.layout.size + t.phi_layout.size,) and bool((res.grad_error > 0).any())
