"""MCMC on the extended importance-sampling space and unbiased coupled-chain estimators.

Extended space (seed slides; docs/design.md §6.6). For one data point x with proposal q(z | x) and
w(z) = p(x, z) / q(z | x), a *state* is X = (z_{1:K}, ℓ): K particles and a selected index. The
test function is the Rao–Blackwellised
    h(X) = Σ_k w̃_k ∇θ log p(x, z_k),   w̃_k = w(z_k) / Σ_j w(z_j),
or, with ``rao_blackwell=False``, the plain h(X) = ∇θ log p(x, z_ℓ). Every data point carries its
own independent chain; gradients are sums over the N data points. Chains start from the
importance-sampling state X_0 = (z_{1:K} ~ q, ℓ ∝ w), so h(X_0) is exactly the IWAE gradient.

Kernels (each one pure function ``(target, state, gen) -> state``):
* **PIMH** (seed Algorithm 1): propose a fresh X* = (z*_{1:K} ~ q, ℓ* ∝ w*), accept with
  probability min(1, Ẑ*/Ẑ), Ẑ = (1/K) Σ_k w_k. Its invariant law is
  π(z_{1:K}, ℓ) = w̃_ℓ Ẑ/p(x) Π_k q(z_k), whose ℓ-marginal of z_ℓ is p(z | x).
* **i-SIR** (iterated sampling importance resampling): keep the selected particle z_ℓ in slot 0,
  draw K−1 fresh particles from q into slots 1..K−1, select the new ℓ ∝ w. The selected particle
  is a Markov chain with invariant law p(z | x); E[f(z_ℓ') | particles] = h(particles), so the
  Rao–Blackwellised h has the same expectation under stationarity.
Coupled kernels (two chains X, Y, the lagged one second):
* **coupled PIMH** (seed Algorithm 4): one shared proposal X* and one shared uniform u; each
  chain accepts when log u ≤ log Ẑ* − log Ẑ_chain.
* **coupled i-SIR**: both chains share the K−1 fresh particles (and their log-joint
  evaluations); the two index draws are coupled ``maximal``-ly (with probability Σ_k min(p_k, p̄_k)
  a common index from min(p, p̄), otherwise independent draws from the normalised residuals),
  by a ``common_uniform`` (inverse CDFs at one uniform, fixed slot order), or ``independent``-ly
  (no index coupling — a control that still meets, only more slowly — except that equal
  selection laws, i.e. equal states, share one draw so that the kernel stays faithful).
Both coupled kernels are *faithful*: equal inputs give equal outputs (tested).

Meeting convention. Lag L ≥ 1. X_0, Y_0 are independent IS states; X_t = P(X_{t−1}) for
t = 1..L; then (X_t, Y_{t−L}) come from the coupled kernel for t = L+1, L+2, .... A data point's
meeting time is τ_n = inf{t ≥ L : X_t = Y_{t−L}} where "=" is equality of the *full* extended
state (all K particles and ℓ), checked exactly. A replicate's τ is max_n τ_n (all its N per-point
chain pairs have met); each point's estimator uses its own τ_n.
For i-SIR the full states coincide one step after the selected particles do (slot 0 still holds
the chains' previous, different selections), so with an exact-posterior proposal (all weights
equal, hence a common index under the maximal coupling) τ − L − 1 ~ Geometric((K−1)/K) on
{1, 2, ...}: each coupled step picks a shared fresh particle with probability (K−1)/K. Coupled
PIMH with an exact proposal accepts in both chains at once: τ = L + 1.

Unbiased estimator (Jacob, O'Leary & Atchadé 2020, JRSS B, "Unbiased Markov chain Monte Carlo
methods with couplings"), per data point, k ≤ m:
    H_{k:m} = (1/(m−k+1)) [ Σ_{t=k}^{m} h(X_t) + Σ_{t=k+L}^{τ−1} v_t (h(X_t) − h(Y_{t−L})) ],
    v_t = ⌊(t−k)/L⌋ − ⌈max(L, t−m)/L⌉ + 1.
With L = 1 and m = k = t0 it is the seed's form Ĥ = h(X_{t0}) + Σ_{t=t0+1}^{τ−1} (h(X_t) − h(Y_{t−1})).
``k: auto`` runs a pilot of coupled chains (meeting times only, its own draws from ``gen``) and
sets k to the ``k_quantile`` quantile of the pilot's replicate meeting times, m = m_factor × k.

Cost accounting (log-joint evaluations of single data points). X_0 and Y_0 cost K each; one
kernel step costs c = K−1 (i-SIR) or K (PIMH) fresh evaluations — carried particles' log-joints
are never recomputed, and a coupled step costs c, not 2c, because both chains evaluate the *same*
fresh particles. A point needs X up to max(m, τ_n) and Y up to τ_n − L, so its cost is
2K + c max(m, τ_n); ``cost[r]`` sums that over the N points. The batch runs in lockstep until its
last replicate is done; diagnostics ``lockstep_cost`` is what the batch actually evaluated divided
by R, ``kernel_steps`` is Σ_n L + 2(τ_n − L) + max(0, m − τ_n) (docs/design.md §6.6). ``lockstep_evaluated``,
``lockstep_efficiency`` (Σ cost ÷ Σ evaluated), ``lockstep_seconds`` and ``lockstep_seconds_lost`` (measured: wall time
beyond what the needed work costs at the full batch's throughput) are described in
:func:`~gradbench.estimators.coupling.lockstep_diagnostics`.

Censoring. A replicate whose chains have not all met by t = ``max_iter`` is *censored*: its row
of ``grads`` is NaN (so protocols exclude and count it as non-finite), ``censored`` is True, its
``tau`` is ``max_iter`` (a lower bound), and its cost is what it spent up to the cap.

Vectorisation: the lagged-coupling driver :func:`~gradbench.estimators.coupling.run_lagged` (shared with the
energy-based ``coupled_gibbs``; one host sync per time step) runs :func:`lagged_kernel`'s kernels; all R × N chain
pairs advance as batched tensors, one Python iteration per time step; once t ≥ m, replicates that are done are
dropped from the batch (compaction), and, on targets
with ``log_joint_at`` (every :class:`~gradbench.target.ComposedTarget`), so are the met (replicate,
point) chains of the others: the unmet pairs are packed into rows (:func:`_pack`) and only they are
evaluated, so the batch evaluates what the estimator is charged up to the packing's padding. The random
stream is unchanged (proposals and uniforms are still drawn for every chain of a live replicate), so the
estimate equals the unpacked one up to rounding (tested). Under coupled i-SIR the step's forward pass also
covers the two carried particles and is kept for the step's gradient term (one backward, no second forward).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gradbench.core import GradSample, LatentTarget
from gradbench.estimators.coupling import LaggedKernel, LaggedRun, StepInfo, lockstep_diagnostics, run_lagged
from gradbench.estimators.params import (  # noqa: F401  (torch-free schemas, for `gradbench validate`)
    CoupledISIRParams,
    CoupledParams,
    CoupledPIMHParams,
    Coupling,
    SingleChainParams,
    _Strict,
)


# -- state and kernels -----------------------------------------------------------------------
class ChainState(NamedTuple):
    """Extended-space state of B × N independent chains."""

    z: Tensor  # [B, K, N, k] particles
    log_w: Tensor  # [B, K, N] log p(x, z) − log q(z | x)
    idx: Tensor  # [B, N] selected index ℓ (int64)


def _propose(target: LatentTarget, B: int, K: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    z, log_q = target.sample_proposal((B, K), gen)
    return z, target.log_joint(z) - log_q


def _uniform(shape: tuple[int, ...], like: Tensor, gen: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=like.dtype, device=like.device)


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Index j with cdf_{j−1} < u·total ≤ cdf_j for probs [B, K, N] (unnormalised is fine), u [B, N]."""
    c = probs.cumsum(1)
    idx = (c < u.unsqueeze(1) * c[:, -1:]).sum(1)
    return idx.clamp_max(probs.shape[1] - 1)


def log_zhat(state: ChainState) -> Tensor:
    """log Ẑ = log (1/K) Σ_k w_k per chain, [B, N]."""
    return torch.logsumexp(state.log_w, dim=1) - math.log(state.log_w.shape[1])


def selected(state: ChainState) -> tuple[Tensor, Tensor]:
    """The selected particle z_ℓ [B, N, k] and its log-weight [B, N]."""
    B, _, N, k = state.z.shape
    i = state.idx.unsqueeze(1)
    z = state.z.gather(1, i.unsqueeze(-1).expand(B, 1, N, k)).squeeze(1)
    return z, state.log_w.gather(1, i).squeeze(1)


def init_state(target: LatentTarget, B: int, K: int, gen: torch.Generator) -> ChainState:
    """The importance-sampling state: z_{1:K} ~ q, ℓ ∝ w (the PIMH proposal and X_0)."""
    z, log_w = _propose(target, B, K, gen)
    idx = _inverse_cdf(torch.softmax(log_w, dim=1), _uniform(log_w.shape[::2], log_w, gen))
    return ChainState(z, log_w, idx)


def pimh_step(target: LatentTarget, s: ChainState, gen: torch.Generator) -> ChainState:
    """Seed Algorithm 1: accept a fresh IS state with probability min(1, Ẑ*/Ẑ)."""
    prop = init_state(target, s.z.shape[0], s.z.shape[1], gen)
    log_u = torch.log(_uniform(s.idx.shape, s.log_w, gen))
    return _where(log_u <= log_zhat(prop) - log_zhat(s), prop, s)


def isir_step(target: LatentTarget, s: ChainState, gen: torch.Generator) -> ChainState:
    """i-SIR: selected particle into slot 0, K−1 fresh particles, new index ∝ w."""
    z0, lw0 = selected(s)
    zf, lwf = _propose(target, s.z.shape[0], s.z.shape[1] - 1, gen)
    z = torch.cat([z0.unsqueeze(1), zf], 1)
    log_w = torch.cat([lw0.unsqueeze(1), lwf], 1)
    idx = _inverse_cdf(torch.softmax(log_w, dim=1), _uniform(s.idx.shape, log_w, gen))
    return ChainState(z, log_w, idx)


def coupled_pimh_step(
    target: LatentTarget, x: ChainState, y: ChainState, gen: torch.Generator
) -> tuple[ChainState, ChainState]:
    """Seed Algorithm 4: one shared proposal, one shared uniform."""
    prop = init_state(target, x.z.shape[0], x.z.shape[1], gen)
    log_u = torch.log(_uniform(x.idx.shape, x.log_w, gen))
    lz = log_zhat(prop)
    return _where(log_u <= lz - log_zhat(x), prop, x), _where(log_u <= lz - log_zhat(y), prop, y)


def coupled_isir_step(
    target: LatentTarget, x: ChainState, y: ChainState, gen: torch.Generator, coupling: Coupling = "maximal"
) -> tuple[ChainState, ChainState]:
    """Coupled i-SIR: shared K−1 fresh particles, coupled index draws."""
    zx0, lwx0 = selected(x)
    zy0, lwy0 = selected(y)
    zf, lwf = _propose(target, x.z.shape[0], x.z.shape[1] - 1, gen)
    zx, zy = torch.cat([zx0.unsqueeze(1), zf], 1), torch.cat([zy0.unsqueeze(1), zf], 1)
    lwx, lwy = torch.cat([lwx0.unsqueeze(1), lwf], 1), torch.cat([lwy0.unsqueeze(1), lwf], 1)
    ix, iy = coupled_categorical(torch.softmax(lwx, 1), torch.softmax(lwy, 1), gen, coupling)
    return ChainState(zx, lwx, ix), ChainState(zy, lwy, iy)


def coupled_categorical(px: Tensor, py: Tensor, gen: torch.Generator, coupling: Coupling) -> tuple[Tensor, Tensor]:
    """Draw (i, j) with i ~ px, j ~ py (probabilities over dim 1 of [B, K, N]) under a coupling.

    ``maximal``: P(i = j) = Σ_k min(px_k, py_k), the largest possible; equal inputs always give
    i = j (also when rounding makes Σ_k min < 1). Four uniforms are drawn whatever the branch, so
    the generator's consumption does not depend on the data.
    """
    shape = (px.shape[0], px.shape[2])
    if coupling == "common_uniform":
        u = _uniform(shape, px, gen)
        return _inverse_cdf(px, u), _inverse_cdf(py, u)
    if coupling == "independent":  # except equal laws share the draw: the kernel must stay faithful
        ix, iy = _inverse_cdf(px, _uniform(shape, px, gen)), _inverse_cdf(py, _uniform(shape, px, gen))
        return ix, torch.where((px == py).all(1), ix, iy)
    if coupling != "maximal":
        raise ValueError(f"unknown coupling {coupling!r}")
    u = _uniform((4, *shape), px, gen)
    m = torch.minimum(px, py)
    same = (u[0] < m.sum(1)) | (px == py).all(1)
    common = _inverse_cdf(m, u[1])
    ix = _inverse_cdf((px - m).clamp_min(0), u[2])
    iy = _inverse_cdf((py - m).clamp_min(0), u[3])
    return torch.where(same, common, ix), torch.where(same, common, iy)


def states_equal(x: ChainState, y: ChainState) -> Tensor:
    """Exact equality of full extended states, per chain: [B, N] bool."""
    return (x.z == y.z).all(-1).all(1) & (x.idx == y.idx) & (x.log_w == y.log_w).all(1)


def _where(cond: Tensor, a: ChainState, b: ChainState) -> ChainState:
    """Per-chain select: cond [B, N]."""
    return ChainState(
        torch.where(cond[:, None, :, None], a.z, b.z),
        torch.where(cond[:, None, :], a.log_w, b.log_w),
        torch.where(cond, a.idx, b.idx),
    )


def _take(s: ChainState, rows: Tensor) -> ChainState:
    return ChainState(s.z[rows], s.log_w[rows], s.idx[rows])


def h_weights(s: ChainState, rao_blackwell: bool) -> Tensor:
    """Weights [B, K, N] with h(X) = Σ_k weights_k ∇θ log p(x, z_k): w̃ (Rao–Blackwellised) or one-hot(ℓ)."""
    if rao_blackwell:
        return torch.softmax(s.log_w, dim=1)
    return torch.zeros_like(s.log_w).scatter_(1, s.idx.unsqueeze(1), 1.0)


class _Kind(NamedTuple):
    step: Callable[[LatentTarget, ChainState, torch.Generator], ChainState]
    coupled: Callable[[LatentTarget, ChainState, ChainState, torch.Generator], tuple[ChainState, ChainState]]
    evals_per_step: Callable[[int], int]  # fresh log-joint evaluations per step, as a function of K
    shared_tail: bool  # coupled states share particles 1..K−1 (i-SIR)


def _kind(name: str, coupling: Coupling = "maximal") -> _Kind:
    if name == "isir":
        return _Kind(isir_step, lambda t, x, y, g: coupled_isir_step(t, x, y, g, coupling), lambda K: K - 1, True)
    if name == "pimh":
        return _Kind(pimh_step, coupled_pimh_step, lambda K: K, False)
    raise ValueError(f"unknown kernel {name!r}")


def simulate_coupled(
    target: LatentTarget,
    R: int,
    gen: torch.Generator,
    step: Callable[[LatentTarget, ChainState, torch.Generator], ChainState],
    coupled_step: Callable[[LatentTarget, ChainState, ChainState, torch.Generator], tuple[ChainState, ChainState]],
    *,
    K: int,
    lag: int,
    T: int,
) -> tuple[list[ChainState], list[ChainState]]:
    """Full trajectories X_0..X_{T+L} and Y_0..Y_T of lagged coupled chains, never stopped at meeting.

    For tests and teaching (it stores every state): the coupled kernel keeps running after the
    chains meet, so faithfulness can be checked on real trajectories.
    """
    xs, ys = [init_state(target, R, K, gen)], [init_state(target, R, K, gen)]
    for _ in range(lag):
        xs.append(step(target, xs[-1], gen))
    for _ in range(T):
        x, y = coupled_step(target, xs[-1], ys[-1], gen)
        xs.append(x)
        ys.append(y)
    return xs, ys


# -- per-point compaction --------------------------------------------------------------------
class _Packing(NamedTuple):
    """The unmet (replicate, point) chain pairs of the live batch packed into ``rows`` rows of ``W`` cells.

    Cell c (flat [rows·W]) holds pair ``flat[c]`` = b·N + n; every row belongs to one replicate ``row_of[row]``;
    padding cells (``valid`` False) repeat their row's first pair and get weight 0.
    """

    flat: Tensor  # [rows·W] int64
    valid: Tensor  # [rows·W] bool
    row_of: Tensor  # [rows] int64, row of the live batch
    points: Tensor  # [rows, W] int64, data point of each cell
    W: int
    row_count: np.ndarray  # [B] rows of each live replicate (host)
    valid_cells: Tensor  # int64 indices of the valid cells, ascending


# Packing: a row costs its [P] gradient block (written, then added to its replicate), about a tenth of a cell's
# K + 1 forward and backward passes on the VAE of suites/speed-vae.yaml; rows ≤ 2R bounds the transient [rows, P]
# gradient at twice the [R, P] result. Measured there (vae latent 20, R = 200, K = 16): evaluated ÷ charged
# log-joints 1.20 with rows ≤ R, 1.05 with these values.
ROW_COST = 0.5
MAX_ROWS_PER_REPLICATE = 2


def _pack(unmet: np.ndarray, max_rows: int, device: torch.device) -> _Packing:
    """Pack the True cells of ``unmet`` [B, N] (every row has one) row by row, W per packed row.

    W minimises cells + ROW_COST·rows, cells = Σ_b W ⌈u_b/W⌉ (u_b unmet points of replicate b), among the
    widths with at most ``max_rows`` rows (the driver passes 2R: the transient [rows, P] gradient stays within
    twice the [R, P] result);
    vectorised over replicates (numpy on the host copy of the mask, which the driver's meeting test syncs anyway).
    """
    B, N = unmet.shape
    u = unmet.sum(1)
    widths = np.arange(1, int(u.max()) + 1)
    n_rows = -(-u[None, :] // widths[:, None])  # [widths, B] = ⌈u_b / W⌉
    total = n_rows.sum(1)
    cost = np.where(total <= max(max_rows, B), total * widths + ROW_COST * total, np.inf)
    W = int(widths[np.flatnonzero(cost == cost.min())[-1]])  # cheapest, then fewest rows
    rows_b = n_rows[W - 1]
    bs, ns = np.nonzero(unmet)
    rank = np.arange(bs.size) - (np.cumsum(u) - u)[bs]  # position of the pair among its replicate's
    cell = ((np.cumsum(rows_b) - rows_b)[bs] + rank // W) * W + rank % W
    flat = np.full(int(rows_b.sum()) * W, -1, dtype=np.int64)
    flat[cell] = bs * N + ns
    valid = flat >= 0
    flat = np.where(valid, flat, np.repeat(flat[::W], W))  # column 0 of every row is a real pair
    as_t = lambda a: torch.from_numpy(a).to(device)
    return _Packing(as_t(flat), as_t(valid), as_t(np.repeat(np.arange(B), rows_b)), as_t((flat % N).reshape(-1, W)), W, rows_b,
                    as_t(np.flatnonzero(valid)))


def _gather_cells(t: Tensor, p: _Packing) -> Tensor:
    """[B, S, N, *e] → the packed [rows, S, W, *e]."""
    B, S, N, *e = t.shape
    cells = t.transpose(1, 2).reshape(B * N, S, *e)[p.flat]
    return cells.reshape(-1, p.W, S, *e).transpose(1, 2)


def _scatter_cells(v: Tensor, p: _Packing, B: int, N: int) -> Tensor:
    """Packed [rows, S, W] → [B, S, N], zero at the pairs not packed (met chains)."""
    S = v.shape[1]
    cells = v.transpose(1, 2).reshape(-1, S)
    out = v.new_zeros(B * N, S)
    out[p.flat[p.valid_cells]] = cells[p.valid_cells]  # indices built on the host: no device-to-host sync
    return out.reshape(B, N, S).transpose(1, 2)


class _PackedTarget:
    """The target as the kernels see it after per-point compaction: proposals for all B × N chains (the random
    stream is unchanged), log-joints only for the packed unmet pairs (0 elsewhere: met chains are equal in X and
    Y, share these values and stay equal, and are used no more)."""

    def __init__(self, target: LatentTarget, packing: _Packing, B: int, N: int, carried: Tensor | None = None) -> None:
        self.target, self.packing, self.B, self.N, self.carried = target, packing, B, N, carried
        self.step_grad: Callable[[Tensor], Tensor] | None = None

    def sample_proposal(self, batch: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.target.sample_proposal(batch, gen)

    def log_joint(self, z: Tensor) -> Tensor:
        """log p(x, z) of the packed pairs. With ``carried`` [B, 2, N, k] (the selected particles of X_t and Y_t,
        slot 0 of X_{t+1} and Y_{t+1} under coupled i-SIR) the forward pass runs over [carried, z] and keeps
        ``step_grad``: packed weights [rows, 2 + S, W] ↦ the weighted gradient over these 2 + S particles, i.e.
        h-terms of X_{t+1} and Y_{t+1} without a second forward pass. The carried log-joints are not returned
        (the states keep their own values)."""
        p = self.packing
        if self.carried is None:
            lp = self.target.log_joint_at(_gather_cells(z, p), p.points)  # type: ignore[attr-defined]
            return _scatter_cells(lp, p, self.B, self.N)
        zz = _gather_cells(torch.cat([self.carried, z], 1), p)
        lp, self.step_grad = self.target.log_joint_with_grad_at(zz, p.points)  # type: ignore[attr-defined]
        return _scatter_cells(lp[:, self.carried.shape[1]:], p, self.B, self.N)


# -- the latent-variable kernels of the lagged-coupling driver -------------------------------------
class CoupledRun(NamedTuple):
    grads: Tensor  # [R, P]; NaN rows for censored replicates
    tau_point: Tensor  # [R, N] float meeting times (max_iter where not met)
    met: Tensor  # [R, N] bool
    lockstep_evals: float  # total single-point log-joint evaluations the batch computed
    lagged: LaggedRun  # the driver's result (per-replicate work, wall time)


class _StepAux(NamedTuple):
    packing: _Packing | None  # the packing the coupled step ran on (None: every point of the live replicates)
    step_grad: Callable[[Tensor], Tensor] | None  # its fused [X slot 0, Y slot 0, fresh] gradient (packed i-SIR)


def lagged_kernel(target: LatentTarget, kind: _Kind, R: int, *, K: int, rao_blackwell: bool, with_estimate: bool = True,
                  pack_points: bool = True, reuse_packing: bool = True) -> LaggedKernel[ChainState]:
    """The extended-space chains as a :class:`~gradbench.estimators.coupling.LaggedKernel`: h(X) = Σ_k w̃_k ∇θ log
    p(x, z_k) (or one-hot ℓ), cost in single-point log-joint evaluations, per-point packing on targets with
    ``log_joint_at`` (see the module docstring). ``reuse_packing``: a step whose unmet pairs are those of the
    previous step reuses its packing (the same tensors, so the same bits) instead of packing again — in the tail,
    where one slow pair runs on alone for many steps, this saves the host-side packing and its copies each step."""
    pack_points = pack_points and hasattr(target, "log_joint_at")
    c = kind.evals_per_step(K)
    last: list[tuple[np.ndarray, _Packing]] = []  # the previous step's unmet mask and packing

    def pack(active: np.ndarray, device: torch.device) -> _Packing:
        if reuse_packing and last and np.array_equal(last[0][0], active):
            return last[0][1]
        packing = _pack(active, MAX_ROWS_PER_REPLICATE * R, device)
        last[:] = [(active.copy(), packing)]
        return packing

    def coupled_step(X: ChainState, Y: ChainState, gen: torch.Generator,
                     active: np.ndarray | None) -> tuple[ChainState, ChainState, StepInfo]:
        B, N = X.idx.shape
        if active is None:
            X, Y = kind.coupled(target, X, Y, gen)
            return X, Y, StepInfo(np.full(B, float(c * N)), _StepAux(None, None))
        packing = pack(active, X.idx.device)
        carried = torch.stack([selected(X)[0], selected(Y)[0]], 1) if with_estimate and kind.shared_tail else None
        packed = _PackedTarget(target, packing, B, N, carried)
        X, Y = kind.coupled(packed, X, Y, gen)  # type: ignore[arg-type]
        return X, Y, StepInfo(c * packing.W * packing.row_count.astype(np.float64), _StepAux(packing, packed.step_grad))

    def weighted(parts: list[tuple[Tensor, Tensor]], step_weights: Tensor | None,
                 aux: _StepAux | None) -> tuple[Tensor, Tensor | None]:
        """Σ_parts Σ weights ∇θ log p(x, z), or, with ``step_weights`` [B, K + 1, N], the gradient over the last
        coupled i-SIR step's [X slot 0, Y slot 0, fresh] particles (its fused ``step_grad``); packed when the step
        was (only the unmet chains: their cells, padding weighted 0, rows back to replicates)."""
        packing = None if aux is None else aux.packing
        if packing is None:
            return target.weighted_grad_log_joint(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)), None
        dtype = (step_weights if step_weights is not None else parts[0][1]).dtype
        valid = packing.valid.reshape(-1, 1, packing.W).to(dtype)
        if step_weights is not None:
            assert aux is not None and aux.step_grad is not None
            return aux.step_grad(_gather_cells(step_weights, packing) * valid), packing.row_of
        z, w = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        return target.weighted_grad_log_joint_at(  # type: ignore[attr-defined]
            _gather_cells(z, packing), _gather_cells(w, packing) * valid, packing.points), packing.row_of

    def grad(X: ChainState, Y: ChainState, a: float, cy: Tensor | None, aux: _StepAux | None) -> tuple[Tensor, Tensor | None]:
        """a h(X_t) + cy (h(X_t) − h(Y_{t−L})); under coupled i-SIR slots 1..K−1 hold the same particles in both
        chains (one gradient term for them), and a packed step's forward pass serves the gradient (fused)."""
        hx = h_weights(X, rao_blackwell)
        shared = aux is not None and kind.shared_tail
        fused = shared and aux.step_grad is not None  # type: ignore[union-attr]
        if cy is None:
            if fused:
                return weighted([], torch.cat([a * hx[:, :1], torch.zeros_like(hx[:, :1]), a * hx[:, 1:]], 1), aux)
            return weighted([(X.z, a * hx)], None, aux)
        cx = (a + cy).unsqueeze(1)
        cy = cy.unsqueeze(1)
        hy = h_weights(Y, rao_blackwell)
        if fused:
            return weighted([], torch.cat([cx * hx[:, :1], -cy * hy[:, :1], cx * hx[:, 1:] - cy * hy[:, 1:]], 1), aux)
        if shared:
            return weighted([(X.z[:, :1], cx * hx[:, :1]), (Y.z[:, :1], -cy * hy[:, :1]),
                             (X.z[:, 1:], cx * hx[:, 1:] - cy * hy[:, 1:])], None, aux)
        return weighted([(X.z, cx * hx), (Y.z, -cy * hy)], None, aux)

    P = target.layout.size
    return LaggedKernel(
        init=lambda B, gen: init_state(target, B, K, gen),
        step=lambda X, gen: kind.step(target, X, gen),
        coupled_step=coupled_step,
        meets=states_equal,
        take=_take,
        grad=grad,
        accumulator=lambda X, B: torch.zeros(B, P, dtype=X.log_w.dtype, device=X.log_w.device),
        init_cost=lambda X: 2.0 * K * X.idx.shape[1],
        step_cost=lambda X: float(c * X.idx.shape[1]),
        packs=pack_points,
    )


def run_coupled(
    target: LatentTarget,
    R: int,
    gen: torch.Generator,
    kind: _Kind,
    *,
    K: int,
    k: int,
    m: int,
    lag: int,
    rao_blackwell: bool,
    max_iter: int,
    with_estimate: bool = True,
    pack_points: bool = True,
) -> CoupledRun:
    """Run R replicates of lagged coupled chains (:func:`~gradbench.estimators.coupling.run_lagged`); return
    H_{k:m} (summed over data points) and τ.

    ``with_estimate=False`` skips every gradient evaluation (pilot runs).
    ``pack_points`` (targets with ``log_joint_at``): once t ≥ m, log-joints and gradients are evaluated only for
    the (replicate, point) chains that have not met, packed into full rows (:func:`_pack`); met chains are
    needed no more. The estimate is the same up to rounding (the random stream is unchanged); ``False`` keeps
    every point of a live replicate in the batch (the reference path of the tests).
    """
    kernel = lagged_kernel(target, kind, R, K=K, rao_blackwell=rao_blackwell, with_estimate=with_estimate,
                           pack_points=pack_points)
    run = run_lagged(kernel, R, gen, k=k, m=m, lag=lag, max_iter=max_iter, with_estimate=with_estimate)
    return CoupledRun(run.grads, run.tau, run.met, float(run.evaluated.sum()), run)


# -- estimators ------------------------------------------------------------------------------
def _single_chain(name: str, target: LatentTarget, R: int, gen: torch.Generator, K: int, t: int,
                  rao_blackwell: bool) -> GradSample:
    kind = _kind(name)
    X = init_state(target, R, K, gen)
    for _ in range(t):
        X = kind.step(target, X, gen)
    grads = target.weighted_grad_log_joint(X.z, h_weights(X, rao_blackwell))
    N = X.idx.shape[1]
    cost = torch.full((R,), float(N * (K + t * kind.evals_per_step(K))), dtype=grads.dtype, device=grads.device)
    return GradSample(grads, target.layout, cost)


def pimh(target: LatentTarget, R: int, gen: torch.Generator, *, K: int = 8, t: int = 1,
         rao_blackwell: bool = True) -> GradSample:
    """h(X_t) after t PIMH steps from the IS state: biased at finite t (t = 0 is IWAE)."""
    return _single_chain("pimh", target, R, gen, K, t, rao_blackwell)


def isir(target: LatentTarget, R: int, gen: torch.Generator, *, K: int = 8, t: int = 1,
         rao_blackwell: bool = True) -> GradSample:
    """h(X_t) after t i-SIR steps from the IS state: biased at finite t (t = 0 is IWAE)."""
    return _single_chain("isir", target, R, gen, K, t, rao_blackwell)


def resolve_k_m(target: LatentTarget, gen: torch.Generator, kind: _Kind, p: CoupledParams) -> tuple[int, int, float]:
    """(k, m, pilot evaluations). A pilot (meeting times only) runs first when k is "auto"."""
    pilot_evals = 0.0
    k = p.k
    if k == "auto":
        run = run_coupled(target, p.pilot_replicates, gen, kind, K=p.K, k=0, m=0, lag=p.lag, rao_blackwell=True,
                          max_iter=p.max_iter, with_estimate=False)
        pilot_evals = run.lockstep_evals
        tau_rep = run.tau_point.max(1).values.double().cpu()
        k = math.ceil(float(torch.quantile(tau_rep, p.k_quantile)))
    if p.m is None:
        m = k if p.k != "auto" else p.m_factor * k
    elif p.m == "auto":
        m = p.m_factor * max(k, 1)
    else:
        m = p.m
    m = max(m, k)
    if m > p.max_iter:
        raise ValueError(f"m = {m} exceeds max_iter = {p.max_iter}")
    return int(k), int(m), pilot_evals


def _coupled(name: str, target: LatentTarget, R: int, gen: torch.Generator, p: CoupledParams,
             coupling: Coupling = "maximal") -> GradSample:
    kind = _kind(name, coupling)
    k, m, pilot_evals = resolve_k_m(target, gen, kind, p)
    run = run_coupled(target, R, gen, kind, K=p.K, k=k, m=m, lag=p.lag, rao_blackwell=p.rao_blackwell,
                      max_iter=p.max_iter)
    dtype = run.grads.dtype
    tau_pt = run.tau_point
    c = kind.evals_per_step(p.K)
    cost = (2 * p.K + c * torch.maximum(tau_pt, torch.full_like(tau_pt, float(m)))).sum(1)
    steps = (p.lag + 2 * (tau_pt - p.lag) + (m - tau_pt).clamp_min(0)).sum(1)
    censored = ~run.met.all(1)
    diagnostics = {
        "tau": tau_pt.max(1).values,
        "censored": censored,
        "lockstep_cost": torch.full((R,), run.lockstep_evals / R, dtype=dtype),
        "kernel_steps": steps,
        "k": torch.full((R,), float(k), dtype=dtype),
        "m": torch.full((R,), float(m), dtype=dtype),
        "pilot_cost": torch.full((R,), pilot_evals / R, dtype=dtype),
        **lockstep_diagnostics(cost, run.lagged),
    }
    return GradSample(run.grads, target.layout, cost, diagnostics)


def coupled_pimh(target: LatentTarget, R: int, gen: torch.Generator, **params: object) -> GradSample:
    """Unbiased H_{k:m} from coupled PIMH chains (seed Algorithm 4); see the module docstring."""
    return _coupled("pimh", target, R, gen, CoupledPIMHParams(**params))


def coupled_isir(target: LatentTarget, R: int, gen: torch.Generator, **params: object) -> GradSample:
    """Unbiased H_{k:m} from coupled i-SIR chains (shared fresh particles); see the module docstring."""
    p = CoupledISIRParams(**params)
    return _coupled("isir", target, R, gen, p, p.coupling)
