"""``gradbench validate``: the references a run computes (torch-free), and ``--estimate``: a probe whose rough
seconds are within a factor of 3 of a real run of suites/quick.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradbench.cli import main
from gradbench.run.cost import duration, fit_line, probe, reference_keys
from gradbench.run.plan import load_suite

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "suites" / "quick.yaml"
ENCODER = """name: enc-probe
seed: 0
target_seed: 0
replicates: 300
targets:
  - model: ppca_encoder
    params: {data_dim: 3, latent_dim: 2, n_data: 2, reference_replicates: 4000}
    proposal: {mean_noise: 1.0, log_std_shift: 0.5}
estimators:
  - name: dreg
    params: {K: [4, 8]}
protocols: [bias, variance]
"""


def test_plain_validate_counts_references(capsys: pytest.CaptureFixture[str]) -> None:
    """quick.yaml: five cells, one reference (one target; every estimator's objective is ∇θ log p(x)); control: a
    suite whose only protocol needs no reference computes none."""
    main(["validate", str(QUICK)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("1 target(s), 5 cell(s), 1000 replicates each")
    assert out[1].startswith("references: 1 to compute, one per target × objective (for bias, variance)")
    _, cells = load_suite(QUICK)
    assert len(reference_keys(cells)) == 1
    no_ref = [c for c in cells if c.estimator == "iwae"]
    import dataclasses

    assert reference_keys([dataclasses.replace(c, protocols=("wallclock",)) for c in no_ref]) == []


def test_estimate_output_names_estimated_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two IWAE_K references of the amortised PPCA are estimated (the expensive kind) and say their replicates."""
    suite = tmp_path / "enc.yaml"
    suite.write_text(ENCODER)
    main(["validate", str(suite), "--estimate"])
    out = capsys.readouterr().out
    assert "references: 2 to compute" in out
    assert re.search(r"^estimate \(rough: each cell probed at 128 and 512 replicates", out, re.MULTILINE)
    for k in (4, 8):
        assert re.search(rf"^  reference \w+ phi_iwae{k}: estimated \(4000 replicates\), ~[\d.e-]+ (s|min|h)$", out,
                         re.MULTILINE), out
    assert re.search(r"^  references: 2, 2 estimated, ~", out, re.MULTILINE)
    assert re.search(r"^  cells: 2, ~[\d.e-]+ s \(slowest: dreg \(K=\d\), ~", out, re.MULTILINE)
    assert re.search(r"^  total: ~[\d.e-]+ (s|min|h); the probe took ", out, re.MULTILINE)


def test_estimate_is_within_a_factor_of_3_of_the_run(tmp_path: Path) -> None:
    """The probe's total against the seconds ``gradbench run`` reports for the same suite in a fresh process (cells
    and references; not the interpreter's start-up). A timing, not a Monte Carlo quantity: the factor 3 is the
    promised precision of a rough estimate on a shared machine."""
    _, cells = load_suite(QUICK)
    est = probe(cells)
    assert len(est.cells) == 5 and not est.skipped
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gradbench", "run", str(QUICK), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    actual = float(re.search(r"\d+ failed, ([\d.]+) s;", res.stdout).group(1))
    assert actual <= wall
    ratio = est.total / actual
    print(f"estimate {est.total:.2f} s, run {actual:.2f} s (process {wall:.2f} s), ratio {ratio:.2f}")
    assert 1 / 3 <= ratio <= 3, (est.total, actual)


def test_fit_line_and_duration() -> None:
    assert fit_line([(100, 1.0), (400, 2.5)]) == pytest.approx((0.5, 0.005))
    assert fit_line([(100, 2.0), (400, 1.0)]) == pytest.approx((0.0, 1.0 / 400))  # noise: all per replicate
    assert fit_line([(64, 0.64)]) == pytest.approx((0.0, 0.01))
    assert [duration(s) for s in (0.0432, 4.24, 42.0, 300.0, 9000.0)] == ["0.043 s", "4.2 s", "42 s", "5.0 min",
                                                                         "2.5 h"]
