"""Bias against the target's reference gradient g* (DESIGN §5).

Per parameter group: ``bias_norm`` ‖ḡ − g*‖, ``rel_bias`` ‖ḡ − g*‖/‖g*‖ (both with delta-method
standard errors, including the reference's own s.e. when it is estimated), ``bias_pvalue``
(H0: unbiased; the test used is in ``method``) and ``bias_zmax`` (largest coordinate z-score).
Test statistics are exact functions of the sample and carry no standard error (NaN).
Note ‖ḡ − g*‖ is inflated by noise: E‖ḡ − g*‖² = ‖b‖² + tr Σ / n.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.stats import bias_test, influence_se


def bias(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    if reference is None:
        return []
    fs = FiniteSample.of(sample)
    ref = reference.value.detach().cpu().double().numpy()
    ref_se = None if reference.stderr is None else reference.stderr.detach().cpu().double().numpy()
    rows: list[Row] = []
    n = fs.G.shape[0]
    for name, sl in group_slices(sample.layout).items():
        G, g_star = fs.G[:, sl], ref[sl]
        ref_var = None if ref_se is None else ref_se[sl] ** 2
        diff = G.mean(0) - g_star if n else np.full_like(g_star, math.nan)
        norm = float(np.linalg.norm(diff))
        if norm > 0 and n > 1:
            u = diff / norm
            se = math.hypot(influence_se((G - G.mean(0)) @ u), 0.0 if ref_var is None else math.sqrt(float(u**2 @ ref_var)))
        else:
            se = math.sqrt(G.var(0, ddof=1).sum() / n) if n > 1 else math.nan
        ref_norm = float(np.linalg.norm(g_star))
        test = bias_test(G, g_star, ref_var, ctx.eps)
        rows += [
            row(name, "bias_norm", norm, se),
            row(name, "rel_bias", norm / ref_norm if ref_norm > 0 else math.nan, se / ref_norm if ref_norm > 0 else math.nan),
            row(name, "bias_pvalue", test.pvalue, math.nan, test.method),
            row(name, "bias_zmax", test.zmax, math.nan, test.method),
        ]
    return rows
