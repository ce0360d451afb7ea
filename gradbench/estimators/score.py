"""Score-function (REINFORCE) estimators of encoder gradients ∇φ, with baselines, and VIMCO.

**REINFORCE** (Williams 1992; for VI: Ranganath, Gerrish & Blei 2014; Mnih & Gregor 2014). With
z_sn ~ q_φ(z|x_n), s = 1..S, the per-sample score c_sn = ∇φ log q_φ(z_sn | x_n) (z held fixed) and
a learning signal f_sn,

    ĝ = Σ_n (1/S) Σ_s (f_sn − b_sn) c_sn  [ − ∇φ Σ_n KL(q_φ(·|x_n) ‖ p(z))  when kl = "analytic" ].

* ``kl="analytic"`` (the lecture's form): f = log p(x_n | z), the KL term differentiated exactly.
* ``kl="mc"``: f = log w = log p(x_n, z) − log q_φ(z|x_n); the term −E[∇φ log q] = 0 is dropped.
Both are unbiased for ∇φ ELBO whenever b_sn is independent of z_sn given the past (E[c] = 0).
Because the N latents are independent, data point n's score is multiplied by its own f_n only.

**Baselines** (``baseline``), all independent of the sample they multiply:

* ``none``: b = 0.
* ``moving_average``: exponential moving average of the batch mean of f (a scalar per replicate),
  b ← (1 − rate) b + rate f̄, with Adam-style bias correction b / (1 − (1 − rate)^t).
* ``learned_constant``: a scalar b fitted by SGD on the L2 loss mean_{s,n} (b − f_sn)², step ``rate``.
* ``learned_input``: b(x; ω) = ωᵀ φ(x), φ(x) = [1, x̃, x̃_i x̃_j (i ≤ j)] with x̃ = x standardised by
  the data's mean and sd, fitted by L2: ω minimises the exponentially discounted (forgetting ``rate``)
  squared error over all warm-up batches plus a tiny ridge, i.e. recursive least squares; the state is
  the sufficient statistics (ΦᵀΦ, Φᵀf). Quadratic features suffice here: E_q[f | x] is quadratic in x
  for a linear-Gaussian model and encoder.
* ``point``: b_n = f(z*_n) at the mode of q, z*_n = m_n (deterministic; costs N extra evaluations).
* ``optimal``: per data point n and coordinate j, b*_nj = Cov(f c_j, c_j) / Var(c_j) = E[f c_j²]/E[c_j²]
  (the minimiser of Var((f − b) c_j), using E[c] = 0), estimated leave-one-out from the other S − 1
  samples of the same replicate: b_snj = Σ_{t≠s} f_tn c_tnj² / Σ_{t≠s} c_tnj². Needs S ≥ 2.
* ``rloo``, leave-one-out (Kool, van Hoof & Welling 2019): b_sn = mean_{t≠s} f_tn. Needs S ≥ 2.

**Stateful baselines** are factories returning :class:`StatefulBaseline` ``(init, update, value)``
with an explicit NamedTuple state (optax style). **Warm-up semantics**: the measured estimate draws
its S latents first (so its noise is the same as every other estimator's on the target); then
``warmup`` fitting steps run, each on S fresh latents per data point from the same generator,
vectorised over replicates (each replicate fits its own baseline, so replicates stay independent);
the measured estimate uses the state after warm-up, which is independent of its latents — hence
unbiased. ``warmup`` is an estimator parameter, so it appears as ``estimator.warmup`` in the table;
warm-up evaluations are reported in the diagnostic ``warmup_evals`` and not in ``cost``. With
``warmup = 0`` a stateful baseline is 0 (= no baseline). Stateless baselines require ``warmup = 0``.

**VIMCO** (Mnih & Rezende 2016), for the IWAE_K bound L̂_n = log (1/K Σ_k w_kn): with the
leave-one-out estimate L̂_{-k,n} = log (1/K (Σ_{j≠k} w_jn + exp(mean_{j≠k} log w_jn))),

    ĝ = Σ_n Σ_k [ (L̂_n − L̂_{-k,n}) − w̃_kn ] c_kn,

unbiased for ∇φ IWAE_K (the second term is Σ_k w̃_k ∇φ log w_k at fixed z). Needs K ≥ 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gradbench.core import GradSample
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    KL,
    STATEFUL,
    STATELESS,
    BaselineName,
    ReinforceParams,
    VIMCOParams,
)
from gradbench.estimators.pathwise import EncoderTarget, objective_wrt, require


# -- stateful baselines: factories with explicit state -----------------------------------------
class MovingAverageState(NamedTuple):
    ema: Tensor  # [R], uncorrected exponential moving average of the batch means of f
    steps: int


class ConstantState(NamedTuple):
    b: Tensor  # [R]


class LeastSquaresState(NamedTuple):
    gram: Tensor  # [R, F, F], discounted Σ φ(x_n) φ(x_n)ᵀ (per sample)
    moment: Tensor  # [R, F], discounted Σ φ(x_n) f_sn


class StatefulBaseline(NamedTuple):
    """``init(R, like) -> state``; ``update(state, f [R, S, N]) -> state``; ``value(state) -> b [R, N]``."""

    init: Callable[[int, Tensor], Any]
    update: Callable[[Any, Tensor], Any]
    value: Callable[[Any], Tensor]


def moving_average(rate: float, n_data: int) -> StatefulBaseline:
    """EMA of the batch mean of f with weight ``rate`` on the newest batch, bias-corrected."""

    def init(R: int, like: Tensor) -> MovingAverageState:
        return MovingAverageState(torch.zeros(R, dtype=like.dtype, device=like.device), 0)

    def update(state: MovingAverageState, f: Tensor) -> MovingAverageState:
        return MovingAverageState((1 - rate) * state.ema + rate * f.mean(dim=(1, 2)), state.steps + 1)

    def value(state: MovingAverageState) -> Tensor:
        corr = 1.0 - (1.0 - rate) ** state.steps if state.steps else 1.0
        return (state.ema / corr).unsqueeze(-1).expand(-1, n_data)

    return StatefulBaseline(init, update, value)


def learned_constant(rate: float, n_data: int) -> StatefulBaseline:
    """A scalar b trained by SGD with step ``rate`` on the L2 loss mean_{s,n} (b − f_sn)²."""

    def init(R: int, like: Tensor) -> ConstantState:
        return ConstantState(torch.zeros(R, dtype=like.dtype, device=like.device))

    def update(state: ConstantState, f: Tensor) -> ConstantState:
        grad = 2 * (state.b - f.mean(dim=(1, 2)))
        return ConstantState(state.b - rate * grad)

    def value(state: ConstantState) -> Tensor:
        return state.b.unsqueeze(-1).expand(-1, n_data)

    return StatefulBaseline(init, update, value)


def quadratic_features(x: Tensor) -> Tensor:
    """φ(x) = [1, x̃, x̃_i x̃_j for i ≤ j], x̃ standardised by the mean and sd of the rows of x. [N, F]."""
    sd = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(x[0])
    xt = (x - x.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))
    i, j = torch.triu_indices(x.shape[1], x.shape[1], device=x.device)
    return torch.cat([torch.ones_like(x[:, :1]), xt, xt[:, i] * xt[:, j]], dim=1)


def learned_input(features: Tensor, rate: float, ridge: float = 1e-8) -> StatefulBaseline:
    """b(x_n; ω) = ωᵀ φ(x_n) fitted by discounted least squares (forgetting ``rate``) on f."""
    F = features.shape[1]

    def init(R: int, like: Tensor) -> LeastSquaresState:
        return LeastSquaresState(torch.zeros(R, F, F, dtype=like.dtype, device=like.device),
                                 torch.zeros(R, F, dtype=like.dtype, device=like.device))

    def update(state: LeastSquaresState, f: Tensor) -> LeastSquaresState:
        S = f.shape[1]
        gram = S * features.T @ features
        moment = torch.einsum("rsn,nf->rf", f, features)
        return LeastSquaresState((1 - rate) * state.gram + gram, (1 - rate) * state.moment + moment)

    def value(state: LeastSquaresState) -> Tensor:
        scale = torch.diagonal(state.gram, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        eye = torch.eye(F, dtype=state.gram.dtype, device=state.gram.device)
        omega = torch.linalg.solve(state.gram + ridge * scale[:, None, None] * eye, state.moment)
        return omega @ features.T

    return StatefulBaseline(init, update, value)


def make_baseline(name: str, target: EncoderTarget, rate: float) -> StatefulBaseline:
    if name == "moving_average":
        return moving_average(rate, target.n_data)
    if name == "learned_constant":
        return learned_constant(rate, target.n_data)
    if name == "learned_input":
        return learned_input(quadratic_features(target.x), rate)
    raise ValueError(f"{name!r} is not a stateful baseline (known: {', '.join(STATEFUL)})")


def warm_up(baseline: StatefulBaseline, state: Any, target: EncoderTarget, S: int, kl: KL, steps: int,
            gen: torch.Generator) -> Any:
    """``steps`` fitting steps, each on S fresh latents per data point and replicate."""
    R = state[0].shape[0]
    for _ in range(steps):
        z, log_q = target.sample_proposal((R, S), gen)
        state = baseline.update(state, learning_signal(target, z, log_q, kl))
    return state


# -- stateless baselines -----------------------------------------------------------------------
def learning_signal(target: EncoderTarget, z: Tensor, log_q: Tensor, kl: KL) -> Tensor:
    """f = log p(x|z) (kl = analytic) or log p(x, z) − log q(z|x) (kl = mc), shape [..., N]."""
    return target.log_lik(z) if kl == "analytic" else target.log_joint(z) - log_q


def rloo_baseline(f: Tensor, score: Tensor) -> Tensor:
    """b_sn = mean of f_tn over the other samples t ≠ s, shape [R, S, N]."""
    S = f.shape[1]
    return (f.sum(1, keepdim=True) - f) / (S - 1)


def optimal_loo_baseline(f: Tensor, score: Tensor) -> Tensor:
    """b_snj = Σ_{t≠s} f_tn c_tnj² / Σ_{t≠s} c_tnj², shape [R, S, N, P] (0 where the denominator is 0)."""
    c2 = score**2
    num = f.unsqueeze(-1) * c2
    num = num.sum(1, keepdim=True) - num
    den = c2.sum(1, keepdim=True) - c2
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def score_estimate(f: Tensor, score: Tensor, b: Tensor) -> Tensor:
    """Σ_n (1/S) Σ_s (f_sn − b) c_sn for f [R, S, N], score [R, S, N, P], b [R, S, N] or [R, S, N, P]."""
    S = f.shape[1]
    if b.ndim == score.ndim:
        return ((f.unsqueeze(-1) - b) * score).sum(dim=(1, 2)) / S
    return torch.einsum("rsn,rsnp->rp", f - b, score) / S


# -- estimators --------------------------------------------------------------------------------


def reinforce(target: EncoderTarget, R: int, gen: torch.Generator, *, S: int = 1, baseline: BaselineName = "none",
              kl: KL = "analytic", warmup: int = 0, rate: float = 0.1) -> GradSample:
    """Score-function ∇φ ELBO with S samples per data point and the named baseline."""
    ReinforceParams(S=S, baseline=baseline, kl=kl, warmup=warmup, rate=rate)  # the same checks outside suites
    require(target, {"score", "log_prob"} | ({"analytic_kl"} if kl == "analytic" else set()), "reinforce")
    z, log_q = target.sample_proposal((R, S), gen)  # first, so the latents match every other estimator's
    extra_cost = 0
    diagnostics: dict[str, Tensor] = {}
    if baseline == "none":
        fn: Callable[[Tensor, Tensor], Tensor] = lambda f, score: torch.zeros_like(f)
    elif baseline == "rloo":
        fn = rloo_baseline
    elif baseline == "optimal":
        fn = optimal_loo_baseline
    elif baseline == "point":
        mode = target.mode()  # z* = the mode of q(·|x_n), [N, k]
        f_star = learning_signal(target, mode, target.log_proposal(mode), kl)  # [N]
        fn = lambda f, score: f_star.expand_as(f)
        extra_cost = 1
    else:
        bl = make_baseline(baseline, target, rate)
        state = warm_up(bl, bl.init(R, z), target, S, kl, warmup, gen)
        b_fitted = bl.value(state).unsqueeze(1)  # [R, 1, N]
        fn = lambda f, score: b_fitted.expand_as(f)
        diagnostics["warmup_evals"] = torch.full((R,), float(warmup * S * target.n_data), dtype=z.dtype, device=z.device)
    sample = reinforce_with_baseline(target, z, log_q, fn, kl)
    cost = sample.cost + extra_cost * target.n_data
    return GradSample(sample.grads, sample.layout, cost, {**sample.diagnostics, **diagnostics}, wrt=sample.wrt)


def reinforce_with_baseline(target: EncoderTarget, z: Tensor, log_q: Tensor,
                            baseline: Callable[[Tensor, Tensor], Tensor], kl: KL = "analytic") -> GradSample:
    """REINFORCE on given latents z [R, S, N, k] with ``baseline(f, score)`` → b [R, S, N] or [R, S, N, P].

    The building block of :func:`reinforce`, public for experiments and tests: a baseline that
    depends on the sample it multiplies (e.g. the batch mean *including* f_sn) makes this biased.
    """
    R, S = z.shape[:2]
    f = learning_signal(target, z, log_q, kl)  # [R, S, N]
    score = target.log_q_score(z)  # [R, S, N, P]
    grads = score_estimate(f, score, baseline(f, score))
    if kl == "analytic":
        grads = grads - target.kl_grad_phi()
    cost = torch.full((R,), float(S * target.n_data), dtype=grads.dtype, device=grads.device)
    return GradSample(grads, target.phi_layout, cost, wrt=objective_wrt("phi", "elbo"))


def vimco_loo_bound(log_w: Tensor) -> Tensor:
    """L̂_{-k} = log (1/K (Σ_{j≠k} w_j + exp(mean_{j≠k} log w_j))) along dim 1, computed stably.

    log Σ_{j≠k} w_j is log(total − w_k) relative to the largest weight (total ≥ 1 there, no
    cancellation), except at the largest weight itself, where it is a log-sum-exp of the others
    (no cancellation and no underflow however much the largest weight dominates).
    """
    K = log_w.shape[1]
    m = log_w.max(dim=1, keepdim=True).values
    e = torch.exp(log_w - m)
    total = e.sum(1, keepdim=True)
    is_max = (log_w == m) & (torch.cumsum((log_w == m).to(torch.int64), dim=1) == 1)  # first argmax only
    lse_excl_max = torch.logsumexp(log_w.masked_fill(is_max, -math.inf), dim=1, keepdim=True)
    rest = torch.where(is_max, torch.ones_like(e), total - e)  # placeholder 1 where is_max (not used)
    log_others = torch.where(is_max, lse_excl_max, torch.log(rest) + m)
    loo_mean = (log_w.sum(1, keepdim=True) - log_w) / (K - 1)
    return torch.logaddexp(log_others, loo_mean) - math.log(K)


def vimco(target: EncoderTarget, R: int, gen: torch.Generator, *, K: int = 8) -> GradSample:
    """VIMCO ∇φ IWAE_K: score function with per-sample leave-one-out baselines."""
    if K < 2:
        raise ValueError(f"vimco needs K ≥ 2, got {K}")
    require(target, {"score", "log_prob"}, "vimco")
    z, log_q = target.sample_proposal((R, K), gen)
    log_w = target.log_joint(z) - log_q  # [R, K, N]
    L = torch.logsumexp(log_w, dim=1, keepdim=True) - math.log(K)
    w_tilde = torch.softmax(log_w, dim=1)
    signal = (L - vimco_loo_bound(log_w)) - w_tilde
    grads = torch.einsum("rkn,rknp->rp", signal, target.log_q_score(z))
    cost = torch.full((R,), float(K * target.n_data), dtype=grads.dtype, device=grads.device)
    ess = 1.0 / (w_tilde**2).sum(1)
    return GradSample(grads, target.phi_layout, cost, {"ess_mean": ess.mean(-1)}, wrt=objective_wrt("phi", "iwae", K))
