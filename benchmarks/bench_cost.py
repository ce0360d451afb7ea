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
# the probe `validate --estimate` runs, in a fresh interpreter, printing its exact total (the command prints it rounded)
PROBE = ("import sys; from gradbench.run.cost import probe; from gradbench.run.plan import load_suite; "
         "print(probe(load_suite(sys.argv[1], check_device=True)[1]).total)")


def _python(*args: str) -> str:
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, check=True)
    return res.stdout


class TrackCostEstimate:
    timeout = 900

    def setup(self) -> None:
        if not QUICK.exists():
            raise NotImplementedError("suites/quick.yaml is not in this commit")

    def track_estimate_miss_factor(self) -> float:
        estimate = float(_python("-c", PROBE, str(QUICK)).split()[-1])
        with tempfile.TemporaryDirectory() as tmp:
            out = _python("-m", "gradbench", "run", str(QUICK), "--out", str(Path(tmp) / "run"))
        actual = float(re.search(r"\d+ failed, ([\d.]+) s;", out).group(1))
        r = estimate / actual
        return max(r, 1 / r)

    track_estimate_miss_factor.unit = "max(estimate/run, run/estimate)"  # type: ignore[attr-defined]
