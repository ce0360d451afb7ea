"""False alarms of the two-sample bias test: iwae_reparam(K=4, φ) against the estimated DReG reference on
independent ppca_encoder targets (suites/calibration-encoder.yaml's regime), with variants on the same data.

usage: encoder_size.py SEEDS [R] [N_REF] [FIRST_SEED] [--save FILE.npy]
variants: two-sample (the shipped test), ref-as-exact (reference noise ignored: must be anti-conservative
if that noise matters), and p-values of T² / max-t separately; plus the Hill tail index of the estimator.
"""
import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from gradbench import registry
from gradbench.protocols.bias import reference_noise
from gradbench.stats import bias_test, hill_tail_index


def encoder_target(seed: int, n_ref: int = 2000) -> Any:
    """suites/calibration-encoder.yaml's target family, built through the registry (float64, CPU)."""
    entry = registry.MODELS["ppca_encoder"]
    return entry.build(entry.params(data_dim=5, latent_dim=2, n_data=4, reference_replicates=n_ref),
                       entry.proposal(mean_noise=1.0, log_std_shift=0.5), seed, torch.float64, "cpu", None)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("SEEDS", type=int, help="independent targets")
parser.add_argument("R", type=int, nargs="?", default=300)
parser.add_argument("N_REF", type=int, nargs="?", default=2000, help="DReG replicates of the estimated reference")
parser.add_argument("FIRST_SEED", type=int, nargs="?", default=0, help="first seed (independent batches: 0, 300, ...)")
parser.add_argument("--save", help="also save the p-values (variants × seeds) to this .npy file")
args = parser.parse_args()
seeds, R, n_ref, first = args.SEEDS, args.R, args.N_REF, args.FIRST_SEED
iwae_reparam = registry.ESTIMATORS["iwae_reparam"].fn
EPS = float(np.finfo(float).eps)
out = {"two-sample": [], "ref-as-exact": [], "T2": [], "max": []}
tails = []
t0 = time.time()
for s in range(first, first + seeds):
    t = encoder_target(5000 + s, n_ref)
    ref = t.reference("phi_iwae4")  # the mean of n_ref DReG replicates (estimated, with its covariance)
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
if args.save:
    np.save(args.save, np.array([out[k] for k in out]))
for k, p in out.items():
    p = np.array(p)
    print(f"  {k:13s} " + "  ".join(f"rate@{a}={np.mean(p <= a):.3f}±{math.sqrt(a*(1-a)/len(p)):.3f}" for a in (0.01, 0.05))
          + f"  KS p={sps.kstest(p, 'uniform').pvalue:.3g}  deciles {np.histogram(p, 10, (0, 1))[0].tolist()}")
