"""The ``bias`` protocol's spec: rows from :mod:`gradbench.protocols.bias`, the run's multiplicity family, and
its views (terminal table, report columns, compare rule, figure)."""

from __future__ import annotations

from typing import Any

from gradbench.protocols.spec import MIN_REPLICATES, FigureSpec, ProtocolSpec, ReportColumn, Rule, TerminalTable, code
from gradbench.report.format import (
    bias_verdict,
    decision_metric,
    decision_symbol,
    nothing_flagged_line,
    rare_state_threshold,
    verdict_note,
)
from gradbench.terminal import bias_column, p_column, verdict_column

METRICS = {
    "bias_norm": "‖ḡ − g*‖, plug-in (noise-inflated), delta-method s.e.",
    "rel_bias": "‖ḡ − g*‖/‖g*‖, plug-in (noise-inflated)",
    "rel_bias_debiased": "signed √ of the unbiased estimate of ‖b‖², over ‖g*‖",
    "rel_bias_ci_low": "lower end of the 95 % interval of ‖b‖/‖g*‖",
    "rel_bias_ci_high": "upper end of the 95 % interval of ‖b‖/‖g*‖",
    "bias_pvalue": "p-value of H0: unbiased (test in method)",
    "bias_zmax": "largest coordinate z-score",
    "bias_rare_count": "R·q_min: expected draws of the rarest value (discrete targets)",
    "bias_qvalue": "Benjamini–Hochberg q-value over the run's bias tests (run-level)",
    "bias_pvalue_holm": "Holm-adjusted p-value over the run's bias tests (run-level)",
}


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    """Headline ‖b‖/‖g*‖ [interval], the decision value (q, p_Holm or p) and the verdict; a footer when nothing
    is flagged (what the run could not resolve)."""
    decision = decision_metric(correction, metrics)
    interval = {"rel_bias_ci_low", "rel_bias_ci_high"} <= metrics
    head = "rel. bias [per-row 95% CI]" if interval else "rel. bias ± s.e."
    what = ("‖b‖/‖g*‖ (debiased, ≥ 0) and its per-row 95 % interval" if interval
            else "plug-in ‖ḡ − g*‖/‖g*‖ ± 1 s.e. (noise-inflated)")
    symbol = decision_symbol(decision)

    def footer(rows: list[tuple[str, dict[str, float], Any]]) -> str:
        verdicts = [bias_verdict(m, decision, alpha, r, rare_state_threshold()) for _, m, r in rows]
        if any(v.flagged for v in verdicts):
            return ""
        return nothing_flagged_line(rows, alpha, decision) or ""

    return TerminalTable([bias_column(head), p_column(symbol, decision),
                          verdict_column(f"verdict ({symbol} < {alpha:g})", decision, alpha)],
                         f"{what}. {verdict_note(decision, alpha, correction)}", text_last=True, footer=footer)


BIAS_EXTRA = ("rel_bias_ci_low", "rel_bias_ci_high", "rel_bias_debiased", "bias_rare_count")  # what the bias cell reads

SPEC = ProtocolSpec(
    "bias", code("gradbench.protocols.bias:bias"),
    "bias_norm, rel_bias, bias_pvalue, bias_zmax against the reference gradient", min_replicates=MIN_REPLICATES,
    metrics=METRICS,
    run_rows=code("gradbench.protocols.bias:multiplicity_rows"),
    terminal=terminal,
    report_columns=(
        ReportColumn("accuracy", "rel_bias", "rel. bias", "bias", loads=BIAS_EXTRA),
        ReportColumn("accuracy", "bias_pvalue", "bias p (per row)", "p"),
        ReportColumn("accuracy", "bias_qvalue", "bias q", "adjusted_p"),
        ReportColumn("accuracy", "bias_pvalue_holm", "bias p (Holm)", "adjusted_p"),  # instead of q with --correction holm
        ReportColumn("accuracy", "bias_verdict", "verdict", "verdict", needs=("bias_pvalue",), loads=BIAS_EXTRA),
        ReportColumn("group", "rel_bias", "rel. bias", "bias", loads=BIAS_EXTRA),
        ReportColumn("group", "bias_pvalue", "bias p (per row)", "p"),
    ),
    rules={"rel_bias": Rule("bias", +1)},
    figures=(
        FigureSpec("bias_vs_budget", "Bias vs budget",
                   "Relative bias ‖b‖/‖g*‖ against each estimator's budget, log-log: the headline value the tables "
                   "print (the debiased estimate, ≥ 0, kept inside its interval) with its per-row 95 % interval as "
                   "the error bar (runs without the interval: the plug-in ‖ḡ − g*‖/‖g*‖ ± 1 s.e.). A downward "
                   "triangle: the estimate is 0 and the bias lies below the interval's upper end, drawn there. Filled "
                   "markers: the row's verdict is biased (the adjusted p-value of the report's correction < α when "
                   "the run has it: bias_qvalue, Benjamini–Hochberg, by default; bias_pvalue_holm with --correction "
                   "holm; else bias_pvalue < α); hollow: not shown biased or inconclusive. Solid lines join only neighbouring filled points: a hollow point is at "
                   "the noise floor, and a line through such points would show the floor falling with the budget, not "
                   "the bias. A run with a single budget is drawn as a dot plot, one position per estimator. Dotted lines: weighted "
                   "log-log fit over the biased points (weights from the interval's half-width / 1.96), slope ± s.e. "
                   "in the legend, one per target (O(1/K) bias gives slope −1). Right: the verdict's p- or q-value "
                   "with α marked. Lower error bars stop at a tenth of the value on log axes.",
                   code("gradbench.report.figures:bias_vs_budget")),
    ),
)
