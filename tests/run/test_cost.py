"""``gradbench validate``: the references a run computes (torch-free), and ``--estimate``: a probe that times
small replicate counts and extrapolates (its precision against a real run is an asv track figure, not a test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gradbench.cli import main
from gradbench.run.cost import Estimate, duration, estimate_lines, fit_line, probe, reference_keys
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


def test_probe_extrapolates_each_cell_to_its_replicates() -> None:
    """The probe's accounting, not its precision (a timing, which a loaded machine can move by any factor: the
    factor by which the estimate misses a run is tracked in asv, ``benchmarks/bench_cost.py``): quick.yaml's five cells are each
    probed and extrapolated as a + b·R to the cell's own replicates, its one reference is exact and timed as it is,
    and the total is the sum of its parts. Control: a cell asked for fewer replicates than the probe's sizes is
    probed at its own size only, so its line passes through the origin scaled to it."""
    _, cells = load_suite(QUICK)
    est = probe(cells)
    assert len(est.cells) == 5 and not est.skipped
    for c in est.cells:
        assert c.fixed >= 0 and c.per_replicate > 0
        assert c.seconds == pytest.approx(c.fixed + c.per_replicate * c.cell.replicates, rel=1e-12)
    assert [r.kind for r in est.references] == ["exact"] and est.references[0].replicates is None
    parts = est.targets_seconds + est.startup_seconds + sum(r.seconds for r in est.references)
    assert est.total == pytest.approx(parts + sum(c.seconds for c in est.cells), rel=1e-12)
    assert est.probe_seconds >= est.targets_seconds + sum(r.seconds for r in est.references)
    import dataclasses

    tiny = probe([dataclasses.replace(cells[0], replicates=50)])
    (c,) = tiny.cells
    assert c.fixed == 0.0 and c.seconds == pytest.approx(c.per_replicate * 50, rel=1e-12)


def test_fit_line_and_duration() -> None:
    assert fit_line([(100, 1.0), (400, 2.5)]) == pytest.approx((0.5, 0.005))
    assert fit_line([(100, 2.0), (400, 1.0)]) == pytest.approx((0.0, 1.0 / 400))  # noise: all per replicate
    assert fit_line([(64, 0.64)]) == pytest.approx((0.0, 0.01))
    assert [duration(s) for s in (0.0432, 4.24, 42.0, 300.0, 9000.0)] == ["0.043 s", "4.2 s", "42 s", "5.0 min",
                                                                         "2.5 h"]


def test_cells_the_probe_skips_are_counted_once_and_the_total_says_it_leaves_them_out() -> None:
    """A train suite's cells are not probed: the reason is printed once with the number of cells it covers, and the
    total says it covers the probed cells only (it is not the run's time). Control: without skipped cells the total
    line carries no such qualifier."""
    skip = "train: train cells are not probed (their cost does not scale with replicates)"
    est = Estimate(0.0, 0.0, [], [], [skip, skip, skip, "other: fails (boom)"], 1.0)
    lines = estimate_lines(est)
    assert [ln for ln in lines if "not probed:" in ln] == [f"  not probed: {skip} — 3 cells",
                                                          "  not probed: other: fails (boom)"]
    assert lines[-1].startswith("  total: ~0 s for the probed cells (4 not probed);")
    assert estimate_lines(Estimate(0.0, 0.0, [], [], [], 1.0))[-1].startswith("  total: ~0 s; the probe took")
