"""Runner: determinism, common random numbers across estimators, resume, output files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gradbench.run.plan import load_suite
from gradbench.run.runner import run_suite
from gradbench.run.store import PROVENANCE
from tests.run.test_plan import write

SUITE = """\
name: runner-test
seed: 7
replicates: 600
targets:
  - model: ppca
    params: {data_dim: 4, latent_dim: 2, n_data: 2}
    proposal: {mean_shift: [0.0, 0.5]}
estimators:
  - name: exact
  - name: oracle
    params: {S: 2}
  - name: elbo
    params: {S: 2}
  - name: iwae
    params: {K: [2, 16]}
protocols: [bias, variance]
"""


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    suite, cells = load_suite(write(tmp, SUITE))
    return tmp, suite, cells, run_suite(suite, cells, tmp / "out", progress=False)


def test_table_contract(first_run):
    _, _, cells, summary = first_run
    t = summary.table
    for col in ["cell_id", "suite", "model", "estimator", "protocol", "param_group", "metric", "value", "stderr",
                "n_replicates", "seed", "device", "dtype", "model.data_dim", "proposal.mean_shift", "estimator.K",
                "estimator.S", *PROVENANCE]:
        assert col in t.columns, col
    assert summary.ran == len(cells) == 2 * 5
    assert set(t.param_group) == {"all", "W", "mu", "sigma"}
    assert (t.n_replicates == 600).all()


def test_rerun_skips_finished_cells_and_is_identical(first_run):
    tmp, suite, cells, summary = first_run
    again = run_suite(suite, cells, tmp / "out", progress=False)
    assert again.ran == 0 and again.skipped == len(cells)
    pd.testing.assert_frame_equal(again.table, summary.table)


def test_same_suite_and_seed_give_identical_tables(first_run, tmp_path):
    _, suite, cells, summary = first_run
    fresh = run_suite(suite, cells, tmp_path / "other", progress=False)
    pd.testing.assert_frame_equal(fresh.table.drop(columns=PROVENANCE), summary.table.drop(columns=PROVENANCE))


def test_changed_seed_changes_values(first_run, tmp_path):
    tmp, _, _, summary = first_run
    suite, cells = load_suite(tmp / "suite.yaml", {"seed": 8})
    other = run_suite(suite, cells, tmp_path / "seed8", progress=False)
    v = lambda t: t[(t.metric == "trace_cov") & (t.estimator == "iwae")].value.to_numpy()
    assert not np.array_equal(v(other.table), v(summary.table))


def test_estimators_share_targets_and_noise(first_run):
    """Common random numbers: at δ = 0 the elbo and oracle cells (same S) have identical rows."""
    _, _, _, summary = first_run
    t = summary.table
    exact_target = t[t["proposal.mean_shift"] == 0.0]
    a = exact_target[exact_target.estimator == "oracle"][["param_group", "metric", "value", "stderr"]].reset_index(drop=True)
    b = exact_target[exact_target.estimator == "elbo"][["param_group", "metric", "value", "stderr"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_target_files_hold_parameters_data_and_exact_gradient(first_run):
    tmp, _, cells, _ = first_run
    target = cells[0].target.build("float64", "cpu")
    with np.load(tmp / "out" / "targets" / f"{cells[0].target.target_id}.npz") as npz:
        assert set(npz.files) == {"W", "mu", "sigma", "x", "grad_W", "grad_mu", "grad_sigma"}
        np.testing.assert_array_equal(npz["x"], target.x.numpy())
        np.testing.assert_array_equal(npz["grad_W"], target.layout.unflatten(target.exact_grad())["W"].numpy())


def test_exact_cells_report_zero_bias(first_run):
    t = first_run[3].table
    ex = t[(t.estimator == "exact") & (t.param_group == "all")].set_index("metric").value
    assert (ex["bias_norm"].abs() < 1e-12).all() and (ex["trace_cov"] < 1e-20).all()  # rounding of a mean of equal rows
    assert (ex["bias_pvalue"] == 1.0).all()


def test_replicate_blocks_extend_consistently(tmp_path):
    """The first 500 replicates are the same whether a cell has 500 or 600 (blocks of 500)."""
    from gradbench.protocols.measure import sample_cell

    path = write(tmp_path, SUITE)
    _, small = load_suite(path, {"replicates": 500})
    _, big = load_suite(path, {"replicates": 600})
    target = small[-1].target.build("float64", "cpu")
    a, b = sample_cell(small[-1], target), sample_cell(big[-1], target)
    assert torch.equal(a.grads, b.grads[:500])


def test_mixed_type_parameter_columns_are_collected(tmp_path):
    """`k: auto` beside an integer k gives one column of mixed types; it is stored as text."""
    text = SUITE.replace("  - name: exact\n", "  - name: coupled_isir\n    params: {K: 4, k: auto}\n"
                                            "  - name: coupled_pimh\n    params: {K: 4, k: 2}\n")
    suite, cells = load_suite(write(tmp_path, text), {"replicates": 40})
    table = run_suite(suite, cells[:4], tmp_path / "out", progress=False).table
    assert set(table["estimator.k"].dropna()) == {"auto", "2"}


def test_bias_qvalues_span_the_runs_group_all_tests(first_run):
    """One bias_qvalue and one bias_pvalue_holm row per bias_pvalue row of group 'all', equal to BH/Holm of
    those p-values, placed with their cell's rows."""
    from gradbench.stats import bh_qvalues, holm_adjust

    t = first_run[3].table
    p = t[(t.metric == "bias_pvalue") & (t.param_group == "all")]
    q = t[t.metric == "bias_qvalue"]
    h = t[t.metric == "bias_pvalue_holm"]
    assert len(q) == len(p) == len(h) and list(q.cell_id) == list(p.cell_id)
    np.testing.assert_allclose(q.value.to_numpy(), bh_qvalues(p.value.to_numpy()), equal_nan=True)
    np.testing.assert_allclose(h.value.to_numpy(), holm_adjust(p.value.to_numpy()), equal_nan=True)
    assert q.method.str.contains(f"{len(p)} bias tests").all()
    first = t.cell_id.iloc[0]
    assert (t.cell_id == first).to_numpy()[: (t.cell_id == first).sum()].all()  # rows stay grouped by cell


def test_named_data_provenance_is_recorded_with_the_run(tmp_path):
    """A target on a named data set records the set, split, rows, binarisation seed and the rows' sha256."""
    import json

    from gradbench.run.plan import load_suite
    from gradbench.run.runner import run_suite
    from tests.run.test_plan import write

    text = """\
name: prov
seed: 0
target_seed: 0
replicates: 20
targets:
  - model: sbn
    params: {layers: [3]}
    data: {name: digits, n: 4, binarize: dynamic, seed: 7}
estimators:
  - name: iwae
    params: {K: 2}
protocols: [bias]
"""
    suite, cells = load_suite(write(tmp_path, text))
    run_suite(suite, cells, tmp_path / "out", progress=False)
    info = json.loads(next((tmp_path / "out" / "targets").glob("*.json")).read_text())
    assert info["data"]["source"] == "digits" and info["data"]["split"] == "train" and info["data"]["rows"] == 4
    assert info["data"]["binarize_seed"] == 7 and len(info["data"]["sha256"]) == 64
