"""Within-run paired comparisons of estimators that share noise.

Estimators run on the same target in one suite draw replicate block b from the generator seeded by
(suite seed, target, b), never by the estimator (common random numbers): replicate r of estimator A and replicate
r of estimator B are a pair. Per cell this protocol keeps a small side table of per-replicate summaries (``paired``
→ ``paired.parquet``); over the run (``ProtocolSpec.run_rows``) every two cells on the same target with the same
suite seed, device and replicates are compared on the paired replicates.

Per cell and parameter group, from its n finite replicates g_r (mean ḡ, cost c_r, reference g*):
u_r = n/(n−1) ‖g_r − ḡ‖² (mean_r u_r = tr Σ̂), p_r = ḡᵀ(g_r − ḡ), e_r = ‖g_r − g*‖². Each compared quantity θ
is written as the mean of pseudo-values φ_r (θ plus its influence, so mean_r φ_r = θ exactly):

* ``trace_cov`` — θ = tr Σ̂, φ_r = u_r;
* ``work_norm_var`` — θ = tr Σ̂ · c̄ (Glynn & Whitt 1992), φ_r = θ + c̄ (u_r − tr Σ̂) + tr Σ̂ (c_r − c̄);
* ``mse`` — θ = mean_r e_r, unbiased for E‖g_r − g*‖² (only for two cells with the same exact reference:
  with an estimated one the reference's error is shared by all replicates, and the paired s.e. would omit it);
* ``snr`` — θ = √(m/tr Σ̂), m = ‖ḡ‖² − tr Σ̂/n (unbiased for ‖E g‖²): the global SNR ‖E g‖/√tr Σ,
  φ_r = θ (1 + ½[(2 p_r − (u_r − tr Σ̂)/n)/m − (u_r − tr Σ̂)/tr Σ̂]); undefined when m ≤ 0. The coordinate-wise
  SNR of the ``snr`` protocol (median over j of |ḡ_j|/s_j) is not compared: a median over coordinates is not a
  smooth function of per-replicate scalars, so pairing it would need the full R × P gradients of both cells.

For two paired cells A and B: L = log θ_A − log θ_B with influence ψ_r = (φ^A_r − θ_A)/θ_A − (φ^B_r − θ_B)/θ_B,
s.e.(L) = sd(ψ)/√n (delta method); the ratio's 95 % interval is exp(L ± t_{0.975,n−1} s.e.). The noise shared by
A and B makes ψ^A_r and ψ^B_r correlated, so Var(ψ) = Var(ψ^A) + Var(ψ^B) − 2 Cov(ψ^A, ψ^B) is smaller than the
unpaired sum — the gain of pairing, whose correlation the row's method records. The p-value (``…_pvalue``, the
multiplicity family) is the paired bootstrap-t of L: replicate pairs resampled together, L* and s.e.* recomputed in
each of B = 1999 resamples, p = (1 + #{|L* − L|/s.e.* ≥ |L|/s.e.})/(B + 1) (Hall 1992); when no resample reaches
the observed value, p is refined by the t law on n − 1 df (as the bias test does), so that BH can rank it. On skewed replicates the
normal-theory t on L is anti-conservative (lognormal replicates, n = 200: 12 % at α = 5 %) while the bootstrap-t
keeps its level for tr Σ; the t p-value is kept in the method. A second p-value (``…_pvalue_flip``): the
studentised sign-flip test of d_r = φ^A_r − φ^B_r, whose mean is θ_A − θ_B (for tr Σ, d_r = n/(n−1)(‖g^A_r − ḡ^A‖²
− ‖g^B_r − ḡ^B‖²)); B = 1999 flips; asymptotically exact without symmetry when studentised (Janssen 1999); not for
SNR, whose pseudo-values are only a linearisation (anti-conservative on skewed replicates). Over the run the
``…_pvalue`` rows of every pair, group and quantity form one family: Benjamini–Hochberg q-values
(``gradbench.stats.bh_qvalues``). Every s.e. needs a finite fourth moment: the rows carry ``variance``'s
heavy-tail warning of either cell (the SNR p-value is anti-conservative on such replicates: 9–10 % at α = 5 %).

Assumption: the pairs (g^A_r, g^B_r) are i.i.d. over r. It holds when replicate r of both estimators uses the
same slice of the generator's stream (the same noise shape per replicate: e.g. iwae and dreg at the same K). With
different shapes (different K), replicate r of A may share noise with replicates r' ≠ r of B; those
cross-replicate covariances are ignored (for the positive correlations common random numbers create, the s.e. is
then too large: conservative, and the pairing gain small).
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.protocols.bias import reference_noise
from gradbench.protocols.mse import heavy_tail_warning
from gradbench.seeding import derive_seed
from gradbench.stats import bh_qvalues, influence_se

SIDE = "paired"  # the side table's name (cells/<id>.paired.parquet → paired.parquet)
QUANTITIES = ("trace_cov", "work_norm_var", "mse", "snr")
N_FLIPS = 1999
PAIR_KEYS = ("target_id", "seed", "device")  # cells whose replicate r saw the same noise
FRAME_ATTR = "_paired_frame"  # the per-replicate frame, cached on the sample for the side table


def replicate_frame(sample: GradSample, reference: Reference | None) -> pd.DataFrame:
    """Per replicate and parameter group: ``replicate, param_group, finite, cost, sqdev`` ‖g_r − ḡ‖²,
    ``proj`` ḡᵀ(g_r − ḡ), ``mean_sq`` ‖ḡ‖², ``sqerr`` ‖g_r − g*‖² (NaN without a reference) and ``ref_exact``."""
    fs = FiniteSample.of(sample)
    ok = ~sample.diagnostics["nonfinite"].cpu().numpy()
    cost = sample.cost.detach().cpu().double().numpy()
    idx = np.flatnonzero(ok)
    ref = None if reference is None else reference.value.detach().cpu().double().numpy()
    exact = reference is not None and reference_noise(reference).exact
    parts = []
    for name, sl in group_slices(sample.layout).items():
        G = fs.G[:, sl]
        mean = G.mean(0)
        centred = G - mean
        frame = {"replicate": np.arange(len(ok)), "param_group": name, "finite": ok, "cost": cost}
        for col, vals in (("sqdev", (centred ** 2).sum(1)), ("proj", centred @ mean),
                          ("sqerr", ((G - ref[sl]) ** 2).sum(1) if ref is not None else np.full(len(idx), np.nan))):
            full = np.full(len(ok), np.nan)
            full[idx] = vals
            frame[col] = full
        frame["mean_sq"] = float(mean @ mean)
        frame["ref_exact"] = exact
        parts.append(pd.DataFrame(frame))
    return pd.concat(parts, ignore_index=True)


def paired(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    """The cell's per-replicate summaries (kept for the side table) and one row per group: the replicates
    available for pairing."""
    frame = replicate_frame(sample, reference)
    object.__setattr__(sample, FRAME_ATTR, frame)
    n = int(frame["finite"].sum() // frame["param_group"].nunique())
    G = FiniteSample.of(sample).G
    warn = heavy_tail_warning(G) if G.shape[0] > 1 else ""  # the paired rows copy it: their s.e. need 4th moments
    return [row(g, "paired_replicates", n, math.nan,
                "finite replicates kept per replicate in paired.parquet; paired tests are run-level rows", warn)
            for g in dict.fromkeys(frame["param_group"])]


def side_frame(cell: Any, sample: GradSample) -> pd.DataFrame | None:
    """The side table of a cell: its per-replicate frame with the cell's identity and objective."""
    frame = getattr(sample, FRAME_ATTR, None)
    if frame is None:
        return None
    from gradbench import registry

    return frame.assign(cell_id=cell.cell_id, target_id=cell.target.target_id, seed=cell.target.suite_seed,
                        device=cell.device, estimator=cell.estimator,
                        estimator_params=json.dumps(cell.estimator_params, sort_keys=True, default=str),
                        objective=registry.objective_key(cell.estimator, cell.estimator_params))


# -- the statistics --------------------------------------------------------------------------------
def pseudo_values(quantity: str, sqdev: np.ndarray, proj: np.ndarray, mean_sq: float, sqerr: np.ndarray,
                  cost: np.ndarray) -> tuple[float, np.ndarray]:
    """(θ, φ_r) of one cell and group, with mean_r φ_r = θ (see the module docstring); θ = NaN if undefined."""
    n = len(sqdev)
    u = sqdev * n / (n - 1)
    trace = float(u.mean())
    if quantity == "trace_cov":
        return trace, u
    if quantity == "work_norm_var":
        cbar = float(cost.mean())
        theta = trace * cbar
        return theta, theta + cbar * (u - trace) + trace * (cost - cbar)
    if quantity == "mse":
        return float(sqerr.mean()), sqerr
    if quantity == "snr":
        m = mean_sq - trace / n
        if not (m > 0 and trace > 0):
            return math.nan, np.full(n, math.nan)
        theta = math.sqrt(m / trace)
        return theta, theta * (1 + 0.5 * ((2 * proj - (u - trace) / n) / m - (u - trace) / trace))
    raise ValueError(f"unknown quantity {quantity!r}")


CHUNK = 2 ** 22  # resampling entries per block (B × n floats: 32 MiB), so n = 10⁵ replicates stays in memory


def _blocks(n: int, n_draws: int) -> list[int]:
    """Sizes of the blocks of resamples drawn at once (each ≤ CHUNK entries)."""
    per = max(1, CHUNK // max(n, 1))
    return [min(per, n_draws - i) for i in range(0, n_draws, per)]


def sign_flip_p(d: np.ndarray, rng: np.random.Generator, n_flips: int = N_FLIPS) -> float:
    """Two-sided studentised sign-flip p-value of H0: E d_r = 0, (1 + #{|T*| ≥ |T|})/(B + 1) with
    T = mean(d)/(sd(d)/√n) (Janssen 1999: studentised, asymptotically exact without symmetry)."""
    n = len(d)

    def t_stat(means: np.ndarray) -> np.ndarray:
        var = (float(d @ d) - n * means ** 2) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(means) / np.sqrt(np.maximum(var, 0.0) / n)

    obs = t_stat(np.array([d.mean()]))[0]
    if not math.isfinite(obs):
        return math.nan
    hits = 0
    for b in _blocks(n, n_flips):
        signs = rng.integers(0, 2, size=(b, n), dtype=np.int8).astype(np.float64) * 2 - 1
        hits += int(np.count_nonzero(t_stat(signs @ d / n) >= obs * (1 - 1e-12)))
    return float((1 + hits) / (n_flips + 1))


def bootstrap_t_p(theta_a: float, phi_a: np.ndarray, theta_b: float, phi_b: np.ndarray, rng: np.random.Generator,
                  n_boot: int = N_FLIPS) -> float:
    """Two-sided paired bootstrap-t p-value of H0: θ_A = θ_B on the log scale: replicate pairs resampled together
    (counts w of n pairs drawn with replacement), L* = log(w·φ_A/n) − log(w·φ_B/n) and its s.e.* from the resampled ψ (the delta method
    inside each resample); p = (1 + #{|L* − L|/s.e.* ≥ |L|/s.e.})/(B + 1) (Hall 1992, §3.10: the studentised
    statistic corrects the log ratio's skewness to second order)."""
    n = len(phi_a)
    log_ratio = math.log(theta_a / theta_b)
    se = influence_se(phi_a / theta_a - phi_b / theta_b)
    obs = abs(log_ratio) / se
    if not math.isfinite(obs):
        return math.nan
    vecs = np.stack([phi_a, phi_b, phi_a ** 2, phi_b ** 2, phi_a * phi_b], axis=1)
    hits = 0
    for b in _blocks(n, n_boot):
        idx = rng.integers(0, n, size=(b, n))  # b resamples of n pairs, as counts per pair
        W = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        ma, mb, saa, sbb, sab = (W @ vecs / n).T
        with np.errstate(divide="ignore", invalid="ignore"):
            var = (saa / ma ** 2 - 2 * sab / (ma * mb) + sbb / mb ** 2) / (n - 1)  # mean ψ* = 0 in a resample
            t = np.abs(np.log(ma / mb) - log_ratio) / np.sqrt(np.maximum(var, 0.0))
        hits += int(np.count_nonzero(~(t < obs * (1 - 1e-12))))  # an undefined resample (θ* ≤ 0) counts as extreme
    return float((1 + hits) / (n_boot + 1))


def paired_log_ratio(theta_a: float, phi_a: np.ndarray, theta_b: float, phi_b: np.ndarray,
                     rng: np.random.Generator | None = None, flip: bool = True) -> dict[str, float]:
    """The paired test of θ_A = θ_B: log-ratio L ± s.e., the ratio's 95 % interval (t on n − 1 df), the t-test
    p-value ``p_t``; with ``rng`` the paired bootstrap-t p-value ``p_boot`` and the sign-flip p-value ``p_flip`` of
    the differences; the correlation of the two cells' influences."""
    n = len(phi_a)
    nan = {"log_ratio": math.nan, "se": math.nan, "p_t": math.nan, "p_boot": math.nan, "low": math.nan,
           "high": math.nan, "p_flip": math.nan, "corr": math.nan, "n": n}
    if n < 3 or not (theta_a > 0 and theta_b > 0) or not (np.isfinite(phi_a).all() and np.isfinite(phi_b).all()):
        return nan
    psi_a, psi_b = phi_a / theta_a - 1, phi_b / theta_b - 1
    log_ratio = math.log(theta_a) - math.log(theta_b)
    se = influence_se(psi_a - psi_b)
    if not se > 0:
        return {**nan, "log_ratio": log_ratio, "se": se}
    t = st.t.ppf(0.975, n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = float(np.corrcoef(psi_a, psi_b)[0, 1])
    p_t = float(2 * st.t.sf(abs(log_ratio) / se, n - 1))
    p_boot = bootstrap_t_p(theta_a, phi_a, theta_b, phi_b, rng) if rng is not None else math.nan
    if p_boot <= 1.0 / (N_FLIPS + 1):  # no resample reached |t|: refined by the t law, so that BH can rank it
        p_boot = min(p_boot, p_t)
    return {"log_ratio": log_ratio, "se": se, "p_t": p_t,
            "low": math.exp(log_ratio - t * se), "high": math.exp(log_ratio + t * se), "p_boot": p_boot,
            "p_flip": sign_flip_p(phi_a - phi_b, rng) if rng is not None and flip else math.nan, "corr": corr, "n": n}


def _resampled_log_ratio(phi_a: np.ndarray, phi_b: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L*, s.e.*²) of the log ratio for resampling counts W [b, n] of the n pairs (W = 1: the observed values)."""
    n = len(phi_a)
    vecs = np.stack([phi_a, phi_b, phi_a ** 2, phi_b ** 2, phi_a * phi_b], axis=1)
    ma, mb, saa, sbb, sab = (W @ vecs / n).T
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (saa / ma ** 2 - 2 * sab / (ma * mb) + sbb / mb ** 2) / (n - 1)  # mean ψ* = 0 in a resample
        return np.log(ma / mb), np.maximum(var, 0.0)


def two_run_bootstrap_t_p(run_a: tuple[np.ndarray, np.ndarray], run_b: tuple[np.ndarray, np.ndarray],
                          rng: np.random.Generator, n_boot: int = N_FLIPS) -> tuple[float, float, float]:
    """(D, s.e.(D), p): did one pair's log ratio L = log θ_A − log θ_B change between two independent runs?

    Each run gives its pseudo-values (φ_A, φ_B) of the pair (:func:`pseudo_values`); D = L₂ − L₁ with
    s.e.(D)² = s.e.(L₁)² + s.e.(L₂)² (paired delta method within each run, independent runs). The p-value of
    H0: E L₁ = E L₂ is the two-sample bootstrap-t: the pairs of each run resampled within that run, D* and s.e.*(D)
    recomputed, p = (1 + #{|D* − D|/s.e.* ≥ |D|/s.e.})/(B + 1) (Hall 1992, §3.10; the studentised bootstrap of a
    difference of two smooth functions of means), refined by the normal law of D/s.e. when no resample reaches it. Measured on lognormal replicates (n = 200 per run, tr Σ, 1000
    run pairs; B = 999): 0.5 % / 3.5 % rejections at α = 1 % / 5 %, where the normal-theory z on D gave 3.3 % /
    10.5 % (4000 pairs). For SNR, whose pseudo-values are a linearisation, it is anti-conservative on such
    replicates (2.2 % / 9.2 %), as the within-run SNR test is (module docstring)."""
    (L1, V1), (L2, V2) = (_resampled_log_ratio(*r, np.ones((1, len(r[0])))) for r in (run_a, run_b))
    D, se = float(L2[0] - L1[0]), math.sqrt(float(V1[0] + V2[0]))
    obs = abs(D) / se
    if not math.isfinite(obs):
        return D, se, math.nan
    hits = 0
    for b in _blocks(max(len(run_a[0]), len(run_b[0])), n_boot):
        draws = []
        for phi_a, phi_b in (run_a, run_b):
            n = len(phi_a)
            idx = rng.integers(0, n, size=(b, n))
            W = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
            draws.append(_resampled_log_ratio(phi_a, phi_b, W))
        (l1, v1), (l2, v2) = draws
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(l2 - l1 - D) / np.sqrt(v1 + v2)
        hits += int(np.count_nonzero(~(t < obs * (1 - 1e-12))))  # an undefined resample counts as extreme
    p = (1 + hits) / (n_boot + 1)
    if hits == 0:  # no resample reached |D|/s.e.: refined by the normal law, so that Holm/BH can rank it
        p = min(p, float(2 * st.norm.sf(obs)))
    return D, se, float(p)


def pair_pseudo_values(ga: pd.DataFrame, gb: pd.DataFrame, quantity: str
                       ) -> tuple[tuple[float, np.ndarray], tuple[float, np.ndarray]] | None:
    """(θ_A, φ_A), (θ_B, φ_B) of one quantity from two cells' side-table rows of one group on their common finite
    replicates; None when they cannot be paired (:func:`_pairable`)."""
    if _pairable(ga, gb):
        return None
    ok = ga["finite"].to_numpy(bool) & gb["finite"].to_numpy(bool)
    a, b = (pseudo_values(quantity, *(g.loc[ok, c].to_numpy(float) for c in ("sqdev", "proj")),
                          float(g["mean_sq"].iloc[0]), *(g.loc[ok, c].to_numpy(float) for c in ("sqerr", "cost")))
            for g in (ga, gb))
    return a, b


# -- run level -------------------------------------------------------------------------------------
METRICS_OF = {q: (f"paired_{q}_log_ratio", f"paired_{q}_pvalue", f"paired_{q}_pvalue_flip", f"paired_{q}_qvalue")
              for q in QUANTITIES}


def _pairable(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """Why two cells' replicates cannot be paired ("" when they can)."""
    if len(a) != len(b):
        return "different numbers of replicates"
    if not np.array_equal(a["finite"].to_numpy(bool), b["finite"].to_numpy(bool)):
        return "different replicates are non-finite"
    return ""


def pair_rows(table: pd.DataFrame, sides: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """Every paired test of the run: per pair of cells on the same target, seed and device (A before B in suite
    order), parameter group and quantity, rows ``paired_<q>_log_ratio`` (value L, s.e.), ``…_pvalue``,
    ``…_pvalue_flip`` and ``…_qvalue`` (BH over the run's paired p-values). Each row copies A's
    ``paired_replicates`` row and names B in the ``versus`` column (B's cell id) and in ``method``."""
    side = sides.get(SIDE)
    if side is None or side.empty or table.empty or "metric" not in table:
        return table.iloc[0:0]
    anchors = table[table["metric"] == "paired_replicates"].set_index(["cell_id", "param_group"])
    order = list(dict.fromkeys(table["cell_id"]))
    side = side[side["cell_id"].isin(order)]
    cells = side.drop_duplicates("cell_id").set_index("cell_id").loc[[c for c in order if c in set(side["cell_id"])]]
    by_cell = {c: g for c, g in side.groupby("cell_id", sort=False)}
    out: list[dict[str, Any]] = []
    for _, same in cells.groupby(list(PAIR_KEYS), sort=False):
        for ca, cb in combinations(list(same.index), 2):
            for group, ga in by_cell[ca].groupby("param_group", sort=False):
                gb = by_cell[cb][by_cell[cb]["param_group"] == group]
                if (ca, group) not in anchors.index or gb.empty:
                    continue
                warn_b = anchors.at[(cb, group), "warning"] if (cb, group) in anchors.index else ""
                out += _pair_group_rows(anchors.loc[(ca, group)], warn_b, ca, cb, group, ga, gb, cells)
    if not out:
        return table.iloc[0:0]
    rows = pd.DataFrame(out)
    is_p = rows["metric"].str.endswith("_pvalue")
    q = bh_qvalues(rows.loc[is_p, "value"].to_numpy(float))
    m = int(np.isfinite(q).sum())
    qrows = rows[is_p].assign(metric=rows.loc[is_p, "metric"].str.replace("_pvalue", "_qvalue"), value=q,
                              stderr=math.nan,
                              method=f"Benjamini-Hochberg q-value over the run's {m} paired tests (every pair, "
                                     "parameter group and quantity)")
    rows = pd.concat([rows, qrows], ignore_index=True)
    return rows.reindex(columns=list(dict.fromkeys([*table.columns, "versus"])))


def _pair_group_rows(anchor: pd.Series, warn_b: Any, ca: str, cb: str, group: str, ga: pd.DataFrame,
                     gb: pd.DataFrame, cells: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of one pair and group: A's anchor row's cell columns, the warnings of both cells (B's prefixed)."""
    warns = [w for w in (anchor.get("warning", ""), f"B: {warn_b}" if isinstance(warn_b, str) and warn_b else "")
             if isinstance(w, str) and w]
    base = {**anchor.to_dict(), "cell_id": ca, "param_group": group, "protocol": SIDE, "versus": cb,
            "warning": "; ".join(warns)}
    def name(c: str) -> str:
        params = cells.at[c, "estimator_params"] if "estimator_params" in cells else ""
        return f"{cells.at[c, 'estimator']} {params}".strip()

    vs = f"A = {name(ca)} vs B = {name(cb)} (cell {cb})"
    why = _pairable(ga, gb)
    shared_exact = bool(ga["ref_exact"].iloc[0]) and bool(gb["ref_exact"].iloc[0]) \
        and cells.at[ca, "objective"] == cells.at[cb, "objective"]
    rows = []
    for q in QUANTITIES:
        if q == "mse" and not shared_exact:
            continue  # MSE is compared only against one shared exact reference
        if why:
            res = paired_log_ratio(math.nan, np.zeros(0), math.nan, np.zeros(0))
            note = f"not paired: {why}"
        else:
            thetas = pair_pseudo_values(ga, gb, q)
            assert thetas is not None
            rng = np.random.default_rng(derive_seed(ca, cb, group, q, "paired-resampling"))
            res = paired_log_ratio(*thetas[0], *thetas[1], rng, flip=q != "snr")
            note = (f"n = {res['n']} pairs, corr(psi_A, psi_B) = {res['corr']:.3g}, ratio 95% CI "
                    f"[{res['low']:.4g}, {res['high']:.4g}], paired t p = {res['p_t']:.3g}")
        log_m, p_m, flip_m, _ = METRICS_OF[q]
        rows += [
            {**base, "metric": log_m, "value": res["log_ratio"], "stderr": res["se"],
             "method": f"log({q}_A / {q}_B), delta method on paired replicates; {vs}; {note}"},
            {**base, "metric": p_m, "value": res["p_boot"], "stderr": math.nan,
             "method": f"two-sided paired bootstrap-t of the log ratio ({N_FLIPS} resamples); {vs}; {note}"},
        ]
        if q != "snr":  # SNR's pseudo-values are a linearisation: their sign-flip test is anti-conservative on skew
            rows.append({**base, "metric": flip_m, "value": res["p_flip"], "stderr": math.nan,
                         "method": f"studentised sign-flip test of phi_A - phi_B ({N_FLIPS} flips); {vs}; {note}"})
    return rows
