"""SUMO: Russian-roulette unbiased log-likelihood and its θ-gradient.

With one growing sequence z_1, z_2, ... ~ q(z | x), w_i = p(x, z_i)/q(z_i | x) and
IWAE_j = log (1/j) Σ_{i≤j} w_i, draw a truncation 𝒦 ≥ 1 with tail S(j) = P(𝒦 ≥ j) and set
    log p̂ = IWAE_{K0} + Σ_{j=1}^{𝒦} Δ_j / S(j),   Δ_j = IWAE_{K0+j} − IWAE_{K0+j−1}
(K0 = ``K_min``; K0 = 1 is the form of docs/design.md §6.7). Since IWAE_j → log p(x), E[log p̂] = log p(x) when
Σ_j E|Δ_j| < ∞. As a linear combination log p̂ = Σ_j c_j IWAE_j with c_{K0+i} = 1/S(i) − 1/S(i+1)
(1 ≤ i < 𝒦) and c_{K0+𝒦} = 1/S(𝒦), its θ-gradient (q fixed) is a signed particle weighting
    ∇θ log p̂ = Σ_i ω_i ∇θ log p(x, z_i),   ω_i = Σ_{j ≥ i} c_j w_i / Σ_{i' ≤ j} w_{i'},
with Σ_i ω_i = 1. It is unbiased for ∇θ log p(x) whenever differentiation and expectation commute,
which needs the gradient to have finite variance: Σ_j E‖∇Δ_j‖² / S(j) < ∞.
Tail and variance. For the θ-gradient, ∇Δ_j = (w_{K0+j}/Σ_{i≤K0+j} w_i)(∇ℓ_{K0+j} − ∇IWAE_{K0+j−1})
is O(1/j) with a random sign, so E‖∇Δ_j‖² ≍ 1/j² (Luo et al. 2020, §3, observe the same decay for
the log-likelihood). With S(j) = j^{−α} the estimate is a random walk of steps j^{α−1} stopped at 𝒦,
whose variance given 𝒦 is Σ_{j≤𝒦} j^{2α−2}:
* α > ½: size ≍ 𝒦^{α−½}, so P(‖ĝ‖ > t) ≍ t^{−2α/(2α−1)}: tail index 2α/(2α−1), finite variance iff
  α < 1 (α = 0.8: index 8/3, infinite third moment);
* α = ½: variance log 𝒦 given 𝒦, so P(‖ĝ‖ > t) ≈ P(log 𝒦 > t²) = e^{−t²/2}: a Gaussian-type tail, every
  moment finite (a scale mixture of near-Gaussians with scale √log 𝒦).
The geometric tail (index ≈ 1) and power tails with α ≥ 1 (e.g. α = 2: index 4/3) have *infinite*
variance. Measured Hill indices of ‖ĝ − median‖ on the demo PPCA (d = 10, k = 3, R = 2·10⁴, seed 0;
k = ⌈√n⌉, so light tails give finite values that grow with n; studies/bias-test-calibration/tails.py): geometric ρ = 0.8
(the original default): 1.26 ± 0.11; power α = 0.8: 2.75 ± 0.23; α = ½ (the default): 6.60 ± 0.55 (oracle:
6.74 ± 0.57); earlier, α = 2: 1.46 ± 0.12, α = 0.9: 2.25 ± 0.19.
Default: ``power`` with α = ½, one 𝒦 per replicate (``roulette: per_replicate``), ``max_terms`` M = 10⁵.
α = ½ is the cheapest power tail whose gradient has a Gaussian-type tail, and the one on which the bias
test (:func:`gradbench.stats.bias_test`) is calibrated. ``gradbench calibrate``, 300 demo targets, false
alarms at α = 1 % / 5 % and KS p: α = ½: R = 30 (max-t bootstrap) 0.000 / 0.020, KS 0.15; R = 100 0.003 /
0.043, KS 0.99; R = 1000 (Hotelling, the R of the shipped suites) 0.010 / 0.030, KS 0.11. α = 0.8 (the
default before: finite variance but index 8/3, a heavy scale mixture) is conservative in both branches:
R = 30 0.000 / 0.010, KS 2·10⁻⁷; R = 1000 0.010 / 0.030, KS 9·10⁻⁶ — SUMO's tail, not the small-R branch.
Known limit: on a PPCA with N = 3 data points at R = 300 (Hotelling, R ≈ 11 × rank 27) the test is
conservative for both roulettes (KS p < 10⁻⁶; the oracle there is calibrated); at R = 1000 it is calibrated
(1.0 % / 5.3 %, KS p = 0.48; studies/bias-test-calibration/README.md).
Cost: E𝒦 is infinite for α ≤ 1 and M bounds it: E min(𝒦, M) = Σ_{j≤M} j^{−½} ≈ 2√M ≈ 630 charged
evaluations per data point (≈ 410 actually evaluated: a censored replicate runs one term), against ≈ 25–40
for α = 0.8 and ≈ 230 for α = 0.6 (studies/bias-test-calibration/sumo_cost.py); the censored fraction is M^{−½} ≈ 0.3 % of
replicates. Finite variance and finite expected cost cannot both hold with this Δ_j decay. The
infinite-variance settings (``geometric``, or ``power`` with α ≥ 1, Luo et al.'s cheaper choices) and the
heavy-tailed α ∈ (½, 1) stay available when asked for explicitly; infinite-variance settings' variance
metrics then carry the ``tail_index`` warning of the variance protocol.

Roulette. ``per_replicate``: the N data points of a replicate share one 𝒦, log p̂ = Σ_n log p̂_n with every
log p̂_n built from the same 𝒦 (unbiased term by term: E log p̂_n = log p(x_n) for any law of 𝒦 with
S(j) > 0); a replicate costs N (K0 + 𝒦) evaluations and a target call is a rectangle [rows, K0 + 𝒦, N]
with no padding. ``per_point``: each data point draws its own 𝒦_n (Luo et al.'s estimator per log p(x_n));
the target interface evaluates all N points of a replicate on one particle axis, so a replicate runs
every point to max_n 𝒦_n (charged Σ_n (K0 + 𝒦_n), evaluated N (K0 + max_n 𝒦_n): ≈ 7× the shared
roulette's work at N = 10, α = ½) and is censored when any 𝒦_n > M (≈ N M^{−½}).
Batching. Replicates are sorted by particle need K0 + 𝒦, grouped by level ⌊4 log₂ need⌋ (padding < 19 %),
and each level is cut into target calls of ≤ ``BLOCK`` = 2¹⁷ particle-points (rows × need × N); a single
row longer than that is evaluated in particle chunks of ≤ ``BLOCK`` (log-weights first, then the gradient,
which is linear in ω), so memory is bounded by the proposal draw z of one row whatever 𝒦 is drawn.
Random stream (``gen``): first 𝒦, R uniforms (``per_replicate``) or R × N (``per_point``, row-major), by
inversion; then one ``sample_proposal((rows, K0 + max need), gen)`` per target call, in the order of
:func:`blocks` (increasing need, then row order within a level). The stream therefore depends on ``BLOCK``
(a fixed constant), not on the device or on memory.
Truncations: ``geometric`` S(j) = ρ^{j−1} (E𝒦 = 1/(1−ρ)); ``power`` S(j) = j^{−α}, α > 0
(E𝒦 = ζ(α) for α > 1, infinite otherwise). ω is computed in log space (log-cumulative sums) so huge or
tiny weights cannot overflow. A draw with 𝒦 > ``max_terms`` censors its replicate (NaN row, ``censored``
flag), as for the coupled estimators; the cost charges a censored draw the work up to the cap, as a
coupled chain that hits ``max_iter`` (charging its 𝒦 would make the mean cost infinite for α ≤ 1).

Reference: Luo, Beatson, Norouzi, Zhu, Duvenaud, Adams & Chen (2020), "SUMO: Unbiased estimation
of log marginal probability for latent variable models", ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from gradbench.core import GradSample, LatentTarget, log_joint_with_grad
from gradbench.estimators.params import SUMOParams


def tail(j: Tensor, truncation: str, rho: float, alpha: float) -> Tensor:
    """S(j) = P(𝒦 ≥ j) for integer-valued j ≥ 1 (float tensor)."""
    if truncation == "geometric":
        return torch.exp((j - 1) * math.log(rho))
    return j ** (-alpha)


def sample_terms(shape: tuple[int, ...], gen: torch.Generator, truncation: str, rho: float, alpha: float) -> Tensor:
    """𝒦 = max{j ≥ 1 : S(j) ≥ U}, U ~ U(0, 1], by inversion (float64, may be huge)."""
    u = 1.0 - torch.rand(shape, generator=gen, dtype=torch.float64, device=gen.device).cpu()  # (0, 1]
    if truncation == "geometric":
        n = 1.0 + torch.floor(torch.log(u) / math.log(rho))
    else:
        n = torch.floor(u ** (-1.0 / alpha))
    return n.clamp_min(1.0)


def sumo_weights(log_w: Tensor, n_terms: Tensor, K_min: int, truncation: str, rho: float,
                 alpha: float) -> tuple[Tensor, Tensor]:
    """Particle weights ω [B, J, N] and log p̂ [B, N] from log-weights [B, J, N] and 𝒦 [B, N] (or [B, 1]: shared).

    Particles beyond K_min + 𝒦 get weight 0 (J ≥ max(K_min + 𝒦) is required).
    """
    _B, J, _N = log_w.shape
    dtype = log_w.dtype
    j = torch.arange(1, J + 1, dtype=dtype, device=log_w.device).view(1, J, 1)  # 1-based particle count
    i = j - K_min  # term index of IWAE_j (0 = base)
    n = n_terms.to(dtype).unsqueeze(1)  # [B, 1, N or 1]
    if bool((K_min + n > J).any()):
        raise ValueError("not enough particles for the drawn number of terms")
    S_i = tail(i.clamp_min(1), truncation, rho, alpha)
    S_next = tail(i.clamp_min(1) + 1, truncation, rho, alpha)
    neg = (i >= 1) & (i < n)  # c_j = 1/S(i) − 1/S(i+1) < 0
    last = i == n  # c_j = 1/S(𝒦)
    c = torch.where(neg, 1 / S_i - 1 / S_next, torch.zeros((), dtype=dtype))
    c = torch.where(last, 1 / S_i, c)
    lcse = torch.logcumsumexp(log_w, dim=1)  # log Σ_{i≤j} w_i
    iwae = lcse - torch.log(j)
    log_px = (c * iwae).sum(1)  # the base IWAE_{K0} has coefficient 1 − 1/S(1) = 0
    # ω_i = w_i [ c_last / S_last − Σ_{j ≥ i, neg} |c_j| / S_j ]   (S_j here = Σ_{i' ≤ j} w_{i'})
    ninf = torch.tensor(-math.inf, dtype=dtype, device=log_w.device)
    log_neg = torch.where(neg, torch.log(c.abs().clamp_min(1e-300)) - lcse, ninf)
    rev = torch.logcumsumexp(log_neg.flip(1), dim=1).flip(1)  # log Σ_{j ≥ i} over the negative terms
    log_pos_j = torch.where(last, torch.log(c.clamp_min(1e-300)) - lcse, ninf)
    log_pos = torch.logsumexp(log_pos_j, dim=1, keepdim=True)  # one term per chain
    used = j <= K_min + n
    omega = torch.exp(log_w + log_pos) - torch.exp(log_w + rev)
    omega = torch.where(used, omega, torch.zeros((), dtype=dtype))
    return omega, log_px


BLOCK = 1 << 17  # particle-points (rows × particles × data points) per target call: bounds memory


def blocks(need: Tensor, n_data: int, block: int = BLOCK) -> list[Tensor]:
    """Rows of each target call: replicates sorted by particle need, grouped by level ⌊4 log₂ need⌋ (needs in
    a level differ by < 2^{1/4}: padding < 19 %), each level cut into blocks of ≤ ``block`` particle-points
    (rows × max need × N; at least one row)."""
    order = torch.argsort(need, stable=True)
    level = torch.floor(4 * torch.log2(need[order])).long()  # buckets of ratio 2^{1/4}
    out: list[Tensor] = []
    for rows in order.split(torch.unique_consecutive(level, return_counts=True)[1].tolist()):
        out.extend(rows.split(max(1, block // (int(need[rows].max()) * n_data))))
    return out


def _log_w_and_grad(target: LatentTarget, z: Tensor, log_q: Tensor,
                    block: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """log w [B, J, N] and ω ↦ Σ ω ∇θ log p(x, z) [B, P]: one fused call when B·J·N ≤ ``block``, else in particle
    chunks of ≤ ``block`` particle-points (only a row with 𝒦·N > ``block``: the gradient is linear in ω)."""
    B, J, N = log_q.shape
    step = max(1, block // (B * N))
    if J <= step:
        log_p, grad = log_joint_with_grad(target, z)
        return log_p - log_q, grad
    chunks = [slice(s, s + step) for s in range(0, J, step)]
    log_w = torch.cat([target.log_joint(z[:, c]) for c in chunks], 1) - log_q

    def grad(omega: Tensor) -> Tensor:
        return sum(target.weighted_grad_log_joint(z[:, c], omega[:, c]) for c in chunks)  # type: ignore[return-value]

    return log_w, grad


def sumo(target: LatentTarget, R: int, gen: torch.Generator, *, K_min: int = 1, truncation: str = "power",
         rho: float = 0.8, alpha: float = 0.5, max_terms: int = 100_000,
         roulette: str = "per_replicate") -> GradSample:
    """θ-gradient of the SUMO log-likelihood estimate (see the module docstring)."""
    SUMOParams(K_min=K_min, truncation=truncation, rho=rho, alpha=alpha, max_terms=max_terms, roulette=roulette)
    N = target.n_data
    n_terms = sample_terms((R, 1 if roulette == "per_replicate" else N), gen, truncation, rho, alpha)  # [R, 1 or N]
    censored = (n_terms > max_terms).any(1)
    n_eff = torch.where(n_terms > max_terms, torch.ones_like(n_terms), n_terms)  # censored: run 1 term
    need = (K_min + n_eff).max(1).values  # particles per replicate
    grads, log_px = None, None
    for rows in blocks(need, N, BLOCK):
        J = int(need[rows].max())
        z, log_q = target.sample_proposal((rows.numel(), J), gen)
        log_w, weighted_grad = _log_w_and_grad(target, z, log_q, BLOCK)
        omega, lp = sumo_weights(log_w, n_eff[rows].to(device=log_w.device), K_min, truncation, rho, alpha)
        g = weighted_grad(omega)
        if grads is None:
            grads = torch.empty(R, g.shape[1], dtype=g.dtype, device=g.device)
            log_px = torch.empty(R, dtype=g.dtype, device=g.device)
        rows_d = rows.to(g.device)
        grads[rows_d] = g
        log_px[rows_d] = lp.sum(1)
    assert grads is not None and log_px is not None
    cost = (K_min + n_terms.clamp(max=max_terms)).expand(R, N).sum(1).to(dtype=grads.dtype, device=grads.device)
    cens = censored.to(grads.device)
    grads = grads.masked_fill(cens.unsqueeze(1), math.nan)
    log_px = log_px.masked_fill(cens, math.nan)
    diagnostics = {"censored": cens, "log_px_hat": log_px,
                   "n_terms": n_terms.mean(1).to(dtype=grads.dtype, device=grads.device)}
    return GradSample(grads, target.layout, cost, diagnostics)
