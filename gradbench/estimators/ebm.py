"""Estimators of the log-likelihood gradient of an energy-based model (``rbm``, ``ising``).

For p_θ(x) = exp(−F_θ(x)) / Z_θ and N data points (docs/design.md §5.7),
    ∇θ log p(x) = −Σ_n ∇θ F(x_n) + N E_{p_θ}[∇θ F(x′)].
Every estimator computes the data term exactly and estimates the model term μ = E_p[∇θ F]:
    ĝ = −Σ_n ∇θ F(x_n) + N μ̂.
For the RBM, ∇θ F(v) uses E[h | v] = σ(c + vW) (the hidden units are summed out, i.e.
Rao–Blackwellised); chains live on the visible vector v, and one Gibbs *sweep* is h ~ p(h | v)
followed by v ~ p(v | h). For the Ising model a sweep is one systematic scan of single-site
updates. ``cost`` is counted in **Gibbs sweeps of one chain** (not log-joint evaluations); an exact
draw from p_θ counts as one sweep (its real cost, the 2^n enumeration, is paid once per target).

* ``exact_sampling`` (the oracle): μ̂ = (1/S) Σ_s ∇F(x′_s), x′_s ~ p_θ exactly (enumeration).
  Unbiased; cost S.
* ``cd`` (contrastive divergence, Hinton 2002): one chain per data point started at x_n, k sweeps,
  μ̂ = (1/N) Σ_n ∇F(x_n^{(k)}). Biased at finite k (its chains have not reached p_θ); cost N k.
* ``pcd`` (persistent CD, Tieleman 2008): S chains carried across calls as explicit state
  (:class:`PCDState`, :func:`pcd_init`, :func:`pcd_step`), μ̂ = (1/S) Σ_s ∇F(v_s) after k more
  sweeps. At a fixed θ (as here) a persistent chain is a Gibbs chain of age ``age + k`` started at a
  data point, so its bias is CD's at that age: the estimator's ``age`` parameter is the number of
  sweeps the chains ran before the measured call. Cost S k per call (the age is amortised; it is
  reported as diagnostic ``chain_age``).
* ``coupled_gibbs`` (unbiased; Jacob, O'Leary & Atchadé 2020, JRSS B, "Unbiased Markov chain Monte
  Carlo methods with couplings"; for RBMs Qiu, Zhang & Wang 2020, ICLR, "Unbiased contrastive
  divergence algorithm for training energy-based latent variable models"): S independent pairs of
  lagged chains (X, Y), X_0, Y_0 independent uniform draws from the data rows (so h(X_k) is a CD-k
  term), X run alone for L sweeps, then (X_t, Y_{t−L}) advanced by a coupled sweep. Per pair,
      H_{k:m} = (1/(m−k+1)) [ Σ_{t=k}^{m} ∇F(X_t) + Σ_{t=k+L}^{τ−1} v_t (∇F(X_t) − ∇F(Y_{t−L})) ],
      v_t = ⌊(t−k)/L⌋ − ⌈max(L, t−m)/L⌉ + 1,   τ = inf{t ≥ L : X_t = Y_{t−L}},
  and μ̂ = (1/S) Σ_s H^{(s)}_{k:m}. Couplings of the sweep:
  - ``maximal`` (unit by unit): both chains use the same uniform for every unit, X_i = 1{u < p_i},
    Y_i = 1{u < q_i}: for a Bernoulli pair this is a maximal coupling (P(X_i = Y_i) = 1 − |p_i − q_i|).
  - ``block_maximal`` (RBM only): the whole conditional p(h | v) (and p(v | h)), a product of
    Bernoullis, is coupled maximally by the rejection sampler of Jacob et al. (2020, §4.1;
    Thorisson 2000): draw X ~ p; keep Y = X if u p(X) ≤ q(X); else draw Y* ~ q until
    u* q(Y*) > p(Y*). Our reading of Qiu et al.'s coupling for the latent-variable (v, h) view
    (Taniguchi et al. 2023, ICML, summarise it as "a maximal coupling based on a Gibbs sampler");
    not checked line by line against their pseudo-code.
    Its running time is random; the loop runs until every chain pair has its draw.
  Both are faithful (equal states stay equal). Cost per pair L + 2(τ − L) + max(0, m − τ) sweeps
  (docs/design.md §6.6); ``tau`` is the largest τ over the replicate's S pairs; ``lockstep_sweeps`` is what the batch
  swept ÷ R, and ``lockstep_evaluated``/``_efficiency``/``_seconds``/``_seconds_lost`` are those of
  :func:`~gradbench.estimators.coupling.lockstep_diagnostics` (in sweeps). A replicate whose pairs have
  not all met by t = ``max_iter`` is censored: NaN gradient row, ``censored`` True, τ = max_iter.
  All R × S chain pairs advance in lockstep, one Python iteration per sweep; once t ≥ m,
  finished replicates are dropped from the batch. The driver is the latent-variable estimators' own
  (:func:`~gradbench.estimators.coupling.run_lagged`, one host sync per sweep); :func:`gibbs_kernel` supplies the
  Gibbs kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gradbench.core import GradSample
from gradbench.estimators.coupling import LaggedKernel, LaggedRun, StepInfo, lockstep_diagnostics, run_lagged
from gradbench.estimators.coupling import v_weight as _v_weight
from gradbench.estimators.params import CoupledGibbsParams, EBMCoupling
from gradbench.models.ebm import RBM, EBMTarget


# -- shared pieces ----------------------------------------------------------------------------
def _require_ebm(target: object) -> None:
    if not hasattr(target, "sweep") or not hasattr(target, "weighted_grad_free_energy"):
        raise TypeError(f"EBM estimators need an energy-based target (rbm, ising), got {type(target).__name__}")


def _uniforms(target: EBMTarget, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
    x = target.x
    return torch.rand(*batch, target.uniforms_per_sweep, generator=gen, dtype=x.dtype, device=x.device)


def _from_data(target: EBMTarget, batch: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Chains started at data rows drawn uniformly with replacement, [*batch, D]."""
    rows = torch.randint(target.n_data, batch, generator=gen, device=target.x.device)
    return target.x[rows]


def _estimate(target: EBMTarget, model_sum: Tensor, S: int) -> Tensor:
    """−Σ_n ∇F(x_n) + N (1/S) model_sum, for model_sum = Σ_s ∇F(x′_s) [R, P]."""
    return target.data_term() + (target.n_data / S) * model_sum


def _ones(v: Tensor) -> Tensor:
    return torch.ones(v.shape[:2], dtype=v.dtype, device=v.device)


def _full(R: int, value: float, like: Tensor) -> Tensor:
    return torch.full((R,), float(value), dtype=like.dtype, device=like.device)


def coupled_bernoulli(p: Tensor, q: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(1{u < p}, 1{u < q}): a maximal coupling of Bernoulli(p) and Bernoulli(q), P(equal) = 1 − |p − q|."""
    return u < p, u < q


# -- exact sampling, CD, PCD ----------------------------------------------------------------------
def exact_sampling(target: EBMTarget, R: int, gen: torch.Generator, *, S: int = 1) -> GradSample:
    """μ̂ = (1/S) Σ_s ∇F(x′_s) with x′_s ~ p_θ exactly (the oracle); cost S (sweep-equivalents)."""
    _require_ebm(target)
    v = target.sample_exact((R, S), gen)
    grads = _estimate(target, target.weighted_grad_free_energy(v, _ones(v)), S)
    return GradSample(grads, target.layout, _full(R, S, grads))


def cd(target: EBMTarget, R: int, gen: torch.Generator, *, k: int = 1) -> GradSample:
    """CD-k: μ̂ = (1/N) Σ_n ∇F(x_n^{(k)}), one chain per data point; cost N k sweeps."""
    _require_ebm(target)
    N = target.n_data
    v = target.x.expand(R, N, -1)
    for _ in range(k):
        v = target.sweep(v, _uniforms(target, (R, N), gen))
    grads = _estimate(target, target.weighted_grad_free_energy(v, _ones(v)), N)
    return GradSample(grads, target.layout, _full(R, N * k, grads))


class PCDState(NamedTuple):
    """Persistent chains carried between calls (the only thing PCD remembers)."""

    v: Tensor  # [R, S, D] chain states
    age: int  # sweeps run since the chains started at data points


def pcd_init(target: EBMTarget, R: int, S: int, gen: torch.Generator) -> PCDState:
    """S chains per replicate at data rows drawn uniformly with replacement; age 0."""
    return PCDState(_from_data(target, (R, S), gen), 0)


def pcd_advance(target: EBMTarget, state: PCDState, sweeps: int, gen: torch.Generator) -> PCDState:
    v = state.v
    for _ in range(sweeps):
        v = target.sweep(v, _uniforms(target, v.shape[:2], gen))
    return PCDState(v, state.age + sweeps)


def pcd_step(target: EBMTarget, state: PCDState, gen: torch.Generator, k: int = 1) -> tuple[GradSample, PCDState]:
    """k sweeps of the persistent chains, then μ̂ = (1/S) Σ_s ∇F(v_s); returns the estimate and the new state."""
    state = pcd_advance(target, state, k, gen)
    R, S = state.v.shape[:2]
    grads = _estimate(target, target.weighted_grad_free_energy(state.v, _ones(state.v)), S)
    diagnostics = {"chain_age": _full(R, state.age, grads)}
    return GradSample(grads, target.layout, _full(R, S * k, grads), diagnostics), state


def pcd(target: EBMTarget, R: int, gen: torch.Generator, *, S: int = 10, k: int = 1, age: int = 0) -> GradSample:
    """PCD measured after the chains have run ``age`` sweeps from data points (θ fixed): bias vs chain age."""
    _require_ebm(target)
    state = pcd_advance(target, pcd_init(target, R, S, gen), age, gen)
    sample, _ = pcd_step(target, state, gen, k)
    return sample


# -- coupled chains ---------------------------------------------------------------------------
def _bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Π_i Bern(x_i; σ(logits_i)), summed over the last dim."""
    return (x * logits - torch.nn.functional.softplus(logits)).sum(-1)


def block_maximal_bernoulli(lp: Tensor, lq: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Maximal coupling of two product-Bernoulli laws with logits lp, lq [..., d] (rejection sampler).

    X ~ p; with W ~ U(0, 1), if W p(X) ≤ q(X) then Y = X; otherwise repeat Y* ~ q, W* ~ U(0, 1)
    until W* q(Y*) > p(Y*) (Jacob, O'Leary & Atchadé 2020, §4.1). P(X = Y) = 1 − TV(p, q).
    Vectorised: the residual loop runs on the rows still waiting, until none is left.
    """
    dtype = lp.dtype

    def draw(logits: Tensor) -> Tensor:
        return (torch.rand(logits.shape, generator=gen, dtype=dtype, device=logits.device) < torch.sigmoid(logits)).to(dtype)

    x = draw(lp)
    w = torch.rand(lp.shape[:-1], generator=gen, dtype=dtype, device=lp.device)
    same = torch.log(w) + _bernoulli_log_prob(x, lp) <= _bernoulli_log_prob(x, lq)
    same |= (lp == lq).all(-1)  # equal laws: one draw (faithful even under rounding)
    y = x.clone()
    todo = (~same).nonzero(as_tuple=True)
    while todo[0].numel():
        lq_t, lp_t = lq[todo], lp[todo]
        cand = draw(lq_t)
        w = torch.rand(cand.shape[:-1], generator=gen, dtype=dtype, device=lp.device)
        ok = torch.log(w) + _bernoulli_log_prob(cand, lq_t) > _bernoulli_log_prob(cand, lp_t)
        idx = tuple(t[ok] for t in todo)
        y[idx] = cand[ok]
        todo = tuple(t[~ok] for t in todo)
    return x, y


def _coupled_sweep(target: EBMTarget, X: Tensor, Y: Tensor, gen: torch.Generator, coupling: EBMCoupling) -> tuple[Tensor, Tensor]:
    if coupling == "maximal":
        u = _uniforms(target, X.shape[:2], gen)
        return target.sweep(X, u), target.sweep(Y, u)
    if isinstance(target, RBM):
        hx, hy = block_maximal_bernoulli(X @ target.W + target.c, Y @ target.W + target.c, gen)
        return block_maximal_bernoulli(hx @ target.W.T + target.b, hy @ target.W.T + target.b, gen)
    raise ValueError("block_maximal coupling is defined for the rbm (bipartite block Gibbs) only")


class CoupledGibbsRun(NamedTuple):
    model_sum: Tensor  # [R, P] Σ_s H^{(s)}_{k:m}; NaN rows for censored replicates
    tau: Tensor  # [R, S] meeting times (max_iter where not met)
    met: Tensor  # [R, S] bool
    lockstep_sweeps: float  # chain sweeps the batch computed (both chains counted)
    lagged: LaggedRun  # the driver's result (per-replicate work, wall time)


def gibbs_kernel(target: EBMTarget, S: int, coupling: EBMCoupling = "maximal") -> LaggedKernel[Tensor]:
    """S chain pairs per replicate on the visible vector v [B, S, D] as a
    :class:`~gradbench.estimators.coupling.LaggedKernel`: starts at uniformly drawn data rows, one Gibbs sweep per
    step (:func:`_coupled_sweep` for the pair), h = ∇θ F; cost in chain sweeps (a coupled sweep costs 2)."""

    def coupled_step(X: Tensor, Y: Tensor, gen: torch.Generator, active: np.ndarray | None) -> tuple[Tensor, Tensor, StepInfo]:
        X, Y = _coupled_sweep(target, X, Y, gen, coupling)
        return X, Y, StepInfo(np.full(X.shape[0], 2.0 * S), None)

    def grad(X: Tensor, Y: Tensor, a: float, cy: Tensor | None, aux: object) -> tuple[Tensor, None]:
        """Σ_s (a + cy_s) ∇F(X_s) − cy_s ∇F(Y_s)."""
        if cy is None:
            return target.weighted_grad_free_energy(X, torch.full(X.shape[:2], a, dtype=X.dtype, device=X.device)), None
        return target.weighted_grad_free_energy(X, a + cy) - target.weighted_grad_free_energy(Y, cy), None

    P = target.layout.size
    return LaggedKernel(
        init=lambda R, gen: _from_data(target, (R, S), gen),
        step=lambda X, gen: target.sweep(X, _uniforms(target, X.shape[:2], gen)),
        coupled_step=coupled_step,
        meets=lambda X, Y: (X == Y).all(-1),
        take=lambda X, rows: X[rows],
        grad=grad,
        accumulator=lambda X, R: torch.zeros(R, P, dtype=X.dtype, device=X.device),
        init_cost=lambda X: 0.0,
        step_cost=lambda X: float(S),
    )


def run_coupled_gibbs(target: EBMTarget, R: int, S: int, gen: torch.Generator, *, k: int, m: int, lag: int,
                      max_iter: int, coupling: EBMCoupling = "maximal") -> CoupledGibbsRun:
    """R × S lagged coupled chain pairs (:func:`~gradbench.estimators.coupling.run_lagged`); Σ_s H^{(s)}_{k:m} of ∇F
    per replicate and meeting times."""
    run = run_lagged(gibbs_kernel(target, S, coupling), R, gen, k=k, m=m, lag=lag, max_iter=max_iter,
                     weight=_v_weight)
    return CoupledGibbsRun(run.grads, run.tau, run.met, float(run.evaluated.sum()), run)


def coupled_gibbs(target: EBMTarget, R: int, gen: torch.Generator, **params: object) -> GradSample:
    """Unbiased ĝ = −Σ_n ∇F(x_n) + N (1/S) Σ_s H^{(s)}_{k:m} from coupled Gibbs chains; see the module docstring."""
    _require_ebm(target)
    p = CoupledGibbsParams(**params)
    m = p.k if p.m is None else p.m
    run = run_coupled_gibbs(target, R, p.S, gen, k=p.k, m=m, lag=p.lag, max_iter=p.max_iter, coupling=p.coupling)
    grads = _estimate(target, run.model_sum, p.S)
    tau = run.tau
    cost = (p.lag + 2 * (tau - p.lag) + (m - tau).clamp_min(0)).sum(1)
    diagnostics = {
        "tau": tau.max(1).values,
        "censored": ~run.met.all(1),
        "lockstep_sweeps": _full(R, run.lockstep_sweeps / R, grads),
        "k": _full(R, p.k, grads),
        "m": _full(R, m, grads),
        **lockstep_diagnostics(cost, run.lagged),
    }
    return GradSample(grads, target.layout, cost, diagnostics)
