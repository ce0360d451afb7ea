"""Training snapshots and targets built from them (gradbench.training.snapshots): a resumed cell writes the same snapshots, a
checkpoint target holds the trained parameters bit for bit, a missing folder or step is one located line (exit 2),
the provenance is recorded, and the snapshot file's sha256 is part of the target's identity."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from gradbench.cli import main
from gradbench.run.compute import target_for
from gradbench.run.plan import SuiteError, load_suite
from gradbench.run.runner import run_suite
from gradbench.training import loop
from gradbench.training import params as training_params
from gradbench.training.cell import train
from gradbench.training.params import TrainParams
from gradbench.training.snapshots import SNAPSHOTS, steps_in

TRAIN_SUITE = """\
name: tiny-snapshots
seed: 0
target_seed: 0
targets:
  - model: vae
    params: {latent_dim: 2, hidden: [4], activation: tanh, likelihood: bernoulli}
    data: {name: digits, n: 32, binarize: stochastic_fixed, seed: 0}
train:
  seeds: [0]
  settings: {budget: steps, budget_value: 6, batch_size: 8, lr: 0.02, encoder_hidden: [4], test_n: 10,
             train_eval_n: 10, quadrature_nodes: 4, curve_every: 3, curve_n: 5, curve_K: 4, checkpoint_every: 3
             SNAPSHOTS}
  arms:
    - {theta: {name: iwae, K: 4}, phi: {name: iwae_reparam, K: 4}}
"""

SWEEP_SUITE = """\
name: tiny-sweep
seed: 0
replicates: 10
targets:
  - model: vae
    params: {checkpoint: RUN, step: STEPS EXTRA}
ESTIMATORS
protocols: [variance]
"""


def write_train_suite(tmp_path: Path, snapshots: str = ", snapshot_steps: [0, 3, 6]") -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(TRAIN_SUITE.replace("\n             SNAPSHOTS", snapshots))
    return path


def write_sweep(tmp_path: Path, run: Path, steps: str = "[0, 6]", extra: str = "",
                estimators: str = "estimators:\n  - {name: elbo, params: {S: 1}}") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP_SUITE.replace("RUN", str(run)).replace("STEPS", steps).replace(" EXTRA", extra)
                    .replace("ESTIMATORS", estimators))
    return path


def train_into(tmp_path: Path, out: Path) -> tuple[object, Path]:
    """Run the tiny training cell with its checkpoint folder ``out/checkpoints``; (cell, its snapshot folder)."""
    _, cells = load_suite(write_train_suite(tmp_path))
    cell = cells[0]
    train(cell, target_for(cell), out / "checkpoints")
    return cell, out / SNAPSHOTS / cell.cell_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    tmp = tmp_path_factory.mktemp("trained")
    return train_into(tmp, tmp / "run")


def test_snapshots_are_written_at_the_listed_steps_with_their_provenance(trained):
    cell, folder = trained
    assert steps_in(folder) == [0, 3, 6]
    snap = torch.load(folder / "step-3.pt", weights_only=False)
    assert snap["step"] == 3 and snap["cell_id"] == cell.cell_id and snap["evals"] > 0
    assert snap["target"]["model"] == "vae" and snap["target"]["params"]["hidden"] == [4]
    assert snap["encoder"] == {"family": "gaussian_encoder", "hidden": [4]}
    # step 0 is the initial state of the training loop, bit for bit
    p = TrainParams(**cell.estimator_params)
    init = loop.initial_state(target_for(cell), p, loop.derive_seed(cell.target.noise_seed(0), training_params.TRAIN, p.train_seed))
    first = torch.load(folder / "step-0.pt", weights_only=False)
    assert all(torch.equal(first["theta"][k], v) for k, v in init.theta.items())
    assert all(torch.equal(first["phi"][k], v) for k, v in init.phi.items())
    # negative control: training moved θ
    assert not torch.equal(first["theta"]["W0"], snap["theta"]["W0"])


def test_a_resumed_cell_writes_the_same_snapshots(trained, tmp_path):
    """Resume from the step-3 checkpoint (with the snapshots an interrupted run had written by then): the step-3
    and step-6 files are byte-identical to the uninterrupted run's."""
    cell, folder = trained
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(folder.parent.parent / "checkpoints" / f"{cell.cell_id}.pt", out / "checkpoints")
    assert torch.load(out / "checkpoints" / f"{cell.cell_id}.pt", weights_only=False)["step"] == 3
    mine = out / SNAPSHOTS / cell.cell_id
    mine.mkdir(parents=True)
    shutil.copy(folder / "step-0.pt", mine)
    train(cell, target_for(cell), out / "checkpoints")
    assert steps_in(mine) == [0, 3, 6]
    for step in (3, 6):
        assert (mine / f"step-{step}.pt").read_bytes() == (folder / f"step-{step}.pt").read_bytes()


def test_a_train_cell_without_snapshot_steps_writes_none_and_keeps_its_parameters(tmp_path):
    _, cells = load_suite(write_train_suite(tmp_path, ""))
    assert "snapshot_steps" not in cells[0].estimator_params  # the same parameters (and columns) as before
    rows, _ = train(cells[0], target_for(cells[0]), tmp_path / "checkpoints")
    assert not (tmp_path / SNAPSHOTS).exists()
    assert not any(c.startswith("snapshot") or c.endswith("snapshot_steps") for c in rows.columns)


def test_snapshot_steps_past_the_budget_are_refused(tmp_path):
    with pytest.raises(SuiteError, match=r"train\.yaml:\d+: .*snapshot step\(s\) \[9\] lie past the last training step"):
        load_suite(write_train_suite(tmp_path, ", snapshot_steps: [0, 9]"))


def test_a_checkpoint_target_holds_the_trained_parameters_bitwise(trained, tmp_path):
    _, folder = trained
    _, cells = load_suite(write_sweep(tmp_path, folder.parent.parent))  # a run folder with one training cell
    assert [c.target.snapshot["step"] for c in cells] == [0, 6]
    for c in cells:
        snap = torch.load(folder / f"step-{c.target.snapshot['step']}.pt", weights_only=False)
        t = target_for(c)
        assert type(t.family).__name__ == "GaussianEncoder"
        assert set(t.theta) == set(snap["theta"]) and all(torch.equal(t.theta[k], v) for k, v in snap["theta"].items())
        assert set(t.phi) == set(snap["phi"]) and all(torch.equal(t.phi[k], v) for k, v in snap["phi"].items())
        assert c.target.params == snap["target"]["params"]  # the architecture comes from the snapshot
        assert c.target.data_spec == snap["target"]["data_spec"]  # and the data, when data: is not given
        assert c.target.proposal == {"family": "gaussian_encoder", "encoder_hidden": [4]}
    assert cells[0].target.target_id != cells[1].target.target_id


def test_missing_folder_or_step_is_one_located_line_and_exit_2(trained, tmp_path, capsys):
    _, folder = trained
    suite = write_sweep(tmp_path, folder, steps="[0, 5]")
    with pytest.raises(SuiteError) as err:
        load_suite(suite)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{suite}:6: targets[0].params.checkpoint: ")
    assert f"no snapshot at step 5 in {folder} (steps there: 0, 3, 6)" in msg
    with pytest.raises(SystemExit) as code:
        main(["validate", str(suite)])
    assert code.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "steps there: 0, 3, 6" in lines[0] and "Traceback" not in lines[0]
    gone = tmp_path / "nowhere"
    with pytest.raises(SuiteError, match=rf"^{write_sweep(tmp_path, gone)}:6: targets\[0\]\.params\.checkpoint: "
                                         rf"no snapshot folder {gone} \(run the training suite with snapshot_steps first\)$"):
        load_suite(tmp_path / "sweep.yaml")


def test_conflicting_params_and_a_proposal_are_refused(trained, tmp_path):
    _, folder = trained
    with pytest.raises(SuiteError, match=r"targets\[0\]\.params\.latent_dim: 3 conflicts with the snapshot's 2"):
        load_suite(write_sweep(tmp_path, folder, extra=", latent_dim: 3"))
    load_suite(write_sweep(tmp_path, folder, extra=", latent_dim: 2"))  # agreeing is fine
    path = write_sweep(tmp_path, folder)
    path.write_text(path.read_text().replace("step: [0, 6]}", "step: 0}\n    proposal: {family: gaussian_mean_field}"))
    with pytest.raises(SuiteError, match=r"targets\[0\]\.proposal: a checkpoint target's proposal is the trained encoder"):
        load_suite(tmp_path / "sweep.yaml")


def test_the_snapshot_sha256_is_part_of_the_target_identity(trained, tmp_path):
    """Unchanged files give the same target and cell ids (negative control); rewriting one step's file with other
    θ gives that step a new target id, and the other step keeps its id."""
    _, folder = trained
    run = tmp_path / "copy"
    shutil.copytree(folder, run / SNAPSHOTS / folder.name)
    suite = write_sweep(tmp_path, run)
    _, before = load_suite(suite)
    _, again = load_suite(suite)
    assert [c.cell_id for c in before] == [c.cell_id for c in again]
    f = run / SNAPSHOTS / folder.name / "step-6.pt"
    snap = torch.load(f, weights_only=False)
    snap["theta"]["b0"] = snap["theta"]["b0"] + 1.0
    torch.save(snap, f)
    _, after = load_suite(suite)
    assert before[0].target.target_id == after[0].target.target_id
    assert before[1].target.target_id != after[1].target.target_id
    assert before[1].target.snapshot["sha256"] != after[1].target.snapshot["sha256"]


def test_a_sweep_records_the_provenance_with_the_target_and_in_the_rows(trained, tmp_path):
    cell, folder = trained
    suite = write_sweep(tmp_path, folder.parent.parent / SNAPSHOTS, steps="6")
    s, cells = load_suite(suite)
    summary = run_suite(s, cells, tmp_path / "out", progress=False)
    assert not summary.failed
    info = pd.read_json(tmp_path / "out" / "targets" / f"{cells[0].target.target_id}.json", typ="series")
    prov = info["snapshot"]
    assert prov["cell_id"] == cell.cell_id and prov["step"] == 6 and prov["file"] == str(folder / "step-6.pt")
    assert len(prov["sha256"]) == 64 and prov["run"] == str(folder.parent.parent)
    assert set(summary.table["snapshot.step"]) == {6} and set(summary.table["snapshot.cell_id"]) == {cell.cell_id}


SBN_TRAIN = """\
name: tiny-sbn-snapshots
seed: 0
target_seed: 0
targets:
  - model: sbn
    params: {layers: [4], conditionals: linear}
    data: {name: digits, n: 32, binarize: stochastic_fixed, seed: 0}
train:
  seeds: [0]
  settings: {budget: steps, budget_value: 4, batch_size: 8, lr: 0.05, encoder_hidden: [3], test_n: 10,
             train_eval_n: 10, curve_every: 2, curve_n: 5, curve_K: 4, snapshot_steps: [0, 4]}
  arms:
    - {theta: {name: iwae, K: 4}, phi: {name: vimco, K: 4}}
"""


def test_an_sbn_snapshot_gives_a_bernoulli_encoder_target_with_an_enumerated_reference(tmp_path):
    """Binary latents: the trained Bernoulli encoder (one hidden layer) is the proposal, θ and φ are the saved
    tensors bit for bit, and the ∇θ log p(x) reference is exact by enumeration."""
    (tmp_path / "train.yaml").write_text(SBN_TRAIN)
    _, cells = load_suite(tmp_path / "train.yaml")
    train(cells[0], target_for(cells[0]), tmp_path / "run" / "checkpoints")
    folder = tmp_path / "run" / SNAPSHOTS / cells[0].cell_id
    assert steps_in(folder) == [0, 4]
    sweep = write_sweep(tmp_path, tmp_path / "run", steps="4", estimators="estimators:\n  - {name: iwae, params: {K: 4}}")
    with pytest.raises(SuiteError, match=r"targets\[0\]\.model: the snapshot .*step-4\.pt is of model 'sbn', not 'vae'"):
        load_suite(sweep)
    sweep.write_text(sweep.read_text().replace("model: vae", "model: sbn"))
    _, sweep_cells = load_suite(sweep)
    c = sweep_cells[0]
    assert c.target.model == "sbn" and c.target.proposal == {"family": "bernoulli_encoder", "hidden": 3}
    t = target_for(c)
    snap = torch.load(folder / "step-4.pt", weights_only=False)
    assert type(t.family).__name__ == "BernoulliEncoder" and t.family.hidden == 3
    assert all(torch.equal(t.theta[k], v) for k, v in snap["theta"].items())
    assert all(torch.equal(t.phi[k], v) for k, v in snap["phi"].items())
    assert t.reference("theta").kind == "enumerated"


def test_an_unreadable_snapshot_file_is_one_located_line(trained, tmp_path):
    _, folder = trained
    run = tmp_path / "copy"
    shutil.copytree(folder, run / SNAPSHOTS / folder.name)
    (run / SNAPSHOTS / folder.name / "step-6.pt").write_bytes(b"not a snapshot")
    with pytest.raises(SuiteError, match=r"^\S+sweep\.yaml:6: targets\[0\]\.params\.checkpoint: \S+step-6\.pt: "
                                         r"not a readable snapshot \(") as err:
        load_suite(write_sweep(tmp_path, run))
    assert "\n" not in str(err.value)
