"""`gradbench report`: renders for runs with each protocol alone and all together, draws only the
figures a run's metrics support, flags bias at the run's α, and needs no network to view."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gradbench.cli import cli
from gradbench.report.data import load_run
from gradbench.report.render import render_report
from gradbench.report.style import FIXED_COLORS, estimator_color
from gradbench.report.tables import summary_table
from tests.report.report_helpers import (
    add_meeting,
    add_snr,
    add_wallclock,
    keep_protocols,
    run_to,
    set_alpha,
    write_suite,
)

pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # e.g. a collapsed layout is a bug

# protocol set -> figures expected (and no others)
CASES = {
    "bias": {"bias_vs_budget"},
    "variance": {"variance_vs_budget", "snr_vs_budget", "efficiency_frontier"},
    "meeting": {"meeting_times"},
    "wallclock": {"wallclock"},
    "snr": {"snr_vs_budget"},
    "all": {"bias_vs_budget", "variance_vs_budget", "snr_vs_budget", "efficiency_frontier", "meeting_times",
            "wallclock"},
}


@pytest.fixture(scope="module")
def runs(base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run folder per case. 'bias' and 'variance' are real single-protocol runs; the others
    add synthesised protocol rows (see conftest) to a copy of the real bias+variance run."""
    root = tmp_path_factory.mktemp("cases")
    out = {}
    for proto in ("bias", "variance"):
        out[proto] = run_to(write_suite(root, proto, [proto]), root / proto)
    for case in ("meeting", "wallclock", "snr", "all"):
        d = root / case
        shutil.copytree(base_run, d)
        if case in ("meeting", "all"):
            add_meeting(d)
        if case in ("wallclock", "all"):
            add_wallclock(d)
        if case in ("snr", "all"):
            add_snr(d)
        if case != "all":
            keep_protocols(d, {case})
        out[case] = d
    return out


def _embedded_images(index: Path) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', index.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_report_renders_each_protocol_alone_and_all_together(runs: dict[str, Path], tmp_path: Path, case: str) -> None:
    rep = render_report(runs[case], tmp_path / "rep", dpi=50)
    assert {f.name for f in rep.figures} == CASES[case]
    index = rep.index.read_text()
    assert len(_embedded_images(rep.index)) == len(CASES[case])
    for f in rep.figures:
        png = (tmp_path / "rep" / "figures" / f"{f.name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and png == f.png
    # viewable offline: nothing is fetched from the network
    assert not re.search(r'(src|href)="(https?:)?//', index)
    assert "@import" not in index and "url(" not in index
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert summary.startswith("# gradbench report: ")
    assert "| estimator | budget |" in summary
    for f in rep.figures:
        assert f"(figures/{f.name}.png)" in summary


def test_meeting_table_and_survival_from_raw_taus(runs: dict[str, Path], tmp_path: Path) -> None:
    rep = render_report(runs["meeting"], tmp_path / "rep", dpi=50)
    titles = [t.title for t in rep.tables]
    assert "Meeting times (raw τ per replicate)" in titles
    raw = pd.read_parquet(runs["meeting"] / "meeting_times.parquet")
    table = rep.tables[titles.index("Meeting times (raw τ per replicate)")]
    assert len(table.rows) == raw["cell_id"].nunique()


def test_meeting_summary_figure_without_raw_taus(runs: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "run"
    shutil.copytree(runs["meeting"], d)
    (d / "meeting_times.parquet").unlink()
    rep = render_report(d, tmp_path / "rep", dpi=50)
    assert [f.name for f in rep.figures] == ["meeting_summary"]


def test_single_estimator_run_renders(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "one", ["bias", "variance"], estimators=[{"name": "oracle", "params": {"S": 1}}],
                        replicates=200)
    rep = render_report(run_to(suite, tmp_path / "run"), tmp_path / "rep", dpi=50)
    assert rep.index.is_file() and len(rep.figures) >= 1
    assert "oracle" in (tmp_path / "rep" / "summary.md").read_text()


def test_bias_flag_follows_alpha_from_run_json(base_run: Path, tmp_path: Path) -> None:
    """elbo with a shifted, widened proposal is biased (flagged at any α); oracle is unbiased, so its
    q-value (Benjamini–Hochberg over the run, the flag's decision) is flagged at α = 0.999 only if
    q < 0.999, never at a tiny α."""
    d = tmp_path / "run"
    shutil.copytree(base_run, d)
    run = load_run(d)
    q = run.wide(["bias_qvalue"]).set_index("estimator")["bias_qvalue"]
    assert q["elbo"] < 1e-6

    def flagged(alpha: float) -> dict[str, bool]:
        set_alpha(d, alpha)
        table = summary_table(load_run(d))
        col, est = table.header.index("bias q"), table.header.index("estimator")
        return {r[est].text: r[col].flag == "bad" for r in table.rows if r[est].text in ("oracle", "elbo")}

    assert flagged(1e-300) == {"oracle": False, "elbo": q["elbo"] < 1e-300}
    assert flagged(0.999) == {"oracle": bool(q["oracle"] < 0.999), "elbo": True}
    assert load_run(d).alpha == 0.999 and load_run(d, alpha=0.05).alpha == 0.05


def test_slope_fit_recovers_known_power_law() -> None:
    from gradbench.report.figures import fit_loglog_slope

    K = np.array([2.0, 8, 32, 128])
    y = 0.3 / K
    slope, se = fit_loglog_slope(K, y, 0.05 * y)
    assert slope == pytest.approx(-1.0, abs=1e-9) and se < 0.1
    assert fit_loglog_slope(np.array([4.0]), np.array([1.0]), np.array([0.1])) is None


def test_estimator_colours_are_stable_and_distinct() -> None:
    names = list(FIXED_COLORS)
    assert len({estimator_color(n) for n in names}) == len(names)
    assert estimator_color("my_new_estimator") == estimator_color("my_new_estimator")
    assert re.fullmatch(r"#[0-9a-f]{6}", estimator_color("my_new_estimator"))


def test_cli_report_and_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["report", str(runs["bias"]), "-o", str(tmp_path / "rep"), "--dpi", "50"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "index.html").is_file()
    assert "report:" in res.output
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such run folder" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(cli, ["report", str(empty)])
    assert res.exit_code == 2 and "no results.parquet" in res.output


def test_stale_figures_are_removed_on_rerender(runs: dict[str, Path], tmp_path: Path) -> None:
    render_report(runs["wallclock"], tmp_path / "rep", dpi=50)
    assert (tmp_path / "rep" / "figures" / "wallclock.png").is_file()
    render_report(runs["bias"], tmp_path / "rep", dpi=50)
    assert sorted(p.stem for p in (tmp_path / "rep" / "figures").glob("*.png")) == ["bias_vs_budget"]


def test_link_figures_mode_references_the_pngs(runs: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["report", str(runs["bias"]), "-o", str(tmp_path / "rep"), "--dpi", "50",
                                   "--link-figures"])
    assert res.exit_code == 0, res.output
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "data:image/png" not in index
    for src in re.findall(r'<img src="([^"]+)"', index):
        assert (tmp_path / "rep" / src).is_file()


def test_failed_cells_and_warnings_are_listed(runs: dict[str, Path], tmp_path: Path) -> None:
    import json

    d = tmp_path / "run"
    shutil.copytree(runs["bias"], d)
    manifest = json.loads((d / "run.json").read_text())
    manifest["failed"] = {"deadbeef": "RuntimeError: boom"}
    (d / "run.json").write_text(json.dumps(manifest))
    r = pd.read_parquet(d / "results.parquet")
    r["warning"] = np.where(r["estimator"] == "elbo", "estimate below float resolution", "")
    r.to_parquet(d / "results.parquet", index=False)
    rep = render_report(d, tmp_path / "rep", dpi=50)
    index = rep.index.read_text()
    assert "failed cell deadbeef: RuntimeError: boom" in index
    assert "warning (elbo (S=1)): estimate below float resolution" in index
