"""tests/fastfirst.py, the mutation runs' fastest-first ordering: items sorted by mutmut's recorded durations
(unknown last, ties in collection order); inert without a mutmut-stats.json in the working folder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fastfirst import pytest_collection_modifyitems


def test_items_run_fastest_first_and_only_under_mutmut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = [SimpleNamespace(nodeid=n) for n in ("tests/a.py::slow", "tests/a.py::new", "tests/b.py::fast",
                                                   "tests/b.py::mid", "tests/c.py::fast_too")]
    monkeypatch.chdir(tmp_path)
    pytest_collection_modifyitems(None, items)  # no mutmut-stats.json: order kept
    assert [i.nodeid for i in items] == ["tests/a.py::slow", "tests/a.py::new", "tests/b.py::fast", "tests/b.py::mid",
                                         "tests/c.py::fast_too"]
    durations = {"tests/a.py::slow": 40.0, "tests/b.py::fast": 0.1, "tests/b.py::mid": 3.0,
                 "mutants/tests/c.py::fast_too": 0.1}  # mutmut may record the mutants/ prefix
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["tests/b.py::fast", "tests/c.py::fast_too", "tests/b.py::mid",
                                         "tests/a.py::slow", "tests/a.py::new"]
