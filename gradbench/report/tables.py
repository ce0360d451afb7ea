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

from gradbench.protocols.spec import ReportColumn
from gradbench.report.data import (
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
           "report_columns", "summary_table"]

VERDICT = "bias_verdict"  # a column computed from the row, not a stored metric
SNR_METRICS = ("snr_q50", "snr_median")  # the same median over coordinates, from the snr / variance protocol


def report_columns(table: str) -> list[ReportColumn]:
    """The columns of one per-cell table (``accuracy``, ``cost`` or ``group``): every registered protocol's
    :attr:`~gradbench.protocols.spec.ProtocolSpec.report_columns` for it, in registry order. A column appears
    only when the run has one of its metrics."""
    from gradbench import registry

    return [c for spec in registry.PROTOCOLS.values() for c in spec.report_columns if c.table == table]


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


def _row_cells(r: pd.Series, columns: list[tuple[ReportColumn, str]], alpha: float, decision: str = "bias_pvalue",
               heavy: bool = False) -> list[Cell]:
    """``heavy``: the cell's variance may be infinite; its variance-type values get ``†`` and no s.e."""
    out = []
    m = _metrics(r)
    verdict = bias_verdict(m, decision, alpha, r.get("n_replicates"), rare_state_threshold())
    for col, _ in columns:
        metric, kind = col.metric, col.kind
        v = r.get(metric)
        if heavy and col.heavy_tail:
            out.append(Cell(fmt_value(v) + " †"))  # † marks it (a red flag is reserved for bias)
        elif kind == "verdict":
            out.append(Cell(str(verdict), "bad" if verdict.flagged else None))
        elif kind in ("p", "adjusted_p"):
            out.append(Cell(fmt_p(v), "bad" if metric == decision and verdict.flagged else None))
        elif kind == "bias":
            out.append(Cell(fmt_bias(m, r.get(metric + "__se"))))
        elif kind == "tail":
            out.append(Cell(fmt_tail_index(v, r.get(metric + "__se"))))
        elif kind == "snr":
            out.append(Cell(fmt_value(*_snr(r))))
        elif kind == "count":
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


def _present(run: RunData, columns: list[ReportColumn]) -> list[tuple[ReportColumn, str]]:
    """(column, header) for the columns the run has values for (:attr:`ReportColumn.shown_if`)."""
    return [(c, c.header) for c in columns if run.has(*c.shown_if)]


def _loaded(columns: list[ReportColumn]) -> list[str]:
    """The stored metrics :meth:`RunData.wide` must load to fill ``columns``."""
    out = [c.metric for c in columns if c.kind not in ("verdict", "snr")]
    out += [m for c in columns for m in c.loads]
    return list(dict.fromkeys(out))


def _cell_table(run: RunData, title: str, table: str, note: str) -> Table | None:
    decision = bias_decision(run)
    cols = [(c, h) for c, h in _present(run, report_columns(table)) if c.kind != "adjusted_p" or c.metric == decision]
    if not cols:
        return None
    if run.has("rel_bias_ci_low") and run.has("rel_bias_ci_high"):
        cols = [(c, "rel. bias [per-row 95% CI]" if c.kind == "bias" else h) for c, h in cols]
    cols = [(c, f"verdict ({decision_symbol(decision)} < {run.alpha:g})" if c.kind == "verdict" else h) for c, h in cols]
    loaded = _loaded([c for c, _ in cols])
    wide = _sorted_cells(run.wide(loaded), run)
    wide = wide[wide[[m for m in loaded if m in wide]].notna().any(axis=1)]  # cells without any of these metrics
    n_targets = wide["target_label"].nunique()
    header = (["target"] if n_targets > 1 else []) + ["estimator", "budget", "replicates"] + [h for _, h in cols]
    t = Table(title, header, note=note, text_columns=header.index("budget") + 1)
    heavy = infinite_variance_cells(run)
    if heavy and any(c.heavy_tail for c, _ in cols):
        t.note += HEAVY_NOTE
    for _, r in wide.iterrows():
        t.rows.append(_ident(r, n_targets) + _row_cells(r, cols, run.alpha, decision, r["cell_id"] in heavy))
    if any(c.kind == "tail" for c, _ in cols) and (wide["tail_index"] > TAIL_INDEX_MAX).any():
        t.note += " " + TAIL_INDEX_NOTE[0].upper() + TAIL_INDEX_NOTE[1:] + "."
    if any(c.kind == "verdict" for c, _ in cols):
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
    return _cell_table(run, "Accuracy per estimator × budget", "accuracy", note)


def cost_table(run: RunData) -> Table | None:
    """Cost, work-normalised variance, meeting times and wall-clock per estimator × budget."""
    return _cell_table(run, "Cost per estimator × budget", "cost",
                       "Cost in log-joint evaluations per estimate; τ in kernel iterations; wall-clock comparable "
                       "only within one device. Values are ± 1 standard error where stored.")


def group_table(run: RunData) -> Table | None:
    groups = [g for g in run.param_groups if g != "all"]
    cols = _present(run, report_columns("group"))
    if not groups or not cols:
        return None
    n_targets = run.cells["target_label"].nunique()
    header = (["target"] if n_targets > 1 else []) + ["estimator", "budget", "replicates", "group"]
    header += [h for _, h in cols]
    t = Table("Per parameter group", header, note="Values are ± 1 standard error; bias p is per row and uncorrected "
              "(the q-values and verdicts cover parameter group 'all' only); a bias p below α is shown in red.",
              text_columns=header.index("group") + 1)
    frames = [_sorted_cells(run.wide(_loaded([c for c, _ in cols]), g), run).assign(group=g) for g in groups]
    order = {g: i for i, g in enumerate(groups)}
    rows = pd.concat(frames).assign(_g=lambda d: d["group"].map(order))
    heavy = infinite_variance_cells(run)
    if heavy and any(c.heavy_tail for c, _ in cols):
        t.note += HEAVY_NOTE
    for _, r in rows.sort_values(["_t", "_s", "budget", "_g"], na_position="first").iterrows():
        if all(not np.isfinite(r.get(m, np.nan)) for m in _loaded([c for c, _ in cols])):
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
    """The per-cell tables, then the protocols' own tables (:attr:`ProtocolSpec.report_tables`), then the cell kinds'
    (``CellKind.report_tables``, e.g. training runs' final and paired tables)."""
    from gradbench import registry
    from gradbench.protocols.spec import resolve

    own = [resolve(fn)(run) for spec in registry.PROTOCOLS.values() for fn in spec.report_tables]
    own += [t for kind in registry.CELL_KINDS.values() if kind.report_tables is not None for t in kind.report_tables(run)]
    return [t for t in (summary_table(run), cost_table(run), group_table(run), *own) if t is not None]
