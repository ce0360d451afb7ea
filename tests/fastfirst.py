"""A pytest plugin for mutation runs (README, "Mutation testing"): the selected tests run fastest first, by the
durations mutmut recorded in ``mutmut-stats.json`` of the folder it runs them in (``mutants/``), so that with mutmut's
``-x`` a killed mutant stops at its cheapest failing test. Which tests run, and so which mutants are killed, does
not change. Inert anywhere else (no such file): ``PYTEST_ADDOPTS="-p tests.fastfirst" mutmut run``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = Path("mutmut-stats.json")
    if not path.exists():
        return
    durations = json.loads(path.read_text()).get("duration_by_test", {})
    items.sort(key=lambda it: durations.get(it.nodeid, durations.get("mutants/" + it.nodeid, math.inf)))
