"""The pieces of the encoder two-sample test (suites/calibration-encoder.yaml's regime), on the same data per target:
iwae_reparam(K=4, φ), R replicates, against the mean of N_REF DReG replicates H (the estimated reference), over
independent targets (seed 9000 + s). Per target:
  shipped  — gradbench.stats.bias_test with the reference's (cov, n): combined p, and its p_T2 / p_max parts;
  F_nvdm   — T² on the F(r, ν − r + 1) reference, ν of Nel & van der Merwe (the df piece);
  F_naive  — T² on F(r, R − r): the reference's noise in V but its df ignored;
  np_T2    — T² calibrated by the fully nonparametric two-sample bootstrap (rows of G *and* of H resampled, each
             re-studentised), instead of Gaussian reference noise with a Wishart re-estimated covariance;
  exact    — the reference treated as exact (its noise ignored): the negative control of the two-sample treatment.
Also: the share of the reference in tr Var(ḡ − g*), and (``--scaling``) a check of the reference's covariance
scaling: the covariance of 400 independent reference means on one target against the mean of their cov/n.
usage: encoder_pieces.py SEEDS [R] [N_REF] [--scaling]"""
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
from gradbench.stats import ReferenceNoise, bias_test, sample_noise

EPS = float(np.finfo(float).eps)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
seeds = int(args[0]); R = int(args[1]) if len(args) > 1 else 300; n_ref = int(args[2]) if len(args) > 2 else 2000
B = 499


def target(seed: int) -> PPCAEncoder:
    return PPCAEncoder.synthetic(PPCAEncoderParams(data_dim=5, latent_dim=2, n_data=4, reference_replicates=n_ref),
                                 EncoderParams(mean_noise=1.0, log_std_shift=0.5), seed=seed)


if "--scaling" in sys.argv:
    t = target(9000)
    means, covs = [], []
    for j in range(400):
        H = dreg(t, n_ref, torch.Generator().manual_seed(10**6 + j), K=4).grads.numpy()
        means.append(H.mean(0)); covs.append(np.cov(H.T) / n_ref)
    emp, pred = np.cov(np.array(means).T), np.mean(covs, 0)
    ratio = np.trace(emp) / np.trace(pred)
    # tr of a sample covariance of 400 means: relative s.e. ≈ √(2 Σλ² / (399 (Σλ)²)) for Gaussian means
    lam = np.linalg.eigvalsh(pred)
    print(f"reference covariance scaling (one target, 400 references of {n_ref}): tr Cov(means) / mean tr(cov/n) = "
          f"{ratio:.3f} ± {math.sqrt(2 * (lam**2).sum() / 399) / lam.sum():.3f} (1 expected)")


def two_sample_np_t2(G: np.ndarray, H: np.ndarray, diff: np.ndarray, basis: np.ndarray, sv: np.ndarray,
                     rng: np.random.Generator) -> float:
    """p of T² by resampling rows of G and of H, T²* = m*ᵀ (S_G*/n + S_H*/n_ref)⁻¹ m* in the rank-r basis."""
    Y = (G - G.mean(0)) @ basis.T / sv
    Z = (H - H.mean(0)) @ basis.T / sv
    def t2_of(Y, Z, m):
        V = np.cov(Y.T) / len(Y) + np.cov(Z.T) / len(Z)
        return float(m @ np.linalg.solve(V, m))
    t2 = t2_of(Y, Z, (basis @ diff) / sv)
    n, k = len(Y), len(Z)
    cY = rng.multinomial(n, np.full(n, 1 / n), size=B).astype(float)
    cZ = rng.multinomial(k, np.full(k, 1 / k), size=B).astype(float)
    mY, mZ = cY @ Y / n, cZ @ Z / k
    r = Y.shape[1]
    YY, ZZ = (Y[:, :, None] * Y[:, None, :]).reshape(n, r * r), (Z[:, :, None] * Z[:, None, :]).reshape(k, r * r)
    SY = ((cY @ YY).reshape(B, r, r) / n - mY[:, :, None] * mY[:, None, :]) / (n - 1)
    SZ = ((cZ @ ZZ).reshape(B, r, r) / k - mZ[:, :, None] * mZ[:, None, :]) / (k - 1)
    m = mY - mZ
    Tb = np.einsum("bi,bi->b", m, np.linalg.solve(SY + SZ, m[:, :, None])[:, :, 0])
    return (1 + int((Tb >= t2).sum())) / (B + 1)


def part(method: str, key: str) -> float:
    return float(method.split(f"{key}=")[1].split(",")[0].rstrip(")")) if key in method else math.nan


out = {k: [] for k in ("shipped", "p_T2", "p_max", "F_nvdm", "F_naive", "np_T2", "exact")}
share, nus = [], []
t0 = time.time()
for s in range(seeds):
    t = target(9000 + s)
    H = dreg(t, n_ref, torch.Generator().manual_seed(2 * s + 1), K=4).grads.numpy()
    G = iwae_reparam(t, R, torch.Generator().manual_seed(2 * s), K=4).grads.numpy()
    g = H.mean(0)
    noise = ReferenceNoise(np.cov(H.T), n_ref)
    res = bias_test(G, g, EPS, np.random.default_rng([s, 0, 0]), noise)
    out["shipped"].append(res.pvalue)
    out["p_T2"].append(part(res.method, "p_T2")); out["p_max"].append(part(res.method, "p_max"))
    dn = sample_noise(G, noise, EPS)
    diff = G.mean(0) - g
    r, nu = dn.rank, dn.welch_df()
    nus.append(nu)
    t2 = float(np.sum(dn.whiten(diff) ** 2))
    out["F_nvdm"].append(float(sps.f.sf((nu - r + 1) * t2 / (nu * r), r, nu - r + 1)))
    out["F_naive"].append(float(sps.f.sf((R - r) * t2 / ((R - 1) * r), r, R - r)))
    out["np_T2"].append(two_sample_np_t2(G, H, diff, dn.basis, dn.sv, np.random.default_rng([s, 0, 1])))
    out["exact"].append(bias_test(G, g, EPS, np.random.default_rng([s, 0, 0])).pvalue)
    share.append(np.trace(noise.cov) / n_ref / (np.trace(np.cov(G.T)) / R + np.trace(noise.cov) / n_ref))
print(f"R={R} n_ref={n_ref} targets={seeds} ({time.time() - t0:.0f}s); rank {r}; Nel–van der Merwe ν: median "
      f"{np.median(nus):.0f} (range {min(nus):.0f}–{max(nus):.0f}; R − 1 = {R - 1}); reference share of tr Var(d): "
      f"median {np.median(share):.3f}")
np.save(f"runs/enc-pieces-{seeds}-{R}-{n_ref}.npy", np.array([out[k] for k in out]))
for k, p in out.items():
    p = np.array(p)
    print(f"  {k:8s} " + "  ".join(f"rate@{a:g} = {np.mean(p <= a):.4f} ± {math.sqrt(a * (1 - a) / len(p)):.4f}"
                                   for a in (0.01, 0.05)) + f"  KS p = {sps.kstest(p, 'uniform').pvalue:.3g}")
