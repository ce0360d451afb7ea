"""One run, three renderings, the same numbers: what ``gradbench run`` prints, the report's tables
(summary.md and index.html) and the data of the bias figure. Deterministic: a real run's table with
one debiased value set negative (the case where the terminal once printed a point outside its own
interval), parsed back from each rendering."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from gradbench.report.data import load_run
from gradbench.report.figures import bias_points, bias_vs_budget
from gradbench.report.format import fmt_num, fmt_p
from gradbench.report.render import render_report
from gradbench.terminal import format_run

BIAS = re.compile(r"^(\S+) \[(\S+), (\S+)\]$")  # "0.00617 [0, 0.0303]"


@pytest.fixture(scope="module")
def run(base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base run with oracle's debiased value made negative and its interval starting at 0 (the case of a
    noise-explained ‖ḡ − g*‖)."""
    d = tmp_path_factory.mktemp("agree") / "run"
    shutil.copytree(base_run, d)
    r = pd.read_parquet(d / "results.parquet")
    sel = (r["estimator"] == "oracle") & (r["metric"] == "rel_bias_debiased") & (r["param_group"] == "all")
    r.loc[sel, "value"] = -0.0152
    low = (r["estimator"] == "oracle") & (r["metric"] == "rel_bias_ci_low") & (r["param_group"] == "all")
    r.loc[low, "value"] = 0.0
    r.to_parquet(d / "results.parquet", index=False)
    return d


def _terminal_rows(text: str) -> list[tuple[str, str, str, str, str]]:
    """(estimator name, point, low, high, q) per row of the printed bias table."""
    block = next(b for b in text.split("\n\n") if b.startswith("bias:"))
    lines = block.splitlines()
    rule = next(i for i, ln in enumerate(lines) if ln.startswith("─"))
    out = []
    for ln in lines[rule + 1:]:
        cols = re.split(r"\s{2,}", ln.strip())
        if len(cols) < 4:
            break  # the note after the table
        name, bias, q = cols[0], cols[1], cols[2]
        out.append((name.split("(")[0], *BIAS.match(bias).groups(), q))
    return out


def _md_rows(md: str) -> list[tuple[str, str, str, str, str]]:
    table = md.split("### Accuracy per estimator × budget", 1)[1].split("###", 1)[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    i_bias, i_q = header.index("rel. bias [per-row 95% CI]"), header.index("bias q")
    out = []
    for ln in lines[2:]:
        cols = [c.strip().strip("*") for c in ln.strip("|").split("|")]
        out.append((cols[0].split(" · ")[0], *BIAS.match(cols[i_bias]).groups(), cols[i_q]))
    return out


def _html_rows(page: str) -> list[tuple[str, str, str, str, str]]:
    table = page.split("<h3>Accuracy per estimator × budget</h3>", 1)[1].split("</table>", 1)[0]
    header = [html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    i_bias, i_q = header.index("rel. bias [per-row 95% CI]"), header.index("bias q")
    out = []
    for tr in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1]):
        cols = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
        out.append((cols[0].split(" · ")[0], *BIAS.match(cols[i_bias]).groups(), cols[i_q]))
    return out


def test_terminal_report_and_figure_print_the_same_bias_numbers(run: Path, tmp_path: Path) -> None:
    printed = _terminal_rows(format_run(pd.read_parquet(run / "results.parquet"), ["bias"]))
    rep = render_report(run, tmp_path / "rep", dpi=40)
    md = _md_rows((tmp_path / "rep" / "summary.md").read_text())
    page = _html_rows((tmp_path / "rep" / "index.html").read_text())
    fig = bias_points(load_run(run))
    drawn = sorted((str(r.estimator), fmt_num(r.point), fmt_num(r.low), fmt_num(r.high), fmt_p(r.decision))
                   for r in fig.itertuples())
    assert len(printed) == len(fig) == 5
    assert sorted(printed) == sorted(md) == sorted(page) == drawn
    for _, point, low, high, _ in printed:  # the printed point lies in the printed interval
        assert float(low) <= float(point) <= float(high)
    oracle = next(r for r in printed if r[0] == "oracle")
    assert oracle[1] == "0" and "-0.0152" not in (tmp_path / "rep" / "summary.md").read_text()
    assert any(f.name == "bias_vs_budget" for f in rep.figures)


def test_the_figure_draws_the_headline_values(run: Path) -> None:
    """The markers of the bias panel sit at bias_points' values (the upper end where the point is 0); the
    control: the plug-in rel_bias, the figure's old value, is not among them for the oracle."""
    r = load_run(run)
    points = bias_points(r)
    fig = bias_vs_budget(r)
    ys = sorted(float(y) for c in fig.axes[0].collections if isinstance(c, PathCollection) for _, y in c.get_offsets())
    want = sorted(p if p > 0 else h for p, h in zip(points["point"], points["high"]))
    assert ys == pytest.approx(want, rel=1e-12)
    plug_in = float(points.loc[points["estimator"] == "oracle", "rel_bias"].iloc[0])
    assert all(abs(y - plug_in) > 1e-12 * plug_in for y in ys)


def test_report_snr_and_tail_index_columns(base_run: Path, tmp_path: Path) -> None:
    """The SNR column reads snr_q50 where the snr protocol computed it (a cell without snr_median is not "—");
    a tail index that is infinite or absurdly large prints as "> 10" with a note, a plain one as value ± s.e.
    (the control)."""
    from gradbench.report.tables import summary_table

    d = tmp_path / "run"
    shutil.copytree(base_run, d)
    r = pd.read_parquet(d / "results.parquet")
    allg = r["param_group"] == "all"
    elbo, oracle = r["estimator"] == "elbo", r["estimator"] == "oracle"
    q50 = r[elbo & allg & (r["metric"] == "snr_median")].assign(metric="snr_q50", protocol="snr", value=0.4321)
    r = r[~(elbo & (r["metric"] == "snr_median"))]
    r.loc[elbo & allg & (r["metric"] == "tail_index"), ["value", "stderr"]] = [4100.0, 410.0]
    r.loc[oracle & allg & (r["metric"] == "tail_index"), ["value", "stderr"]] = [float("inf"), float("nan")]
    pd.concat([r, q50], ignore_index=True).to_parquet(d / "results.parquet", index=False)
    table = summary_table(load_run(d))
    est, snr, tail = (table.header.index(h) for h in ("estimator", "SNR (median)", "tail index"))
    rows = {row[est].text: row for row in table.rows if row[table.header.index("budget")].text in ("S=1", "K=2")}
    assert rows["elbo"][snr].text.startswith("0.432 ± ") and rows["oracle"][snr].text not in ("—", "0.432")
    assert rows["elbo"][tail].text == "> 10" and rows["oracle"][tail].text == "> 10"
    assert re.fullmatch(r"\S+ ± \S+", rows["iwae"][tail].text) and "light tail" in table.note
