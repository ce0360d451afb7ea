"""asv benchmarks: ``asv check --python=same`` passes (skipped without asv), and the benchmark
classes run at their smallest sizes without asv."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from contextlib import nullcontext
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _asv_conf() -> dict:
    text = (ROOT / "asv.conf.json").read_text()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE))  # asv allows // comment lines


def test_asv_conf():
    conf = _asv_conf()
    assert conf["benchmark_dir"] == "benchmarks" and conf["launch_method"] == "spawn"
    assert conf["results_dir"].startswith(".asv") and conf["html_dir"].startswith(".asv")


@pytest.mark.skipif(shutil.which("asv") is None, reason="asv not installed (pip install asv)")
def test_asv_check_python_same():
    proc = subprocess.run(["asv", "check", "--python=same"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found" in proc.stdout + proc.stderr


def test_benchmarks_run_at_their_smallest_sizes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_memory, bench_time, bench_track

    for name in ("iwae", "coupled_isir"):
        b = bench_time.TimeEstimators()
        b.setup(name, 8, 5, 100)
        b.time_estimate(name, 8, 5, 100)
    f = bench_time.TimeFloors()
    f.setup(8, 5, 100)
    f.time_sample_log_joint(8, 5, 100)
    d = bench_time.TimeDevices()
    with pytest.raises(NotImplementedError) if not _cuda() else nullcontext():
        d.setup("iwae", "cuda", "float64")
    m = bench_memory.PeakMemLargest()
    assert callable(m.peakmem_estimate)
    monkeypatch.setattr(bench_track, "R", 50)
    cache = bench_track.TrackVariance().setup_cache()
    for name, fig in cache.items():
        assert fig["trace_cov"] > 0 and fig["evals_mean"] > 0, name
    meet = bench_track.TrackMeeting()
    assert meet.track_tau_mean(cache, "coupled_isir") >= 1
    with pytest.raises(NotImplementedError):
        meet.setup(cache, "iwae")  # no meeting times: asv's skip


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_neural_benchmarks_run_at_a_small_size(monkeypatch):
    """The vae/sbn benchmarks set up and run; the VAE variance figures are positive and finite."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_memory, bench_time, bench_track, common

    monkeypatch.setitem(common.NEURAL_TARGETS, "vae", ({"latent_dim": 2, "data_dim": 6, "n_data": 2, "hidden": [8]},
                                                       {"mean_shift": 0.5}))
    b = bench_time.TimeNeural()
    b.setup("vae", "iwae")
    b.time_estimate("vae", "iwae")
    with pytest.raises(NotImplementedError):
        b.setup("vae", "vimco")  # not defined there: asv's skip
    f = bench_time.TimeNeuralFloor()
    f.setup("vae")
    f.time_forward_backward("vae")
    m = bench_memory.PeakMemNeural()
    m.setup("vae", "coupled_isir")
    m.peakmem_estimate("vae", "coupled_isir")
    monkeypatch.setattr(bench_track, "NEURAL_R", 30)
    monkeypatch.setattr(bench_track, "VAE_SIZE", {"hidden": [8], "n_data": 2, "data_dim": 6})
    track = bench_track.TrackVAEVariance()
    cache = track.setup_cache()
    assert set(cache) == {"iwae", "isir", "coupled_isir", "dreg"}
    for name, fig in cache.items():
        assert 0 < track.track_trace_cov(cache, name) < float("inf") and fig["work_norm_var"] > 0, name
    assert cache["coupled_isir"]["tau_mean"] >= 1
    ratio = bench_track.TrackVAELockstep().track_lockstep_over_evals(cache, "coupled_isir")
    assert 1 - 1e-9 <= ratio < 1.5  # compacted per (replicate, point): evaluated ≈ charged


def test_family_benchmarks_set_up_and_run(monkeypatch):
    """Every TimeFamilies case (discrete, semi-implicit, energy-based estimators) builds its target through the
    registry and returns R finite-or-censored gradient rows of the target's size; an unknown estimator is asv's skip."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_time, common

    b = bench_time.TimeFamilies()
    for case in common.FAMILY_CASES:
        b.setup(case)
        b.time_estimate(case)
        assert b.call().grads.shape[0] == 200, case
    monkeypatch.setitem(common.FAMILY_CASES, "rbm/none", ("rbm", {}, {}, "no_such_estimator", {}))
    with pytest.raises(NotImplementedError):
        b.setup("rbm/none")


def test_cost_estimate_benchmark_runs(monkeypatch):
    """TrackCostEstimate runs `validate --estimate` and `run` on quick.yaml in fresh processes and parses both: its
    figure is a finite miss factor ≥ 1 (its size is a timing: asv tracks it, no test bounds it)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_cost

    b = bench_cost.TrackCostEstimate()
    b.setup()
    factor = b.track_estimate_miss_factor()
    assert 1.0 <= factor < float("inf")
