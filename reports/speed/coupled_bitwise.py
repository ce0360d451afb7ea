"""Bitwise record of the coupled estimators on a small VAE, to compare the driver before and after a change.

Run it at the old commit and at the new one, then compare the two files with ``torch.equal`` (see
reports/speed/README.md):

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/speed/coupled_bitwise.py /tmp/before.pt
"""
import argparse

import torch

from gradbench import registry
from gradbench.seeding import make_generator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("OUT", help="file for torch.save: {estimator + params: (grads, cost, tau, lockstep_cost)}")
parser.add_argument("--replicates", type=int, default=300)
args = parser.parse_args()
entry = registry.MODELS["vae"]
t = entry.build(entry.params(latent_dim=2, data_dim=6, n_data=3, hidden=[8]), entry.proposal(mean_shift=0.5), 3,
                torch.float64, "cpu", None)
out = {}
for name, key in [("isir", "coupled_isir"), ("pimh", "coupled_pimh")]:
    for kw in [{"K": 4}, {"K": 8, "k": "auto"}, {"K": 4, "lag": 2, "m": 5, "k": 2}]:
        s = registry.ESTIMATORS[key].fn(t, args.replicates, make_generator(0), **kw)
        out[f"{name}{kw}"] = (s.grads, s.cost, s.diagnostics["tau"], s.diagnostics["lockstep_cost"])
torch.save(out, args.OUT)
