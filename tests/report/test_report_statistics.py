"""Report statistics choices: the multiple-testing correction that flags bias (``--correction``) and cells
whose variance may be infinite (no error bars). Deterministic checks on a real run with edited rows; each
has its negative control (the other correction; a cell without the warning)."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gradbench.cli import cli
from gradbench.report.data import bias_decision, infinite_variance_cells, load_run
from gradbench.report.figures import _draw_series
from gradbench.report.tables import cost_table, summary_table

HEAVY = "tail index 1.3 ± 0.1 (Hill): the variance may be infinite; this value and its s.e. are not reliable"


def _copy(base_run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(base_run, d)
    return d


def _edit(d: Path, fn) -> None:
    r = pd.read_parquet(d / "results.parquet")
    fn(r).to_parquet(d / "results.parquet", index=False)


def test_correction_chooses_the_flagging_statistic(base_run: Path, tmp_path: Path) -> None:
    """q-values all 0 and Holm p-values all 1: bh flags every cell, holm none (each the other's control)."""
    d = _copy(base_run, tmp_path)

    def rig(r: pd.DataFrame) -> pd.DataFrame:
        r.loc[r["metric"] == "bias_qvalue", "value"] = 0.0
        r.loc[r["metric"] == "bias_pvalue_holm", "value"] = 1.0
        return r

    _edit(d, rig)
    for correction, header, flagged, words in (("bh", "bias q", True, "Benjamini–Hochberg"),
                                              ("holm", "bias p (Holm)", False, "Holm-adjusted")):
        run = load_run(d, correction=correction)
        assert bias_decision(run) == {"bh": "bias_qvalue", "holm": "bias_pvalue_holm"}[correction]
        t = summary_table(run)
        assert header in t.header and ({"bias q", "bias p (Holm)"} - {header}).isdisjoint(t.header)
        col = t.header.index(header)
        assert all((r[col].flag == "bad") == flagged for r in t.rows)
        assert words in t.note and "5 bias tests of parameter group 'all'" in t.note
    with pytest.raises(Exception, match="correction"):
        load_run(d, correction="bonferroni")


def test_cli_report_rejects_an_unknown_correction(base_run: Path) -> None:
    assert CliRunner().invoke(cli, ["report", str(base_run), "--correction", "sidak"]).exit_code == 2


def test_infinite_variance_cells_have_no_standard_error(base_run: Path, tmp_path: Path) -> None:
    """Warning a further cell's tail_index row adds exactly that cell's rows to the ones shown with † and no ±
    (the run may already have some: its own Hill estimates); the others keep value ± s.e.; the report says so."""
    d = _copy(base_run, tmp_path)
    before = infinite_variance_cells(load_run(d))
    added = {}

    def warn(r: pd.DataFrame) -> pd.DataFrame:
        cid = next(c for c in r["cell_id"].unique() if c not in before)
        added["id"] = cid
        r.loc[(r["cell_id"] == cid) & (r["metric"] == "tail_index"), "warning"] = HEAVY
        return r

    def daggers(run) -> list[int]:
        out = []
        for table, header in ((summary_table(run), "tr Σ̂"), (cost_table(run), "tr Σ̂ × cost")):
            col = table.header.index(header)
            texts = [r[col].text for r in table.rows]
            assert all(("†" in t) != ("±" in t) for t in texts)
            out.append(sum("†" in t for t in texts))
        return out

    assert daggers(load_run(d)) == [len(before)] * 2
    _edit(d, warn)
    run = load_run(d)
    assert infinite_variance_cells(run) == before | {added["id"]}
    assert daggers(run) == [len(before) + 1] * 2
    assert "variance may be infinite" in summary_table(run).note
    # one rendering (slow) checks the report text of both features: the note and the --correction option
    res = CliRunner().invoke(cli, ["report", str(d), "-o", str(tmp_path / "rep"), "--dpi", "50", "--correction", "holm"])
    assert res.exit_code == 0, res.output
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "drawn as hollow markers without error bars" in index
    assert "Holm-adjusted p-value (family-wise error rate)" in index


def test_draw_series_omits_the_error_bar_of_bare_points() -> None:
    """Three points with s.e. 1; the middle one is bare: its bar has zero length, the others length 2."""
    df = pd.DataFrame({"series": ["s"] * 3, "x": [1.0, 2.0, 3.0], "y": [10.0, 10.0, 10.0], "stderr": [1.0] * 3})
    fig, ax = plt.subplots()
    _draw_series(ax, df, "x", "y", {"s": ("C0", "o", "-")}, bare=pd.Series([False, True, False]))
    segs = ax.containers[0].lines[2][0].get_segments()
    lengths = [float(np.ptp(np.asarray(s)[:, 1])) for s in segs]
    plt.close(fig)
    assert lengths == [2.0, 0.0, 2.0]
