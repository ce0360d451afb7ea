"""The lagged-coupling driver (estimators/coupling.py) shared by the latent-variable and energy-based estimators.

Tier 1 (exact, fixed seeds): the driver with the latent-variable kernels (unpacked) and with the Gibbs kernels is
bit-for-bit the dedicated lockstep drivers it replaced, written out below as references on the same generator;
negative control: the same comparison fails when the reference draws Y_0 before X_0 (a different noise order).
It synchronises with the host once per time step (every call that copies a tensor's value to Python is counted);
negative control: a kernel that adds one more sync per step is caught by the same count.
"""

from __future__ import annotations

import dataclasses
import math

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
