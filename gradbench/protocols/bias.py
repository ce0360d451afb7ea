"""Bias against the target's reference gradient g* (docs/design.md §9.2).

Per parameter group, with d = ḡ − g* and b = E[g_r] − g*:
* ``bias_norm`` ‖d‖ and ``rel_bias`` ‖d‖/‖g*‖, the plug-in values with delta-method standard
  errors. They are inflated by noise, E‖d‖² = ‖b‖² + tr Cov(d): for an unbiased estimator they
  show the noise floor, not a bias — read the interval below instead.
* ``rel_bias_debiased``: signed √ of the unbiased estimate ‖d‖² − tr Σ̂/n − tr Σ_ref of ‖b‖²,
  divided by ‖g*‖ (negative when the noise alone explains ‖d‖); no s.e. (NaN), see the interval.
* ``rel_bias_ci_low``, ``rel_bias_ci_high``: a 95 % confidence interval for ‖b‖/‖g*‖ with correct
  coverage at and near zero bias (:func:`gradbench.stats.bias_norm_interval`).
* ``bias_pvalue`` (H0: unbiased; the test and its branch are in ``method``, see
  :func:`gradbench.stats.bias_test`) and ``bias_zmax`` (largest coordinate z-score).
The reference's uncertainty enters as its full covariance (``Reference.cov``/``n``: a two-sample
problem), else its per-coordinate ``stderr``, plus any quadrature/enumeration ``error`` bound.
Test statistics and interval ends carry no standard error (NaN).

Rare states (discrete targets that report q_min, :func:`gradbench.protocols.measure.rare_value_probability`): when
R·q_min < log(10³) the test is inconclusive (:func:`gradbench.stats.rare_state_verdict`): ``bias_pvalue``
keeps its number, its ``method`` starts with "inconclusive: rare states, R·q_min = …, need R ≥ …", and
reports show "inconclusive", never "biased". ``bias_rare_count`` = R·q_min is a row of every such cell.

Multiple testing (:func:`multiplicity_rows`, added by ``runner.collect`` over the whole run):
``bias_qvalue`` (Benjamini–Hochberg q-value, false discovery rate) and ``bias_pvalue_holm`` (Holm
step-down adjusted p-value, family-wise error). The family is every ``bias_pvalue`` row of the run
with ``param_group == "all"`` (one test per cell) except the inconclusive ones (their q and Holm p are
NaN, and ``method`` says how many were left out); per-group p-values are not corrected. Reports flag
a cell as biased when q < α. For an estimated reference the
relative values divide by the estimated ‖g*‖ (its error is neglected there).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.stats import (
    INCONCLUSIVE,
    RARE_STATE_COUNT,
    ReferenceNoise,
    bh_qvalues,
    bias_norm_interval,
    bias_test,
    holm_adjust,
    influence_se,
    rare_state_verdict,
    sample_noise,
)

CI_LEVEL = 0.95


def reference_noise(reference: Reference) -> ReferenceNoise:
    """The reference's uncertainty as float64 numpy (see :class:`gradbench.stats.ReferenceNoise`).

    An estimated reference without ``cov`` (P above ``references.estimated.MAX_COV_DIM``) contributes its
    ``stderr``² as a diagonal marked ``estimated_diagonal``: its noise is correlated off the diagonal, unknown,
    so the bias test uses max-t, not Hotelling (docs/design.md §8.2). A quadrature/enumeration ``error`` bound
    is a deterministic per-coordinate bound and is not marked."""
    def np64(t):
        return None if t is None else t.detach().cpu().double().numpy()

    var = None
    diagonal_only = reference.cov is None and reference.stderr is not None
    if diagonal_only:
        var = np64(reference.stderr) ** 2
    if reference.error is not None:
        var = np64(reference.error) ** 2 + (0.0 if var is None else var)
    if reference.cov is not None and reference.n is not None:
        return ReferenceNoise(np64(reference.cov), int(reference.n), var)
    return ReferenceNoise(None, None, var, diagonal_only)


def bias(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    if reference is None:
        return []
    fs = FiniteSample.of(sample)
    ref = reference.value.detach().cpu().double().numpy()
    noise = reference_noise(reference)
    rows: list[Row] = []
    n = fs.G.shape[0]
    for i, (name, sl) in enumerate(group_slices(sample.layout).items()):
        G, g_star, nz = fs.G[:, sl], ref[sl], noise.sliced(sl)
        ref_var = np.zeros(g_star.shape)
        if nz.cov is not None and nz.n is not None:
            ref_var = ref_var + np.diag(nz.cov) / nz.n
        if nz.var is not None:
            ref_var = ref_var + nz.var
        diff = G.mean(0) - g_star if n else np.full_like(g_star, math.nan)
        norm = float(np.linalg.norm(diff))
        if norm > 0 and n > 1:
            u = diff / norm
            se = math.hypot(influence_se((G - G.mean(0)) @ u), math.sqrt(float(u**2 @ ref_var)))
        else:
            se = math.sqrt(G.var(0, ddof=1).sum() / n) if n > 1 else math.nan
        ref_norm = float(np.linalg.norm(g_star))
        rel = (lambda v, ref_norm=ref_norm: v / ref_norm if ref_norm > 0 else math.nan)
        # one decomposition for the test and the interval; none below 2 replicates (no spread: both return NaN)
        dn = sample_noise(G, nz, ctx.eps) if n > 1 else None
        test = bias_test(G, g_star, ctx.eps, np.random.default_rng([ctx.seed, i, 0]), nz, atoms=ctx.atoms, dn=dn)
        ci_method = f"{CI_LEVEL:.0%} Neyman interval of ||b||/||g*|| (generalised chi-square inversion)"
        rows += [
            row(name, "bias_norm", norm, se),
            row(name, "rel_bias", rel(norm), rel(se), "plug-in ||mean - g*|| / ||g*||: noise-inflated"),
        ]
        if nz.estimated_diagonal and nz.var is not None:  # docs/design.md §8.2: V's eigenvalues are not known
            ci_method += ("; conservative: the reference's covariance is known on its diagonal only, its noise is "
                          "taken as one component carrying its whole trace (the heaviest-tailed case)")
        inconclusive = rare_state_verdict(ctx.rare_q_min, n)  # the interval shares the test's blind spot
        if inconclusive:
            ci_method = f"{inconclusive}; {ci_method}"
        if n > 1:
            bn = bias_norm_interval(G, g_star, ctx.eps, np.random.default_rng([ctx.seed, i, 1]), nz, CI_LEVEL, dn=dn)
            rows += [
                row(name, "rel_bias_debiased", rel(bn.signed_sqrt), math.nan, "signed sqrt of the unbiased ||b||^2"),
                row(name, "rel_bias_ci_low", rel(bn.ci_low), math.nan, ci_method),
                row(name, "rel_bias_ci_high", rel(bn.ci_high), math.nan, ci_method),
            ]
        method = f"{inconclusive}; {test.method}" if inconclusive else test.method
        rows += [
            row(name, "bias_pvalue", test.pvalue, math.nan, method),
            row(name, "bias_zmax", test.zmax, math.nan, method),
        ]
        if ctx.rare_q_min is not None:
            rows.append(row(name, "bias_rare_count", n * ctx.rare_q_min, math.nan,
                            f"R·q_min: expected draws of the rarest value; below log(10³) = {RARE_STATE_COUNT:.3g} "
                            "the bias test is inconclusive"))
    return rows


def is_inconclusive(method: object) -> bool:
    """Whether a ``bias_pvalue`` row's ``method`` marks its test inconclusive (:func:`gradbench.stats.rare_state_verdict`)."""
    return isinstance(method, str) and method.startswith(INCONCLUSIVE)


MULTIPLICITY_FAMILY = "all"  # param_group whose bias_pvalue rows form the corrected family


def multiplicity_rows(table: pd.DataFrame) -> pd.DataFrame:
    """``bias_qvalue`` and ``bias_pvalue_holm`` rows for the family of the run's ``bias_pvalue`` rows of
    param_group ``all`` (each copies its p-value row's cell columns); empty when there are none."""
    if table.empty or "metric" not in table:
        return table.iloc[0:0]
    fam = table[(table["metric"] == "bias_pvalue") & (table["param_group"] == MULTIPLICITY_FAMILY)]
    if fam.empty:
        return table.iloc[0:0]
    out = np.array([is_inconclusive(m) for m in fam["method"]]) if "method" in fam else np.zeros(len(fam), bool)
    p = np.where(out, math.nan, fam["value"].to_numpy(float))  # inconclusive tests are not in the family
    m = int(np.isfinite(p).sum())
    left_out = f"; {int(out.sum())} inconclusive (rare states) left out" if out.any() else ""
    where = f"over the run's {m} bias tests (bias_pvalue rows of param_group '{MULTIPLICITY_FAMILY}'{left_out})"
    bh = fam.assign(metric="bias_qvalue", value=bh_qvalues(p), stderr=math.nan,
                    method=f"Benjamini-Hochberg q-value {where}")
    holm = fam.assign(metric="bias_pvalue_holm", value=holm_adjust(p), stderr=math.nan,
                      method=f"Holm-adjusted p-value {where}")
    return pd.concat([bh, holm], ignore_index=True)
