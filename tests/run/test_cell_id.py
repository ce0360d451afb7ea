"""Cell ids follow the code: the import closure of a cell's model, estimator and protocols, read from the sources.

Nothing here is stochastic. An edit is simulated by patching the function that reads a module's source (the files
in the repository are never touched), with the per-process caches cleared around it.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from gradbench import registry
from gradbench.run.plan import load_suite
from tests.run.test_plan import write

VAE_SUITE = """\
name: ids
seed: 0
replicates: 10
targets:
  - model: vae
    params: {latent_dim: 1, hidden: [4], n_data: 2}
    proposal: {}
estimators:
  - name: reparam_elbo
protocols: [bias]
"""


@pytest.fixture
def fresh_caches():
    def clear():
        registry._code_version.cache_clear()
        registry.module_imports.cache_clear()

    clear()
    yield clear
    clear()


def _vae_cell_id(tmp_path) -> str:
    _, cells = load_suite(write(tmp_path, VAE_SUITE))
    (cell,) = cells
    return cell.cell_id


def _edited(module: str, monkeypatch) -> None:
    """Make ``module``'s source read as edited (a comment appended) from now on."""
    original = registry._source
    monkeypatch.setattr(registry, "_source", lambda name: original(name) + (b"\n# edited\n" if name == module else b""))


def test_editing_a_module_the_vae_imports_changes_its_cell_id(tmp_path, monkeypatch, fresh_caches):
    """references/estimated.py is imported by references/quadrature.py, which the vae model imports."""
    closure = registry.import_closure(registry.cell_roots("vae", "reparam_elbo", {}, ["bias"]))
    assert "gradbench.references.estimated" in closure
    before = _vae_cell_id(tmp_path)
    _edited("gradbench.references.estimated", monkeypatch)
    fresh_caches()
    assert _vae_cell_id(tmp_path) != before


def test_editing_a_module_outside_the_closure_keeps_the_cell_id(tmp_path, monkeypatch, fresh_caches):
    """models/ebm.py (energy-based models) is not imported by anything a vae/reparam_elbo/bias cell runs."""
    closure = registry.import_closure(registry.cell_roots("vae", "reparam_elbo", {}, ["bias"]))
    assert "gradbench.models.ebm" not in closure
    before, ebm = _vae_cell_id(tmp_path), registry.code_version("gradbench.models.ebm")
    _edited("gradbench.models.ebm", monkeypatch)
    fresh_caches()
    assert registry.code_version("gradbench.models.ebm") != ebm, "the edit is seen"
    assert _vae_cell_id(tmp_path) == before


@pytest.mark.parametrize("model, estimator, needed", [
    ("categorical_vae", "rloo", {"gradbench.families.bernoulli", "gradbench.models.sbn", "gradbench.families.categorical",
                                 "gradbench.references.enumeration"}),
    ("vae", "elbo", {"gradbench.references.estimated", "gradbench.families.gaussian", "gradbench.references.quadrature"}),
    ("sbn", "elbo", {"gradbench.references.estimated", "gradbench.references.enumeration", "gradbench.families.bernoulli"}),
    ("ppca", "elbo", {"gradbench.models.ppca", "gradbench.estimators.variational", "gradbench.contracts", "gradbench.core"}),
])
def test_closures_include_what_the_code_imports(model, estimator, needed, fresh_caches):
    """The modules a hand-written list used to omit (categorical_vae: families/bernoulli, models/sbn; vae and sbn:
    references/estimated) are found by walking the imports, with the bias protocol's statistics."""
    closure = set(registry.import_closure(registry.cell_roots(model, estimator, {}, ["bias"])))
    assert needed | {"gradbench.protocols.bias", "gradbench.stats"} <= closure
    assert "gradbench.registry" not in closure


def test_import_walk_counts_lazy_relative_and_string_imports_not_type_checking(tmp_path, monkeypatch, fresh_caches):
    pkg = tmp_path / "walkpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("Y = 1\n")
    (pkg / "main.py").write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        from . import helper
        if TYPE_CHECKING:
            from gradbench.models import ebm
            from walkpkg import unused

        def lazy():
            from gradbench.references import enumeration
            return "gradbench.target"
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry.module_imports("walkpkg.main")
    assert {"walkpkg.helper", "walkpkg", "gradbench.references.enumeration", "gradbench.references", "gradbench",
            "gradbench.target"} <= found
    assert "gradbench.models.ebm" not in found and "walkpkg.unused" not in found
    sys.modules.pop("walkpkg", None)


def test_a_plugin_cell_hashes_the_plugin_source_and_its_gradbench_imports(tmp_path, monkeypatch, fresh_caches):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"))
    text = VAE_SUITE.replace("replicates: 10", "replicates: 10\nplugins: [my_model]").replace(
        "model: vae", "model: factor").replace("{latent_dim: 1, hidden: [4], n_data: 2}", "{n_data: 2}")
    _, (cell,) = load_suite(write(tmp_path, text))
    code = dict(cell.code)
    assert code["my_model"] == registry.code_version("my_model") and len(code["my_model"]) == 16
    assert {"gradbench.contracts", "gradbench.target", "gradbench.core"} <= set(code), "contracts' lazy re-exports"
