"""Training energy-based models: does a biased θ-estimator (CD, PCD) change the fitted model?

A ``train`` cell on an ``rbm`` or ``ising`` target is θ-only — ``phi: null`` (validate refuses a φ-estimator on an
EBM, and ``phi: null`` on a model that is not energy-based)::

    train:
      seeds: [0, 1, 2, 3, 4]
      settings: {budget: steps, budget_value: 300}
      arms:
        - {theta: {name: pcd, S: 32, k: 1}, phi: null}

It reuses the VAE loop's scheme (:mod:`gradbench.training.loop`): θ₀ (the model's ``initial_theta``), the
minibatches (:func:`~gradbench.training.loop.minibatch`) and the generator of step t all come from
    base = derive_seed(noise_seed(target), "train", train_seed),
independent of the estimator, so the estimators of a (target, train_seed) group share initialisation,
minibatch order and step seeds (common random numbers); Adam on −ĝ/B with :func:`~gradbench.training.loop.lr_at`.
Step t: ĝ = theta_estimator(target at θ on the minibatch, R = 1), an estimate of
    ∇θ Σ_{n∈batch} log p_θ(x_n) = −Σ_n ∇θ F(x_n) + B E_{p_θ}[∇θ F(x′)]          (docs/design.md §5.7).
``pcd`` is the real persistent CD (Tieleman 2008): its S chains (:class:`~gradbench.estimators.ebm.PCDState`)
start at training rows (seeded from base) and are carried across optimiser steps — k sweeps per step at the
current θ — and through checkpoints; its ``age`` parameter is a burn-in at θ₀. The other estimators are called
as registered. A step whose gradient is not finite (a censored coupled replicate) leaves θ unchanged.

Budget: optimiser steps, or ``evals`` = **Gibbs sweeps of one chain** (the θ-estimator's ``cost``; an exact
draw counts as one), or seconds; all three are recorded. Held-out log-likelihood is **exact**:
log p_θ(x) = −F_θ(x) − log Z_θ with log Z by enumeration (2^{n_h} hidden states / 2^n spin states), nats per
point, s.e. over the evaluated points; curves (every ``curve_every`` steps) are exact too, on all test and
``train_eval_n`` training points. Test data: the test split of the target's ``data:`` set, or, for data drawn
from the model, ``test_n`` (default 300) fresh exact draws from the generating θ.

Checkpoints: :func:`~gradbench.training.loop.write_checkpoint`, with the estimator's explicit state (the PCD
chains) in its φ slot — EBMs have no φ; a resumed run computes the same numbers as an uninterrupted one.

References: Hinton (2002), Neural Comput. 14 (CD); Tieleman (2008), ICML (PCD); Qiu, Zhang & Wang (2020), ICLR
(unbiased CD by coupled Gibbs chains); Hinton (2010), "A practical guide to training RBMs".
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor

from gradbench import registry
from gradbench.estimators import ebm as ebm_estimators
from gradbench.protocols import Row, row
from gradbench.seeding import derive_seed, make_generator
from gradbench.training.loop import CURVE_COLUMNS, held_out_data, lr_at, minibatch, write_checkpoint
from gradbench.training.params import TRAIN, TrainParams

DEFAULT_TEST_N = 300  # fresh exact draws when the target's data were drawn from the model


def is_ebm(target: Any) -> bool:
    """Whether a ``train`` cell on this target is θ-only EBM training (this module)."""
    return "energy_based" in getattr(target, "capabilities", ())


@torch.no_grad()
def exact_log_lik(model: Any, x: Tensor) -> tuple[float, float]:
    """(mean, s.e. over points) of log p_θ(x_n) = −F(x_n) − log Z, exact, float64."""
    v = model.double().log_prob(x.double())
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")


def held_out_ebm(cell: Any, target: Any, p: TrainParams) -> Tensor:
    """The target's test split, or ``test_n`` exact draws from the generating θ (data drawn from the model)."""
    if cell.target.data_spec is not None:
        return held_out_data(cell, target)
    gen = make_generator(derive_seed(cell.target.data_seed, "test"), cell.device)
    return target.double().sample_exact((p.test_n or DEFAULT_TEST_N,), gen).to(target.x.dtype)


class Trained(NamedTuple):
    theta: Tensor  # final flat θ
    rows: list[Row]
    curves: pd.DataFrame


def train_cell(cell: Any, target: Any, checkpoint: Path | None = None,
               test_x: Tensor | None = None) -> tuple[list[Row], pd.DataFrame]:
    """Train one θ-only EBM cell (resuming from ``checkpoint`` when it exists) → (protocol rows, curve rows)."""
    out = fit(cell, target, checkpoint, test_x)
    return out.rows, out.curves


def fit(cell: Any, target: Any, checkpoint: Path | None = None, test_x: Tensor | None = None) -> Trained:
    """The training loop of :func:`train_cell`; also returns the final θ."""
    p = TrainParams(**cell.estimator_params)
    if p.phi_estimator is not None:
        raise ValueError("an energy-based model has no encoder: set phi_estimator: null")
    est = registry.ESTIMATORS[p.theta_estimator]
    kw = est.params(**p.theta_params).model_dump()
    persistent = p.theta_estimator == "pcd"
    if test_x is None:
        test_x = held_out_ebm(cell, target, p)
    base = derive_seed(cell.target.noise_seed(0), TRAIN, p.train_seed)
    x, dtype, device = target.x, target.x.dtype, target.x.device
    theta = target.initial_theta(make_generator(derive_seed(base, "init"))).to(dtype=dtype, device=device).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=p.lr)
    step, evals, seconds, nonfinite, curves = 0, 0.0, 0.0, 0, []
    chains: ebm_estimators.PCDState | None = None
    if persistent:
        gen = make_generator(derive_seed(base, "pcd-init"), cell.device)
        at0 = target.with_theta(theta.detach())
        chains = ebm_estimators.pcd_advance(at0, ebm_estimators.pcd_init(at0, 1, kw["S"], gen), kw["age"], gen)
        evals = float(kw["S"] * kw["age"])
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        with torch.no_grad():
            theta.copy_(state["theta"]["theta"])
        opt.load_state_dict(state["adam"])
        step, evals, seconds, nonfinite, curves = (state[k] for k in ("step", "evals", "seconds", "nonfinite", "curves"))
        if persistent:
            chains = ebm_estimators.PCDState(state["phi"]["pcd_chains"].to(device), kw["age"] + kw["k"] * step)
    N, B = target.n_data, min(p.batch_size, target.n_data)
    eval_train_x = x[: p.train_eval_n]

    def spent() -> bool:
        used = {"steps": step, "evals": evals, "seconds": seconds}[p.budget]
        return used >= p.budget_value or step >= p.max_steps

    t_last = time.perf_counter()
    while not spent():
        batch = target.with_theta(theta.detach(), x[minibatch(base, step, N, B, device)])
        gen = make_generator(derive_seed(base, "step", step), cell.device)
        if persistent:
            assert chains is not None
            g, chains = ebm_estimators.pcd_step(batch, chains, gen, kw["k"])
        else:
            g = est.fn(batch, 1, gen, **kw)
        gt = g.grads[0]
        finite = bool(torch.isfinite(gt).all())
        lr = lr_at(p, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        theta.grad = (-gt / B).clone() if finite else None
        opt.step()
        nonfinite += not finite
        evals += float(g.cost[0])
        tau = float(g.diagnostics["tau"][0]) if "tau" in g.diagnostics else float("nan")
        now = time.perf_counter()
        seconds += now - t_last
        t_last = now
        rec: dict[str, Any] = {"step": step + 1, "evals": evals, "seconds": seconds, "lr": lr,
                               "grad_norm_theta": float(torch.linalg.vector_norm(gt)) / B, "tau": tau, "theta_finite": finite}
        step += 1
        if step % p.curve_every == 0:
            at = target.with_theta(theta.detach())
            (te, te_se), (tr, tr_se) = exact_log_lik(at, test_x), exact_log_lik(at, eval_train_x)
            rec.update(test_estimate=te, test_estimate_se=te_se, train_estimate=tr, train_estimate_se=tr_se)
            t_last = time.perf_counter()  # evaluation time is not training time
        curves.append(rec)
        if checkpoint is not None and step % p.checkpoint_every == 0 and not spent():
            write_checkpoint(checkpoint, {"theta": theta}, {} if chains is None else {"pcd_chains": chains.v}, opt,
                             step, evals, seconds, nonfinite, curves)
            t_last = time.perf_counter()
    final = target.with_theta(theta.detach())
    method = f"exact: log Z by enumeration ({_enumerated(final)})"
    taus = torch.tensor([c["tau"] for c in curves], dtype=torch.float64)
    rows = [row("model", "test_loglik", *exact_log_lik(final, test_x), method),
            row("model", "train_loglik", *exact_log_lik(final, eval_train_x), method),
            row("model", "steps", float(step), 0.0, p.budget),
            row("model", "evals", evals, 0.0, "Gibbs sweeps of one chain (θ-estimator cost; an exact draw counts 1)"),
            row("model", "seconds", seconds, 0.0, "training only (evaluations excluded)"),
            row("model", "seconds_per_step", seconds / max(step, 1), 0.0, "training only"),
            row("model", "nonfinite_steps", float(nonfinite), 0.0, "θ not updated")]
    if bool(torch.isfinite(taus).any()):
        ok = taus[torch.isfinite(taus)]
        rows.append(row("model", "train_tau_mean", float(ok.mean()),
                        float(ok.std() / math.sqrt(ok.numel())) if ok.numel() > 1 else float("nan"), "over training steps"))
    df = pd.DataFrame(curves)
    for col in CURVE_COLUMNS:
        if col not in df:
            df[col] = float("nan")
    return Trained(theta.detach(), rows, df[CURVE_COLUMNS])


def _enumerated(model: Any) -> str:
    n_h = getattr(model, "n_hidden", None)
    return f"2^{n_h} hidden states" if n_h is not None else f"2^{model.n_spins} spin states"
