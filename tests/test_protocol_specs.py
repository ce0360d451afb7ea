"""Every registered protocol is one vertical (gradbench.protocols.spec): its rows reach a view.

The table of views is printed (``pytest -s``); a protocol whose rows reach neither the terminal nor the report
fails (a report column of another protocol may read them: the SNR column shows the snr protocol's median, else
variance's), as does a view that names a metric its protocol does not declare."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gradbench import registry
from gradbench.protocols.spec import ProtocolSpec, TerminalTable


def _view_table() -> str:
    names = ["terminal", "report_columns", "report_tables", "rules", "figures", "run_rows", "side_tables"]
    lines = ["protocol   " + " ".join(f"{n:>14}" for n in names)]
    for name, spec in registry.PROTOCOLS.items():
        views = spec.views()
        lines.append(f"{name:<10} " + " ".join(f"{'yes' if views[n] else '-':>14}" for n in names))
    return "\n".join(lines)


def test_every_protocol_is_a_spec_and_its_rows_reach_a_view():
    print("\n" + _view_table())
    for name, spec in registry.PROTOCOLS.items():
        assert isinstance(spec, ProtocolSpec) and spec.name == name
        views = spec.views()
        assert spec.metrics, f"{name}: its spec declares no metrics"
        assert views["terminal"], f"{name}: its rows are not printed by `gradbench run` (spec.terminal is None)"
        in_columns = {m for s in registry.PROTOCOLS.values() for c in s.report_columns for m in (*c.shown_if, *c.loads)}
        assert set(spec.metrics) & in_columns or views["report_tables"] or views["figures"], \
            f"{name}: its rows reach no report view (no report column reads them; report_tables, figures empty)"


@pytest.mark.parametrize("name", list(registry.PROTOCOLS))
def test_views_read_declared_metrics(name):
    """The terminal columns, report columns and compare rules of a protocol name only metrics it declares (or, for
    the shared SNR column, those of the protocol that shares it)."""
    spec = registry.PROTOCOLS[name]
    declared = set(spec.metrics) | {m for s in registry.PROTOCOLS.values() for m in s.metrics if m.startswith("snr_")}
    view = spec.terminal_table(set(spec.metrics), "bh", 0.01)
    assert isinstance(view, TerminalTable) and view.columns
    for col in view.columns:
        assert set(col.metrics) <= declared | {"bias_rare_count"}, (name, col.header, col.metrics)
    for col in spec.report_columns:
        assert col.kind == "verdict" or col.metric in declared, (name, col)
        assert set(col.loads) <= declared, (name, col)
    assert set(spec.rules) <= declared, name


def test_metric_names_are_unique_across_protocols():
    seen: dict[str, str] = {}
    for name, spec in registry.PROTOCOLS.items():
        for m in spec.metrics:
            assert m not in seen, f"metric {m!r} of {name} is also {seen[m]}'s"
            seen[m] = name


def test_mcmc_rows_reach_the_terminal():
    """A run with mcmc rows prints them (they used to reach results.parquet only)."""
    pd = pytest.importorskip("pandas")
    from gradbench.terminal import format_run

    table = pd.DataFrame([
        {"cell_id": "c1", "target_id": "t", "model": "toy", "estimator": "uivi", "protocol": "mcmc",
         "param_group": "all", "metric": m, "value": v, "stderr": s, "n_replicates": 100}
        for m, v, s in (("acceptance", 0.71, 0.01), ("ess", 12.5, 0.4))])
    out = format_run(table, ["mcmc"])
    assert "acceptance ± s.e." in out and "0.71 ± 0.01" in out and "12.5 ± 0.4" in out


def test_spec_modules_are_light():
    """Loading the registry (every spec) imports neither torch, pandas, scipy nor matplotlib."""
    code = ("import sys; import gradbench.registry as r; [s.terminal for s in r.PROTOCOLS.values()]; "
            "print(sorted(m for m in ('torch', 'pandas', 'scipy', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == "[]", res.stdout


def test_every_cell_kind_is_computed_by_path_and_reaches_a_view():
    """A cell kind names its computation by path, and rows of a kind other than ``measure`` (whose rows are its
    protocols') reach the report through the kind's own figures or tables; its side tables are collected."""
    from gradbench.run.store import side_tables

    assert set(registry.CELL_KINDS) == {"measure", "train"}
    collected = {t.name for t in side_tables()}
    for name, kind in registry.CELL_KINDS.items():
        assert kind.name == name and callable(kind.compute), name
        assert {t.name for t in kind.side_tables} <= collected, name
        if name != "measure":
            assert kind.figures and kind.report_tables is not None, f"{name}: no figure or table shows its rows"
    assert "train" not in registry.ESTIMATORS and "train" not in registry.PROTOCOLS  # training is a kind of cell only
