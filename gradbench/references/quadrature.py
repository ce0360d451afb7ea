"""Quadrature references for models with a low-dimensional real latent (docs/design.md §7.3), and their fallbacks.

**Laplace approximation** (:func:`laplace`). Per data point, the posterior mode m_n = argmax_z log p(x_n, z)
(best of a grid of starts, then damped Newton steps in float64) and the Laplace covariance
S_n = (−∇²_z log p(x_n, z)|_{m_n})⁻¹ = L_n L_nᵀ.

**Adaptive Gauss–Hermite** (k ≤ 3). With the n-point probabilists' Gauss–Hermite rule per axis
(``scipy.special.roots_hermitenorm``: ∫ f(u) e^{−u²/2} du ≈ Σ_j w_j f(u_j)), product nodes u_i ∈ ℝᵏ and
normalised product weights ω_i (Σ_i ω_i = 1, the rule for E_{N(0, I)}), the nodes z_in = m_n + L_n u_i give
    log p(x_n) ≈ logsumexp_i [log ω_i + log p(x_n, z_in) − log N(z_in; m_n, S_n)],
    ∇θ log p(x) ≈ Σ_n Σ_i w̃_in ∇θ log p(x_n, z_in),   w̃_in ∝ ω_i p(x_n, z_in)/N(z_in; m_n, S_n)
(m_n, S_n held fixed: they only change variables), computed as the θ-gradient of the first line. Under q_φ
(a location–scale family, z = sample(φ, x, u)), with q's own nodes z_in(φ) = m_φn + s_φn ⊙ u_i,
    ELBO ≈ Σ_n Σ_i ω_i [log p(x_n, z_in(φ)) − log q_φ(z_in(φ) | x_n)],
and ∇θ ELBO, ∇φ ELBO are its gradients (torch.func). The integrands are analytic, so the rules converge
geometrically in n; the **error estimate** is the change when the nodes per axis double,
|g_{2n} − g_n| per coordinate, and the reported value is g_{2n} (the estimate is then conservative as long
as the 2n-rule is at least as accurate as the n-rule — tested against brute force). It is carried in
``Reference.error`` (a *quadrature error bound, not a Monte Carlo standard error*); the bias protocol
treats it like a standard error. A ``QuadratureWarning`` is raised when the relative error estimate
exceeds ``WARN_RELATIVE_ERROR`` (e.g. a multimodal posterior that the Laplace-centred rule misses).

Default nodes per axis n (the reported rule has 2n): 100 for k = 1, 64 for k = 2, 24 for k = 3. Gauss–Hermite
converges geometrically for these integrands, at a rate set by the width of their strip of analyticity (tanh
decoders have poles at distance ~π/(2‖W‖) from the real axis) and by the ratio p(x, z)/N(z; m, S), whose
tails grow because the posterior's tails are prior-like while S is narrower than the prior. Measured on a
random tanh decoder (k = 2, d = 8, hidden [5]): the gradient error falls about tenfold per 10 nodes
(4e-3 at n = 10, 1e-6 at n = 40, 5e-8 at n = 60); widening S (× 1.2…2) makes it worse, so the scale stays
Laplace's. 2n = 128 nodes per axis for k = 2 reaches round-off there; (2n)^k ≤ 110 592 nodes per data point.
The ELBO rule converges more slowly when q is wider than the posterior (the decoder's poles come closer in u
= (z − m_φ)/s_φ): 1.5e-6 relative at n = 64 against brute force 1e-8 at 2n = 128 on the test decoder, so its
defaults are 200 / 128 / 24. For k = 3 the defaults may leave a warning (error estimates ~1e-6 relative); the
estimate is still reported in ``error``.

**Estimated references** (:func:`estimated_iwae`, :func:`estimated_log_marginal`): IWAE_K gradients (K ≥ 2)
and every gradient for k > 3 come from a high-budget run of the reparameterised gradient
∇ log (1/K Σ_k w_k), z_k = sample(φ, x, ε_k) (self-contained, torch.func per-replicate gradients), with
mean and per-coordinate standard error.

Every reference is computed on the CPU in float64 (θ, φ and x are cast there first), whatever the target's
device and dtype, and returned in float64 on the target's device.

References: Liu & Pierce (1994), "A note on Gauss–Hermite quadrature", Biometrika (adaptive GH);
Burda, Grosse & Salakhutdinov (2016) (IWAE).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.special import roots_hermitenorm
from torch import Tensor

from gradbench.contracts import Objective, Params, Target
from gradbench.core import Reference, per_replicate_grad
from gradbench.references.estimated import from_replicates
from gradbench.seeding import make_generator

LOG_2PI = math.log(2 * math.pi)
DEFAULT_NODES = {1: 100, 2: 64, 3: 24}
DEFAULT_ELBO_NODES = {1: 200, 2: 128, 3: 24}
MAX_QUADRATURE_DIM = 3
WARN_RELATIVE_ERROR = 1e-6
NODE_BUDGET = 1 << 17  # nodes × data points per evaluation chunk
F64 = torch.float64


class QuadratureWarning(UserWarning):
    """The doubling error estimate of a quadrature reference is not small."""


# -- Laplace approximation -----------------------------------------------------------------------
class Laplace(NamedTuple):
    mode: Tensor  # [N, k]
    chol: Tensor  # [N, k, k], L L^T = S = (−∇²_z log p(x, z))⁻¹ at the mode
    precision: Tensor  # [N, k, k], −∇²_z log p(x, z) at the mode
    log_joint: Tensor  # [N], log p(x, mode)


def laplace(model: Any, theta: Params, x: Tensor, *, starts_per_axis: int = 7, box: float = 3.0,
            max_iter: int = 200, tol: float = 1e-10) -> Laplace:
    """Posterior mode and Laplace covariance of every data point (float64).

    Starts: the best point of a ``starts_per_axis``ᵏ grid on [−box, box]ᵏ (k ≤ 3; the origin otherwise).
    Then damped Newton (Levenberg–Marquardt) steps (Λ + λI) δ = ∇_z log p, accepted when log p increases,
    until max |∇_z log p| < tol. Raises if the Hessian at the end is not negative definite.
    """
    theta = {k: v.detach().to(device="cpu", dtype=F64) for k, v in theta.items()}
    x = x.detach().to(device="cpu", dtype=F64)
    N, k = x.shape[0], model.latent.dim

    def one(z1: Tensor, x1: Tensor) -> Tensor:
        return model.log_joint(theta, x1.unsqueeze(0), z1.unsqueeze(0)).squeeze(0)

    def grad(z: Tensor, x: Tensor) -> Tensor:  # points are independent: ∇ of the sum is the per-point gradient
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(model.log_joint(theta, x, z).sum(), z)[0]

    hess = torch.func.vmap(torch.func.hessian(one))
    if k <= MAX_QUADRATURE_DIM:
        axis = torch.linspace(-box, box, starts_per_axis, dtype=F64)
        grid = torch.cartesian_prod(*([axis] * k)).reshape(-1, k)  # [G, k]
        values = model.log_joint(theta, x, grid.unsqueeze(1).expand(-1, N, k))  # [G, N]
        z = grid[values.argmax(0)]  # [N, k]
    else:
        z = torch.zeros(N, k, dtype=F64)
    f = model.log_joint(theta, x, z)
    lam = torch.full((N,), 1e-3, dtype=F64)
    eye = torch.eye(k, dtype=F64)
    for _ in range(max_iter):
        g = grad(z, x)
        if float(g.abs().max()) < tol:
            break
        A = -hess(z, x) + lam[:, None, None] * eye
        L, info = torch.linalg.cholesky_ex(A)
        good = info == 0
        L = torch.where(good[:, None, None], L, eye)
        step = torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
        z_new = z + torch.where(good[:, None], step, torch.zeros_like(step))
        f_new = model.log_joint(theta, x, z_new)
        ok = good & torch.isfinite(f_new) & (f_new >= f)
        z = torch.where(ok[:, None], z_new, z)
        f = torch.where(ok, f_new, f)
        lam = torch.where(ok, (lam * 0.1).clamp_min(1e-12), lam * 10.0)
    precision = -hess(z, x)
    P_chol, info = torch.linalg.cholesky_ex(precision)
    if bool((info != 0).any()):
        raise ValueError("laplace: the Hessian at the mode is not negative definite for some data point")
    # S = Λ⁻¹ = (P Pᵀ)⁻¹; its Cholesky factor
    S = torch.cholesky_inverse(P_chol)
    return Laplace(z, torch.linalg.cholesky(S), precision, f)


# -- Gauss–Hermite rules -------------------------------------------------------------------------
def gauss_hermite(n: int, k: int) -> tuple[Tensor, Tensor]:
    """Product nodes u [m^k, k] and log weights log ω [m^k] of the n-point rule for E_{N(0, I_k)} (Σ ω = 1).

    The one-axis rule is SciPy's ``roots_hermitenorm`` (Golub–Welsch for small n, an asymptotic method beyond
    n = 150 that stays accurate where the three-term recurrence of ``numpy.polynomial.hermite_e.hermegauss``
    overflows into NaN weights, n ≳ 400). m = n except for n ≳ 390, where the outermost weights (|u| ≳ 38) underflow
    to exactly 0 in float64: those nodes add exactly nothing to any sum and are dropped.
    """
    u1, w1 = roots_hermitenorm(n)
    keep = w1 > 0
    u1, log_w1 = u1[keep], np.log(w1[keep]) - 0.5 * LOG_2PI
    u = torch.cartesian_prod(*([torch.as_tensor(u1, dtype=F64)] * k)).reshape(-1, k)
    lw = torch.cartesian_prod(*([torch.as_tensor(log_w1, dtype=F64)] * k)).reshape(-1, k).sum(-1)
    return u, lw


class QuadratureResult(NamedTuple):
    """A quadrature value (the 2n-node rule) with its doubling error estimate |·_{2n} − ·_n|."""

    value: Tensor  # objective value (log p(x) or ELBO), summed over data points
    grad: Tensor  # flattened gradient(s)
    value_error: Tensor
    grad_error: Tensor
    nodes: int  # n of the coarse rule (the value uses 2n)


def log_marginal_rule(model: Any, theta: Params, x: Tensor, lap: Laplace, n: int) -> tuple[Tensor, Tensor]:
    """(log p(x), ∇θ log p(x) flattened) by the n-point adaptive Gauss–Hermite rule (float64)."""
    theta = {k: v.detach().to(device="cpu", dtype=F64) for k, v in theta.items()}
    x = x.detach().to(device="cpu", dtype=F64)
    u, log_omega = gauss_hermite(n, model.latent.dim)
    M, N = u.shape[0], x.shape[0]
    log_det = torch.log(torch.diagonal(lap.chol, dim1=-2, dim2=-1)).sum(-1)  # [N]
    log_normal = -0.5 * (u * u).sum(-1) - 0.5 * model.latent.dim * LOG_2PI  # [M]: log N(u; 0, I)
    chunk = max(1, NODE_BUDGET // M)
    value = torch.zeros((), dtype=F64)
    grad = torch.zeros(model.layout.size, dtype=F64)
    for s in range(0, N, chunk):
        sl = slice(s, min(N, s + chunk))
        z = lap.mode[sl] + torch.einsum("nkj,mj->mnk", lap.chol[sl], u)  # [M, n, k]
        log_ratio = (log_omega - log_normal).unsqueeze(-1) + log_det[sl]  # log ω − log N(z; m, S)

        def log_px(th: Params, z=z, log_ratio=log_ratio, xs=x[sl]) -> Tensor:
            return torch.logsumexp(log_ratio + model.log_joint(th, xs, z), dim=0).sum()

        g, v = torch.func.grad_and_value(log_px)(theta)
        value = value + v
        grad = grad + model.layout.flatten(g)
    return value, grad


def _float64_cpu(params: Params) -> Params:
    return {k: v.detach().to(device="cpu", dtype=F64) for k, v in params.items()}


def _reparam_integrand(model: Any, family: Any, x: Tensor) -> Callable[[Params, Params, Tensor, Tensor], Tensor]:
    """Σ_i w_i Σ_n [log p(x_n, z_in) − log q_φ(z_in | x_n)] at z_in = sample(φ, x_n, u_i): q's own
    reparameterisation at deterministic noise nodes u_i, so its φ-gradient is the rule for ∇φ ELBO."""
    def integrand(th: Params, ph: Params, noise: Tensor, wc: Tensor) -> Tensor:
        z = family.sample(ph, x, noise)
        return (wc.unsqueeze(-1) * (model.log_joint(th, x, z) - family.log_prob(ph, x, z))).sum()
    return integrand


def _node_sum(model: Any, family: Any, theta: Params, phi: Params, x: Tensor, nodes: Tensor, weights: Tensor,
              integrand: Callable[[Params, Params, Tensor, Tensor], Tensor],
              chunk: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(Σ, ∇θ Σ, ∇φ Σ) of ``integrand(θ, φ, nodes [G, N, ·], weights [G])`` over the rule's nodes [G, ·] (each node
    broadcast to the N points). The sum is linear in the node weights, so it is taken in chunks of nodes
    (NODE_BUDGET // N nodes by default) with torch.func.grad_and_value on each."""
    N = x.shape[0]
    chunk = chunk or max(1, NODE_BUDGET // N)
    value = torch.zeros((), dtype=F64)
    g_theta = torch.zeros(model.layout.size, dtype=F64)
    g_phi = torch.zeros(family.layout.size, dtype=F64)
    for s in range(0, nodes.shape[0], chunk):
        nc, wc = nodes[s:s + chunk].unsqueeze(1).expand(-1, N, -1), weights[s:s + chunk]
        (gt, gp), v = torch.func.grad_and_value(integrand, argnums=(0, 1))(theta, phi, nc, wc)
        value = value + v
        g_theta = g_theta + model.layout.flatten(gt)
        g_phi = g_phi + family.layout.flatten(gp)
    return value, g_theta, g_phi


def elbo_rule(model: Any, family: Any, theta: Params, phi: Params, x: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ELBO, ∇θ ELBO, ∇φ ELBO) by q's own n-point Gauss–Hermite rule, z_i(φ) = sample(φ, x, u_i) (float64)."""
    theta, phi, x = _float64_cpu(theta), _float64_cpu(phi), x.detach().to(device="cpu", dtype=F64)
    u, log_omega = gauss_hermite(n, model.latent.dim)
    return _node_sum(model, family, theta, phi, x, u, torch.exp(log_omega), _reparam_integrand(model, family, x))


def _with_doubling(rule: Callable[[int], tuple[Tensor, Tensor]], n: int, what: str,
                   blocks: dict[str, slice] | None = None) -> QuadratureResult:
    """Both rules; warns when the doubling change of any gradient block is not small relative to that block."""
    v1, g1 = rule(n)
    v2, g2 = rule(2 * n)
    res = QuadratureResult(v2, g2, (v2 - v1).abs(), (g2 - g1).abs(), n)
    for name, sl in (blocks or {"gradient": slice(None)}).items():
        rel = float(torch.linalg.vector_norm(res.grad_error[sl]) / torch.linalg.vector_norm(g2[sl]).clamp_min(1e-300))
        if rel > WARN_RELATIVE_ERROR:
            warnings.warn(f"{what}: doubling error estimate not small (n = {n} → {2 * n} nodes per axis changes "
                          f"the {name} by {rel:.2e} relative); increase quadrature_nodes or check for a multimodal "
                          "posterior", QuadratureWarning, stacklevel=3)
    if float(res.value_error) > WARN_RELATIVE_ERROR * max(1.0, float(v2.abs())):
        warnings.warn(f"{what}: doubling error estimate of the value is {float(res.value_error):.2e}",
                      QuadratureWarning, stacklevel=3)
    return res


def quadrature_log_marginal(model: Any, theta: Params, x: Tensor, nodes: int | None = None,
                            lap: Laplace | None = None) -> QuadratureResult:
    """log p(x) and ∇θ log p(x) by adaptive Gauss–Hermite with n and 2n nodes per axis (value: 2n)."""
    k = model.latent.dim
    if k > MAX_QUADRATURE_DIM:
        raise ValueError(f"quadrature references need latent_dim ≤ {MAX_QUADRATURE_DIM}, got {k}")
    n = nodes or DEFAULT_NODES[k]
    lap = lap if lap is not None else laplace(model, theta, x)
    return _with_doubling(lambda m: log_marginal_rule(model, theta, x, lap, m), n, "log p(x) quadrature",
                          {"θ-gradient": slice(None)})


def quadrature_elbo(model: Any, family: Any, theta: Params, phi: Params, x: Tensor,
                    nodes: int | None = None) -> QuadratureResult:
    """ELBO and its gradient [∇θ ELBO, ∇φ ELBO] (concatenated) by q's Gauss–Hermite rule, n and 2n nodes."""
    k = model.latent.dim
    if k > MAX_QUADRATURE_DIM:
        raise ValueError(f"quadrature references need latent_dim ≤ {MAX_QUADRATURE_DIM}, got {k}")
    return _elbo_with_doubling(model, lambda m: elbo_rule(model, family, theta, phi, x, m),
                               nodes or DEFAULT_ELBO_NODES[k], "ELBO quadrature")


def _elbo_with_doubling(model: Any, elbo_rule_at: Callable[[int], tuple[Tensor, Tensor, Tensor]], n: int,
                        what: str) -> QuadratureResult:
    """:func:`_with_doubling` of an (ELBO, ∇θ ELBO, ∇φ ELBO) rule, the gradient concatenated as [∇θ, ∇φ]."""
    def rule(m: int) -> tuple[Tensor, Tensor]:
        v, gt, gp = elbo_rule_at(m)
        return v, torch.cat([gt, gp])

    P = model.layout.size
    return _with_doubling(rule, n, what, {"θ-gradient": slice(0, P), "φ-gradient": slice(P, None)})


# -- estimated references -------------------------------------------------------------------------
def reparam_iwae_grads(target: Target, K: int, R: int, gen: torch.Generator, *,
                       chunk: int = 256) -> tuple[Tensor, Tensor]:
    """R independent reparameterised gradients of IWAE_K = Σ_n log (1/K) Σ_k w_nk (z = sample(φ, x, ε)):
    ([R, P_θ], [R, P_φ]) in float64. Unbiased for ∇θ IWAE_K and ∇φ IWAE_K (K = 1: the ELBO)."""
    model, family = target.model, target.family
    theta = {k: v.detach().to(device="cpu", dtype=F64) for k, v in target.theta.items()}
    phi = {k: v.detach().to(device="cpu", dtype=F64) for k, v in target.phi.items()}
    x = target.x.detach().to(device="cpu", dtype=F64)
    N = x.shape[0]

    def bound(th: Params, ph: Params, eps: Tensor) -> Tensor:  # eps [K, N, k]
        z = family.sample(ph, x, eps)
        log_w = model.log_joint(th, x, z) - family.log_prob(ph, x, z)
        return (torch.logsumexp(log_w, dim=0) - math.log(K)).sum()

    per_rep = torch.func.vmap(torch.func.grad(bound, argnums=(0, 1)), in_dims=(None, None, 0))
    gts, gps = [], []
    for s in range(0, R, chunk):
        B = min(chunk, R - s)
        eps = family.noise((B, K, N), gen, F64, "cpu")
        gt, gp = per_rep(theta, phi, eps)
        gts.append(model.layout.flatten(gt, batch=(B,)))
        gps.append(family.layout.flatten(gp, batch=(B,)))
    return torch.cat(gts), torch.cat(gps)


def estimated_iwae(target: Target, objective: Objective, replicates: int = 20_000, seed: int = 0) -> Reference:
    """``estimated`` ∇θ or ∇φ of IWAE_K (or the ELBO, K = 1): mean ± s.e. of ``replicates`` reparameterised gradients."""
    objective = objective.canonical()
    K = objective.K if objective.kind == "iwae" else 1
    gt, gp = reparam_iwae_grads(target, K, replicates, make_generator(seed))
    return from_replicates(gt if objective.wrt == "theta" else gp, device=target.x.device)


def estimated_log_marginal(target: Target, objective: Objective, replicates: int = 20_000, seed: int = 0,
                           K: int = 1024) -> Reference:
    """``estimated`` ∇θ log p(x) for latent_dim > 3: self-normalised importance sampling with the Laplace
    approximation as proposal, K particles per replicate, mean ± s.e. over replicates.

    NOT unbiased: its bias is O(1/K) (small with a Laplace proposal, but not covered by the s.e.). A generic
    unbiased (coupled-chain) reference may replace it.
    """
    model = target.model
    theta = {k: v.detach().to(device="cpu", dtype=F64) for k, v in target.theta.items()}
    x = target.x.detach().to(device="cpu", dtype=F64)
    lap = laplace(model, theta, x)
    gen = make_generator(seed)
    N, k = lap.mode.shape
    chunk = max(1, NODE_BUDGET // (K * N))
    log_det = torch.log(torch.diagonal(lap.chol, dim1=-2, dim2=-1)).sum(-1)
    grads = []
    for s in range(0, replicates, chunk):
        B = min(chunk, replicates - s)
        u = torch.randn(B, K, N, k, generator=gen, dtype=F64)
        z = lap.mode + torch.einsum("nkj,bmnj->bmnk", lap.chol, u)
        log_q = -0.5 * (u * u).sum(-1) - log_det - 0.5 * k * LOG_2PI

        def snis(th: Params, z1: Tensor, lq: Tensor) -> Tensor:
            return torch.logsumexp(model.log_joint(th, x, z1) - lq, dim=0).sum()

        g = per_replicate_grad(snis, theta, z, log_q)
        grads.append(model.layout.flatten(g, batch=(B,)))
    return from_replicates(torch.cat(grads), device=target.x.device)


# -- reference builders (target, objective) -> Reference -------------------------------------------
def quadrature_reference(target: Target, objective: Objective, nodes: int | None = None) -> Reference:
    """``quadrature`` reference for ∇θ log p(x), ∇θ ELBO or ∇φ ELBO; ``error`` is the doubling error
    estimate |g_{2n} − g_n| (a quadrature error bound, not a Monte Carlo standard error)."""
    objective = objective.canonical()
    dev = target.x.device
    if objective.kind == "log_marginal":
        res = quadrature_log_marginal(target.model, target.theta, target.x, nodes)
        return Reference(res.grad.to(dev), kind="quadrature", error=res.grad_error.to(dev))  # type: ignore[arg-type]
    if objective.kind != "elbo":
        raise ValueError(f"no quadrature reference for {objective.key}")
    res = quadrature_elbo(target.model, target.family, target.theta, target.phi, target.x, nodes)
    P = target.model.layout.size
    sl = slice(0, P) if objective.wrt == "theta" else slice(P, None)
    return Reference(res.grad[sl].to(dev), kind="quadrature", error=res.grad_error[sl].to(dev))  # type: ignore[arg-type]


def reference_builders(latent_dim: int, nodes: int | None = None, replicates: int = 20_000,
                       seed: int = 0) -> dict[str, Callable[[Target, Objective], Reference]]:
    """Builders by objective key: quadrature for k ≤ 3 (θ, θ/φ ELBO), estimated for IWAE_K and for k > 3."""

    def quad(t: Target, o: Objective) -> Reference:
        return quadrature_reference(t, o, nodes)

    def iwae(t: Target, o: Objective) -> Reference:
        return estimated_iwae(t, o, replicates, seed)

    def marginal(t: Target, o: Objective) -> Reference:
        return estimated_log_marginal(t, o, replicates, seed)

    if latent_dim <= MAX_QUADRATURE_DIM:
        return {"theta": quad, "theta_elbo": quad, "phi_elbo": quad, "theta_iwae": iwae, "phi_iwae": iwae}
    return {"theta": marginal, "theta_elbo": iwae, "phi_elbo": iwae, "theta_iwae": iwae, "phi_iwae": iwae}


# -- Gaussian-mixture q (semi-implicit family with ε uniform over atoms) ------------------
def mixture_elbo_rule(model: Any, family: Any, theta: Params, phi: Params, x: Tensor,
                      n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ELBO, ∇θ ELBO, ∇φ ELBO) for a mixture q_φ(z) = (1/M) Σ_j N(z; T_φ(ε_j), diag d_φ²) (``family.atoms``), by the
    n-point Gauss–Hermite rule on every component (float64):
        ELBO ≈ Σ_n (1/M) Σ_j Σ_i ω_i [log p(x_n, z_jin(φ)) − log q_φ(z_jin(φ) | x_n)],  z_jin = T_φn(ε_j) + d_φn ⊙ u_i,
    i.e. q's own reparameterisation z = sample(φ, x, (ε_j, u_i)) at deterministic nodes, so the φ-gradient of the
    rule is the rule for ∇φ ELBO (each component is a location–scale family in u). log q is the exact mixture
    density (``family.log_prob``); the integrand is analytic, so the rule converges geometrically in n."""
    theta, phi, x = _float64_cpu(theta), _float64_cpu(phi), x.detach().to(device="cpu", dtype=F64)
    atoms = family.atoms.to(F64)  # [M, m]
    M = atoms.shape[0]
    u, log_omega = gauss_hermite(n, model.latent.dim)
    noise_nodes = torch.cat([atoms.repeat_interleave(u.shape[0], 0), u.repeat(M, 1)], dim=-1)  # [M·G, m + k]
    weights = torch.exp(log_omega.repeat(M) - math.log(M))
    return _node_sum(model, family, theta, phi, x, noise_nodes, weights, _reparam_integrand(model, family, x),
                     chunk=max(1, NODE_BUDGET // (x.shape[0] * M)))


def quadrature_mixture_elbo(model: Any, family: Any, theta: Params, phi: Params, x: Tensor,
                            nodes: int | None = None) -> QuadratureResult:
    """ELBO and [∇θ ELBO, ∇φ ELBO] of a Gaussian-mixture q (:func:`mixture_elbo_rule`), n and 2n nodes per axis
    (value: 2n; ``grad_error`` the doubling change)."""
    k = model.latent.dim
    if k > MAX_QUADRATURE_DIM:
        raise ValueError(f"quadrature references need latent_dim ≤ {MAX_QUADRATURE_DIM}, got {k}")
    return _elbo_with_doubling(model, lambda m: mixture_elbo_rule(model, family, theta, phi, x, m),
                               nodes or DEFAULT_NODES[k], "mixture ELBO quadrature")


def box_elbo_rule(model: Any, family: Any, theta: Params, phi: Params, x: Tensor, n: int, *, half_width: float,
                  panel: float) -> tuple[Tensor, Tensor, Tensor]:
    """(ELBO, ∇θ ELBO, ∇φ ELBO) by a composite Gauss–Legendre product rule in z-space (k = 2, any q with log q):
    panels of width ``panel`` tiling [−W, W]² (W = ``half_width``, a multiple of the panel, so the axes z_j = 0 are
    panel edges), n Legendre nodes per panel and axis, nodes z_i and weights w_i fixed (independent of φ):
        ELBO ≈ Σ_n Σ_i w_i q_φ(z_i | x_n) [log p(x_n, z_i) − log q_φ(z_i | x_n)],
    whose φ-gradient is the score form ∫ ∇φ q (log p − log q) dz (the −E_q ∇φ log q term integrates to 0).
    For integrands analytic on each panel but with singularities near the axes (the X-shaped density: log 2cosh of
    a z₁z₂ has complex poles at distance π/(2a|z₂|) from z₁ = 0), where Gauss–Hermite converges slowly. The
    truncation error is the q-mass outside the box times the integrand there (W chosen many s.d. out)."""
    from numpy.polynomial.legendre import leggauss

    theta, phi, x = _float64_cpu(theta), _float64_cpu(phi), x.detach().to(device="cpu", dtype=F64)
    if model.latent.dim != 2:
        raise ValueError("box_elbo_rule is a 2-D rule")
    panels = round(2 * half_width / panel)
    t1, w1 = leggauss(n)
    left = -half_width + panel * np.arange(panels)
    nodes1 = (left[:, None] + 0.5 * panel * (t1[None, :] + 1)).reshape(-1)
    weights1 = np.tile(0.5 * panel * w1, panels)
    z1 = torch.as_tensor(nodes1, dtype=F64)
    w = torch.as_tensor(weights1, dtype=F64)
    z_all = torch.cartesian_prod(z1, z1)  # [G, 2]
    w_all = torch.outer(w, w).reshape(-1)
    def score_form(th: Params, ph: Params, zc: Tensor, wc: Tensor) -> Tensor:
        log_q = family.log_prob(ph, x, zc)
        return (wc.unsqueeze(-1) * torch.exp(log_q) * (model.log_joint(th, x, zc) - log_q)).sum()

    return _node_sum(model, family, theta, phi, x, z_all, w_all, score_form)


def quadrature_box_elbo(model: Any, family: Any, theta: Params, phi: Params, x: Tensor, nodes: int = 12, *,
                        half_width: float = 16.0, panel: float = 0.25) -> QuadratureResult:
    """:func:`box_elbo_rule` with n and 2n Legendre nodes per panel (value: 2n; error: the doubling change)."""
    return _elbo_with_doubling(model, lambda m: box_elbo_rule(model, family, theta, phi, x, m, half_width=half_width,
                                                              panel=panel), nodes, "box ELBO quadrature")
