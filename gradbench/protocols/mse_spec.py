"""The ``mse`` protocol's spec: rows from :mod:`gradbench.protocols.mse` (bias² + variance, per unit of work) and
their views."""

from __future__ import annotations

from typing import Any

from gradbench.protocols.spec import MIN_REPLICATES, FigureSpec, ProtocolSpec, ReportColumn, Rule, TerminalTable, code
from gradbench.terminal import pm_column

METRICS = {
    "bias_sq": "‖ḡ − g*‖² − tr Σ̂/n − tr Var(ĝ*): unbiased estimate of ‖b‖²",
    "mse_debiased": "bias_sq + tr Σ̂: unbiased estimate of E‖g_r − g*‖²",
    "work_norm_mse": "mse_debiased × evals_mean: the MSE per unit of work",
}


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    return TerminalTable([pm_column("bias² ± s.e.", "bias_sq"), pm_column("MSE ± s.e.", "mse_debiased"),
                          pm_column("MSE × evals", "work_norm_mse")],
                         "MSE = ‖b‖² + tr Σ of one estimate against the reference g* (bias² debiased: it may be "
                         "negative); MSE × evals: per unit of work (log-joint evaluations)")


def mse_vs_budget(run: Any) -> Any:
    """The work-normalised MSE per parameter group against budget (matplotlib is imported here, on use)."""
    from gradbench.report.figures import per_group_vs_budget

    return per_group_vs_budget(run, "work_norm_mse", "MSE × cost")


SPEC = ProtocolSpec(
    "mse", code("gradbench.protocols.mse:mse"),
    "bias_sq, mse_debiased, work_norm_mse: bias² + variance of one estimate and per unit of work (needs a reference)",
    min_replicates=MIN_REPLICATES,
    modules=("gradbench.protocols.bias", "gradbench.protocols.variance"),  # reference_noise, the tail rule
    metrics=METRICS,
    terminal=terminal,
    report_columns=(
        ReportColumn("accuracy", "bias_sq", "bias²", heavy_tail=True),
        ReportColumn("cost", "work_norm_mse", "MSE × cost", heavy_tail=True),
        ReportColumn("group", "bias_sq", "bias²", heavy_tail=True),
    ),
    # bias_sq is shown, not tested: the bias protocol tests the bias (rel_bias), here it is one term of the MSE
    rules={"mse_debiased": Rule("ratio", +1), "work_norm_mse": Rule("ratio", +1)},
    figures=(
        FigureSpec("mse_vs_budget", "Work-normalised MSE vs budget",
                   "MSE of one estimate (‖b‖² + tr Σ̂, debiased) times its cost in log-joint evaluations, ±1 s.e. "
                   "(delta method), per parameter group, log-log: lower is better at equal work.",
                   mse_vs_budget),
    ),
)
