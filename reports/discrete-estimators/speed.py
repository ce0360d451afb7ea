"""Seconds per estimate of each discrete estimator relative to one batched decoder evaluation of the same size
(target.log_joint on z [R, N, k]), R = 1000, on the discrete-sbn targets and the discrete-categorical target
(binary-only estimators skipped there). Median of 3 timed calls after one untimed
call (warm-up estimators: their warm-up included, as in the suite). Timings depend on the (shared) machine.
Usage: OMP_NUM_THREADS=1 python reports/discrete-estimators/speed.py [R]"""

import argparse
import time
from typing import Any

import torch

from gradbench import registry
from gradbench.data import DataSpec, load
from gradbench.seeding import make_generator


def build(model: str, data: Any, **params: Any) -> Any:
    """A target of ``model`` on ``data`` through the registry (as a suite builds it): proposal logit_noise 0.5, seed 0."""
    entry = registry.MODELS[model]
    return entry.build(entry.params(**params), entry.proposal(logit_noise=0.5), 0, torch.float64, "cpu", data)


def est(name: str) -> Any:
    return registry.ESTIMATORS[name].fn


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("R", type=int, nargs="?", default=1000, help="replicates per call")
R = parser.parse_args().R
ESTIMATORS = [("reinforce(none)", "reinforce", {"kl": "mc"}),
              ("reinforce(ma,50)", "reinforce", {"baseline": "moving_average", "warmup": 50, "kl": "mc"}),
              ("rloo(S=2)", "rloo", {"S": 2}), ("nvil(50)", "nvil", {"warmup": 50}), ("arm", "arm", {}),
              ("disarm", "disarm", {}), ("rebar(fixed)", "rebar", {}), ("rebar(30)", "rebar", {"warmup": 30, "lr": 0.05}),
              ("relax(30)", "relax", {"warmup": 30, "lr": 0.05}), ("gumbel_softmax", "gumbel_softmax", {}),
              ("straight_through", "straight_through", {}), ("wake_sleep", "wake_sleep", {}),
              ("rws(K=8)", "reweighted_wake_sleep", {"K": 8}), ("vimco(K=2)", "vimco", {"K": 2}),
              ("sum_and_sample(m=3)", "sum_and_sample", {"m": 3})]  # label, registry name, parameters


def median_seconds(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic", seed=0))
targets = [("sbn [10] linear", build("sbn", x, layers=[10], conditionals="linear")),
           ("sbn [6, 4] mlp", build("sbn", x, layers=[6, 4], conditionals="mlp", hidden=16)),
           ("categorical_vae 2x10 linear", build("categorical_vae", x))]
for label, t in targets:
    z, _ = t.sample_proposal((R,), make_generator(1))
    with torch.no_grad():
        decoder = median_seconds(lambda t=t, z=z: t.log_joint(z), 7)
    print(f"{label}: one batched log_joint [R={R}, N=10, {z.shape[-1]}] = {decoder * 1e3:.2f} ms")
    for name, key, kw in ESTIMATORS:
        fn = est(key)
        try:
            fn(t, R, make_generator(0), **kw)
        except TypeError:  # binary-only on the categorical target
            continue
        s = median_seconds(lambda fn=fn, t=t, kw=kw: fn(t, R, make_generator(0), **kw))
        print(f"  {name:18s} {s * 1e3:9.1f} ms  = {s / decoder:8.1f} × decoder   ({s / R * 1e6:.1f} µs per replicate)")
