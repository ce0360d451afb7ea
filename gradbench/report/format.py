"""How every number of a run is printed: terminal tables, ``summary.md``, HTML tables, figure data.

One module, no numpy/pandas/torch at import (``gradbench run`` prints with it), so that a value
reads the same wherever it appears:

* :func:`fmt_num` — 3 significant digits, scientific notation outside [1e-3, 1e5): ``0.171``,
  ``1.2e-05``; :func:`fmt_value` adds ``± s.e.`` (2 digits); ``—`` for a missing value;
* :func:`fmt_p` — one rule for p- and q-values: ``0.034`` (3 decimals) from 0.01 up, 2 significant
  digits below (``0.0034``, ``3.1e-07``), ``<1e-300`` for a value that underflowed (a bound, not 0);
* :func:`fmt_interval` ``[lo, hi]``; :func:`fmt_param` ``2.0`` → ``2``;
* :func:`fmt_tail_index` — a Hill index above :data:`TAIL_INDEX_MAX` (or infinite) prints as
  ``> 10``: a light tail, whose Hill estimate grows with R and is no number to read;
* :func:`fmt_band` — quartiles ``[q25, q75]``, printed once when they coincide.

The bias row has one **headline value** (:func:`bias_point`) and one **verdict**
(:func:`bias_verdict`), used by the terminal, the report tables and the bias figure alike:

* headline: the debiased estimate of ‖b‖/‖g*‖ (``rel_bias_debiased``, signed √ of the unbiased
  ‖b‖² estimate), set to 0 when negative (the noise alone explains ‖ḡ − g*‖) and kept inside its
  95 % interval [``rel_bias_ci_low``, ``rel_bias_ci_high``] of ‖b‖/‖g*‖ ≥ 0 — so the printed point
  always lies in the printed interval. Runs without the interval show the plug-in ``rel_bias``.
* verdict, from the multiplicity-corrected decision (the correction's adjusted p-value, else the
  per-row p) at α: ``biased``; ``not shown biased`` with the bias this R cannot resolve (the upper
  end of the per-row interval: the data exclude a larger bias at 95 %, and by construction that end
  is never below the interval's sensitivity at b = 0, :func:`gradbench.stats.bias_norm_interval`);
  ``inconclusive: …`` with the reason (rare states left unsampled, or a per-row interval that
  excludes 0 while the corrected decision does not flag it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ALPHA = 0.01  # the significance level of bias flags when neither --alpha nor the run sets one
P_FLOOR = 1e-300  # a p-value below this underflowed: printed as a bound
TAIL_INDEX_MAX = 10.0  # Hill indices above print as "> 10" (light tail)
MISSING = "—"


@dataclass(frozen=True)
class Correction:
    """A multiple-testing correction of the run's bias tests (one per cell, parameter group 'all')."""

    metric: str  # the adjusted p-value's metric name
    short: str  # column header / symbol
    name: str
    controls: str


CORRECTIONS = {
    "bh": Correction("bias_qvalue", "q", "Benjamini–Hochberg q-value", "false discovery rate"),
    "holm": Correction("bias_pvalue_holm", "p_Holm", "Holm-adjusted p-value", "family-wise error rate"),
}
ADJUSTED_BIAS_METRICS = tuple(c.metric for c in CORRECTIONS.values())
BIAS_P_METRICS = ("bias_pvalue", *ADJUSTED_BIAS_METRICS)


def decision_metric(correction: str, metrics: Any) -> str:
    """The metric that decides a bias verdict: ``correction``'s adjusted p-value when the run has it
    (``metrics`` contains it), else the per-row ``bias_pvalue``."""
    metric = CORRECTIONS[correction].metric
    return metric if metric in metrics else "bias_pvalue"


def decision_symbol(metric: str) -> str:
    """``q``, ``p_Holm`` or ``p``: how the decision's value is named in headers and notes."""
    return next((c.short for c in CORRECTIONS.values() if c.metric == metric), "p")


# -- numbers ------------------------------------------------------------------------------------
def as_float(v: Any) -> float:
    """``v`` as a float; NaN for None, strings and other non-numbers (numpy scalars included)."""
    if v is None or isinstance(v, (str, bytes)):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def missing(v: Any) -> bool:
    """None or a NaN number (a string is a value, not missing)."""
    return v is None or (not isinstance(v, (str, bytes)) and math.isnan(as_float(v)))


def fmt_num(v: Any, digits: int = 3) -> str:
    """``0.171``, ``1.2e-05``, ``3.4e+04``; ``—`` for a missing value."""
    x = as_float(v)
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"  # e.g. the SNR of a noiseless estimator
    if x != 0 and not 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_value(v: Any, se: Any = None) -> str:
    """``0.171 ± 0.0078``; just the value when the s.e. is missing, infinite or zero; ``—`` for NaN."""
    text = fmt_num(v)
    s = as_float(se)
    if text == MISSING or not math.isfinite(s) or s == 0:
        return text
    return f"{text} ± {fmt_num(s, 2)}"


def fmt_p(p: Any) -> str:
    """A p- or q-value: ``0.034``, ``0.0034``, ``3.1e-07``; ``<1e-300`` when it underflowed to zero."""
    x = as_float(p)
    if not math.isfinite(x):
        return MISSING
    if x < P_FLOOR:
        return f"<{P_FLOOR:.0e}"
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2g}"


def fmt_interval(lo: Any, hi: Any) -> str:
    """``[0, 0.0303]``; ``—`` when either end is missing."""
    if missing(lo) or missing(hi):
        return MISSING
    return f"[{fmt_num(lo)}, {fmt_num(hi)}]"


def fmt_param(v: Any) -> str:
    """A parameter value: ``2.0`` → ``2``, ``0.5`` → ``0.5``, strings and booleans as they are
    (parameters come back as floats when a column mixes estimators with and without them)."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()  # numpy scalar
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:g}"
    return str(v)


def fmt_replicates(n: Any) -> str:
    """``R = 10000``; ``R = ?`` when unknown."""
    return f"R = {fmt_param(n)}" if not missing(n) else "R = ?"


def fmt_tail_index(v: Any, se: Any = None) -> str:
    """Hill's tail index ± s.e.; ``> 10`` for an infinite or large index (a light tail: Hill's estimate
    then grows with R and its s.e. means nothing); ``—`` when missing."""
    x = as_float(v)
    if math.isnan(x):
        return MISSING
    if x > TAIL_INDEX_MAX:
        return f"> {TAIL_INDEX_MAX:g}"
    return fmt_value(x, se)


TAIL_INDEX_NOTE = (f"tail index > {TAIL_INDEX_MAX:g}: a light tail (Hill's estimate then grows with R: no number to "
                   "read)")


def fmt_band(lo: Any, hi: Any) -> str:
    """Quartiles over coordinates: ``[0.5, 1.1]``; one number when both print the same (``0.5 (q25 = q75)``)."""
    a, b = fmt_num(lo), fmt_num(hi)
    if MISSING in (a, b):
        return MISSING
    return f"{a} (q25 = q75)" if a == b else f"[{a}, {b}]"


def fmt_seconds(v: Any, se: Any = None) -> str:
    """``250 ± 10 µs``: a duration in the unit that suits its size."""
    x = as_float(v)
    if math.isnan(x):
        return MISSING
    scale, unit = (1e6, "µs") if x < 1e-3 else ((1e3, "ms") if x < 1 else (1.0, "s"))
    return f"{fmt_value(x * scale, as_float(se) * scale)} {unit}"


# -- the bias row -------------------------------------------------------------------------------
def has_interval(m: Mapping[str, Any]) -> bool:
    return not missing(m.get("rel_bias_ci_low")) and not missing(m.get("rel_bias_ci_high"))


def bias_point(m: Mapping[str, Any]) -> float:
    """The headline relative bias of one row (``m``: metric → value): max(0, ``rel_bias_debiased``)
    kept inside [``rel_bias_ci_low``, ``rel_bias_ci_high``] (the plug-in ``rel_bias`` stands in for a
    missing debiased value); without the interval, the plug-in ``rel_bias`` (NaN when missing)."""
    if not has_interval(m):
        return as_float(m.get("rel_bias"))
    lo, hi = as_float(m["rel_bias_ci_low"]), as_float(m["rel_bias_ci_high"])
    d = as_float(m.get("rel_bias_debiased"))
    x = max(d, 0.0) if not math.isnan(d) else as_float(m.get("rel_bias"))
    return lo if math.isnan(x) else min(max(x, lo), hi)


def fmt_bias(m: Mapping[str, Any], se: Any = None) -> str:
    """``0.00617 [0, 0.0303]`` (headline and per-row 95 % interval), or ``0.12 ± 0.01`` (plug-in ± s.e.)
    for a run without the interval."""
    if has_interval(m):
        return f"{fmt_num(bias_point(m))} {fmt_interval(m['rel_bias_ci_low'], m['rel_bias_ci_high'])}"
    return fmt_value(bias_point(m), se)


@dataclass(frozen=True)
class Verdict:
    """``word`` is the verdict: "biased", "not shown biased", "inconclusive" or "—" (no test); ``why`` a short
    reason in parentheses, ``detail`` the numbers after a colon."""

    word: str
    why: str = ""
    detail: str = ""

    @property
    def flagged(self) -> bool:
        return self.word == "biased"

    def __str__(self) -> str:
        mark = "✱ " if self.flagged else ""
        return mark + self.word + (f" ({self.why})" if self.why else "") + (f": {self.detail}" if self.detail else "")


def bias_verdict(m: Mapping[str, Any], decision: str, alpha: float, replicates: Any = None,
                 rare_threshold: float | None = None) -> Verdict:
    """One row's verdict (module docstring). ``m``: metric → value; ``decision``: the metric that decides
    (:func:`decision_metric`); ``rare_threshold``: R·q_min below which the test is inconclusive
    (``gradbench.stats.RARE_STATE_COUNT``; :func:`rare_state_threshold`)."""
    count = as_float(m.get("bias_rare_count"))
    if rare_threshold is not None and math.isfinite(count) and count < rare_threshold:
        return Verdict("inconclusive", "rare states", f"R·q_min = {fmt_num(count, 2)} < {rare_threshold:.2g}, "
                                                      "a rare state is probably unsampled")
    v = as_float(m.get(decision))
    if math.isnan(v):
        return Verdict(MISSING)
    if v < alpha:
        return Verdict("biased")
    lo, hi = as_float(m.get("rel_bias_ci_low")), as_float(m.get("rel_bias_ci_high"))
    if lo == hi:  # a noiseless estimator: the interval is a point (0, or a rounding-level offset the test tolerates)
        return Verdict("not shown biased", "", f"no Monte Carlo noise (interval {fmt_interval(lo, hi)})")
    if lo > 0:
        return Verdict("inconclusive", "interval vs test",
                       f"the per-row interval excludes 0, {decision_symbol(decision)} ≥ α")
    if math.isfinite(hi):
        return Verdict("not shown biased", "", f"< {fmt_num(hi)} unresolvable at {fmt_replicates(replicates)}")
    return Verdict("not shown biased")


def rare_state_threshold() -> float:
    """R·q_min below which a bias test is inconclusive (imported lazily: this module loads no numpy)."""
    from gradbench.stats import RARE_STATE_COUNT

    return RARE_STATE_COUNT


def verdict_note(decision: str, alpha: float, correction: str = "bh") -> str:
    """What the decision value and the verdict column mean, for table notes."""
    if decision in ADJUSTED_BIAS_METRICS:
        c = next(c for c in CORRECTIONS.values() if c.metric == decision)
        rule = (f"{c.short}: {c.name} over the run's bias tests, one per cell ({c.controls}); the verdict is the "
                f"decision, {c.short} < α = {alpha:g} (the interval is per row, not corrected)")
    else:
        rule = (f"p: test of H0 unbiased, per row, no multiplicity correction; the verdict is the decision, "
                f"p < α = {alpha:g}")
    return (f"{rule}. 'not shown biased: < x unresolvable at R': x, the interval's upper end, is the smallest bias "
            "R replicates resolve")


def nothing_flagged_line(rows: list[tuple[str, Mapping[str, Any], Any]], alpha: float, decision: str) -> str:
    """When no row is flagged: one sentence giving the bias each cell's R can resolve (the smallest and
    largest interval upper ends). ``rows``: (label, metrics, replicates). Empty when there is no interval."""
    ends = [(as_float(m.get("rel_bias_ci_high")), label, r) for label, m, r in rows
            if math.isfinite(as_float(m.get("rel_bias_ci_high")))
            and as_float(m.get("rel_bias_ci_high")) > as_float(m.get("rel_bias_ci_low"))]  # noiseless rows: no R
    if not ends:
        return ""
    ends.sort(key=lambda e: e[0])
    (lo, lo_label, lo_r), (hi, hi_label, hi_r) = ends[0], ends[-1]
    span = (f"from < {fmt_num(lo)} ({lo_label}, {fmt_replicates(lo_r)}) to < {fmt_num(hi)} ({hi_label}, "
            f"{fmt_replicates(hi_r)})" if len(ends) > 1 else f"< {fmt_num(lo)} ({lo_label}, {fmt_replicates(lo_r)})")
    return (f"No cell is flagged biased at α = {alpha:g} ({decision_symbol(decision)}). This does not show them "
            f"unbiased: a relative bias below each row's interval upper end is not resolvable, {span}; more "
            "replicates resolve smaller biases (the upper end shrinks about as 1/√R).")
