"""Coupled driver before/after the per-(replicate, point) compaction and the fused i-SIR step (issue 18, wave 4).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 REP=3 python reports/speed/coupled_before_after.py 200 vae20 vae2 sbn

On the speed-vae targets, R replicates, K = 16, k = m = 0 (the suite's coupled estimators), one process,
interleaved (median of REP rounds after one warm-up): ``run_coupled(pack_points=False)`` (the old driver: a live
replicate keeps all N points in the batch; separate gradient forward pass), ``pack_points=True`` (this branch) and
``iwae`` at the matched number of evaluations (floor (b)). Prints the largest relative difference of the two
estimates (same generator seed), whether the meeting times are identical, charged and evaluated log-joints per
replicate, seconds, and evals/s ÷ iwae's for both.
"""
import os
import sys

import numpy as np
import torch

from gradbench import registry
from gradbench.estimators import coupled as C
from gradbench.seeding import make_generator
from gradbench.speed import plans, time_interleaved
from gradbench.suite import load_suite

torch.set_num_threads(1)
R = int(sys.argv[1]); which = sys.argv[2:]  # e.g. vae20 sbn vae2
suite, cells = load_suite("suites/speed-vae.yaml")
iwae = registry.ESTIMATORS["iwae"].fn
for p in plans(suite, cells):
    name = f"{p.target.model}{p.target.params.get('latent_dim', '')}"
    if name not in which: continue
    t = p.target.build(suite.dtype, suite.device)
    _ = t.phi
    for kind in ["isir", "pimh"]:
        kd = C._kind(kind)
        def run(pack, kd=kd, t=t):
            return C.run_coupled(t, R, make_generator(0), kd, K=16, k=0, m=0, lag=1, rao_blackwell=True, max_iter=10000, pack_points=pack)
        a, b = run(False), run(True)
        cost = float((2*16 + kd.evals_per_step(16)*a.tau_point).sum())
        d = float((a.grads-b.grads).abs().max()/a.grads.abs().max())
        Rm = max(1, round(cost/(16*t.n_data)))
        s = time_interleaved({"old": lambda: run(False), "new": lambda: run(True), "iwae": lambda t=t, Rm=Rm: iwae(t, Rm, make_generator(1), K=16)}, device="cpu", warmup=1, repeats=int(os.environ.get("REP", "3")))
        med = {k: float(np.median(v)) for k, v in s.items()}
        print(f"{name} {kind} R={R}: relmax {d:.2g} tau_eq {torch.equal(a.tau_point,b.tau_point)} charged/R {cost/R:.1f} lockstep/R old {a.lockstep_evals/R:.1f} new {b.lockstep_evals/R:.1f}; "
              f"s old {med['old']:.3g} new {med['new']:.3g} iwae(Rm={Rm}) {med['iwae']:.3g}; evals/s ratio old {med['iwae']/med['old']:.3f} new {med['iwae']/med['new']:.3f}; load {os.getloadavg()[0]:.2f}", flush=True)
