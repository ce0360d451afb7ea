"""``gradbench calibrate``: are the bias tests calibrated for *these* estimators and targets?

For every cell of a suite whose estimator is unbiased for its reference, the cell is run with its
``bias`` protocol under ``seeds`` independent seeds — each seed draws a new target instance
(``target_seed``; for an estimated reference also a new reference run) and new Monte Carlo noise
(``seed``), both derived from the suite's seeds and the replicate index. Under H0 every p-value is
uniform on [0, 1], so per estimator and per test branch (the ``method`` of ``bias_pvalue``:
hotelling, max-t bootstrap, deterministic, …) it reports

* the false-alarm rate at α ∈ {0.01, 0.05}, with the binomial s.e. √(α(1 − α)/n) under H0 and a
  verdict "ok" when |rate − α| ≤ 3 s.e.;
* the Kolmogorov–Smirnov test of uniformity of the p-values (``ks_pvalue``; > 0.01 expected);
* a QQ plot of the p-values against the uniform with a pointwise 99 % band (order statistics of n
  uniforms are Beta(i, n + 1 − i)), in ``calibration_qq.png``.

A suite for calibration must list only estimators that are unbiased for their reference (an
oracle, coupled chains, SUMO with finite variance, an unbiased encoder estimator against an
estimated reference, …); a biased one shows up as a false-alarm rate near 1. Plugins calibrate the
same way. Outputs in the folder ``out``: ``calibration_pvalues.parquet`` (one row per cell and
seed), ``calibration_summary.csv`` and ``calibration_qq.png``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pandas as pd
from scipy import stats as sps

from gradbench.run.cells import Cell
from gradbench.seeding import derive_seed
from gradbench.stats import INCONCLUSIVE

ALPHAS = (0.01, 0.05)
TOLERANCE_SE = 3.0  # |rate − α| ≤ 3 binomial s.e. under H0


def reseeded(cell: Cell, index: int) -> Cell:
    """The cell on an independent target instance and noise stream (``index`` = calibration seed)."""
    t = cell.target
    target = dataclasses.replace(t, target_seed=derive_seed(t.target_seed, "calibrate-target", index),
                                 suite_seed=derive_seed(t.suite_seed, "calibrate-noise", index))
    return dataclasses.replace(cell, target=target, protocols=("bias",))


def cell_label(cell: Cell) -> str:
    """``estimator(non-default params) R=… on model(non-default params)``."""
    from gradbench import registry

    def given(values: dict[str, object], model: type) -> str:
        defaults = {k: f.default for k, f in model.model_fields.items()}
        return ", ".join(f"{k}={v}" for k, v in values.items() if defaults.get(k, object()) != v)

    est = given(cell.estimator_params, registry.ESTIMATORS[cell.estimator].params)
    tgt = given(cell.target.params, registry.MODELS[cell.target.model].params)
    return f"{cell.estimator}({est}) R={cell.replicates} on {cell.target.model}({tgt})"


def collect_pvalues(cells: list[Cell], seeds: int, on_step: Callable[[], None] | None = None) -> pd.DataFrame:
    """One row per (cell, seed): the group-'all' bias p-value, its test branch and method."""
    from gradbench.protocols.measure import run_cell

    rows = []
    for cell in cells:
        label = cell_label(cell)
        for s in range(seeds):
            c = reseeded(cell, s)
            t0 = time.perf_counter()
            df, _ = run_cell(c, c.target.build(c.dtype, c.device))
            hit = df[(df["metric"] == "bias_pvalue") & (df["param_group"] == "all")]
            if hit.empty:
                continue
            method = str(hit["method"].iloc[0])
            rows.append({"cell": label, "estimator": cell.estimator, "seed": s, "pvalue": float(hit["value"].iloc[0]),
                         "branch": method.split("(")[0].split(":")[0].strip(), "method": method,
                         "n_replicates": int(df["n_replicates"].iloc[0]), "seconds": time.perf_counter() - t0})
            if on_step is not None:
                on_step()
    return pd.DataFrame(rows)


def summarize(pvalues: pd.DataFrame, alphas: tuple[float, ...] = ALPHAS) -> pd.DataFrame:
    """Per cell and branch (and per cell over all branches, branch ``"all"``): false-alarm rates with
    binomial s.e. under H0, KS uniformity p-value, verdict.

    Seeds whose test is inconclusive (branch ``inconclusive``: R·q_min < log(10³), a rare state probably
    unsampled, :func:`gradbench.stats.rare_state_verdict`) are listed as their own row, whose rates are shown
    but are not a verdict, and are left out of the cell's ``"all tested"`` row: the rule depends on the
    target and R only, so the remaining seeds' p-values are uniform under H0 if the test is calibrated."""
    out = []
    groups = [(k, g) for k, g in pvalues.groupby(["cell", "branch"], sort=False)]
    tested = pvalues["branch"] != INCONCLUSIVE
    groups += [((cell, "all tested" if (g["branch"] == INCONCLUSIVE).any() else "all"), g[tested[g.index]])
               for cell, g in pvalues.groupby("cell", sort=False) if g["branch"].nunique() > 1]
    for (cell, branch), g in groups:
        p = g["pvalue"].to_numpy(float)
        p = p[np.isfinite(p)]
        n = p.size
        rec: dict[str, object] = {"cell": cell, "branch": branch, "n": n}
        ok = n > 0
        for a in alphas:
            rate = float(np.mean(p <= a)) if n else math.nan
            se = math.sqrt(a * (1 - a) / n) if n else math.nan
            rec[f"rate@{a:g}"] = rate
            rec[f"se@{a:g}"] = se
            ok = ok and abs(rate - a) <= TOLERANCE_SE * se
        ks = float(sps.kstest(p, "uniform").pvalue) if n > 1 else math.nan
        rec["ks_pvalue"] = ks
        rec["verdict"] = ("not a verdict (rare states)" if branch == INCONCLUSIVE
                          else "ok" if ok and ks > 0.01 else "MISCALIBRATED")
        out.append(rec)
    return pd.DataFrame(out)


def qq_plot(pvalues: pd.DataFrame, path: Path) -> None:
    """Uniform QQ plot of the p-values, one panel per cell, with a pointwise 99 % Beta band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    cells = list(dict.fromkeys(pvalues["cell"]))
    ncol = min(3, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 4.0 * nrow), squeeze=False)
    palette = dict(zip(sorted(pvalues["branch"].unique()), sns.color_palette("colorblind")))
    for ax, cell in zip(axes.flat, cells):
        g = pvalues[pvalues["cell"] == cell].sort_values("pvalue")
        n = len(g)
        i = np.arange(1, n + 1)
        expected = i / (n + 1)
        lo, hi = sps.beta.ppf(0.005, i, n + 1 - i), sps.beta.ppf(0.995, i, n + 1 - i)
        ax.fill_between(expected, lo, hi, color="0.85", label="99 % pointwise band")
        ax.plot([0, 1], [0, 1], color="0.4", linewidth=0.8)
        for branch, sub in g.assign(expected=expected).groupby("branch"):
            ax.scatter(sub["expected"], sub["pvalue"], s=6, color=palette[branch], label=branch)
        ax.set_title(cell, fontsize=7)
        ax.set_xlabel("uniform quantile")
        ax.set_ylabel("bias p-value")
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_summary(summary: pd.DataFrame) -> str:
    t = summary.copy()
    for col in t.columns:
        if col.startswith("rate@"):
            a = col.split("@")[1]
            t[col] = [f"{r:.3f} ± {s:.3f}" for r, s in zip(t[col], t[f"se@{a}"])]
    t = t.drop(columns=[c for c in t.columns if c.startswith("se@")])
    t["ks_pvalue"] = [f"{p:.3g}" for p in t["ks_pvalue"]]
    return t.to_string(index=False) + (f"\n(rate ± binomial s.e. under H0; ok when |rate − α| ≤ {TOLERANCE_SE:g} s.e. "
                                       "at every α and KS p > 0.01)")


def calibrate(cells: list[Cell], seeds: int, out: Path, progress: bool = False) -> pd.DataFrame:
    """Run the calibration, write its three outputs in ``out`` and return the summary table."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(cells) * seeds, desc="calibrate", disable=not progress) as bar:
        pvalues = collect_pvalues(cells, seeds, bar.update)
    if pvalues.empty:
        raise ValueError("no bias p-values: the suite's cells need a target with a reference")
    pvalues.to_parquet(out / "calibration_pvalues.parquet", index=False)
    summary = summarize(pvalues)
    summary.to_csv(out / "calibration_summary.csv", index=False)
    qq_plot(pvalues, out / "calibration_qq.png")
    return summary


@click.command("calibrate")
@click.argument("suites", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--seeds", type=int, default=300, show_default=True, help="Independent targets and noise seeds per cell.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: runs/<first suite>-calibration].")
def calibrate_cmd(suites: tuple[Path, ...], seeds: int, out: Path | None) -> None:
    """False-alarm rates, KS test and QQ plot of the bias test on estimators unbiased for their reference."""
    from gradbench.run.plan import load_suite

    loaded = [load_suite(s, check_device=True) for s in suites]
    out = out or Path("runs") / f"{loaded[0][0].name}-calibration"
    cells = [c for _, cs in loaded for c in cs]
    click.echo(format_summary(calibrate(cells, seeds, out, progress=sys.stderr.isatty())))
    click.echo(f"\noutputs: {out}/calibration_summary.csv, calibration_pvalues.parquet, calibration_qq.png")
