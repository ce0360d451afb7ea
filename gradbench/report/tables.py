"""Tables of a run: per estimator × budget, value ± standard error, a bias verdict per row.

A :class:`Table` is plain data (header, rows of :class:`Cell`) rendered to Markdown or HTML. Every
number is formatted by :mod:`gradbench.report.format`, as in the terminal: the bias column is the
headline ‖b‖/‖g*‖ with its per-row 95 % interval (:func:`~gradbench.report.format.bias_point`), and
the verdict column (:func:`~gradbench.report.format.bias_verdict`) is decided by ``bias_qvalue < α``
(Benjamini–Hochberg within the run; ``bias_pvalue_holm < α`` with ``--correction holm``) when the run
has them, else per row by ``bias_pvalue < α`` (the test itself, Hotelling or Šidák max-|z|, is
corrected across coordinates, not across rows).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gradbench.report.data import (
    ADJUSTED_BIAS_METRICS,
    VARIANCE_WARNED_METRICS,
    RunData,
    bias_decision,
    bias_flag_note,
    infinite_variance_cells,
)
from gradbench.report.format import (
    TAIL_INDEX_MAX,
    TAIL_INDEX_NOTE,
    bias_verdict,
    decision_symbol,
    fmt_bias,
    fmt_p,
    fmt_param,
    fmt_tail_index,
    fmt_value,
    nothing_flagged_line,
    rare_state_threshold,
)

__all__ = ["Cell", "Table", "all_tables", "cost_table", "fmt_p", "fmt_value", "group_table", "meeting_table",
           "summary_table"]

VERDICT = "bias_verdict"  # a column computed from the row, not a stored metric
SNR_METRICS = ("snr_q50", "snr_median")  # the same median over coordinates, from the snr / variance protocol
BIAS_EXTRA = ["rel_bias_ci_low", "rel_bias_ci_high", "rel_bias_debiased", "bias_rare_count"]

# (metric, column header) in display order; columns appear only when the run has the metric.
ACCURACY_COLUMNS = [
    ("rel_bias", "rel. bias"),
    ("bias_pvalue", "bias p (per row)"),
    ("bias_qvalue", "bias q"),
    ("bias_pvalue_holm", "bias p (Holm)"),  # shown instead of bias q with --correction holm
    (VERDICT, "verdict"),  # from the decision's value at α (format.bias_verdict)
    ("tail_index", "tail index"),
    ("trace_cov", "tr Σ̂"),
    ("snr_median", "SNR (median)"),  # snr_q50 (snr protocol) where present, else snr_median (variance protocol)
    ("mse", "MSE"),
]
COST_COLUMNS = [
    ("evals_mean", "cost (evals)"),
    ("work_norm_var", "tr Σ̂ × cost"),
    ("tau_mean", "τ mean"),
    ("tau_q50", "τ q50"),
    ("tau_q99", "τ q99"),
    ("n_censored", "censored"),
    ("seconds_per_estimate", "s / estimate"),
    ("evals_per_second", "evals / s"),
    ("work_norm_var_seconds", "tr Σ̂ × s"),
]
GROUP_COLUMNS = [
    ("rel_bias", "rel. bias"), ("bias_pvalue", "bias p (per row)"), ("trace_cov", "tr Σ̂"), ("mean_var", "mean var"),
    ("snr_median", "SNR (median)"), ("mse", "MSE"),
]


@dataclass(frozen=True)
class Cell:
    text: str
    flag: str | None = None  # css class / markdown emphasis: "bad", "ok"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    note: str = ""
    text_columns: int = 0  # leading identity columns (target, estimator, …): left-aligned in HTML

    def to_markdown(self) -> str:
        def md(c: Cell) -> str:
            t = c.text.replace("|", "\\|")
            return f"**{t}**" if c.flag == "bad" else t

        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(md(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        def cls(i: int, flag: str | None = None) -> str:
            names = " ".join(n for n in ("txt" if i < self.text_columns else None, flag) if n)
            return f' class="{names}"' if names else ""

        head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(self.header))
        body = []
        for r in self.rows:
            tds = "".join(f"<td{cls(i, c.flag)}>{html.escape(c.text)}</td>" for i, c in enumerate(r))
            body.append(f"<tr>{tds}</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (f"<h3>{html.escape(self.title)}</h3>{note}<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table></div>")


def _metrics(r: pd.Series) -> dict[str, float]:
    """The row's metric values (``<metric>`` columns of :meth:`RunData.wide`) as a plain mapping."""
    return {k: r[k] for k in r.index if isinstance(k, str) and "__" not in k}


def _snr(r: pd.Series) -> tuple[float, float]:
    """The SNR median of a row: ``snr_q50`` where present, else ``snr_median`` (with its s.e.)."""
    for m in SNR_METRICS:
        v = r.get(m)
        if v is not None and not np.isnan(v):  # ∞ (a noiseless estimator) is a value, printed as the terminal does
            return float(v), r.get(m + "__se")
    return math.nan, math.nan


def _row_cells(r: pd.Series, columns: list[tuple[str, str]], alpha: float, decision: str = "bias_pvalue",
               heavy: bool = False) -> list[Cell]:
    """``heavy``: the cell's variance may be infinite; its variance-type values get ``†`` and no s.e."""
    out = []
    m = _metrics(r)
    verdict = bias_verdict(m, decision, alpha, r.get("n_replicates"), rare_state_threshold())
    for metric, _ in columns:
        v = r.get(metric)
        if heavy and metric in VARIANCE_WARNED_METRICS:
            out.append(Cell(fmt_value(v) + " †"))  # † marks it (a red flag is reserved for bias)
        elif metric == VERDICT:
            out.append(Cell(str(verdict), "bad" if verdict.flagged else None))
        elif metric in ("bias_pvalue",) + ADJUSTED_BIAS_METRICS:
            out.append(Cell(fmt_p(v), "bad" if metric == decision and verdict.flagged else None))
        elif metric == "rel_bias":
            out.append(Cell(fmt_bias(m, r.get("rel_bias__se"))))
        elif metric == "tail_index":
            out.append(Cell(fmt_tail_index(v, r.get("tail_index__se"))))
        elif metric == "snr_median":
            out.append(Cell(fmt_value(*_snr(r))))
        elif metric == "n_censored":
            out.append(Cell("—" if v is None or not np.isfinite(v) else str(int(v)), "bad" if v and v > 0 else None))
        else:
            out.append(Cell(fmt_value(v, r.get(metric + "__se"))))
    return out


def _ident(r: pd.Series, n_targets: int) -> list[Cell]:
    budget = f"{r['budget_param']}={fmt_param(r['budget'])}" if r["budget_param"] else "—"
    cells = [Cell(r["target_label"])] if n_targets > 1 else []
    n = fmt_param(r["n_replicates"]) if "n_replicates" in r else "—"
    if r.get("n_nonfinite"):
        bad = Cell(f"{n} (+{fmt_param(r['n_nonfinite'])} non-finite)", "bad")
        return cells + [Cell(r["series"]), Cell(budget), bad]
    return cells + [Cell(r["series"]), Cell(budget), Cell(n)]


def _sorted_cells(df: pd.DataFrame, run: RunData) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(dict.fromkeys(run.cells["series"]))}
    torder = {t: i for i, t in enumerate(dict.fromkeys(run.cells["target_label"]))}
    return df.assign(_s=df["series"].map(order), _t=df["target_label"].map(torder)).sort_values(
        ["_t", "_s", "budget"], na_position="first")


def _present(run: RunData, columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The columns the run has values for (the SNR column for either SNR metric, the verdict with a bias test)."""
    def has(m: str) -> bool:
        return run.has(*SNR_METRICS) if m == "snr_median" else run.has("bias_pvalue") if m == VERDICT else run.has(m)
    return [(m, h) for m, h in columns if has(m)]


def _loaded(metrics: list[str]) -> list[str]:
    """The stored metrics :meth:`RunData.wide` must load to fill ``metrics`` (columns)."""
    out = [m for m in metrics if m not in (VERDICT, "snr_median")]
    out += list(SNR_METRICS) if "snr_median" in metrics else []
    out += BIAS_EXTRA if "rel_bias" in metrics or VERDICT in metrics else []
    return list(dict.fromkeys(out))


def _cell_table(run: RunData, title: str, columns: list[tuple[str, str]], note: str) -> Table | None:
    decision = bias_decision(run)
    cols = [(m, h) for m, h in _present(run, columns) if m not in ADJUSTED_BIAS_METRICS or m == decision]
    if not cols:
        return None
    if run.has("rel_bias_ci_low") and run.has("rel_bias_ci_high"):
        cols = [(m, "rel. bias [per-row 95% CI]" if m == "rel_bias" else h) for m, h in cols]
    cols = [(m, f"verdict ({decision_symbol(decision)} < {run.alpha:g})" if m == VERDICT else h) for m, h in cols]
    loaded = _loaded([m for m, _ in cols])
    wide = _sorted_cells(run.wide(loaded), run)
    wide = wide[wide[[m for m in loaded if m in wide]].notna().any(axis=1)]  # cells without any of these metrics
    n_targets = wide["target_label"].nunique()
    header = (["target"] if n_targets > 1 else []) + ["estimator", "budget", "replicates"] + [h for _, h in cols]
    t = Table(title, header, note=note, text_columns=header.index("budget") + 1)
    heavy = infinite_variance_cells(run)
    if heavy and any(m in VARIANCE_WARNED_METRICS for m, _ in cols):
        t.note += HEAVY_NOTE
    for _, r in wide.iterrows():
        t.rows.append(_ident(r, n_targets) + _row_cells(r, cols, run.alpha, decision, r["cell_id"] in heavy))
    if any(m == "tail_index" for m, _ in cols) and (wide["tail_index"] > TAIL_INDEX_MAX).any():
        t.note += " " + TAIL_INDEX_NOTE[0].upper() + TAIL_INDEX_NOTE[1:] + "."
    if any(m == VERDICT for m, _ in cols):
        verdicts = [bias_verdict(_metrics(r), decision, run.alpha, r.get("n_replicates"), rare_state_threshold())
                    for _, r in wide.iterrows()]
        if verdicts and not any(v.flagged for v in verdicts):
            line = nothing_flagged_line([(str(r["label"]), _metrics(r), r.get("n_replicates"))
                                         for _, r in wide.iterrows()], run.alpha, decision)
            t.note += (" " + line) if line else ""
    return t


HEAVY_NOTE = (" † the one-sided 95 % lower bound of the cell's tail index (Hill) is ≤ 2: the variance may be infinite, so this "
              "value is not a reliable estimate and has no standard error.")


def summary_table(run: RunData) -> Table | None:
    """Bias, variance, SNR and MSE per estimator × budget (parameter group 'all')."""
    flag = " " + bias_flag_note(run)
    note = "Parameter group 'all'. Values are ± 1 standard error." + (flag if run.has("bias_pvalue") else "")
    if run.has("rel_bias_ci_high"):
        note += (" Relative bias: the debiased estimate of ‖b‖/‖g*‖ (≥ 0, kept inside its interval) and its per-row "
                 "95 % confidence interval (not corrected for multiplicity: the verdict is the decision; the plug-in "
                 "‖ḡ − g*‖ is noise-inflated and not shown). 'not shown biased: < x unresolvable at R': x is the "
                 "interval's upper end, a smaller bias cannot be told from 0 with R replicates.")
    return _cell_table(run, "Accuracy per estimator × budget", ACCURACY_COLUMNS, note)


def cost_table(run: RunData) -> Table | None:
    """Cost, work-normalised variance, meeting times and wall-clock per estimator × budget."""
    return _cell_table(run, "Cost per estimator × budget", COST_COLUMNS,
                       "Cost in log-joint evaluations per estimate; τ in kernel iterations; wall-clock comparable "
                       "only within one device. Values are ± 1 standard error where stored.")


def group_table(run: RunData) -> Table | None:
    groups = [g for g in run.param_groups if g != "all"]
    cols = _present(run, GROUP_COLUMNS)
    if not groups or not cols:
        return None
    n_targets = run.cells["target_label"].nunique()
    header = (["target"] if n_targets > 1 else []) + ["estimator", "budget", "replicates", "group"]
    header += [h for _, h in cols]
    t = Table("Per parameter group", header, note="Values are ± 1 standard error; bias p is per row and uncorrected "
              "(the q-values and verdicts cover parameter group 'all' only); a bias p below α is shown in red.",
              text_columns=header.index("group") + 1)
    frames = [_sorted_cells(run.wide(_loaded([m for m, _ in cols]), g), run).assign(group=g) for g in groups]
    order = {g: i for i, g in enumerate(groups)}
    rows = pd.concat(frames).assign(_g=lambda d: d["group"].map(order))
    heavy = infinite_variance_cells(run)
    if heavy and any(m in VARIANCE_WARNED_METRICS for m, _ in cols):
        t.note += HEAVY_NOTE
    for _, r in rows.sort_values(["_t", "_s", "budget", "_g"], na_position="first").iterrows():
        if all(not np.isfinite(r.get(m, np.nan)) for m in _loaded([m for m, _ in cols])):
            continue
        t.rows.append(_ident(r, n_targets) + [Cell(r["group"])] + _row_cells(r, cols, run.alpha, "bias_pvalue",
                                                                            r["cell_id"] in heavy))
    return t


def meeting_table(run: RunData) -> Table | None:
    """Raw meeting times per coupled cell: replicates, censored, mean ± s.e., quantiles, max."""
    if run.meeting is None or run.meeting.empty:
        return None
    m = run.meeting.drop(columns=[c for c in ("estimator",) if c in run.meeting]).merge(run.cells, on="cell_id")
    n_targets = run.cells["target_label"].nunique()
    header = (["target"] if n_targets > 1 else []) + ["estimator", "budget", "replicates", "censored", "τ mean",
                                                      "τ q50", "τ q90", "τ q99", "τ max"]
    t = Table("Meeting times (raw τ per replicate)", header, text_columns=header.index("budget") + 1,
              note="Censored replicates hit the iteration cap; they count at the cap here (so mean and quantiles are "
                   "lower bounds when any are censored).")
    for cell_id, grp in m.groupby("cell_id", sort=False):
        r = run.cells.set_index("cell_id").loc[cell_id].copy()
        r["cell_id"] = cell_id
        tau = grp["tau"].to_numpy(float)
        cens = int(grp["censored"].sum()) if "censored" in grp else 0
        q = np.quantile(tau, [0.5, 0.9, 0.99])
        ident = _ident(r, n_targets)
        ident[-1] = Cell(str(len(tau)))
        t.rows.append(ident + [Cell(str(cens), "bad" if cens else None),
                               Cell(fmt_value(tau.mean(), tau.std(ddof=1) / math.sqrt(len(tau)) if len(tau) > 1
                                              else None)),
                               Cell(fmt_param(q[0])), Cell(fmt_param(q[1])), Cell(fmt_param(q[2])),
                               Cell(fmt_param(tau.max()))])
    return t


def all_tables(run: RunData) -> list[Table]:
    return [t for t in (summary_table(run), cost_table(run), group_table(run), meeting_table(run)) if t is not None]
