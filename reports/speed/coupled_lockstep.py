"""Lockstep efficiency of coupled i-SIR on a latent-20 VAE, before/after reusing the packing, and where the time goes.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python reports/speed/coupled_lockstep.py [ROUNDS]

Target: ``vae`` latent_dim 20, decoder tanh MLP [200, 200], Bernoulli likelihood, binarised digits (8 × 8), proposal
gaussian_mean_field (mean_shift 0.5, log_std_shift 0.7, as suites/speed-vae.yaml), float64, one thread. Two call
shapes with R·N = 32 chain pairs, as in training (batch 32): R = 32 replicates of N = 1 data point, and R = 1 of
N = 32. coupled_isir K = 8, k = m = 0, lag 1 (the estimator's defaults); iwae K = 8 on the same R and N.

Interleaved in one process: each round calls, for each shape, the driver with ``reuse_packing=False`` (before), with
``reuse_packing=True`` (after) on the same generator seed (shared noise: same τ, and the script checks the two
estimates are bitwise equal), and iwae. Per shape it prints totals over the rounds (τ is heavy-tailed: a median call
hides the tail): seconds per call, needed and evaluated log-joints, lockstep efficiency (needed ÷ evaluated), the
count-based seconds lost (wall × (1 − efficiency)), the measured seconds lost (wall − β × needed, β the seconds per
evaluation of the run's widest steps: ``coupling.full_batch_rate``), coupled ÷ iwae seconds per call, and that ratio
split into
    algorithm   = needed ÷ iwae's evaluations (meeting times: 2K + (K − 1) τ per pair vs K),
    lockstep    = evaluated ÷ needed (1 / efficiency),
    throughput  = (seconds per evaluated log-joint, coupled) ÷ (seconds per log-joint, iwae),
whose product is the time ratio. With OLD_COUPLED=<a copy of another commit's gradbench/estimators/coupled.py>
(e.g. ``git show 25a4012:gradbench/estimators/coupled.py > /tmp/old_coupled.py``) it also times that commit's
``run_coupled`` in the same rounds and checks its estimates are bitwise those of "after". Then one traced run per shape and seed (after) splits the coupled loop's time into
steps where at least a quarter of the first coupled step's pairs were still evaluated and the narrow tail steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from gradbench import registry
from gradbench.estimators import coupled as C
from gradbench.estimators import coupling as L
from gradbench.run.plan import load_suite
from gradbench.seeding import make_generator

K = 8
SUITE = """name: vae20-lockstep
seed: 0
target_seed: 0
replicates: 32
device: cpu
dtype: float64
targets:
{targets}estimators:
  - {{name: iwae, params: {{K: 8}}}}
protocols: [variance]
"""
TARGET = """  - model: vae
    params: {{latent_dim: 20, hidden: [200, 200], activation: tanh, likelihood: bernoulli}}
    data: {{name: digits, n: {n}, binarize: dynamic, seed: 0}}
    proposal: {{family: gaussian_mean_field, mean_shift: 0.5, log_std_shift: 0.7}}
"""


def targets() -> dict[int, object]:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "coupled_lockstep.yaml"
    path.write_text(SUITE.format(targets="".join(TARGET.format(n=n) for n in (1, 32))))
    suite, cells = load_suite(path)
    out = {}
    for c in cells:
        t = c.target.build(suite.dtype, suite.device)
        out[t.n_data] = t
    return out


def coupled(t, R: int, seed: int, reuse: bool, coupled_step_hook=None) -> tuple[L.LaggedRun, float]:
    kernel = C.lagged_kernel(t, C._kind("isir"), R, K=K, rao_blackwell=True, reuse_packing=reuse)
    if coupled_step_hook is not None:
        kernel = dataclasses.replace(kernel, coupled_step=coupled_step_hook(kernel.coupled_step))
    run = L.run_lagged(kernel, R, make_generator(seed), k=0, m=0, lag=1, max_iter=10_000)
    needed = float((2 * K + (K - 1) * run.tau.double()).sum())  # the estimator's cost at m = 0
    return run, needed


def old_driver():
    """The coupled module of another commit (env OLD_COUPLED: a copy of its gradbench/estimators/coupled.py), or None."""
    path = os.environ.get("OLD_COUPLED")
    if not path:
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("old_coupled", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(rounds: int) -> None:
    torch.set_num_threads(1)
    ts = targets()
    iwae = registry.ESTIMATORS["iwae"].fn
    shapes = [(32, 1), (1, 32)]
    for R, N in shapes:  # warm-up (lazy proposal construction, allocator)
        coupled(ts[N], R, 10_000, True)
        iwae(ts[N], R, make_generator(0), K=K)
    tot = {s: {"before": 0.0, "after": 0.0, "iwae": 0.0, "needed": 0.0, "evaluated": 0.0, "bitwise": True, "old": 0.0,
               "old_bitwise": True} for s in shapes}
    old = old_driver()
    for seed in range(rounds):
        for R, N in shapes:
            acc = tot[(R, N)]
            runs = {}
            for name in (("before", "after") if seed % 2 == 0 else ("after", "before")):  # alternate the order
                t0 = time.perf_counter()
                runs[name] = coupled(ts[N], R, seed, name == "after")
                acc[name] += time.perf_counter() - t0
            if old is not None:  # the former driver (its own copy of the loop), same seed
                t0 = time.perf_counter()
                o = old.run_coupled(ts[N], R, make_generator(seed), old._kind("isir"), K=K, k=0, m=0, lag=1,
                                    rao_blackwell=True, max_iter=10_000)
                acc["old"] += time.perf_counter() - t0
                after = runs["after"][0]
                acc["old_bitwise"] &= torch.equal(o.grads.view(torch.int64), after.grads.view(torch.int64))
            t0 = time.perf_counter()
            iwae(ts[N], R, make_generator(seed), K=K)
            acc["iwae"] += time.perf_counter() - t0
            (a, need), (b, _) = runs["before"], runs["after"]
            acc["bitwise"] &= torch.equal(a.grads.view(torch.int64), b.grads.view(torch.int64)) and torch.equal(a.tau, b.tau)
            acc["needed"] += need
            acc["evaluated"] += float(b.evaluated.sum())
            for name, (r, _) in runs.items():
                acc[f"lost_{name}"] = acc.get(f"lost_{name}", 0.0) + r.seconds - L.full_batch_rate(r) * need
                acc[f"loop_{name}"] = acc.get(f"loop_{name}", 0.0) + r.seconds
    print(f"vae latent 20, hidden [200, 200], digits; K = {K}; {rounds} rounds; load {os.getloadavg()[0]:.2f}")
    for (R, N), acc in tot.items():
        eff = acc["needed"] / acc["evaluated"]
        iw_evals = rounds * R * N * K
        ratio = {v: acc[v] / acc["iwae"] for v in ("before", "after")}
        algo, lock = acc["needed"] / iw_evals, 1 / eff
        print(f"R={R} N={N}: s/call before {acc['before'] / rounds:.4f} after {acc['after'] / rounds:.4f} "
              f"(after/before {acc['after'] / acc['before']:.3f}) iwae {acc['iwae'] / rounds:.4f}; bitwise {acc['bitwise']}")
        if old is not None:
            print(f"   former driver (OLD_COUPLED) s/call {acc['old'] / rounds:.4f} (after/former "
                  f"{acc['after'] / acc['old']:.3f}); bitwise equal to after: {acc['old_bitwise']}")
        print(f"   needed/call {acc['needed'] / rounds:.0f} evaluated/call {acc['evaluated'] / rounds:.0f} "
              f"efficiency {eff:.4f}; seconds lost/call (wall x (1 - eff)) {acc['after'] / rounds * (1 - eff):.5f}")
        for v in ("before", "after"):
            print(f"   coupled/iwae ({v}) {ratio[v]:.1f} = algorithm {algo:.2f} x lockstep {lock:.3f} x throughput "
                  f"{ratio[v] / (algo * lock):.2f}; measured seconds lost/call (wall - beta x needed) "
                  f"{acc[f'lost_{v}'] / rounds:.4f} of {acc[f'loop_{v}'] / rounds:.4f}")
    for R, N in shapes:  # traced: where the coupled loop's time goes
        wide = narrow = 0.0
        n_wide = n_narrow = 0
        for seed in range(rounds):
            trace: list[tuple[float, float]] = []

            def hook(step, trace=trace):
                def timed(X, Y, gen, active):
                    t0 = time.perf_counter()
                    out = step(X, Y, gen, active)
                    trace.append((time.perf_counter() - t0, float(out[2].evaluated.sum())))
                    return out
                return timed

            run, _ = coupled(ts[N], R, seed, True, hook)
            st = np.array(trace)
            is_wide = st[:, 1] >= st[0, 1] / 4
            # the step's gradient and meeting test happen after coupled_step: share the rest of the wall time by steps
            rest = (run.seconds - st[:, 0].sum()) / len(st)
            wide += st[is_wide, 0].sum() + rest * is_wide.sum()
            narrow += st[~is_wide, 0].sum() + rest * (~is_wide).sum()
            n_wide += int(is_wide.sum())
            n_narrow += int((~is_wide).sum())
        print(f"R={R} N={N} traced: {n_wide / rounds:.1f} wide steps/call ({wide / rounds:.4f} s), {n_narrow / rounds:.1f} "
              f"narrow steps (< 1/4 of the first step's evaluations)/call ({narrow / rounds:.4f} s, "
              f"{narrow / (wide + narrow):.0%} of the coupled time)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Lockstep efficiency and coupled ÷ iwae time on the latent-20 VAE.")
    parser.add_argument("rounds", type=int, nargs="?", default=8, help="interleaved rounds [default: 8]")
    main(parser.parse_args().rounds)
