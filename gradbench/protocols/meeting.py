"""Meeting times of coupled-chain estimators (docs/design.md §9.4), from diagnostics ``tau`` and ``censored``.

Rows (param_group ``all``), over all R replicates including non-finite ones — a censored
replicate has a NaN gradient but a perfectly informative τ > max_iter:
* ``n_censored``: replicates whose chains had not met at the cap (their τ is only a lower bound).
* ``censored_frac``: n_censored / R with binomial s.e. √(c(1 − c)/R). Censored replicates are left out
  of every gradient moment, so the cell estimates E[H | τ ≤ max_iter], whose bias
  c (E[H | τ ≤ max_iter] − E[H | τ > max_iter]) is unknown. The runner puts a ``warning`` on every
  row of a cell (:func:`censoring_warning`) when c √R > CENSORING_RESOLUTION, i.e. when a
  difference of one standard deviation between censored and uncensored replicates would shift the
  mean by more than a quarter of its standard error. Remedy: raise ``max_iter`` (a censored fraction
  of 1/R or less is harmless), or use a coupling that meets faster (e.g. more particles K, the
  maximal index coupling, a shorter lag); ``tail_rate`` tells how far ``max_iter`` must go.
* ``tau_mean``: mean τ over the *uncensored* replicates, s.e. sd/√n; ``method`` says when
  censored replicates were left out (the mean is then biased low; see ``n_censored``).
* ``tau_q50``, ``tau_q90``, ``tau_q99``: empirical quantiles (numpy "inverted_cdf", i.e. an observed
  τ) with censored τ taken as +∞, so a quantile is exact unless it falls among the censored
  replicates, where it is +∞; s.e. by a multinomial bootstrap (200 resamples,
  ``np.random.default_rng(ctx.seed)``).
* ``tau_max``: the largest τ (+∞ if any censored); no s.e. (an extreme order statistic).
* ``tail_rate``: λ in P(τ > t) ≈ C e^{−λ t}, from the maximum-likelihood geometric fit to the
  tail beyond t0 = median(τ) − 1: with n_e meetings (uncensored τ > t0) and exposure
  E = Σ_{τ_r > t0} (τ_r − t0) (censored replicates contribute max_iter − t0 and no meeting), the
  per-step meeting hazard is ĥ = n_e / E and λ = −log(1 − ĥ); s.e. by the delta method on
  Var ĥ ≈ ĥ²(1 − ĥ)/n_e, i.e. se(λ) = ĥ / √(n_e (1 − ĥ)). For a geometric τ (memoryless) every t0
  gives the same λ; starting at the median keeps the fit on the tail but on half the data.
  λ = +∞ when every replicate in the tail met at its first step (ĥ = 1).
When the estimator reports its lockstep work (diagnostics ``lockstep_evaluated``, ``lockstep_seconds_lost``; see
:mod:`gradbench.estimators.coupling`), also:
* ``lockstep_efficiency``: Σ_r cost_r / Σ_r e_r, the fraction of the work the lockstep batch did (e_r on replicate
  r's rows) that the estimator needed (cost_r: what r's own chain pairs required up to their own meeting/stop
  times); the rest went to pairs that had met while their replicate's slowest pair ran on, and to padding. The
  main run only (a ``k: auto`` pilot is not counted). s.e. of the ratio estimator over replicates (delta method):
  √(Σ_r (cost_r − eff e_r)² / (n(n − 1))) / mean(e).
* ``lockstep_seconds``, ``lockstep_seconds_lost``: wall seconds per replicate of the estimator's calls, and of them
  the part lost to lockstep, measured per call as s − β Σ_r cost_r with β the seconds per cost unit of the call's
  widest coupled steps (the full batch's throughput): unneeded work and, mostly, the fixed per-step cost of the
  narrow steps in which the slowest chain pairs run on alone. (wall × (1 − efficiency), the work-only estimate,
  is lockstep_seconds × (1 − lockstep_efficiency).) Summed over replicates ÷ n, no s.e. (one value per call, not
  per replicate). Wall clock: not reproducible, and the cell is not timed alone.
Returns no rows when the sample has no ``tau`` diagnostic.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench.core import GradSample, Reference
from gradbench.protocols import ProtocolContext, Row, row

QUANTILES = {"tau_q50": 0.5, "tau_q90": 0.9, "tau_q99": 0.99}
N_BOOT = 200


def geometric_tail_fit(tau: np.ndarray, censored: np.ndarray, t0: float) -> tuple[float, float, int, float]:
    """(λ, se λ, n_events, ĥ) of the censored geometric MLE on replicates with τ > t0."""
    tail = tau > t0
    n_e = int((tail & ~censored).sum())
    exposure = float((tau[tail] - t0).sum())
    if n_e == 0 or exposure <= 0:
        return math.nan, math.nan, n_e, math.nan
    h = n_e / exposure
    if h >= 1.0:
        return math.inf, math.nan, n_e, 1.0
    return -math.log1p(-h), h / math.sqrt(n_e * (1.0 - h)), n_e, h


CENSORING_RESOLUTION = 0.25


def censoring_warning(sample: GradSample) -> str:
    """Non-empty when censored replicates (diagnostic ``censored``) may bias the cell's gradient moments
    by more than CENSORING_RESOLUTION of their standard error (see the module docstring)."""
    cens = sample.diagnostics.get("censored")
    n = sample.replicates
    if cens is None or n == 0:
        return ""
    n_cens = int(cens.sum())
    c = n_cens / n
    if c * math.sqrt(n) <= CENSORING_RESOLUTION:
        return ""
    return (f"{n_cens} of {n} replicates censored (fraction {c:.2g}): the moments estimate E[H | not censored], "
            f"whose bias may exceed {CENSORING_RESOLUTION:g} s.e.; raise max_iter/max_terms or use a faster coupling")


def meeting(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    if "tau" not in sample.diagnostics:
        return []
    tau = sample.diagnostics["tau"].detach().cpu().double().numpy()
    cens_t = sample.diagnostics.get("censored")
    censored = np.zeros(tau.shape, dtype=bool) if cens_t is None else cens_t.detach().cpu().numpy().astype(bool)
    n = tau.size
    n_cens = int(censored.sum())
    rows: list[Row] = [row("all", "n_censored", n_cens, math.nan, f"of {n} replicates")]
    if n == 0:
        return rows
    c = n_cens / n
    rows.append(row("all", "censored_frac", c, math.sqrt(c * (1 - c) / n), "binomial s.e.", censoring_warning(sample)))
    ok = tau[~censored]
    note = f"uncensored only ({n_cens} censored left out)" if n_cens else "all replicates"
    if ok.size:
        se = ok.std(ddof=1) / math.sqrt(ok.size) if ok.size > 1 else math.nan
        rows.append(row("all", "tau_mean", ok.mean(), se, note))
    else:
        rows.append(row("all", "tau_mean", math.nan, math.nan, note))

    inf_tau = np.where(censored, np.inf, tau)
    rng = np.random.default_rng(ctx.seed)
    boot_idx = rng.integers(0, n, size=(N_BOOT, n))
    boot = inf_tau[boot_idx]
    for name, q in QUANTILES.items():
        value = float(np.quantile(inf_tau, q, method="inverted_cdf"))
        bq = np.quantile(boot, q, axis=1, method="inverted_cdf")
        se = float(bq.std(ddof=1)) if np.isfinite(bq).all() and n > 1 else math.nan
        rows.append(row("all", name, value, se, f"bootstrap({N_BOOT})"))
    rows.append(row("all", "tau_max", float(inf_tau.max()), math.nan, "extreme order statistic"))

    t0 = float(np.quantile(inf_tau, 0.5, method="inverted_cdf")) - 1.0
    if math.isfinite(t0):
        lam, se, n_e, h = geometric_tail_fit(tau, censored, t0)
        method = f"censored geometric MLE on tau > {t0:g} (n_events={n_e}, hazard={h:.4g})"
    else:
        lam, se, method = math.nan, math.nan, "over half the replicates censored"
    rows.append(row("all", "tail_rate", lam, se, method))
    return rows + lockstep_rows(sample)


def lockstep_rows(sample: GradSample) -> list[Row]:
    """lockstep_efficiency, lockstep_seconds and lockstep_seconds_lost (see the module docstring); none without
    diagnostic ``lockstep_evaluated``."""
    d = sample.diagnostics
    if "lockstep_evaluated" not in d or sample.replicates == 0:
        return []
    cost = sample.cost.detach().cpu().double().numpy()
    e = d["lockstep_evaluated"].detach().cpu().double().numpy()
    n = e.size
    eff = cost.sum() / e.sum()
    se = math.sqrt(((cost - eff * e) ** 2).sum() / (n * (n - 1))) / e.mean() if n > 1 else math.nan
    rows = [row("all", "lockstep_efficiency", eff, se, "needed / evaluated (main run); ratio s.e. over replicates")]
    methods = {"lockstep_seconds": "wall seconds per replicate; not reproducible",
               "lockstep_seconds_lost": "wall - beta * needed, beta = s per eval of the widest steps; not reproducible"}
    for name, method in methods.items():
        if name in d:
            rows.append(row("all", name, float(d[name].detach().cpu().double().mean()), math.nan, method))
    return rows
