"""the training protocol: held-out log-likelihood against closed forms, common random numbers,
deterministic resume from a checkpoint (in process and after a real SIGKILL), the paired test's calibration,
and the suite rules."""

from __future__ import annotations

import dataclasses
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gradbench.families.gaussian import GaussianEncoder, GaussianMeanField
from gradbench.models.vae import VAE
from gradbench.run.compute import target_for
from gradbench.run.plan import SuiteError, load_suite
from gradbench.run.store import PROVENANCE
from gradbench.seeding import make_generator
from gradbench.target import ComposedTarget
from gradbench.training import loop
from gradbench.training import params as training_params
from gradbench.training import stats as training_stats
from gradbench.training.cell import train
from tests.sync import gate_env, wait_for

ALPHA = 0.001
Z = 3.2905  # two-sided standard-normal quantile at ALPHA

TINY = """\
name: tiny-train
seed: 0
target_seed: 0
targets:
  - model: vae
    params: {{latent_dim: 2, hidden: [8], activation: tanh, likelihood: bernoulli}}
    data: {{name: digits, n: 64, binarize: stochastic_fixed, seed: 0}}
    proposal: {{family: gaussian_mean_field}}
train:
  seeds: 0
  settings: {{budget: steps, budget_value: {steps}, batch_size: 16, lr: 0.02, lr_schedule: cosine, encoder_hidden: [8],
             test_n: 40, train_eval_n: 40, quadrature_nodes: 8, curve_every: 10, curve_n: 20, curve_K: 10,
             checkpoint_every: 10}}
  arms:
    - {{theta: {{name: iwae, K: 4}}, phi: {{name: iwae_reparam, K: 4}}}}
    - {{theta: {{name: coupled_isir, K: 4}}, phi: {{name: iwae_reparam, K: 4}}}}
"""


def tiny_suite(tmp_path: Path, steps: int = 40) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(steps=steps))
    return path


def linear_gaussian(seed: int = 0, d: int = 5, k: int = 2, n: int = 7, sigma: float = 0.7):
    """A VAE with no hidden layer and a Gaussian likelihood is PPCA: p(x) = N(b, W Wᵀ + σ² I), exactly."""
    model = VAE(k, d, (), "tanh", "gaussian", sigma)
    gen = make_generator(seed)
    theta = model.init_params(gen)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    W, b = theta["W0"], theta["b0"]
    cov = W @ W.T + sigma**2 * torch.eye(d, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    # the exact posterior: N(M⁻¹ Wᵀ (x − b)/σ², M⁻¹), M = I + WᵀW/σ² (isotropic only if WᵀW is; mean-field q is then exact
    # only approximately, so the IWAE test below uses its own mismatch control)
    M = torch.eye(k, dtype=torch.float64) + W.T @ W / sigma**2
    post_mean = torch.linalg.solve(M, W.T @ (x - b).T / sigma**2).T
    post_cov = torch.linalg.inv(M)
    return model, theta, x, exact, post_mean, post_cov


def test_quadrature_log_px_equals_the_closed_form():
    model, theta, x, exact, _, _ = linear_gaussian()
    values, err, n = loop.quadrature_log_px(model, theta, x, nodes=8)
    assert n == 8
    torch.testing.assert_close(values, exact, rtol=0, atol=1e-9)
    assert float(err.max()) < 1e-8  # a Gaussian integrand at its own Laplace point: exact for every n


def test_iwae_log_px_is_unbiased_for_p_x_and_rejects_a_shifted_encoder():
    """E[(1/K) Σ w_k] = p(x) for any q: with K = 1 and R replicates, the mean of exp(log ŵ − log p(x)) is 1 ± its
    s.e. (tested at α = 0.001); a negative control — log ŵ shifted by −0.05 — must be rejected."""
    model, theta, x, exact, post_mean, post_cov = linear_gaussian(n=3)
    std = torch.sqrt(torch.diagonal(post_cov)) * 1.3  # a mean-field q wider than the posterior: bounded weights
    family = GaussianMeanField(2, 3)
    phi = {"m": post_mean + 0.3, "log_s": torch.log(std).expand(3, 2).clone()}
    target = ComposedTarget(model, family, x, theta, phi)
    gen = make_generator(0)
    R = 4000
    ratios = torch.stack([torch.exp(loop.iwae_log_px(target, 1, gen) - exact) for _ in range(R)])  # [R, N]
    for shift, should_pass in [(0.0, True), (-0.05, False)]:
        r = ratios * math.exp(shift)
        z = (r.mean(0) - 1) / (r.std(0) / math.sqrt(R))
        assert bool((z.abs() < Z).all()) == should_pass, (shift, z)


def test_at_rebuilds_the_target_on_a_minibatch():
    model, theta, x, _, _, _ = linear_gaussian()
    enc = GaussianEncoder(2, 5, (4,))
    phi = enc.init_params(x, make_generator(1), torch.float64)
    target = ComposedTarget(model, enc, x, theta, phi)
    theta2 = {k: v + 1 for k, v in theta.items()}
    sub = target.at(theta=theta2, x=x[:3])
    assert sub.n_data == 3 and sub.theta["b0"][0] == theta["b0"][0] + 1 and sub.phi is not None
    z = torch.zeros(3, 2, dtype=torch.float64)
    torch.testing.assert_close(sub.log_joint(z), model.log_joint(theta2, x[:3], z))
    assert target.n_data == 7 and target.theta["b0"][0] == theta["b0"][0]  # the original is untouched


def test_common_random_numbers_across_estimator_pairs(tmp_path):
    """Cells that differ only in their estimators start from the same (θ₀, φ₀) and see the same minibatches;
    another training seed does not (the negative control)."""
    _, cells = load_suite(tiny_suite(tmp_path))
    a, b = cells
    assert a.estimator_params["theta_estimator"] != b.estimator_params["theta_estimator"]
    target = target_for(a)

    def start(cell):
        p = training_params.TrainParams(**cell.estimator_params)
        base = loop.derive_seed(cell.target.noise_seed(0), training_params.TRAIN, p.train_seed)
        return loop.initial_state(target, p, base), base

    (ta, base_a), (tb, base_b) = start(a), start(b)
    assert base_a == base_b
    for name in ta.theta:
        assert torch.equal(ta.theta[name], tb.theta[name])
    assert torch.equal(loop.minibatch(base_a, 17, 64, 16, "cpu"), loop.minibatch(base_b, 17, 64, 16, "cpu"))
    other = dataclasses.replace(a, estimator_params={**a.estimator_params, "train_seed": 1})
    (tc, base_c) = start(other)
    assert base_c != base_a and not torch.equal(tc.theta["W0"], ta.theta["W0"])
    assert not torch.equal(loop.minibatch(base_c, 17, 64, 16, "cpu"), loop.minibatch(base_a, 17, 64, 16, "cpu"))


def test_training_improves_the_held_out_likelihood_and_resumes_exactly(tmp_path):
    """40 IWAE steps raise the exact test log-likelihood above the initial model's by more than 3 s.e. of the
    paired difference; a cell resumed from its step-30 checkpoint gives bit-identical rows and curves."""
    _, cells = load_suite(tiny_suite(tmp_path))
    cell = cells[0]
    target = target_for(cell)
    rows, curves = train(cell, target, tmp_path)
    assert (tmp_path / f"{cell.cell_id}.pt").exists()
    state = torch.load(tmp_path / f"{cell.cell_id}.pt", weights_only=False)
    assert state["step"] == 30
    resumed, resumed_curves = train(cell, target, tmp_path)  # starts at step 30
    keep = [c for c in rows.columns if c not in PROVENANCE]
    sel = ~rows["metric"].isin(["seconds", "seconds_per_step", "eval_seconds"])
    pd.testing.assert_frame_equal(rows.loc[sel, keep], resumed.loc[sel, keep])
    cols = [c for c in curves.columns if c != "seconds"]
    pd.testing.assert_frame_equal(curves[cols], resumed_curves[cols])
    assert list(curves["step"]) == list(range(1, 41))
    # the initial model's exact test log-likelihood, point by point (paired with the trained one)
    p = training_params.TrainParams(**cell.estimator_params)
    base = loop.derive_seed(cell.target.noise_seed(0), training_params.TRAIN, p.train_seed)
    test_x = loop.held_out_data(cell, target)
    init = loop.initial_state(target, p, base)
    v0, _, _ = loop.quadrature_log_px(init.model, init.theta, test_x, 8)
    final = rows.set_index("metric").loc["test_loglik"]
    assert final["method"].startswith("quadrature")
    gain = final["value"] - float(v0.mean())
    assert gain > 3 * float(v0.std() / math.sqrt(len(v0))), gain


def test_resume_after_sigkill_gives_the_uninterrupted_table(tmp_path):
    """SIGKILL `gradbench run` right after a training cell wrote its first checkpoint (step 10: the child is held
    there by the tests.gate plugin, then killed); the restarted run resumes from the checkpoint and its
    results.parquet and curves.parquet equal an uninterrupted run's (times excepted)."""
    suite = tiny_suite(tmp_path, steps=60)
    suite.write_text("plugins: [tests.gate]\n" + suite.read_text())
    cmd = [sys.executable, "-m", "gradbench", "run", str(suite), "--out"]
    subprocess.run([*cmd, str(tmp_path / "ref")], check=True, capture_output=True, timeout=600)
    out, gate = tmp_path / "killed", tmp_path / "gate"
    proc = subprocess.Popen([*cmd, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=gate_env(gate, "checkpoint:1"))
    wait_for(gate / "held", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = list((out / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 1 and not list((out / "cells").glob("*.parquet"))
    assert torch.load(ckpts[0], weights_only=False)["step"] == 10
    subprocess.run([*cmd, str(out)], check=True, capture_output=True, timeout=600)
    assert not list((out / "checkpoints").glob("*.pt"))  # deleted once each cell file exists
    ref, got = pd.read_parquet(tmp_path / "ref" / "results.parquet"), pd.read_parquet(out / "results.parquet")
    keep = [c for c in ref.columns if c not in PROVENANCE]
    sel = ~ref["metric"].isin(["seconds", "seconds_per_step", "eval_seconds"])
    pd.testing.assert_frame_equal(ref.loc[sel, keep].reset_index(drop=True), got.loc[sel, keep].reset_index(drop=True))
    rc, gc = pd.read_parquet(tmp_path / "ref" / "curves.parquet"), pd.read_parquet(out / "curves.parquet")
    cols = [c for c in rc.columns if c != "seconds"]
    pd.testing.assert_frame_equal(rc[cols], gc[cols])
    assert set(rc["tau"].dropna()) and rc["tau"].notna().sum() == 60  # τ over training: the coupled cell's steps


def _table(d: np.ndarray, base: float = -30.0) -> pd.DataFrame:
    rows = []
    for s, ds in enumerate(d):
        for label, v in [("elbo", base), ("iwae", base + ds)]:
            rows.append({"target_id": "t", "estimator.theta_estimator": label, "estimator.theta_params": "{}",
                         "estimator.phi_estimator": "reparam_elbo", "estimator.phi_params": "{}",
                         "estimator.budget": "steps", "estimator.budget_value": 10.0, "estimator.train_seed": s,
                         "metric": "test_loglik", "value": v})
    return pd.DataFrame(rows)


def test_paired_test_is_calibrated_and_detects_a_shift():
    """Under H0 (paired differences symmetric about 0, n = 6 seeds) the exact sign-flip p-value is ≤ 0.05 with
    probability ≤ 0.05 (checked over 2000 tables, binomial s.e., α = 0.001); a shift of 3 sd is detected."""
    rng = np.random.default_rng(0)
    a, b = "elbo / reparam_elbo", "iwae / reparam_elbo"
    n_sim = 2000
    p_perm = np.array([training_stats.paired_differences(rng.standard_normal(6))["p_perm"] for _ in range(n_sim)])
    rate = float((p_perm <= 0.05).mean())
    assert rate <= 0.05 + Z * math.sqrt(0.05 * 0.95 / n_sim), rate  # exact test: size ≤ level (2/64 · 2 = 0.031 here)
    shifted = training_stats.paired_test(_table(3 + rng.standard_normal(6)), a, b)
    assert shifted["p_perm"] == pytest.approx(2 / 64) and shifted["p_t"] < 0.01 and shifted["mean_diff"] > 0
    summary = training_stats.summarize(_table(np.arange(6.0)))
    iw = summary[summary["pair"] == b].iloc[0]
    assert iw["mean"] == pytest.approx(-30 + 2.5) and iw["n_seeds"] == 6
    assert iw["stderr"] == pytest.approx(np.arange(6.0).std(ddof=1) / math.sqrt(6))


def test_training_is_a_train_block_not_an_estimator_or_a_protocol(tmp_path):
    """Training is its own kind of cell: the name 'train' as an estimator or a protocol is refused with one located
    line pointing at the train: block (control: the tiny train: block loads)."""
    bad = tmp_path / "bad.yaml"
    head = "name: x\nseed: 0\nreplicates: 10\ntargets:\n  - model: ppca\n    params: {data_dim: 3, latent_dim: 1, n_data: 1}\n"
    bad.write_text(head + "estimators:\n  - name: train\n    params: {theta_estimator: iwae}\nprotocols: [bias]\n")
    with pytest.raises(SuiteError, match=r"bad\.yaml:8: estimators\[0\]\.name: 'train' is not an estimator; .*write a training study as a train: block"):
        load_suite(bad)
    bad.write_text(head + "estimators:\n  - name: iwae\n    params: {K: 4}\nprotocols: [train]\n")
    with pytest.raises(SuiteError, match=r"protocols\[0\]: unknown protocol 'train'.*train: block"):
        load_suite(bad)
    assert len(load_suite(tiny_suite(tmp_path, 10))[1]) == 2


# -- wave 3: budgets in evaluations and seconds, sub-estimator params at validate time, the lazy target -----------
def _one_cell(tmp_path: Path, budget: str, value: float, index: int = 1, every: int = 5):
    """The tiny suite's cell ``index`` (0: iwae, 1: coupled_isir θ) with another budget and checkpoint interval."""
    text = TINY.format(steps=40).replace("budget: steps, budget_value: 40", f"budget: {budget}, budget_value: {value}")
    text = text.replace("checkpoint_every: 10", f"checkpoint_every: {every}")
    path = tmp_path / "budget.yaml"
    path.write_text(text)
    return load_suite(path)[1][index]


def test_an_evals_budget_stops_at_the_first_step_that_reaches_it_and_resumes_identically(tmp_path):
    """Coupled i-SIR costs a random number of log-joint evaluations per step: training stops at the first step whose
    cumulative evaluations reach the budget (the step before is below it); a run resumed from its last checkpoint
    stops at the same step with the same table and curves. The target's Laplace fit is never needed."""
    budget = 3000.0
    cell = _one_cell(tmp_path, "evals", budget)
    target = target_for(cell)
    rows, curves = train(cell, target, tmp_path)
    evals = curves["evals"].to_numpy()
    assert evals[-1] >= budget > evals[-2]
    assert len(np.unique(np.diff(evals))) > 1  # the per-step cost varies: the stop is not a fixed step count
    table = rows.set_index("metric")
    assert table.loc["evals", "value"] == evals[-1] and table.loc["steps", "value"] == len(curves)
    state = torch.load(tmp_path / f"{cell.cell_id}.pt", weights_only=False)
    assert 0 < state["step"] < len(curves) and state["evals"] < budget
    resumed, resumed_curves = train(cell, target, tmp_path)
    keep = [c for c in rows.columns if c not in PROVENANCE]
    sel = ~rows["metric"].isin(["seconds", "seconds_per_step", "eval_seconds"])
    pd.testing.assert_frame_equal(rows.loc[sel, keep], resumed.loc[sel, keep])
    cols = [c for c in curves.columns if c != "seconds"]
    pd.testing.assert_frame_equal(curves[cols], resumed_curves[cols])
    assert not target.phi_fitted  # vae.build's Laplace fit is lazy and a train cell never reads the target's φ


def test_a_seconds_budget_records_at_least_the_budget(tmp_path):
    """Training stops at the first step whose cumulative training time reaches the budget; all three counters are
    recorded (negative control: a steps budget of 3 stops after 3 steps, well under that time)."""
    cell = _one_cell(tmp_path, "seconds", 0.4, index=0, every=1000)
    rows, curves = train(cell, target_for(cell))
    table = rows.set_index("metric")
    seconds = curves["seconds"].to_numpy()
    assert table.loc["seconds", "value"] >= 0.4 and seconds[-1] >= 0.4 > seconds[-2]
    assert table.loc["steps", "value"] == len(curves) and table.loc["evals", "value"] == 128 * len(curves)
    short = _one_cell(tmp_path, "steps", 3, index=0, every=1000)
    rows3, curves3 = train(short, target_for(short))
    assert len(curves3) == 3 and rows3.set_index("metric").loc["seconds", "value"] < 0.4


@pytest.mark.parametrize("role, typo, message", [
    ("theta", "{name: iwae, KK: 4}", "theta_params: unknown parameter 'KK' of theta_estimator 'iwae'; did you mean 'K'"),
    ("phi", "{name: iwae_reparam, K: 0}", "phi_params: phi_estimator 'iwae_reparam': K: Input should be greater than 0"),
])
def test_sub_estimator_params_are_validated_with_their_line(tmp_path, role, typo, message):
    """theta_params / phi_params are checked against the named estimator's schema by `gradbench validate`
    (load_suite), with the file and line of the estimator's params; the valid suite passes (the control)."""
    good = TINY.format(steps=10)
    lines = good.splitlines()
    name = {"theta": "iwae", "phi": "iwae_reparam"}[role]
    line = next(i for i, t in enumerate(lines, 1) if f"{role}: {{name: {name}, K: 4}}" in t)  # the first arm's
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.replace(f"{role}: {{name: {name}, K: 4}}", f"{role}: {typo}", 1))
    with pytest.raises(SuiteError, match=rf"bad\.yaml:{line}: train\.arms\[0\]\.{message}"):
        load_suite(bad)
    assert len(load_suite(tiny_suite(tmp_path, 10))[1]) == 2
