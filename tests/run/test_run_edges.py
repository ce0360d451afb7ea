"""Inputs validated where they enter and outputs left as a user expects: flags blamed on the flag, too few
replicates refused per protocol, run files readable per umask, no lock file left behind, long reference
computations announced and their time recorded apart from the cells'."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from gradbench.run import runner
from gradbench.run.plan import load_suite
from gradbench.run.store import RunBusy
from tests.test_cli import gradbench, one_error_line

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "suites" / "quick.yaml"


def test_a_bad_flag_value_is_blamed_on_the_flag_not_on_a_suite_line(capsys):
    code, _, err = gradbench(capsys, "run", str(QUICK), "--replicates", "0", "--out", "unused")
    assert code == 2
    assert one_error_line(err).startswith("gradbench: error: --replicates 0: ")


def test_the_same_bad_value_in_the_file_is_blamed_on_its_line(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(QUICK.read_text().replace("replicates: 1000", "replicates: 0"))
    code, _, err = gradbench(capsys, "validate", str(suite))
    assert code == 2
    assert one_error_line(err).startswith(f"gradbench: error: {suite}:5: replicates: ")


@pytest.mark.parametrize("replicates", [1, 2, 9])
def test_too_few_replicates_for_a_statistical_protocol_are_refused_with_the_minimum(replicates, capsys):
    code, _, err = gradbench(capsys, "run", str(QUICK), "--replicates", str(replicates), "--out", "unused")
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"gradbench: error: --replicates {replicates}: ")
    assert "bias (needs ≥ 10)" in line and "variance (needs ≥ 10)" in line


def test_ten_replicates_are_enough():  # the boundary itself (negative control of the refusal above)
    _, cells = load_suite(QUICK, {"replicates": 10})
    assert cells and all(c.replicates == 10 for c in cells)


def test_run_outputs_follow_the_umask_and_no_lock_file_is_left(tmp_path):
    out = tmp_path / "run"
    suite, cells = load_suite(QUICK, {"replicates": 10})
    old = os.umask(0o022)
    try:
        runner.run_suite(suite, cells[:2], out, progress=False)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for p in files:  # 0666 & ~022 = 0644: readable by group and others, as `touch` would make it
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert not (out / ".lock").exists()


def test_a_second_run_on_the_same_folder_is_still_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "run"
    with runner.output_lock(out), pytest.raises(RunBusy), runner.output_lock(out):
        pass
    assert not (out / ".lock").exists()
    with runner.output_lock(out):  # and the folder can be locked again afterwards
        pass


def test_a_slow_reference_is_announced_and_its_seconds_recorded_apart_from_the_cell(tmp_path, monkeypatch):
    _suite, cells = load_suite(QUICK, {"replicates": 10})
    monkeypatch.setattr(runner, "ANNOUNCE_AFTER_S", 0.05)
    said: list[str] = []
    announced = threading.Event()

    def say(text: str) -> None:
        said.append(text)
        if text.startswith("gradbench: computing "):
            announced.set()

    real_target_for = runner.target_for

    class SlowTarget:  # a reference that ends only once its announcement has been made (no sleep, no race)
        def __init__(self, target):
            self.target = target

        def reference(self, objective):
            assert announced.wait(30), "the running reference was never announced"
            return self.target.reference(objective)

    monkeypatch.setattr(runner, "target_for", lambda cell: SlowTarget(real_target_for(cell)))
    refs = runner.prepare_references(cells, tmp_path, say=say)
    assert refs
    meta = sorted((tmp_path / "references").glob("*.json"))
    assert meta, "each computed reference records its seconds"
    record = json.loads(meta[0].read_text())
    assert record["seconds"] >= 0.05 and record["kind"] == "exact"
    assert said[0].startswith("gradbench: computing the reference gradient of target ")
    assert any(s.startswith("gradbench: computed the reference gradient") for s in said)
    said.clear()
    runner.prepare_references(cells, tmp_path, say=say)  # cached: nothing computed, nothing said
    assert said == []
