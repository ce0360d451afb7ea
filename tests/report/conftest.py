"""Fixtures of the report and compare tests; the helpers are in report_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.report_helpers import run_to, write_suite


@pytest.fixture(scope="session")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bias + variance run (5 cells, 400 replicates)."""
    folder = tmp_path_factory.mktemp("base")
    return run_to(write_suite(folder, "base", ["bias", "variance"]), folder / "run")
