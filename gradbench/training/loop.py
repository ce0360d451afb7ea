"""The training loop: does an estimator's bias or variance change the model you end up with?

A ``train`` cell is (target, θ-estimator, φ-estimator, training seed). A suite writes a study as a ``train:`` block
(arms × seeds × settings; :class:`gradbench.run.plan.TrainBlock`)::

    train:
      seeds: [0, 1, 2, 3, 4]
      settings: {budget: steps, budget_value: 2000, lr: 0.001, batch_size: 32}
      arms:
        - {theta: {name: iwae, K: 8}, phi: {name: iwae_reparam, K: 8}}
        - {theta: {name: coupled_isir, K: 8}, phi: {name: iwae_reparam, K: 8}, warmup: {name: iwae, K: 8, steps: 500}}

which expands to one ``train`` cell per target × arm × seed (the cell kind of :mod:`gradbench.training.cell`; its
parameters are :class:`gradbench.training.params.TrainParams`).

The target supplies the model p_θ(x, z) (``vae``, ``sbn``), the training data x (its ``data:``) and the architecture;
θ is re-initialised (``model.init_params``) and φ is a fresh amortised encoder of the model's latent space
(:func:`fresh_encoder`): real z → ``gaussian_encoder`` (tanh MLP ``encoder_hidden``; ``GaussianEncoder.init_params``),
binary z → ``bernoulli_encoder`` (linear, or one tanh layer ``encoder_hidden = [h]``; trained with a score-function
φ-estimator such as vimco, rloo or disarm); the target's own ``proposal`` is not used. Both from the seed
    base = derive_seed(noise_seed(target), "train", train_seed),
which does not depend on the estimators: every estimator pair of a (target, train_seed) group starts from the
same (θ₀, φ₀), sees the same minibatches (epoch e is ``randperm(N)`` from derive_seed(base, "epoch", e), cut
into ⌊N/B⌋ batches of B) and the same generator seed at step t (derive_seed(base, "step", t); the θ-estimator
draws first, then the φ-estimator) — common random numbers.

Data ``binarize: dynamic``: the target keeps grey levels and step t's minibatch is a fresh draw x ~ Bernoulli(grey)
from derive_seed(base, "binarize", t) (Burda et al. 2016's dynamic binarisation; the same draw for every arm); the
held-out and train-evaluation rows are one fixed draw from the data spec's seed.

Step t: the minibatch target ``target.at(θ, φ, x_batch)``; ĝ_θ = theta_estimator(target_b, R=1) and
ĝ_φ = phi_estimator(target_b, R=1) (estimates of ∇ Σ_{n∈batch} of log p(x_n), the ELBO or IWAE_K); Adam
(Kingma & Ba 2015, β = (0.9, 0.999), ε = 1e-8) descends −ĝ/B with learning rate
    lr_t = lr                                                  (constant), or
    lr_t = lr (f + (1 − f)(1 + cos(π u)) / 2)                  (cosine; u = t / budget_value for a steps budget,
                                                                  spent / budget_value with lr_horizon: budget,
                                                                  else t / max_steps; f = lr_final_factor).
With a warm-up (``warmup_theta_estimator``), the warm-up estimator gives ĝ_θ until ``warmup_value`` steps or
log-joint evaluations are spent, then the θ-estimator (e.g. IWAE → coupled i-SIR). A step whose θ-gradient is not
finite leaves θ unchanged and is counted (``nonfinite_steps``); a coupled step whose chains had not met by
``max_iter`` is such a step and is also counted as ``censored_steps`` (and marked in the curves).
Training stops when the budget — optimiser steps, log-joint evaluations (Σ of both estimators' ``cost``),
or seconds — is spent; all three are recorded.

Held-out evaluation (final rows, nats per data point; s.e. over the evaluated points):
* binary z (k ≤ 16): log p_θ(x_n) = logsumexp over the 2ᵏ states, exact (``references.enumeration``);
* real z, latent_dim ≤ 2: log p_θ(x_n) by adaptive Gauss–Hermite quadrature at each point's Laplace approximation
  (``references.quadrature``), with the 2n-node rule and the doubling error max_n |ℓ_2n − ℓ_n| as a bound;
* otherwise the IWAE_K bound with K = ``eval_K`` under the trained encoder, log (1/K) Σ_k w_k, whose expectation is
  ≤ log p(x) (Burda et al. 2016): rows ``test_iwae_bound``/``train_iwae_bound``, never ``*_loglik``; with
  ``eval_K_check`` the bound at a smaller K and the paired gain (convergence in K), and with ``eval_refit_steps``
  the bound under an encoder refitted to the test points with θ frozen (:func:`evaluation_checks`).
Rows: ``test_loglik`` or ``test_iwae_bound``, the same on the first ``train_eval_n`` training points, ``steps``,
``evals``, ``seconds``, ``seconds_per_step``, ``nonfinite_steps``, ``eval_seconds`` and, for coupled θ-estimators,
``censored_steps``, ``train_tau_mean`` (s.e. over steps) and ``train_tau_max``. The s.e. over training seeds and the
paired test between estimators that share seeds are :func:`summarize` and :func:`paired_test` over the collected table.

Curves (``curves.parquet``): one row per step (step, evals, seconds, lr, gradient norms, τ of the coupled
estimator) and, every ``curve_every`` steps, IWAE_{curve_K} estimates on ``curve_n`` test and train points.

Crash safety: every ``checkpoint_every`` steps the state (θ, φ, Adam's state, counters, curve rows) is written
atomically to ``<out>/checkpoints/<cell_id>.pt``; a restarted cell resumes from it. The generators are derived
from (base, step), not carried, so a resumed run computes the same numbers as an uninterrupted one (seconds apart).
The runner deletes the checkpoint when the cell finishes. Snapshots are kept: with ``snapshot_steps: [0, 200, 800]``
(θ, φ) at those steps (0: before any update) go to ``<out>/snapshots/<cell_id>/step-<t>.pt`` with the step, the
evaluations spent, the cell id and the training target's spec (:mod:`gradbench.training.snapshots`); a suite's target
``{model: vae, params: {checkpoint: RUN_DIR, step: [0, 200, 800]}}`` measures estimators at those parameters.

References: Burda, Grosse & Salakhutdinov (2016), ICLR (IWAE training and its K = 5000 evaluation);
Kingma & Welling (2014), ICLR; Jacob, O'Leary & Atchadé (2020), JRSS B (coupled unbiased estimators).
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from gradbench import data as datasets
from gradbench import registry
from gradbench.contracts import Params
from gradbench.families.bernoulli import BernoulliEncoder
from gradbench.families.gaussian import GaussianEncoder
from gradbench.protocols import Row, row
from gradbench.references import enumeration
from gradbench.references.quadrature import DEFAULT_NODES, NODE_BUDGET, gauss_hermite, laplace
from gradbench.seeding import derive_seed, make_generator
from gradbench.target import ComposedTarget
from gradbench.training.params import TRAIN, TrainParams

LOG_2PI = math.log(2 * math.pi)
QUADRATURE_MAX_DIM = 2
LAPLACE_RETRY_ITER = 1000  # Newton iterations of the held-out Laplace centring when 40 did not reach every mode
ELEMENT_BUDGET = 1 << 24  # particles × points × data dimension per IWAE evaluation chunk (≈ 134 MB of float64 logits)
CURVE_COLUMNS = ["step", "evals", "seconds", "lr", "grad_norm_theta", "grad_norm_phi", "tau", "theta_finite", "censored",
                 "warmup", "test_estimate", "test_estimate_se", "train_estimate", "train_estimate_se"]


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def quadrature_log_px(model: Any, theta: Params, x: Tensor, nodes: int | None = None) -> tuple[Tensor, Tensor, int]:
    """(log p_θ(x_n) [N] by the 2n-node adaptive Gauss–Hermite rule, |ℓ_2n − ℓ_n| [N], n), float64.

    With the Laplace mode m_n and Cholesky factor L_n, z = m_n + L_n u and
    log p(x_n) ≈ logsumexp_i [log ω_i − log N(u_i; 0, I) + log |L_n| + log p_θ(x_n, z_i)].
    """
    theta = {k: v.detach().to(device="cpu", dtype=torch.float64) for k, v in theta.items()}
    x = x.detach().to(device="cpu", dtype=torch.float64)
    k = model.latent.dim
    n = nodes or DEFAULT_NODES[k]
    try:  # centres the rule; its accuracy is the doubling error
        lap = laplace(model, theta, x, max_iter=40, tol=1e-7)
    except ValueError:  # some point's Newton iterations had not reached its mode (indefinite Hessian): go on longer
        lap = laplace(model, theta, x, max_iter=LAPLACE_RETRY_ITER, tol=1e-7)
    log_det = torch.log(torch.diagonal(lap.chol, dim1=-2, dim2=-1)).sum(-1)

    def rule(m: int) -> Tensor:
        u, log_omega = gauss_hermite(m, k)
        log_ratio_u = log_omega + 0.5 * (u * u).sum(-1) + 0.5 * k * LOG_2PI
        chunk = max(1, NODE_BUDGET // u.shape[0])
        out = []
        for s in range(0, x.shape[0], chunk):
            sl = slice(s, min(x.shape[0], s + chunk))
            z = lap.mode[sl] + torch.einsum("nkj,mj->mnk", lap.chol[sl], u)
            out.append(torch.logsumexp(log_ratio_u.unsqueeze(-1) + log_det[sl] + model.log_joint(theta, x[sl], z), dim=0))
        return torch.cat(out)

    coarse, fine = rule(n), rule(2 * n)
    return fine, (fine - coarse).abs(), n


@torch.no_grad()
def iwae_log_px(target: ComposedTarget, K: int, gen: torch.Generator, chunk: int | None = None) -> Tensor:
    """log (1/K) Σ_k p(x_n, z_k)/q_φ(z_k|x_n), z_k ~ q_φ(·|x_n), per point [N] (K particles drawn in chunks of
    ``chunk``, default min(NODE_BUDGET / N, ELEMENT_BUDGET / (N d)) — the decoder's output is [chunk, N, d] —
    accumulated by logaddexp). Its expectation is the IWAE_K bound, ≤ log p(x_n) (Burda et al. 2016, Thm 1)."""
    chunk = chunk or max(1, min(NODE_BUDGET // target.n_data, ELEMENT_BUDGET // (target.n_data * target.x.shape[-1])))
    acc = None
    for s in range(0, K, chunk):
        z, log_q = target.sample_proposal((min(chunk, K - s),), gen)
        part = torch.logsumexp(target.log_joint(z) - log_q, dim=0)
        acc = part if acc is None else torch.logaddexp(acc, part)
    assert acc is not None
    return acc - math.log(K)


@torch.no_grad()
def enumerated_log_px(model: Any, theta: Params, x: Tensor) -> Tensor:
    """log p_θ(x_n) = logsumexp_z log p_θ(x_n, z) over the 2ᵏ binary states, per point [N], float64 (exact)."""
    theta = {k: v.detach().to(device="cpu", dtype=torch.float64) for k, v in theta.items()}
    x = x.detach().to(device="cpu", dtype=torch.float64)
    return torch.logsumexp(enumeration.log_joint_table(model, theta, x), dim=0)


def exact_evaluation(target: ComposedTarget) -> bool:
    """Whether held-out log p_θ(x) is computed (enumeration, quadrature) rather than bounded (IWAE_K)."""
    kind, k = target.model.latent.kind, target.latent_dim
    return (kind == "binary" and k <= enumeration.MAX_ENUMERATED_LATENTS) or (kind == "real" and k <= QUADRATURE_MAX_DIM)


def iwae_bound_method(K: int, encoder: str = "the trained encoder") -> str:
    return f"IWAE-{K} lower bound (≤ log p(x); E over z ~ q_φ, {encoder})"


def held_out(target: ComposedTarget, x: Tensor, K: int, gen: torch.Generator,
             nodes: int | None = None, batch: int | None = None) -> tuple[Tensor, str, float]:
    """(per-point log p(x_n) values [N], method, quadrature error bound or NaN): exact by enumeration for binary
    latents, by quadrature for ≤ 2 real ones (:func:`exact_evaluation`), else the IWAE_K estimate — a stochastic
    lower bound under the target's encoder, reported as ``*_iwae_bound`` (``batch`` points at a time)."""
    if target.model.latent.kind == "binary" and target.latent_dim <= enumeration.MAX_ENUMERATED_LATENTS:
        return enumerated_log_px(target.model, target.theta, x), f"exact (enumeration of 2^{target.latent_dim} states)", float("nan")
    if target.model.latent.kind == "real" and target.latent_dim <= QUADRATURE_MAX_DIM:
        values, err, n = quadrature_log_px(target.model, target.theta, x, nodes)
        return values, f"quadrature (adaptive Gauss-Hermite, {2 * n}^{target.latent_dim} nodes)", float(err.max())
    step = batch or x.shape[0]
    values = torch.cat([iwae_log_px(target.at(x=x[s: s + step]), K, gen) for s in range(0, x.shape[0], step)])
    return values, iwae_bound_method(K), float("nan")


def held_out_metric(exact: bool, split: str = "test") -> str:
    """``test_loglik`` when log p(x) is computed exactly, ``test_iwae_bound`` when it is an IWAE_K lower bound."""
    return f"{split}_loglik" if exact else f"{split}_iwae_bound"


def _mean_se(v: Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")


# -- the training loop ----------------------------------------------------------------------------
def lr_at(p: TrainParams, step: int, used: float | None = None) -> float:
    """The learning rate of step ``step``: constant, or cosine over the fraction u of the horizon spent,
    lr (f + (1 − f)(1 + cos πu)/2) with u = step / budget_value (steps budget), used / budget_value (``lr_horizon:
    budget`` with an evals or seconds budget; ``used`` is what was spent before the step), else step / max_steps."""
    if p.lr_schedule == "constant":
        return p.lr
    if p.budget == "steps":
        u = step / p.budget_value
    elif p.lr_horizon == "budget":
        u = (used or 0.0) / p.budget_value
    else:
        u = step / p.max_steps
    f = p.lr_final_factor
    return p.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(u, 1.0))))


def minibatch(base: int, step: int, N: int, B: int, device: Any) -> Tensor:
    """Indices of step ``step``'s minibatch: epoch e = randperm(N) from (base, e), cut into ⌊N/B⌋ batches."""
    per_epoch = max(N // B, 1)
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(N, generator=make_generator(derive_seed(base, "epoch", epoch)))
    return perm[j * B: (j + 1) * B].to(device)


def fresh_encoder(model: Any, data_dim: int, p: TrainParams) -> GaussianEncoder | BernoulliEncoder:
    """The amortised family trained for ``model``'s latent space: Gaussian for real z, Bernoulli for binary z."""
    kind, k = model.latent.kind, model.latent.dim
    if kind == "real":
        return GaussianEncoder(k, data_dim, tuple(p.encoder_hidden))
    if kind == "binary":
        if len(p.encoder_hidden) > 1:
            raise ValueError(f"train: a Bernoulli encoder has at most one hidden layer, got encoder_hidden = {p.encoder_hidden}")
        return BernoulliEncoder(k, data_dim, p.encoder_hidden[0] if p.encoder_hidden else None)
    raise ValueError(f"train: no amortised encoder for a {kind!r} latent space (models with real or binary z)")


def initial_state(target: ComposedTarget, p: TrainParams, base: int) -> ComposedTarget:
    """The full-data training target at (θ₀, φ₀) from ``base``: the target's model, a fresh encoder."""
    gen = make_generator(derive_seed(base, "init"))
    model, x = target.model, target.x
    family = fresh_encoder(model, x.shape[1], p)
    theta = {k: v.to(dtype=x.dtype, device=x.device) for k, v in model.init_params(gen, torch.float64).items()}
    phi = family.init_params(x, gen, x.dtype)
    return ComposedTarget(model, family, x, theta, phi, seed=target.seed)


def dynamic_binarisation(cell: Any) -> bool:
    """Whether the cell's data are re-binarised for every minibatch (``data: {binarize: dynamic}``)."""
    spec = cell.target.data_spec
    return spec is not None and spec.get("binarize") == "dynamic"


def train_cell(cell: Any, target: ComposedTarget, checkpoint: Path | None = None,
               test_x: Tensor | None = None, snapshots: Path | None = None) -> tuple[list[Row], pd.DataFrame]:
    """Train one cell (resuming from ``checkpoint`` when it exists) → (protocol rows, curve rows).

    With ``snapshot_steps`` and a ``snapshots`` folder, (θ, φ) at each listed step are kept in
    ``<snapshots>/step-<t>.pt`` (:func:`gradbench.training.snapshots.write_snapshot`; written before the checkpoint of the same
    step, so a resumed cell has every earlier snapshot and writes the later ones identically).

    With ``binarize: dynamic`` the target's rows are grey levels (``gradbench.training.cell.target_of``) and step t's
    minibatch is binarised by a fresh Bernoulli draw from derive_seed(base, "binarize", t)."""
    p = TrainParams(**cell.estimator_params)
    theta_est, phi_est = registry.ESTIMATORS[p.theta_estimator], registry.ESTIMATORS[p.phi_estimator]
    theta_kw = theta_est.params(**p.theta_params).model_dump()
    phi_kw = phi_est.params(**p.phi_params).model_dump()
    warm_est = registry.ESTIMATORS[p.warmup_theta_estimator] if p.warmup_theta_estimator else None
    warm_kw = warm_est.params(**p.warmup_theta_params).model_dump() if warm_est else {}
    dynamic = dynamic_binarisation(cell)
    if dynamic and bool(((target.x == 0) | (target.x == 1)).all()):
        raise ValueError("train: binarize: dynamic needs the grey-level rows (gradbench.training.cell.target_of the cell), "
                         "but the target's rows are already binary")
    t_eval = time.perf_counter()
    if test_x is None:
        test_x = held_out_data(cell, target)
    base = derive_seed(cell.target.noise_seed(0), TRAIN, p.train_seed)
    full = initial_state(target, p, base)
    theta = {k: v.clone().requires_grad_(True) for k, v in full.theta.items()}
    phi = {k: v.clone().requires_grad_(True) for k, v in full.phi.items()}
    opt = torch.optim.Adam([*theta.values(), *phi.values()], lr=p.lr)
    step, evals, seconds, nonfinite, censored, curves = 0, 0.0, 0.0, 0, 0, []
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        with torch.no_grad():
            for part, params in (("theta", theta), ("phi", phi)):
                for name, v in params.items():
                    v.copy_(state[part][name])
        opt.load_state_dict(state["adam"])
        step, evals, seconds, nonfinite, curves = (state[k] for k in ("step", "evals", "seconds", "nonfinite", "curves"))
        censored = state.get("censored", 0)
    N, B = full.n_data, min(p.batch_size, full.n_data)
    eval_train_x = training_eval_rows(cell, full, p)
    eval_seconds = time.perf_counter() - t_eval  # held-out data; the final and curve evaluations are added below

    def spent() -> bool:
        used = {"steps": step, "evals": evals, "seconds": seconds}[p.budget]
        return used >= p.budget_value or step >= p.max_steps

    def warming_up() -> bool:
        return warm_est is not None and {"steps": step, "evals": evals}[p.warmup_budget] < p.warmup_value

    def curve_point(th: Params, ph: Params) -> dict[str, float]:
        gen = make_generator(derive_seed(base, "curve", step))
        at = full.at(theta={k: v.detach() for k, v in th.items()}, phi={k: v.detach() for k, v in ph.items()})
        te = _mean_se(iwae_log_px(at.at(x=test_x[: p.curve_n]), p.curve_K, gen))
        tr = _mean_se(iwae_log_px(at.at(x=eval_train_x[: p.curve_n]), p.curve_K, gen))
        return {"test_estimate": te[0], "test_estimate_se": te[1], "train_estimate": tr[0], "train_estimate_se": tr[1]}

    keep = set(p.snapshot_steps) if snapshots is not None else set()

    def snapshot() -> None:
        if step in keep:
            from gradbench.training import snapshots as snap

            snap.write_snapshot(snap.step_file(snapshots, step), theta=theta, phi=phi, step=step, evals=evals,
                                cell=cell, family=full.family)

    snapshot()  # step 0 (the initial state); a resumed cell is past it
    t_last = time.perf_counter()
    while not spent():
        idx = minibatch(base, step, N, B, full.x.device)
        x_b = full.x[idx]
        if dynamic:
            x_b = datasets.dynamic_draw(x_b, make_generator(derive_seed(base, "binarize", step), x_b.device))
        batch = full.at(theta={k: v.detach() for k, v in theta.items()}, phi={k: v.detach() for k, v in phi.items()},
                        x=x_b)
        gen = make_generator(derive_seed(base, "step", step), cell.device)
        warm = warming_up()
        est, kw = (warm_est, warm_kw) if warm else (theta_est, theta_kw)
        assert est is not None
        g_theta = est.fn(batch, 1, gen, **kw)
        g_phi = phi_est.fn(batch, 1, gen, **phi_kw)
        gt, gp = g_theta.grads[0], g_phi.grads[0]
        finite = bool(torch.isfinite(gt).all())
        was_censored = bool(g_theta.diagnostics["censored"][0]) if "censored" in g_theta.diagnostics else False
        lr = lr_at(p, step, {"steps": step, "evals": evals, "seconds": seconds}[p.budget])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for name, g in full.layout.unflatten(-gt / B).items():
            theta[name].grad = g.clone() if finite else None
        for name, g in full.phi_layout.unflatten(-gp / B).items():
            phi[name].grad = g.clone()
        opt.step()
        nonfinite += not finite
        censored += was_censored
        evals += float(g_theta.cost[0]) + float(g_phi.cost[0])
        tau = float(g_theta.diagnostics["tau"][0]) if "tau" in g_theta.diagnostics else float("nan")
        now = time.perf_counter()
        seconds += now - t_last
        t_last = now
        rec = {"step": step + 1, "evals": evals, "seconds": seconds, "lr": lr,
               "grad_norm_theta": float(torch.linalg.vector_norm(gt)) / B, "grad_norm_phi": float(torch.linalg.vector_norm(gp)) / B,
               "tau": tau, "theta_finite": finite, "censored": was_censored, "warmup": warm}
        step += 1
        if step % p.curve_every == 0:
            rec.update(curve_point(theta, phi))
            t_last = time.perf_counter()  # evaluation time is not training time
            eval_seconds += t_last - now
        curves.append(rec)
        if step in keep:
            snapshot()
            t_last = time.perf_counter()
        if checkpoint is not None and step % p.checkpoint_every == 0 and not spent():
            write_checkpoint(checkpoint, theta, phi, opt, step, evals, seconds, nonfinite, curves, censored)
            t_last = time.perf_counter()
    t_eval = time.perf_counter()
    final = full.at(theta={k: v.detach() for k, v in theta.items()}, phi={k: v.detach() for k, v in phi.items()})
    gen = make_generator(derive_seed(base, "held-out"), cell.device)
    exact = exact_evaluation(final)
    test_v, method, err = held_out(final, test_x, p.eval_K, gen, p.quadrature_nodes, p.eval_batch)
    train_v, train_method, train_err = held_out(final, eval_train_x, p.eval_K, gen, p.quadrature_nodes, p.eval_batch)
    taus = torch.tensor([c["tau"] for c in curves], dtype=torch.float64)
    rows = [row("model", held_out_metric(exact, "test"), *_mean_se(test_v), method),
            row("model", held_out_metric(exact, "train"), *_mean_se(train_v), train_method),
            row("model", "steps", float(step), 0.0, p.budget),
            row("model", "evals", evals, 0.0, "log-joint evaluations of single points, both estimators"),
            row("model", "seconds", seconds, 0.0, "training only (evaluations excluded)"),
            row("model", "seconds_per_step", seconds / max(step, 1), 0.0, "training only"),
            row("model", "nonfinite_steps", float(nonfinite), 0.0, "θ not updated")]
    if not exact:
        rows += evaluation_checks(final, test_x, p, base, test_v)
    if not math.isnan(err):
        rows += [row("model", "test_loglik_quadrature_error", err, 0.0, "max_n |ℓ_2n − ℓ_n|"),
                 row("model", "train_loglik_quadrature_error", train_err, 0.0, "max_n |ℓ_2n − ℓ_n|")]
    if bool(torch.isfinite(taus).any()):
        coupled = torch.isfinite(taus)
        rows += [row("model", "censored_steps", float(censored), 0.0,
                     f"coupled θ-steps whose chains had not met by max_iter (θ not updated), of {int(coupled.sum())}"),
                 row("model", "train_tau_mean", *_mean_se(taus[coupled]),
                     "over coupled training steps (a censored step counts τ = max_iter, a lower bound)"),
                 row("model", "train_tau_max", float(taus[coupled].max()), 0.0, "over coupled training steps")]
    rows.append(row("model", "eval_seconds", eval_seconds + time.perf_counter() - t_eval, 0.0,
                    "held-out data, curve and final evaluations"))
    df = pd.DataFrame(curves)
    for col in CURVE_COLUMNS:
        if col not in df:
            df[col] = float("nan")
    return rows, df[CURVE_COLUMNS]


def training_eval_rows(cell: Any, full: ComposedTarget, p: TrainParams) -> Tensor:
    """The first ``train_eval_n`` training rows, binary: as trained on, or (dynamic binarisation) one fixed
    Bernoulli draw of their grey levels from the data spec's seed (the ``stochastic_fixed`` rows)."""
    x = full.x[: p.train_eval_n]
    if not dynamic_binarisation(cell):
        return x
    fixed = datasets.binarize(x.detach().cpu().double().numpy(), "stochastic_fixed", cell.target.data_spec.get("seed", 0))
    return torch.as_tensor(fixed, dtype=x.dtype, device=x.device)


def evaluation_checks(final: ComposedTarget, test_x: Tensor, p: TrainParams, base: int, bound: Tensor) -> list[Row]:
    """What an IWAE_K held-out bound needs beside it: its convergence in K (the bound at ``eval_K_check`` on the first
    ``eval_check_n`` test points, and the paired gain of K over it on those points), and the bound under an encoder
    refitted to the test points with θ frozen (``eval_refit_steps``), which removes the part of the gap that the
    trained encoder's amortisation (and its training objective) leaves — the gap is KL-type, so a better q only
    raises the bound towards log p(x) (Cremer, Li & Duvenaud 2018, "Inference suboptimality in VAEs")."""
    rows: list[Row] = []
    if p.eval_K_check is not None:
        n = min(p.eval_check_n, test_x.shape[0])
        small, _, _ = held_out(final, test_x[:n], p.eval_K_check, make_generator(derive_seed(base, "held-out-check")),
                               batch=p.eval_batch)
        rows += [row("model", "test_iwae_bound_check", *_mean_se(small),
                     f"IWAE-{p.eval_K_check} lower bound on the first {n} test points"),
                 row("model", "test_iwae_bound_K_gain", *_mean_se(bound[:n] - small),
                     f"IWAE-{p.eval_K} − IWAE-{p.eval_K_check} on the first {n} test points (paired)")]
    if p.eval_refit_steps > 0:
        phi = refit_encoder(final, test_x, p, base)
        gen = make_generator(derive_seed(base, "held-out-refit"), test_x.device)
        refit, _, _ = held_out(final.at(phi=phi), test_x, p.eval_K, gen, batch=p.eval_batch)
        encoder = f"an encoder refitted on the test points for {p.eval_refit_steps} IWAE-{p.eval_refit_K} steps, θ frozen"
        rows += [row("model", "test_iwae_bound_refit", *_mean_se(refit), iwae_bound_method(p.eval_K, encoder)),
                 row("model", "test_iwae_bound_refit_gain", *_mean_se(refit - bound), "refit − trained encoder (paired)")]
    return rows


def refit_encoder(final: ComposedTarget, test_x: Tensor, p: TrainParams, base: int) -> Params:
    """A fresh encoder (:func:`fresh_encoder`, initialised from (base, "refit")) fitted to the held-out points by
    ``eval_refit_steps`` Adam steps (lr ``eval_refit_lr``) on minibatches of ``batch_size`` with the reparameterised
    IWAE-``eval_refit_K`` φ-gradient (Burda et al. 2016; binary latents: VIMCO), θ fixed at the trained value."""
    family = fresh_encoder(final.model, test_x.shape[1], p)
    gen0 = make_generator(derive_seed(base, "refit"))
    at = ComposedTarget(final.model, family, test_x, final.theta, family.init_params(test_x, gen0, test_x.dtype),
                        seed=final.seed)
    name = "iwae_reparam" if final.model.latent.kind == "real" else "vimco"
    est = registry.ESTIMATORS[name]
    kw = est.params(K=p.eval_refit_K).model_dump()
    phi = {k: v.clone().requires_grad_(True) for k, v in at.phi.items()}
    opt = torch.optim.Adam(list(phi.values()), lr=p.eval_refit_lr)
    N, B = test_x.shape[0], min(p.batch_size, test_x.shape[0])
    refit_base = derive_seed(base, "refit-steps")
    for t in range(p.eval_refit_steps):
        idx = minibatch(refit_base, t, N, B, test_x.device)
        batch = at.at(phi={k: v.detach() for k, v in phi.items()}, x=test_x[idx])
        g = est.fn(batch, 1, make_generator(derive_seed(refit_base, "step", t), test_x.device), **kw).grads[0]
        opt.zero_grad(set_to_none=True)
        for k, v in at.phi_layout.unflatten(-g / B).items():
            phi[k].grad = v.clone()
        opt.step()
    return {k: v.detach() for k, v in phi.items()}


def write_checkpoint(path: Path, theta: Params, phi: Params, opt: torch.optim.Optimizer, step: int, evals: float,
                     seconds: float, nonfinite: int, curves: list[dict[str, Any]], censored: int = 0) -> None:
    from gradbench.atomic import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"theta": {k: v.detach().clone() for k, v in theta.items()},
                "phi": {k: v.detach().clone() for k, v in phi.items()}, "adam": opt.state_dict(), "step": step, "evals": evals, "seconds": seconds, "nonfinite": nonfinite,
                "censored": censored, "curves": curves}, buf)
    atomic_write_bytes(path, buf.getvalue())


def held_out_data(cell: Any, target: ComposedTarget) -> Tensor:
    """The held-out rows: the test split of the target's named data set, first ``test_n``, binarised as the training
    rows are (``dynamic``: one fixed draw from the spec's seed, the ``stochastic_fixed`` rows)."""
    spec = cell.target.data_spec
    if spec is None:
        raise ValueError("train: the target needs a named data set (data: {name: digits, ...}) for its test split")
    p = TrainParams(**cell.estimator_params)
    how = "stochastic_fixed" if spec.get("binarize") == "dynamic" else spec.get("binarize", "none")
    x, _ = datasets.load(datasets.DataSpec(**{**spec, "split": "test", "n": p.test_n, "binarize": how}))
    return torch.as_tensor(np.asarray(x), dtype=target.x.dtype, device=target.x.device)
