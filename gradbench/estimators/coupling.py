"""One driver for lagged coupled chains: the unbiased estimator H_{k:m} of Jacob, O'Leary & Atchadé (2020).

Every coupled estimator (``coupled_isir``, ``coupled_pimh`` on latent-variable targets, ``coupled_gibbs`` on
energy-based ones) hands :func:`run_lagged` a :class:`LaggedKernel` — pure functions on its own chain state, in the
style of BlackJAX's ``init``/``step`` kernels and ``run_inference_algorithm`` — and gets back Σ_pairs H_{k:m} per
replicate, the pairs' meeting times and the work the lockstep batch did.

Chains and estimator (Jacob, O'Leary & Atchadé 2020, JRSS B, "Unbiased Markov chain Monte Carlo methods with
couplings"). A replicate holds n independent chain pairs (data points, or independent pairs). Lag L ≥ 1: X_0, Y_0
are independent draws of ``init``; X_t = ``step``(X_{t−1}) for t = 1..L; then (X_t, Y_{t−L}) =
``coupled_step``(X_{t−1}, Y_{t−L−1}) for t > L. A pair's meeting time is τ = inf{t ≥ L : X_t = Y_{t−L}} (``meets``,
exact equality of full states; the coupled kernels are faithful, so met pairs stay met). Per pair, k ≤ m,
    H_{k:m} = (1/(m−k+1)) [ Σ_{t=k}^{m} h(X_t) + Σ_{t=k+L}^{τ−1} v_t (h(X_t) − h(Y_{t−L})) ],
    v_t = ⌊(t−k)/L⌋ − ⌈max(L, t−m)/L⌉ + 1                                       (:func:`v_weight`).
At time t the driver asks the kernel's ``grad`` for a h(X_t) + c (h(X_t) − h(Y_{t−L})) summed over the pairs,
with a = 1{k ≤ t ≤ m}/(m−k+1) and c = v_t/(m−k+1) on the pairs not yet met (``cy``; None when no pair needs it).

Lockstep. All R × n pairs advance as batched tensors, one Python iteration per time step. Once t ≥ m a replicate
whose pairs have all met is done and is dropped from the batch (compaction); a kernel with ``packs`` also gets the
host mask of its live replicates' unmet pairs and may evaluate only those (the latent-variable kernels do, see
:mod:`gradbench.estimators.coupled`). A replicate not done at t = ``max_iter`` is censored: NaN row, τ = max_iter.

Host syncs: exactly one per time step — the step's [B, n] meeting mask, copied to the host once; it gives the
meeting times, the bias-correction branch, the compaction and the packing. (The latent-variable kernels' first
coupled steps before m need no more; a kernel may sync inside, e.g. ``block_maximal``'s rejection loop.)

Work accounting. ``evaluated[r]`` is what the batch computed for replicate r's rows, in the kernel's cost units
(single-point log-joint evaluations, or chain sweeps); its sum is the batch's total. The estimator charges each
replicate what its own pairs needed up to their own meeting/stop times (``cost``), so
``lockstep_efficiency`` = Σ_r cost_r / Σ_r evaluated_r ≤ 1 is the fraction of the batch's work the estimator
needed; the rest is work on pairs that had met (waiting for the replicate's slowest pair) and packing padding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

State = TypeVar("State")


def v_weight(t: int, k: int, m: int, lag: int) -> float:
    """v_t = ⌊(t−k)/L⌋ − ⌈max(L, t−m)/L⌉ + 1, the bias-correction weight of time t (Jacob et al. 2020)."""
    return float(math.floor((t - k) / lag) - math.ceil(max(lag, t - m) / lag) + 1)


class StepInfo(NamedTuple):
    """What a coupled step reports besides the two states."""

    evaluated: np.ndarray  # [B] cost units computed for each live replicate
    aux: Any  # handed back to the kernel's ``grad`` for this time step (e.g. a packing, a fused gradient)


@dataclass(frozen=True)
class LaggedKernel(Generic[State]):
    """Pure functions on a batch of B replicates × n chains (a chain state is any batched structure).

    ``grad(X, Y, a, cy, aux)`` returns (g [B′, P], rows) with g the rows of Σ_pairs (a + cy) h(X) − cy h(Y)
    (cy [B, n], or None: a h(X) only) and rows the live rows they belong to (None: all B, in order); ``aux`` is
    the ``StepInfo.aux`` of the step that produced X and Y (None before the first coupled step).
    """

    init: Callable[[int, torch.Generator], State]  # R chains' independent start, X_0 (or Y_0)
    step: Callable[[State, torch.Generator], State]  # one step of one chain
    coupled_step: Callable[[State, State, torch.Generator, np.ndarray | None], tuple[State, State, StepInfo]]
    meets: Callable[[State, State], Tensor]  # [B, n] bool, exact equality of the full states
    take: Callable[[State, Tensor], State]  # the rows (replicates) given by an index tensor
    grad: Callable[[State, State, float, Tensor | None, Any], tuple[Tensor, Tensor | None]]
    accumulator: Callable[[State, int], Tensor]  # zeros [R, P] of the gradient's dtype and device
    init_cost: Callable[[State], float]  # per replicate: X_0 and Y_0
    step_cost: Callable[[State], float]  # per replicate: one step of X alone
    packs: bool = False  # coupled_step wants the host mask of the unmet pairs once t ≥ m


class LaggedRun(NamedTuple):
    grads: Tensor  # [R, P] Σ_pairs H_{k:m}; NaN rows for censored replicates
    tau: Tensor  # [R, n] meeting times (max_iter where not met), gradient dtype
    met: Tensor  # [R, n] bool
    evaluated: np.ndarray  # [R] cost units the batch computed for each replicate's rows
    seconds: float  # wall time of the run
    step_seconds: np.ndarray  # [T] wall time of each coupled step (sync to sync, its gradient terms included)
    step_evaluated: np.ndarray  # [T] cost units each coupled step computed


def run_lagged(kernel: LaggedKernel[State], R: int, gen: torch.Generator, *, k: int, m: int, lag: int, max_iter: int,
               with_estimate: bool = True, weight: Callable[[int, int, int, int], float] = v_weight) -> LaggedRun:
    """R replicates of lagged coupled chains in lockstep; Σ_pairs H_{k:m} per replicate (see the module docstring).

    ``with_estimate=False`` computes meeting times only (pilot runs). ``weight`` is v_t (tests replace it).
    """
    t_start = time.perf_counter()
    X, Y = kernel.init(R, gen), kernel.init(R, gen)
    acc = kernel.accumulator(X, R)
    dtype, device = acc.dtype, acc.device
    evaluated = np.full(R, kernel.init_cost(X), dtype=np.float64)
    scale = 1.0 / (m - k + 1)

    def contribute(t: int, X: State, Y: State, unmet: Tensor | None, any_unmet: bool, rows: Tensor | None,
                   aux: Any) -> None:
        """Add (1/(m−k+1)) [1{k ≤ t ≤ m} h(X_t) + v_t 1{t < τ} (h(X_t) − h(Y_{t−L}))] for time t."""
        if not with_estimate:
            return
        a = scale if k <= t <= m else 0.0
        v = weight(t, k, m, lag) * scale if unmet is not None and t >= k + lag else 0.0
        cy = v * unmet.to(dtype) if v != 0.0 and any_unmet else None  # type: ignore[union-attr]
        if cy is None and a == 0.0:
            return
        g, local = kernel.grad(X, Y, a, cy, aux)
        if local is not None:
            local = local if rows is None else rows[local]
        elif rows is not None:
            local = rows
        if local is None:
            acc.add_(g)
        else:
            acc.index_add_(0, local, g)

    contribute(0, X, Y, None, False, None, None)
    for t in range(1, lag + 1):  # X runs alone for L steps: X_1..X_L, Y_0
        X = kernel.step(X, gen)
        evaluated += kernel.step_cost(X)
        if t < lag:
            contribute(t, X, Y, None, False, None, None)
    now = kernel.meets(X, Y)
    met = now.cpu().numpy()  # host copies of the meeting state: the one sync per step
    tau = np.where(met, float(lag), float(max_iter))
    contribute(lag, X, Y, ~now, not met.all(), None, None)

    rows: np.ndarray | None = None  # live replicates; None = all R, in order
    rows_t: Tensor | None = None  # the same on the device
    step_seconds: list[float] = []
    step_evaluated: list[float] = []
    t = lag
    t_step = time.perf_counter()
    while True:
        live_met = met if rows is None else met[rows]
        active: np.ndarray | None = None
        if t >= m:
            done = live_met.all(1)
            n_done = int(done.sum())
            if n_done == done.shape[0]:
                break
            if n_done:  # compaction: drop finished replicates
                keep = np.flatnonzero(~done)
                keep_t = torch.from_numpy(keep).to(device)
                rows = keep if rows is None else rows[keep]
                rows_t = torch.from_numpy(rows).to(device)
                X, Y, live_met = kernel.take(X, keep_t), kernel.take(Y, keep_t), live_met[keep]
            if kernel.packs and t < max_iter:
                active = ~live_met
        if t >= max_iter:
            break
        t += 1
        X, Y, info = kernel.coupled_step(X, Y, gen, active)
        now = kernel.meets(X, Y)
        now_h = now.cpu().numpy()
        newly = now_h & ~live_met
        if rows is None:
            evaluated += info.evaluated
            tau[newly] = t
            met |= now_h
        else:
            evaluated[rows] += info.evaluated
            tau_rows = tau[rows]
            tau_rows[newly] = t
            tau[rows] = tau_rows
            met[rows] |= now_h
        contribute(t, X, Y, ~now, not now_h.all(), rows_t, info.aux)
        t_prev, t_step = t_step, time.perf_counter()
        step_seconds.append(t_step - t_prev)
        step_evaluated.append(float(info.evaluated.sum()))

    censored = ~met.all(1)
    grads = acc.masked_fill(torch.from_numpy(censored).to(device).unsqueeze(1), math.nan) if with_estimate else acc
    return LaggedRun(grads, torch.from_numpy(tau).to(dtype=dtype, device=device), torch.from_numpy(met).to(device),
                     evaluated, time.perf_counter() - t_start, np.asarray(step_seconds), np.asarray(step_evaluated))


def full_batch_rate(run: LaggedRun) -> float:
    """β, seconds per cost unit at the full batch's throughput: the smallest seconds ÷ evaluated over the coupled
    steps that evaluated at least half of what the first did (the widest; the minimum, because load on the machine
    only ever adds time). NaN without coupled steps."""
    e, s = run.step_evaluated, run.step_seconds
    if e.size == 0 or e[0] <= 0:
        return math.nan
    wide = e >= e[0] / 2
    return float((s[wide] / e[wide]).min())


def lockstep_diagnostics(cost: Tensor, run: LaggedRun) -> dict[str, Tensor]:
    """Per-replicate diagnostics of the lockstep batch's efficiency, for a call whose replicates needed ``cost`` [R].

    * ``lockstep_evaluated``: e_r, the work the batch did on replicate r's rows (cost units);
    * ``lockstep_efficiency``: Σ_r cost_r / Σ_r e_r for the call (the same in every row) — work, not time;
    * ``lockstep_seconds``: the call's wall time s, per replicate (s / R in every row, so rows sum to s);
    * ``lockstep_seconds_lost``: (s − β Σ_r cost_r) / R, measured: the wall time beyond what the needed work costs
      at the full batch's throughput β (:func:`full_batch_rate`). It counts unneeded work (1 − efficiency) and the
      fixed per-step cost of the narrow steps in which few chain pairs — in the end the slowest one — run on alone.
    """
    R = cost.shape[0]
    e = torch.from_numpy(run.evaluated).to(dtype=cost.dtype, device=cost.device)
    total = float(run.evaluated.sum())
    needed = float(cost.double().sum())
    eff = needed / total if total > 0 else math.nan
    beta = full_batch_rate(run)
    lost = run.seconds - beta * needed if math.isfinite(beta) else 0.0
    return {
        "lockstep_evaluated": e,
        "lockstep_efficiency": torch.full_like(cost, eff),
        "lockstep_seconds": torch.full_like(cost, run.seconds / R),
        "lockstep_seconds_lost": torch.full_like(cost, max(lost, 0.0) / R),
    }
