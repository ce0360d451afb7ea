"""training with a discrete latent space: a ``train`` cell on ``sbn`` trains a fresh Bernoulli encoder with a
score-function φ-estimator (vimco, disarm) and evaluates log p(x) exactly by enumeration of the 2ᵏ states."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import log_expit, logsumexp

from gradbench.families.bernoulli import BernoulliEncoder
from gradbench.models.sbn import SBN
from gradbench.run.compute import target_for
from gradbench.run.plan import load_suite
from gradbench.seeding import make_generator
from gradbench.training import loop
from gradbench.training import params as training_params
from gradbench.training.cell import train

Z = 3.2905  # two-sided standard-normal quantile at α = 0.001

SUITE = """\
name: tiny-sbn-train
seed: 0
target_seed: 0
replicates: 1
targets:
  - model: sbn
    params: {{layers: [5], conditionals: linear}}
    data: {{name: digits, n: 64, binarize: stochastic_fixed, seed: 0}}
    proposal: {{family: bernoulli_encoder}}
train:
  seeds: 0
  settings: {{budget: steps, batch_size: 16, lr: {lr}, test_n: 60, train_eval_n: 30, curve_n: 20, curve_K: 10,
             checkpoint_every: 100}}
  arms:
    - {{theta: {{name: iwae, K: 4}}, phi: {{name: vimco, K: 4}},
       settings: {{budget_value: 40, encoder_hidden: [], curve_every: 20}}}}
    - {{theta: {{name: coupled_isir, K: 4}}, phi: {{name: disarm}},
       settings: {{budget_value: 10, encoder_hidden: [6], curve_every: 5}}}}
"""


def cells(tmp_path: Path, lr: float = 0.05):
    path = tmp_path / f"sbn-{lr}.yaml"
    path.write_text(SUITE.format(lr=f"{lr:.10f}"))  # YAML reads 1e-09 as a string
    return load_suite(path)[1]


def test_enumerated_log_px_equals_a_numpy_sum_over_states():
    """log p(x_n) of a linear SBN against Σ over all 2ᵏ states written out in numpy/scipy; leaving out one state
    (the negative control) changes it."""
    model = SBN(5, (3,))
    theta = model.init_params(make_generator(1), torch.float64)
    x = (torch.rand(4, 5, generator=make_generator(2), dtype=torch.float64) < 0.5).double()
    got = loop.enumerated_log_px(model, theta, x).numpy()
    a, W, b = (theta[k].numpy() for k in ("prior_logits", "x_W", "x_b"))
    xs = x.numpy()
    terms = []
    for z in itertools.product([0.0, 1.0], repeat=3):
        z = np.array(z)
        logits = W @ z + b
        terms.append((z * log_expit(a) + (1 - z) * log_expit(-a)).sum()
                     + (xs * log_expit(logits) + (1 - xs) * log_expit(-logits)).sum(-1))
    terms = np.array(terms)  # [8, N]
    np.testing.assert_allclose(got, logsumexp(terms, axis=0), rtol=0, atol=1e-12)
    assert np.abs(got - logsumexp(terms[1:], axis=0)).min() > 1e-6


def test_sbn_training_improves_the_exact_held_out_likelihood(tmp_path):
    """40 steps of IWAE θ + VIMCO φ (Bernoulli encoder) raise the exact test log p(x) above the initial model's by more
    than Z s.e. of the per-point paired difference (α = 0.001); with lr = 1e-9 (the negative control) they do not."""
    gains = {}
    for lr in (0.05, 1e-9):
        cell = cells(tmp_path, lr)[0]
        target = target_for(cell)
        rows, curves = train(cell, target)
        p = training_params.TrainParams(**cell.estimator_params)
        base = loop.derive_seed(cell.target.noise_seed(0), training_params.TRAIN, p.train_seed)
        init = loop.initial_state(target, p, base)
        assert isinstance(init.family, BernoulliEncoder) and init.family.hidden is None
        test_x = loop.held_out_data(cell, target)
        v0 = loop.enumerated_log_px(init.model, init.theta, test_x)
        final = rows.set_index("metric").loc["test_loglik"]
        assert final["method"] == "exact (enumeration of 2^5 states)" and len(curves) == 40
        # the trained model's per-point values are not stored; the paired s.e. is bounded by the two s.e.s
        se = math.hypot(float(final["stderr"]), float(v0.std() / math.sqrt(len(v0))))
        gains[lr] = (final["value"] - float(v0.mean())) / se
    assert gains[0.05] > Z and abs(gains[1e-9]) < Z, gains


def test_a_coupled_theta_estimator_with_disarm_trains_a_one_layer_encoder(tmp_path):
    cell = cells(tmp_path)[1]
    rows, curves = train(cell, target_for(cell))
    table = rows.set_index("metric")
    assert np.isfinite(table.loc["test_loglik", "value"]) and table.loc["nonfinite_steps", "value"] == 0
    assert curves["tau"].notna().all() and (curves["tau"] >= 1).all() and table.loc["train_tau_mean", "value"] >= 1
    assert curves["test_estimate"].notna().sum() == 2


def test_a_bernoulli_encoder_has_at_most_one_hidden_layer(tmp_path):
    cell = cells(tmp_path)[0]
    p = training_params.TrainParams(**{**cell.estimator_params, "encoder_hidden": [4, 4]})
    with pytest.raises(ValueError, match="at most one hidden layer"):
        loop.fresh_encoder(SBN(64, (5,)), 64, p)
