"""Variance, signal-to-noise and cost of one estimate (docs/design.md §9.3).

Per parameter group, from n finite replicates g_r with mean ḡ and q_r = ‖g_r − ḡ‖²:
* ``trace_cov`` tr Σ̂ = Σ_r q_r / (n−1), s.e. from the influence values q_r;
* ``mean_var`` tr Σ̂ / P;
* ``snr_median`` median_j |ḡ_j| / sd_j (Rainforth et al. 2018), bootstrap s.e.;
* ``mse`` mean_r ‖g_r − g*‖², an unbiased estimate of ‖b‖² + tr Σ (needs a reference);
* ``work_norm_var`` tr Σ̂ × evals_mean, s.e. by the delta method on the joint influence.
For group ``all`` only: ``tail_index``, Hill's estimate of the tail index of ‖g_r − m‖ (m the
coordinate-wise median) with its s.e. (:func:`gradbench.stats.hill_tail_index`, k = ⌈√n⌉). When its
one-sided 95 % lower bound α̂ − 1.645 s.e. is ≤ 2 the variance may be infinite: ``trace_cov``,
``mean_var``, ``mse`` and ``work_norm_var`` (every group) then carry a ``warning`` and their s.e.
must not be read as error bars. And ``evals_mean``, log-joint evaluations per estimate (single data point
evaluations) over *all* replicates, including non-finite/censored ones, with its s.e.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.stats import bootstrap_snr_medians, hill_tail_index, influence_se

TAIL_Z = 1.645  # one-sided 95 %


def variance(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    fs = FiniteSample.of(sample)
    n = fs.G.shape[0]
    if n < 2:
        return []
    groups = group_slices(sample.layout)
    ref = None if reference is None else reference.value.detach().cpu().double().numpy()
    # Cost counts every replicate, also those excluded as non-finite (e.g. censored coupled chains):
    # their work was done. The joint influence of cost and trace pairs them on finite replicates.
    all_cost = sample.cost.detach().cpu().double().numpy()
    evals = float(all_cost.mean())
    psi_evals = fs.cost - float(fs.cost.mean())
    snr = bootstrap_snr_medians(fs.G, groups, np.random.default_rng(ctx.seed))
    rows: list[Row] = [row("all", "evals_mean", evals, influence_se(all_cost))]
    tail, tail_se, k = hill_tail_index(np.linalg.norm(fs.G - np.median(fs.G, axis=0), axis=1))
    heavy = math.isfinite(tail) and not tail - TAIL_Z * (tail_se if math.isfinite(tail_se) else 0.0) > 2
    warn = (f"tail index {tail:.2g} ± {tail_se:.2g} (Hill): the variance may be infinite; "
            "this value and its s.e. are not reliable") if heavy else ""
    rows.append(row("all", "tail_index", tail, tail_se, f"Hill, k={k} of {n}", warn))
    for name, sl in groups.items():
        G = fs.G[:, sl]
        P = G.shape[1]
        q = ((G - G.mean(0)) ** 2).sum(1)
        trace = float(q.sum() / (n - 1))
        psi_trace = q * n / (n - 1) - trace
        trace_se = influence_se(psi_trace)
        rows += [
            row(name, "trace_cov", trace, trace_se, "", warn),
            row(name, "mean_var", trace / P, trace_se / P, "", warn),
            row(name, "snr_median", *snr[name], "bootstrap(200)"),
            row(name, "work_norm_var", trace * evals, influence_se(evals * psi_trace + trace * psi_evals), "", warn),
        ]
        if ref is not None:
            err = ((G - ref[sl]) ** 2).sum(1)
            rows.append(row(name, "mse", float(err.mean()), influence_se(err), "", warn))
    return rows
