"""The ELBO rules of semi-implicit families on their own (quadrature.mixture_elbo_rule, quadrature.elbo_rule of the
Gaussian marginal, quadrature.box_elbo_rule and their doubling drivers): two independent rules — Gauss–Hermite in
q's own coordinates, per mixture component, and a composite Gauss–Legendre product rule in z-space — agree on the
banana target to 1e-8 relative, and the Gauss–Hermite ∇φ ELBO equals central differences of its own value (1e-7).
Negative control: a box that cuts q's mass off (half-width 2 instead of ≈ 10 s.d.) misses by more than 1e-3."""

from __future__ import annotations

import math

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
    Gauss–Legendre rule (1e-8 relative; panels of width 0.5, so a rule that confuses panel width and count, or places
    its nodes off their panels, misses; on a truncating box [−2, 2]² panels of width 1 and 0.5 give the same truncated
    integral); the reference equals central differences of the GH ELBO (1e-7)."""
    t = target(n_atoms)
    ref = t.reference("phi_elbo").value
    _, _, box = quadrature.box_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, 12,
                                         half_width=box_half_width(t.family, t.phi, panel=0.5), panel=0.5)
    assert float((box - ref).norm() / ref.norm()) < 1e-8
    if n_atoms:
        value = lambda ph: quadrature.mixture_elbo_rule(t.model, t.family, t.theta, ph, t.x, 64)[0]
    else:
        value = lambda ph: quadrature.elbo_rule(t.model, t.family.marginal_view(), t.theta, ph, t.x, 8)[0]
    fd = central_differences(value, t.phi_layout, t.phi)
    assert float((fd - ref).norm() / ref.norm()) < 1e-7
    narrow = quadrature.box_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, 12, half_width=2.0, panel=1.0)[2]
    assert float((narrow - ref).norm() / ref.norm()) > 1e-3
    # the same truncated box [−2, 2]² tiled by panels of width 0.5 instead of 1: the same integral (each panel's
    # integrand is analytic, 12 nodes converge), so nodes sit on their panels and the box's edges are where they say
    finer = quadrature.box_elbo_rule(t.model, t.family, t.theta, t.phi, t.x, 12, half_width=2.0, panel=0.5)[2]
    assert float((finer - narrow).norm() / narrow.norm()) < 1e-8


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


def test_mixture_rule_theta_gradient_on_ppca_is_the_closed_form():
    """On PPCA log p(x, z) is quadratic in z, so under each Gaussian component N(T_φ(ε_j), diag d²) of the mixture q
    E[log p(x_n, z)] = −(‖x_n − W m_j − μ‖² + tr(WᵀW D))/(2σ²) − d log σ − (‖m_j‖² + tr D)/2 − (d + k)/2 · log 2π
    in closed form, and ∇θ ELBO = ∇θ (1/M) Σ_j Σ_n of it (the entropy does not depend on θ). The mixture rule with
    n = 2 nodes (exact to degree 3) equals it to 1e-12 relative, for data points that differ (so x reaches the
    integrand), and so does the z-space box rule (1e-8: Gauss–Legendre panels, not exact for a Gaussian). Negative
    control: the same closed form without the tr(WᵀW D) term misses by more than 1e-3."""
    import torch

    from gradbench.models.params import PPCAParams
    from gradbench.models.semi_implicit import build_ppca

    t = build_ppca(PPCAParams(data_dim=4, latent_dim=2, n_data=3), SemiImplicitProposal(mixing_dim=2, n_atoms=4), 0)
    f = t.family
    means = f.transform(t.phi, f.atoms.to(torch.float64)[:, None, :])  # [M, N, k]
    D = torch.exp(2 * t.phi["log_d"])  # [N, k]

    def closed_form(theta: dict, with_trace: bool = True) -> torch.Tensor:
        W, mu, sigma = theta["W"], theta["mu"], theta["sigma"].reshape(())
        d, k = W.shape
        r = t.x - means @ W.T - mu  # [M, N, d]
        tr = ((W * W).sum(0) * D).sum(-1) if with_trace else 0.0  # tr(WᵀW diag D) [N]
        e = (-0.5 * ((r * r).sum(-1) + tr) / sigma**2 - d * torch.log(sigma)
             - 0.5 * ((means * means).sum(-1) + D.sum(-1)) - 0.5 * (d + k) * math.log(2 * math.pi))
        return e.mean(0).sum()

    theta = {n: v.detach() for n, v in t.theta.items()}
    exact = t.layout.flatten(torch.func.grad(closed_form)(theta))
    _, g_theta, _ = quadrature.mixture_elbo_rule(t.model, f, t.theta, t.phi, t.x, 2)
    assert float((g_theta - exact).norm() / exact.norm()) < 1e-12
    wrong = t.layout.flatten(torch.func.grad(lambda th: closed_form(th, with_trace=False))(theta))
    assert float((g_theta - wrong).norm() / exact.norm()) > 1e-3
    # the z-space box rule (k = 2, any q with log q) on the same data model: its ∇θ is the closed form too
    W = box_half_width(f, t.phi, panel=0.5)
    _, box_theta, _ = quadrature.box_elbo_rule(t.model, f, t.theta, t.phi, t.x, 12, half_width=W, panel=0.5)
    assert float((box_theta - exact).norm() / exact.norm()) < 1e-8


def test_rules_refuse_the_latent_dimensions_they_cannot_integrate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The box rule is 2-D only; the mixture driver takes k ≤ MAX_QUADRATURE_DIM = 3 (literal edge: k = 3 reaches the
    rule, k = 4 is refused with the limit in the message; the rule is replaced by a recorder so k = 3 costs nothing)."""
    from gradbench.models.params import PPCAParams
    from gradbench.models.semi_implicit import build_ppca

    assert quadrature.MAX_QUADRATURE_DIM == 3
    one_d = build_ppca(PPCAParams(data_dim=3, latent_dim=1), SemiImplicitProposal(n_atoms=2), 0)
    with pytest.raises(ValueError, match=r"^box_elbo_rule is a 2-D rule$"):
        quadrature.box_elbo_rule(one_d.model, one_d.family, one_d.theta, one_d.phi, one_d.x, 2, half_width=1.0, panel=1.0)
    reached: list[str] = []
    monkeypatch.setattr(quadrature, "_elbo_with_doubling", lambda model, rule, n, what: reached.append(what))
    for k in (3, 4):
        t = build_ppca(PPCAParams(data_dim=5, latent_dim=k), SemiImplicitProposal(n_atoms=2), 0)
        if k == 3:
            quadrature.quadrature_mixture_elbo(t.model, t.family, t.theta, t.phi, t.x, 2)
        else:
            with pytest.raises(ValueError, match=r"^quadrature references need latent_dim ≤ 3, got 4$"):
                quadrature.quadrature_mixture_elbo(t.model, t.family, t.theta, t.phi, t.x, 2)
    assert reached == ["mixture ELBO quadrature"]
