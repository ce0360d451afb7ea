"""Variance, signal-to-noise and cost of one estimate (DESIGN §5).

Per parameter group, from n finite replicates g_r with mean ḡ and q_r = ‖g_r − ḡ‖²:
* ``trace_cov`` tr Σ̂ = Σ_r q_r / (n−1), s.e. from the influence values q_r;
* ``mean_var`` tr Σ̂ / P;
* ``snr_median`` median_j |ḡ_j| / sd_j (Rainforth et al. 2018), bootstrap s.e.;
* ``mse`` mean_r ‖g_r − g*‖², an unbiased estimate of ‖b‖² + tr Σ (needs a reference);
* ``work_norm_var`` tr Σ̂ × evals_mean, s.e. by the delta method on the joint influence.
For group ``all`` only: ``evals_mean``, log-joint evaluations per estimate (single data point
evaluations) over *all* replicates, including non-finite/censored ones, with its s.e.
"""

from __future__ import annotations


import numpy as np

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.stats import bootstrap_snr_medians, influence_se


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
    for name, sl in groups.items():
        G = fs.G[:, sl]
        P = G.shape[1]
        q = ((G - G.mean(0)) ** 2).sum(1)
        trace = float(q.sum() / (n - 1))
        psi_trace = q * n / (n - 1) - trace
        trace_se = influence_se(psi_trace)
        rows += [
            row(name, "trace_cov", trace, trace_se),
            row(name, "mean_var", trace / P, trace_se / P),
            row(name, "snr_median", *snr[name], "bootstrap(200)"),
            row(name, "work_norm_var", trace * evals, influence_se(evals * psi_trace + trace * psi_evals)),
        ]
        if ref is not None:
            err = ((G - ref[sl]) ** 2).sum(1)
            rows.append(row(name, "mse", float(err.mean()), influence_se(err)))
    return rows
