"""training energy-based models (gradbench.training.ebm): exact held-out log-likelihood against
brute force, deterministic resume (PCD's persistent chains included), the budget prefix property, improvement over
θ₀, and the suite rules (a φ-estimator is refused on an EBM, ``phi_estimator: null`` on a latent-variable model)."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from gradbench.models.ebm import RBM, Ising, rbm_brute_force_log_z
from gradbench.run.compute import target_for
from gradbench.run.plan import SuiteError, load_suite
from gradbench.run.store import PROVENANCE
from gradbench.seeding import make_generator
from gradbench.training import ebm as train_ebm
from gradbench.training import loop
from gradbench.training import params as training_params
from gradbench.training.cell import train

Z = 3.2905  # two-sided standard-normal quantile at alpha = 0.001

TINY = """\
name: tiny-train-ebm
seed: 0
target_seed: 0
replicates: 1
targets:
  - model: {model}
    params: {params}
train:
  seeds: 0
  settings: {{budget: steps, budget_value: {steps}, batch_size: 16, lr: 0.05, test_n: 100, train_eval_n: 64,
             curve_every: 5, checkpoint_every: 10}}
  arms:
    - {{theta: {{name: pcd, S: 8, k: 1}}, phi: null}}
    - {{theta: {{name: coupled_gibbs, S: 4, k: 1, m: 3}}, phi: null}}
"""
RBM_PARAMS = "{n_visible: 6, n_hidden: 3, n_data: 64, weight_scale: 1.5}"


def tiny(tmp_path, steps: int = 20, model: str = "rbm", params: str = RBM_PARAMS):
    path = tmp_path / f"tiny-{model}-{steps}.yaml"
    path.write_text(TINY.format(model=model, params=params, steps=steps))
    return load_suite(path)[1]


def test_exact_log_lik_equals_brute_force():
    """log p(v) = −F(v) − log Z equals log Σ_h e^{−E(v,h)} − log Σ_{v,h} e^{−E(v,h)} (all 2^{6+3} states) to 1e-12;
    the Ising model's p sums to 1 over its 2^n states."""
    gen = make_generator(0)
    W, b, c = (1.5 * torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((6, 3), (6,), (3,)))
    v = (torch.rand(40, 6, generator=gen, dtype=torch.float64) < 0.5).double()
    rbm = RBM(W, b, c, v)
    H = torch.tensor([[(j >> i) & 1 for i in range(3)] for j in range(8)], dtype=torch.float64)
    log_joint = v @ W @ H.T + (v @ b).unsqueeze(1) + (H @ c).unsqueeze(0)  # −E(v, h), [40, 8]
    brute = torch.logsumexp(log_joint, 1) - rbm_brute_force_log_z(W, b, c)
    torch.testing.assert_close(rbm.log_prob(v), brute, rtol=0, atol=1e-12)
    mean, se = train_ebm.exact_log_lik(rbm, v)
    assert mean == pytest.approx(float(brute.mean()), abs=1e-12) and se == pytest.approx(float(brute.std() / math.sqrt(40)))
    J = torch.triu(torch.randn(5, 5, generator=gen, dtype=torch.float64), 1)
    ising = Ising(J + J.T, torch.randn(5, generator=gen, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64))
    states = ising.states(torch.arange(32))
    assert float(torch.logsumexp(ising.log_prob(states), 0)) == pytest.approx(0.0, abs=1e-12)


def test_ebm_training_resumes_exactly_and_reports_the_exact_log_lik(tmp_path):
    """PCD (chains carried across steps and checkpoints) and coupled Gibbs: a cell resumed from its step-10
    checkpoint gives the uninterrupted rows and curves; a 10-step cell (constant lr: the first 10 steps of the
    20-step one) reports the exact log-lik of the checkpointed θ_10, recomputed by brute force."""
    for cell in tiny(tmp_path):
        target = target_for(cell)
        ckpt_dir = tmp_path / cell.estimator_params["theta_estimator"]
        ckpt_dir.mkdir()
        rows, curves = train(cell, target, ckpt_dir)
        state = torch.load(ckpt_dir / f"{cell.cell_id}.pt", weights_only=False)
        assert state["step"] == 10
        assert ("pcd_chains" in state["phi"]) == (cell.estimator_params["theta_estimator"] == "pcd")
        resumed, resumed_curves = train(cell, target, ckpt_dir)  # starts at step 10
        keep = [c for c in rows.columns if c not in PROVENANCE]
        sel = ~rows["metric"].isin(["seconds", "seconds_per_step", "eval_seconds"])
        pd.testing.assert_frame_equal(rows.loc[sel, keep], resumed.loc[sel, keep])
        cols = [c for c in curves.columns if c != "seconds"]
        pd.testing.assert_frame_equal(curves[cols], resumed_curves[cols])
        assert list(curves["step"]) == list(range(1, 21))
        short = dataclasses.replace(cell, estimator_params={**cell.estimator_params, "budget_value": 10.0})
        short_rows, short_curves = train(short, target)
        same = [c for c in cols if c != "cell_id"]
        pd.testing.assert_frame_equal(short_curves[same], curves[same].iloc[:10])
        p = training_params.TrainParams(**cell.estimator_params)
        test_x = train_ebm.held_out_ebm(cell, target, p)
        at10 = target.with_theta(state["theta"]["theta"])
        W, b, c = at10.W, at10.b, at10.c
        H = torch.tensor([[(j >> i) & 1 for i in range(3)] for j in range(8)], dtype=torch.float64)
        brute = torch.logsumexp(test_x @ W @ H.T + (test_x @ b).unsqueeze(1) + (H @ c), 1) - rbm_brute_force_log_z(W, b, c)
        got = short_rows.set_index("metric").loc["test_loglik"]
        assert got["value"] == pytest.approx(float(brute.mean()), abs=1e-10)
        assert got["method"].startswith("exact")
        assert short_rows.set_index("metric").loc["steps", "value"] == 10


def test_exact_gradient_training_improves_the_held_out_likelihood(tmp_path):
    """On binarised digits (rbm 64x4, 300 training rows), 200 steps (lr 0.03) with the exact sampler raise the exact test log-lik
    (100 test digits) above θ₀'s by more than Z s.e. of the paired
    per-point differences; the negative control — a run at a learning rate of 1e-12 — does not move it."""
    cell = tiny(tmp_path, 200, params="{n_visible: 64, n_hidden: 4, data: digits}\n    data: {name: digits, n: 300, binarize: static}")[0]
    target = target_for(cell)
    p = training_params.TrainParams(**cell.estimator_params)
    test_x = train_ebm.held_out_ebm(cell, target, p)
    base = loop.derive_seed(cell.target.noise_seed(0), training_params.TRAIN, p.train_seed)
    v0 = target.with_theta(target.initial_theta(make_generator(loop.derive_seed(base, "init")))).log_prob(test_x)

    def gain(lr: float) -> tuple[float, float]:
        params = {**cell.estimator_params, "theta_estimator": "exact_sampling", "theta_params": {"S": 16}, "lr": lr}
        out = train_ebm.fit(dataclasses.replace(cell, estimator_params=params), target)
        d = target.with_theta(out.theta).log_prob(test_x) - v0
        assert next(r["value"] for r in out.rows if r["metric"] == "test_loglik") == pytest.approx(float(v0.mean() + d.mean()))
        return float(d.mean()), float(d.std() / math.sqrt(len(d)))

    mean, se = gain(0.03)
    assert mean > Z * se, (mean, se)
    mean, se = gain(1e-12)
    assert abs(mean) < 1e-9


def test_validate_refuses_a_phi_estimator_on_an_ebm_and_null_phi_elsewhere(tmp_path):
    bad = TINY.replace("phi: null", "phi: {{name: reparam_elbo}}", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(bad.format(model="rbm", params=RBM_PARAMS, steps=5))
    with pytest.raises(SuiteError, match="does not provide"):
        load_suite(path)
    vae = TINY.format(model="vae", params="{latent_dim: 2, hidden: [8]}", steps=5).replace(
        "    params: {latent_dim", "    data: {name: digits, n: 32, binarize: dynamic}\n    params: {latent_dim")
    path.write_text(vae.replace("theta: {name: pcd, S: 8, k: 1}", "theta: {name: iwae, K: 4}"))
    with pytest.raises(SuiteError, match="energy_based"):
        load_suite(path)


def test_ising_training_reports_the_normalised_log_lik(tmp_path):
    """θ-only training runs on the Ising model too (PCD, 10 steps); its test log-lik equals −F(s) minus the log of
    Σ e^{−F} over all 2^6 states, recomputed here."""
    cell = tiny(tmp_path, 10, model="ising", params="{n_spins: 6, n_data: 64}")[0]
    target = target_for(cell)
    out = train_ebm.fit(cell, target)
    at = target.with_theta(out.theta)
    test_x = train_ebm.held_out_ebm(cell, target, training_params.TrainParams(**cell.estimator_params))
    log_z = torch.logsumexp(-at.free_energy(at.states(torch.arange(64))), 0)
    expected = float((-at.free_energy(test_x) - log_z).mean())
    assert next(r["value"] for r in out.rows if r["metric"] == "test_loglik") == pytest.approx(expected, abs=1e-12)
    assert len(out.curves) == 10 and out.curves["theta_finite"].all()
