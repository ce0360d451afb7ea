"""Figures and tables of ``train`` runs (protocol :mod:`gradbench.training.loop`).

A training cell is (target, θ-estimator, φ-estimator, training seed); its *pair* is everything but the seed
(:func:`gradbench.training.stats.pair_label`), and the training seeds are the replicates. Drawn only when the run
has ``train`` rows:

* ``train_curves`` — learning curves from ``curves.parquet``: the IWAE_{curve_K} test and train estimates against
  the optimiser step, and the test estimate against log-joint evaluations and training seconds; lines are means over
  seeds at each curve step, bands ±1 s.e. over seeds (sd/√n), x on the evals/seconds panels the mean over seeds.
* ``train_final`` — final held-out log p(x) per pair, mean over seeds with the 95 % Student-t interval
  (mean ± t_{0.975, n−1} · s.e.) and the seeds as dots; right: the paired differences d_s = pair(s) − baseline(s)
  over shared seeds with their 95 % t-interval, annotated with the paired t and exact sign-flip p-values
  (:func:`~gradbench.training.stats.paired_test`). The baseline is the run's first pair (the suite's order).
* ``train_tau`` — coupled θ-estimators: the meeting time τ of each training step's chains, mean ± s.e. over the
  steps and seeds of each step bin, and the bin's maximum, against the step.

Tables: mean ± s.e. over seeds of every final metric per pair (:func:`~gradbench.training.stats.summarize`), and
the paired tests between every two pairs (the first rows against the baseline).
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from gradbench.report.data import RunData, fmt_param
from gradbench.report.figures import LEGEND_FONT, PANEL_H, PANEL_W, FigureSpec
from gradbench.report.style import LINESTYLES, MARKERS, estimator_color
from gradbench.report.tables import Cell, Table, fmt_p, fmt_value
from gradbench.training.params import TRAIN

TAU_BINS = 16  # step bins of the τ-over-training figure
FINAL_METRICS = [("test_loglik", "test log p(x)"), ("train_loglik", "train log p(x)"),
                 ("test_iwae_bound", "test log p(x) ≥ IWAE bound"), ("train_iwae_bound", "train log p(x) ≥ IWAE bound"),
                 ("test_iwae_bound_refit", "test log p(x) ≥ bound, refitted encoder"),
                 ("test_iwae_bound_K_gain", "bound gain, K vs K_check"), ("steps", "steps"),
                 ("evals", "log-joint evals"), ("seconds", "train seconds"), ("seconds_per_step", "s / step"),
                 ("nonfinite_steps", "non-finite steps"), ("censored_steps", "censored coupled steps"),
                 ("train_tau_mean", "τ mean over training"), ("train_tau_max", "τ max over training")]
HELD_OUT = {"test_loglik": "test log p(x)", "test_iwae_bound": "test log p(x) ≥ IWAE bound"}


def held_out_metric(table: pd.DataFrame | None) -> str | None:
    """The run's held-out row: ``test_loglik`` (exact: enumeration or quadrature) or ``test_iwae_bound`` (an IWAE_K
    lower bound under each model's own encoder); None when the run has neither."""
    present = set() if table is None else set(table["metric"])
    return next((m for m in HELD_OUT if m in present), None)


# -- data ---------------------------------------------------------------------------------------
def train_table(run: RunData) -> pd.DataFrame | None:
    """The run's ``train`` rows with a ``pair`` column (None when the run has none)."""
    if TRAIN not in run.protocols:
        return None
    from gradbench.training.stats import arm_settings, pair_labels

    t = run.results[run.results["protocol"] == TRAIN].copy()
    t["pair"] = pair_labels(t)
    t["settings"] = arm_settings(t)
    return t


def pairs_of(table: pd.DataFrame) -> list[str]:
    """Pairs in the run's (suite's) order; the first is the baseline of the paired tests."""
    return list(dict.fromkeys(table["pair"]))


def load_curves(run: RunData, table: pd.DataFrame) -> pd.DataFrame | None:
    """The run's learning curves (its ``curves`` side table, gradbench.report.data.read_side_tables) with ``pair``,
    ``target_id`` and ``train_seed`` columns; None when there are none."""
    curves = run.side.get("curves")
    if curves is None:
        return None
    ident = table.drop_duplicates("cell_id").set_index("cell_id")
    curves = curves[curves["cell_id"].isin(ident.index)].copy()
    if curves.empty:
        return None
    curves["pair"] = curves["cell_id"].map(ident["pair"])
    curves["target_id"] = curves["cell_id"].map(ident["target_id"])
    curves["train_seed"] = curves["cell_id"].map(ident["estimator.train_seed"])
    return curves


def _styles(table: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """pair → (colour of its θ-estimator, marker, line style): pairs sharing a θ-estimator differ in marker/line."""
    out: dict[str, tuple[str, str, str]] = {}
    seen: dict[str, int] = {}
    for pair, theta in table.drop_duplicates("pair")[["pair", "estimator.theta_estimator"]].itertuples(index=False):
        i = seen.get(theta, 0)
        seen[theta] = i + 1
        out[pair] = (estimator_color(str(theta)), MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
    return out


def _targets(table: pd.DataFrame, run: RunData) -> list[tuple[str, str]]:
    """(target_id, label) of the run's training targets, in order."""
    labels = run.cells.drop_duplicates("target_id").set_index("target_id")["target_label"]
    return [(t, str(labels.get(t, "")) or t) for t in dict.fromkeys(table["target_id"])]


def fmt_mean_se(v: float, se: float) -> str:
    """``-25.806 ± 0.070``: the value to the decimals of the s.e.'s second significant digit (log-likelihoods differ in
    the second decimal; three significant digits would hide that); ``fmt_value`` when the s.e. is zero or missing."""
    if not (np.isfinite(v) and np.isfinite(se)) or se <= 0:
        return fmt_value(v, se)
    d = max(0, 1 - math.floor(math.log10(se)))
    return f"{v:.{d}f} ± {se:.{d}f}"


def _mean_band(values: pd.Series) -> tuple[float, float]:
    v = values.dropna().to_numpy(float)
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
    return (float(v.mean()) if len(v) else math.nan), se


def _t_interval(v: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95 % Student-t interval) of ``v`` (half-width NaN for n < 2)."""
    from scipy import stats

    n = len(v)
    if n < 2:
        return float(np.mean(v)) if n else math.nan, math.nan
    return float(v.mean()), float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))


def _legend(fig: Figure, styles: dict[str, tuple[str, str, str]]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker=m, linestyle=ls, label=p) for p, (c, m, ls) in styles.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2), fontsize=LEGEND_FONT,
               title="θ-estimator / φ-estimator")


# -- figures ------------------------------------------------------------------------------------
def train_curves(run: RunData) -> Figure | None:
    table = train_table(run)
    curves = None if table is None else load_curves(run, table)
    if curves is None or "test_estimate" not in curves or curves["test_estimate"].notna().sum() == 0:
        return None
    styles = _styles(table)
    targets = _targets(table, run)
    panels = [("step", "test_estimate", "optimiser step", "test"), ("step", "train_estimate", "optimiser step", "train"),
              ("evals", "test_estimate", "log-joint evaluations", "test"), ("seconds", "test_estimate", "training seconds", "test")]
    fig, axes = plt.subplots(2 * len(targets), 2, figsize=(2 * PANEL_W + 0.6, 2 * PANEL_H * len(targets) + 1.2),
                             squeeze=False, layout="constrained")
    K = _curve_K(table)
    for i, (target, label) in enumerate(targets):
        sub = curves[(curves["target_id"] == target) & curves["test_estimate"].notna()]
        for j, (x, y, xlabel, split) in enumerate(panels):
            ax = axes[2 * i + j // 2, j % 2]
            for pair, (color, marker, ls) in styles.items():
                g = sub[sub["pair"] == pair]
                if g.empty:
                    continue
                agg = g.groupby("step").agg(x=(x, "mean"), y=(y, "mean"), sd=(y, "std"), n=(y, "count"))
                se = agg["sd"] / np.sqrt(agg["n"])
                ax.plot(agg["x"], agg["y"], color=color, linestyle=ls, marker=marker, ms=3)
                ax.fill_between(agg["x"], agg["y"] - se, agg["y"] + se, color=color, alpha=0.2, linewidth=0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{split} IWAE$_{{{K}}}$ estimate (nats/point)")
            if x == "evals":
                ax.set_xscale("log")
                # over less than a decade matplotlib labels the minor ticks (2×10², 3×10², …), which collide
                ax.xaxis.set_minor_formatter(NullFormatter())
            if len(targets) > 1:
                ax.set_title(label, fontsize=9)
    _legend(fig, styles)
    return fig


def _curve_K(table: pd.DataFrame) -> str:
    ks = table["estimator.curve_K"].dropna().unique() if "estimator.curve_K" in table else []
    return ",".join(fmt_param(k) for k in ks) or "K"


def train_final(run: RunData) -> Figure | None:
    table = train_table(run)
    metric = held_out_metric(table)
    if table is None or metric is None:
        return None
    styles = _styles(table)
    targets = _targets(table, run)
    pairs = pairs_of(table)
    final = table[table["metric"] == metric]
    width = max(2 * PANEL_W + 1.4, 3.2 * len(pairs) + 1.0)  # room for the pairs' two-line tick labels
    fig, axes = plt.subplots(len(targets), 2, figsize=(width, (PANEL_H + 0.6) * len(targets) + 1.0),
                             squeeze=False, layout="constrained")
    for i, (target, label) in enumerate(targets):
        ft = final[final["target_id"] == target]
        ax, axd = axes[i, 0], axes[i, 1]
        base = ft[ft["pair"] == pairs[0]].set_index("estimator.train_seed")["value"]
        for x, pair in enumerate(pairs):
            color, marker, _ = styles[pair]
            v = ft[ft["pair"] == pair].set_index("estimator.train_seed")["value"]
            if v.empty:
                continue
            mean, half = _t_interval(v.to_numpy(float))
            ax.errorbar([x], [mean], yerr=[[half], [half]] if np.isfinite(half) else None, color=color, marker=marker,
                        capsize=4, ms=7)
            ax.plot(np.full(len(v), x + 0.15), v.to_numpy(float), ".", color=color, alpha=0.5)
            if x == 0:
                continue
            common = v.index.intersection(base.index)
            d = (v.loc[common] - base.loc[common]).to_numpy(float)
            dm, dh = _t_interval(d)
            axd.errorbar([x], [dm], yerr=[[dh], [dh]] if np.isfinite(dh) else None, color=color, marker=marker,
                         capsize=4, ms=7)
            if len(d) >= 2:
                from gradbench.training.stats import paired_differences

                r = paired_differences(d)
                axd.annotate(f"p_t={fmt_p(r['p_t'])}\np_perm={fmt_p(r['p_perm'])}", (x, dm), textcoords="offset points",
                             xytext=(8, 0), fontsize=7, va="center")
        # each line of a pair's label wrapped at word breaks, so neighbouring tick labels do not run into each other
        short = ["\n".join(textwrap.fill(line, 22, break_on_hyphens=False) for line in _short_pair(p).split("\n"))
                 for p in pairs]
        for a in (ax, axd):
            a.set_xticks(range(len(pairs)), short, fontsize=7)
            a.set_xlim(-0.5, len(pairs) - 0.5 + 0.4)
        axd.axhline(0, color="0.4", linewidth=0.8)
        method = str(ft["method"].iloc[0]).split(" (")[0] if len(ft) else ""
        ax.set_ylabel(f"{HELD_OUT[metric]}, nats/point ({method})")
        axd.set_ylabel("paired difference vs baseline (nats)")
        n = ft.groupby("pair")["value"].count()
        ax.set_title(f"{label + ': ' if len(targets) > 1 else ''}mean, 95% t-CI ({fmt_param(n.min())}–{fmt_param(n.max())} seeds)"
                     if n.min() != n.max() else f"{label + ': ' if len(targets) > 1 else ''}mean, 95% t-CI ({fmt_param(n.min())} seeds)",
                     fontsize=9)
        axd.set_title("paired d = pair − baseline (the first pair), shared seeds", fontsize=9)
    _legend(fig, styles)
    return fig


def _short_pair(pair: str) -> str:
    return pair.replace(" / ", "\n")


def train_tau(run: RunData) -> Figure | None:
    table = train_table(run)
    curves = None if table is None else load_curves(run, table)
    if curves is None or "tau" not in curves or curves["tau"].notna().sum() == 0:
        return None
    styles = _styles(table)
    tau = curves.dropna(subset=["tau"])
    targets = [(t, lab) for t, lab in _targets(table, run) if (tau["target_id"] == t).any()]
    fig, axes = plt.subplots(len(targets), 1, figsize=(PANEL_W * 1.6 + 0.6, PANEL_H * len(targets) + 1.0),
                             squeeze=False, layout="constrained")
    for i, (target, label) in enumerate(targets):
        ax = axes[i, 0]
        sub = tau[tau["target_id"] == target]
        width = max(1, math.ceil(sub["step"].max() / TAU_BINS))
        used = {}
        for pair, g in sub.groupby("pair", sort=False):
            color, marker, ls = styles[pair]
            b = g.assign(bin=(g["step"] - 1) // width * width + (width + 1) / 2).groupby("bin")["tau"]
            agg = b.agg(["mean", "std", "count", "max"])
            ax.errorbar(agg.index, agg["mean"], yerr=agg["std"] / np.sqrt(agg["count"]), color=color, marker=marker,
                        linestyle=ls, ms=3, capsize=2)
            ax.plot(agg.index, agg["max"], "x", color=color, alpha=0.6)
            used[pair] = styles[pair]
        ax.set_yscale("log")
        ax.set_xlabel(f"optimiser step (bins of {width})")
        ax.set_ylabel("meeting time τ of a step's chains")
        if len(targets) > 1:
            ax.set_title(label, fontsize=9)
    _legend(fig, used)
    return fig


TRAIN_FIGURES: list[FigureSpec] = [
    FigureSpec("train_curves", "Training: learning curves",
               "IWAE estimates of log p(x) (nats per point, K = the cells' curve_K, on curve_n test / train points) during "
               "training, against the optimiser step (top), log-joint evaluations and training seconds (bottom). "
               "Line: mean over training seeds; band: ±1 s.e. over seeds. On the evals/seconds panels x is the mean "
               "over seeds at each curve step.", train_curves),
    FigureSpec("train_final", "Training: final held-out log-likelihood",
               "Left: final test log p(x) (nats per point; exact by enumeration/quadrature where the method says so; "
               "otherwise the IWAE-K lower bound under each model's own encoder, labelled ≥ — an encoder trained on a "
               "looser objective gives a looser bound, so compare with the refitted-encoder rows of the table) "
               "per estimator pair, mean over training seeds with its 95 % Student-t interval; dots are the seeds. "
               "Right: paired differences to the first pair (the baseline) over shared seeds (common random numbers), "
               "95 % t-interval, with the paired t-test and exact sign-flip permutation p-values.", train_final),
    FigureSpec("train_tau", "Training: meeting time over training",
               "Coupled θ-estimators: τ of each training step's coupled chains (max over the minibatch's chains), mean "
               "± s.e. over the steps and seeds of each step bin (line) and the bin's maximum (×), against the step; "
               "log axis.", train_tau),
]


# -- tables -------------------------------------------------------------------------------------
def final_table(run: RunData) -> Table | None:
    """Mean ± s.e. over training seeds of the final metrics, one row per (target, pair)."""
    table = train_table(run)
    if table is None:
        return None
    from gradbench.training.stats import summarize

    metrics = tuple(m for m, _ in FINAL_METRICS)
    s = summarize(table, metrics)
    present = [(m, h) for m, h in FINAL_METRICS if m in set(s["metric"])]
    targets = _targets(table, run)
    header = (["target"] if len(targets) > 1 else []) + ["θ-estimator / φ-estimator", "budget", "seeds"] + [h for _, h in present]
    t = Table("Training: final metrics (mean ± s.e. over training seeds)", header, text_columns=header.index("budget") + 1,
              note="s.e. = sd/√(seeds). Held-out method: " + "; ".join(sorted({
                  str(m) for m in table.loc[table["metric"] == held_out_metric(table), "method"]}) or ["—"])
              + ". A '≥ IWAE bound' column is a stochastic lower bound on log p(x), not log p(x)")
    for target, label in targets:
        st = s[s["target_id"] == target]
        for pair in pairs_of(table[table["target_id"] == target]):
            sp = st[st["pair"] == pair].set_index("metric")
            if sp.empty:
                continue
            first = sp.iloc[0]
            budget = f"{first['estimator.budget']}={fmt_param(first['estimator.budget_value'])}"
            row = ([Cell(label)] if len(targets) > 1 else []) + [Cell(pair), Cell(budget), Cell(fmt_param(sp["n_seeds"].max()))]
            for m, _ in present:
                if m not in sp.index:
                    row.append(Cell("—"))
                    continue
                v, se = float(sp.loc[m, "mean"]), float(sp.loc[m, "stderr"])
                row.append(Cell(fmt_mean_se(v, se), "bad" if m == "nonfinite_steps" and v > 0 else None))
            t.rows.append(row)
    return t


def paired_table(run: RunData) -> Table | None:
    """Paired tests of test log p(x) between every two pairs (later minus earlier in the suite's order; the first rows
    are against the baseline) over their shared seeds."""
    table = train_table(run)
    metric = held_out_metric(table)
    if table is None or metric is None:
        return None
    from gradbench.training.stats import paired_differences

    targets = _targets(table, run)
    header = (["target"] if len(targets) > 1 else []) + ["pair", "minus", "shared seeds", "mean difference",
                                                         "95% t-CI", "p (paired t)", "p (sign-flip, exact)"]
    t = Table(f"Training: paired differences in {HELD_OUT[metric]}", header, text_columns=header.index("minus") + 1,
              note="d_s = pair(s) − minus(s) over the training seeds both ran (common initialisation, minibatches "
                   "and step noise); mean ± s.e.; two-sided p-values: Student t with n − 1 d.f. and the exact "
                   "sign-flip permutation test (its smallest attainable value is 2/2ⁿ). The first pair is the baseline. "
                   "Arms are paired only with arms of the same training settings (learning rate, budget).")
    final = table[table["metric"] == metric]
    for target, label in targets:
        ft = final[final["target_id"] == target]
        pairs = pairs_of(ft)
        by_pair = {p: ft[ft["pair"] == p].set_index("estimator.train_seed")["value"] for p in pairs}
        settings = ft.groupby("pair")["settings"].first()
        for i, first in enumerate(pairs):
            for pair in pairs[i + 1:]:
                if settings[pair] != settings[first]:  # only arms trained with the same lr, budget, ...
                    continue
                a, b = by_pair[first], by_pair[pair]
                common = b.index.intersection(a.index)
                d = (b.loc[common] - a.loc[common]).to_numpy(float)
                ident = ([Cell(label)] if len(targets) > 1 else []) + [Cell(pair), Cell(first), Cell(str(len(d)))]
                if len(d) < 2 or len(d) > 16:
                    t.rows.append(ident + [Cell(fmt_value(float(d.mean())) if len(d) else "—"), Cell("—"), Cell("—"),
                                           Cell("—")])
                    continue
                r = paired_differences(d)
                _, half = _t_interval(d)
                t.rows.append(ident + [Cell(fmt_mean_se(r["mean_diff"], r["stderr"])),
                                       Cell(f"[{r['mean_diff'] - half:.3f}, {r['mean_diff'] + half:.3f}]"),
                                       Cell(fmt_p(r["p_t"])), Cell(fmt_p(r["p_perm"]))])
    return t


def train_tables(run: RunData) -> list[Table]:
    return [t for t in (final_table(run), paired_table(run)) if t is not None]
