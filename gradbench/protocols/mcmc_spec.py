"""The ``mcmc`` protocol's spec: rows from :mod:`gradbench.protocols.mcmc` (chain diagnostics) and their views."""

from __future__ import annotations

from gradbench.protocols.spec import MIN_REPLICATES, FigureSpec, ProtocolSpec, ReportColumn, Rule, TerminalTable, code
from gradbench.terminal import pm_column

METRICS = {
    "acceptance": "mean Metropolis acceptance rate of the estimator's chain, over replicates",
    "ess": "mean effective sample size of the estimator's chain, over replicates",
}


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    return TerminalTable([pm_column("acceptance ± s.e.", "acceptance"), pm_column("ESS ± s.e.", "ess")],
                         "the estimator's inner Markov chain: mean over replicates of its acceptance rate and "
                         "effective sample size")


SPEC = ProtocolSpec(
    "mcmc", code("gradbench.protocols.mcmc:mcmc"),
    "acceptance, ess: mean ± s.e. over replicates of an estimator's HMC acceptance rate and chain effective sample size",
    False, min_replicates=MIN_REPLICATES,
    metrics=METRICS,
    terminal=terminal,
    report_columns=(
        ReportColumn("cost", "acceptance", "acceptance"),
        ReportColumn("cost", "ess", "ESS"),
    ),
    rules={"ess": Rule("ratio", -1)},  # acceptance has no better direction (its optimum is in between)
    figures=(
        FigureSpec("mcmc_vs_budget", "Chain diagnostics vs budget",
                   "The estimator's inner Markov chain: mean acceptance rate and effective sample size per estimate "
                   "(±1 s.e. over replicates) against budget.", code("gradbench.report.figures:mcmc_vs_budget")),
    ),
)
