"""The measurement scripts under reports/ and studies/ stay runnable as gradbench changes.

Each script's ``--help`` is run in this process (``runpy``, ``__main__``, its own argv): it must parse its arguments
before doing any work and exit 0. Each script may import gradbench only through its public modules (the registry, by
the names suites use, and the documented library modules), never estimator, model, family or reference modules
directly, nor the test suite: moving code inside gradbench must not break them. One script is also run for real on
the data shipped beside it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("reports", "studies") for p in (ROOT / folder).rglob("*.py"))

# gradbench's public modules: what scripts (and plugins) may import
PUBLIC = ("gradbench", "gradbench.registry", "gradbench.run.plan", "gradbench.run.cells", "gradbench.run.compute",
          "gradbench.run.runner", "gradbench.stats", "gradbench.data", "gradbench.seeding", "gradbench.speed",
          "gradbench.calibrate", "gradbench.report", "gradbench.core")
PUBLIC_PACKAGES = ("gradbench.protocols", "gradbench.training")  # and every module below them
# script → the non-public imports it may make, and why
EXEMPT: dict[str, tuple[tuple[str, ...], str]] = {
    "studies/bias-test-calibration/minp_rule.py": (("gradbench.stats._min_p_count",), "the private rule is what it studies"),
    "reports/discrete-estimators/summarise.py": (("gradbench.models.bernoulli_toy",), "the toy's exact relaxed expectation"),
    "reports/speed/coupled_lockstep.py": (("gradbench.estimators",), "it times the coupled driver's internals"),
    "reports/speed/coupled_snapshot.py": (("gradbench.estimators", "gradbench.models.ebm", "tests.conftest"),
                                          "a bitwise snapshot of the driver on the tests' own small targets"),
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _gradbench_imports(path: Path) -> list[str]:
    """Modules (and ``module.name`` for from-imports of private names) a script imports from gradbench or tests."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] in ("gradbench", "tests")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("gradbench", "tests"):
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return out


def _public(module: str) -> bool:
    if any(part.startswith("_") for part in module.split(".")):
        return False
    return module in PUBLIC or any(module == p or module.startswith(p + ".") for p in PUBLIC_PACKAGES) or (
        module.rsplit(".", 1)[0] in PUBLIC and module.rsplit(".", 1)[0] != "gradbench")


def test_there_are_scripts():
    assert len(SCRIPTS) >= 15, [_rel(p) for p in SCRIPTS]


@pytest.mark.parametrize("path", SCRIPTS, ids=_rel)
def test_script_imports_only_public_gradbench_modules(path):
    bad = [m for m in _gradbench_imports(path) if not _public(m)]
    if _rel(path) in EXEMPT:
        allowed, _why = EXEMPT[_rel(path)]
        assert bad and set(bad) <= set(allowed), (bad, allowed)
    else:
        assert not bad, f"{_rel(path)} imports non-public gradbench modules {bad}: use gradbench.registry"


def test_the_public_rule_is_not_vacuous():
    """Negative control: the imports the retired scripts made are refused."""
    for module in ("gradbench.estimators.discrete", "gradbench.models.sbn", "gradbench.references.enumeration",
                   "gradbench.contracts", "tests.conftest", "gradbench.stats._min_p_count", "gradbench.target",
                   "gradbench.run.store", "gradbench.run.executors"):
        assert not _public(module), module
    assert _public("gradbench.training.loop") and _public("gradbench.speed") and _public("gradbench.stats")


@pytest.mark.parametrize("path", SCRIPTS, ids=_rel)
def test_script_help(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_info.value.code in (0, None), out.getvalue()
    assert "usage:" in out.getvalue()


def test_train_digits_analysis_runs_on_its_shipped_run(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    folder = ROOT / "reports" / "train-digits"
    monkeypatch.setattr(sys, "argv", ["analyse.py", str(folder)])
    runpy.run_path(str(folder / "analyse.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "minus" in out and "tau over training" in out
