"""`gradbench report` on a training run: the training figures and tables are drawn from the run itself
(results.parquet + curves.parquet), their numbers are those of summarize/paired_test, and a figure whose data a run
lacks is left out (the negative controls: no coupled θ-estimator → no τ figure; no curves → no learning curves;
a run without train rows → none of them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gradbench.report.data import load_run
from gradbench.report.render import render_report
from gradbench.report.tables import fmt_p
from gradbench.training.figures import TRAIN_FIGURES, fmt_mean_se, train_tables
from gradbench.training.stats import pair_label, paired_test, summarize
from tests.report.report_helpers import run_to

pytestmark = pytest.mark.filterwarnings("error::UserWarning")

TRAIN_NAMES = {spec.name for spec in TRAIN_FIGURES}
TARGET = {"model": "vae", "params": {"latent_dim": 2, "hidden": [8], "activation": "tanh", "likelihood": "bernoulli"},
          "data": {"name": "digits", "n": 64, "binarize": "stochastic_fixed", "seed": 0}, "proposal": {"family": "gaussian_mean_field"}}
COMMON = {"budget": "steps", "budget_value": 12, "batch_size": 16, "lr": 0.02,
          "encoder_hidden": [8], "test_n": 30, "train_eval_n": 30, "quadrature_nodes": 8, "curve_every": 4,
          "curve_n": 20, "curve_K": 10, "checkpoint_every": 100}
ARMS = [{"theta": {"name": "elbo", "S": 1}, "phi": {"name": "reparam_elbo", "S": 1}},
        {"theta": {"name": "coupled_isir", "K": 4}, "phi": {"name": "iwae_reparam", "K": 4}}]
PAIRS = [{"theta_estimator": a["theta"]["name"], "theta_params": {k: v for k, v in a["theta"].items() if k != "name"},
          "phi_estimator": a["phi"]["name"], "phi_params": {k: v for k, v in a["phi"].items() if k != "name"}}
         for a in ARMS]  # the arms as the cells' parameters name them


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny training run: 2 estimator pairs × 3 seeds × 12 steps on 64 digits (a few seconds)."""
    folder = tmp_path_factory.mktemp("train")
    suite = folder / "tiny-train.yaml"
    suite.write_text(yaml.safe_dump({"name": "tiny-train", "seed": 0, "target_seed": 0, "targets": [TARGET],
                                     "train": {"seeds": [0, 1, 2], "settings": COMMON, "arms": ARMS}}, sort_keys=False))
    return run_to(suite, folder / "run")


def _figures(run: Path, out: Path) -> set[str]:
    rep = render_report(run, out, dpi=50)
    return {f.name for f in rep.figures}


def test_a_train_run_gets_its_figures_and_tables_with_the_protocol_numbers(train_run, tmp_path):
    assert _figures(train_run, tmp_path / "rep") == TRAIN_NAMES
    assert {p.stem for p in (tmp_path / "rep" / "figures").glob("*.png")} == TRAIN_NAMES
    results = pd.read_parquet(train_run / "results.parquet")
    final, paired = train_tables(load_run(train_run))
    # the final table: mean ± s.e. over the 3 seeds, as summarize computes it
    s = summarize(results).set_index(["pair", "metric"])
    col = final.header.index("test log p(x)")
    for row in final.rows:
        pair = row[final.header.index("θ-estimator / φ-estimator")].text
        assert row[final.header.index("seeds")].text == "3"
        assert row[col].text == fmt_mean_se(s.loc[(pair, "test_loglik"), "mean"], s.loc[(pair, "test_loglik"), "stderr"])
    assert [r[0].text for r in final.rows] == [pair_label(pd.Series({f"estimator.{k}": v for k, v in p.items()}))
                                                for p in PAIRS]  # the suite's order; the first is the baseline
    # the paired table: coupled minus the ELBO baseline over the 3 shared seeds (two pairs: one row)
    (row,) = paired.rows
    a, b = final.rows[0][0].text, final.rows[1][0].text
    r = paired_test(results, a, b)
    h = paired.header
    assert row[h.index("minus")].text == a and row[h.index("shared seeds")].text == "3"
    assert row[h.index("mean difference")].text == fmt_mean_se(r["mean_diff"], r["stderr"])
    assert row[h.index("p (paired t)")].text == fmt_p(r["p_t"])
    assert row[h.index("p (sign-flip, exact)")].text == fmt_p(r["p_perm"]) and r["p_perm"] >= 2 / 2**3  # its floor
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Training: final metrics" in md and "Training: paired differences" in md


def test_figures_a_run_lacks_the_data_for_are_left_out(train_run, tmp_path):
    """Negative controls: without the coupled pair there is no τ figure; without curve files (curves.parquet and the
    cells' own) no learning curves; a run without train rows gets none of the training figures or tables."""
    no_coupled = tmp_path / "no-coupled"
    shutil.copytree(train_run, no_coupled)
    t = pd.read_parquet(no_coupled / "results.parquet")
    t[t["estimator.theta_estimator"] != "coupled_isir"].to_parquet(no_coupled / "results.parquet")
    assert _figures(no_coupled, tmp_path / "r1") == TRAIN_NAMES - {"train_tau"}
    no_curves = tmp_path / "no-curves"
    shutil.copytree(train_run, no_curves)
    for f in [no_curves / "curves.parquet", *(no_curves / "cells").glob("*.curves.parquet")]:
        f.unlink()
    assert _figures(no_curves, tmp_path / "r2") == TRAIN_NAMES - {"train_curves", "train_tau"}
    other = tmp_path / "not-train"
    shutil.copytree(train_run, other)
    t.assign(protocol="bias").to_parquet(other / "results.parquet")
    assert not _figures(other, tmp_path / "r3") & TRAIN_NAMES and train_tables(load_run(other)) == []


def test_the_problem_names_the_data_set_not_the_models_default_size(train_run, tmp_path):
    """A target on a named data set shows the set from its provenance (source, split, rows × dim, binarisation) and
    not the model's default N; control: with the provenance file gone, the default N = 1 is what the report shows."""
    import shutil

    from gradbench.report.render import problem_line

    run = load_run(train_run)
    line = problem_line(run)
    assert "data=digits (train, 64×64, stochastic_fixed binarisation)" in line and "N=" not in line
    bare = tmp_path / "bare"
    shutil.copytree(train_run, bare)
    shutil.rmtree(bare / "targets")
    assert "data=" not in problem_line(load_run(bare)) and "N=1" in problem_line(load_run(bare))


def test_the_terminal_prints_the_training_tables_the_report_prints(train_run, tmp_path):
    """`gradbench run` of a training suite prints the kind's tables (final metrics, paired differences) with the very
    cell texts of the report's summary.md — one formatter (control: a run without training cells prints none)."""
    from gradbench.terminal import kind_tables

    text = kind_tables(train_run, ["train"])
    rep = render_report(train_run, tmp_path / "r", dpi=50)
    summary = (rep.out / "summary.md").read_text()
    tables = train_tables(load_run(train_run))
    assert len(tables) == 2
    for table in tables:
        assert table.title in text
        for row in table.rows:
            assert all(c.text in text for c in row)
            assert "| " + " | ".join(c.text.replace("|", "\\|") for c in row) + " |" in summary
    assert kind_tables(train_run, ["measure"]) == ""
