"""Figures for a run, each drawn only when the run has the metrics it needs.

Every figure is ``fn(run) -> matplotlib Figure | None`` (``None``: nothing to draw); the protocols' specs
list them (``ProtocolSpec.figures``: file name, title, caption) and :func:`figure_specs` gathers those of
every registered protocol, in registry order. Conventions:
* colour = estimator (:func:`gradbench.report.style.estimator_color`), marker/line style = the
  estimator's variant (its non-budget parameters that vary), one facet row per target;
* error bars are ±1 stored standard error; an axis is logarithmic where the quantity is positive
  and spans at least a decade (budgets: base 2 when they are powers of two);
* budget plots leave out cells without a budget parameter (they are in the tables) — unless no series has two
  budgets: then a dot plot, one x position per series, every cell drawn (:class:`BudgetAxis`);
* lines join only resolved points where a figure marks resolution (the bias figure: filled = biased);
* :func:`draw` wraps every axis label and title longer than its panel (:func:`fit_labels`) and hides point labels
  that would overlap other text (:func:`declutter`); :func:`layout_problems` lists texts that still run off the
  figure or overlap (the layout tests require none).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")  # headless; before pyplot

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from gradbench.protocols.spec import FigureSpec  # re-exported: training.figures and the protocols' specs use it
from gradbench.report.data import (
    CORRECTIONS,
    RunData,
    bias_decision,
    fmt_param,
    heavy_tail_metrics,
    infinite_variance_cells,
)
from gradbench.report.format import bias_point, bias_verdict, decision_symbol, has_interval, rare_state_threshold
from gradbench.report.style import LINESTYLES, MARKERS, estimator_color, metric_label, theme

PANEL_W, PANEL_H = 3.6, 3.1
P_FLOOR = 1e-12  # p-values below are drawn at this floor
LOWER_BAR_FLOOR = 0.9  # lower error bars end no lower than (1 − 0.9)·value: one decade on a log axis
LEGEND_FONT = 9
MIN_LABEL_FONT = 7  # an axis label too long for its panel shrinks no further (then it is wrapped mid-word)
DKW_ALPHA = 0.05  # the meeting-time ECDFs' bands are simultaneous 95 % (Dvoretzky–Kiefer–Wolfowitz) bands
DOT_LABEL_CHARS = 24  # a dot plot's estimator labels (vertical) wrap at this many characters
DOT_LABEL_FONT = 8.5
DOT_INCH_PER_CHAR = 0.075  # the length of one character of a dot plot's label at DOT_LABEL_FONT, in inches


# -- helpers ------------------------------------------------------------------------------------
def _style_of(run: RunData) -> dict[str, tuple[str, str, str]]:
    """series -> (colour, marker, linestyle): colour by estimator, marker/line by variant."""
    out: dict[str, tuple[str, str, str]] = {}
    seen: dict[str, int] = {}
    for est, series in run.cells[["estimator", "series"]].drop_duplicates().itertuples(index=False):
        i = seen.get(est, 0)
        seen[est] = i + 1
        out[series] = (estimator_color(str(est)), MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
    return out


def _budget_axis_label(df: pd.DataFrame) -> str:
    params = df.dropna(subset=["budget"]).groupby("budget_param", sort=False)["estimator"].unique()
    parts = [f"{p} ({', '.join(map(str, ests))})" for p, ests in params.items()]
    return "budget: " + "; ".join(parts) if parts else "budget"


@dataclass(frozen=True)
class BudgetAxis:
    """How a figure's x axis shows budgets. A *sweep* (some series has ≥ 2 budgets) plots against the budget on a
    log axis and leaves out cells without one; otherwise a *dot plot*: one x position per series (the run's
    order), every cell kept (cells without a budget too), no lines — a single budget would collapse the sweep to
    one x position with meaningless ticks around it."""

    ticks: tuple[str, ...] | None  # the dot plot's labels, None for a sweep

    @property
    def dots(self) -> bool:
        return self.ticks is not None

    @property
    def extra_height(self) -> float:
        """Inches a facet row needs below its panel for the dot plot's vertical labels."""
        if not self.ticks:
            return 0.0
        return DOT_INCH_PER_CHAR * max(len(line) for t in self.ticks for line in t.split("\n"))

    @property
    def panel_width(self) -> float:
        """Inches per panel: wide enough that the dot plot's vertical labels (one line ≈ 0.16 in) do not touch."""
        if not self.ticks:
            return PANEL_W
        lines = max(t.count("\n") + 1 for t in self.ticks)
        return max(PANEL_W, len(self.ticks) * (0.16 * lines + 0.08) + 1.0)


def _budget_frame(run: RunData, df: pd.DataFrame) -> tuple[pd.DataFrame, BudgetAxis]:
    """``df`` ready to draw against ``budget`` (:class:`BudgetAxis`): unchanged less the rows without a budget for
    a sweep; for a dot plot ``budget`` replaced by the position of the row's series."""
    if (df.dropna(subset=["budget"]).groupby("series")["budget"].nunique() >= 2).any():
        return df.dropna(subset=["budget"]), BudgetAxis(None)
    present = run.cells[run.cells["cell_id"].isin(set(df["cell_id"]))]
    order = list(dict.fromkeys(present["series"]))
    pos = {s: float(i) for i, s in enumerate(order)}
    ticks = tuple(textwrap.fill(s, DOT_LABEL_CHARS, break_long_words=False) for s in order)
    return df.assign(budget_raw=df["budget"], budget=df["series"].map(pos)), BudgetAxis(ticks)


def _budget_xaxis(ax: plt.Axes, sub: pd.DataFrame, axis: BudgetAxis) -> None:
    """Scale, ticks and label of a budget x axis (:class:`BudgetAxis`)."""
    if axis.ticks is None:
        _set_log(ax, "x", sub["budget"], force=True, budget=True)
        ax.set_xlabel(_budget_axis_label(sub))
        return
    ax.set_xticks(range(len(axis.ticks)), labels=list(axis.ticks), rotation=90, fontsize=DOT_LABEL_FONT)
    ax.set_xlim(-0.6, len(axis.ticks) - 0.4)
    ax.xaxis.grid(False)
    budgets = sub.drop_duplicates("cell_id").dropna(subset=["budget_param"])
    budgets = [f"{p}={fmt_param(b)}" for p, b in zip(budgets["budget_param"], budgets["budget_raw"])
               if p and pd.notna(b)]
    ax.set_xlabel("estimator" + (f", each at one budget ({', '.join(dict.fromkeys(budgets))})" if budgets else ""))


def _set_log(ax: plt.Axes, axis: str, values: np.ndarray, *, force: bool = False, budget: bool = False) -> None:
    """Log scale when the values are positive and span a decade (any span with ``force``);
    plain-number tick labels; budgets get base 2 when they are powers of two, ticked at the values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0 or (v <= 0).any():
        return
    span = v.max() / v.min()
    if not (force and span > 1) and span < 10:
        return
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=10)
    if budget:
        ticks = np.unique(v)
        if ticks.size > 12:
            ticks = ticks[np.linspace(0, ticks.size - 1, 12).round().astype(int)]
        target.set_major_locator(FixedLocator(ticks))
        target.set_minor_locator(NullLocator())
    elif span < 100:
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_minor_locator(NullLocator())
    target.set_major_formatter(FuncFormatter(lambda t, _: _num(t)))
    target.set_minor_formatter(NullFormatter())


def _num(t: float) -> str:
    return fmt_param(t) if 1e-3 <= abs(t) < 1e5 else f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _facets(run: RunData, df: pd.DataFrame, n: int, *, legend_space: bool = True, extra_h: float = 0.0,
            panel_w: float = PANEL_W
            ) -> tuple[Figure, Callable[[int, int], plt.Axes], list[str]]:
    """Panels for ``n`` plots per target. Each target gets its own block of rows, its plots wrapped
    at two columns, so that a figure shown at page width keeps its text readable (at four columns
    the text of a 2×4 grid shrank to ~7 px). Returns the figure, ``ax(i_target, j)`` and the target
    labels (``[""]`` when the run has one target). ``extra_h``: inches added to each row (a dot plot's labels)."""
    targets = [t for t in dict.fromkeys(run.cells["target_label"]) if t in set(df["target_label"])] or [""]
    wrap = min(n, 2)
    per_target = math.ceil(n / wrap)
    nrows, ncols = len(targets) * per_target, wrap
    longest = max((len(str(x)) for x in df["series"]), default=0) if "series" in df else 0
    legend_w = max(2.3, 0.075 * longest + 0.8)  # the legend outside on the right: its longest series at 9 pt
    width = panel_w * ncols + (legend_w if legend_space else 0)
    height = (PANEL_H + extra_h) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")
    used = set()

    def ax_at(i: int, j: int) -> plt.Axes:
        pos = (i * per_target + j // wrap, j % wrap)
        used.add(pos)
        return axes[pos]

    for i in range(len(targets)):
        for k in range(per_target * wrap):
            if k >= n:
                axes[i * per_target + k // wrap, k % wrap].set_visible(False)
    return fig, ax_at, targets


def _draw_series(ax: plt.Axes, df: pd.DataFrame, x: str, y: str, styles: dict[str, tuple[str, str, str]],
                 *, yerr: str | None = "stderr", yerr_lo: str | None = None, filled: pd.Series | None = None,
                 bare: pd.Series | None = None, join: str = "all") -> None:
    """One line per series, ±1 s.e. error bars (``yerr``; the lower bar from ``yerr_lo`` when given: an
    asymmetric interval); markers hollow where ``filled`` is False. Where ``bare`` is True (variance may be
    infinite) no error bar is drawn and the marker is hollow with a dashed edge. ``join``: which points the
    line joins — ``"all"``, ``"filled"`` (only neighbouring filled points: a line through unresolved points
    would read as a trend of the quantity when it is one of the noise floor) or ``"none"`` (a dot plot)."""
    for series, grp in df.groupby("series", sort=False):
        grp = grp.sort_values(x)
        color, marker, ls = styles[series]
        err = grp[yerr].to_numpy(dtype=float) if yerr else None
        no_bar = np.zeros(len(grp), bool) if bare is None else bare.loc[grp.index].to_numpy(bool)
        if err is not None:
            err = np.where(np.isfinite(err) & ~no_bar, err, 0.0)
            below = err if yerr_lo is None else grp[yerr_lo].to_numpy(dtype=float)
            below = np.where(np.isfinite(below) & ~no_bar, below, 0.0)
            # on a log axis a bar reaching zero would run off the plot: the lower bar stops at a tenth of
            # the value (one decade; the caption says so) and _clip_log_bottom keeps that end in view
            lower = np.minimum(below, np.abs(grp[y].to_numpy(dtype=float)) * LOWER_BAR_FLOOR)
            err = np.vstack([lower, err])
        fill = np.ones(len(grp), bool) if filled is None else filled.loc[grp.index].to_numpy(bool)
        ax.errorbar(grp[x], grp[y], yerr=err, color=color, linestyle="none", marker="none",
                    capsize=2.5, elinewidth=1.0, alpha=0.9)
        if join != "none":
            line = grp[y].to_numpy(dtype=float)
            if join == "filled":  # NaN breaks the line: only runs of filled neighbours are joined
                line = np.where(fill, line, np.nan)
            ax.plot(grp[x], line, color=color, linestyle=ls, linewidth=1.4, alpha=0.9, gid=f"series:{series}")
        fill = fill & ~no_bar
        if no_bar.any():
            ax.scatter(grp[x][no_bar], grp[y][no_bar], facecolor="white", marker=marker, s=46, zorder=4,
                       edgecolor=color, linewidth=1.3, linestyle="--")
        ax.scatter(grp[x][fill], grp[y][fill], color=color, marker=marker, s=30, zorder=3, edgecolor=color)
        hollow = ~fill & ~no_bar
        ax.scatter(grp[x][hollow], grp[y][hollow], facecolor="white", marker=marker, s=30, zorder=3,
                   edgecolor=color, linewidth=1.3)


def _legend(fig: Figure, run: RunData, series: list[str], extra: list[Line2D] | None = None,
            labels: dict[str, str] | None = None) -> None:
    styles = _style_of(run)
    handles = [Line2D([], [], color=styles[s][0], marker=styles[s][1], linestyle=styles[s][2],
                      label=(labels or {}).get(s, s)) for s in series]
    handles += extra or []
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=LEGEND_FONT)


def _title(ax: plt.Axes, target: str, group: str | None = None, n_targets: int = 1) -> None:
    parts = ([f"group: {group}"] if group is not None else []) + ([target] if target and n_targets > 1 else [])
    if parts:
        ax.set_title("\n".join(parts), fontsize=10)


def _clip_log_bottom(ax: plt.Axes, values: pd.Series) -> None:
    """On a log y axis, keep the view on the values and their (decade-capped) lower error bars: an
    uncapped bar reaching towards zero would otherwise stretch the axis over many decades."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if ax.get_yscale() == "log" and v.size:
        bottom = v.min() * (1 - LOWER_BAR_FLOOR) / 1.5
        if ax.get_ylim()[0] < bottom:
            ax.set_ylim(bottom=bottom)


def _positive(v: pd.Series) -> pd.Series:
    return v.where(v > 0)


# -- bias ---------------------------------------------------------------------------------------
def fit_loglog_slope(x: np.ndarray, y: np.ndarray, se: np.ndarray) -> tuple[float, float] | None:
    """Weighted least-squares slope of log y on log x (weights 1/se(log y)² = (y/se)²), with its
    standard error; ``None`` with fewer than two distinct positive points."""
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    x, y, se = x[ok], y[ok], se[ok]
    if np.unique(x).size < 2:
        return None
    rel = np.where(np.isfinite(se) & (se > 0), se / y, np.nan)
    w = 1.0 / np.where(np.isfinite(rel), rel, np.nanmedian(rel) if np.isfinite(rel).any() else 1.0) ** 2
    X = np.column_stack([np.ones_like(x), np.log(x)])
    XtW = X.T * w
    cov = np.linalg.pinv(XtW @ X)
    beta = cov @ XtW @ np.log(y)
    if x.size > 2:  # scale by the residual variance when there are residual degrees of freedom
        resid = np.log(y) - X @ beta
        cov = cov * max(1.0, float((w * resid**2).sum() / (x.size - 2)))
    return float(beta[1]), float(math.sqrt(cov[1, 1]))


Z95 = NormalDist().inv_cdf(0.975)  # the 95 % two-sided normal quantile: an interval's half-width / Z95 stands in for a s.e. in the fit


def bias_points(run: RunData, *, keep_unbudgeted: bool = False) -> pd.DataFrame | None:
    """What the bias figure draws, one row per cell with a budget: ``point`` (the headline relative bias,
    :func:`gradbench.report.format.bias_point`, the number the tables print), ``low``/``high`` (its per-row
    95 % interval, or ±1 s.e. of the plug-in for a run without one), ``decision`` (the verdict's value) and
    ``significant`` (the verdict is "biased"). ``None`` when the run has no relative bias. ``keep_unbudgeted``:
    keep the cells without a budget too (a dot plot draws them)."""
    if not run.has("rel_bias"):
        return None
    decision = bias_decision(run)
    metrics = ["rel_bias", "rel_bias_debiased", "rel_bias_ci_low", "rel_bias_ci_high", "bias_rare_count", decision]
    df = run.wide([m for m in dict.fromkeys(metrics) if run.has(m)])
    df = df.dropna(subset=["rel_bias"] if keep_unbudgeted else ["budget", "rel_bias"])
    if df.empty:
        return None
    rows = [{k: r.get(k) for k in metrics} for _, r in df.iterrows()]
    point = np.array([bias_point(m) for m in rows])
    interval = np.array([has_interval(m) for m in rows])
    se = df["rel_bias__se"].to_numpy(float)
    low = np.where(interval, df.get("rel_bias_ci_low", np.nan), point - se)
    high = np.where(interval, df.get("rel_bias_ci_high", np.nan), point + se)
    verdicts = [bias_verdict(m, decision, run.alpha, n, rare_state_threshold())
                for m, n in zip(rows, df["n_replicates"] if "n_replicates" in df else [None] * len(df))]
    return df.assign(point=point, low=low, high=high, interval=interval,
                     decision=df.get(decision, np.nan),
                     significant=[v.flagged for v in verdicts], verdict=[str(v) for v in verdicts])


def bias_vs_budget(run: RunData) -> Figure | None:
    """Headline relative bias against budget with its per-row 95 % interval (:func:`bias_points`); a cell
    whose headline is 0 is drawn as a downward triangle at its interval's upper end (the bias is below it)."""
    df = bias_points(run, keep_unbudgeted=True)
    if df is None:
        return None
    df, bx = _budget_frame(run, df)
    decision = bias_decision(run)
    has_p = df["decision"].notna().any()
    # a positive value to draw on the log axis: the point, or the upper end where the point is 0
    upper_only = ~(df["point"] > 0)
    df = df.assign(y=np.where(upper_only, df["high"], df["point"]), upper_only=upper_only,
                   err_lo=np.where(upper_only, 0.0, df["point"] - df["low"]),
                   err_hi=np.where(upper_only, 0.0, df["high"] - df["point"]))
    df = df[df["y"] > 0]
    if df.empty:
        return None
    styles = _style_of(run)
    fig, axes, targets = _facets(run, df, 2 if has_p else 1, extra_h=bx.extra_height,
                                 panel_w=bx.panel_width)
    slopes: dict[str, list[str]] = {}  # series -> one fitted slope per target (each target has its own fit)
    for i, target in enumerate(targets):
        sub = df[df["target_label"] == target] if target else df
        ax = axes(i, 0)
        _draw_series(ax, sub[~sub["upper_only"]], "budget", "y", styles, yerr="err_hi", yerr_lo="err_lo",
                     filled=sub["significant"], join="none" if bx.dots else "filled")
        for series, grp in sub[sub["upper_only"]].groupby("series", sort=False):
            color, _, _ = styles[series]
            ax.scatter(grp["budget"], grp["y"], marker="v", facecolor="white", edgecolor=color, s=34, zorder=3,
                       linewidth=1.3)
        for series, grp in sub.groupby("series", sort=False):
            sig = grp[grp["significant"] & ~grp["upper_only"]]
            half = np.where(sig["interval"], (sig["high"] - sig["low"]) / (2 * Z95), sig["rel_bias__se"])
            fit = fit_loglog_slope(sig["budget"].to_numpy(float), sig["point"].to_numpy(float), np.asarray(half, float))
            if fit is None or bx.dots:
                continue
            slope, slope_se = fit
            xs = np.sort(sig["budget"].to_numpy(float))
            # the fitted slope, drawn through the centre of the significant points (log scale)
            lx, ly = np.log(sig["budget"].to_numpy(float)), np.log(sig["point"].to_numpy(float))
            c = ly.mean() - slope * lx.mean()
            ys = np.exp(c + slope * np.log(xs))
            ax.plot(xs, ys, color=styles[series][0], linestyle=(0, (1, 1.5)), linewidth=2.2, alpha=0.6)
            fitted = f"slope {slope:+.2f} ± {slope_se:.2f}" + (f" ({target})" if target else "")
            slopes.setdefault(series, []).append(fitted)
        ax.set_ylabel("relative bias ‖b‖ / ‖g*‖" if sub["interval"].any() else metric_label("rel_bias"))
        _budget_xaxis(ax, sub, bx)
        _set_log(ax, "y", _positive(sub["y"]), force=True)
        _clip_log_bottom(ax, sub["y"])
        _title(ax, target, None, len(targets))
        if has_p:
            ax = axes(i, 1)
            p = sub.assign(pplot=sub["decision"].clip(lower=P_FLOOR))
            _draw_series(ax, p, "budget", "pplot", styles, yerr=None, filled=p["significant"],
                         join="none" if bx.dots else "all")
            ax.axhline(run.alpha, color="#b2182b", linestyle="--", linewidth=1)
            ax.text(0.98, min(max(run.alpha, P_FLOOR), 1.0), f"α = {run.alpha:g}", color="#b2182b", fontsize=8,
                    va="bottom", ha="right", transform=ax.get_yaxis_transform(), clip_on=True)
            ax.set_yscale("log")
            low = max(P_FLOOR / 3, min(1e-4, float(p["pplot"].min()) / 30))
            ax.set_ylim(low, 2.0)
            ticks = (1e-12, 1e-9, 1e-6, 1e-3, 1) if low < 1e-4 else (1e-4, 1e-3, 1e-2, 1e-1, 1)
            ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if t >= low]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: "≤1e-12" if t <= P_FLOOR else _num(t)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel(_decision_label(decision))
            _budget_xaxis(ax, sub, bx)
            _title(ax, target, None, len(targets))
    series = list(dict.fromkeys(df["series"]))
    letter = decision_symbol(decision)
    extra = [Line2D([], [], color="grey", marker="o", linestyle="none",
                    label=f"biased ({letter} < {run.alpha:g})"),
             Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="none",
                    label="not shown biased / inconclusive")]
    if df["upper_only"].any():
        extra.append(Line2D([], [], color="grey", marker="v", markerfacecolor="white", linestyle="none",
                            label="estimate 0: interval's upper end"))
    extra.append(Line2D([], [], color="grey", linestyle=(0, (1, 1.5)), linewidth=2.2, alpha=0.6,
                        label="log-log fit (biased points)"))
    labels = {s: s + "".join(f"\n  {line}" for line in lines) for s, lines in slopes.items()}
    _legend(fig, run, series, extra, labels)
    return fig


def _decision_label(decision: str) -> str:
    names = {c.metric: c.name for c in CORRECTIONS.values()}
    return f"bias {names[decision]}" if decision in names else "bias p-value (H0: unbiased)"


HEAVY_LEGEND = "variance may be infinite (tail index bound ≤ 2): no error bar"


def _heavy_marker() -> Line2D:
    return Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="none", markersize=7,
                  label=HEAVY_LEGEND)


# -- variance / SNR -----------------------------------------------------------------------------
def _per_group(run: RunData, metric: str, ylabel: str, band: tuple[str, str] | None = None) -> Figure | None:
    if not run.has(metric):
        return None
    df, bx = _budget_frame(run, run.metric(metric, group=None).dropna(subset=["value"]))
    if df.empty:
        return None
    groups = [g for g in run.param_groups if g in set(df["param_group"])]
    heavy = infinite_variance_cells(run) if metric in heavy_tail_metrics() else set()
    df = df.assign(bare=df["cell_id"].isin(heavy))
    styles = _style_of(run)
    fig, axes, targets = _facets(run, df, len(groups), extra_h=bx.extra_height,
                                 panel_w=bx.panel_width)
    if band:
        lo = run.metric(band[0], group=None).set_index(["cell_id", "param_group"])["value"]
        hi = run.metric(band[1], group=None).set_index(["cell_id", "param_group"])["value"]
        key = pd.MultiIndex.from_frame(df[["cell_id", "param_group"]])
        df = df.assign(lo=lo.reindex(key).to_numpy(), hi=hi.reindex(key).to_numpy())
    for i, target in enumerate(targets):
        for j, group in enumerate(groups):
            ax = axes(i, j)
            sub = df[(df["param_group"] == group) & ((df["target_label"] == target) if target else True)]
            if sub.empty:
                ax.set_visible(False)
                continue
            if band:
                for series, grp in sub.groupby("series", sort=False):
                    grp = grp.sort_values("budget")
                    if bx.dots:  # one x per series: the band is a wide translucent bar
                        ax.vlines(grp["budget"], grp["lo"], grp["hi"], color=styles[series][0], alpha=0.15,
                                  linewidth=9)
                    else:
                        ax.fill_between(grp["budget"], grp["lo"], grp["hi"], color=styles[series][0], alpha=0.15,
                                        linewidth=0)
            _draw_series(ax, sub, "budget", "value", styles, bare=sub["bare"], join="none" if bx.dots else "all")
            vals = pd.concat([_positive(sub["value"])] + ([sub["lo"], sub["hi"]] if band else []))
            _set_log(ax, "y", vals.dropna(), force=True)
            _clip_log_bottom(ax, vals.dropna())
            _budget_xaxis(ax, sub, bx)
            ax.set_ylabel(ylabel)
            _title(ax, target, group, len(targets))
    iqr = Line2D([], [], color="grey", linewidth=6, alpha=0.15, label="interquartile range over coordinates")
    extra = ([iqr] if band else []) + ([_heavy_marker()] if df["bare"].any() else [])
    _legend(fig, run, list(dict.fromkeys(df["series"])), extra)
    return fig


def variance_vs_budget(run: RunData) -> Figure | None:
    return _per_group(run, "trace_cov", metric_label("trace_cov"))


def per_group_vs_budget(run: RunData, metric: str, ylabel: str) -> Figure | None:
    """One metric (±1 s.e.) against budget, a panel per parameter group and a row per target, log-log; cells whose
    variance may be infinite drawn hollow where the metric is variance-type. For protocols' own figures."""
    return _per_group(run, metric, ylabel)


def snr_vs_budget(run: RunData) -> Figure | None:
    if run.has("snr_q50"):
        band = ("snr_q25", "snr_q75") if run.has("snr_q25") and run.has("snr_q75") else None
        return _per_group(run, "snr_q50", "SNR |E ĝⱼ| / sd(ĝⱼ) (median over j)", band)
    return _per_group(run, "snr_median", "SNR |E ĝⱼ| / sd(ĝⱼ) (median over j)")


# -- efficiency frontier ------------------------------------------------------------------------
def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated in (lower cost, lower value), sorted by cost."""
    order = np.lexsort((value, cost))
    front, best = [], math.inf
    for i in order:
        if value[i] < best:
            front.append(i)
            best = value[i]
    return np.array(front, dtype=int)


def _frontier_panel(ax: plt.Axes, sub: pd.DataFrame, x: str, y: str, styles: dict[str, tuple[str, str, str]],
                    xscale: float = 1.0, heavy: set[str] | None = None) -> None:
    sub = sub.assign(_x=sub[x] * xscale, _xse=sub[x + "__se"] * xscale, order=sub["budget"].fillna(0))
    for series, grp in sub.groupby("series", sort=False):
        grp = grp.sort_values(["_x", "order"])
        color, marker, ls = styles[series]
        bare = grp["cell_id"].isin(heavy or set()).to_numpy()  # variance may be infinite: no error bar, hollow
        yerr = np.where(bare, 0.0, grp[y + "__se"].fillna(0).to_numpy(float))
        ax.errorbar(grp["_x"], grp[y], yerr=yerr, xerr=grp["_xse"].fillna(0), color=color,
                    marker=marker, linestyle=ls, markersize=5, capsize=2.5, linewidth=1.4, elinewidth=1.0)
        if bare.any():
            ax.scatter(grp["_x"][bare], grp[y][bare], facecolor="white", marker=marker, s=46, zorder=4,
                       edgecolor=color, linewidth=1.3, linestyle="--")
        # budget labels at the two ends of each series only: labels at every point overlap
        ends = grp.dropna(subset=["budget"])
        ends = ends.iloc[[0, -1]].drop_duplicates("cell_id") if len(ends) else ends
        for k, (_, r) in enumerate(ends.iterrows()):
            if r["budget_param"]:
                ax.annotate(f"{r['budget_param']}={fmt_param(r['budget'])}", (r["_x"], r[y]),
                            textcoords="offset points", xytext=(5, 5) if k == 0 else (5, -11), fontsize=8,
                            color=color)
    front = pareto_front(sub["_x"].to_numpy(float), sub[y].to_numpy(float))
    fx, fy = sub["_x"].to_numpy(float)[front], sub[y].to_numpy(float)[front]
    fx, fy = np.append(fx, sub["_x"].max()), np.append(fy, fy[-1])  # best so far, up to the largest cost
    ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1, alpha=0.6, zorder=1)
    _set_log(ax, "x", sub["_x"], force=True)
    _set_log(ax, "y", sub[y])


def _frontier_panels(run: RunData) -> list[tuple[str, str]]:
    panels = []
    if run.has("work_norm_var") and run.has("evals_mean"):
        panels.append(("evals_mean", "work_norm_var"))
    if run.has("work_norm_var_seconds") and run.has("seconds_per_estimate"):
        panels.append(("seconds_per_estimate", "work_norm_var_seconds"))
    return panels


def efficiency_frontier(run: RunData) -> Figure | None:
    """tr Σ̂ × cost vs cost; with the wallclock protocol also tr Σ̂ × seconds vs seconds. One frontier
    per gradient (∇θ, ∇φ): estimators of different gradients are never on one frontier."""
    panels = _frontier_panels(run)
    if not panels:
        return None
    df = run.wide([m for p in panels for m in p])
    keep = np.zeros(len(df), bool)
    for x, y in panels:
        keep |= ((df[x] > 0) & (df[y] > 0)).to_numpy()
    df = df[keep]
    if df.empty:
        return None
    gradients = list(dict.fromkeys(df["gradient"]))
    layout = [(g, x, y) for g in gradients for x, y in panels]
    styles = _style_of(run)
    heavy = infinite_variance_cells(run)
    fig, axes, targets = _facets(run, df, len(layout))
    for i, target in enumerate(targets):
        for j, (gradient, x, y) in enumerate(layout):
            ax = axes(i, j)
            sub = df[df["target_label"] == target] if target else df
            sub = sub[(sub[x] > 0) & (sub[y] > 0) & (sub["gradient"] == gradient)]
            if sub.empty:
                ax.set_visible(False)
                continue
            if x == "evals_mean":
                _frontier_panel(ax, sub, x, y, styles, heavy=heavy)
                ax.set_xlabel(metric_label("evals_mean"))
                ax.set_ylabel("tr Σ̂ × cost (gradient units² × evals)")
            else:
                scale, unit = _time_unit(sub[x].to_numpy(float))
                _frontier_panel(ax, sub, x, y, styles, xscale=scale, heavy=heavy)
                ax.set_xlabel(f"wall-clock per estimate ({unit})")
                ax.set_ylabel("tr Σ̂ × seconds (gradient units² × s)")
            _title(ax, target, None, len(targets))
            ax.set_title(f"{gradient} estimators" + (f"\n{target}" if target and len(targets) > 1 else ""),
                         fontsize=10)
    extra = [Line2D([], [], color="black", linestyle="--", alpha=0.6, label="frontier (not dominated)")]
    if df["cell_id"].isin(heavy).any():
        extra.append(_heavy_marker())
    _legend(fig, run, list(dict.fromkeys(df["series"])), extra)
    if len(layout) == 1:
        fig.set_size_inches(PANEL_W * 1.6 + 2.2, PANEL_H * 1.2 * len(targets))
    return fig


HEAVY_CAPTION = (" Hollow markers with a dashed edge and no error bar: cells whose tail index (Hill) has a one-sided "
                 "95 % lower bound ≤ 2 — the variance may be infinite, so the value is not a reliable estimate and its "
                 "standard error is meaningless.")


def frontier_caption(run: RunData) -> str:
    """The caption names only the panels the figure has."""
    text = ("Work-normalised variance tr Σ̂ × cost against cost (log-joint evaluations per estimate); lower is "
            "better at a given cost. The dashed step line joins the estimates no other estimate of the same gradient "
            "beats in both; estimators of different gradients (∇θ, ∇φ) are on separate panels, never on one "
            "frontier. Budget labels mark the two ends of each series." + HEAVY_CAPTION)
    if ("seconds_per_estimate", "work_norm_var_seconds") in _frontier_panels(run):
        text += " Right of each: the same with wall-clock seconds per estimate as the cost."
    return text


# -- meeting times ------------------------------------------------------------------------------
def _meeting_frame(run: RunData) -> pd.DataFrame | None:
    if run.meeting is None or run.meeting.empty:
        return None
    m = run.meeting.drop(columns=[c for c in ("estimator",) if c in run.meeting]).merge(run.cells, on="cell_id")
    return m if not m.empty else None


def meeting_times(run: RunData) -> Figure | None:
    """ECDF of τ and survival P(τ > t) on a log axis, per budget, one row per coupled series."""
    m = _meeting_frame(run)
    if m is None:
        return None
    m = m.assign(panel=[s + (f" · {t}" if t else "") for s, t in zip(m["series"], m["target_label"])])
    panels = list(dict.fromkeys(m["panel"]))
    fig, grid = plt.subplots(len(panels), 2, figsize=(PANEL_W * 2 + 1.6, PANEL_H * len(panels)), squeeze=False,
                             layout="constrained")
    for i, panel in enumerate(panels):
        sub = m[m["panel"] == panel]
        est = str(sub["estimator"].iloc[0])
        hue_key = sub["budget"].map(lambda b, sub=sub: f"{sub['budget_param'].iloc[0]}={fmt_param(b)}" if pd.notna(b) else "—")
        sub = sub.assign(budget_label=hue_key)
        order = list(dict.fromkeys(sub.sort_values("budget")["budget_label"]))
        # a budget sweep in perceptually ordered, well separated colours (viridis without its pale end)
        shades = [matplotlib.colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, len(order))]
        palette = dict(zip(order, shades if len(order) > 1 else [estimator_color(est)]))
        ax, ax_s = grid[i, 0], grid[i, 1]
        floor = math.inf  # the survival panel's bottom: below its smallest positive value
        for label in order:
            taus = sub.loc[sub["budget_label"] == label, "tau"].to_numpy(float)
            cens = sub.loc[sub["budget_label"] == label, "censored"].to_numpy(bool) if "censored" in sub else None
            eps = dkw_halfwidth(taus.size, DKW_ALPHA)
            t, f = ecdf_steps(taus)
            ax.step(t, f, where="post", color=palette[label], linewidth=1.6, label=label)
            ax.fill_between(t, np.clip(f - eps, 0, 1), np.clip(f + eps, 0, 1), step="post", color=palette[label],
                            alpha=0.15, linewidth=0)
            t, s = survival(taus)
            if s.size:
                floor = min(floor, float(s.min()) / 3)
                ax_s.step(t, s, where="post", color=palette[label], linewidth=1.6, label=label)
                ax_s.fill_between(t, np.clip(s - eps, s.min() / 3, 1), np.clip(s + eps, 0, 1), step="post",
                                  color=palette[label], alpha=0.15, linewidth=0)
            if cens is not None and cens.any():
                cap = taus[cens].min()
                ax_s.axvline(cap, color=palette[label], linestyle=":", linewidth=1)
                ax_s.text(cap, 0.5, f" {int(cens.sum())} censored", rotation=90, fontsize=8, color=palette[label],
                          transform=ax_s.get_xaxis_transform(), va="center")
        _set_log(ax, "x", sub["tau"].clip(lower=1), force=False)
        if ax.get_xscale() == "linear":  # τ is an integer: no fractional ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_s.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("meeting time τ (iterations)")
        ax.set_ylabel("ECDF P(τ ≤ t)")
        ax_s.set_yscale("log")
        if math.isfinite(floor):
            ax_s.set_ylim(floor, 1.5)
        ax_s.set_xlabel("t (iterations)")
        ax_s.set_ylabel("survival P(τ > t)")
        for a in (ax, ax_s):
            a.set_title(panel, fontsize=10)
            a.legend(fontsize=LEGEND_FONT)
    return fig


def dkw_halfwidth(n: int, alpha: float) -> float:
    """Half-width ε = √(log(2/α) / (2n)) of the Dvoretzky–Kiefer–Wolfowitz band: with probability ≥ 1 − α the
    true CDF lies within ±ε of the ECDF of n i.i.d. draws at every t at once (Massart 1990's tight constant)."""
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * n)) if n > 0 else math.inf


def ecdf_steps(taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical P(τ ≤ t) at t = min τ − 1, …, max τ (finite values; a step function, drawn ``where="post"``)."""
    taus = np.sort(np.asarray(taus, dtype=float)[np.isfinite(taus)])
    if taus.size == 0:
        return np.array([]), np.array([])
    t = np.arange(int(taus[0]) - 1, int(taus[-1]) + 1)
    return t, np.searchsorted(taus, t, side="right") / taus.size


def survival(taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical P(τ > t) at t = 0, 1, …, max τ − 1 (positive values only, for a log axis)."""
    taus = np.asarray(taus, dtype=float)
    taus = taus[np.isfinite(taus)]
    if taus.size == 0:
        return np.array([]), np.array([])
    t = np.arange(0, int(taus.max()) + 1)
    s = 1.0 - np.searchsorted(np.sort(taus), t, side="right") / taus.size
    keep = s > 0
    return t[keep], s[keep]


def meeting_summary(run: RunData) -> Figure | None:
    """τ mean and quantiles vs budget, from the tidy metrics (drawn when raw τ are absent)."""
    if run.meeting is not None and not run.meeting.empty:
        return None
    stats = [m for m in ("tau_mean", "tau_q50", "tau_q90", "tau_q99") if run.has(m)]
    if not stats:
        return None
    df, bx = _budget_frame(run, run.wide(stats))
    if df.empty:
        return None
    styles = _style_of(run)
    fig, axes, targets = _facets(run, df, len(stats), extra_h=bx.extra_height,
                                 panel_w=bx.panel_width)
    for i, target in enumerate(targets):
        for j, stat in enumerate(stats):
            ax = axes(i, j)
            sub = (df[df["target_label"] == target] if target else df).dropna(subset=[stat])
            sub = sub.assign(stderr=sub[stat + "__se"])
            _draw_series(ax, sub, "budget", stat, styles, join="none" if bx.dots else "all")
            _set_log(ax, "y", _positive(sub[stat]))
            _clip_log_bottom(ax, sub[stat])
            _budget_xaxis(ax, sub, bx)
            ax.set_ylabel("meeting time τ (iterations)")
            suffix = f"\n{target}" if target and len(targets) > 1 else ""
            ax.set_title(stat.replace("tau_", "τ ") + suffix, fontsize=10)
    _legend(fig, run, list(dict.fromkeys(df["series"])))
    return fig


# -- wall clock ---------------------------------------------------------------------------------
def _time_unit(seconds: np.ndarray) -> tuple[float, str]:
    top = float(np.nanmax(seconds)) if np.isfinite(seconds).any() else 1.0
    return (1e6, "µs") if top < 1e-3 else ((1e3, "ms") if top < 1 else (1.0, "s"))


def _device_names(run: RunData) -> str:
    """``cpu (AMD EPYC)``: the device column, with the hardware name the wallclock protocol records
    in ``method`` (``device=…;``) when present."""
    devices = sorted(map(str, run.cells["device"].unique())) if "device" in run.cells else []
    rows = run.results[run.results["metric"] == "seconds_per_estimate"]
    found = (re.search(r"device=([^;]+)", t) for t in rows["method"].astype(str))
    names = sorted({m.group(1).strip() for m in found if m})
    return ", ".join(devices) + (f" ({', '.join(names)})" if names else "") if devices or names else "?"


def wallclock(run: RunData) -> Figure | None:
    stats = [m for m in ("seconds_per_estimate", "evals_per_second") if run.has(m)]
    if not stats:
        return None
    df = run.wide(stats)
    have_budget = df["budget"].dropna().nunique() >= 2  # else bars over every cell (a sweep needs two budgets)
    styles = _style_of(run)
    fig, axes, targets = _facets(run, df, len(stats))
    devices = _device_names(run)
    for i, target in enumerate(targets):
        for j, stat in enumerate(stats):
            ax = axes(i, j)
            sub = (df[df["target_label"] == target] if target else df).dropna(subset=[stat])
            scale, ylabel = 1.0, "throughput (log-joint evaluations / s)"
            if stat == "seconds_per_estimate":
                scale, unit = _time_unit(sub[stat].to_numpy(float))
                ylabel = f"wall-clock per estimate ({unit})"
            sub = sub.assign(y=sub[stat] * scale, stderr=sub[stat + "__se"] * scale)
            if have_budget:
                sub = sub.dropna(subset=["budget"])
                _draw_series(ax, sub, "budget", "y", styles)
                _set_log(ax, "x", sub["budget"], force=True, budget=True)
                ax.set_xlabel(_budget_axis_label(sub))
            else:
                ax.bar(sub["label"], sub["y"], yerr=sub["stderr"].fillna(0),
                       color=[styles[s][0] for s in sub["series"]], capsize=3)
                plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
            _set_log(ax, "y", _positive(sub["y"]))
            _clip_log_bottom(ax, sub["y"])
            ax.set_ylabel(ylabel)
            ax.set_title(f"device: {devices}" + (f" · {target}" if target and len(targets) > 1 else ""), fontsize=10)
    _legend(fig, run, list(dict.fromkeys(df["series"])))
    return fig


# -- MCMC diagnostics ---------------------------------------------------------------------------
def mcmc_vs_budget(run: RunData) -> Figure | None:
    """Acceptance rate and ESS of the estimator's inner chain (the ``mcmc`` protocol) against budget."""
    stats = [m for m in ("acceptance", "ess") if run.has(m)]
    if not stats:
        return None
    df, bx = _budget_frame(run, run.wide(stats))
    if df.empty:
        return None
    styles = _style_of(run)
    fig, axes, targets = _facets(run, df, len(stats), extra_h=bx.extra_height,
                                 panel_w=bx.panel_width)
    for i, target in enumerate(targets):
        for j, stat in enumerate(stats):
            ax = axes(i, j)
            sub = (df[df["target_label"] == target] if target else df).dropna(subset=[stat])
            sub = sub.assign(stderr=sub[stat + "__se"])
            _draw_series(ax, sub, "budget", stat, styles, join="none" if bx.dots else "all")
            if stat == "ess":
                _set_log(ax, "y", _positive(sub[stat]))
            _budget_xaxis(ax, sub, bx)
            ax.set_ylabel("acceptance rate" if stat == "acceptance" else "effective sample size")
            ax.set_title(stat + (f"\n{target}" if target and len(targets) > 1 else ""), fontsize=10)
    _legend(fig, run, list(dict.fromkeys(df["series"])))
    return fig


VARIANCE_CAPTION = "Trace of the covariance of one estimate, tr Σ̂ (±1 s.e.), per parameter group, log-log." + HEAVY_CAPTION


def figure_specs() -> list[FigureSpec]:
    """The figures of every registered protocol (:attr:`ProtocolSpec.figures`), then of every cell kind
    (``CellKind.figures``, e.g. training curves), in registry order."""
    from gradbench import registry

    return [*(f for spec in registry.PROTOCOLS.values() for f in spec.figures),
            *(f for kind in registry.CELL_KINDS.values() for f in (kind.figures or []))]


def draw(spec: FigureSpec, run: RunData) -> Figure | None:
    with theme():
        fig = spec.drawer()(run)
        if fig is not None:
            fit_labels(fig)
            declutter(fig)
        return fig


def declutter(fig: Figure) -> None:
    """Hide each annotation (a point's label, e.g. its budget) that would overlap an earlier one or any other text
    of its panel, in drawing order: overlapping labels cannot be read, and the legend and tables carry them."""
    from matplotlib.text import Annotation

    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        notes = [t for t in ax.texts if isinstance(t, Annotation) and t.get_visible()]
        if not notes:
            continue
        fixed = [t.get_window_extent(renderer) for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts)
                 if t.get_visible() and t.get_text() and not isinstance(t, Annotation)]
        kept = []
        for note in notes:
            box = note.get_window_extent(renderer)
            if any(box.overlaps(other) for other in fixed + kept) or not fig.bbox.contains(box.x0, box.y0) \
                    or not fig.bbox.contains(box.x1, box.y1):
                note.set_visible(False)
            else:
                kept.append(box)


def fit_labels(fig: Figure, rounds: int = 6) -> None:
    """Wrap every axis label and title longer than its panel onto more lines (at word breaks), so that neighbouring
    panels' labels neither overlap nor run off the figure; constrained layout then makes room for the lines."""
    for _ in range(rounds):
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        changed = False
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            box = ax.get_window_extent(renderer)
            for text, room, vertical in ((ax.xaxis.label, box.width, False), (ax.yaxis.label, box.height, True),
                                         (ax.title, box.width, False)):
                changed |= _wrap_to(text, room, vertical, renderer)
        if not changed:
            return


def _wrap_to(text: Text, room: float, vertical: bool, renderer: object) -> bool:
    """Re-wrap ``text`` so that its long side fits in ``room`` pixels; True when it changed."""
    content = text.get_text()
    if not content or not text.get_visible():
        return False
    ext = text.get_window_extent(renderer)
    size = ext.height if vertical else ext.width
    if size <= room * 1.02:
        return False
    if "; " in content:  # a list of budget parameters: one per line first
        text.set_text(content.replace("; ", "\n"))
        return True
    longest = max(len(line) for line in content.split("\n"))
    width = max(8, int(longest * room / size) - 1)
    wrapped = "\n".join(textwrap.fill(line, width, break_long_words=False) for line in content.split("\n"))
    if wrapped != content:
        text.set_text(wrapped)
        return True
    if text.get_fontsize() > MIN_LABEL_FONT:  # a single word longer than the panel: a smaller font
        text.set_fontsize(max(MIN_LABEL_FONT, text.get_fontsize() * min(0.9, room / size)))
        return True
    return False


def text_boxes(fig: Figure) -> list[tuple[str, object]]:
    """(text, window extent) of every visible non-empty text artist of a drawn figure: titles, axis and tick
    labels, legends, annotations."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    tick_labels, drawn = set(), set()  # a tick outside the view limits keeps a label that is never drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels |= {id(tick.label1), id(tick.label2)}
            for tick in axis._update_ticks():  # the ticks matplotlib draws (private, stable since 3.1)
                drawn |= {id(tick.label1), id(tick.label2)}
    out = []
    for t in fig.findobj(Text):
        if not (t.get_visible() and t.get_text().strip()) or (t.axes is not None and not t.axes.get_visible()):
            continue
        if id(t) in tick_labels and id(t) not in drawn:
            continue
        out.append((t.get_text(), t.get_window_extent(renderer)))
    return out


def layout_problems(fig: Figure, pad: float = 0.5) -> list[str]:
    """Texts of a figure that run off it or overlap one another (by more than ``pad`` pixels each way): one line
    each; empty when every label is readable. Tick labels outside their axis' view limits are not drawn and
    not counted."""
    boxes = [(t, b) for t, b in text_boxes(fig) if b.width > 0 and b.height > 0]
    w, h = fig.bbox.width, fig.bbox.height
    problems = [f"off the figure: {t!r}" for t, b in boxes
                if b.x0 < -pad or b.y0 < -pad or b.x1 > w + pad or b.y1 > h + pad]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            if min(a.x1, b.x1) - max(a.x0, b.x0) > pad and min(a.y1, b.y1) - max(a.y0, b.y0) > pad:
                problems.append(f"overlap: {ta!r} and {tb!r}")
    return problems
