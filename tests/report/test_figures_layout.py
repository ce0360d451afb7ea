"""Figures a reader can use: every text of every figure inside the figure and no two texts overlapping (measured
with matplotlib's renderer, no browser), single-budget runs drawn as dot plots with every cell, unresolved bias
points not joined by lines, and the meeting-time ECDFs with integer ticks and a DKW band of the stated coverage."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from gradbench.report.data import load_run
from gradbench.report.figures import (
    bias_points,
    dkw_halfwidth,
    draw,
    figure_specs,
    layout_problems,
)
from gradbench.report.style import theme
from tests.report.report_helpers import add_meeting, add_snr, add_wallclock, run_to, write_suite

LONG = "a_rather_long_estimator_name_for_layout"


@pytest.fixture(scope="module")
def full_run(base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base bias + variance run with every synthesised protocol, and one estimator renamed to a long name:
    the x label lists each budget parameter with its estimators (the label that overlapped its neighbour)."""
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(base_run, run)
    add_meeting(run)
    add_wallclock(run)
    add_snr(run)
    r = pd.read_parquet(run / "results.parquet")
    r["estimator"] = r["estimator"].replace("elbo", LONG)
    r.to_parquet(run / "results.parquet", index=False)
    return run


@pytest.fixture(scope="module")
def single_budget_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every estimator at one budget, and sumo, which has none; with wall-clock rows."""
    folder = tmp_path_factory.mktemp("single")
    ests = [{"name": "oracle", "params": {"S": 1}}, {"name": "iwae", "params": {"K": 4}},
            {"name": "sumo", "params": {"truncation": "geometric", "rho": 0.6}}]
    run = run_to(write_suite(folder, "single", ["bias", "variance"], estimators=ests, replicates=200), folder / "run")
    add_wallclock(run)  # without a sweep: bars over every cell
    return run


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run whose arm labels are long (a warm-up in front: ``iwae(K=4) ×4 steps → coupled_isir(K=4) / …``),
    with a coupled arm (the τ-over-training figure): the training kind's figures."""
    import yaml

    from tests.training.test_figures import COMMON, TARGET

    folder = tmp_path_factory.mktemp("train")
    arms = [{"theta": {"name": "elbo", "S": 1}, "phi": {"name": "reparam_elbo", "S": 1}},
            {"theta": {"name": "coupled_isir", "K": 4}, "phi": {"name": "iwae_reparam", "K": 4},
             "warmup": {"name": "iwae", "K": 4, "steps": 4}}]
    suite = folder / "train.yaml"
    suite.write_text(yaml.safe_dump({"name": "train-layout", "seed": 0, "target_seed": 0, "targets": [TARGET],
                                     "train": {"seeds": [0, 1], "settings": COMMON, "arms": arms}}, sort_keys=False))
    return run_to(suite, folder / "run")


def _figures(run_dir: Path) -> dict[str, plt.Figure]:
    run = load_run(run_dir)
    return {s.name: f for s in figure_specs() if (f := draw(s, run)) is not None}


@pytest.mark.parametrize("which", ["full_run", "single_budget_run", "train_run"])
def test_no_text_is_clipped_or_overlapping(which: str, request: pytest.FixtureRequest) -> None:
    figs = _figures(request.getfixturevalue(which))
    want = ({"train_curves", "train_final", "train_tau"} if which == "train_run" else
            {"bias_vs_budget", "variance_vs_budget", "wallclock"} | ({"meeting_times", "snr_vs_budget"}
                                                                     if which == "full_run" else set()))
    assert want <= set(figs), sorted(figs)
    with theme():
        problems = {name: layout_problems(fig) for name, fig in figs.items()}
    for fig in figs.values():
        plt.close(fig)
    assert not any(problems.values()), {k: v[:3] for k, v in problems.items() if v}


def test_layout_check_catches_overlap_and_clipping() -> None:
    """Negative control: two texts on top of each other, and one running off the right edge, are reported."""
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xlabel("budget: K (iwae_reparam, dreg); S (reparam_elbo)")  # wider than the 3-inch figure
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    ax.text(0.52, 0.5, "second label", transform=ax.transAxes)
    problems = layout_problems(fig)
    plt.close(fig)
    assert any(p.startswith("overlap: 'first label'") for p in problems), problems
    assert any(p.startswith("off the figure: 'budget: K") for p in problems), problems


def test_long_budget_label_is_wrapped_one_parameter_per_line(full_run: Path) -> None:
    fig = _figures(full_run)["bias_vs_budget"]
    label = fig.axes[0].get_xlabel()
    plt.close("all")
    assert label.startswith("budget: S (oracle,") and LONG in label and label.endswith("\nK (iwae)"), label


def test_single_budget_run_is_a_dot_plot_with_every_cell(single_budget_run: Path) -> None:
    """The x axis names the estimators (sumo, which has no budget, included) instead of collapsing one budget to
    one x position with ticks 3.8–4.2; no line joins the dots. Control: a sweep keeps the budget axis."""
    figs = _figures(single_budget_run)
    for name in ("bias_vs_budget", "variance_vs_budget"):
        ax = figs[name].axes[0]
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["oracle", "iwae", "sumo"], (name, ticks)
        assert ax.get_xscale() == "linear" and "one budget" in ax.get_xlabel().replace("\n", " ")
        assert all(np.isnan(line.get_ydata()).all() or line.get_linestyle() == "None" for line in ax.lines
                   if len(line.get_xdata()) > 1)
    plt.close("all")


def _iwae_line_defined(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(where the iwae series' solid line is defined, where its verdict is biased), both in budget order."""
    points = bias_points(load_run(run_dir))
    iwae = points[points["estimator"] == "iwae"].sort_values("budget")
    fig = _figures(run_dir)["bias_vs_budget"]
    lines = [ln for ln in fig.axes[0].lines if ln.get_gid() == "series:iwae"]
    plt.close("all")
    assert len(lines) == 1, lines
    return np.isfinite(np.asarray(lines[0].get_ydata(), float)), iwae["significant"].to_numpy(bool)


def test_bias_line_joins_only_resolved_points(base_run: Path, tmp_path: Path) -> None:
    """The solid line of a series is defined exactly at the points whose verdict is biased (filled markers): a
    line through hollow noise-floor points would read as a falling bias. The largest-K cell is made unresolved
    (its p- and q-values set to 0.9); control: in the original run, all biased, the line joins every point."""
    defined, biased = _iwae_line_defined(base_run)
    assert biased.all() and defined.all()
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    r = pd.read_parquet(run / "results.parquet")
    iwae = r[r["estimator"] == "iwae"]
    last = iwae.loc[iwae["estimator.K"].astype(float).idxmax(), "cell_id"]
    r.loc[(r["cell_id"] == last) & r["metric"].isin(["bias_pvalue", "bias_qvalue", "bias_pvalue_holm"]), "value"] = 0.9
    r.to_parquet(run / "results.parquet", index=False)
    defined, biased = _iwae_line_defined(run)
    assert biased.tolist() == [True, True, False]
    assert defined.tolist() == biased.tolist()


def test_meeting_ecdf_has_integer_ticks_and_a_band(full_run: Path) -> None:
    fig = _figures(full_run)["meeting_times"]
    fig.draw_without_rendering()
    ecdf, surv = fig.axes[0], fig.axes[1]
    for ax in (ecdf, surv):
        locs = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert locs and all(float(t).is_integer() for t in locs), locs
    assert ecdf.collections, "no band"  # fill_between: the DKW band
    plt.close("all")


def test_dkw_band_covers_at_its_level() -> None:
    """Coverage of sup_t |F̂_n(t) − F(t)| ≤ ε over 4000 samples of n = 50 uniforms is ≥ 95 % less 3 Monte Carlo
    s.e.; control: half the width covers clearly less (the bound is not vacuous)."""
    gen = np.random.default_rng(12)
    n, reps = 50, 4000
    u = np.sort(gen.random((reps, n)), axis=1)
    i = np.arange(1, n + 1)
    sup = np.maximum(i / n - u, u - (i - 1) / n).max(axis=1)  # Kolmogorov–Smirnov statistic, exact
    eps = dkw_halfwidth(n, 0.05)
    cover = (sup <= eps).mean()
    se = np.sqrt(0.95 * 0.05 / reps)
    assert cover >= 0.95 - 3 * se, cover
    half = (sup <= eps / 2).mean()
    assert half < 0.95 - 10 * se, half
