# Run from the repository root: PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/vae_speed_check.py
# (a timing script, kept out of tests/: its target comes from tests/models/test_vae.py)
"""iwae K=8 R=500 vs the floor (one batched log_joint + backward of the same size) on the vae digits target.
Same process, one thread, the three timed round-robin (so load changes hit all alike), 25 rounds, median."""
import statistics
import time

import torch

from gradbench.estimators import importance
from tests.models.test_vae import digits_target

torch.set_num_threads(1)
t = digits_target()
R, K = 500, 8
gen = torch.Generator().manual_seed(0)
z, _ = t.sample_proposal((R, K), gen)
w = torch.full(z.shape[:-1], 1.0 / K, dtype=z.dtype)
from gradbench.contracts import ComposedTarget


class Plain:  # the model without its fast paths: ComposedTarget falls back to torch.func vmap(grad)
    def __init__(self, m): self.m, self.latent, self.layout = m, m.latent, m.layout
    def log_joint(self, *a): return self.m.log_joint(*a)
generic = ComposedTarget(Plain(t.model), t.family, t.x, t.theta, t.phi)
def floor():
    th = {k: v.detach().requires_grad_(True) for k, v in t.theta.items()}
    t.model.log_joint(th, t.x, z).sum().backward()
fns = {"floor: log_joint + backward": floor,
       "iwae K=8 R=500": lambda: importance.iwae(t, R, gen, K=K),
       "target.weighted_grad_log_joint": lambda: t.weighted_grad_log_joint(z, w),
       "iwae, generic vmap(grad) path": lambda: importance.iwae(generic, R, gen, K=K),
       "sample_proposal": lambda: t.sample_proposal((R, K), gen)}
times = {k: [] for k in fns}
for f in fns.values(): f()
for _ in range(25):
    for k, f in fns.items():
        t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
fl = statistics.median(times["floor: log_joint + backward"])
for k, ts in times.items():
    q = statistics.quantiles(ts, n=4)
    print(f"{k:32s} median {statistics.median(ts)*1e3:7.1f} ms  IQR [{q[0]*1e3:.1f}, {q[2]*1e3:.1f}]  ratio to floor {statistics.median(ts)/fl:.2f}")
