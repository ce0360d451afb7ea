"""Is a target that rejected truly biased? Re-test the given encoder targets (seed 9000 + s, as encoder_pieces.py)
REPS times with fresh, independent noise for both the estimator (iwae_reparam K=4, R=300) and the reference (2000 DReG
replicates): a real bias would reject again. Bootstrap B = 199. usage: encoder_persist.py S1,S2,... REPS"""
import sys

import numpy as np
import torch

sys.path.insert(0, '.')
from gradbench.estimators.pathwise import dreg, iwae_reparam
from gradbench.models.params import EncoderParams, PPCAEncoderParams
from gradbench.models.ppca_encoder import PPCAEncoder
from gradbench.stats import ReferenceNoise, bias_test

EPS = float(np.finfo(float).eps)
targets = [int(x) for x in sys.argv[1].split(",")]
reps = int(sys.argv[2])
for s in targets:
    t = PPCAEncoder.synthetic(PPCAEncoderParams(data_dim=5, latent_dim=2, n_data=4, reference_replicates=2000),
                              EncoderParams(mean_noise=1.0, log_std_shift=0.5), seed=9000 + s)
    ps = []
    for j in range(reps):
        H = dreg(t, 2000, torch.Generator().manual_seed(10**5 + 7919 * j), K=4).grads.numpy()
        G = iwae_reparam(t, 300, torch.Generator().manual_seed(3 * 10**5 + 104729 * j), K=4).grads.numpy()
        ps.append(bias_test(G, H.mean(0), EPS, np.random.default_rng([s, j, 5]), ReferenceNoise(np.cov(H.T), 2000),
                            n_boot=199).pvalue)
    ps = np.array(ps)
    print(f"target {s}: reject@0.01 {np.mean(ps <= 0.01):.2f}  @0.05 {np.mean(ps <= 0.05):.2f}  median p {np.median(ps):.3f}",
          flush=True)
