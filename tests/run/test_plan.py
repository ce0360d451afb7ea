"""Suite validation, grid expansion, seeds and located one-line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gradbench import registry
from gradbench.run.plan import SuiteError, load_suite

VALID = """\
name: tiny
seed: 1
replicates: 50
targets:
  - model: ppca
    params: {data_dim: 4, latent_dim: [1, 2], n_data: 1}
    proposal: {mean_shift: 0.5, cov_scale: 2.0}
estimators:
  - name: oracle
    params: {S: 1}
  - name: iwae
    params:
      K: [2, 8, 32]
protocols: [bias, variance]
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(path: Path) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_grid_expansion_is_cartesian(tmp_path):
    suite, cells = load_suite(write(tmp_path, VALID))
    assert suite.dtype == "float64" and suite.device == "cpu"
    assert len(cells) == 2 * (1 + 3)
    assert sorted({c.estimator_params.get("K") for c in cells if c.estimator == "iwae"}) == [2, 8, 32]
    assert len({c.cell_id for c in cells}) == len(cells)


def test_seeds_do_not_depend_on_the_estimator(tmp_path):
    _, cells = load_suite(write(tmp_path, VALID))
    by_target = {}
    for c in cells:
        by_target.setdefault(c.target.target_id, set()).add((c.target.data_seed, c.target.noise_seed(0)))
    assert len(by_target) == 2 and all(len(v) == 1 for v in by_target.values())


def test_data_seed_ignores_the_proposal(tmp_path):
    text = VALID.replace("proposal: {mean_shift: 0.5, cov_scale: 2.0}", "proposal: {mean_shift: [0.0, 0.5]}")
    _, cells = load_suite(write(tmp_path, text))
    data_seeds = {(c.target.params["latent_dim"], c.target.data_seed) for c in cells}
    assert len(data_seeds) == 2
    assert len({c.target.target_id for c in cells}) == 4


def test_target_seed_fixes_targets_while_seed_changes_noise(tmp_path):
    path = write(tmp_path, VALID.replace("seed: 1", "seed: 1\ntarget_seed: 5"))
    _, a = load_suite(path)
    _, b = load_suite(path, {"seed": 2})
    assert [c.target.target_id for c in a] == [c.target.target_id for c in b]
    assert [c.target.data_seed for c in a] == [c.target.data_seed for c in b]
    assert all(x.target.noise_seed(0) != y.target.noise_seed(0) for x, y in zip(a, b))
    assert all(x.cell_id != y.cell_id for x, y in zip(a, b))
    _, c = load_suite(write(tmp_path, VALID.replace("seed: 1", "seed: 5"), "five.yaml"))
    assert [x.target.data_seed for x in c] == [x.target.data_seed for x in a], "target_seed defaults to seed"


def test_overrides_change_replicates_and_ids(tmp_path):
    path = write(tmp_path, VALID)
    _, a = load_suite(path)
    _, b = load_suite(path, {"replicates": 10})
    assert {c.replicates for c in b} == {10}
    assert a[0].cell_id != b[0].cell_id


def test_renaming_the_suite_keeps_cell_ids(tmp_path):
    _, a = load_suite(write(tmp_path, VALID))
    _, b = load_suite(write(tmp_path, VALID.replace("name: tiny", "name: other"), "other.yaml"))
    assert [c.cell_id for c in a] == [c.cell_id for c in b]


@pytest.mark.parametrize("broken,line,needle", [
    (VALID.replace("protocols: [bias, variance]", "protocols: [bias, variance"), 15, "YAML syntax error: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 14)"),
    (VALID.replace("seed: 1", "seed: 1\nrepliactes: 3"), 3, "unknown key 'repliactes'; did you mean 'replicates'?"),
    (VALID.replace("name: oracle", "name: oracel"), 9, "estimators[0].name: unknown estimator 'oracel'; did you mean 'oracle'?"),
    (VALID.replace("K: [2, 8, 32]", "K: [2, eight, 32]"), 13, "estimators[1].params.K[1]: input should be a valid integer (got 'eight')"),
    (VALID.replace("K: [2, 8, 32]", "K: [2, 8, -1]"), 13, "estimators[1].params.K[2]: input should be greater than 0 (got -1)"),
    (VALID.replace("K: [2, 8, 32]", "K: []"), 13, "estimators[1].params.K: empty grid"),
    (VALID.replace("replicates: 50", "replicates: 0"), 3, "replicates: input should be greater than 0"),
    (VALID.replace("replicates: 50", "replicates: '50'"), 3, "replicates: input should be a valid integer"),
    (VALID.replace("model: ppca", "model: ppcaa"), 5, "targets[0].model: unknown model 'ppcaa'; did you mean 'ppca'?"),
    (VALID.replace("n_data: 1}", "n_data: 1, noise: 2}"), 6, "targets[0].params.noise: unknown parameter 'noise'; did you mean 'noise_std'?"),
    (VALID.replace("dtype", "x").replace("seed: 1", "seed: 1\ndtype: float46"), 3, "dtype: input should be 'float64' or 'float32'"),
    (VALID.replace("protocols: [bias, variance]", "protocols: [bias, varience]"), 14, "protocols[1]: unknown protocol 'varience'"),
    (VALID.replace("replicates: 50\n", ""), 1, "missing required key 'replicates'"),
    ("- just\n- a list\n", 1, "top level must be a mapping"),
    (VALID.replace("protocols:", "  - name: oracle\n    params: {S: 1}\nprotocols:"), 14, "estimators[2]: duplicate of estimators[0]"),
    (VALID.replace("seed: 1", "seed: 1\nmax_cells: 3"), 1, "expand to 8 cells, more than max_cells = 3"),
])
def test_bad_suites_give_one_located_line(tmp_path, broken, line, needle):
    path = write(tmp_path, broken)
    msg = error_of(path)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert needle in msg, msg


def test_missing_and_non_utf8_files(tmp_path):
    assert "no such suite file" in error_of(tmp_path / "nope.yaml")
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in error_of(p)


def test_yaml_is_loaded_safely(tmp_path):
    msg = error_of(write(tmp_path, VALID.replace("name: tiny", "name: !!python/object/apply:os.system ['true']")))
    assert "YAML" in msg


def test_data_file_is_loaded_and_hashed(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.ones((2, 4)))
    text = VALID.replace("    proposal:", "    data: x.npy\n    proposal:").replace("latent_dim: [1, 2]", "latent_dim: 2")
    _, cells = load_suite(write(tmp_path, text))
    target = cells[0].target.build("float64", "cpu")
    assert target.x.shape == (2, 4)
    assert "data file 'y.npy' not found" in error_of(write(tmp_path, text.replace("x.npy", "y.npy")))


def test_a_training_cell_id_covers_the_code_it_trains_with():
    """A train cell's id hashes train.py, train_ebm.py (the EBM branch) and the modules of its θ- and φ-estimators,
    so editing any of them re-runs the cell instead of resuming a stale result."""
    root = Path(__file__).resolve().parents[2]
    _, cells = load_suite(root / "suites" / "train-ebm.yaml")
    modules = {m for c in cells for m, _ in c.code}
    assert {"gradbench.training.loop", "gradbench.training.ebm", "gradbench.estimators.ebm"} <= modules
    _, cells = load_suite(root / "suites" / "train-digits.yaml")
    for c in cells:
        code = {m for m, _ in c.code}
        for key in ("theta_estimator", "phi_estimator"):
            name = c.estimator_params[key]
            assert registry.ESTIMATORS[name].module_of("fn") in code, (name, sorted(code))
