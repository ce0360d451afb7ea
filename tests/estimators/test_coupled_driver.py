"""The lagged-coupling driver (estimators/coupling.py) shared by the latent-variable and energy-based estimators.

Tier 1 (exact, fixed seeds): the driver with the latent-variable kernels (unpacked) and with the Gibbs kernels is
bit-for-bit the dedicated lockstep drivers it replaced, written out below as references on the same generator;
negative control: the same comparison fails when the reference draws Y_0 before X_0 (a different noise order).
It synchronises with the host once per time step (every call that copies a tensor's value to Python is counted);
negative control: a kernel that adds one more sync per step is caught by the same count.
The lockstep batch's work and time (``full_batch_rate``, ``lockstep_diagnostics``) are exact arithmetic on constructed
runs, each check with a misreading that gives another value; a run records its times, τ in the gradient's dtype,
integer kernel costs as floats, and a pilot run leaves the accumulator at zero.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch

from gradbench.estimators import coupled as C
from gradbench.estimators import coupling as L
from gradbench.estimators import ebm as E
from gradbench.models.ebm import RBM, Ising, IsingParams, NoProposal, RBMParams
from gradbench.seeding import make_generator
from tests.conftest import make_ppca


# -- the former drivers, as references (their unpacked lockstep paths, operation for operation) --------------------
def _latent_reference(target, R, gen, kind, *, K, k, m, lag, rb, max_iter, swap=False):
    X, Y = C.init_state(target, R, K, gen), C.init_state(target, R, K, gen)
    if swap:
        X, Y = Y, X
    N = X.idx.shape[1]
    dtype = X.log_w.dtype
    acc = torch.zeros(R, target.layout.size, dtype=dtype)
    tau = torch.full((R, N), float(max_iter), dtype=dtype)
    met_all = torch.zeros(R, N, dtype=torch.bool)
    scale = 1.0 / (m - k + 1)

    def add(rows, parts):
        g = target.weighted_grad_log_joint(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
        acc.add_(g) if rows is None else acc.index_add_(0, rows, g)

    def contribute(t, X, Y, now, rows, shared):
        a = scale if k <= t <= m else 0.0
        v = 0.0
        if now is not None and t >= k + lag:
            v = (math.floor((t - k) / lag) - math.ceil(max(lag, t - m) / lag) + 1) * scale
        if a == 0.0 and v == 0.0:
            return
        hx = C.h_weights(X, rb)
        if v == 0.0 or not bool((~now).any()):
            if a != 0.0:
                add(rows, [(X.z, a * hx)])
            return
        cy = v * (~now).to(dtype)
        cx, cy = (a + cy).unsqueeze(1), cy.unsqueeze(1)
        hy = C.h_weights(Y, rb)
        if shared:
            add(rows, [(X.z[:, :1], cx * hx[:, :1]), (Y.z[:, :1], -cy * hy[:, :1]),
                       (X.z[:, 1:], cx * hx[:, 1:] - cy * hy[:, 1:])])
        else:
            add(rows, [(X.z, cx * hx), (Y.z, -cy * hy)])

    contribute(0, X, Y, None, None, False)
    for t in range(1, lag + 1):
        X = kind.step(target, X, gen)
        if t < lag:
            contribute(t, X, Y, None, None, False)
    met = C.states_equal(X, Y)
    tau = torch.where(met, torch.full_like(tau, float(lag)), tau)
    met_all |= met
    contribute(lag, X, Y, met, None, False)
    rows, t = None, lag
    while True:
        live_met = met_all if rows is None else met_all[rows]
        if t >= m:
            done = live_met.all(1)
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                rows = keep if rows is None else rows[keep]
                X, Y, live_met = C._take(X, keep), C._take(Y, keep), live_met[keep]
        if t >= max_iter:
            break
        t += 1
        X, Y = kind.coupled(target, X, Y, gen)
        now = C.states_equal(X, Y)
        newly = now & ~live_met
        if rows is None:
            tau = torch.where(newly, torch.full_like(tau, float(t)), tau)
            met_all = met_all | now
        else:
            tau[rows] = torch.where(newly, torch.full_like(tau[rows], float(t)), tau[rows])
            met_all[rows] = met_all[rows] | now
        contribute(t, X, Y, now, rows, kind.shared_tail)
    return acc.masked_fill((~met_all.all(1)).unsqueeze(1), math.nan), tau


def _gibbs_reference(target, R, S, gen, *, k, m, lag, max_iter, swap=False):
    X, Y = E._from_data(target, (R, S), gen), E._from_data(target, (R, S), gen)
    if swap:
        X, Y = Y, X
    dtype = X.dtype
    acc = torch.zeros(R, target.layout.size, dtype=dtype)
    tau = torch.full((R, S), float(max_iter), dtype=dtype)
    met_all = torch.zeros(R, S, dtype=torch.bool)
    scale = 1.0 / (m - k + 1)

    def contribute(t, X, Y, now, rows):
        a = scale if k <= t <= m else 0.0
        v = L.v_weight(t, k, m, lag) * scale if now is not None and t >= k + lag else 0.0
        if a == 0.0 and v == 0.0:
            return
        if v == 0.0 or bool(now.all()):
            if a == 0.0:  # (the former driver added an exact zero here)
                return
            g = target.weighted_grad_free_energy(X, torch.full(X.shape[:2], a, dtype=dtype))
        else:
            cy = v * (~now).to(dtype)
            g = target.weighted_grad_free_energy(X, a + cy) - target.weighted_grad_free_energy(Y, cy)
        acc.add_(g) if rows is None else acc.index_add_(0, rows, g)

    contribute(0, X, Y, None, None)
    for t in range(1, lag + 1):
        X = target.sweep(X, E._uniforms(target, (R, S), gen))
        if t < lag:
            contribute(t, X, Y, None, None)
    met = (X == Y).all(-1)
    tau = torch.where(met, torch.full_like(tau, float(lag)), tau)
    met_all |= met
    contribute(lag, X, Y, met, None)
    rows, t = None, lag
    while True:
        live_met = met_all if rows is None else met_all[rows]
        if t >= m:
            done = live_met.all(1)
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                rows = keep if rows is None else rows[keep]
                X, Y, live_met = X[keep], Y[keep], live_met[keep]
        if t >= max_iter:
            break
        t += 1
        X, Y = E._coupled_sweep(target, X, Y, gen, "maximal")
        now = (X == Y).all(-1)
        newly = now & ~live_met
        if rows is None:
            tau = torch.where(newly, torch.full_like(tau, float(t)), tau)
            met_all = met_all | now
        else:
            tau[rows] = torch.where(newly, torch.full_like(tau[rows], float(t)), tau[rows])
            met_all[rows] = met_all[rows] | now
        contribute(t, X, Y, now, rows)
    return acc.masked_fill((~met_all.all(1)).unsqueeze(1), math.nan), tau


def _bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (an integer view, so NaN rows of censored replicates compare too)."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int64), b.contiguous().view(torch.int64))


LATENT = [("isir", "maximal", {"k": 0, "m": 0, "lag": 1, "rb": True}), ("isir", "common_uniform", {"k": 2, "m": 6, "lag": 2, "rb": True}),
          ("isir", "independent", {"k": 1, "m": 3, "lag": 1, "rb": False}), ("pimh", "maximal", {"k": 1, "m": 5, "lag": 3, "rb": True}),
          ("isir", "maximal", {"k": 0, "m": 0, "lag": 1, "rb": True, "max_iter": 3})]


@pytest.mark.parametrize("kind,coupling,cfg", LATENT)
def test_latent_driver_is_bitwise_the_former_one(kind, coupling, cfg):
    t = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    kd = C._kind(kind, coupling)
    cfg = {"max_iter": 1000, **cfg}
    kw = {"K": 4, "k": cfg["k"], "m": cfg["m"], "lag": cfg["lag"], "max_iter": cfg["max_iter"]}
    run = C.run_coupled(t, 40, make_generator(0), kd, rao_blackwell=cfg["rb"], **kw)
    ref, tau = _latent_reference(t, 40, make_generator(0), kd, rb=cfg["rb"], **kw)
    assert _bits(run.grads, ref) and torch.equal(run.tau_point, tau)
    swapped, _ = _latent_reference(t, 40, make_generator(0), kd, rb=cfg["rb"], swap=True, **kw)
    assert not _bits(run.grads, swapped)  # negative control: another noise order, other bits


@pytest.mark.parametrize("make", [lambda: RBM.build(RBMParams(n_visible=6, n_hidden=3, n_data=5, weight_scale=2.0),
                                                    NoProposal(), 0, torch.float64),
                                  lambda: Ising.build(IsingParams(n_spins=6, n_data=5, weight_scale=1.5), NoProposal(), 0,
                                                      torch.float64)], ids=["rbm", "ising"])
@pytest.mark.parametrize("cfg", [{"S": 1, "k": 0, "m": 0, "lag": 1}, {"S": 3, "k": 3, "m": 7, "lag": 2}, {"S": 2, "k": 1, "m": 1, "lag": 3},
                                 {"S": 2, "k": 0, "m": 0, "lag": 1, "max_iter": 2}])
def test_gibbs_driver_is_bitwise_the_former_one(make, cfg):
    t = make()
    kw = {"max_iter": 1000, **cfg}
    S = kw.pop("S")
    run = E.run_coupled_gibbs(t, 40, S, make_generator(0), **kw)
    ref, tau = _gibbs_reference(t, 40, S, make_generator(0), **kw)
    assert _bits(run.model_sum, ref) and torch.equal(run.tau, tau)
    swapped, _ = _gibbs_reference(t, 40, S, make_generator(0), swap=True, **kw)
    assert not _bits(run.model_sum, swapped)


# -- one host sync per time step -------------------------------------------------------------------------------------
SYNCS = ("cpu", "item", "tolist", "__bool__", "__int__", "__float__", "nonzero")


def _count_syncs(monkeypatch, kernel: L.LaggedKernel, run) -> tuple[int, int]:
    """(host syncs, time steps with a meeting check) of ``run(kernel)``; a sync is any of SYNCS on a tensor. A first,
    uncounted run builds what targets build lazily on first use (e.g. a Laplace proposal)."""
    run(kernel)
    count = {"sync": 0, "steps": 0}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            count["sync"] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def meets(x, y):
        count["steps"] += 1
        return kernel.meets(x, y)

    run(dataclasses.replace(kernel, meets=meets))
    monkeypatch.undo()
    return count["sync"], count["steps"]


def _vae():
    from gradbench import registry

    entry = registry.MODELS["vae"]
    return entry.build(entry.params(latent_dim=2, data_dim=6, n_data=3, hidden=[8]), entry.proposal(mean_shift=0.5), 3,
                       torch.float64, "cpu", None)


def _kernels():
    ppca = make_ppca(d=4, k=2, n=3, mean_shift=1.0, cov_scale=2.0)
    rbm = RBM.build(RBMParams(n_visible=6, n_hidden=3, n_data=5, weight_scale=2.0), NoProposal(), 0, torch.float64)
    return {
        "isir-ppca": C.lagged_kernel(ppca, C._kind("isir"), 30, K=4, rao_blackwell=True),
        "pimh-vae-packed": C.lagged_kernel(_vae(), C._kind("pimh"), 30, K=4, rao_blackwell=True),
        "isir-vae-packed": C.lagged_kernel(_vae(), C._kind("isir"), 30, K=4, rao_blackwell=True),
        "gibbs-rbm": E.gibbs_kernel(rbm, 2),
    }


@pytest.mark.parametrize("name", ["isir-ppca", "pimh-vae-packed", "isir-vae-packed", "gibbs-rbm"])
def test_one_host_sync_per_step(monkeypatch, name):
    kernel = _kernels()[name]
    run = lambda kern: L.run_lagged(kern, 30, make_generator(0), k=1, m=4, lag=2, max_iter=1000)
    syncs, steps = _count_syncs(monkeypatch, kernel, run)
    assert steps > 5 and syncs == steps

    def chatty(x, y, a, cy, aux, _grad=kernel.grad):  # negative control: one more sync per step
        if cy is not None:
            bool(cy.any())
        return _grad(x, y, a, cy, aux)

    syncs, steps = _count_syncs(monkeypatch, dataclasses.replace(kernel, grad=chatty), run)
    assert syncs > steps


# -- the lockstep batch's work and time (full_batch_rate, lockstep_diagnostics) ---------------------------------------
def _run(evaluated, seconds, step_seconds, step_evaluated, R=None):
    """A constructed LaggedRun: only its work and timing fields matter here."""
    R = len(evaluated) if R is None else R
    return L.LaggedRun(torch.zeros(R, 2), torch.zeros(R, 1), torch.ones(R, 1, dtype=torch.bool),
                       np.asarray(evaluated, float), seconds, np.asarray(step_seconds, float),
                       np.asarray(step_evaluated, float))


def test_full_batch_rate_is_the_fastest_wide_step():
    """Steps evaluating e = 100, 80, 50, 40, 10 units in s = 1.0, 1.2, 0.45, 0.2, 0.01 s: the wide ones are those with
    e ≥ e_0/2 = 50 (50 included, 40 not), so β = min(0.01, 0.015, 0.009) = 0.009 s per unit. Negative controls, each
    a plausible misreading with a different value: e > e_0/2 gives 0.01, e ≥ e_0/3 gives 0.005, all steps 0.001."""
    e, s = [100.0, 80.0, 50.0, 40.0, 10.0], [1.0, 1.2, 0.45, 0.2, 0.01]
    beta = L.full_batch_rate(_run([1.0], 1.0, s, e))
    assert beta == pytest.approx(0.009, rel=1e-12)
    rate = np.asarray(s) / np.asarray(e)
    for other in (rate[:2].min(), rate[:4].min(), rate.min()):
        assert other != pytest.approx(beta, rel=1e-3)
    # one coupled step (a single sweep or evaluation of one unit still counts); none, or a first step without work: NaN
    assert L.full_batch_rate(_run([1.0], 1.0, [0.5], [1.0])) == 0.5
    assert L.full_batch_rate(_run([1.0], 1.0, [0.5, 0.2], [4.0, 1.0])) == 0.125
    assert math.isnan(L.full_batch_rate(_run([1.0], 1.0, [], [])))
    assert math.isnan(L.full_batch_rate(_run([1.0], 1.0, [0.1, 0.1], [0.0, 10.0])))


def test_lockstep_diagnostics_of_a_constructed_run():
    """R = 4 replicates, e_r = 80, 60, 40, 20 units computed, c_r = 60, 50, 30, 10 needed, a 3.5 s call with β = 0.01
    s per unit (wide steps 1.0 s / 100, 1.2 s / 80; narrow ones 0.5 s / 10): efficiency Σc/Σe = 150/200, seconds
    3.5/4 per row, seconds lost (3.5 − 0.01·150)/4 = 0.5 per row; e_r in the cost's dtype (float32 here).
    Negative control: a call whose replicates needed all the batch did (c = e) has efficiency exactly 1."""
    run = _run([80.0, 60.0, 40.0, 20.0], 3.5, [1.0, 1.2, 0.5, 0.5], [100.0, 80.0, 10.0, 10.0])
    cost = torch.tensor([60.0, 50.0, 30.0, 10.0], dtype=torch.float32)
    d = L.lockstep_diagnostics(cost, run)
    assert set(d) == {"lockstep_evaluated", "lockstep_efficiency", "lockstep_seconds", "lockstep_seconds_lost"}
    assert all(v.dtype == torch.float32 and v.shape == (4,) for v in d.values())
    assert torch.equal(d["lockstep_evaluated"], torch.tensor([80.0, 60.0, 40.0, 20.0]))
    assert torch.allclose(d["lockstep_efficiency"], torch.full((4,), 0.75), rtol=1e-6)
    assert torch.allclose(d["lockstep_seconds"], torch.full((4,), 3.5 / 4), rtol=1e-6)
    assert torch.allclose(d["lockstep_seconds_lost"], torch.full((4,), 0.5), rtol=1e-5)
    full = L.lockstep_diagnostics(torch.tensor(run.evaluated), run)
    assert torch.equal(full["lockstep_efficiency"], torch.ones(4, dtype=torch.float64))


def test_lockstep_diagnostics_edge_cases():
    """Work below one unit in all is still a ratio (Σe = 1: efficiency Σc = 0.5); no work at all: efficiency NaN; no
    coupled step (β NaN): no seconds lost, not NaN; a call faster than β·Σc (the needed work ran at a better rate
    than the wide steps): seconds lost clamp at 0. Negative control: the same call with 10× the time loses time."""
    d = L.lockstep_diagnostics(torch.tensor([0.25, 0.25], dtype=torch.float64), _run([0.5, 0.5], 1.0, [1.0], [1.0]))
    assert float(d["lockstep_efficiency"][0]) == 0.5
    d = L.lockstep_diagnostics(torch.zeros(2, dtype=torch.float64), _run([0.0, 0.0], 1.0, [], []))
    assert bool(d["lockstep_efficiency"].isnan().all())
    assert torch.equal(d["lockstep_seconds_lost"], torch.zeros(2, dtype=torch.float64))
    cost = torch.tensor([60.0, 40.0], dtype=torch.float64)
    fast = L.lockstep_diagnostics(cost, _run([60.0, 40.0], 0.5, [1.0], [100.0]))  # β·Σc = 1.0 s > 0.5 s
    assert torch.equal(fast["lockstep_seconds_lost"], torch.zeros(2, dtype=torch.float64))
    slow = L.lockstep_diagnostics(cost, _run([60.0, 40.0], 5.0, [1.0], [100.0]))  # (5 − 1)/2 per row
    assert torch.allclose(slow["lockstep_seconds_lost"], torch.full((2,), 2.0, dtype=torch.float64), rtol=1e-12)


def test_integer_costs_are_counted_as_floats():
    """A kernel may report its costs as Python ints (0 sweeps to start, S sweeps a step): the run's work is the same
    float64 count as with float costs, bit for bit. Negative control: a kernel reporting one more sweep a step is
    charged more."""
    rbm = RBM.build(RBMParams(n_visible=6, n_hidden=3, n_data=5, weight_scale=2.0), NoProposal(), 0, torch.float64)
    kernel = E.gibbs_kernel(rbm, 2)
    run = lambda kern: L.run_lagged(kern, 20, make_generator(0), k=1, m=3, lag=2, max_iter=1000)
    floats = run(kernel)
    ints = run(dataclasses.replace(kernel, init_cost=lambda X: 0, step_cost=lambda X: 2))
    assert ints.evaluated.dtype == np.float64 and np.array_equal(ints.evaluated, floats.evaluated)
    more = run(dataclasses.replace(kernel, init_cost=lambda X: 0, step_cost=lambda X: 3))
    assert (more.evaluated > floats.evaluated).all()


def test_run_records_its_times_and_dtypes():
    """The run's wall time lies within the caller's, and each coupled step's (sync to sync) is non-negative with a sum
    within it; τ comes in the gradient's dtype (float32 here); a pilot run (``with_estimate=False``) leaves the
    gradient accumulator untouched — zeros, also in censored rows — while the estimating run marks those rows NaN
    (negative control: max_iter = 2 censors some replicates)."""
    rbm = RBM.build(RBMParams(n_visible=6, n_hidden=3, n_data=5, weight_scale=2.0), NoProposal(), 0, torch.float32)
    kernel = E.gibbs_kernel(rbm, 2)
    start = time.perf_counter()
    run = L.run_lagged(kernel, 20, make_generator(0), k=1, m=3, lag=1, max_iter=1000)
    wall = time.perf_counter() - start
    assert 0.0 < run.seconds <= wall
    assert run.step_seconds.size == run.step_evaluated.size > 0
    assert (run.step_seconds >= 0).all() and run.step_seconds.sum() <= run.seconds
    assert run.grads.dtype == run.tau.dtype == torch.float32
    short = {"k": 0, "m": 0, "lag": 1, "max_iter": 2}
    estimate = L.run_lagged(kernel, 20, make_generator(0), **short)
    pilot = L.run_lagged(kernel, 20, make_generator(0), with_estimate=False, **short)
    censored = ~pilot.met.all(1)
    assert bool(censored.any()) and torch.equal(pilot.met, estimate.met)
    assert bool(estimate.grads[censored].isnan().all()) and bool((pilot.grads == 0).all())
