"""Negative control of the encoder two-sample test: rejection rate of iwae_reparam(K=K_EST, φ) against the estimated
K = 4 DReG reference (suites/calibration-encoder.yaml's target family and reference, n_ref = 2000) over independent
targets (seed 7000 + s; noise seed s). K_EST = 1 is the reparameterised ELBO gradient, biased for ∇φ IWAE_4; K_EST = 4
is the null (unbiased). usage: encoder_power.py SEEDS R K_EST"""
import math
import sys
import time

import numpy as np
import torch

sys.path.insert(0, '.')
from gradbench.contracts import Objective
from gradbench.estimators.pathwise import iwae_reparam
from gradbench.models.params import EncoderParams, PPCAEncoderParams
from gradbench.models.ppca_encoder import PPCAEncoder
from gradbench.protocols.bias import reference_noise
from gradbench.references.estimated import iwae_bound_reference
from gradbench.stats import bias_test

seeds, R, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
EPS = float(np.finfo(float).eps)
p, methods = [], set()
t0 = time.time()
for s in range(seeds):
    t = PPCAEncoder.synthetic(PPCAEncoderParams(data_dim=5, latent_dim=2, n_data=4, reference_replicates=2000),
                              EncoderParams(mean_noise=1.0, log_std_shift=0.5), seed=7000 + s)
    ref = iwae_bound_reference(t, Objective("phi", "iwae", 4), 2000, t.seed)
    G = iwae_reparam(t, R, torch.Generator().manual_seed(s), K=K).grads.numpy()
    res = bias_test(G, ref.value.numpy(), EPS, np.random.default_rng([s, 0, 0]), reference_noise(ref))
    p.append(res.pvalue)
    methods.add(res.method.split("(")[0])
p = np.array(p)
print(f"iwae_reparam(K={K}) vs DReG IWAE_4 reference, R={R}, {seeds} targets, branches {sorted(methods)} "
      f"({time.time() - t0:.0f}s): " + "  ".join(
          f"reject@{a:g} = {np.mean(p <= a):.3f} ± {math.sqrt(max(np.mean(p <= a) * (1 - np.mean(p <= a)), 1e-12) / seeds):.3f}"
          for a in (0.01, 0.05)) + f"  median p = {np.median(p):.3g}")
