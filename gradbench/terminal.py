"""What ``gradbench run`` prints: one compact table per protocol the suite ran, and progress lines.

Rows are cells. A cell is named by
* its **target**: the model/proposal parameters that differ between the run's targets
  (``mean_shift=1.5, cov_scale=3``; no column when the run has one target), never a hash;
* its **estimator**: the name and the parameters the suite set or that vary between the
  estimator's cells (``coupled_isir(K=16)``), not every default.

Numbers: ``value ± s.e.``; p- and q-values as ``0.034``, ``3.1e-07`` or ``<1e-300`` (a p-value that
underflowed to 0 is a bound, not a zero). The bias column shows the 95 % interval of ‖b‖/‖g*‖ and
the Benjamini–Hochberg q-value (or, with ``correction="holm"``, the Holm-adjusted p-value
``bias_pvalue_holm``) when the run has them (metrics ``rel_bias_ci_low``, ``rel_bias_ci_high``,
``bias_qvalue`` of the statistics issue), else ``rel_bias ± s.e.`` and ``p``; ``✱`` marks a value below α.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

COUPLED_PREFIX = "coupled_"  # estimators that run coupled chains (the meeting protocol's subjects)
P_FLOOR = 1e-300


# -- numbers ------------------------------------------------------------------------------------
def fmt_num(v: Any, digits: int = 3) -> str:
    """``0.171``, ``1.2e-05``, ``3.4e+04``; ``—`` for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and not 1e-3 <= abs(v) < 1e5:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_pm(v: Any, se: Any) -> str:
    """``0.171 ± 0.0078``; just the value when the s.e. is missing or zero."""
    text = fmt_num(v)
    if text == "—" or se is None or not math.isfinite(float(se)) or float(se) == 0:
        return text
    return f"{text} ± {fmt_num(se, 2)}"


def fmt_p(p: Any) -> str:
    """A p- or q-value: ``0.034``, ``3.1e-07``, or ``<1e-300`` when it underflowed to zero."""
    if p is None or not math.isfinite(float(p)):
        return "—"
    p = float(p)
    if p < P_FLOOR:
        return f"<{P_FLOOR:.0e}"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def fmt_param(v: Any) -> str:
    """``2.0`` → ``2``; strings and other values as they are."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


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


# -- tables -------------------------------------------------------------------------------------
def text_table(header: list[str], rows: list[list[str]], left: int) -> str:
    """Columns padded to their widest entry; the first ``left`` columns left-aligned, others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(header), line(["─" * w for w in widths]), *map(line, rows)])


Column = tuple[str, Callable[[dict[str, tuple[float, float]]], str | None]]


def _pm(metric: str) -> Callable[[dict[str, tuple[float, float]]], str | None]:
    return lambda m: fmt_pm(*m[metric]) if metric in m else None


def _p(metric: str, alpha: float | None = None) -> Callable[[dict[str, tuple[float, float]]], str | None]:
    """The p-/q-value of ``metric``; with ``alpha``, ``✱`` marks a value below it (a flagged bias)."""
    from gradbench.stats import RARE_STATE_COUNT  # here, not at the top: importing this module stays numpy-free

    def cell(m: dict[str, tuple[float, float]]) -> str | None:
        if metric not in m:
            return None
        v = m[metric][0]
        if alpha is not None and m.get("bias_rare_count", (math.inf,))[0] < RARE_STATE_COUNT:
            raw = m.get("bias_pvalue", (v,))[0]  # an inconclusive test has no q-value: show its p
            return f"p {fmt_p(raw)}, inconclusive (rare states)"  # gradbench.stats.rare_state_verdict: no verdict
        return fmt_p(v) + (" ✱" if alpha is not None and math.isfinite(v) and v < alpha else "")
    return cell


# correction -> (adjusted bias metric, column header, what the note says)
CORRECTIONS = {
    "bh": ("bias_qvalue", "q", "q: Benjamini–Hochberg q-value (false discovery rate)"),
    "holm": ("bias_pvalue_holm", "p_Holm", "p_Holm: Holm-adjusted p-value (family-wise error rate)"),
}
DEFAULT_ALPHA = 0.01  # as gradbench.report.DEFAULT_ALPHA


def _bias_interval(m: dict[str, tuple[float, float]]) -> str | None:
    if "rel_bias_ci_low" not in m or "rel_bias_ci_high" not in m:
        return None
    est = m.get("rel_bias_debiased", m.get("rel_bias", (math.nan, math.nan)))[0]
    return f"{fmt_num(est)} [{fmt_num(m['rel_bias_ci_low'][0])}, {fmt_num(m['rel_bias_ci_high'][0])}]"


def _seconds(m: dict[str, tuple[float, float]]) -> str | None:
    if "seconds_per_estimate" not in m:
        return None
    v, se = m["seconds_per_estimate"]
    scale, unit = (1e6, "µs") if v < 1e-3 else ((1e3, "ms") if v < 1 else (1.0, "s"))
    return f"{fmt_pm(v * scale, se * scale)} {unit}"


def _snr_band(m: dict[str, tuple[float, float]]) -> str | None:
    if "snr_q25" not in m or "snr_q75" not in m:
        return None
    return f"[{fmt_num(m['snr_q25'][0])}, {fmt_num(m['snr_q75'][0])}]"


def protocol_columns(protocol: str, metrics: set[str], correction: str = "bh",
                     alpha: float = DEFAULT_ALPHA) -> tuple[list[Column], str]:
    """The columns of one protocol's table for the metrics the run has, and the table's note. Bias is
    flagged (``✱``) by the adjusted p-value of ``correction`` (``bh`` or ``holm``) below ``alpha``."""
    if protocol == "bias":
        if {"rel_bias_ci_low", "rel_bias_ci_high"} <= metrics:
            adjusted, header, what = CORRECTIONS[correction]
            q = adjusted if adjusted in metrics else "bias_pvalue"
            name = "rel. bias (debiased)" if "rel_bias_debiased" in metrics else "rel. bias"
            note = ("‖ḡ − g*‖/‖g*‖ with its 95 % interval; "
                    + (f"{what} over the run's bias tests of parameter group 'all', one per cell"
                       if q == adjusted else "p: H0 unbiased, per row, no multiplicity correction")
                    + f"; ✱: below α = {alpha:g}")
            cols: list[Column] = [(f"{name} [95% CI]", _bias_interval), (header if q == adjusted else "p", _p(q, alpha))]
        else:
            note = "‖ḡ − g*‖/‖g*‖ ± 1 s.e.; p: test of H0 unbiased (per row, no multiplicity correction)"
            cols = [("rel. bias ± s.e.", _pm("rel_bias")), ("p", _p("bias_pvalue"))]
        return cols, note
    if protocol == "variance":
        cols = [("tr Σ̂ ± s.e.", _pm("trace_cov")), ("evals", _pm("evals_mean")),
                ("tr Σ̂ × evals", _pm("work_norm_var"))]
        if "tail_index" in metrics:
            cols.append(("tail index", _pm("tail_index")))
        return cols, "variance of one estimate; evals: log-joint evaluations per estimate" + (
            "; tail index ≤ 2: the variance may be infinite" if "tail_index" in metrics else "")
    if protocol == "snr":
        return ([("SNR median ± s.e.", _pm("snr_q50")), ("[q25, q75] over j", _snr_band)],
                "|E ĝⱼ|/sd(ĝⱼ): median over the coordinates j of the group (bootstrap s.e.) and its quartiles")
    if protocol == "meeting":
        cols = [("τ mean ± s.e.", _pm("tau_mean")), ("τ q50", _pm("tau_q50")), ("τ q90", _pm("tau_q90")),
                ("τ q99", _pm("tau_q99")), ("censored", lambda m: fmt_param(m["n_censored"][0])
                                             if "n_censored" in m else None)]
        if "tail_rate" in metrics:
            cols.append(("tail rate", _pm("tail_rate")))
        return cols, "meeting time τ of the coupled chains, in iterations"
    if protocol == "wallclock":
        return ([("per estimate", _seconds), ("evals / s", _pm("evals_per_second"))],
                "median wall-clock; comparable only within one device")
    return [], ""


def format_run(table: Any, protocols: Sequence[str], spec: Any | None = None, correction: str = "bh",
               alpha: float = DEFAULT_ALPHA) -> str:
    """One table per protocol in ``protocols`` that has rows (parameter group ``all``; SNR per group); bias
    flagged by ``correction``'s adjusted p-value below ``alpha`` (:func:`protocol_columns`)."""
    import pandas as pd

    if table is None or table.empty:
        return "(no rows)"
    est_cols = [c for c in table.columns if c.startswith("estimator.")]
    target_cols = ["model"] + [c for c in table.columns if c.startswith(("model.", "proposal."))]
    cells = table.drop_duplicates("cell_id")
    targets = cells.drop_duplicates("target_id")
    t_labels = dict(zip(targets["target_id"],
                        target_labels([{c: _py(r[c]) for c in target_cols if c in r} for _, r in targets.iterrows()])))
    entries = [(str(r["estimator"]), {c.split(".", 1)[1]: _py(r[c]) for c in est_cols if not _missing(_py(r[c]))})
               for _, r in cells.iterrows()]
    e_labels = dict(zip(cells["cell_id"], estimator_labels(entries, suite_keys(spec) if spec is not None else {})))
    multi_target = len(targets) > 1

    blocks = []
    for protocol in protocols:
        sub = table[table["protocol"] == protocol]
        if sub.empty:
            continue
        metrics = set(sub["metric"])
        columns, note = protocol_columns(protocol, metrics, correction, alpha)
        if not columns:
            continue
        groups = ["all"] if protocol != "snr" else list(dict.fromkeys(sub["param_group"]))
        header = (["target"] if multi_target else []) + ["estimator"] + (["group"] if len(groups) > 1 else [])
        header += [name for name, _ in columns]
        rows = []
        for cell_id, grp in sub.groupby("cell_id", sort=False):
            tid = grp["target_id"].iloc[0]
            for group in groups:
                g = grp[grp["param_group"] == group]
                if g.empty:
                    continue
                values = {m: (float(v), float(s)) for m, v, s in zip(g["metric"], g["value"], g["stderr"])}
                shown = [fn(values) for _, fn in columns]
                if all(s is None for s in shown):
                    continue
                row = ([t_labels.get(tid, tid)] if multi_target else []) + [e_labels[cell_id]]
                row += [group] if len(groups) > 1 else []
                rows.append(row + [s if s is not None else "—" for s in shown])
        if rows:
            left = len(header) - len(columns)
            blocks.append(f"{protocol}: {note}\n" + text_table(header, rows, left))
    if not multi_target and len(targets) == 1:
        r = targets.iloc[0]
        params = ", ".join(f"{c.split('.', 1)[1]}={fmt_param(_py(r[c]))}" for c in target_cols[1:]
                           if c in r and not pd.isna(r[c]))
        blocks.insert(0, f"target: {r['model']}({params})")
    return "\n\n".join(blocks) if blocks else "(no rows)"


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
        tlabels = target_labels([{"model": c.target.model, **c.target.params, **c.target.proposal} for c in cells])
        self.labels = {c.cell_id: lab + (f" · {t}" if t else "") for c, lab, t in zip(cells, labels, tlabels)}
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __call__(self, cell: Any) -> None:
        now = time.perf_counter()
        self.done += 1
        self.echo(f"gradbench: [{self.done}/{self.total}] {self.labels.get(cell.cell_id, cell.cell_id)} — "
                  f"{now - self.last:.1f} s (elapsed {now - self.start:.0f} s)")
        self.last = now
