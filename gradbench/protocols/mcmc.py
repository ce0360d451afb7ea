"""MCMC diagnostics of estimators that run Markov chains (uivi's reverse chain, vcd), from the GradSample's
per-replicate diagnostics: ``acceptance`` (mean Metropolis acceptance rate) and ``ess`` (effective sample size of the
chain, ``estimators.semi_implicit.chain_ess``). Each is reported as its mean over the finite replicates with the
standard error of that mean; a diagnostic the estimator does not report (or reports as NaN: no chain ran) is skipped.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench.core import GradSample, Reference
from gradbench.protocols import ProtocolContext, Row, row

DIAGNOSTICS = ("acceptance", "ess")


def mcmc(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    rows: list[Row] = []
    for name in DIAGNOSTICS:
        if name not in sample.diagnostics:
            continue
        v = sample.diagnostics[name].detach().cpu().double().numpy()
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
        rows.append(row("all", name, float(v.mean()), se, "mean over replicates"))
    return rows
