"""Monte Carlo statistics with standard errors, in float64 numpy.

Standard errors of smooth functionals use the influence-function (delta-method) form
se = sd(ψ_r) / √n, where ψ_r is replicate r's influence on the statistic; medians use a
multinomial bootstrap driven by an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

HOTELLING_MIN_RATIO = 10  # Hotelling T² only when n ≥ 10 p ("dimension ≪ R")


def influence_se(psi: np.ndarray) -> float:
    """Standard error of a statistic whose per-replicate influence values are ``psi``."""
    n = psi.shape[0]
    return float(psi.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


@dataclass(frozen=True)
class BiasTest:
    pvalue: float
    zmax: float
    method: str


def bias_test(G: np.ndarray, ref: np.ndarray, ref_var: np.ndarray | None, eps: float) -> BiasTest:
    """Test H0: E[G_r] = ref from n i.i.d. rows of G [n, p].

    * Hotelling T² (exact reference, n ≥ 10 p): T² = n dᵀ S⁺ d on the numerically non-null
      eigenspace of the sample covariance S (rank r), F = (n−r) T² / (r (n−1)) ~ F(r, n−r).
      Estimators such as a one-sample oracle have singular covariance (their gradient is a
      polynomial of a few latents), hence the rank-aware form.
    * max-|z| with Šidák correction otherwise: z_j = d_j / √(s²_j/n + ref_se_j²),
      p = 1 − (1 − p_min)^m over the m coordinates with non-zero variance.
    In both, a mean difference in a direction where the estimator has zero variance, beyond
    √eps × scale (eps of the estimator's dtype), is a deterministic bias: p = 0.
    """
    n, p = G.shape
    if n < 2:
        return BiasTest(math.nan, math.nan, "none: fewer than 2 replicates")
    mean = G.mean(0)
    diff = mean - ref
    Xc = G - mean
    var = Xc.var(0, ddof=1)
    total_var = var / n + (ref_var if ref_var is not None else 0.0)
    scale = max(float(np.linalg.norm(ref)), float(np.linalg.norm(mean)), math.sqrt(float(var.sum())), 1e-300)
    tol = math.sqrt(eps) * scale
    live = total_var > (math.sqrt(eps) * scale) ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(live, np.abs(diff) / np.sqrt(total_var), 0.0)
    zmax = float(z.max()) if p else 0.0
    if np.abs(diff[~live]).max(initial=0.0) > tol:
        return BiasTest(0.0, math.inf, "deterministic: bias in a zero-variance coordinate")

    if ref_var is None and n >= HOTELLING_MIN_RATIO * p:
        _, s, Vt = np.linalg.svd(Xc / math.sqrt(n - 1), full_matrices=False)
        r = int((s > math.sqrt(eps) * scale).sum())  # same resolution as `live` above
        c = Vt[:r] @ diff
        if np.linalg.norm(diff - Vt[:r].T @ c) > tol:
            return BiasTest(0.0, zmax, f"deterministic: bias outside the rank-{r} covariance support")
        if r == 0 or n <= r:
            return BiasTest(1.0, zmax, "hotelling: zero variance")
        t2 = n * float(np.sum(c**2 / s[:r] ** 2))
        f = (n - r) * t2 / (r * (n - 1))
        return BiasTest(float(sps.f.sf(f, r, n - r)), zmax, f"hotelling(rank={r})")

    m = int(live.sum())
    if m == 0:
        return BiasTest(1.0, zmax, "max-z: zero variance")
    p_min = 2 * sps.norm.sf(zmax)
    return BiasTest(float(-np.expm1(m * np.log1p(-p_min))), zmax, f"max-z sidak(m={m})")


def bootstrap_snr_medians(
    G: np.ndarray, groups: dict[str, slice], rng: np.random.Generator, n_boot: int = 200
) -> dict[str, tuple[float, float]]:
    """Median over coordinates of SNR_j = |mean_j| / sd_j per group, with bootstrap s.e.

    The bootstrap uses multinomial replicate counts, so each resample is two matrix products.
    """
    n = G.shape[0]

    def medians(mean: np.ndarray, var: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.abs(mean) / np.sqrt(np.maximum(var, 0.0))
        return {name: np.median(snr[..., sl], axis=-1) for name, sl in groups.items()}

    point = medians(G.mean(0), G.var(0, ddof=1))
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    center = G.mean(0)
    Gc = G - center  # centring first keeps the second moment numerically stable
    m1 = counts @ Gc / n
    var = (counts @ Gc**2 / n - m1**2) * n / (n - 1)
    boot = medians(m1 + center, var)
    out = {}
    for name in groups:
        finite = boot[name][np.isfinite(boot[name])]
        se = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        out[name] = (float(point[name]), se)
    return out
