"""Seconds per estimate of each discrete estimator relative to one batched decoder evaluation of the same size
(target.log_joint on z [R, N, k]), R = 1000, on the discrete-sbn targets and the discrete-categorical target
(binary-only estimators skipped there). Median of 3 timed calls after one untimed
call (warm-up estimators: their warm-up included, as in the suite). Timings depend on the (shared) machine.
Usage: OMP_NUM_THREADS=1 python reports/discrete-estimators/speed.py"""

import time

import torch

from gradbench.data import DataSpec, load
from gradbench.estimators import discrete, score
from gradbench.estimators.sum_and_sample import sum_and_sample
from gradbench.models import categorical
from gradbench.models.params import BernoulliProposal, CategoricalProposal, CategoricalVAEParams, SBNParams
from gradbench.models.sbn import build
from gradbench.seeding import make_generator

R = 1000
ESTIMATORS = [("reinforce(none)", lambda t, g: score.reinforce(t, R, g, kl="mc")),
              ("reinforce(ma,50)", lambda t, g: score.reinforce(t, R, g, baseline="moving_average", warmup=50, kl="mc")),
              ("rloo(S=2)", lambda t, g: discrete.rloo(t, R, g, S=2)), ("nvil(50)", lambda t, g: discrete.nvil(t, R, g, warmup=50)),
              ("arm", lambda t, g: discrete.arm(t, R, g)), ("disarm", lambda t, g: discrete.disarm(t, R, g)),
              ("rebar(fixed)", lambda t, g: discrete.rebar(t, R, g)), ("rebar(30)", lambda t, g: discrete.rebar(t, R, g, warmup=30, lr=0.05)),
              ("relax(30)", lambda t, g: discrete.relax(t, R, g, warmup=30, lr=0.05)),
              ("gumbel_softmax", lambda t, g: discrete.gumbel_softmax(t, R, g)), ("straight_through", lambda t, g: discrete.straight_through(t, R, g)),
              ("wake_sleep", lambda t, g: discrete.wake_sleep(t, R, g)), ("rws(K=8)", lambda t, g: discrete.reweighted_wake_sleep(t, R, g, K=8)),
              ("vimco(K=2)", lambda t, g: score.vimco(t, R, g, K=2)), ("sum_and_sample(m=3)", lambda t, g: sum_and_sample(t, R, g, m=3))]


def median_seconds(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
targets = [(f"sbn {p.layers} {p.conditionals}", build(p, BernoulliProposal(logit_noise=0.5), 0, data=x))
           for p in [SBNParams(layers=[10], conditionals="linear"), SBNParams(layers=[6, 4], conditionals="mlp", hidden=16)]]
targets.append(("categorical_vae 2x10 linear", categorical.build(CategoricalVAEParams(), CategoricalProposal(logit_noise=0.5), 0, data=x)))
for label, t in targets:
    z, _ = t.sample_proposal((R,), make_generator(1))
    with torch.no_grad():
        decoder = median_seconds(lambda t=t, z=z: t.log_joint(z), 7)
    print(f"{label}: one batched log_joint [R={R}, N=10, {z.shape[-1]}] = {decoder * 1e3:.2f} ms")
    for name, fn in ESTIMATORS:
        try:
            fn(t, make_generator(0))
        except TypeError:  # binary-only on the categorical target
            continue
        s = median_seconds(lambda fn=fn, t=t: fn(t, make_generator(0)))
        print(f"  {name:18s} {s * 1e3:9.1f} ms  = {s / decoder:8.1f} × decoder   ({s / R * 1e6:.1f} µs per replicate)")
