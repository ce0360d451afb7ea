"""What ``gradbench run`` prints (gradbench/terminal.py): deterministic formatting, no sampling."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from gradbench.run.cells import TargetConfig
from gradbench.terminal import (
    CellProgress,
    estimator_labels,
    fmt_p,
    fmt_pm,
    format_run,
    run_warnings,
    suite_keys,
    target_labels,
)


def test_p_values_never_print_as_zero():
    assert fmt_p(0.0) == "<1e-300"
    assert fmt_p(5e-324) == "<1e-300"
    assert fmt_p(3.14e-7) == "3.1e-07"
    assert fmt_p(0.0341) == "0.034"
    assert fmt_p(0.00341) == "0.0034"  # one rule: 2 significant digits below 0.01, 3 decimals above
    assert fmt_p(math.nan) == "—"


def test_value_and_standard_error():
    assert fmt_pm(0.1712, 0.00781) == "0.171 ± 0.0078"
    assert fmt_pm(2.5e-6, 1e-7) == "2.50e-06 ± 1.0e-07"
    assert fmt_pm(3.0, math.nan) == "3"


def test_targets_named_by_what_varies():
    targets = [{"model": "ppca", "model.data_dim": 5, "proposal.mean_shift": 0.5, "proposal.cov_scale": 1.5},
               {"model": "ppca", "model.data_dim": 5, "proposal.mean_shift": 1.5, "proposal.cov_scale": 3.0}]
    assert target_labels(targets) == ["mean_shift=0.5, cov_scale=1.5", "mean_shift=1.5, cov_scale=3"]
    assert target_labels(targets[:1]) == [""]


def test_estimator_labels_show_only_what_the_suite_set_or_what_varies():
    defaults = {"k": 0, "m": None, "lag": 1, "rao_blackwell": True, "max_iter": 10_000}
    entries = [("coupled_isir", {"K": 2, **defaults}), ("coupled_isir", {"K": 16, **defaults}),
               ("iwae", {"K": 8}), ("elbo", {"S": 1}), ("reinforce", {"S": 4, "baseline": "rloo", "rate": 0.1}),
               ("reinforce", {"S": 4, "baseline": "none", "rate": 0.1})]
    spec = SimpleNamespace(estimators=[SimpleNamespace(name="iwae", params={"K": 8}),
                                       SimpleNamespace(name="elbo", params={}),
                                       SimpleNamespace(name="coupled_isir", params={"K": [2, 16]}),
                                       SimpleNamespace(name="reinforce",
                                                       params={"S": 4, "baseline": ["rloo", "none"]})])
    assert estimator_labels(entries, suite_keys(spec)) == [
        "coupled_isir(K=2)", "coupled_isir(K=16)", "iwae(K=8)", "elbo",
        "reinforce(S=4, baseline=rloo)", "reinforce(S=4, baseline=none)"]


def _table(with_statistics_v2: bool) -> pd.DataFrame:
    rows = []
    for i, (shift, K, p) in enumerate([(0.5, 2, 0.0), (1.5, 2, 0.2)]):
        base = {"cell_id": f"c{i}", "target_id": f"t{i}", "model": "ppca", "model.data_dim": 5,
                "proposal.mean_shift": shift, "estimator": "iwae", "estimator.K": K, "param_group": "all"}
        metrics = [("bias", "rel_bias", 0.12, 0.01), ("bias", "bias_pvalue", p, math.nan),
                   ("variance", "trace_cov", 3.0, 0.1), ("variance", "evals_mean", 6.0, 0.0),
                   ("variance", "work_norm_var", 18.0, 0.6), ("snr", "snr_q50", 0.8, 0.05),
                   ("snr", "snr_q25", 0.5, 0.05), ("snr", "snr_q75", 1.1, 0.05),
                   ("wallclock", "seconds_per_estimate", 2.5e-4, 1e-5), ("wallclock", "evals_per_second", 2.4e4, 1e3)]
        if with_statistics_v2:
            metrics += [("bias", "rel_bias_ci_low", 0.10, math.nan), ("bias", "rel_bias_ci_high", 0.14, math.nan),
                        ("bias", "rel_bias_debiased", 0.119, 0.01), ("bias", "bias_qvalue", min(1.0, 2 * p), math.nan)]
        rows += [{**base, "protocol": pr, "metric": m, "value": v, "stderr": s} for pr, m, v, s in metrics]
    return pd.DataFrame(rows)


def test_one_table_per_protocol_in_suite_order():
    out = format_run(_table(False), ["wallclock", "bias", "variance", "snr", "meeting"])
    titles = [line.split(":")[0] for line in out.splitlines() if ": " in line and not line.startswith(" ")]
    assert titles == ["wallclock", "bias", "variance", "snr"]  # meeting: no rows, no table
    assert "mean_shift=0.5" in out and "mean_shift=1.5" in out and "t0" not in out  # targets by parameters
    assert "250 ± 10 µs" in out  # wall-clock in a readable unit
    assert "0.8 ± 0.05" in out and "[0.5, 1.1]" in out  # SNR median ± s.e., and its quartiles over coordinates


def _header(out: str, title: str) -> str:
    """The column header line of the ``title`` table."""
    block = next(b for b in out.split("\n\n") if b.startswith(title + ":"))
    lines = block.splitlines()
    return lines[next(i for i, ln in enumerate(lines) if ln.startswith("─")) - 1]


def test_bias_falls_back_to_standard_error_and_p_without_statistics_v2():
    out = format_run(_table(False), ["bias"])
    assert "rel. bias ± s.e." in out and "0.12 ± 0.01" in out and "<1e-300" in out
    assert "95% CI" not in out and "verdict (p < 0.01)" in _header(out, "bias")


def test_bias_shows_interval_and_q_value_with_statistics_v2():
    out = format_run(_table(True), ["bias"])
    assert "rel. bias [per-row 95% CI]" in out and "0.119 [0.1, 0.14]" in out
    assert " q " in _header(out, "bias") and "Benjamini–Hochberg" in out
    assert "0.400" in out  # the q-value of the second row, not its p-value


def test_headline_bias_lies_inside_its_interval():
    """A negative debiased value (noise explains ‖ḡ − g*‖) prints as 0, never outside [lo, hi]; a value
    inside prints as it is; the control: an interval away from 0 keeps its debiased point."""
    from gradbench.report.format import bias_point, fmt_bias

    m = {"rel_bias": 0.05, "rel_bias_debiased": -0.0152, "rel_bias_ci_low": 0.0, "rel_bias_ci_high": 0.0303}
    assert bias_point(m) == 0.0 and fmt_bias(m) == "0 [0, 0.0303]"
    assert bias_point({**m, "rel_bias_debiased": 0.02}) == 0.02
    assert bias_point({**m, "rel_bias_debiased": 0.05}) == 0.0303  # kept inside the interval
    assert fmt_bias({"rel_bias": 0.12}, 0.01) == "0.12 ± 0.01"  # no interval: the plug-in ± s.e.


def test_verdicts():
    """One word per row from the decision at α: biased; not shown biased with the bias R cannot resolve;
    inconclusive with its reason (rare states; a per-row interval that excludes 0 while q ≥ α)."""
    from gradbench.report.format import bias_verdict, nothing_flagged_line

    m = {"bias_qvalue": 0.2, "rel_bias_ci_low": 0.0, "rel_bias_ci_high": 0.0303}
    assert str(bias_verdict(m, "bias_qvalue", 0.01, 10000)) == "not shown biased: < 0.0303 unresolvable at R = 10000"
    assert str(bias_verdict({**m, "bias_qvalue": 1e-5}, "bias_qvalue", 0.01)) == "✱ biased"
    rebar = {"bias_qvalue": 0.084, "rel_bias_ci_low": 1.82, "rel_bias_ci_high": 13.6}
    assert bias_verdict(rebar, "bias_qvalue", 0.01).word == "inconclusive"
    assert bias_verdict(rebar, "bias_qvalue", 0.1).flagged  # the control: the same row at α above its q
    rare = bias_verdict({**m, "bias_qvalue": 1e-9, "bias_rare_count": 1.0}, "bias_qvalue", 0.01, 100, 6.9)
    assert rare.word == "inconclusive" and "rare states" in str(rare) and not rare.flagged
    assert bias_verdict({}, "bias_qvalue", 0.01).word == "—"
    line = nothing_flagged_line([("a", m, 10000), ("b", {**m, "rel_bias_ci_high": 33.7}, 10000)], 0.01, "bias_qvalue")
    assert "< 0.0303 (a, R = 10000)" in line and "< 33.7 (b, R = 10000)" in line


def test_tail_index_and_quartiles_print_no_absurd_numbers():
    from gradbench.report.format import fmt_band, fmt_tail_index

    assert fmt_tail_index(math.inf, math.nan) == "> 10" and fmt_tail_index(4100.0, 410.0) == "> 10"
    assert fmt_tail_index(2.7, 0.45) == "2.7 ± 0.45" and fmt_tail_index(math.nan) == "—"
    assert fmt_band(0.5, 0.5) == "0.5 (q25 = q75)" and fmt_band(0.5, 1.1) == "[0.5, 1.1]"


def test_end_of_run_warnings_name_their_cell():
    table = _table(False)
    table["warning"] = ""
    sel = (table["cell_id"] == "c1") & table["metric"].isin(["trace_cov", "work_norm_var"])  # two rows, one cell
    table.loc[sel, "warning"] = "rows of one cell: one line"
    tail = table[table["metric"] == "trace_cov"].assign(metric="tail_index", value=2.7, stderr=0.45, warning="")
    lines = run_warnings(pd.concat([table, tail], ignore_index=True))
    assert lines == ["iwae · mean_shift=1.5: rows of one cell: one line"]
    table.loc[sel, "warning"] = "tail index 2.7 ± 0.45 (Hill): the variance may be infinite"
    lines = run_warnings(pd.concat([table, tail], ignore_index=True))
    assert lines == [("iwae · mean_shift=1.5: tail index 2.7 ± 0.45 (Hill): the variance may be infinite "
                     "(its one-sided 95 % lower bound 1.96 ≤ 2)")]  # 2.7 − 1.645 × 0.45, the header's rule


def test_progress_prints_one_line_per_finished_cell(tmp_path):
    cells = [SimpleNamespace(cell_id=f"c{i}", estimator="iwae", estimator_params={"K": K},
                             target=TargetConfig("ppca", {"data_dim": 5}, {"mean_shift": 0.5}, None, None, 0, 0))
             for i, K in enumerate([2, 8])]
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "c0.parquet").write_bytes(b"")  # finished earlier: not counted
    lines: list[str] = []
    progress = CellProgress(cells, tmp_path, lines.append)
    progress(cells[1])
    assert len(lines) == 1 and lines[0].startswith("gradbench: [1/1] iwae(K=8) — ")


def test_snapshot_targets_are_named_by_their_step_as_the_report_names_them(tmp_path):
    """Targets that differ only in the training snapshot they come from (``snapshot.step``) are told apart in the
    tables, the end-of-run warnings and the progress lines by ``step=N`` — the label the report gives the same rows
    (one naming rule). Control: a table whose targets share the step names no target."""
    from gradbench.report.data import describe_cells

    table = _table(True).drop(columns="proposal.mean_shift")
    table["snapshot.cell_id"] = "3dceb4a72b0f8077"
    table["snapshot.step"] = table["cell_id"].map({"c0": 0, "c1": 200})
    table["warning"] = ""
    table.loc[(table["cell_id"] == "c1") & (table["metric"] == "trace_cov"), "warning"] = "a warning"
    rows = [ln for ln in format_run(table, ["bias"]).splitlines() if "iwae" in ln]
    assert [ln.split()[0] for ln in rows] == ["step=0", "step=200"]
    assert run_warnings(table) == ["iwae · step=200: a warning"]
    labels = describe_cells(table).set_index("cell_id")["target_label"]
    assert labels.to_dict() == {"c0": "step=0", "c1": "step=200"}
    same = table.assign(**{"snapshot.step": 800})
    assert run_warnings(same) == ["iwae: a warning"]
    cells = [SimpleNamespace(cell_id=f"c{i}", estimator="iwae", estimator_params={"K": 8},
                             target=TargetConfig("vae", {"latent_dim": 2}, {}, None, None, 0, 0,
                                                 snapshot={"cell_id": "3dceb4a72b0f8077", "step": step}))
             for i, step in enumerate([0, 200])]
    lines: list[str] = []
    progress = CellProgress(cells, tmp_path, lines.append)
    progress(cells[1])
    assert lines[0].startswith("gradbench: [1/2] iwae · step=200 — ")


def test_bias_flags_by_the_chosen_correction():
    """bh shows and flags by q (✱ below α); holm by the Holm-adjusted p-value; without Holm rows holm falls
    back to the uncorrected p (the control: the same table, another statistic)."""
    table = _table(True)
    holm = table[table["metric"] == "bias_qvalue"].assign(metric="bias_pvalue_holm", value=1.0)
    table = pd.concat([table, holm], ignore_index=True)
    bh = format_run(table, ["bias"], correction="bh", alpha=0.5)
    assert " q " in _header(bh, "bias") and "0.400  ✱ biased" in bh and "Benjamini–Hochberg" in bh
    ho = format_run(table, ["bias"], correction="holm", alpha=0.5)
    assert "p_Holm" in _header(ho, "bias") and "✱" not in ho.split("─")[-1] and "Holm" in ho
    assert "p_Holm" not in format_run(_table(True), ["bias"], correction="holm")


def test_formatting_loads_no_numpy():
    """The terminal and the formatting module import without numpy/pandas (``gradbench run`` prints with them);
    the control: importing gradbench.stats does load numpy in the same check."""
    import subprocess
    import sys

    code = ("import sys, gradbench.terminal, gradbench.report.format; a = 'numpy' in sys.modules or 'pandas' in "
            "sys.modules; import gradbench.stats; print(a, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


# -- the README's example output ----------------------------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"
README_START = "<!-- gradbench-run-output: start; regenerated by `python -m tests.test_terminal` -->"
README_END = "<!-- gradbench-run-output: end -->"
README_SUITE = "suites/quick.yaml"


def quick_run_output(out: Path) -> str:
    """What ``gradbench run suites/quick.yaml`` prints on stdout, less its last line (cells run, seconds)."""
    from gradbench.run.plan import load_suite
    from gradbench.run.runner import run_suite

    spec, cells = load_suite(README.parent / README_SUITE)
    summary = run_suite(spec, cells, out, fresh=True, progress=False)
    return f"$ gradbench run {README_SUITE}\n{format_run(summary.table, spec.protocols, spec)}"


def readme_block(output: str) -> str:
    return f"{README_START}\n```\n{output}\n```\n{README_END}"


def test_readme_shows_what_gradbench_run_prints(tmp_path):
    """The README's example is this code's output on the quick suite (fixed seed, deterministic); when the
    printing changes, regenerate it with ``python -m tests.test_terminal``."""
    text = README.read_text()
    assert README_START in text and README_END in text
    current = text[text.index(README_START):text.index(README_END) + len(README_END)]
    assert current == readme_block(quick_run_output(tmp_path / "run")), (
        "README.md's 'What `gradbench run` prints' is stale: run `python -m tests.test_terminal`")


def update_readme() -> None:
    """Rewrite the README block between the markers with the current output."""
    import tempfile

    text = README.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        block = readme_block(quick_run_output(Path(tmp) / "run"))
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    README.write_text(text[:start] + block + text[end:])


if __name__ == "__main__":
    update_readme()
