"""Estimators of ∇φ E_{q_φ}[f(b)] for factorised Bernoulli families b ∈ {0,1}ᵏ (docs/design.md §6.5).

q_φ(b | x_n) = Π_j Bern(b_j; σ(ℓ_nj)), ℓ = ℓ_φ(x) the family's logits. The integrand is the target's
``signal(b)`` if it has one (the ``bernoulli_toy``: f(b) = Σ_j (b_j − t)²), else the ELBO's
f(b) = log p_θ(x, b) − log q_φ̄(b | x) with φ̄ held fixed (its own φ-gradient −E ∇φ log q = 0 is dropped, so
every estimator here targets ∇φ ELBO, key ``phi_elbo``). Every estimator first builds a gradient ĝ_ℓ
[R, N, k] w.r.t. the logits and maps it to φ by the chain rule ∇φ = Σ_n (∂ℓ_n/∂φ)ᵀ ĝ_ℓ,n (one vmap(grad)
of the surrogate Σ ĝ_ℓ · ℓ_φ(x)). RLOO, NVIL and wake-sleep need only the family's ``logits`` (capability
``logits``) and draw b through the family's own ``noise`` and ``sample``; the others transform the noise
themselves and need the Gumbel layout (capability ``gumbel_noise``: one uniform u ~ U(0,1)^{[R, N, k]} drives
b = 1[u < σ(ℓ)] = H(z), z = ℓ − logit u), so every estimator shares common random numbers with the generic ones. Unbiased: ``arm``, ``disarm``, ``rloo``, ``nvil`` (unnormalised), ``rebar``, ``relax``.
Biased (measured): ``gumbel_softmax``, ``straight_through``, ``wake_sleep``, ``reweighted_wake_sleep``.

* ARM (Yin & Zhou 2019): b¹ = 1[u > σ(−ℓ)], b² = 1[u < σ(ℓ)]:  ĝ_ℓ = (f(b¹) − f(b²)) (u − ½).
* DisARM (Dong, Mnih & Tucker 2020):  ĝ_ℓj = ½ (f(b¹) − f(b²)) (−1)^{b²_j} 1[b¹_j ≠ b²_j] σ(|ℓ_j|).
* RLOO (Kool, van Hoof & Welling 2019), S samples: (1/S) Σ_s (f(b_s) − mean_{t≠s} f(b_t)) (b_s − σ(ℓ)).
* NVIL (Mnih & Gregor 2014): (f(b) − c − b_ψ(x)) (b − σ(ℓ)) [/ max(1, √v)], c and v running mean and
  variance of f − c, b_ψ(x) = ψᵀ[1, x̃] fitted to f − c by discounted least squares; explicit state
  trained for ``warmup`` steps on fresh samples after the measured draw (so independent of it: unbiased).
* Concrete / Gumbel-softmax (Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017): pathwise ∂ℓ f(σ(z/τ)).
  Straight-through (Bengio et al. 2013; Jang et al. 2017): forward f(H(z)), backward through σ(z/τ).
* REBAR (Tucker et al. 2017): with z̃ ~ z | b (z̃ = ℓ + logit w̃, w̃ = 1 − p + v p if b = 1, v (1 − p) if
  b = 0, p = σ(ℓ), v ~ U(0,1)) and c(z) = η f(σ(z/λ)):
      ĝ_ℓ = [f(b) − c(z̃)] (b − p) + ∂ℓ c(z) − ∂ℓ c(z̃).
  η, log λ fixed, or trained for ``warmup`` Adam steps to minimise E‖ĝ_ℓ‖² (= variance + const, since
  the estimator is unbiased for every η, λ).
* RELAX (Grathwohl et al. 2018): the same with a learned surrogate c_ψ(z) = η f(σ(z/λ)) + Σ_j w_nj σ(z_j/λ),
  ψ = (η, log λ, w) trained the same way (explicit state, per replicate).
* Wake-sleep φ-update (Hinton et al. 1995): N·mean_s ∇φ log q_φ(z_s | x̃_s), (x̃_s, z_s) ~ p_θ (sleep).
* Reweighted wake-sleep wake-φ (Bornschein & Bengio 2015): Σ_n Σ_k w̃_kn ∇φ log q_φ(b_kn | x_n).

**Categorical latents** (``categorical_vae``, z one-hot [..., N, k·C], logits ℓ [N, k·C]): ``rloo``, ``nvil``,
``gumbel_softmax``, ``straight_through`` and ``sum_and_sample`` run unchanged with the categorical score
∂ℓ log q(b) = b − softmax(ℓ) (blockwise), Gumbel-max draws b = onehot(argmax(ℓ + g)), g = −log(−log u), and the
categorical Concrete relaxation softmax((ℓ + g)/τ) (straight-through: forward onehot(argmax), backward
through the softmax). ARM, DisARM, REBAR, RELAX and the wake-sleep updates are binary-only (they refuse
categorical targets, and ``validate`` refuses them: they require ``binary_latent``).

Cost = signal (log-joint) evaluations per replicate, warm-up excluded (``warmup_evals``); relaxed
evaluations count like discrete ones (REBAR/RELAX: 3 per data point); ``backward_passes`` in diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gradbench.core import GradSample, per_replicate_grad
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas)
    ARMParams,
    DisARMParams,
    NVILParams,
    REBARParams,
    RelaxedParams,
    RELAXParams,
    RLOOParams,
    RWSParams,
    WakeSleepParams,
)
from gradbench.estimators.pathwise import objective_wrt, require
from gradbench.estimators.score import learned_input, moving_average
from gradbench.families.categorical import blocks, gumbel, one_hot_argmax

PHI_ELBO = objective_wrt("phi", "elbo")


# -- the pieces every estimator uses ----------------------------------------------------------
def logits(target: Any) -> Tensor:
    """ℓ_φ(x) [N, k]."""
    return target.family.logits(target.phi, target.x)


def signal(target: Any, b: Tensor) -> Tensor:
    """f(b) [..., N]: ``target.signal`` if defined, else log p(x, b) − log q_φ̄(b | x) (φ̄ = φ, no gradient)."""
    own = getattr(target, "signal", None)
    if own is not None:
        return own(b)
    return target.log_joint(b) - target.log_q(target.phi, b)


def to_phi(target: Any, g: Tensor, x: Tensor | None = None) -> Tensor:
    """Σ_n (∂ℓ_φ(x_n)/∂φ)ᵀ g_n for logit gradients g [R, M, k] (x [M, d] or per replicate [R, M, d]) → [R, P]."""
    family = target.family

    def surrogate(phi: dict[str, Tensor], g1: Tensor, x1: Tensor) -> Tensor:
        return (g1 * family.logits(phi, x1)).sum()

    if x is None or x.ndim == 2:
        xx = target.x if x is None else x
        grads = per_replicate_grad(lambda phi, g1: surrogate(phi, g1, xx), target.phi, g)
    else:
        grads = per_replicate_grad(surrogate, target.phi, g, x)
    return target.phi_layout.flatten(grads, batch=(g.shape[0],))


def _sample(target: Any, grads_l: Tensor, evals: float, diagnostics: dict[str, Tensor] | None = None) -> GradSample:
    R = grads_l.shape[0]
    g = to_phi(target, grads_l.detach())
    cost = torch.full((R,), float(evals), dtype=g.dtype, device=g.device)
    return GradSample(g, target.phi_layout, cost, diagnostics or {}, wrt=PHI_ELBO)


def _check(target: Any, name: str, categorical: bool = False, gumbel: bool = False) -> None:
    """``score``, ``log_prob``, ``logits`` (and ``gumbel_noise`` with ``gumbel``) and binary latents (or, with
    ``categorical``, binary or categorical latents)."""
    require(target, {"score", "log_prob", "logits"} | ({"gumbel_noise"} if gumbel else set()), name)
    kinds = ("binary", "categorical") if categorical else ("binary",)
    if target.latent_dim and getattr(target.model.latent, "kind", "binary") not in kinds:
        raise TypeError(f"{name} needs {' or '.join(kinds)} latents")


def _classes(target: Any) -> int | None:
    """C for categorical latents, None for binary ones."""
    space = getattr(target.model, "latent", None)
    return space.classes if space is not None and space.kind == "categorical" else None


def probs(target: Any, ell: Tensor) -> Tensor:
    """E_q[b] at logits ℓ: σ(ℓ) (binary) or the blockwise softmax(ℓ_j) (categorical), shape of ℓ."""
    C = _classes(target)
    return torch.sigmoid(ell) if C is None else torch.softmax(blocks(ell, C), -1).reshape(ell.shape)


def draw(target: Any, ell: Tensor, u: Tensor) -> Tensor:
    """b from uniforms u in the Gumbel layout (``gumbel_noise``): 1[u < σ(ℓ)] (binary) or onehot(argmax(ℓ − log(−log u)))
    (categorical) — what the built-in families' ``sample`` computes."""
    C = _classes(target)
    return (u < torch.sigmoid(ell)).to(u.dtype) if C is None else one_hot_argmax(ell + gumbel(u), C)


def sample_q(target: Any, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """b ~ q_φ [*batch, N, D] through the family's own noise and sampler (``rsample``), so any family with
    ``logits`` works whatever its noise layout (for the built-in families it equals :func:`draw`)."""
    return target.rsample(target.phi, target.draw_noise(batch, gen))


def antithetic_pair(ell: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """b¹ = 1[u > σ(−ℓ)], b² = 1[u < σ(ℓ)] (b² is the family's own sample from u)."""
    return (u > torch.sigmoid(-ell)).to(u.dtype), (u < torch.sigmoid(ell)).to(u.dtype)


def arm_logit_grad(f1: Tensor, f2: Tensor, u: Tensor) -> Tensor:
    """(f(b¹) − f(b²)) (u − ½), [R, N, k]."""
    return (f1 - f2).unsqueeze(-1) * (u - 0.5)


def disarm_logit_grad(f1: Tensor, f2: Tensor, b1: Tensor, b2: Tensor, ell: Tensor) -> Tensor:
    """½ (f(b¹) − f(b²)) (−1)^{b²} 1[b¹ ≠ b²] σ(|ℓ|), [R, N, k]."""
    return 0.5 * (f1 - f2).unsqueeze(-1) * (1 - 2 * b2) * (b1 != b2).to(b1.dtype) * torch.sigmoid(ell.abs())


# -- ARM, DisARM, RLOO, NVIL -----------------------------------------------------------------
def arm(target: Any, R: int, gen: torch.Generator) -> GradSample:
    """ARM ∇φ (Yin & Zhou 2019): (f(b¹) − f(b²))(u − ½); 2 evaluations per data point."""
    _check(target, "arm", gumbel=True)
    ell, u = logits(target), target.draw_noise((R,), gen)
    b1, b2 = antithetic_pair(ell, u)
    return _sample(target, arm_logit_grad(signal(target, b1), signal(target, b2), u), 2 * target.n_data)


def disarm(target: Any, R: int, gen: torch.Generator) -> GradSample:
    """DisARM ∇φ (Dong, Mnih & Tucker 2020): ARM Rao–Blackwellised over the antithetic pair; 2 evaluations."""
    _check(target, "disarm", gumbel=True)
    ell, u = logits(target), target.draw_noise((R,), gen)
    b1, b2 = antithetic_pair(ell, u)
    return _sample(target, disarm_logit_grad(signal(target, b1), signal(target, b2), b1, b2, ell), 2 * target.n_data)


def rloo(target: Any, R: int, gen: torch.Generator, *, S: int = 2) -> GradSample:
    """REINFORCE leave-one-out (Kool et al. 2019): (1/S) Σ_s (f_s − mean_{t≠s} f_t)(b_s − σ(ℓ)); S evaluations."""
    RLOOParams(S=S)
    _check(target, "rloo", categorical=True)
    ell = logits(target)
    p = probs(target, ell)
    b = sample_q(target, (R, S), gen)  # [R, S, N, k]
    f = signal(target, b)  # [R, S, N]
    centred = f - (f.sum(1, keepdim=True) - f) / (S - 1)
    return _sample(target, (centred.unsqueeze(-1) * (b - p)).mean(1), S * target.n_data)


class NVILState(NamedTuple):
    mean: Any  # MovingAverageState of the batch mean of f (c)
    fit: Any  # LeastSquaresState of b_ψ(x) on f − c
    var: Tensor  # [R], EMA of (f − c − b_ψ(x))² (the running variance)


def linear_features(x: Tensor) -> Tensor:
    """[1, x̃] with x̃ = x standardised per column, [N, 1 + d]."""
    sd = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(x[0])
    return torch.cat([torch.ones_like(x[:, :1]), (x - x.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))], 1)


def nvil(target: Any, R: int, gen: torch.Generator, *, warmup: int = 50, rate: float = 0.05,
         normalise: bool = False) -> GradSample:
    """NVIL (Mnih & Gregor 2014): (f − c − b_ψ(x))(b − σ(ℓ)) [/ max(1, √v)] after ``warmup`` training steps."""
    NVILParams(warmup=warmup, rate=rate, normalise=normalise)
    _check(target, "nvil", categorical=True)
    ell = logits(target)
    p = probs(target, ell)
    b = sample_q(target, (R,), gen)  # the measured draw first (common random numbers)
    mean_bl, fit_bl = moving_average(rate, target.n_data), learned_input(linear_features(target.x), rate)
    state = NVILState(mean_bl.init(R, p), fit_bl.init(R, p), torch.zeros(R, dtype=p.dtype, device=p.device))

    def centre(state: NVILState, f: Tensor) -> Tensor:  # f [R, S, N] → f − c − b_ψ(x)
        c = mean_bl.value(state.mean) if state.mean.steps else torch.zeros_like(f[:, 0])
        b_psi = fit_bl.value(state.fit) if state.mean.steps else torch.zeros_like(f[:, 0])
        return f - (c + b_psi).unsqueeze(1)

    for _ in range(warmup):
        f_w = signal(target, sample_q(target, (R, 1), gen))  # [R, 1, N]
        mean_state = mean_bl.update(state.mean, f_w)
        c = mean_bl.value(mean_state).unsqueeze(1)
        var = (1 - rate) * state.var + rate * ((f_w - c) ** 2).mean(dim=(1, 2))  # of f − c (no solve per step)
        state = NVILState(mean_state, fit_bl.update(state.fit, f_w - c), var)
    learning = centre(state, signal(target, b).unsqueeze(1))[:, 0]  # [R, N]
    scale = state.var.sqrt().clamp_min(1.0) if normalise and warmup else torch.ones_like(state.var)
    g = learning.unsqueeze(-1) * (b - p) / scale[:, None, None]
    diag = {"warmup_evals": torch.full((R,), float(warmup * target.n_data), dtype=p.dtype), "nvil_scale": scale}
    return _sample(target, g, target.n_data, diag)


# -- relaxed: Gumbel-softmax, straight-through ------------------------------------------------
def _relaxed(target: Any, R: int, gen: torch.Generator, tau: float, straight_through: bool) -> GradSample:
    ell = logits(target).expand(R, -1, -1).clone().requires_grad_(True)
    u = target.draw_noise((R,), gen)
    C = _classes(target)
    if C is None:
        z = ell - torch.logit(u)
        soft, hard = torch.sigmoid(z / tau), (z > 0).to(u.dtype)
    else:  # categorical Concrete: softmax((ℓ_j + g_j)/τ), hard = onehot(argmax)
        z = ell + gumbel(u)
        soft, hard = torch.softmax(blocks(z / tau, C), -1).reshape(z.shape), one_hot_argmax(z.detach(), C)
    b = soft + (hard - soft).detach() if straight_through else soft
    (g,) = torch.autograd.grad(signal(target, b).sum(), ell)
    return _sample(target, g, target.n_data, {"backward_passes": torch.ones(R, dtype=g.dtype)})


def gumbel_softmax(target: Any, R: int, gen: torch.Generator, *, tau: float = 0.5) -> GradSample:
    """Binary Concrete pathwise gradient ∂ℓ f(σ((ℓ − logit u)/τ)) (categorical: ∂ℓ f(softmax((ℓ + g)/τ))) — biased."""
    RelaxedParams(tau=tau)
    _check(target, "gumbel_softmax", categorical=True, gumbel=True)
    return _relaxed(target, R, gen, tau, straight_through=False)


def straight_through(target: Any, R: int, gen: torch.Generator, *, tau: float = 0.5) -> GradSample:
    """Straight-through Gumbel: f evaluated at b = H(z) (categorical: onehot(argmax z)), gradient through σ(z/τ)
    (softmax(z/τ)) — biased."""
    RelaxedParams(tau=tau)
    _check(target, "straight_through", categorical=True, gumbel=True)
    return _relaxed(target, R, gen, tau, straight_through=True)


# -- REBAR and RELAX ---------------------------------------------------------------------------
Control = Callable[[Tensor], Tensor]  # relaxed pre-activation z [R, N, k] → c(z) [R, N]


def conditional_relaxation(ell: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """z̃ ~ z | b, reparameterised by v ~ U(0,1): ℓ + logit(w̃), w̃ = 1 − p + v p (b = 1), v (1 − p) (b = 0)."""
    p = torch.sigmoid(ell)
    w = torch.where(b > 0, 1 - p + v * p, v * (1 - p))
    return ell + torch.logit(w)


def control_variate_grad(target: Any, ell0: Tensor, u: Tensor, v: Tensor, control: Control,
                         create_graph: bool = False) -> Tensor:
    """ĝ_ℓ = [f(b) − c(z̃)] (b − p) + ∂ℓ c(z) − ∂ℓ c(z̃), [R, N, k] (REBAR/RELAX)."""
    ell = ell0.expand(u.shape).clone().requires_grad_(True)
    z = ell - torch.logit(u)
    b = (z > 0).to(u.dtype).detach()
    z_tilde = conditional_relaxation(ell, b, v)
    c_tilde = control(z_tilde)
    (dc,) = torch.autograd.grad((control(z) - c_tilde).sum(), ell, create_graph=create_graph)
    f_b = signal(target, b).detach()
    return (f_b - c_tilde).unsqueeze(-1) * (b - torch.sigmoid(ell0)).detach() + dc


class AdamState(NamedTuple):
    params: tuple[Tensor, ...]  # each [R, ...]: one set of surrogate parameters per replicate
    m: tuple[Tensor, ...]
    v: tuple[Tensor, ...]
    steps: int


def adam_init(params: tuple[Tensor, ...]) -> AdamState:
    return AdamState(params, tuple(torch.zeros_like(p) for p in params), tuple(torch.zeros_like(p) for p in params), 0)


def adam_update(state: AdamState, grads: tuple[Tensor, ...], lr: float, b1: float = 0.9, b2: float = 0.999) -> AdamState:
    t = state.steps + 1
    m = tuple(b1 * mi + (1 - b1) * g for mi, g in zip(state.m, grads))
    v = tuple(b2 * vi + (1 - b2) * g * g for vi, g in zip(state.v, grads))
    params = tuple(p - lr * (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + 1e-8) for p, mi, vi in zip(state.params, m, v))
    return AdamState(params, m, v, t)


def train_control(target: Any, ell0: Tensor, state: AdamState, make_control: Callable[[tuple[Tensor, ...]], Control],
                  steps: int, lr: float, gen: torch.Generator) -> AdamState:
    """``steps`` Adam steps on ψ minimising Σ ĝ_ℓ² (the single-sample second moment), fresh (u, v) each."""
    R = state.params[0].shape[0]
    for _ in range(steps):
        params = tuple(p.detach().requires_grad_(True) for p in state.params)
        u, v = target.draw_noise((R,), gen), target.draw_noise((R,), gen)
        g = control_variate_grad(target, ell0, u, v, make_control(params), create_graph=True)
        grads = torch.autograd.grad((g**2).sum(), params)
        state = adam_update(AdamState(tuple(p.detach() for p in params), state.m, state.v, state.steps),
                            tuple(gr.detach() for gr in grads), lr)
    return state


def _relaxed_signal(target: Any, z: Tensor, eta: Tensor, log_lam: Tensor) -> Tensor:
    return eta[:, None] * signal(target, torch.sigmoid(z / log_lam.exp()[:, None, None]))


def rebar(target: Any, R: int, gen: torch.Generator, *, eta: float = 1.0, tau: float = 0.5, warmup: int = 0,
          lr: float = 0.01) -> GradSample:
    """REBAR (Tucker et al. 2017) with c(z) = η f(σ(z/λ)); η, λ fixed (warmup = 0) or trained; 3 evaluations."""
    REBARParams(eta=eta, tau=tau, warmup=warmup, lr=lr)
    _check(target, "rebar", gumbel=True)
    ell0 = logits(target)
    u, v = target.draw_noise((R,), gen), target.draw_noise((R,), gen)  # the measured draw first
    like = ell0.new_ones(R)
    state = adam_init((eta * like, torch.log(tau * like)))
    make = lambda ps: (lambda z: _relaxed_signal(target, z, ps[0], ps[1]))
    state = train_control(target, ell0, state, make, warmup, lr, gen)
    g = control_variate_grad(target, ell0, u, v, make(state.params))
    diag = {"eta": state.params[0], "temperature": state.params[1].exp(), "backward_passes": torch.ones_like(like),
            "warmup_evals": float(3 * warmup * target.n_data) * like}
    return _sample(target, g, 3 * target.n_data, diag)


def relax(target: Any, R: int, gen: torch.Generator, *, tau: float = 0.5, warmup: int = 50, lr: float = 0.01) -> GradSample:
    """RELAX (Grathwohl et al. 2018) with c_ψ(z) = η f(σ(z/λ)) + Σ_j w_nj σ(z_j/λ), ψ trained; 3 evaluations."""
    RELAXParams(tau=tau, warmup=warmup, lr=lr)
    _check(target, "relax", gumbel=True)
    ell0 = logits(target)
    u, v = target.draw_noise((R,), gen), target.draw_noise((R,), gen)
    like = ell0.new_ones(R)
    state = adam_init((like.clone(), torch.log(tau * like), ell0.new_zeros(R, *ell0.shape)))

    def make(ps: tuple[Tensor, ...]) -> Control:
        def control(z: Tensor) -> Tensor:
            return _relaxed_signal(target, z, ps[0], ps[1]) + (ps[2] * torch.sigmoid(z / ps[1].exp()[:, None, None])).sum(-1)
        return control

    state = train_control(target, ell0, state, make, warmup, lr, gen)
    g = control_variate_grad(target, ell0, u, v, make(state.params))
    diag = {"eta": state.params[0], "temperature": state.params[1].exp(), "backward_passes": torch.ones_like(like),
            "warmup_evals": float(3 * warmup * target.n_data) * like}
    return _sample(target, g, 3 * target.n_data, diag)


# -- wake-sleep --------------------------------------------------------------------------------
def wake_sleep(target: Any, R: int, gen: torch.Generator, *, S: int = 1) -> GradSample:
    """Sleep-phase φ-update (Hinton et al. 1995): N·mean_s ∇φ log q_φ(z_s | x̃_s), (x̃_s, z_s) ~ p_θ.

    Follows ∇φ −E_{p_θ(x)} KL(p_θ(z|x) ‖ q_φ(z|x)) (scaled by N), not the ELBO: measured against ∇φ ELBO."""
    WakeSleepParams(S=S)
    _check(target, "wake_sleep")
    if not hasattr(target.family, "data_dim"):
        raise TypeError("wake_sleep needs an amortised family q_φ(z | x) (bernoulli_encoder)")
    M = S * target.n_data
    x_new, z = target.model.sample_joint(target.theta, R * M, gen)
    x_new, z = x_new.reshape(R, M, -1), z.reshape(R, M, -1)
    p = torch.sigmoid(target.family.logits(target.phi, x_new))
    g = to_phi(target, (z - p) / S, x_new)
    cost = torch.full((R,), float(M), dtype=g.dtype, device=g.device)
    return GradSample(g, target.phi_layout, cost, {}, wrt=PHI_ELBO)


def reweighted_wake_sleep(target: Any, R: int, gen: torch.Generator, *, K: int = 8) -> GradSample:
    """RWS wake-φ (Bornschein & Bengio 2015): Σ_n Σ_k w̃_kn (b_kn − σ(ℓ_n)) chained to φ; w̃ ∝ p(x, b)/q(b|x).

    Self-normalised estimate of ∇φ −KL(p(z|x) ‖ q(z|x)) (bias O(1/K)), not of ∇φ ELBO; K evaluations."""
    RWSParams(K=K)
    _check(target, "reweighted_wake_sleep", gumbel=True)
    p = torch.sigmoid(logits(target))
    b = (target.draw_noise((R, K), gen) < p).to(p.dtype)  # [R, K, N, k]
    w = torch.softmax(target.log_joint(b) - target.log_q(target.phi, b), dim=1)  # [R, K, N]
    return _sample(target, (w.unsqueeze(-1) * (b - p)).sum(1), K * target.n_data)


def wake_phi_reference(target: Any) -> Tensor:
    """∇φ Σ_n E_{p_θ(z|x_n)} log q_φ(z | x_n) = −∇φ Σ_n KL(p_θ(·|x_n) ‖ q_φ(·|x_n)), by enumeration: at the logits
    the gradient is P(z_j = 1 | x_n) − σ(ℓ_nj) (exact posterior marginals), chained to φ. The objective the
    reweighted wake-sleep wake-φ update follows (it is self-normalised, so biased O(1/K) for it)."""
    from gradbench.references import enumeration

    marginals = enumeration.posterior_marginals(target.model, target.theta, target.x)  # [N, k]
    return to_phi(target, (marginals - torch.sigmoid(logits(target))).unsqueeze(0))[0]
