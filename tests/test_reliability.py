"""Reliability: crash-safe resumable runs (real SIGKILL), a lock on the output folder, Ctrl-C,
failing and non-finite estimators, float32 resolution warnings, and fuzzed suites."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradbench import registry
from gradbench.core import GradSample
from gradbench.run.plan import SuiteError, load_suite
from gradbench.run.runner import run_suite
from gradbench.run.store import PROVENANCE, RunBusy, output_lock
from tests.run.test_plan import VALID, write
from tests.sync import gate_env, wait_for

SLOW_SUITE = """\
name: slow
seed: 3
replicates: 600
plugins: [tests.gate]
targets:
  - model: ppca
    params: {data_dim: 10, latent_dim: 3, n_data: 1}
    proposal: {mean_shift: 0.5, cov_scale: 2.0}
estimators:
  - name: gated_iwae
    params: {K: [200, 201, 202, 203, 204, 205]}
protocols: [bias, variance]
"""
# Six IWAE cells (tests.gate's gated_iwae: IWAE that can hold the child at the start of its N-th cell, so that the
# tests below signal the child at a known point instead of after a sleep). 600 replicates: two estimator blocks.


def start(suite: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradbench", "run", str(suite), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def finished(out: Path) -> int:
    return len(list((out / "cells").glob("*[0-9a-f].parquet"))) if (out / "cells").exists() else 0


def test_sigkill_at_several_moments_loses_nothing(tmp_path):
    """SIGKILL during the first cell, after 2 and after 4 finished cells (the child is held at the start of cell
    1, 3, 5 by tests.gate, then killed); each restart redoes only unfinished cells, exactly 2 and 4 cells are on
    disk after the second and third kills, and the final table equals an uninterrupted run's (bitwise,
    provenance aside)."""
    suite = write(tmp_path, SLOW_SUITE)
    reference = subprocess.run([sys.executable, "-m", "gradbench", "run", str(suite), "--out", str(tmp_path / "ref")],
                               capture_output=True, text=True, check=False)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    for kill_after in (0, 2, 4):
        gate = tmp_path / f"gate{kill_after}"
        # hold at this process's N-th cell: N − 1 cells of this process finish first (the restarts reuse 0 and 2)
        proc = start(suite, out, gate_env(gate, f"cell:{ {0: 1, 2: 3, 4: 3}[kill_after] }"))
        wait_for(gate / "held", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert finished(out) == kill_after, "finished cells are never lost, the held one never written"
    res = subprocess.run([sys.executable, "-m", "gradbench", "run", str(suite), "--out", str(out)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "2 cell(s) run, 4 reused" in res.stdout, res.stdout
    a = pd.read_parquet(out / "results.parquet").drop(columns=PROVENANCE)
    b = pd.read_parquet(tmp_path / "ref" / "results.parquet").drop(columns=PROVENANCE)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not list((out / "cells").glob(".*.tmp"))


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    busy = pytest.raises(RunBusy, match=f"another gradbench run \\(pid {os.getpid()}\\)")
    with output_lock(out), busy, output_lock(out):  # the second lock is refused while the first is held
        pass
    res = None
    with output_lock(out):  # the CLI says so in one line, exit code 3
        res = subprocess.run([sys.executable, "-m", "gradbench", "run", str(write(tmp_path, VALID)), "--out", str(out)],
                             capture_output=True, text=True, check=False)
    assert res.returncode == 3 and res.stderr.count("\n") == 1 and "another gradbench run" in res.stderr
    with output_lock(out):  # released: can be taken again
        pass


def test_ctrl_c_stops_after_the_current_cell(tmp_path):
    """Ctrl-C while cell 2 runs (the child held at its start by tests.gate, then released): the run finishes that
    cell and stops — exactly 2 cells on disk, exit 130, one-line advice, no results table; the rerun runs the other
    4 and reuses the 2."""
    suite = write(tmp_path, SLOW_SUITE)
    out, gate = tmp_path / "out", tmp_path / "gate"
    proc = start(suite, out, gate_env(gate, "cell:2"))
    wait_for(gate / "held", proc)
    proc.send_signal(signal.SIGINT)
    seen = []
    while not seen or "stopping after the current cell" not in seen[-1]:  # the handler's notice: the signal was taken
        seen.append(proc.stderr.readline())
        assert seen[-1], f"stderr closed before the Ctrl-C notice: {seen}"
    (gate / "release").touch()
    _, err = proc.communicate(timeout=300)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert finished(out) == 2 and not (out / "results.parquet").exists()
    res = subprocess.run([sys.executable, "-m", "gradbench", "run", str(suite), "--out", str(out)], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0 and "4 cell(s) run, 2 reused" in res.stdout, res.stdout + res.stderr


def _exploding(target, R, gen, **params):
    raise FloatingPointError("the estimator blew up")


def _half_nan(target, R, gen, K: int = 8):
    sample = registry.ESTIMATORS["iwae"].fn(target, R, gen, K=K)
    sample.grads[::2, 0] = math.nan
    return GradSample(sample.grads, sample.layout, sample.cost)


@pytest.fixture
def faulty_estimators(monkeypatch):
    iwae = registry.ESTIMATORS["iwae"]
    monkeypatch.setitem(registry.ESTIMATORS, "exploding", registry.Estimator("exploding", _exploding, iwae.params, "test"))
    monkeypatch.setitem(registry.ESTIMATORS, "half_nan", registry.Estimator("half_nan", _half_nan, iwae.params, "test"))


FAULTY = VALID.replace("protocols:", "  - name: exploding\n  - name: half_nan\nprotocols:").replace("latent_dim: [1, 2]", "latent_dim: 2")


def test_failing_cell_is_recorded_and_the_suite_goes_on(tmp_path, faulty_estimators):
    suite, cells = load_suite(write(tmp_path, FAULTY))
    summary = run_suite(suite, cells, tmp_path / "out", progress=False)
    assert len(summary.failed) == 1 and "FloatingPointError: the estimator blew up" in next(iter(summary.failed.values()))
    assert summary.ran == len(cells) - 1
    assert set(summary.table.estimator) == {"oracle", "iwae", "half_nan"}
    failed_file = next((tmp_path / "out" / "cells").glob("*.failed.json"))
    assert "blew up" in failed_file.read_text()
    again = run_suite(suite, cells, tmp_path / "out", progress=False)
    assert again.ran == 0 and len(again.failed) == 1, "only the failed cell is tried again"


def test_failing_cell_makes_the_cli_exit_nonzero(tmp_path, faulty_estimators, capsys):
    from gradbench.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", str(write(tmp_path, FAULTY)), "--out", str(tmp_path / "out")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "1 cell(s) failed" in err and "the estimator blew up" in err


def test_nonfinite_replicates_are_counted_and_excluded(tmp_path, faulty_estimators):
    suite, cells = load_suite(write(tmp_path, FAULTY.replace("  - name: exploding\n", "")))
    t = run_suite(suite, cells, tmp_path / "out", progress=False).table
    nan_rows = t[t.estimator == "half_nan"]
    assert (nan_rows.n_nonfinite == 25).all() and (nan_rows.n_replicates == 25).all()
    assert nan_rows.value.notna().any() and (t[t.estimator == "iwae"].n_nonfinite == 0).all()


def test_fresh_and_changed_suites(tmp_path):
    path = write(tmp_path, VALID)
    suite, cells = load_suite(path)
    out = tmp_path / "out"
    first = run_suite(suite, cells, out, progress=False)
    assert run_suite(suite, cells, out, fresh=True, progress=False).ran == len(cells)
    changed = write(tmp_path, VALID.replace("K: [2, 8, 32]", "K: [2, 8, 64]"))
    suite2, cells2 = load_suite(changed)
    second = run_suite(suite2, cells2, out, progress=False)
    assert (second.ran, second.skipped) == (2, len(cells2) - 2)  # K = 64 on each of the two targets
    assert first.table.cell_id.nunique() == len(cells)


def test_float32_resolution_warning():
    """Warns when 3 s.e. of a coordinate is below eps·√cost·‖g*‖_∞, and only for reduced precision."""
    from gradbench.core import ParamGroup, ParamLayout, Reference
    from gradbench.protocols.measure import resolution_warning

    layout = ParamLayout((ParamGroup("a", (2,)),))
    gen = torch.Generator().manual_seed(0)
    ref = Reference(torch.tensor([100.0, 1.0], dtype=torch.float64))
    tight = ref.value + torch.randn(10_000, 2, generator=gen, dtype=torch.float64) * torch.tensor([1e-4, 1.0])
    cost = torch.full((10_000,), 16.0)
    assert "bias p-values may reflect rounding" in resolution_warning(GradSample(tight.float(), layout, cost), ref)
    assert resolution_warning(GradSample(tight, layout, cost.double()), ref) == ""  # float64: resolved
    loose = ref.value + torch.randn(10_000, 2, generator=gen, dtype=torch.float64)
    assert resolution_warning(GradSample(loose.float(), layout, cost), ref) == ""


def test_float32_run_uses_a_float64_reference_of_the_rounded_parameters(tmp_path):
    text = VALID.replace("seed: 1", "seed: 1\ndtype: float32").replace("latent_dim: [1, 2]", "latent_dim: 2")
    suite, cells = load_suite(write(tmp_path, text))
    target = cells[0].target.build("float32", "cpu")
    ref = target.reference()
    assert ref.value.dtype == torch.float64
    assert torch.allclose(ref.value.float(), target.exact_grad(), rtol=1e-4, atol=1e-4)
    t = run_suite(suite, cells[:1], tmp_path / "out", progress=False).table
    p = t[(t.metric == "bias_pvalue") & (t.param_group == "all")].value.iloc[0]
    assert p > 0.001, "the float32 oracle is unbiased against the float64 reference (α = 0.001, seed 1)"


# -- fuzzing: every mutation of a valid suite is either a valid plan or one clean SuiteError --------
BASE = yaml.safe_load(VALID)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=6),
                   st.lists(st.integers(-2, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, path, action, value):
    import copy

    doc = copy.deepcopy(doc)
    if not path:
        return value if action == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "replace":
        parent[key] = value
    elif isinstance(parent, dict):
        parent[f"{key}_x"] = value
    return doc


@pytest.mark.parametrize("key", ["\n", " ", "a b", "tab\tkey", ""])
@pytest.mark.parametrize("where", ["top", "params"])
def test_an_unknown_key_that_is_not_one_word_stays_on_one_located_line(tmp_path, key, where):
    """An unknown key with a newline, a space, a tab or nothing in it is quoted in the error's location, so the
    message is one line that starts with the file (found by the fuzz test below: `'\n': 0`)."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    (doc if where == "top" else doc["targets"][0]["params"])[key] = 0
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)) and repr(key) in msg, msg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_fuzzed_suites_give_a_plan_or_one_clean_error(data):
    paths = list(_paths(BASE))
    doc = BASE
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(doc)) if isinstance(doc, (dict, list)) else [()]
        path = data.draw(st.sampled_from(paths))
        doc = _mutate(doc, path, data.draw(st.sampled_from(["delete", "replace", "add"])), data.draw(VALUES))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(doc) if data.draw(st.booleans()) else yaml.safe_dump(doc)[: data.draw(st.integers(0, 400))])
        try:
            _suite, cells = load_suite(path)
        except SuiteError as exc:
            msg = str(exc)
            assert "\n" not in msg and msg.startswith(str(path)), msg
        else:
            assert cells and all(c.replicates > 0 for c in cells)
