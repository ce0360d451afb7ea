"""The ``meeting`` protocol's spec: rows from :mod:`gradbench.protocols.meeting`, the raw meeting times as a side
table (``meeting_times.parquet``), and their views."""

from __future__ import annotations

from typing import Any

from gradbench.protocols.spec import (
    MIN_REPLICATES,
    FigureSpec,
    ProtocolSpec,
    ReportColumn,
    Rule,
    SideTable,
    TerminalTable,
    code,
)
from gradbench.terminal import count_column, pm_column

METRICS = {
    "n_censored": "replicates whose chains had not met at the cap",
    "censored_frac": "n_censored / R, binomial s.e.",
    "tau_mean": "mean meeting time over uncensored replicates",
    "tau_q50": "median meeting time (censored as +∞), bootstrap s.e.",
    "tau_q90": "90 % quantile of τ",
    "tau_q99": "99 % quantile of τ",
    "tau_max": "largest τ (+∞ if any censored)",
    "tail_rate": "λ of P(τ > t) ≈ C e^{−λt}, censored geometric MLE",
}


def meeting_times(cell: Any, sample: Any) -> Any:
    """Raw τ per replicate (diagnostics ``tau``, ``censored``) as a frame, or None without a ``tau`` diagnostic."""
    if "tau" not in sample.diagnostics:
        return None
    import numpy as np
    import pandas as pd
    import torch

    tau = sample.diagnostics["tau"].cpu().numpy()
    censored = sample.diagnostics.get("censored", torch.zeros(len(tau), dtype=torch.bool)).cpu().numpy()
    return pd.DataFrame({"cell_id": cell.cell_id, "estimator": cell.estimator, "replicate": np.arange(len(tau)),
                         "tau": tau, "censored": censored})


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    cols = [pm_column("τ mean ± s.e.", "tau_mean"), pm_column("τ q50", "tau_q50"), pm_column("τ q90", "tau_q90"),
            pm_column("τ q99", "tau_q99"), count_column("censored", "n_censored")]
    if "tail_rate" in metrics:
        cols.append(pm_column("tail rate", "tail_rate"))
    return TerminalTable(cols, "meeting time τ of the coupled chains, in iterations")


SPEC = ProtocolSpec(
    "meeting", code("gradbench.protocols.meeting:meeting"),
    "tau_mean, tau_q50/q90/q99, tau_max, n_censored, tail_rate (geometric fit of P(τ > t)) of coupled chains", False,
    min_replicates=MIN_REPLICATES,
    metrics=METRICS,
    side_tables=(SideTable("meeting", "meeting_times.parquet", meeting_times),),
    terminal=terminal,
    report_columns=(
        ReportColumn("cost", "tau_mean", "τ mean"),
        ReportColumn("cost", "tau_q50", "τ q50"),
        ReportColumn("cost", "tau_q99", "τ q99"),
        ReportColumn("cost", "n_censored", "censored", "count"),
    ),
    report_tables=(code("gradbench.report.tables:meeting_table"),),
    rules={"tau_mean": Rule("ratio", +1)},
    compare_tests=(code("gradbench.report.compare:raw_tau_test"),),  # raw τ in both runs: supersedes tau_mean's
    figures=(
        FigureSpec("meeting_times", "Meeting times",
                   "Coupled estimators: ECDF of the meeting time τ (left) and its survival P(τ > t) on a log axis "
                   "(right; a straight line is a geometric tail), one curve per budget. Shaded: the simultaneous 95 % "
                   "Dvoretzky–Kiefer–Wolfowitz band, ±√(log(2/0.05)/(2n)) around the curve for n replicates (on the "
                   "log axis its lower part is cut at the bottom of the panel). Censored replicates (runs "
                   "that hit the iteration cap) are counted at the cap and marked.",
                   code("gradbench.report.figures:meeting_times")),
        FigureSpec("meeting_summary", "Meeting-time summary",
                   "Mean and quantiles of the meeting time τ against budget (±1 s.e. where stored).",
                   code("gradbench.report.figures:meeting_summary")),
    ),
)
