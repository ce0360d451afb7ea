"""Estimators of ∇φ ELBO for semi-implicit q (``gradbench.families.semi_implicit``) and MCMC-enriched q (docs/design.md §6.8).

q_φ(z) = ∫ q(ε) q_φ(z | ε) dε with z = T_φ(ε) + d_φ ⊙ u; noise = (ε, u) from ``target.draw_noise`` (common random
numbers with every other estimator on the target). Write f_φ(z) = log p(x, z) − log q_φ(z).
    ∇φ ELBO = E_{ε,u}[(∇_z log p(x, z) − ∇_z log q_φ(z)) ∂z/∂φ]   (the score term E[∇φ log q_φ(z)|_z] = 0),
where ∇_z log q_φ(z) is intractable for an implicit q.

* ``sivi`` (Yin & Zhou 2018): ĝ = ∇φ (1/S) Σ_s Σ_n [log p(x_n, z_sn) − log (1/(K+1)) (q(z_sn | ε⁰_sn) +
  Σ_{ℓ=1..K} q(z_sn | ε^ℓ_sn))], with ε^ℓ ~ q(ε) fresh (independent of φ). Unbiased for the gradient of the
  SIVI bound L_K ≤ ELBO (L_K ↑ ELBO as K → ∞); biased for ∇φ ELBO, the bias shrinking with K. K = 0 is the
  "conditional treated as the marginal" surrogate (a negative control).
* ``uivi`` (Titsias & Ruiz 2019): ∇_z log q_φ(z) = E_{q(ε′|z)}[∇_z log q_φ(z | ε′)], with
  ∇_z log q(z | ε′) = (T_φ(ε′) − z)/d²; the estimate ĝ_z averages it over J draws ε′ and
      ĝ = ∇φ (1/S) Σ_s Σ_n [log p(x_n, z_sn(φ)) − stop(ĝ_z,sn) · z_sn(φ)].
  ``reverse``: ``hmc`` (ε′ from HMC targeting q(ε′ | z) ∝ q(ε′) q(z | ε′), started at the ε⁰ that generated z,
  ``burn_in`` HMC iterations then J = ``samples`` more, each kept), ``exact`` (ε′ ~ q(ε | z) exactly: linear
  family; unbiased, isolates estimator variance from HMC error), ``marginal`` (ĝ_z = ∇_z log q_φ(z) in closed
  form, J = ∞: then ĝ is exactly the sticking-the-landing gradient, tested), and two negative controls: ``generating``
  (ε′ = ε⁰: zero HMC steps; biased, because ε⁰ is correlated with ∂z/∂φ beyond z) and ``prior`` (ε′ ~ q(ε):
  the wrong reverse conditional).
* ``density_ratio`` (lecture Part I): log q/p(z) from a per-replicate quadratic logistic classifier of q-samples
  against prior samples, trained for a stated number of Newton steps (explicit ``RatioState``); see its docstring.
* ``vcd`` (Ruiz & Titsias 2019): ascent direction −∇φ L_VCD, L_VCD = −E_{q⁰}[f_φ(z)] + E_{q⁽ᵗ⁾}[f_φ(z)],
  q⁽ᵗ⁾ = q⁰ moved by t HMC iterations targeting p(z | x) (the kernel does not depend on φ):
      −∇φ L_VCD = ∇φ E_{q⁰}[f_φ] − E_{z⁰, zᵗ}[(f_φ(zᵗ) − b) ∇φ log q_φ(z⁰)] + E_{q⁽ᵗ⁾}[∇φ log q_φ(zᵗ)],
  (first term reparameterised, second with the per-datapoint leave-one-out control variate b_s = mean_{s′≠s}
  f(zᵗ_s′), S ≥ 2, which keeps it unbiased). Needs an explicit log q (``log_prob``). As t → ∞ it tends to
  ∇φ [ELBO − KL(p(z|x) ‖ q)] (exact on ``ppca_semi_implicit``: ``models.semi_implicit.ppca_vcd_limit_reference``).

Cost (``GradSample.cost``): evaluations per data point of a log density with its gradient: S for log p,
plus S·K conditionals (sivi), S·(burn_in + J − 1)·L leapfrog steps (uivi; the exact reverse counts J),
S·t·L leapfrog steps on log p (vcd). Diagnostics: ``acceptance`` (mean HMC acceptance rate per replicate) and, for
uivi with HMC, ``ess`` (effective sample size of the reverse chain per replicate, :func:`chain_ess`); the ``mcmc``
protocol reports both (mean ± s.e. over replicates).

Per-replicate gradients: ``torch.func.vmap(grad(...))`` over replicates (φ shared); HMC runs batched over all
replicates, samples and data points at once (independent chains, one per (r, s, n)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from gradbench.core import GradSample, per_replicate_grad
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas)
    DensityRatioParams,
    SIVIParams,
    UIVIParams,
    VCDParams,
)
from gradbench.estimators.pathwise import objective_wrt, require

Reverse = Literal["hmc", "exact", "marginal", "generating", "prior"]
MIN_ESS_STATES = 10  # chain_ess: shorter chains report NaN


# -- HMC (blackjax-style: a pure kernel over an explicit state) -----------------------------------
class HMCState(NamedTuple):
    position: Tensor  # [..., dim] one independent chain per leading index
    log_density: Tensor  # [...]
    grad: Tensor  # [..., dim]


class HMCInfo(NamedTuple):
    acceptance: Tensor  # [...] min(1, exp(−ΔH))
    accepted: Tensor  # [...] bool


def value_and_grad(log_density: Callable[[Tensor], Tensor], position: Tensor) -> tuple[Tensor, Tensor]:
    """(log π(x) [...], ∇ log π(x) [..., dim]) for independent chains (the gradient of the sum)."""
    with torch.enable_grad():
        x = position.detach().requires_grad_(True)
        value = log_density(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach()


def hmc_init(log_density: Callable[[Tensor], Tensor], position: Tensor) -> HMCState:
    return HMCState(position.detach(), *value_and_grad(log_density, position))


def hmc_step(log_density: Callable[[Tensor], Tensor], state: HMCState, gen: torch.Generator, *,
             step_size: float, leapfrog: int, jitter: float = 0.0) -> tuple[HMCState, HMCInfo]:
    """One HMC iteration per chain: p ~ N(0, I), ``leapfrog`` leapfrog steps of size h ~ U[h₀(1 − j), h₀(1 + j)]
    (drawn per chain and iteration, independent of the state: the kernel stays reversible; the jitter breaks the
    near-periodic trajectories of a fixed h·L on Gaussian-like targets), Metropolis accept with probability
    min(1, exp(H(x, p) − H(x′, p′))), H = −log π(x) + ½‖p‖² (Neal 2011, "MCMC using Hamiltonian dynamics")."""
    x0 = state.position
    p0 = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
    u_h = torch.rand((*x0.shape[:-1], 1), generator=gen, dtype=x0.dtype, device=x0.device)
    step_size = step_size * (1 + jitter * (2 * u_h - 1))
    x, g = x0, state.grad
    p = p0 + 0.5 * step_size * g
    for i in range(leapfrog):
        x = x + step_size * p
        value, g = value_and_grad(log_density, x)
        if i < leapfrog - 1:
            p = p + step_size * g
    p = p + 0.5 * step_size * g
    log_ratio = value - state.log_density - 0.5 * (p * p).sum(-1) + 0.5 * (p0 * p0).sum(-1)
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    acceptance = torch.exp(log_ratio.clamp(max=0.0))
    u = torch.rand(acceptance.shape, generator=gen, dtype=x0.dtype, device=x0.device)
    accepted = u < acceptance
    keep = accepted.unsqueeze(-1)
    new = HMCState(torch.where(keep, x, x0), torch.where(accepted, value, state.log_density),
                   torch.where(keep, g, state.grad))
    return new, HMCInfo(acceptance, accepted)


def chain_ess(trajectory: Tensor) -> Tensor:
    """Effective sample size of a chain of T states, per batch index: ``trajectory`` [T, B, C] holds C scalar series
    (e.g. the coordinates of several independent chains) of replicate b, pooled into one autocorrelation:
        γ_ℓ = mean_{c, t < T−ℓ} (x_t − x̄_c)(x_{t+ℓ} − x̄_c) · (T − ℓ)/T,   ρ_ℓ = γ_ℓ/γ₀,
    Geyer's (1992) initial positive sequence Γ_i = ρ_{2i} + ρ_{2i+1}, summed while positive and made monotone,
        τ = −1 + 2 Σ_i Γ_i,   ESS = T/τ  (capped at T·log₁₀T as in Stan).
    For an AR(1) series with coefficient φ, τ = (1 + φ)/(1 − φ) (tested). Centring at each series' own mean biases
    τ by O(τ/T) on short chains; the UIVI reverse chain is stationary from its start (ε⁰ is an exact draw of
    q(ε | z)), so the whole trajectory, ε⁰ included, is used. Chains shorter than ``MIN_ESS_STATES`` give NaN: with
    per-chain centring the estimate is meaningless there (T = 2: ρ̂₁ = −½ whatever the chain)."""
    T = trajectory.shape[0]
    if T < MIN_ESS_STATES:
        return torch.full(trajectory.shape[1:2], math.nan, dtype=trajectory.dtype, device=trajectory.device)
    x = trajectory - trajectory.mean(0, keepdim=True)
    gamma0 = (x * x).mean((0, 2))
    lags = 2 * (T // 2)
    f = torch.fft.rfft(x, n=2 * T, dim=0)  # autocovariances of every series at once (zero-padded: no wrap-around)
    acov = torch.fft.irfft(f * f.conj(), n=2 * T, dim=0)[:lags].mean(-1) / T  # [lags, B]
    rho = acov / gamma0
    pairs = rho[0::2] + rho[1::2]  # Γ_i [lags/2, B]
    positive = torch.cumprod((pairs > 0).to(rho.dtype), 0)
    monotone = torch.cummin(pairs, 0).values
    tau = (-1 + 2 * (positive * monotone).sum(0)).clamp_min(1 / max(1.0, math.log10(T)))
    return T / tau


def _require_semi_implicit(target: object, estimator: str) -> None:
    require(target, {"reparam", "implicit"}, estimator)
    if not hasattr(target.family, "log_conditional"):  # type: ignore[attr-defined]
        raise TypeError(f"estimator {estimator!r} needs a semi-implicit family (log_conditional, transform)")


def _cost(target: object, R: int, per_point: float, like: Tensor) -> Tensor:
    return torch.full((R,), float(per_point * target.n_data), dtype=like.dtype, device=like.device)  # type: ignore[attr-defined]


# -- SIVI ----------------------------------------------------------------------------------------
def sivi(target: object, R: int, gen: torch.Generator, *, S: int = 1, K: int = 10) -> GradSample:
    """Gradient of the SIVI bound with K extra mixing draws (module docstring): ∇φ L_K, biased for ∇φ ELBO."""
    _require_semi_implicit(target, "sivi")
    fam, x = target.family, target.x  # type: ignore[attr-defined]
    noise = target.draw_noise((R, S), gen)  # type: ignore[attr-defined]
    extra = fam.mixing_noise((R, S, K, target.n_data), gen, x.dtype, x.device)  # type: ignore[attr-defined]

    def bound(phi: dict[str, Tensor], noise1: Tensor, extra1: Tensor) -> Tensor:  # [S, N, m+k], [S, K, N, m]
        z = fam.sample(phi, x, noise1)
        eps = torch.cat([fam.split(noise1)[0].unsqueeze(1), extra1], dim=1)  # [S, K+1, N, m]
        log_qc = fam.log_conditional(phi, z.unsqueeze(1), eps)  # [S, K+1, N]
        log_q_hat = torch.logsumexp(log_qc, dim=1) - math.log(K + 1)
        return (target.log_joint(z) - log_q_hat).sum(-1).mean(0)  # type: ignore[attr-defined]

    g = per_replicate_grad(bound, target.encoder_params(), noise, extra)  # type: ignore[attr-defined]
    grads = target.phi_layout.flatten(g, batch=(R,)).detach()  # type: ignore[attr-defined]
    return GradSample(grads, target.phi_layout, _cost(target, R, S * (1 + K), grads),  # type: ignore[attr-defined]
                      wrt=objective_wrt("phi", "elbo"))


# -- UIVI ----------------------------------------------------------------------------------------
def reverse_draws(target: object, z: Tensor, eps0: Tensor, gen: torch.Generator, *, reverse: Reverse,
                  samples: int, burn_in: int, leapfrog: int, step_size: float,
                  step_jitter: float = 0.0, diagnostics: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """ε′ [J, ..., N, m] given z [..., N, k] and its generating ε⁰, and the mean acceptance rate per leading
    replicate index (NaN when no HMC ran). With HMC and a ``diagnostics`` dict, adds ``ess`` [R]: the effective
    sample size (:func:`chain_ess`) of the burn_in + J + 1 states ε⁰, ε¹, … of the replicate's chains (all S·N
    chains and m coordinates pooled)."""
    fam, phi = target.family, target.encoder_params()  # type: ignore[attr-defined]
    nan = torch.full(z.shape[:1], math.nan, dtype=z.dtype, device=z.device)
    if reverse == "generating":
        return eps0.unsqueeze(0), nan
    if reverse == "prior":
        return fam.mixing_noise((samples, *eps0.shape[:-1]), gen, z.dtype, z.device), nan
    if reverse == "exact":
        return fam.exact_reverse_sample(phi, z.expand(samples, *z.shape), gen), nan

    def log_density(eps: Tensor) -> Tensor:  # log q(ε) + log q(z | ε), one chain per (r, s, n)
        return fam.log_mixing(eps) + fam.log_conditional(phi, z, eps)

    state = hmc_init(log_density, eps0)
    kept, acc, path = [], [], [eps0]
    for i in range(burn_in + samples):
        state, info = hmc_step(log_density, state, gen, step_size=step_size, leapfrog=leapfrog, jitter=step_jitter)
        acc.append(info.acceptance)
        path.append(state.position)
        if i >= burn_in:
            kept.append(state.position)
    rate = torch.stack(acc).mean(0).reshape(z.shape[0], -1).mean(-1)
    if diagnostics is not None:
        diagnostics["ess"] = chain_ess(torch.stack(path).reshape(len(path), z.shape[0], -1))
    return torch.stack(kept), rate


def uivi(target: object, R: int, gen: torch.Generator, *, S: int = 1, reverse: Reverse = "hmc", samples: int = 1,
         burn_in: int = 5, leapfrog: int = 5, step_size: float = 0.3, step_jitter: float = 0.5) -> GradSample:
    """UIVI ∇φ ELBO with ∇_z log q(z) from reverse-conditional draws (module docstring)."""
    _require_semi_implicit(target, "uivi")
    if reverse in ("exact", "marginal"):
        require(target, {"log_prob"}, f"uivi (reverse: {reverse})")
    fam, x, phi = target.family, target.x, target.encoder_params()  # type: ignore[attr-defined]
    if reverse == "hmc" and getattr(fam, "n_atoms", 0) > 0:
        raise ValueError("uivi: reverse: hmc needs a continuous ε (ε over atoms: use reverse: exact, the discrete posterior)")
    diagnostics: dict[str, Tensor] = {"ess": torch.full((R,), math.nan, dtype=x.dtype, device=x.device)}
    noise = target.draw_noise((R, S), gen)  # type: ignore[attr-defined]
    with torch.no_grad():
        z = fam.sample(phi, x, noise)
        if reverse == "marginal":
            grad_z_log_q, acceptance = fam.grad_log_prob_z(phi, z), torch.full((R,), math.nan, dtype=z.dtype)
        else:
            eps_rev, acceptance = reverse_draws(target, z, fam.split(noise)[0], gen, reverse=reverse, samples=samples,
                                                burn_in=burn_in, leapfrog=leapfrog, step_size=step_size,
                                                step_jitter=step_jitter, diagnostics=diagnostics)
            grad_z_log_q = ((fam.transform(phi, eps_rev) - z) * torch.exp(-2 * phi["log_d"])).mean(0)

    def surrogate(phi1: dict[str, Tensor], noise1: Tensor, gz1: Tensor) -> Tensor:
        z1 = fam.sample(phi1, x, noise1)
        return (target.log_joint(z1) - (gz1 * z1).sum(-1)).sum(-1).mean(0)  # type: ignore[attr-defined]

    g = per_replicate_grad(surrogate, phi, noise, grad_z_log_q)
    grads = target.phi_layout.flatten(g, batch=(R,)).detach()  # type: ignore[attr-defined]
    steps = {"hmc": (burn_in + samples) * leapfrog, "exact": samples, "prior": samples}.get(reverse, 0)
    return GradSample(grads, target.phi_layout, _cost(target, R, S * (1 + steps), grads),  # type: ignore[attr-defined]
                      {"acceptance": acceptance, **diagnostics}, wrt=objective_wrt("phi", "elbo"))


# -- VCD -----------------------------------------------------------------------------------------
def vcd(target: object, R: int, gen: torch.Generator, *, S: int = 2, t: int = 5, leapfrog: int = 5,
        step_size: float = 0.2, step_jitter: float = 0.5, control_variate: bool = True,
        score_term: bool = True) -> GradSample:
    """−∇φ L_VCD with t HMC iterations on p(z | x) from z⁰ ~ q⁰ (module docstring). ``score_term = False`` drops
    the E[(f(zᵗ) − b) ∇φ log q(z⁰)] term (a negative control)."""
    require(target, {"reparam", "log_prob"}, "vcd")
    if control_variate and S < 2:
        raise ValueError("vcd: the leave-one-out control variate needs S ≥ 2")
    phi = target.encoder_params()  # type: ignore[attr-defined]
    noise = target.draw_noise((R, S), gen)  # type: ignore[attr-defined]
    with torch.no_grad():
        z0 = target.rsample(phi, noise)  # type: ignore[attr-defined]
        state = hmc_init(target.log_joint, z0)  # type: ignore[attr-defined]
        acc = []
        for _ in range(t):
            state, info = hmc_step(target.log_joint, state, gen, step_size=step_size, leapfrog=leapfrog,  # type: ignore[attr-defined]
                                   jitter=step_jitter)
            acc.append(info.acceptance)
        zt = state.position
        f_t = state.log_density - target.log_q(phi, zt)  # type: ignore[attr-defined]  [R, S, N]
        baseline = (f_t.sum(1, keepdim=True) - f_t) / (S - 1) if control_variate else torch.zeros_like(f_t)
        weight = (f_t - baseline) if score_term else torch.zeros_like(f_t)
    acceptance = torch.stack(acc).mean(0).reshape(R, -1).mean(-1) if t > 0 else torch.full((R,), math.nan)

    def surrogate(phi1: dict[str, Tensor], noise1: Tensor, z01: Tensor, zt1: Tensor, w1: Tensor) -> Tensor:
        z = target.rsample(phi1, noise1)  # type: ignore[attr-defined]
        f0 = target.log_joint(z) - target.log_q(phi1, z)  # type: ignore[attr-defined]
        return (f0 - w1 * target.log_q(phi1, z01) + target.log_q(phi1, zt1)).sum(-1).mean(0)  # type: ignore[attr-defined]

    g = per_replicate_grad(surrogate, phi, noise, z0, zt, weight)
    grads = target.phi_layout.flatten(g, batch=(R,)).detach()  # type: ignore[attr-defined]
    return GradSample(grads, target.phi_layout, _cost(target, R, S * (1 + t * leapfrog), grads),  # type: ignore[attr-defined]
                      {"acceptance": acceptance.to(grads.dtype)}, wrt=objective_wrt("phi", "elbo"))


# -- density ratio (prior-contrastive classifier) --------------------------------------------------
class RatioState(NamedTuple):
    """A logistic classifier per (replicate, data point) on quadratic features of z (explicit state)."""

    omega: Tensor  # [R, N, F] weights; logit T_ω(z) = ω · features(z)
    steps: int  # training steps taken


def quadratic_features(z: Tensor) -> Tensor:
    """[z_i z_j (i ≤ j), z_i, 1] [..., F], F = k(k+1)/2 + k + 1: the log ratio of two Gaussians is linear in these."""
    k = z.shape[-1]
    i, j = torch.triu_indices(k, k, device=z.device)
    return torch.cat([z[..., i] * z[..., j], z, torch.ones_like(z[..., :1])], dim=-1)


def ratio_init(R: int, n_data: int, latent_dim: int, like: Tensor) -> RatioState:
    F = latent_dim * (latent_dim + 1) // 2 + latent_dim + 1
    return RatioState(torch.zeros(R, n_data, F, dtype=like.dtype, device=like.device), 0)


def ratio_train(target: object, state: RatioState, gen: torch.Generator, *, steps: int, batch: int,
                ridge: float = 1e-3, damping: float = 0.5) -> RatioState:
    """``steps`` damped Newton (IRLS) steps on the logistic log-likelihood of q-samples (label 1) against
    N(0, I)-samples (label 0), ``batch`` fresh draws of each per step and classifier:
        ω ← ω + damping·(H + ridge·I)⁻¹ ∇,  ∇ = mean_q[(1 − σ(T)) f] − mean_p[σ(T) f],  H = mean_{q ∪ p}[σ(T)(1 − σ(T)) f fᵀ].
    At the optimum T_ω = log q(z) − log N(z; 0, I) (exactly representable when q is Gaussian). Undamped steps
    diverged on some classifiers (measured: 10 steps, 1 in ~10³ exploding); damping 0.5 converges in ~20 steps."""
    fam, x, phi = target.family, target.x, target.encoder_params()  # type: ignore[attr-defined]
    omega = state.omega
    R, N, F = omega.shape
    k = target.latent_dim  # type: ignore[attr-defined]
    eye = torch.eye(F, dtype=omega.dtype, device=omega.device)
    with torch.no_grad():
        for _ in range(steps):
            zq = fam.sample(phi, x, target.draw_noise((R, batch), gen))  # type: ignore[attr-defined]  [R, B, N, k]
            zp = torch.randn(R, batch, N, k, generator=gen, dtype=x.dtype, device=x.device)
            f = quadratic_features(torch.cat([zq, zp], dim=1))  # [R, 2B, N, F]
            logit = torch.einsum("rbnf,rnf->rbn", f, omega)
            label = torch.cat([torch.ones(batch), torch.zeros(batch)]).to(f).view(1, -1, 1)
            p = torch.sigmoid(logit)
            grad = torch.einsum("rbn,rbnf->rnf", label - p, f) / batch
            hess = torch.einsum("rbn,rbnf,rbng->rnfg", p * (1 - p), f, f) / batch
            omega = omega + damping * torch.linalg.solve(hess + ridge * eye, grad.unsqueeze(-1)).squeeze(-1)
    return RatioState(omega, state.steps + steps)


def density_ratio(target: object, R: int, gen: torch.Generator, *, S: int = 1, steps: int = 20, batch: int = 256,
                  state: RatioState | None = None) -> GradSample:
    """Prior-contrastive density-ratio ∇φ ELBO (lecture Part I; Mescheder, Nowozin & Geiger 2017; Huszár 2017).

    With a N(0, I) prior, ELBO = E_q[log p(x | z) − log q(z)/p(z)]; a classifier T_ω(z) of q-samples against
    prior samples has optimum T* = log q/p, so
        ĝ = ∇φ (1/S) Σ_s Σ_n [log p(x_n, z_sn(φ)) − log N(z_sn(φ); 0, I) − T_ω(z_sn(φ))]
    (ω fixed) = (∇_z log p(x, z) − ∇_z log p(z) − ∇_z T_ω) ∂z/∂φ: unbiased when T_ω = T*, its bias set by the
    classifier's error (finite training, finite batches). Each replicate trains
    its own classifier (quadratic logistic regression per data point: well specified when q is Gaussian) for
    ``steps`` Newton steps from ``state`` (default ω = 0) on fresh draws, so replicates are i.i.d. and the bias is
    that of a classifier trained that long. ``steps = 0`` (T = 0: q taken as the prior) is a negative control.
    Cost: S log p evaluations plus 2·batch·steps classifier samples per data point.
    """
    _require_semi_implicit(target, "density_ratio")
    fam, x, phi = target.family, target.x, target.encoder_params()  # type: ignore[attr-defined]
    noise = target.draw_noise((R, S), gen)  # type: ignore[attr-defined]
    k = target.latent_dim  # type: ignore[attr-defined]
    state = state if state is not None else ratio_init(R, target.n_data, k, x)  # type: ignore[attr-defined]
    state = ratio_train(target, state, gen, steps=steps, batch=batch)

    def surrogate(phi1: dict[str, Tensor], noise1: Tensor, omega1: Tensor) -> Tensor:
        z = fam.sample(phi1, x, noise1)  # [S, N, k]
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * k * math.log(2 * math.pi)
        ratio = (quadratic_features(z) * omega1).sum(-1)
        return (target.log_joint(z) - log_prior - ratio).sum(-1).mean(0)  # type: ignore[attr-defined]

    g = per_replicate_grad(surrogate, phi, noise, state.omega)
    grads = target.phi_layout.flatten(g, batch=(R,)).detach()  # type: ignore[attr-defined]
    return GradSample(grads, target.phi_layout, _cost(target, R, S + 2 * batch * steps, grads),  # type: ignore[attr-defined]
                      wrt=objective_wrt("phi", "elbo"))
