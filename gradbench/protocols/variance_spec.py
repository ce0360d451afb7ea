"""The ``variance`` protocol's spec: rows from :mod:`gradbench.protocols.variance` and their views."""

from __future__ import annotations

from gradbench.protocols.spec import MIN_REPLICATES, FigureSpec, ProtocolSpec, ReportColumn, Rule, TerminalTable, code
from gradbench.report.format import TAIL_INDEX_NOTE
from gradbench.terminal import HEAVY_NOTE, pm_column, tail_column

METRICS = {
    "evals_mean": "log-joint evaluations per estimate (all replicates)",
    "tail_index": "Hill's tail index of ‖g_r − median‖ (group all)",
    "trace_cov": "tr Σ̂, the total variance of one estimate",
    "mean_var": "tr Σ̂ / P",
    "snr_median": "median over coordinates of |ḡ_j|/s_j (bootstrap s.e.)",
    "work_norm_var": "tr Σ̂ × evals_mean",
    "mse": "mean_r ‖g_r − g*‖², unbiased for ‖b‖² + tr Σ (needs a reference)",
}
SNR_METRICS = ("snr_q50", "snr_median")  # the same median over coordinates, from the snr / variance protocol


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    cols = [pm_column("tr Σ̂ ± s.e.", "trace_cov"), pm_column("evals", "evals_mean"),
            pm_column("tr Σ̂ × evals", "work_norm_var")]
    if "tail_index" in metrics:
        cols.append(tail_column("tail index"))
    return TerminalTable(cols, "variance of one estimate; evals: log-joint evaluations per estimate" + (
        f"; tail index (Hill) ± s.e.; {HEAVY_NOTE}; {TAIL_INDEX_NOTE}" if "tail_index" in metrics else ""))


def _snr_column(table: str) -> ReportColumn:
    """snr_q50 (snr protocol) where present, else snr_median (this protocol)."""
    return ReportColumn(table, "snr_median", "SNR (median)", "snr", needs=SNR_METRICS, loads=SNR_METRICS)


SPEC = ProtocolSpec(
    "variance", code("gradbench.protocols.variance:variance"),
    "trace_cov, mean_var, snr_median, mse, evals_mean, work_norm_var", min_replicates=MIN_REPLICATES,
    metrics=METRICS,
    terminal=terminal,
    report_columns=(
        ReportColumn("accuracy", "tail_index", "tail index", "tail"),
        ReportColumn("accuracy", "trace_cov", "tr Σ̂", heavy_tail=True),
        _snr_column("accuracy"),
        ReportColumn("accuracy", "mse", "MSE", heavy_tail=True),
        ReportColumn("cost", "evals_mean", "cost (evals)"),
        ReportColumn("cost", "work_norm_var", "tr Σ̂ × cost", heavy_tail=True),
        ReportColumn("group", "trace_cov", "tr Σ̂", heavy_tail=True),
        ReportColumn("group", "mean_var", "mean var", heavy_tail=True),
        _snr_column("group"),
        ReportColumn("group", "mse", "MSE", heavy_tail=True),
    ),
    rules={"trace_cov": Rule("ratio", +1), "mse": Rule("ratio", +1), "work_norm_var": Rule("ratio", +1),
           "evals_mean": Rule("ratio", +1), "snr_median": Rule("ratio", -1)},
    figures=(
        FigureSpec("variance_vs_budget", "Variance vs budget", code("gradbench.report.figures:VARIANCE_CAPTION"),
                   code("gradbench.report.figures:variance_vs_budget")),
        FigureSpec("snr_vs_budget", "Signal-to-noise ratio vs budget",  # also the snr protocol's quartiles
                   "Per-coordinate SNR |E ĝⱼ|/sd(ĝⱼ), median over the coordinates of each parameter group (±1 "
                   "bootstrap s.e.; a band is the coordinates' interquartile range when the run has it), log-log.",
                   code("gradbench.report.figures:snr_vs_budget")),
        FigureSpec("efficiency_frontier", "Efficiency frontier", code("gradbench.report.figures:frontier_caption"),
                   code("gradbench.report.figures:efficiency_frontier")),
    ),
)
