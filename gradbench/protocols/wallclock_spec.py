"""The ``wallclock`` protocol's spec: rows from :mod:`gradbench.protocols.wallclock` and their views."""

from __future__ import annotations

from gradbench.protocols.spec import FigureSpec, ProtocolSpec, ReportColumn, Rule, TerminalTable, code
from gradbench.terminal import pm_column, seconds_column

METRICS = {
    "seconds_per_estimate": "median wall-clock seconds per estimate",
    "seconds_per_estimate_iqr": "its inter-quartile range over timed calls",
    "evals_per_second": "median log-joint evaluations per second",
    "evals_per_second_iqr": "its inter-quartile range over timed calls",
    "work_norm_var_seconds": "tr Σ̂ × seconds_per_estimate",
}


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    return TerminalTable([seconds_column("per estimate", "seconds_per_estimate"), pm_column("evals / s", "evals_per_second")],
                         "median wall-clock; comparable only within one device")


SPEC = ProtocolSpec(
    "wallclock", code("gradbench.protocols.wallclock:wallclock"),
    "seconds_per_estimate, evals_per_second (median, IQR), work_norm_var_seconds; device, torch/CUDA, threads", False,
    timed=True,
    metrics=METRICS,
    terminal=terminal,
    report_columns=(
        ReportColumn("cost", "seconds_per_estimate", "s / estimate"),
        ReportColumn("cost", "evals_per_second", "evals / s"),
        ReportColumn("cost", "work_norm_var_seconds", "tr Σ̂ × s"),
    ),
    rules={"seconds_per_estimate": Rule("ratio", +1), "work_norm_var_seconds": Rule("ratio", +1),
           "evals_per_second": Rule("ratio", -1)},
    figures=(
        FigureSpec("wallclock", "Wall-clock",
                   "Wall-clock seconds per estimate (median, error bar from the stored s.e.) and throughput in "
                   "log-joint evaluations per second. Comparable only within one device.",
                   code("gradbench.report.figures:wallclock")),
    ),
)
