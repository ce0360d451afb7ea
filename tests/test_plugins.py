"""Plugins (a model written outside the package, loaded by a suite's ``plugins:``), capability checks
before any cell runs, and cell ids that follow the code.

The plugin is ``examples/my_model.py`` — the README's "Write a plugin" walk-through, run here as
a test. Its bias test uses the same decision rule as every other (α = 0.001, seed 0), with the
unbiased coupled i-SIR passing and a mismatched ELBO (the negative control) rejected.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from gradbench import registry
from gradbench.run.plan import SuiteError, load_suite
from gradbench.run.runner import run_suite
from gradbench.run.store import PROVENANCE
from tests.run.test_plan import write

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ALPHA = 0.001

PLUGIN_SUITE = """\
name: plugin
seed: 0
replicates: 1000
plugins: [my_model]
targets:
  - model: factor
    params: {data_dim: 4, latent_dim: 2, n_data: 2}
    proposal: {mean_shift: 0.3}
estimators:
  - name: coupled_isir
    params: {K: 8}
  - name: elbo
protocols: [bias, variance]
"""


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))  # Dask worker processes


def _pvalues(table):
    rows = table[(table.metric == "bias_pvalue") & (table.param_group == "all")]
    return dict(zip(rows.estimator, rows.value))


def test_plugin_model_runs_locally_with_exact_reference(tmp_path):
    suite, cells = load_suite(write(tmp_path, PLUGIN_SUITE))
    assert all(c.plugins == ("my_model",) for c in cells)
    assert any(m == "my_model" for c in cells for m, _ in c.code), "the plugin's code is part of the cell id"
    table = run_suite(suite, cells, tmp_path / "out", progress=False).table
    p = _pvalues(table)
    assert p["coupled_isir"] > ALPHA, "unbiased estimator rejected"
    assert p["elbo"] < ALPHA, "negative control: the mismatched ELBO must be rejected"


def test_plugin_model_runs_on_dask_workers(tmp_path):
    distributed = pytest.importorskip("distributed")
    from gradbench.run.executors import DaskExecutor

    suite, cells = load_suite(write(tmp_path, PLUGIN_SUITE.replace("replicates: 1000", "replicates: 200")))
    local = run_suite(suite, cells, tmp_path / "local", progress=False).table
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        dask = run_suite(suite, cells, tmp_path / "dask", progress=False, executor=DaskExecutor(c.scheduler_address))
    assert not dask.failed
    assert dask.table.drop(columns=PROVENANCE).equals(local.drop(columns=PROVENANCE))


def test_missing_plugin_module_is_one_located_line(tmp_path):
    with pytest.raises(SuiteError, match=r":4: plugins: plugin module 'no_such_plugin' could not be imported"):
        load_suite(write(tmp_path, PLUGIN_SUITE.replace("[my_model]", "[no_such_plugin]")))


@pytest.mark.parametrize("estimator, target, missing", [
    ("reinforce", "ppca", "score"),
    ("oracle", "factor", "exact_posterior"),
    ("reparam_elbo", "ppca", "reparam"),
])
def test_validate_refuses_an_estimator_the_target_cannot_serve(tmp_path, estimator, target, missing):
    params = "{data_dim: 3, latent_dim: 1}" if target == "ppca" else "{data_dim: 3, latent_dim: 1, n_data: 2}"
    text = PLUGIN_SUITE.replace("model: factor", f"model: {target}").replace(
        "params: {data_dim: 4, latent_dim: 2, n_data: 2}", f"params: {params}").replace(
        "proposal: {mean_shift: 0.3}", "proposal: {}").replace("name: elbo", f"name: {estimator}")
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message and ":12: estimators[1].name:" in message
    assert missing in message.split("needs")[1].split("which")[0]


def test_editing_an_estimator_source_recomputes_its_cells(tmp_path, monkeypatch):
    """Copy an estimator into a plugin module, run, edit its source, run again: only its cells re-run."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    plugin = pkg / "edited_estimator.py"
    plugin.write_text(textwrap.dedent("""\
        from gradbench import registry
        from gradbench.estimators import importance

        def iwae_copy(target, R, gen, *, K=8):
            return importance.iwae(target, R, gen, K=K)

        registry.register(registry.Estimator("iwae_copy", iwae_copy, importance.IWAEParams, "a copy of iwae"))
        """))
    monkeypatch.syspath_prepend(str(pkg))
    suite_text = PLUGIN_SUITE.replace("[my_model]", "[my_model, edited_estimator]").replace(
        "name: coupled_isir\n    params: {K: 8}", "name: iwae_copy\n    params: {K: 4}").replace("replicates: 1000", "replicates: 50")
    path = write(tmp_path, suite_text)
    suite, cells = load_suite(path)
    first = run_suite(suite, cells, tmp_path / "out", progress=False)
    assert first.ran == 2
    assert run_suite(suite, cells, tmp_path / "out", progress=False).ran == 0, "unchanged code reuses cells"
    plugin.write_text(plugin.read_text().replace("a copy of iwae", "a copy of iwae (edited)") + "\n# edited\n")
    registry._code_version.cache_clear()
    for name in ("edited_estimator",):
        sys.modules.pop(name, None)
    registry.ESTIMATORS.pop("iwae_copy", None)
    suite, cells2 = load_suite(path)
    again = run_suite(suite, cells2, tmp_path / "out", progress=False)
    assert again.ran == 1 and again.skipped == 1, "the edited estimator's cell re-runs, the other is reused"
    registry.ESTIMATORS.pop("iwae_copy", None)
    sys.modules.pop("edited_estimator", None)
    shutil.rmtree(pkg)


# -- the CLI sees plugins: --plugin MODULE, families, readable schemas ------------------------------------------
def test_plugin_option_makes_a_plugin_model_visible_to_list_show_validate(tmp_path, capsys):
    from tests.test_cli import gradbench, one_error_line

    registry.MODELS.pop("factor", None)
    sys.modules.pop("my_model", None)
    code, out, _ = gradbench(capsys, "list", "models")
    assert code == 0 and "\n  factor " not in out
    suite = write(tmp_path, PLUGIN_SUITE.replace("plugins: [my_model]\n", ""))
    code, _, err = gradbench(capsys, "validate", str(suite))
    assert code == 2 and "unknown model 'factor'" in one_error_line(err)
    code, out, _ = gradbench(capsys, "--plugin", "my_model", "list", "models")
    assert code == 0 and "\n  factor " in out
    code, out, _ = gradbench(capsys, "--plugin", "my_model", "show", "factor")
    assert code == 0 and "plugin: my_model" in out and "provides: log_prob, real_latent, reparam, score" in out
    code, out, _ = gradbench(capsys, "--plugin", "my_model", "validate", str(suite))
    assert code == 0 and "2 cell(s)" in out
    code, _, err = gradbench(capsys, "--plugin", "no_such_module", "list")
    assert code == 2 and "no_such_module" in one_error_line(err)


def test_list_and_show_families(capsys):
    from tests.test_cli import gradbench

    code, out, _ = gradbench(capsys, "list", "families")
    assert code == 0 and all(f"\n  {name} " in out for name in registry.FAMILIES)
    code, out, _ = gradbench(capsys, "show", "gaussian_encoder")
    assert code == 0 and out.startswith("gaussian_encoder (family):")
    assert "proposal: {family: gaussian_encoder} of vae" in out and "proposal.encoder_hidden: list[int] = []" in out


def test_schemas_print_readable_types_and_defaults_without_issue_numbers(capsys):
    import re

    from tests.test_cli import gradbench

    code, out, _ = gradbench(capsys, "list", "-v")
    assert code == 0
    assert "PydanticUndefined" not in out and not re.search(r"\bissues? \d+", out)
    assert "layers: list[int] = [10]" in out and "hidden: list[int] = [16]" in out


def test_registered_family_classes_declare_the_listed_capabilities():
    for family in registry.FAMILIES.values():
        declared = getattr(registry.resolve(family.impl), "capabilities", None)
        if isinstance(declared, frozenset):  # (semi_implicit: per instance, a subset depending on the proposal)
            assert declared == family.capabilities, family.name


def test_the_report_loads_the_plugins_the_run_was_computed_with(tmp_path):
    """run.json records the suite's plugin modules and the report imports them (a plugin's protocol views and names
    are then known without --plugin); a recorded module that cannot be imported is one located line (control)."""
    import json
    import subprocess
    import sys

    suite, cells = load_suite(write(tmp_path, PLUGIN_SUITE.replace("replicates: 1000", "replicates: 20")))
    out = tmp_path / "out"
    run_suite(suite, cells[:1], out, progress=False)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["plugins"] == ["my_model"]
    probe = ("import sys; from gradbench.report.data import load_run; load_run(sys.argv[1]); "
             "print('my_model' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr[-2000:]
    (out / "run.json").write_text(json.dumps({**manifest, "plugins": ["no_such_plugin"]}))
    res = subprocess.run([sys.executable, "-m", "gradbench", "report", str(out)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 2 and "run.json: plugin module 'no_such_plugin' could not be imported" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
