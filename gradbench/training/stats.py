"""Training runs compared across seeds: each arm's mean ± s.e. over its training seeds, and paired tests between arms.

The arms of a training study share their seeds' common random numbers (initialisation, minibatches, binarisations,
step seeds: gradbench.training.loop), so two arms are compared on the differences d_s of their final metrics over
the seeds they share: mean ± s.e., Student t with n − 1 degrees of freedom, and the exact sign-flip permutation
p-value (Fisher 1935; Good 2005, *Permutation, Parametric and Bootstrap Tests of Hypotheses*; docs/design.md §6.10).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pandas as pd

PAIR_COLUMNS = ["target_id", "estimator.theta_estimator", "estimator.theta_params", "estimator.phi_estimator",
                "estimator.phi_params", "estimator.budget", "estimator.budget_value"]


def pair_label(r: Any) -> str:
    """``θ-estimator(params) / φ-estimator(params)``, with the warm-up in front (``iwae(K=8) ×2000 steps → …``) when the
    cell has one."""
    label = (f"{r['estimator.theta_estimator']}{_short(r['estimator.theta_params'])} / "
             f"{r['estimator.phi_estimator']}{_short(r['estimator.phi_params'])}")
    warm = r.get("estimator.warmup_theta_estimator") if hasattr(r, "get") else None
    if isinstance(warm, str) and warm:
        label = (f"{warm}{_short(r.get('estimator.warmup_theta_params', {}))} ×{r['estimator.warmup_value']:g} "
                 f"{r['estimator.warmup_budget']} → {label}")
    return label


ARM_SETTINGS = ("estimator.lr", "estimator.lr_schedule", "estimator.batch_size", "estimator.budget",
                "estimator.budget_value")


def pair_labels(t: pd.DataFrame) -> pd.Series:
    """:func:`pair_label` of each row, plus ``, lr=…`` (etc.) for each training setting of :data:`ARM_SETTINGS` that
    varies within the target (arms that differ only in learning rate or budget are distinct arms, never pooled)."""
    return t.apply(pair_label, axis=1) + arm_settings(t)


def arm_settings(t: pd.DataFrame) -> pd.Series:
    """``, lr=…, budget=…`` per row: the training settings of :data:`ARM_SETTINGS` that vary within the target ('' when
    none does); arms are compared (paired tests) only within the same settings."""
    out = pd.Series("", index=t.index)
    for col in ARM_SETTINGS:
        if col not in t:
            continue
        varies = t.groupby("target_id")[col].transform(lambda c: c.astype(str).nunique() > 1).astype(bool)
        out = out.where(~varies, out + f", {col.removeprefix('estimator.')}=" + t[col].astype(str))
    return out


def _short(params: Any) -> str:
    d = json.loads(params) if isinstance(params, str) else dict(params)
    return "(" + ", ".join(f"{k}={v}" for k, v in d.items()) + ")" if d else ""


def summarize(table: pd.DataFrame, metrics: tuple[str, ...] = ("test_loglik", "train_loglik", "test_iwae_bound",
                                                                "train_iwae_bound", "test_iwae_bound_refit", "steps",
                                                                "evals", "seconds", "seconds_per_step", "censored_steps",
                                                                "train_tau_mean")) -> pd.DataFrame:
    """Mean ± s.e. over training seeds (replicates) of each metric, per estimator pair: s.e. = sd / √n_seeds."""
    t = table[table["metric"].isin(metrics)].copy()
    t["pair"] = pair_labels(t)
    g = t.groupby(["target_id", "pair", "estimator.budget", "estimator.budget_value", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", sd="std", n_seeds="count").reset_index()
    out["stderr"] = out["sd"] / np.sqrt(out["n_seeds"])
    return out.drop(columns="sd")


def paired_test(table: pd.DataFrame, pair_a: str, pair_b: str, metric: str = "test_loglik") -> dict[str, float]:
    """Paired comparison of two estimator pairs over the training seeds they share (common random numbers):
    d_s = metric_b(s) − metric_a(s); mean d̄ ± s.e., Student t (n − 1 d.f.) two-sided p, and the exact
    sign-flip permutation p-value (all 2^n sign patterns of d_s, two-sided on |Σ d_s|; n ≤ 16)."""
    t = table[table["metric"] == metric].copy()
    t["pair"] = pair_labels(t)
    a = t[t["pair"] == pair_a].set_index(["target_id", "estimator.train_seed"])["value"]
    b = t[t["pair"] == pair_b].set_index(["target_id", "estimator.train_seed"])["value"]
    common = a.index.intersection(b.index)
    d = (b.loc[common] - a.loc[common]).to_numpy(dtype=np.float64)
    if len(d) < 2:
        raise ValueError(f"paired_test: {pair_a!r} and {pair_b!r} share {len(d)} training seeds; need ≥ 2")
    return paired_differences(d)


def paired_differences(d: np.ndarray) -> dict[str, float]:
    """The statistics of :func:`paired_test` from the paired differences d_s themselves."""
    from scipy import stats

    n = len(d)
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    p_t = float(2 * stats.t.sf(abs(mean / se), n - 1)) if se > 0 else (0.0 if mean != 0 else 1.0)
    if n > 16:
        raise ValueError("paired_test: the exact permutation test enumerates 2^n sign patterns; n ≤ 16")
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    null = np.abs(signs @ np.abs(d))
    p_perm = float(np.mean(null >= abs(d.sum()) - 1e-12 * max(1.0, abs(d.sum()))))
    return {"n_seeds": n, "mean_diff": mean, "stderr": se, "t": mean / se if se > 0 else float("inf"),
            "p_t": p_t, "p_perm": p_perm}
