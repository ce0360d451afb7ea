"""``track_`` figure of ``gradbench validate --estimate``: the factor by which the probe's rough total misses the
seconds a real run of ``suites/quick.yaml`` reports (cells and references), both in fresh processes:
max(r, 1/r) with r = estimate / run, so 1 is exact and — like every asv unit here — smaller is better (the
promised precision is a factor of 3). A timing ratio, so a test cannot hold it to a bound on a shared machine;
asv records it per commit, and a change in the probe or in the run's cost shows here."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

QUICK = Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"
_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def _gradbench(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "gradbench", *args], capture_output=True, text=True, timeout=900,
                         check=True)
    return res.stdout


class TrackCostEstimate:
    timeout = 900

    def setup(self) -> None:
        if not QUICK.exists():
            raise NotImplementedError("suites/quick.yaml is not in this commit")

    def track_estimate_miss_factor(self) -> float:
        out = _gradbench("validate", str(QUICK), "--estimate")
        value, unit = re.search(r"^  total: ~([\d.e+-]+) (s|min|h)", out, re.MULTILINE).groups()
        estimate = float(value) * _SECONDS[unit]
        with tempfile.TemporaryDirectory() as tmp:
            out = _gradbench("run", str(QUICK), "--out", str(Path(tmp) / "run"))
        actual = float(re.search(r"\d+ failed, ([\d.]+) s;", out).group(1))
        r = estimate / actual
        return max(r, 1 / r)

    track_estimate_miss_factor.unit = "max(estimate/run, run/estimate)"  # type: ignore[attr-defined]
