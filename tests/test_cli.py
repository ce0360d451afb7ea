"""The command line. In-process (``gradbench.cli.main`` with captured streams) wherever a
subprocess proves nothing; subprocesses only for what needs a fresh interpreter: which modules
start-up imports, and the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradbench.cli import LAZY_COMMANDS, main
from tests.run.test_plan import VALID, write

ROOT = Path(__file__).resolve().parents[1]


def gradbench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``gradbench ARGS`` run in this process."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradbench: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- start-up ----------------------------------------------------------------------------------
def test_light_commands_import_neither_torch_nor_pandas_nor_scipy():
    """``--help``, ``--version``, ``list``, ``show`` and ``validate`` answer without the heavy stack
    (a fresh interpreter: this test process has torch already)."""
    code = """
import sys
from gradbench.cli import main
for argv in (["--help"], ["--version"], ["list", "-v"], ["show", "iwae"], ["validate", sys.argv[1]]):
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
heavy = sorted(m for m in ("torch", "pandas", "scipy", "matplotlib") if m in sys.modules)
print("HEAVY", heavy)
"""
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "suites" / "quick.yaml")], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def test_lazy_commands_help_matches_the_commands():
    from gradbench.registry import resolve

    for name, (path, short) in LAZY_COMMANDS.items():
        command = resolve(path)
        assert command.name == name
        first_line = (command.help or "").strip().splitlines()[0]
        assert first_line.startswith(short.rstrip(".").split(" as ")[0].split(" (")[0][:25]), (name, first_line)


def test_entry_point_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "gradbench", "--version"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and "version" in res.stdout


# -- list / show -------------------------------------------------------------------------------
def test_list_shows_every_registry(capsys):
    code, out, _ = gradbench(capsys, "list")
    assert code == 0
    for word in ("models:", "ppca", "estimators:", "oracle", "iwae", "protocols:", "bias", "variance", "list -v"):
        assert word in out


def test_list_verbose_and_show_give_type_default_description(capsys):
    code, out, _ = gradbench(capsys, "list", "estimators", "-v")
    assert code == 0
    assert "K: int = 8 (> 0) — importance samples per data point" in out
    assert "coupling: 'maximal' | 'common_uniform' | 'independent' = 'maximal'" in out
    code, out, _ = gradbench(capsys, "show", "ppca")
    assert code == 0
    assert "data_dim: int required (> 0) — d, dimension of x" in out
    assert "proposal.mean_shift: float = 0.0 (≥ 0)" in out
    code, _, err = gradbench(capsys, "show", "IWAE")
    assert code == 2 and "did you mean 'iwae'?" in one_error_line(err)
    code, out, _ = gradbench(capsys, "show", "train")  # a kind of cell with its own parameters
    assert code == 0 and "theta_estimator: " in out and "no parameters" not in out
    code, out, _ = gradbench(capsys, "show", "measure")  # control: a kind whose parameters are its estimator's
    assert code == 0 and "(no parameters of its own: its estimator's" in out and "theta_estimator" not in out


# -- validate / run ----------------------------------------------------------------------------
def test_validate_and_run_tiny_suite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, VALID)
    code, out, _ = gradbench(capsys, "validate", str(path))
    assert code == 0 and "8 cell(s)" in out
    code, out, err = gradbench(capsys, "run", str(path), "--replicates", "40")
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")
    assert set(table.estimator) == {"oracle", "iwae"} and (table.n_replicates == 40).all()
    assert "8 cell(s) run, 0 reused" in out
    # one table per protocol; targets by what varies between them; labels show what the suite set
    titles = [line.split(":")[0] for line in out.splitlines() if line.startswith(("bias: ", "variance: "))]
    assert titles == ["bias", "variance"]
    assert "latent_dim=1" in out and "latent_dim=2" in out
    assert "iwae(K=32)" in out and "oracle(S=1)" in out
    # not a terminal: one progress line per finished cell
    progress = [line for line in err.splitlines() if line.startswith("gradbench: [")]
    assert len(progress) == 8 and progress[-1].startswith("gradbench: [8/8] ")
    code, out, _ = gradbench(capsys, "run", str(path), "--replicates", "40")
    assert "0 cell(s) run, 8 reused" in out


def test_meeting_on_plain_estimators_is_said_once(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("protocols: [bias, variance]", "protocols: [bias, meeting]"))
    code, out, _ = gradbench(capsys, "validate", str(path))
    assert code == 0
    assert out.count("meeting protocol reports only coupled estimators") == 1 and "oracle, iwae" in out


def test_bad_suites_exit_2_with_one_line(tmp_path, capsys):
    cases = {
        "syntax": VALID.replace("protocols: [bias, variance]", "protocols: [bias, variance"),
        "unknown-key": VALID.replace("seed: 1", "seed: 1\nseeds: 2"),
        "unknown-estimator": VALID.replace("name: iwae", "name: iwea"),
        "wrong-type": VALID.replace("data_dim: 4", "data_dim: four"),
        "empty-grid": VALID.replace("K: [2, 8, 32]", "K: []"),
    }
    for name, text in cases.items():
        path = write(tmp_path, text, f"{name}.yaml")
        for command in ("validate", "run"):
            out = ("--out", str(tmp_path / "out")) if command == "run" else ()
            code, _, err = gradbench(capsys, command, str(path), *out)
            assert code == 2, (name, err)
            assert one_error_line(err).startswith(f"gradbench: error: {path}:"), (name, err)


def test_misspellings_get_a_did_you_mean(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("model: ppca", "model: PPCA"))
    code, _, err = gradbench(capsys, "validate", str(path))
    assert code == 2 and "unknown model 'PPCA'; did you mean 'ppca'?" in one_error_line(err)
    path = write(tmp_path, VALID.replace("replicates: 50", "replicate: 50"))
    code, _, err = gradbench(capsys, "validate", str(path))
    line = one_error_line(err)
    assert code == 2 and "unknown key 'replicate'; did you mean 'replicates'?" in line, line


def test_debug_shows_traceback(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("name: iwae", "name: iwea"))
    with pytest.raises(Exception, match="unknown estimator 'iwea'"):
        main(["--debug", "validate", str(path)])


def test_usage_errors_use_the_same_prefix(capsys):
    code, _, err = gradbench(capsys, "list", "everything")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("gradbench: error: ")
    assert "Error:" not in err


def test_out_at_a_file_or_another_suites_folder_is_refused(tmp_path, capsys):
    path = write(tmp_path, VALID)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    code, _, err = gradbench(capsys, "run", str(path), "--out", str(a_file))
    assert code == 2 and "is a file, not a folder" in one_error_line(err)
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"suite": "someone-else", "cells": []}))
    code, _, err = gradbench(capsys, "run", str(path), "--out", str(other))
    line = one_error_line(err)
    assert code == 2 and "suite 'someone-else', not 'tiny'" in line
    assert not (other / "cells").exists()


def test_target_seed_flag_keeps_targets_while_seed_changes_the_noise(tmp_path):
    from gradbench.run.plan import load_suite

    path = write(tmp_path, VALID)
    _, base = load_suite(path, {"target_seed": 5})
    _, replica = load_suite(path, {"target_seed": 5, "seed": 2})
    assert [c.target.target_id for c in base] == [c.target.target_id for c in replica]
    assert [c.target.noise_seed(0) for c in base] != [c.target.noise_seed(0) for c in replica]


SHIPPED_SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.needs("fashion_mnist")) if "fashion_mnist" in p.read_text() else p
    for p in SHIPPED_SUITES], ids=[p.stem for p in SHIPPED_SUITES])
def test_shipped_suites_validate_and_state_target_seed(path):
    """Every shipped suite is valid, and states target_seed so that ``--seed N`` replicates it on
    the same targets (in-process: one subprocess per suite would cost an import of torch each). A suite on
    Fashion-MNIST is skipped, with the reason, where its files are absent; a suite measured at a training run's
    snapshots (step 2 of a two-step recipe) is skipped where that run has not been made here."""
    from gradbench.run.plan import SuiteError, load_suite

    assert len(SHIPPED_SUITES) >= 3
    try:
        spec, cells = load_suite(path)
    except SuiteError as exc:
        if "checkpoint:" in path.read_text() and "params.checkpoint: no snapshot folder" in str(exc):
            pytest.skip(f"{path.name} needs its training run first: {exc}")
        raise
    assert cells, path
    assert spec.target_seed is not None, f"{path.name}: no target_seed"


def test_cuda_request_without_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code, _, err = gradbench(capsys, "run", str(write(tmp_path, VALID)), "--device", "cuda")
    assert code == 2 and "'cuda' requested but this machine has 0 CUDA device(s)" in one_error_line(err)
