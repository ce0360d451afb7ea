"""The command line, end to end, in subprocesses (as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.test_suite import VALID, write

ROOT = Path(__file__).resolve().parents[1]


def gradbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradbench", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_list_shows_every_registry():
    out = gradbench("list").stdout
    for word in ("models:", "ppca", "estimators:", "oracle", "iwae", "protocols:", "bias", "variance"):
        assert word in out


def test_validate_and_run_tiny_suite(tmp_path):
    path = write(tmp_path, VALID)
    res = gradbench("validate", str(path))
    assert res.returncode == 0 and "8 cell(s)" in res.stdout
    res = gradbench("run", str(path), "--replicates", "40", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")
    assert set(table.estimator) == {"oracle", "iwae"} and (table.n_replicates == 40).all()
    assert "iwae(K=32)" in res.stdout and "8 cell(s) run, 0 reused" in res.stdout
    res = gradbench("run", str(path), "--replicates", "40", cwd=tmp_path)
    assert "0 cell(s) run, 8 reused" in res.stdout


def test_bad_suites_exit_2_with_one_line(tmp_path):
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
            res = gradbench(command, str(path), cwd=tmp_path)
            assert res.returncode == 2, (name, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"gradbench: error: {path}:"), (name, res.stderr)
            assert "Traceback" not in res.stderr


def test_debug_shows_traceback(tmp_path):
    path = write(tmp_path, VALID.replace("name: iwae", "name: iwea"))
    res = gradbench("--debug", "validate", str(path))
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_cuda_request_without_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    res = gradbench("run", str(write(tmp_path, VALID)), "--device", "cuda", cwd=tmp_path)
    assert res.returncode == 2 and "'cuda' requested but this machine has 0 CUDA device(s)" in res.stderr


def test_shipped_suites_validate():
    """Every shipped suite is valid (in-process: one subprocess per suite would cost an import of torch each)."""
    from gradbench.suite import load_suite

    suites = sorted((ROOT / "suites").glob("*.yaml"))
    assert len(suites) >= 3
    for path in suites:
        _, cells = load_suite(path)
        assert cells, path
