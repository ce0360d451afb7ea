"""False alarms of the two-sample bias test: iwae_reparam(K=4, φ) against the estimated DReG reference on
independent ppca_encoder targets (suites/calibration-encoder.yaml's regime), with variants on the same data.

usage: encoder_size.py SEEDS [R] [N_REF] [FIRST_SEED]
variants: two-sample (the shipped test), ref-as-exact (reference noise ignored: must be anti-conservative
if that noise matters), and p-values of T² / max-t separately; plus the Hill tail index of the estimator.
"""
import math
import sys
import time

import numpy as np
import torch

sys.path.insert(0, '.')
from scipy import stats as sps

from gradbench.contracts import Objective
from gradbench.estimators.pathwise import iwae_reparam
from gradbench.models.params import EncoderParams, PPCAEncoderParams
from gradbench.models.ppca_encoder import PPCAEncoder
from gradbench.protocols.bias import reference_noise
from gradbench.references.estimated import iwae_bound_reference
from gradbench.stats import bias_test, hill_tail_index

seeds = int(sys.argv[1]); R = int(sys.argv[2]) if len(sys.argv) > 2 else 300
n_ref = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
first = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # first seed (independent batches: 0, 300, ...)
EPS = float(np.finfo(float).eps)
out = {"two-sample": [], "ref-as-exact": [], "T2": [], "max": []}
tails = []
t0 = time.time()
for s in range(first, first + seeds):
    t = PPCAEncoder.synthetic(PPCAEncoderParams(data_dim=5, latent_dim=2, n_data=4, reference_replicates=n_ref),
                              EncoderParams(mean_noise=1.0, log_std_shift=0.5), seed=5000 + s)
    ref = iwae_bound_reference(t, Objective("phi", "iwae", 4), n_ref, t.seed)
    G = iwae_reparam(t, R, torch.Generator().manual_seed(s), K=4).grads.numpy()
    g = ref.value.numpy()
    res = bias_test(G, g, EPS, np.random.default_rng([s, 0, 0]), reference_noise(ref))
    out["two-sample"].append(res.pvalue)
    out["T2"].append(float(res.method.split("p_T2=")[1].split(",")[0]) if "p_T2" in res.method else math.nan)
    out["max"].append(float(res.method.split("p_max=")[1].split(")")[0]) if "p_max" in res.method else math.nan)
    out["ref-as-exact"].append(bias_test(G, g, EPS, np.random.default_rng([s, 0, 0])).pvalue)
    tails.append(hill_tail_index(np.linalg.norm(G - np.median(G, 0), axis=1))[0])
print(f"R={R} n_ref={n_ref} seeds={seeds} method={res.method}  ({time.time() - t0:.0f}s); "
      f"Hill index of the estimator's ||g - median||: median over seeds {np.median(tails):.2f}")
np.save(f"logs/enc-size-{seeds}-{R}-{n_ref}-{first}.npy", np.array([out[k] for k in out]))
for k, p in out.items():
    p = np.array(p)
    print(f"  {k:13s} " + "  ".join(f"rate@{a}={np.mean(p <= a):.3f}±{math.sqrt(a*(1-a)/len(p)):.3f}" for a in (0.01, 0.05))
          + f"  KS p={sps.kstest(p, 'uniform').pvalue:.3g}  deciles {np.histogram(p, 10, (0, 1))[0].tolist()}")
