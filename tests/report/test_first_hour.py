"""Reports: per-target slopes, one frontier per gradient, the problem first, output
into the run folder, incomplete runs, q-value flags and intervals, separable budget colours."""

from __future__ import annotations

import json
import re
import shutil
from itertools import combinations
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from gradbench.cli import main
from gradbench.report.data import RunError, load_run
from gradbench.report.figures import bias_vs_budget, efficiency_frontier, meeting_times
from gradbench.report.render import render_report
from gradbench.report.tables import summary_table
from tests.report.report_helpers import TARGET, add_meeting, run_to, write_suite

TWO_TARGETS = [TARGET, {**TARGET, "proposal": {"mean_shift": 1.5, "cov_scale": 3.0}}]


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bias + variance run on two proposals (the bias of iwae/elbo differs between them)."""
    folder = tmp_path_factory.mktemp("two")
    suite = write_suite(folder, "two-targets", ["bias", "variance"], targets=TWO_TARGETS,
                        estimators=[{"name": "elbo", "params": {"S": 1}},
                                    {"name": "iwae", "params": {"K": [2, 8, 32]}}])
    return run_to(suite, folder / "run")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_each_target_keeps_its_own_slope_in_the_legend(two_targets: Path) -> None:
    fig = bias_vs_budget(load_run(two_targets))
    texts = [t.get_text() for t in fig.legends[0].texts]
    iwae = [t for t in texts if t.startswith("iwae")]
    assert len(iwae) == 1, texts
    slopes = re.findall(r"slope ([+-]\d\.\d\d) ± \d\.\d\d \((mean_shift=[\d.]+), cov_scale=[\d.]+\)", iwae[0])
    assert [target for _, target in slopes] == ["mean_shift=0.5", "mean_shift=1.5"], iwae[0]


def test_efficiency_frontier_never_mixes_gradients(tmp_path: Path) -> None:
    encoder = {"model": "ppca_encoder", "params": {"data_dim": 4, "latent_dim": 2, "n_data": 2,
                                                   "reference_replicates": 200},
               "proposal": {"mean_noise": 0.5}}
    suite = write_suite(tmp_path, "grads", ["variance"], targets=[encoder], replicates=200,
                        estimators=[{"name": "iwae_reparam", "params": {"K": [1, 4], "wrt": ["theta", "phi"]}},
                                    {"name": "dreg", "params": {"K": [4]}}])
    run = load_run(run_to(suite, tmp_path / "run"))
    fig = efficiency_frontier(run)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["∇θ estimators", "∇φ estimators"]
    theta_ax, phi_ax = [ax for ax in fig.axes if ax.get_title() in titles]
    assert set(run.cells["gradient"]) == {"∇θ", "∇φ"}
    # the frontier of each panel is drawn from that gradient's cells only: its x values are theirs
    for ax, grad in ((theta_ax, "∇θ"), (phi_ax, "∇φ")):
        own = set(np.round(run.wide(["evals_mean"]).query("gradient == @grad")["evals_mean"], 9))
        front = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
        assert set(np.round(np.asarray(front.get_xdata(), float), 9)) <= own


def test_problem_is_first_and_in_the_contents(two_targets: Path, tmp_path: Path) -> None:
    rep = render_report(two_targets, tmp_path / "rep", dpi=50)
    index = rep.index.read_text()
    assert index.index('id="problem"') < index.index("<h2>Figures</h2>")
    assert '<a href="#problem">Problem: 2 targets</a>' in index
    assert "d (data_dim)" in index and "δ (mean_shift)" in index
    summary = (tmp_path / "rep" / "summary.md").read_text()
    problem = summary.splitlines()[2]
    assert problem.startswith("**Problem.** ppca: d=6, k=2, N=1") and "δ=1.5, s=3" in problem


def test_report_defaults_to_the_run_folder_and_refuses_a_file(two_targets: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_targets, run)
    code, _out, _ = cli(capsys, "report", str(run), "--dpi", "50")
    assert code == 0 and (run / "report" / "index.html").is_file()
    a_file = tmp_path / "report.html"
    a_file.write_text("")
    code, _, err = cli(capsys, "report", str(run), "-o", str(a_file))
    assert code == 2 and err.strip().count("\n") == 0 and err.startswith("gradbench: error: -o ")
    assert "is a file, not a folder" in err


def test_incomplete_run_counts_cells_and_reports_the_finished_ones(two_targets: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_targets, run)
    manifest = json.loads((run / "run.json").read_text())
    total = len(manifest["cells"])
    for cell_id in manifest["cells"][3:]:  # interrupted after three cells
        (run / "cells" / f"{cell_id}.parquet").unlink()
    (run / "results.parquet").unlink()
    (run / "run.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(RunError, match=rf"incomplete: 3 of {total} cells are finished.*--partial"):
        load_run(run)
    code, out, err = cli(capsys, "report", str(run), "--partial", "--dpi", "50")
    assert code == 0, err
    assert f"partial: 3 of {total} cells" in out
    index = (run / "report" / "index.html").read_text()
    assert f"3 of {total} cells are finished" in index
    assert load_run(run, partial=True).cells["cell_id"].tolist() == manifest["cells"][:3]


def test_bias_flags_use_q_values_and_show_the_interval(base_run: Path, tmp_path: Path) -> None:
    """With the statistics issue's metrics, the flag follows q (here q = 1: nothing flagged, though
    elbo's p < 1e-6) and the bias column is the interval."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    r = pd.read_parquet(run / "results.parquet")
    r = r[~r["metric"].isin(["rel_bias_ci_low", "rel_bias_ci_high", "bias_qvalue"])]  # replaced by made-up values
    bias = r[(r["metric"] == "rel_bias")]
    extra = []
    for metric, f in (("rel_bias_ci_low", 0.5), ("rel_bias_ci_high", 1.5), ("bias_qvalue", None)):
        rows = bias.copy()
        rows["metric"] = metric
        rows["value"] = rows["value"] * f if f is not None else 1.0
        rows["stderr"] = np.nan
        extra.append(rows)
    pd.concat([r, *extra], ignore_index=True).to_parquet(run / "results.parquet", index=False)
    table = summary_table(load_run(run))
    assert "bias q" in table.header and "rel. bias [per-row 95% CI]" in table.header
    assert not any(c.flag == "bad" for row in table.rows for c in row)
    col = table.header.index("rel. bias [per-row 95% CI]")
    assert all(re.fullmatch(r"\S+ \[\S+, \S+\]", row[col].text) for row in table.rows)
    assert "Benjamini–Hochberg" in table.note


def test_budget_sweep_colours_are_far_apart(base_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    add_meeting(run, ks=(2, 4, 8, 16, 32, 64))
    fig = meeting_times(load_run(run))
    survival = fig.axes[1]
    colours = [np.array(mcolors.to_rgb(line.get_color())) for line in survival.get_lines()
               if line.get_linestyle() == "-"]
    assert len(colours) == 6
    assert min(np.linalg.norm(a - b) for a, b in combinations(colours, 2)) > 0.15
