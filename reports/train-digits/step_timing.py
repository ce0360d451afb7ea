"""Wall-clock of one training step (θ-estimator + φ-estimator, R = 1, batch 32) at K = 8: coupled i-SIR vs IWAE,
on the train-digits architecture (k = 2, decoder and encoder tanh [32]) at its initialisation; the two are
interleaved in blocks (so that load on a shared machine hits both alike); median and IQR over blocks.
Run: OMP_NUM_THREADS=1 python reports/train-digits/step_timing.py"""

import time

import numpy as np
import torch

from gradbench import registry
from gradbench.data import DataSpec, load
from gradbench.families.gaussian import GaussianEncoder
from gradbench.models.vae import VAE
from gradbench.seeding import make_generator
from gradbench.target import ComposedTarget

torch.set_num_threads(1)
x = torch.as_tensor(load(DataSpec(name="digits", binarize="dynamic", seed=0))[0])
model, enc = VAE(2, 64, (32,)), GaussianEncoder(2, 64, (32,))
gen = make_generator(0)
target = ComposedTarget(model, enc, x, model.init_params(gen), enc.init_params(x, gen, torch.float64))
pairs = {"iwae K=8 + iwae_reparam K=8": ("iwae", "iwae_reparam"),
         "coupled_isir K=8 + iwae_reparam K=8": ("coupled_isir", "iwae_reparam"),
         "elbo S=1 + reparam_elbo S=1": ("elbo", "reparam_elbo")}
kw = {"iwae": {"K": 8}, "coupled_isir": {"K": 8}, "iwae_reparam": {"K": 8}, "elbo": {"S": 1}, "reparam_elbo": {"S": 1}}
times: dict[str, list[float]] = {k: [] for k in pairs}
for block in range(30):
    batch = target.at(x=x[torch.randperm(len(x), generator=make_generator(block))[:32]])
    for label, (t_est, p_est) in pairs.items():
        g = make_generator(block)
        t0 = time.perf_counter()
        for _ in range(10):
            registry.ESTIMATORS[t_est].fn(batch, 1, g, **kw[t_est])
            registry.ESTIMATORS[p_est].fn(batch, 1, g, **kw[p_est])
        times[label].append((time.perf_counter() - t0) / 10)
base = np.median(times["iwae K=8 + iwae_reparam K=8"])
for label, t in times.items():
    q25, q50, q75 = np.percentile(t, [25, 50, 75])
    print(f"{label:40s} {1e3 * q50:7.2f} ms/step (IQR {1e3 * q25:.2f}–{1e3 * q75:.2f}), ×{q50 / base:.2f} of IWAE")
