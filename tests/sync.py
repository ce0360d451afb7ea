"""Test-side synchronisation with a child ``gradbench run`` held by the :mod:`tests.gate` plugin."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def gate_env(gate: Path, at: str) -> dict[str, str]:
    """The child's environment: hold at ``at`` (``cell:N`` or ``checkpoint:N``, see tests.gate), flags in ``gate``."""
    gate.mkdir(parents=True, exist_ok=True)
    for name in ("held", "release"):
        (gate / name).unlink(missing_ok=True)
    return {**os.environ, "GRADBENCH_TEST_GATE_DIR": str(gate), "GRADBENCH_TEST_GATE_AT": at}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until ``path`` exists (the child reached its gate); fail at once if the child exited first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before reaching its gate")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)
