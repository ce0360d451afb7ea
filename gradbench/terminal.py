"""What ``gradbench run`` prints: one compact table per protocol the suite ran, and progress lines.

Rows are cells. A cell is named by
* its **target**: the model/proposal parameters that differ between the run's targets
  (``mean_shift=1.5, cov_scale=3``; no column when the run has one target), never a hash;
* its **estimator**: the name and the parameters the suite set or that vary between the
  estimator's cells (``coupled_isir(K=16)``), not every default.

Which columns a protocol's table has is its spec's ``terminal`` view
(:class:`gradbench.protocols.spec.ProtocolSpec`, e.g. ``gradbench/protocols/bias_spec.py``); this module
builds the tables and provides the column builders (:func:`pm_column`, :func:`bias_column`, …). Every
number is formatted by :mod:`gradbench.report.format`, as in the report: the bias column is the headline
‖b‖/‖g*‖ with its per-row 95 % interval (:func:`~gradbench.report.format.bias_point`), then the
multiplicity-corrected decision value (Benjamini–Hochberg ``q``, or Holm's ``p_Holm`` with
``correction="holm"``; the per-row ``p`` for a run without them) and the row's verdict
(:func:`~gradbench.report.format.bias_verdict`); a run without the interval shows ``rel_bias ± s.e.``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradbench.protocols.spec import TermColumn, TerminalTable
from gradbench.report.format import (
    CORRECTIONS,
    DEFAULT_ALPHA,
    bias_verdict,
    fmt_band,
    fmt_bias,
    fmt_num,
    fmt_p,
    fmt_param,
    fmt_seconds,
    fmt_tail_index,
    fmt_value,
    has_interval,
    missing,
    rare_state_threshold,
)

__all__ = ["CORRECTIONS", "DEFAULT_ALPHA", "CellProgress", "fmt_num", "fmt_p", "fmt_param", "fmt_pm", "format_run",
           "run_warnings"]

COUPLED_PREFIX = "coupled_"  # estimators that run coupled chains (the meeting protocol's subjects)
fmt_pm = fmt_value  # value ± s.e.
_missing = missing


# -- labels -------------------------------------------------------------------------------------
def varying_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Keys (in first-seen order) whose values are not all equal across ``records``."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    return [k for k in keys if len({repr(r.get(k)) for r in records}) > 1]


def target_labels(targets: Sequence[dict[str, Any]]) -> list[str]:
    """``mean_shift=1.5, cov_scale=3`` per target: its parameters that vary between targets."""
    keys = varying_keys(targets)
    return [", ".join(f"{k.split('.', 1)[-1]}={fmt_param(t[k])}" for k in keys if not _missing(t.get(k)))
            for t in targets]


def estimator_labels(entries: Sequence[tuple[str, dict[str, Any]]], suite_keys: dict[str, set[str]]) -> list[str]:
    """``iwae(K=8)`` per (name, params): the params the suite set for that estimator, or that vary
    between its cells; a name with none of either is printed bare."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for name, params in entries:
        by_name.setdefault(name, []).append(params)
    shown = {name: [k for k in dict.fromkeys(k for p in ps for k in p)
                    if k in suite_keys.get(name, set()) or k in varying_keys(ps)]
             for name, ps in by_name.items()}
    out = []
    for name, params in entries:
        parts = [f"{k}={fmt_param(params[k])}" for k in shown[name] if k in params and not _missing(params[k])]
        out.append(f"{name}({', '.join(parts)})" if parts else name)
    return out


def suite_keys(spec: Any) -> dict[str, set[str]]:
    """Estimator name → the parameter names the suite file sets for it."""
    keys: dict[str, set[str]] = {}
    for entry in spec.estimators:
        keys.setdefault(entry.name, set()).update(entry.params)
    return keys


NOTE_WIDTH = 110


def wrap(text: str) -> str:
    """A note wrapped at :data:`NOTE_WIDTH` columns, continuation lines indented."""
    import textwrap

    return textwrap.fill(text, NOTE_WIDTH, subsequent_indent="  ", break_on_hyphens=False)


# -- tables -------------------------------------------------------------------------------------
def text_table(header: list[str], rows: list[list[str]], left: int, text_last: bool = False) -> str:
    """Columns padded to their widest entry; the first ``left`` columns left-aligned, others right (the
    last one left-aligned too with ``text_last``: a column of words)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    n = len(header)

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left or (text_last and i == n - 1) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(header), line(["─" * w for w in widths]), *map(line, rows)])


def kind_tables(out: Any, kinds: Sequence[str]) -> str:
    """The report tables of the run's cell kinds that have their own (``CellKind.report_tables``: training runs'
    final metrics and paired differences), as text: the very cells the report prints, so both show the same
    numbers through one formatter. Empty when no kind of the run has tables."""
    from gradbench import registry

    makers = [k.report_tables for name in dict.fromkeys(kinds) if (k := registry.CELL_KINDS[name]).report_tables]
    if not makers:
        return ""
    from gradbench.report.data import load_run

    run = load_run(out)
    blocks = []
    for table in (t for make in makers for t in make(run)):
        if table.rows:
            body = text_table(table.header, [[c.text for c in r] for r in table.rows], max(table.text_columns, 1))
            blocks.append(wrap(f"{table.title}: {table.note}") + "\n" + body)
    return "\n\n".join(blocks)


WARNED = "_warned:"  # pseudo-metric prefix: WARNED + m is present when row m of the cell carries a warning
HEAVY = WARNED + "tail_index"  # the cell's tail_index row warns that the variance may be infinite
HEAVY_NOTE = "†: its one-sided 95 % lower bound is ≤ 2, the variance may be infinite (tr Σ̂ is not reliable)"
Metrics = dict[str, tuple[float, float]]  # metric -> (value, s.e.) of one row


def _values(m: Metrics) -> dict[str, float]:
    return {k: v for k, (v, _) in m.items()}


# -- column builders for the protocols' terminal tables (gradbench.protocols.*_spec) ---------------
def pm_column(header: str, metric: str) -> TermColumn:
    """``value ± s.e.`` of one metric."""
    return TermColumn(header, lambda m: fmt_value(*m[metric]) if metric in m else None, (metric,))


def count_column(header: str, metric: str) -> TermColumn:
    """An integer count (no s.e.)."""
    return TermColumn(header, lambda m: fmt_param(m[metric][0]) if metric in m else None, (metric,))


def bias_column(header: str) -> TermColumn:
    """The headline ‖b‖/‖g*‖ with its interval (or the plug-in ± s.e.)."""
    def show(m: Metrics) -> str | None:
        if "rel_bias" not in m and not has_interval(_values(m)):
            return None
        return fmt_bias(_values(m), m.get("rel_bias", (math.nan, math.nan))[1])
    return TermColumn(header, show, ("rel_bias", "rel_bias_debiased", "rel_bias_ci_low", "rel_bias_ci_high"))


def p_column(header: str, metric: str) -> TermColumn:
    return TermColumn(header, lambda m: fmt_p(m[metric][0]) if metric in m else None, (metric,))


def verdict_column(header: str, metric: str, alpha: float) -> TermColumn:
    """The bias verdict decided by ``metric`` at ``alpha`` (:func:`gradbench.report.format.bias_verdict`)."""
    def show(m: Metrics) -> str | None:
        if metric not in m and "bias_rare_count" not in m:
            return None
        return str(bias_verdict(_values(m), metric, alpha, m.get("n_replicates", (math.nan,))[0],
                                rare_state_threshold()))
    return TermColumn(header, show, (metric, "bias_rare_count"))


def tail_column(header: str) -> TermColumn:
    """Hill's tail index ± s.e., ``†`` when its row warns of infinite variance."""
    def show(m: Metrics) -> str | None:
        if "tail_index" not in m:
            return None
        return fmt_tail_index(*m["tail_index"]) + (" †" if HEAVY in m else "")
    return TermColumn(header, show, ("tail_index",))


def band_column(header: str, low: str, high: str) -> TermColumn:
    """``[low, high]`` of two metrics' values."""
    def show(m: Metrics) -> str | None:
        return fmt_band(m[low][0], m[high][0]) if low in m and high in m else None
    return TermColumn(header, show, (low, high))


def seconds_column(header: str, metric: str) -> TermColumn:
    return TermColumn(header, lambda m: fmt_seconds(*m[metric]) if metric in m else None, (metric,))


def protocol_table(protocol: str, metrics: set[str], correction: str = "bh",
                   alpha: float = DEFAULT_ALPHA) -> TerminalTable | None:
    """The terminal table of a registered protocol for the metrics the run has (its spec's ``terminal``;
    None for a protocol without one)."""
    from gradbench import registry

    spec = registry.PROTOCOLS.get(protocol)
    return None if spec is None else spec.terminal_table(metrics, correction, alpha)


def target_param_columns(table: Any) -> list[str]:
    """The table's target parameter columns: every parameter column but the estimator's (``model.*``,
    ``proposal.*``, ``snapshot.*``), as the report names targets (gradbench.report.data.describe_cells)."""
    from gradbench.report.data import param_columns

    return [c for c in param_columns(table) if not c.startswith("estimator.")]


def cell_labels(table: Any, spec: Any) -> tuple[dict[str, str], dict[str, str], Any]:
    """(target id → target label, cell id → estimator label, one row per target) of a run's table: targets named
    by the parameters that differ between them, estimators by the parameters the suite set or that vary."""
    est_cols = [c for c in table.columns if c.startswith("estimator.")]
    target_cols = ["model", *target_param_columns(table)]
    cells = table.drop_duplicates("cell_id")
    targets = cells.drop_duplicates("target_id")
    t_labels = dict(zip(targets["target_id"],
                        target_labels([{c: _py(r[c]) for c in target_cols if c in r} for _, r in targets.iterrows()])))
    entries = [(str(r["estimator"]), {c.split(".", 1)[1]: _py(r[c]) for c in est_cols if not _missing(_py(r[c]))})
               for _, r in cells.iterrows()]
    e_labels = dict(zip(cells["cell_id"], estimator_labels(entries, suite_keys(spec) if spec is not None else {})))
    return t_labels, e_labels, targets


def format_run(table: Any, protocols: Sequence[str], spec: Any | None = None, correction: str = "bh",
               alpha: float = DEFAULT_ALPHA) -> str:
    """One table per protocol in ``protocols`` that has rows and a terminal view (its spec's ``terminal``,
    :func:`protocol_table`): parameter group ``all``, or a row per group where the view asks; bias flagged by
    ``correction``'s adjusted p-value below ``alpha``."""
    import pandas as pd

    if table is None or table.empty:
        return "(no rows)"
    t_labels, e_labels, targets = cell_labels(table, spec)
    multi_target = len(targets) > 1

    blocks = []
    for protocol in protocols:
        sub = table[table["protocol"] == protocol]
        if sub.empty:
            continue
        metrics = set(sub["metric"])
        view = protocol_table(protocol, metrics, correction, alpha)
        if view is None or not view.columns:
            continue
        columns = view.columns
        groups = list(dict.fromkeys(sub["param_group"])) if view.per_group else ["all"]
        if len(groups) == 2 and "all" in groups:
            groups = ["all"]  # one group besides 'all' holds every coordinate: the same numbers twice
        header = (["target"] if multi_target else []) + ["estimator"] + (["group"] if len(groups) > 1 else [])
        header += [c.header for c in columns]
        rows = []
        shown_rows: list[tuple[str, dict[str, float], Any]] = []
        # run-level rows comparing two cells (the paired protocol) name the second one in ``versus``
        paired = "versus" in sub and bool(sub["versus"].notna().any())
        if paired:
            sub = sub[sub["versus"].notna()]
            header[header.index("estimator")] = "A vs B"
        for key, grp in sub.groupby(["cell_id", "versus"] if paired else "cell_id", sort=False):
            cell_id, versus = key if paired else (key, None)
            tid = grp["target_id"].iloc[0]
            for group in groups:
                g = grp[grp["param_group"] == group]
                if g.empty:
                    continue
                values = {m: (float(v), float(s)) for m, v, s in zip(g["metric"], g["value"], g["stderr"])}
                if "n_replicates" in g:
                    values["n_replicates"] = (float(g["n_replicates"].iloc[0]), math.nan)
                if "warning" in g:
                    for m in g.loc[g["warning"].fillna("").ne(""), "metric"]:
                        values[WARNED + m] = (1.0, math.nan)
                shown = [c.show(values) for c in columns]
                if all(s is None for s in shown):
                    continue
                name = e_labels[cell_id] + (f" vs {e_labels.get(versus, versus)}" if paired else "")
                row = ([t_labels.get(tid, tid)] if multi_target else []) + [name]
                row += [group] if len(groups) > 1 else []
                rows.append(row + [s if s is not None else "—" for s in shown])
                label = name + (f" · {t_labels.get(tid, tid)}" if multi_target else "")
                shown_rows.append((label, {k: v for k, (v, _) in values.items()}, values.get("n_replicates", (None,))[0]))
        if rows:
            left = len(header) - len(columns)
            block = wrap(f"{protocol}: {view.note}") + "\n" + text_table(header, rows, left, text_last=view.text_last)
            line = view.footer(shown_rows) if view.footer is not None else ""
            block += "\n" + wrap(line) if line else ""
            blocks.append(block)
    if not multi_target and len(targets) == 1:
        r = targets.iloc[0]
        params = ", ".join(f"{c.split('.', 1)[1]}={fmt_param(_py(r[c]))}" for c in target_param_columns(table)
                           if c in r and not pd.isna(r[c]))
        blocks.insert(0, f"target: {r['model']}({params})")
    return "\n\n".join(blocks) if blocks else "(no rows)"


def run_warnings(table: Any, spec: Any | None = None) -> list[str]:
    """The end-of-run warnings, one line per cell and distinct text, each naming its cell like the tables
    (``iwae(K=2) · mean_shift=1.5: tail index 1.9 ± 0.4 (Hill): …``)."""
    if table is None or table.empty or "warning" not in table.columns:
        return []
    w = table[table["warning"].fillna("").astype(str).str.strip() != ""]
    if w.empty:
        return []
    t_labels, e_labels, targets = cell_labels(table, spec)
    from gradbench.protocols.variance import TAIL_Z

    tail = table[table["metric"] == "tail_index"].drop_duplicates("cell_id").set_index("cell_id")
    lines = []
    for (cell_id, text), g in w.groupby(["cell_id", "warning"], sort=False):
        tl = t_labels.get(g["target_id"].iloc[0], "") if len(targets) > 1 else ""
        if "tail index" in text and cell_id in tail.index:  # the rule, so that an index above 2 does not puzzle
            v, se = float(tail.at[cell_id, "value"]), float(tail.at[cell_id, "stderr"])
            text += f" (its one-sided 95 % lower bound {fmt_num(v - TAIL_Z * (se if math.isfinite(se) else 0.0))} ≤ 2)"
        lines.append(f"{e_labels.get(cell_id, cell_id)}{f' · {tl}' if tl else ''}: {text}")
    return lines


def _py(v: Any) -> Any:
    """numpy scalars → Python scalars (for labels and equality)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


# -- progress -----------------------------------------------------------------------------------
class CellProgress:
    """``on_cell`` callback for runs whose stderr is not a terminal (batch jobs, CI logs): one line
    per finished cell, ``[3/16] coupled_isir(K=16) · mean_shift=1.5 — 2.1 s (elapsed 14 s)``."""

    def __init__(self, cells: Sequence[Any], out: Path, echo: Callable[[str], None], spec: Any | None = None,
                 fresh: bool = False) -> None:
        todo = [c for c in cells if fresh or not (Path(out) / "cells" / f"{c.cell_id}.parquet").exists()]
        self.total = len(todo)
        self.echo = echo
        labels = estimator_labels([(c.estimator, c.estimator_params) for c in cells],
                                  suite_keys(spec) if spec is not None else {})
        tlabels = target_labels([{"model": c.target.model, **c.target.param_columns()} for c in cells])
        self.labels = {c.cell_id: lab + (f" · {t}" if t else "") for c, lab, t in zip(cells, labels, tlabels)}
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __call__(self, cell: Any) -> None:
        now = time.perf_counter()
        self.done += 1
        self.echo(f"gradbench: [{self.done}/{self.total}] {self.labels.get(cell.cell_id, cell.cell_id)} — "
                  f"{now - self.last:.1f} s (elapsed {now - self.start:.0f} s)")
        self.last = now
