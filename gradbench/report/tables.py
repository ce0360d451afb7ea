"""Tables of a run: per estimator × budget, value ± standard error, bias flagged at α.

A :class:`Table` is plain data (header, rows of :class:`Cell`) rendered to Markdown or HTML.
The bias flag is ``bias_qvalue < α`` (Benjamini–Hochberg within the run, the statistics issue's
multiple-testing control; ``bias_pvalue_holm < α`` with ``--correction holm``) when the run has them, else per row ``bias_pvalue < α`` (the test
itself, Hotelling or Šidák max-|z|, is corrected across coordinates, not across rows). With the
statistics issue's ``rel_bias_ci_low``/``rel_bias_ci_high`` the bias column is the 95 % interval.
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
    fmt_param,
    infinite_variance_cells,
)

# (metric, column header) in display order; columns appear only when the run has the metric.
ACCURACY_COLUMNS = [
    ("rel_bias", "rel. bias"),
    ("bias_pvalue", "bias p"),
    ("bias_qvalue", "bias q"),
    ("bias_pvalue_holm", "bias p (Holm)"),  # shown instead of bias q with --correction holm
    ("tail_index", "tail index"),
    ("trace_cov", "tr Σ̂"),
    ("snr_median", "SNR (median)"),
    ("snr_q50", "SNR q50"),  # only when snr_median is absent (same quantity)
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
    ("rel_bias", "rel. bias"), ("bias_pvalue", "bias p"), ("trace_cov", "tr Σ̂"), ("mean_var", "mean var"),
    ("snr_median", "SNR (median)"), ("snr_q50", "SNR q50"), ("mse", "MSE"),
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


def fmt_value(v: float, se: float | None = None) -> str:
    """``0.171 ± 0.0078``; just the value when the s.e. is missing or zero; '—' for NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if se is None or not np.isfinite(se) or se == 0:
        return f"{v:.4g}"
    return f"{v:.3g} ± {se:.2g}"


def fmt_p(p: float) -> str:
    """``0.034``, ``3.1e-07``; a p-value that underflowed to 0 is a bound: ``<1e-300``."""
    if p is None or not np.isfinite(p):
        return "—"
    return "<1e-300" if p < 1e-300 else (f"{p:.2g}" if p < 0.01 else f"{p:.3f}")


def _inconclusive(r: pd.Series) -> bool:
    """The cell's bias test is inconclusive: R·q_min (``bias_rare_count``) < log(10³) (gradbench.stats.rare_state_verdict)."""
    from gradbench.stats import RARE_STATE_COUNT

    v = r.get("bias_rare_count")
    return v is not None and bool(np.isfinite(v)) and v < RARE_STATE_COUNT


def _row_cells(r: pd.Series, columns: list[tuple[str, str]], alpha: float, decision: str = "bias_pvalue",
               heavy: bool = False) -> list[Cell]:
    """``heavy``: the cell's variance may be infinite; its variance-type values get ``†`` and no s.e."""
    out = []
    for metric, _ in columns:
        v = r.get(metric)
        if heavy and metric in VARIANCE_WARNED_METRICS:
            out.append(Cell(fmt_value(v) + " †"))  # † marks it (a red flag is reserved for bias)
        elif metric in ("bias_pvalue",) + ADJUSTED_BIAS_METRICS and _inconclusive(r):
            out.append(Cell(fmt_p(v) + (" inconclusive (rare states)" if metric == decision else "")))
        elif metric in ("bias_pvalue",) + ADJUSTED_BIAS_METRICS:
            biased = metric == decision and v is not None and np.isfinite(v) and v < alpha
            out.append(Cell(fmt_p(v) + (" ✱ biased" if biased else ""), "bad" if biased else None))
        elif metric == "rel_bias" and np.isfinite(r.get("rel_bias_ci_low", np.nan)):
            out.append(Cell(f"{fmt_value(v)} [{r['rel_bias_ci_low']:.3g}, {r['rel_bias_ci_high']:.3g}]"))
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
    cols = [(m, h) for m, h in columns if run.has(m)]
    return [(m, h) for m, h in cols if not (m == "snr_q50" and run.has("snr_median"))]


def _cell_table(run: RunData, title: str, columns: list[tuple[str, str]], note: str) -> Table | None:
    cols = [(m, h) for m, h in _present(run, columns) if m not in ADJUSTED_BIAS_METRICS or m == bias_decision(run)]
    if not cols:
        return None
    has_interval = run.has("rel_bias_ci_low") and run.has("rel_bias_ci_high")
    if has_interval:
        cols = [(m, "rel. bias [95% CI]" if m == "rel_bias" else h) for m, h in cols]
    extra = ["rel_bias_ci_low", "rel_bias_ci_high"] if has_interval else []
    wide = _sorted_cells(run.wide([m for m, _ in cols] + extra), run)
    wide = wide[wide[[m for m, _ in cols]].notna().any(axis=1)]  # cells without any of these metrics
    n_targets = wide["target_label"].nunique()
    header = (["target"] if n_targets > 1 else []) + ["estimator", "budget", "replicates"] + [h for _, h in cols]
    t = Table(title, header, note=note, text_columns=header.index("budget") + 1)
    heavy = infinite_variance_cells(run)
    if heavy and any(m in VARIANCE_WARNED_METRICS for m, _ in cols):
        t.note += HEAVY_NOTE
    for _, r in wide.iterrows():
        t.rows.append(_ident(r, n_targets) + _row_cells(r, cols, run.alpha, bias_decision(run), r["cell_id"] in heavy))
    return t


HEAVY_NOTE = (" † the cell's tail index (Hill) is ≤ 2 within its uncertainty: the variance may be infinite, so this "
              "value is not a reliable estimate and has no standard error.")


def summary_table(run: RunData) -> Table | None:
    """Bias, variance, SNR and MSE per estimator × budget (parameter group 'all')."""
    flag = " " + bias_flag_note(run)
    note = "Parameter group 'all'. Values are ± 1 standard error." + (flag if run.has("bias_pvalue") else "")
    if run.has("rel_bias_ci_high"):
        note += " Relative bias: 95 % confidence interval of ‖b‖/‖g*‖ (the plug-in ‖ḡ − g*‖ is noise-inflated)."
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
    t = Table("Per parameter group", header, note="Values are ± 1 standard error; ✱ biased: p < α per row, uncorrected "
              "(the q-values cover parameter group 'all' only).",
              text_columns=header.index("group") + 1)
    frames = [_sorted_cells(run.wide([m for m, _ in cols], g), run).assign(group=g) for g in groups]
    order = {g: i for i, g in enumerate(groups)}
    rows = pd.concat(frames).assign(_g=lambda d: d["group"].map(order))
    heavy = infinite_variance_cells(run)
    if heavy and any(m in VARIANCE_WARNED_METRICS for m, _ in cols):
        t.note += HEAVY_NOTE
    for _, r in rows.sort_values(["_t", "_s", "budget", "_g"], na_position="first").iterrows():
        if all(not np.isfinite(r.get(m, np.nan)) for m, _ in cols):
            continue
        t.rows.append(_ident(r, n_targets) + [Cell(r["group"])] + _row_cells(r, cols, run.alpha, bias_decision(run),
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
