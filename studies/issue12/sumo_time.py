"""Wall time and peak RSS of sumo(target, 1000, seed 0) with its default on the N = 10 targets of the shipped tests.

usage: sumo_time.py sbn|vae    (sbn: tests/models/test_sbn.py's digits SBN; vae: test_vae.py's digits VAE)
Run from the repository root (or from another checkout to time its sumo); one warm-up call first.
"""
import resource
import sys
import time

import torch

sys.path.insert(0, ".")
from gradbench.estimators import sumo as S

if sys.argv[1] == "sbn":
    from gradbench.data import DataSpec, load
    from gradbench.families.bernoulli import BernoulliProposal
    from gradbench.models.sbn import SBNParams, build
    x, _ = load(DataSpec(name="digits", n=10, binarize="dynamic"))
    t = build(SBNParams(layers=[10]), BernoulliProposal(), 0, data=x)
else:
    from tests.models.test_vae import digits_target
    t = digits_target()
S.sumo(t, 5, torch.Generator().manual_seed(1))
t0 = time.time()
s = S.sumo(t, 1000, torch.Generator().manual_seed(0))
print(f"{S.__file__} {sys.argv[1]}: {time.time() - t0:.1f}s, censored {int(s.diagnostics['censored'].sum())}, "
      f"charged/point {float(s.cost.mean()) / t.n_data:.0f}, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
