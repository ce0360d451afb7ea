# Bitwise check of the coupled driver before/after a change (issue 18, item 4): run at the old commit with
# OUT=before.pt, at the new one with OUT=after.pt, then compare with torch.equal (see reports/speed/README.md):
#   PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/coupled_bitwise.py /tmp/before.pt
import sys

import torch

from gradbench import registry
from gradbench.estimators.coupled import coupled_isir, coupled_pimh
from gradbench.seeding import make_generator

entry = registry.MODELS["vae"]
t = entry.build(entry.params(latent_dim=2, data_dim=6, n_data=3, hidden=[8]), entry.proposal(mean_shift=0.5), 3, torch.float64, "cpu", None)
out = {}
for name, fn in [("isir", coupled_isir), ("pimh", coupled_pimh)]:
    for kw in [{"K": 4}, {"K": 8, "k": "auto"}, {"K": 4, "lag": 2, "m": 5, "k": 2}]:
        s = fn(t, 300, make_generator(0), **kw)
        out[f"{name}{kw}"] = (s.grads, s.cost, s.diagnostics["tau"], s.diagnostics["lockstep_cost"])
torch.save(out, sys.argv[1])
