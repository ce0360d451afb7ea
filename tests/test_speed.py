"""``gradbench speed`` and the Pyro peer: same gradient for the same noise, the command's outputs.

Speeds are never asserted (they belong to the machine); the ratios are only checked to exist and
be finite and positive.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gradbench.cli import cli
from gradbench.estimators.importance import iwae
from gradbench.peers import pyro_ppca
from gradbench.run.plan import SuiteError, load_suite
from gradbench.seeding import make_generator
from gradbench.speed import SpeedSettings, floor_sample_log_joint, plan, plans, run_speed, time_interleaved
from tests.conftest import make_ppca

ROOT = Path(__file__).resolve().parents[1]
needs_pyro = pytest.mark.needs("pyro")


# -- Pyro peer -------------------------------------------------------------------------------------
@needs_pyro
@pytest.mark.parametrize("d,k,K,shift,scale", [(4, 2, 8, 0.0, 1.0), (10, 3, 64, 0.5, 1.5), (20, 5, 16, 1.0, 2.0)])
def test_pyro_renyi_alpha0_equals_iwae_for_the_same_noise(d, k, K, shift, scale):
    t = make_ppca(d=d, k=k, n=1, mean_shift=shift, cov_scale=scale, seed=4)
    peer = pyro_ppca.PyroPPCA(t, K)
    for seed in (0, 1, 2):
        theirs = peer.grad(seed=seed)
        ours = iwae(t, 1, make_generator(seed), K=K).grads[0]
        torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)


@needs_pyro
def test_pyro_gradient_is_the_weighted_complete_data_gradient():
    """Independently of the RNG: Pyro's gradient is Σ_k w̃_k ∇θ log p(x, z_k) at the z it drew."""
    from pyro import poutine

    t = make_ppca(d=5, k=2, n=1, mean_shift=0.5, cov_scale=1.5, seed=2)
    K = 6
    peer = pyro_ppca.PyroPPCA(t, K)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        guide_trace = poutine.trace(peer.elbo._vectorized_num_particles(peer.guide)).get_trace(peer.x)
    z = guide_trace.nodes["z"]["value"].detach().reshape(1, K, 1, 2)
    w = torch.softmax(t.log_joint(z) - t.log_proposal(z), dim=1)
    expected = (w.unsqueeze(-1) * t.grad_log_joint(z)).sum(dim=(1, 2))[0]
    torch.testing.assert_close(peer.grad(seed=9), expected, rtol=1e-10, atol=1e-10)


@needs_pyro
def test_pyro_peer_leaves_global_state_alone():
    import pyro

    t = make_ppca(d=4, k=2, n=1)
    peer = pyro_ppca.PyroPPCA(t, 4)
    before = torch.random.get_rng_state()
    peer.grad(seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert list(pyro.get_param_store().keys()) == []
    a, b = peer.grad(seed=5), peer.grad(seed=5)  # gradients do not accumulate across calls
    assert torch.equal(a, b)


@needs_pyro
def test_pyro_peer_refuses_several_data_points():
    with pytest.raises(ValueError, match="n_data = 1"):
        pyro_ppca.PyroPPCA(make_ppca(n=3), 4)


# -- speed machinery -------------------------------------------------------------------------------
def test_floor_is_sampling_plus_one_log_joint():
    t = make_ppca(d=4, k=2, n=3)
    lj = floor_sample_log_joint(t, 5, 7, make_generator(0))
    z, _ = t.sample_proposal((5, 7), make_generator(0))
    assert lj.shape == (5, 7, 3)
    torch.testing.assert_close(lj, t.log_joint(z))


def test_time_interleaved_calls_each_function_in_turn():
    order: list[str] = []
    t = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                         device="cpu", warmup=1, repeats=3)
    assert order == ["a", "b"] * 4
    assert t["a"].shape == (3,) and (t["b"] >= 0).all()


SPEED_SUITES = sorted((ROOT / "suites").glob("speed*.yaml"))


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.needs("fashion_mnist")) if "fashion_mnist" in p.read_text() else p
    for p in SPEED_SUITES], ids=[p.stem for p in SPEED_SUITES])
def test_shipped_speed_suites_are_run_suites_with_a_speed_plan(path):
    """Each shipped speed suite is a run suite with a speed plan (a suite on Fashion-MNIST is skipped, with the
    reason, where its files are absent)."""
    assert len(SPEED_SUITES) >= 3
    suite, cells = load_suite(path)
    for p in plans(suite, cells, path):
        if p.target.model == "ppca":
            assert p.target.params["n_data"] == 1  # the Pyro comparison needs one data point
        assert "wallclock" in suite.protocols and any(name.startswith("coupled_") for name, _ in p.estimators)


def test_the_vae_speed_suite_times_the_neural_targets():
    vae = plans(*load_suite(ROOT / "suites" / "speed-vae.yaml"))  # the neural targets: vae at latent 2 and 20, and sbn
    assert sorted((p.target.model, p.target.params.get("latent_dim")) for p in vae) == [
        ("sbn", None), ("vae", 2), ("vae", 20)]


SUITE = """\
name: speed-test
seed: 1
replicates: 20
targets:
  - model: ppca
    params: {{data_dim: 3, latent_dim: 2, n_data: {n}}}
estimators:
{estimators}
protocols: [variance]
"""


def test_plan_needs_one_target_and_an_iwae(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text(SUITE.format(n="[1, 2]", estimators="  - {name: iwae, params: {K: 4}}"))
    with pytest.raises(SuiteError, match="exactly one target"):
        plan(*load_suite(two), two)
    no_iwae = tmp_path / "none.yaml"
    no_iwae.write_text(SUITE.format(n=1, estimators="  - {name: elbo, params: {S: 4}}"))
    with pytest.raises(SuiteError, match="needs an iwae estimator"):
        plan(*load_suite(no_iwae), no_iwae)


def test_run_speed_report_without_peers_or_loop(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(n=2, estimators="  - {name: iwae, params: {K: 4}}\n  - {name: elbo, params: {S: 4}}\n"
                                                 "  - {name: exact}"))
    report = run_speed(plan(*load_suite(path), path), SpeedSettings(warmup=0, repeats=2, pyro=True, loop=()))
    # n_data = 2: no Pyro comparison; PPCA has a pure model, so floor (a) is forward + backward
    labels = [r["label"] for r in report.ratios]
    assert labels[0].startswith("iwae ÷ forward floor") and labels[1].startswith("iwae ÷ floor (a)")
    assert report.ratios[0]["goal"] == 3.0 and report.ratios[1]["goal"] == 2.0
    assert all(r["value"] > 0 for r in report.ratios)
    assert report.floors["floor_a"]["backward"] is True
    assert any("Pyro comparison skipped" in n for n in report.notes)
    iw, elbo, exact = report.estimators
    assert iw["params"] == {"K": 4} and elbo["evals_per_estimate"] == 8
    assert elbo["frac_floor_a"] > 0 and elbo["frac_floor_b"] > 0
    assert exact["evals_per_estimate"] == 0 and math.isnan(exact["frac_floor_a"])
    md = report.markdown()
    assert "| comparison | ratio | goal | met |" in md and "| exact |" in md


def test_speed_command_on_the_quick_suite(tmp_path):
    out = tmp_path / "speed"
    result = CliRunner().invoke(cli, ["speed", str(ROOT / "suites" / "speed_quick.yaml"), "--out", str(out),
                                      "--threads", "1", "--repeats", "2", "--loop-repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "| comparison | ratio | goal | met |" in result.output
    report = json.loads((out / "speed.json").read_text())
    labels = " ".join(r["label"] for r in report["ratios"])
    assert "iwae ÷ floor (a)" in labels and "one pair at a time" in labels and "coupled_isir evals/s" in labels
    if pyro_ppca.available():
        assert "Pyro RenyiELBO" in labels
    for r in report["ratios"]:
        assert math.isfinite(r["value"]) and r["value"] > 0
    assert report["info"]["threads"] == 1 and report["dtype"] == "float64"
    assert (out / "speed.md").read_text().startswith("Speed suite `speed_quick`")


def test_speed_command_dtype_override(tmp_path):
    out = tmp_path / "speed32"
    result = CliRunner().invoke(cli, ["speed", str(ROOT / "suites" / "speed_quick.yaml"), "--out", str(out), "--dtype",
                                      "float32", "--threads", "1", "--repeats", "1", "--warmup", "0", "--no-loop"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "speed.json").read_text())["dtype"] == "float32"
    bad = CliRunner().invoke(cli, ["speed", str(ROOT / "suites" / "speed_quick.yaml"), "--dtype", "float16"])
    assert bad.exit_code == 2 and "float16" in bad.output


@needs_pyro
def test_speed_library_raises_a_plain_error_and_the_command_prints_one_located_line(tmp_path, monkeypatch, capsys):
    """A Pyro peer that disagrees with iwae (simulated: the agreement check reports a relative difference of 1) is a
    :class:`SpeedError` from the library (no click), and ``gradbench speed`` prints it as one line naming the suite,
    exit code 2, nothing timed and nothing written."""
    from gradbench.cli import main
    from gradbench.speed import SpeedError, peers

    monkeypatch.setattr(peers, "check_pyro_agrees", lambda *a, **k: 1.0)
    suite = ROOT / "suites" / "speed_quick.yaml"
    with pytest.raises(SpeedError, match="disagree"):
        run_speed(plan(*load_suite(suite), suite), SpeedSettings(warmup=0, repeats=1, loop=()))
    out = tmp_path / "speed"
    with pytest.raises(SystemExit) as exit_info:
        main(["speed", str(suite), "--out", str(out), "--repeats", "1", "--warmup", "0", "--no-loop"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("…")]
    assert len(err) == 1 and err[0].startswith(f"gradbench: error: {suite}: Pyro and gradbench iwae disagree")
    assert not out.exists()
