"""Mean squared error of one estimate, split into bias² and variance, and per unit of work.

Per parameter group, from n finite replicates g_r with mean ḡ, d = ḡ − g*, q_r = ‖g_r − ḡ‖², tr Σ̂ = Σ q_r/(n−1),
e_r = ‖g_r − g*‖² and v* = tr Var(ĝ*) the reference's own variance (0 for an exact reference):

* ``bias_sq`` — ‖d‖² − tr Σ̂/n − v*, the unbiased estimate of ‖b‖² = ‖E g_r − g*‖² (E‖d‖² = ‖b‖² + tr Σ/n + v*);
  negative when the noise alone explains d. s.e. by the delta method: influence 2dᵀ(g_r − ḡ) − ψ_r/n with
  ψ_r = q_r n/(n−1) − tr Σ̂ (the influence of tr Σ̂), plus the reference's 4 Σ_j d_j² var(ĝ*_j). Near b = 0 the
  distribution of ‖d‖² is far from normal: read the bias protocol's interval for ‖b‖ there.
* ``mse_debiased`` — mean_r e_r − v* = bias_sq + tr Σ̂ (an algebraic identity: mean_r e_r = ‖d‖² + (n−1)/n tr Σ̂),
  the unbiased estimate of MSE = E‖g_r − g*‖² = ‖b‖² + tr Σ; e_r is an unbiased estimate of the MSE per
  replicate, so s.e.² = Var(e_r)/n (influence e_r − ē), plus 4 Σ_j d_j² var(ĝ*_j) for the reference.
* ``work_norm_mse`` — mse_debiased × evals_mean, the MSE of an estimator given one log-joint evaluation's worth of
  work per unit (for an unbiased estimator, the work-normalised variance of Glynn & Whitt 1992); s.e. by the
  delta method on the joint influence evals·(e_r − ē) + MSE·(c_r − c̄) of cost c_r and error, plus the reference
  term × evals. Cost counts every replicate (non-finite ones too), as in ``variance``.
Without a reference there are no rows. With one exact reference (v* = 0) ``mse_debiased`` equals ``variance``'s
``mse``. Every s.e. needs a finite fourth moment of ‖g_r‖: when Hill's tail index of ‖g_r − median‖ has a one-sided
95 % lower bound ≤ 2 (the variance may be infinite; the rule and the warning of ``variance``'s ``tail_index``) every
row carries that warning.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.protocols.bias import reference_noise
from gradbench.protocols.variance import TAIL_Z
from gradbench.stats import hill_tail_index, influence_se


def heavy_tail_warning(G: np.ndarray) -> str:
    """``variance``'s warning when the replicates' tail index may be ≤ 2 (Hill, one-sided 95 %), else ""."""
    tail, tail_se, _ = hill_tail_index(np.linalg.norm(G - np.median(G, axis=0), axis=1))
    if not (math.isfinite(tail) and not tail - TAIL_Z * (tail_se if math.isfinite(tail_se) else 0.0) > 2):
        return ""
    return (f"tail index {tail:.2g} ± {tail_se:.2g} (Hill): the variance may be infinite; "
            "this value and its s.e. are not reliable")


def mse(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    fs = FiniteSample.of(sample)
    n = fs.G.shape[0]
    if reference is None or n < 2:
        return []
    ref = reference.value.detach().cpu().double().numpy()
    noise = reference_noise(reference)
    all_cost = sample.cost.detach().cpu().double().numpy()
    evals = float(all_cost.mean())
    psi_evals = fs.cost - float(fs.cost.mean())
    warn = heavy_tail_warning(fs.G)
    rows: list[Row] = []
    for name, sl in group_slices(sample.layout).items():
        G, g_star, nz = fs.G[:, sl], ref[sl], noise.sliced(sl)
        ref_var = np.zeros(g_star.shape)
        if nz.cov is not None and nz.n is not None:
            ref_var = ref_var + np.diag(nz.cov) / nz.n
        if nz.var is not None:
            ref_var = ref_var + nz.var
        v_star = float(ref_var.sum())
        mean = G.mean(0)
        d = mean - g_star
        centred = G - mean
        q = (centred ** 2).sum(1)
        trace = float(q.sum() / (n - 1))
        psi_trace = q * n / (n - 1) - trace
        ref_term = 4.0 * float(d ** 2 @ ref_var)  # variance contributed by the reference's error
        bias_sq = float(d @ d) - trace / n - v_star
        bias_se = math.sqrt(influence_se(2.0 * centred @ d - psi_trace / n) ** 2 + ref_term)
        err = ((G - g_star) ** 2).sum(1)
        value = float(err.mean()) - v_star
        psi_err = err - float(err.mean())
        value_se = math.sqrt(influence_se(psi_err) ** 2 + ref_term)
        work_se = math.sqrt(influence_se(evals * psi_err + value * psi_evals) ** 2 + evals ** 2 * ref_term)
        rows += [
            row(name, "bias_sq", bias_sq, bias_se, "||mean - g*||^2 - tr S/n - tr Var(g*): unbiased for ||b||^2", warn),
            row(name, "mse_debiased", value, value_se, "mean_r ||g_r - g*||^2 - tr Var(g*) = bias_sq + tr S", warn),
            row(name, "work_norm_mse", value * evals, work_se, "mse_debiased x evals_mean (delta method)", warn),
        ]
    return rows
