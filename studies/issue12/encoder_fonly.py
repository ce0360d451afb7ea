"""T² of the encoder two-sample comparison on its F(r, ν − r + 1) reference only (ν of Nel & van der Merwe; no
bootstrap, so it is fast): iwae_reparam(K=4, φ), R = 300, against the mean of 2000 DReG replicates, targets seed
9000 + s as in encoder_pieces.py. SCHEME picks the torch noise seeds (G, H): A = (2s, 2s + 1) as encoder_pieces.py,
A2 = (10⁶ + s, 2·10⁶ + s) (other noise on the same targets). usage: encoder_fonly.py SCHEME FIRST N"""
import math
import sys
import time

import numpy as np
import torch
from scipy import stats as sps

sys.path.insert(0, '.')
from gradbench.estimators.pathwise import dreg, iwae_reparam
from gradbench.models.params import EncoderParams, PPCAEncoderParams
from gradbench.models.ppca_encoder import PPCAEncoder
from gradbench.stats import ReferenceNoise, sample_noise

EPS = float(np.finfo(float).eps)
scheme, first, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p = []
t0 = time.time()
for s in range(first, first + N):
    t = PPCAEncoder.synthetic(PPCAEncoderParams(data_dim=5, latent_dim=2, n_data=4, reference_replicates=2000),
                              EncoderParams(mean_noise=1.0, log_std_shift=0.5), seed=9000 + s)
    gs, hs = {"A": (2 * s, 2 * s + 1), "A2": (10**6 + s, 2 * 10**6 + s)}[scheme]
    H = dreg(t, 2000, torch.Generator().manual_seed(hs), K=4).grads.numpy()
    G = iwae_reparam(t, 300, torch.Generator().manual_seed(gs), K=4).grads.numpy()
    dn = sample_noise(G, ReferenceNoise(np.cov(H.T), 2000), EPS)
    r, nu = dn.rank, dn.welch_df()
    t2 = float(np.sum(dn.whiten(G.mean(0) - H.mean(0)) ** 2))
    p.append(float(sps.f.sf((nu - r + 1) * t2 / (nu * r), r, nu - r + 1)))
p = np.array(p)
print(f"scheme {scheme}, targets {first}..{first + N - 1} ({time.time() - t0:.0f}s): "
      + "  ".join(f"rate@{a:g} = {np.mean(p <= a):.4f} ± {math.sqrt(a * (1 - a) / N):.4f}" for a in (0.01, 0.05))
      + f"  KS p = {sps.kstest(p, 'uniform').pvalue:.3g}")
