"""Signal-to-noise ratio of a gradient estimator, per parameter (Rainforth et al. 2018).

SNR_j = |E ĝ_j| / sd(ĝ_j), estimated by |ḡ_j| / s_j from the n finite replicates. Per parameter
group (``all`` first, then each group of the sample's layout — θ groups W, mu, sigma or φ groups
A, b, c, whichever the estimator differentiates) the protocol reports the quartiles of the
coordinates' SNRs:

* ``snr_q25``, ``snr_q50``, ``snr_q75`` — 25 %, 50 % (median), 75 % quantiles over coordinates,
  with multinomial-bootstrap standard errors (``method`` says how many resamples).

Coordinates with zero variance and zero mean (0/0) are left out of the quantiles; zero variance
with a non-zero mean gives SNR = inf. Note |ḡ_j| is biased upwards when the true SNR is small:
E|ḡ_j|/sd_j ≥ √(2/(π n)), the floor to compare small SNRs against.

Sweeps over a parameter (e.g. K) are separate cells; :func:`loglog_slopes` fits the slope of
log SNR against log K per estimator and group from a results table (Rainforth et al.: with IWAE,
θ-SNR ∝ K^{+1/2} and φ-SNR ∝ K^{−1/2}).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row

QUANTILES = {"snr_q25": 0.25, "snr_q50": 0.50, "snr_q75": 0.75}
N_BOOT = 200


def per_coordinate_snr(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """|mean| / sd along the last axis; NaN where both are 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(mean) / np.sqrt(np.maximum(var, 0.0))


def _quantiles(snr: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles (linear interpolation, as ``np.quantile``) over the last axis ignoring NaN; [len(qs), *batch].

    Vectorised: sort (NaN last), then interpolate at q (n_valid − 1) per row; all-NaN rows give NaN.
    Infinite values are kept as +inf (never interpolated into inf − inf).
    """
    flat = np.sort(snr.reshape(-1, snr.shape[-1]), axis=-1)
    n_valid = (~np.isnan(flat)).sum(-1)
    out = np.full((len(qs), flat.shape[0]), np.nan)
    ok = n_valid > 0
    rows = np.nonzero(ok)[0]
    for i, q in enumerate(qs):
        pos = q * (n_valid[ok] - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_valid[ok] - 1)
        a, b = flat[rows, lo], flat[rows, hi]
        frac = pos - lo
        with np.errstate(invalid="ignore"):
            val = a + frac * (b - a)
        out[i, rows] = np.where(frac == 0, a, np.where(np.isinf(b), b, val))  # sorted: a = inf ⇒ b = inf
    return out.reshape(len(qs), *snr.shape[:-1])


def bootstrap_snr_quantiles(
    G: np.ndarray, groups: dict[str, slice], rng: np.random.Generator, qs: Sequence[float] = (0.25, 0.5, 0.75),
    n_boot: int = N_BOOT,
) -> dict[str, list[tuple[float, float]]]:
    """Per group, the quantiles ``qs`` over coordinates of SNR_j, each with a bootstrap s.e.

    Same resampling as :func:`gradbench.stats.bootstrap_snr_medians` (multinomial counts, so each
    resample is two matrix products), generalised to any quantiles.
    """
    n = G.shape[0]
    center = G.mean(0)
    point = per_coordinate_snr(center, G.var(0, ddof=1))
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    Gc = G - center  # centring first keeps the second moment numerically stable
    m1 = counts @ Gc / n
    var = (counts @ Gc**2 / n - m1**2) * n / (n - 1)
    boot = per_coordinate_snr(m1 + center, var)
    out: dict[str, list[tuple[float, float]]] = {}
    for name, sl in groups.items():
        p = _quantiles(point[sl], qs)
        b = _quantiles(boot[:, sl], qs)  # [len(qs), n_boot]
        res = []
        for i in range(len(qs)):
            finite = b[i][np.isfinite(b[i])]
            res.append((float(p[i]), float(finite.std(ddof=1)) if finite.size > 1 else math.nan))
        out[name] = res
    return out


def snr(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    """``snr_q25``, ``snr_q50``, ``snr_q75`` per parameter group (the reference is not used)."""
    fs = FiniteSample.of(sample)
    if fs.G.shape[0] < 2:
        return []
    groups = group_slices(sample.layout)
    qs = bootstrap_snr_quantiles(fs.G, groups, np.random.default_rng(ctx.seed), list(QUANTILES.values()))
    rows: list[Row] = []
    for name in groups:
        for metric, (value, se) in zip(QUANTILES, qs[name]):
            rows.append(row(name, metric, value, se, f"bootstrap({N_BOOT})"))
    return rows


def loglog_slope(x: np.ndarray, y: np.ndarray, se: np.ndarray | None = None) -> tuple[float, float]:
    """Slope of log y on log x by weighted least squares and its standard error.

    Weights 1/var(log y) with var(log y) ≈ (se/y)² (delta method) when ``se`` is given, else
    ordinary least squares with the residual variance. The s.e. treats the points as independent;
    with weights it is inflated by √(χ²/dof) when the points scatter more than their s.e. allow
    (a curved, pre-asymptotic log-log relation is then not passed off as a precise slope).
    """
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    X = np.column_stack([np.ones_like(lx), lx])
    if se is not None and np.all(np.isfinite(se)) and np.all(np.asarray(se) > 0):
        w = (np.asarray(y, float) / np.asarray(se, float)) ** 2
        XtW = X.T * w
        cov = np.linalg.inv(XtW @ X)
        beta = cov @ XtW @ ly
        dof = len(lx) - 2
        if dof > 0:
            resid = ly - X @ beta
            cov = cov * max(1.0, float(w @ resid**2) / dof)
        return float(beta[1]), float(math.sqrt(cov[1, 1]))
    beta, *_ = np.linalg.lstsq(X, ly, rcond=None)
    dof = len(lx) - 2
    if dof <= 0:
        return float(beta[1]), math.nan
    resid = ly - X @ beta
    cov = np.linalg.inv(X.T @ X) * float(resid @ resid) / dof
    return float(beta[1]), float(math.sqrt(cov[1, 1]))


def loglog_slopes(table: pd.DataFrame, x: str = "estimator.K", metric: str = "snr_q50",
                  by: Sequence[str] = ("target_id", "estimator", "estimator.wrt")) -> pd.DataFrame:
    """Per (``by`` …, param_group): the log-log slope of ``metric`` against column ``x``, with s.e.

    ``by`` columns absent from the table are ignored. Rows with non-positive or non-finite values
    are dropped before fitting.
    """
    sub = table[table.metric == metric]
    keys = [c for c in by if c in sub.columns] + ["param_group"]
    out = []
    for key, grp in sub.groupby(keys, sort=False, dropna=False):
        g = grp[np.isfinite(grp.value) & (grp.value > 0) & grp[x].notna()].sort_values(x)
        if len(g) < 2:
            continue
        slope, se = loglog_slope(g[x].to_numpy(float), g.value.to_numpy(float), g.stderr.to_numpy(float))
        out.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "slope": slope, "slope_se": se,
                    "n_points": len(g), f"{x}_min": g[x].min(), f"{x}_max": g[x].max()})
    return pd.DataFrame(out)
