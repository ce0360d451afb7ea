"""Distance to the hardware limit (``gradbench speed --flops``): the FLOP count of an MLP gradient against a hand
count and torch's own flop counter, the interval for the median of interleaved rounds, and the FLOP-fraction rows of
a tiny speed run. Speeds are never asserted (they belong to the machine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from gradbench import registry
from gradbench.cli import cli
from gradbench.run.plan import load_suite
from gradbench.seeding import make_generator
from gradbench.speed import SpeedError, SpeedSettings, median_ci, plan, run_speed
from gradbench.speed.flops import forward_flops, gradient_flops, matmul_flops, mlp_widths

ROOT = Path(__file__).resolve().parents[1]


def _vae(latent: int, hidden: list[int], data_dim: int, n_data: int):
    entry = registry.MODELS["vae"]
    return entry.build(entry.params(latent_dim=latent, data_dim=data_dim, n_data=n_data, hidden=hidden),
                       entry.proposal(mean_shift=0.5), 3, torch.float64, "cpu", None)


def test_flop_count_matches_a_hand_count():
    # widths 2 → 3 → 4. Forward: 2·2·3 + 2·3·4 = 12 + 24 = 36. Backward to θ: ∇W0 (12), ∇W1 (24), δ0 = δ1 W1 (24),
    # no δ to z: 60. Gradient: 96.
    assert forward_flops((2, 3, 4)) == 36
    assert gradient_flops((2, 3, 4)) == 36 + 60
    # the latent-20 Fashion-MNIST VAE: Σ a = 20·200 + 200·200 + 200·784 = 200 800, a_0 = 4 000
    assert forward_flops((20, 200, 200, 784)) == 401_600
    assert gradient_flops((20, 200, 200, 784)) == 2 * (3 * 200_800 - 4_000) == 1_196_800
    assert matmul_flops(1024) == 2 * 1024**3


@pytest.mark.parametrize("latent,hidden,data_dim", [(2, [8], 6), (3, [5, 7], 4)])
def test_flop_count_equals_torch_flop_counter_for_autograd_forward_and_backward(latent, hidden, data_dim):
    """FlopCounterMode counts the matrix products torch runs for one batched log-joint and its backward to θ."""
    t = _vae(latent, hidden, data_dim, n_data=3)
    widths = mlp_widths(t)
    assert widths == (latent, *hidden, data_dim)
    R, K = 2, 5
    z, _ = t.sample_proposal((R, K), make_generator(0))
    theta = {k: v.detach().requires_grad_() for k, v in t.theta.items()}
    with FlopCounterMode(display=False) as fwd:
        total = t.model.log_joint(theta, t.x, z).sum()
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(total, list(theta.values()))
    E = R * K * t.n_data
    assert fwd.get_total_flops() == forward_flops(widths) * E
    assert fwd.get_total_flops() + bwd.get_total_flops() == gradient_flops(widths) * E
    # negative control: the count of another architecture (one hidden unit more) does not match
    other = (widths[0], widths[1] + 1, *widths[2:])
    assert fwd.get_total_flops() + bwd.get_total_flops() != gradient_flops(other) * E


def test_flop_count_is_only_for_mlp_decoders():
    from tests.conftest import make_ppca

    assert mlp_widths(make_ppca(d=4, k=2, n=1)) is None


def test_median_interval_order_statistics_and_coverage():
    lo, hi, level = median_ci(np.arange(1.0, 16.0))  # n = 15: x_(4), x_(12), coverage 1 − 2 P(Bin(15, ½) ≤ 3)
    assert (lo, hi) == (4.0, 12.0) and level == pytest.approx(1 - 2 * 576 / 2**15)
    # coverage of the true median (0 for a standard normal) over M simulated sets of 15 rounds, within 3 Monte Carlo
    # standard errors of the exact coverage; fixed seed
    rng = np.random.default_rng(0)
    M = 2000
    hits = np.array([lo <= 0.0 <= hi for lo, hi, _ in (median_ci(x) for x in rng.standard_normal((M, 15)))])
    se = math.sqrt(level * (1 - level) / M)
    assert abs(hits.mean() - level) <= 3 * se
    # negative control: the central half (the IQR) is no interval for the median: it covers it far less often
    iqr_hits = np.array([np.percentile(x, 25) <= 0.0 <= np.percentile(x, 75) for x in rng.standard_normal((M, 15))])
    assert iqr_hits.mean() < level - 3 * se


SUITE = """\
name: flops-test
seed: 1
replicates: 3
targets:
  - model: {model}
    params: {params}
estimators:
  - {{name: iwae, params: {{K: 4}}}}
  - {{name: coupled_isir, params: {{K: 4}}}}
protocols: [wallclock]
"""
VAE = "{latent_dim: 2, data_dim: 6, n_data: 3, hidden: [8]}"
SETTINGS = SpeedSettings(warmup=0, repeats=5, pyro=False, loop=(), flops=True, flops_matmul_n=64)


def test_flops_rows_in_a_tiny_speed_run(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(model="vae", params=VAE))
    report = run_speed(plan(*load_suite(path), path), SETTINGS)
    G = gradient_flops((2, 8, 6))
    ref = report.flops_reference
    assert ref["n"] == 64 and ref["gradient_flops_per_eval"] == G and ref["gflops"] > 0
    iw, co = report.flops
    assert (iw["name"], co["name"]) == ("iwae", "coupled_isir")
    assert iw["evals"].startswith("charged") and co["evals"].startswith("computed")
    assert iw["evals_per_call"] == 3 * 4 * 3 and iw["gflop"] == pytest.approx(G * 36 * 1e-9, rel=1e-12)
    for r in (iw, co):
        assert len(r["fraction_rounds"]) == 5 and all(f > 0 and math.isfinite(f) for f in r["fraction_rounds"])
        lo, hi = r["fraction_ci"]
        assert r["fraction_q25"] <= r["fraction"] <= r["fraction_q75"] and lo <= r["fraction"] <= hi
        assert r["fraction"] == pytest.approx(np.median(r["fraction_rounds"]))
        assert r["cpu_fraction_q25"] <= r["cpu_fraction"] <= r["cpu_fraction_q75"] and r["cpu_fraction"] > 0
    # torch's flop counter on one call: iwae runs exactly the counted matrix products, coupled_isir at least as many
    assert iw["executed_vs_counted"] == pytest.approx(1.0, rel=1e-12) and co["executed_vs_counted"] >= 1.0
    assert "per_eval_vs_iwae" in co and "per_eval_vs_iwae" not in iw and co["per_eval_vs_iwae"] > 0
    assert co["cpu_per_eval_vs_iwae"] > 0
    md = report.markdown()
    assert "FLOP fraction: achieved FLOP/s" in md and "| coupled_isir | 3 | computed" in md
    assert "flops" in report.to_json()


def test_flops_rows_only_when_asked_and_refused_without_an_mlp(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(model="vae", params=VAE))
    plain = run_speed(plan(*load_suite(path), path), SpeedSettings(warmup=0, repeats=1, pyro=False, loop=()))
    assert plain.flops == [] and "flops" not in plain.to_json() and "FLOP fraction" not in plain.markdown()
    ppca = tmp_path / "p.yaml"
    ppca.write_text(SUITE.format(model="ppca", params="{data_dim: 3, latent_dim: 2, n_data: 1}"))
    with pytest.raises(SpeedError, match="model 'ppca' has no FLOP count"):
        run_speed(plan(*load_suite(ppca), ppca), SETTINGS)


def test_speed_command_flops(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(model="vae", params=VAE))
    out = tmp_path / "speed"
    args = ["--threads", "1", "--repeats", "3", "--warmup", "0", "--no-peers", "--no-loop", "--flops", "--matmul-n", "32"]
    result = CliRunner().invoke(cli, ["speed", str(path), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    assert "| iwae | 3 | charged (GradSample.cost) |" in result.output
    data = json.loads((out / "speed.json").read_text())
    assert data["flops_reference"]["n"] == 32 and [r["name"] for r in data["flops"]] == ["iwae", "coupled_isir"]
    ppca = tmp_path / "p.yaml"
    ppca.write_text(SUITE.format(model="ppca", params="{data_dim: 3, latent_dim: 2, n_data: 1}"))
    bad = CliRunner().invoke(cli, ["speed", str(ppca), "--out", str(tmp_path / "bad"), *args])
    assert bad.exit_code == 2 and "has no FLOP count" in bad.output and "Traceback" not in bad.output


def test_time_interleaved_hands_each_timed_result_back():
    from gradbench.speed import time_interleaved

    calls = iter(range(100))
    seen: list[tuple[str, int]] = []
    time_interleaved({"a": lambda: next(calls), "b": lambda: -next(calls)}, device="cpu", warmup=1, repeats=2,
                     on_result=lambda name, value: seen.append((name, value)))
    assert seen == [("a", 2), ("b", -3), ("a", 4), ("b", -5)]  # the warm-up round's results (0, −1) are not handed back
    # the clock is the caller's: a fake clock that advances by one per reading gives one "second" per call
    ticks = iter(range(100))
    t = time_interleaved({"a": lambda: None}, device="cpu", warmup=0, repeats=3, clock=lambda: float(next(ticks)))
    assert t["a"].tolist() == [1.0, 1.0, 1.0]
