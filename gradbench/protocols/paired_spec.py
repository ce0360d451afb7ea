"""The ``paired`` protocol's spec: per-replicate summaries as a side table (``paired.parquet``), paired tests
between the cells that share noise as run-level rows (:mod:`gradbench.protocols.paired`), and their views."""

from __future__ import annotations

import math
from typing import Any

from gradbench.protocols.spec import MIN_REPLICATES, ProtocolSpec, Rule, SideTable, TermColumn, TerminalTable, code
from gradbench.report.format import fmt_interval, fmt_num, fmt_p

QUANTITIES = {  # quantity -> (label, meaning); the order of paired.QUANTITIES
    "trace_cov": ("tr Σ", "tr Σ̂, the total variance of one estimate"),
    "work_norm_var": ("tr Σ × cost", "tr Σ̂ × mean cost (work-normalised variance)"),
    "mse": ("MSE", "mean ‖g_r − g*‖² against the shared exact reference"),
    "snr": ("SNR", "global SNR ‖E g‖/√tr Σ (‖ḡ‖² debiased)"),
}

METRICS = {"paired_replicates": "finite replicates of the cell kept for pairing (paired.parquet)"}
for _q, (_label, _what) in QUANTITIES.items():
    METRICS |= {
        f"paired_{_q}_log_ratio": f"log(A/B) of {_what}, paired delta-method s.e. (run-level; B in 'versus')",
        f"paired_{_q}_pvalue": f"two-sided paired bootstrap-t p-value of A = B for {_what} (run-level)",
        **({} if _q == "snr" else
           {f"paired_{_q}_pvalue_flip": f"studentised sign-flip p-value of A = B for {_what} (run-level)"}),
        f"paired_{_q}_qvalue": f"Benjamini–Hochberg q-value of paired_{_q}_pvalue over the run's paired tests",
    }


# ``gradbench compare`` (docs/design.md §9.8): a pair's log ratio L = log(θ_A/θ_B) in two independent runs, tested on
# D = L₂ − L₁ by the two-sample bootstrap-t over both runs' paired.parquet (compare_tests), else by z with both paired
# s.e.s (kind "log_diff"). An increase of the tr Σ / work-normalised variance / MSE ratio means A lost ground against
# B (worse for A, the row's cell); for SNR a decrease does. The p- and q-value rows are test outputs: not tested.
COMPARE_RULES = {f"paired_{q}_log_ratio": Rule("log_diff", -1 if q == "snr" else +1) for q in QUANTITIES}


def ratio_interval(log_ratio: float, se: float, n: float) -> tuple[float, float, float]:
    """(ratio, low, high): exp(L) and its 95 % interval exp(L ± t_{0.975, n−1} s.e.)."""
    if not (math.isfinite(log_ratio) and math.isfinite(se) and n > 1):
        return math.exp(log_ratio) if math.isfinite(log_ratio) else math.nan, math.nan, math.nan
    from scipy import stats

    t = float(stats.t.ppf(0.975, n - 1))
    return math.exp(log_ratio), math.exp(log_ratio - t * se), math.exp(log_ratio + t * se)


def fmt_ratio(m: dict[str, tuple[float, float]], quantity: str) -> str | None:
    """``0.62 [0.51, 0.75]  p 3.1e-06  q 1.2e-05`` of one quantity (None when the pair has no such test)."""
    log_m, p_m, q_m = (f"paired_{quantity}_{s}" for s in ("log_ratio", "pvalue", "qvalue"))
    if log_m not in m:
        return None
    n = m.get("n_replicates", (math.nan, math.nan))[0]
    ratio, low, high = ratio_interval(*m[log_m], n)
    if not math.isfinite(ratio):
        return "—"
    text = f"{fmt_num(ratio)} {fmt_interval(low, high)}  p {fmt_p(m.get(p_m, (math.nan,))[0])}"
    return text + (f"  q {fmt_p(m[q_m][0])}" if q_m in m else "")


def ratio_column(quantity: str) -> TermColumn:
    label = QUANTITIES[quantity][0]
    return TermColumn(f"{label} A/B [95% CI]", lambda m: fmt_ratio(m, quantity),
                      tuple(f"paired_{quantity}_{s}" for s in ("log_ratio", "pvalue", "qvalue")))


def terminal(metrics: set[str], correction: str, alpha: float) -> TerminalTable:
    cols = [ratio_column(q) for q in QUANTITIES if f"paired_{q}_log_ratio" in metrics] or \
        [ratio_column("trace_cov")]
    return TerminalTable(cols, "A/B ratios between cells that share noise (same target, seed, replicates), on "
                               "paired replicates: delta-method 95 % interval of the log ratio, paired bootstrap-t "
                               "p-value, Benjamini–Hochberg q over the run's paired tests. < 1: A has less variance/error "
                               "(SNR: A has less signal per noise). MSE only for a shared exact reference.",
                         per_group=True)


def paired_table(run: Any) -> Any:
    """The report's table of the run's paired tests: per pair (A vs B) and parameter group, each quantity's
    A/B ratio [95 % CI], p and q; None without paired rows."""
    from gradbench.report.tables import Cell, Table

    res = run.results
    if "versus" not in res or not res["versus"].notna().any():
        return None
    rows = res[res["versus"].notna()]
    present = [q for q in QUANTITIES if f"paired_{q}_log_ratio" in set(rows["metric"])]
    label = run.cells.set_index("cell_id")["label"] if "label" in run.cells else None
    n_targets = run.cells["target_label"].nunique() if "target_label" in run.cells else 1
    header = (["target"] if n_targets > 1 else []) + ["A vs B", "group"] + \
        [f"{QUANTITIES[q][0]} A/B [95% CI], p, q" for q in present]
    t = Table("Paired comparisons (estimators sharing noise)", header, text_columns=len(header) - len(present),
              note="Ratios A/B on paired replicates (replicate r of both cells saw the same noise): delta-method 95 % "
                   "interval of the log ratio, paired bootstrap-t p-value, Benjamini–Hochberg q over the run's paired "
                   "tests. "
                   "Global SNR = ‖E g‖/√tr Σ. MSE only against a shared exact reference.")
    targets = run.cells.set_index("cell_id")["target_label"] if "target_label" in run.cells else None
    for (ca, cb, group), g in rows.groupby(["cell_id", "versus", "param_group"], sort=False):
        m = {k: (float(v), float(s)) for k, v, s in zip(g["metric"], g["value"], g["stderr"])}
        m["n_replicates"] = (float(g["n_replicates"].iloc[0]), math.nan) if "n_replicates" in g else (math.nan,) * 2
        name = (f"{label.get(ca, ca)} vs {label.get(cb, cb)}" if label is not None
                else f"{g['estimator'].iloc[0]} vs {cb}")
        ident = ([Cell(str(targets.get(ca, "")))] if n_targets > 1 and targets is not None else [])
        t.rows.append(ident + [Cell(name), Cell(str(group))] + [Cell(fmt_ratio(m, q) or "—") for q in present])
    return t


SPEC = ProtocolSpec(
    "paired", code("gradbench.protocols.paired:paired"),
    "paired tests (tr Σ, work-normalised variance, MSE, global SNR) between estimators sharing noise on a target: "
    "A/B ratio, 95 % CI, p, BH q (run-level; per-replicate summaries in paired.parquet)",
    min_replicates=MIN_REPLICATES,
    # reference_noise; the tail rule (heavy_tail_warning, TAIL_Z)
    modules=("gradbench.protocols.bias", "gradbench.protocols.mse", "gradbench.protocols.variance"),
    metrics=METRICS,
    rules=COMPARE_RULES,
    compare_tests=(code("gradbench.report.compare:paired_log_ratio_test"),),  # supersedes the z where both runs
    # kept paired.parquet
    run_rows=code("gradbench.protocols.paired:pair_rows"),
    side_tables=(SideTable("paired", "paired.parquet", code("gradbench.protocols.paired:side_frame")),),
    terminal=terminal,
    report_tables=(code("gradbench.protocols.paired_spec:paired_table"),),
)
