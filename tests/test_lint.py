"""The whole repository passes `ruff check` (rules and settings: pyproject.toml [tool.ruff]; ruff pinned in the test extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes_on_the_repository():
    pytest.importorskip("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, check=False)
    print(res.stdout)
    print(res.stderr, file=sys.stderr)
    assert res.returncode == 0, f"ruff check failed:\n{res.stdout}\n{res.stderr}"
