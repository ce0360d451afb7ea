"""Training runs at scale and as the literature runs them: a train cell never builds what training does not use
(the target's fitted φ), dynamic binarisation re-draws every minibatch reproducibly, the held-out number says
whether it is exact or an IWAE bound, a warm-up switches the θ-estimator, censored coupled steps are counted, and
the rows of a fixed-seed cell are those of the code before these changes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gradbench import data as datasets
from gradbench.families import gaussian
from gradbench.run.compute import target_for
from gradbench.run.executors import LocalExecutor
from gradbench.run.plan import SuiteError, load_suite
from gradbench.run.runner import run_suite
from gradbench.run.store import PROVENANCE
from gradbench.training import loop
from gradbench.training import params as training_params
from gradbench.training import stats as training_stats
from gradbench.training.cell import target_of, train
from tests.training.test_loop import TINY

HERE = Path(__file__).parent
Z = 3.2905  # two-sided standard-normal quantile at α = 0.001


def suite_file(tmp_path: Path, steps: int = 20, binarize: str = "stochastic_fixed", extra: str = "",
               latent: int = 2) -> Path:
    text = TINY.format(steps=steps).replace("binarize: stochastic_fixed", f"binarize: {binarize}")
    text = text.replace("latent_dim: 2", f"latent_dim: {latent}")
    if extra:
        text = text.replace("checkpoint_every: 10}", f"checkpoint_every: 10, {extra}}}")
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_a_train_suite_never_fits_the_targets_phi(tmp_path, monkeypatch):
    """The VAE target's φ is a Laplace fit to every data point (minutes and gigabytes on Fashion-MNIST): running,
    storing and resuming a train suite never calls it (negative control: reading the target's φ does)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the target's φ was fitted")

    monkeypatch.setattr(gaussian, "build_family", refuse)
    suite, cells = load_suite(suite_file(tmp_path, steps=12))
    out = tmp_path / "run"
    summary = run_suite(suite, cells, out, progress=False, executor=LocalExecutor())
    assert not summary.failed and summary.ran == 2
    assert not list((out / "targets").glob("*.npz"))  # no arrays: the spec and sha256 identify the data
    info = json.loads(next((out / "targets").glob("*.json")).read_text())
    assert len(info["data"]["sha256"]) == 64
    again = run_suite(suite, cells, out, progress=False, executor=LocalExecutor())  # resume: nothing left to do
    assert again.ran == 0 and again.skipped == 2
    with pytest.raises(AssertionError, match="φ was fitted"):
        _ = target_for(cells[0]).phi


def test_rows_are_those_of_the_code_before_with_fixed_seeds(tmp_path):
    """A tiny train cell (digits, k = 2, 20 steps, IWAE and coupled i-SIR θ) gives exactly the rows and curves that
    the code before the warm-up, dynamic binarisation and evaluation changes gave (stored in data/, written by
    that code with the same suite; ``static`` is spelt as it was, so the target and every seed are the same), to 1e-12
    relative: the exact held-out log p(x) takes its Gauss–Hermite nodes from SciPy now, which differ from the old ones
    in the last digit, and a norm's summation order follows the CPU's vector width (on one machine `grad_norm_theta`
    differed from the stored curves by 1–5 ulps)."""
    before = json.loads((HERE / "data" / "train_tiny_before.json").read_text())
    for cell in load_suite(suite_file(tmp_path, binarize="static"))[1]:
        rows, curves = train(cell, target_for(cell))
        ref = before[cell.estimator_params["theta_estimator"]]
        got = {m: [v, s] for m, v, s in zip(rows["metric"], rows["value"], rows["stderr"])}
        for metric, value in ref["rows"].items():  # [value, s.e.]
            np.testing.assert_allclose(np.array(got[metric], dtype=float), np.array(value, dtype=float), rtol=1e-12,
                                       atol=0, err_msg=metric)
        for col, values in ref["curves"].items():
            np.testing.assert_allclose(curves[col].to_numpy(dtype=float), np.array(values, dtype=float), rtol=1e-12,
                                       atol=0, err_msg=col)


def test_dynamic_binarisation_redraws_every_minibatch_reproducibly(tmp_path):
    """binarize: dynamic keeps grey levels in the target and draws x ~ Bernoulli(grey) per step from the step's seed:
    the same image seen in two epochs is binarised differently (its pixels with 0 < grey < 1 differ in ≈ Σ 2g(1−g)
    of them), the frequency of ones over many draws matches the grey level within 3.29 s.e., and a resumed
    cell gives the uninterrupted rows (the draws are derived, not carried). Negative control: stochastic_fixed's
    rows are binary in the target and the same at every step."""
    cell = load_suite(suite_file(tmp_path, steps=12, binarize="dynamic"))[1][0]
    grey = target_for(cell, target_of(cell)).x
    assert bool(((grey > 0) & (grey < 1)).any())  # grey levels kept
    fixed_cell = load_suite(suite_file(tmp_path, steps=12))[1][0]
    fixed = target_for(fixed_cell, target_of(fixed_cell)).x
    assert bool(((fixed == 0) | (fixed == 1)).all())
    # the draw itself: mean of n draws of one image vs its grey levels (binomial s.e.)
    g = grey[0]
    n = 400
    draws = torch.stack([datasets.dynamic_draw(g, loop.make_generator(s)) for s in range(n)])
    mid = (g > 0.05) & (g < 0.95)
    se = torch.sqrt(g[mid] * (1 - g[mid]) / n)
    assert float(((draws[:, mid].mean(0) - g[mid]).abs() / se).max()) < Z * 1.5  # max over ~30 pixels: widened
    assert not torch.equal(draws[0], draws[1])
    # a training run with dynamic data, interrupted and resumed, equals the uninterrupted one
    rows, curves = train(cell, target_for(cell, target_of(cell)), tmp_path)
    resumed, resumed_curves = train(cell, target_for(cell, target_of(cell)), tmp_path)  # from the step-10 checkpoint
    keep = [c for c in rows.columns if c not in PROVENANCE]
    sel = ~rows["metric"].isin(["seconds", "seconds_per_step", "eval_seconds"])
    pd.testing.assert_frame_equal(rows.loc[sel, keep], resumed.loc[sel, keep])
    cols = [c for c in curves.columns if c != "seconds"]
    pd.testing.assert_frame_equal(curves[cols], resumed_curves[cols])
    fixed_rows, _ = train(fixed_cell, target_for(fixed_cell, target_of(fixed_cell)))
    assert rows.set_index("metric").loc["test_loglik", "value"] != fixed_rows.set_index("metric").loc["test_loglik", "value"]
    with pytest.raises(ValueError, match="needs the grey-level rows"):
        train(cell, target_for(cell))  # the binary rows of the one-draw target are refused


def test_dynamic_is_refused_nowhere_and_static_is_threshold():
    """``static`` (the former name) thresholds exactly as ``threshold``; a fixed target's ``dynamic`` is the one draw
    ``stochastic_fixed`` makes (the meaning it had before training runs re-drew)."""
    a = datasets.load(datasets.DataSpec(name="digits", n=20, binarize="static"))[0]
    b = datasets.load(datasets.DataSpec(name="digits", n=20, binarize="threshold"))[0]
    np.testing.assert_array_equal(a, b)
    c = datasets.load(datasets.DataSpec(name="digits", n=20, binarize="dynamic", seed=3))[0]
    d = datasets.load(datasets.DataSpec(name="digits", n=20, binarize="stochastic_fixed", seed=3))[0]
    np.testing.assert_array_equal(c, d)
    grey = datasets.load(datasets.DataSpec(name="digits", n=20, binarize="dynamic", seed=3), grey=True)[0]
    assert ((grey > 0) & (grey < 1)).any()


def test_an_iwae_held_out_number_is_named_a_bound_with_its_checks(tmp_path):
    """At latent_dim 3 (no quadrature) the held-out rows are ``test_iwae_bound``/``train_iwae_bound`` with the method
    saying "lower bound", plus the convergence-in-K check and the refitted-encoder bound. The bound under the refitted
    encoder is not below the trained one's by more than 3.29 s.e. of the paired difference (a better q only raises
    E log ŵ), and the IWAE-40 bound is not below IWAE-5 on the same points (negative control: IWAE-5 − IWAE-40 is
    not positive beyond 3.29 s.e.). At latent_dim 2 the row stays the exact ``test_loglik``."""
    extra = "eval_K: 40, eval_K_check: 5, eval_check_n: 40, eval_refit_steps: 30, eval_refit_lr: 0.01"
    cell = load_suite(suite_file(tmp_path, steps=10, latent=3, extra=extra))[1][0]
    rows, _ = train(cell, target_for(cell, target_of(cell)))
    t = rows.set_index("metric")
    assert "test_loglik" not in t.index and "train_loglik" not in t.index
    assert "lower bound" in t.loc["test_iwae_bound", "method"] and "IWAE-40" in t.loc["test_iwae_bound", "method"]
    gain = t.loc["test_iwae_bound_K_gain"]
    assert gain["value"] > -Z * gain["stderr"]
    refit = t.loc["test_iwae_bound_refit_gain"]
    assert refit["value"] > -Z * refit["stderr"]
    assert "refitted" in t.loc["test_iwae_bound_refit", "method"]
    exact = load_suite(suite_file(tmp_path, steps=2))[1][0]
    assert "test_loglik" in set(train(exact, target_for(exact, target_of(exact)))[0]["metric"])


def test_a_warmup_switches_the_theta_estimator_and_censored_steps_are_counted(tmp_path):
    """warmup_theta_estimator: iwae for 6 steps, then coupled i-SIR: the curves' τ is NaN during the warm-up and
    finite after, and the warm-up flag says which. With max_iter: 1 every coupled step is censored (chains cannot
    meet at t = 1 for K = 4 with probability 1): censored_steps = nonfinite_steps = the coupled steps, and the
    curves mark each one (negative control: with the default max_iter none is censored)."""
    text = suite_file(tmp_path, steps=12, extra="warmup_theta_estimator: iwae, warmup_theta_params: {K: 4}, "
                                                "warmup_value: 6").read_text()
    cell = load_suite(_write(tmp_path, text))[1][1]  # coupled_isir θ after the warm-up
    rows, curves = train(cell, target_for(cell, target_of(cell)))
    assert curves["warmup"].tolist() == [True] * 6 + [False] * 6
    assert curves["tau"].iloc[:6].isna().all() and curves["tau"].iloc[6:].notna().all()
    t = rows.set_index("metric")
    assert t.loc["censored_steps", "value"] == curves["censored"].sum() == 0
    capped = text.replace("theta: {name: coupled_isir, K: 4}", "theta: {name: coupled_isir, K: 4, max_iter: 1}")
    cell = load_suite(_write(tmp_path, capped))[1][1]
    rows, curves = train(cell, target_for(cell, target_of(cell)))
    t = rows.set_index("metric")
    n_coupled = int((~curves["warmup"]).sum())
    assert t.loc["censored_steps", "value"] == t.loc["nonfinite_steps", "value"] == n_coupled == curves["censored"].sum()
    assert math.isfinite(t.loc["test_loglik", "value"])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edited.yaml"
    path.write_text(text)
    return path


def test_the_cosine_runs_over_the_evaluations_spent_with_lr_horizon_budget():
    """lr_horizon: budget with an evals budget: lr = lr at 0 evaluations, the midpoint (1 + f)/2 · lr at half the
    budget, f · lr at the budget, whatever the step; the default (max_steps) ignores the evaluations (control)."""
    p = training_params.TrainParams(budget="evals", budget_value=1000, lr=0.01, lr_schedule="cosine", lr_final_factor=0.1,
                          lr_horizon="budget", max_steps=50)
    assert loop.lr_at(p, 7, 0.0) == pytest.approx(0.01)
    assert loop.lr_at(p, 7, 500.0) == pytest.approx(0.01 * 0.55)
    assert loop.lr_at(p, 7, 1000.0) == pytest.approx(0.001)
    q = p.model_copy(update={"lr_horizon": "max_steps"})
    assert loop.lr_at(q, 25, 0.0) == loop.lr_at(q, 25, 1000.0) == pytest.approx(0.01 * 0.55)


def test_arms_that_differ_in_warmup_lr_or_budget_get_distinct_labels():
    """pair_labels: a warm-started arm is never pooled with the same arm without warm-up, and arms that differ only in
    learning rate or budget get the differing setting in their label (control: a setting shared by every arm of the
    target is not added)."""
    base = {"target_id": "t", "estimator.theta_estimator": "coupled_isir", "estimator.theta_params": '{"K": 8}',
            "estimator.phi_estimator": "iwae_reparam", "estimator.phi_params": '{"K": 8}', "estimator.lr": 0.003,
            "estimator.budget": "steps", "estimator.budget_value": 800.0, "estimator.warmup_theta_estimator": None,
            "estimator.warmup_theta_params": "{}", "estimator.warmup_value": 0.0, "estimator.warmup_budget": "steps"}
    warm = {**base, "estimator.warmup_theta_estimator": "iwae", "estimator.warmup_theta_params": '{"K": 8}',
            "estimator.warmup_value": 200.0}
    fast = {**base, "estimator.lr": 0.01}
    labels = training_stats.pair_labels(pd.DataFrame([base, warm, fast]))
    assert len(set(labels)) == 3
    assert labels[1].startswith("iwae(K=8) ×200 steps → coupled_isir(K=8)")
    assert labels[0].endswith("lr=0.003") and labels[2].endswith("lr=0.01")
    assert "budget" not in "".join(labels)


def test_the_held_out_laplace_centring_goes_on_when_40_iterations_do_not_reach_a_mode(monkeypatch):
    """quadrature_log_px retries the Laplace centring with LAPLACE_RETRY_ITER Newton iterations when 40 leave some
    point at an indefinite Hessian (met by a warm-started arm at lr 1e-2 on digits), and its value then equals the
    closed form within the doubling error (control: the 40-iteration call is tried first)."""
    from tests.training.test_loop import linear_gaussian

    model, theta, x, exact, _, _ = linear_gaussian()
    real = loop.laplace
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["max_iter"])
        if kwargs["max_iter"] == 40:
            raise ValueError("laplace: the Hessian at the mode is not negative definite for some data point")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "laplace", flaky)
    value, err, _ = loop.quadrature_log_px(model, theta, x, 8)
    assert calls == [40, loop.LAPLACE_RETRY_ITER]
    assert float((value - exact).abs().max()) <= float(err.max()) + 1e-9


BLOCK = """\
name: tiny-train
seed: 0
target_seed: 0
targets:
  - model: vae
    params: {latent_dim: 2, hidden: [8], activation: tanh, likelihood: bernoulli}
    data: {name: digits, n: 64, binarize: stochastic_fixed, seed: 0}
    proposal: {family: gaussian_mean_field}
train:
  seeds: 0
  settings: {budget: steps, budget_value: 40, batch_size: 16, lr: 0.02, lr_schedule: cosine, encoder_hidden: [8],
             test_n: 40, train_eval_n: 40, quadrature_nodes: 8, curve_every: 10, curve_n: 20, curve_K: 10,
             checkpoint_every: 10}
  arms:
    - {theta: {name: iwae, K: 4}, phi: {name: iwae_reparam, K: 4}}
    - {theta: {name: coupled_isir, K: 4}, phi: {name: iwae_reparam, K: 4}}
"""


def test_a_train_block_expands_to_train_cells(tmp_path):
    """The train: block (arms × seeds × settings) expands to one ``train`` cell per arm and seed, with no protocols
    and one replicate, the arm's estimators and the block's settings as the cell's parameters (control: changing
    one setting changes every id)."""
    path = tmp_path / "block.yaml"
    path.write_text(BLOCK)
    suite, cells = load_suite(path)
    assert [c.kind for c in cells] == ["train", "train"] and suite.protocols == [] and suite.replicates == 1
    assert [(c.estimator, c.protocols, c.replicates) for c in cells] == [("train", (), 1)] * 2
    assert [c.estimator_params["theta_estimator"] for c in cells] == ["iwae", "coupled_isir"]
    assert all(c.estimator_params["lr"] == 0.02 and c.estimator_params["train_seed"] == 0 for c in cells)
    path.write_text(BLOCK.replace("lr: 0.02", "lr: 0.03"))
    assert {c.cell_id for c in load_suite(path)[1]}.isdisjoint({c.cell_id for c in cells})


@pytest.mark.parametrize("edit, message", [
    (("theta: {name: iwae, K: 4}", "theta: {K: 4}"), r"block\.yaml:15: train\.arms\[0\]\.theta: missing required key 'name'"),
    (("theta: {name: iwae, K: 4}", "theta: {name: iwae, KK: 4}"),
     r"block\.yaml:15: train\.arms\[0\]\.theta_params: unknown parameter 'KK' of theta_estimator 'iwae'; did you mean 'K'"),
    (("phi: {name: iwae_reparam, K: 4}}\n    - {theta: {name: coupled",
      ("phi: {name: iwae_reparam, K: 4}, warmup: {name: iwae, K: 4}}\n    - {theta: {name: coupled")),
     r"block\.yaml:15: train\.arms\[0\]\.warmup: give the warm-up's length as exactly one of steps: n or evals: n"),
    (("train:\n", "protocols: [train]\ntrain:\n"), r"block\.yaml:9: protocols: a suite with a train: block has no protocols:"),
    (("lr: 0.02", "lr: -1"), r"block\.yaml:15: train\.arms\[0\]\.lr: input should be greater than 0"),
])
def test_train_block_errors_are_one_located_line(tmp_path, edit, message):
    path = tmp_path / "block.yaml"
    path.write_text(BLOCK.replace(*edit, 1))
    with pytest.raises(SuiteError, match=message):
        load_suite(path)
