"""Compare two runs metric by metric, with a test per change and a multiplicity correction.

**Alignment by content.** A row of run A matches a row of run B when they agree on the model,
every parameter column (``model.*``, ``proposal.*``, ``estimator.*``, … — the union of both
runs' columns, a missing column reading as "absent"), ``estimator``, ``protocol``,
``param_group``, ``metric``, ``dtype`` and ``device`` — and, for a run-level row about a pair of
cells (the paired protocol's, with a ``versus`` cell id), on the partner cell's content too. The
seed, ids, replicate counts and provenance are not part of the key. Numbers compare by value (``2`` = ``2.0``).

**Same problem instances.** A synthetic target's parameters and data are drawn from the suite
seed, so two runs with different seeds measure *different* targets, and every metric may truly
differ. When both runs stored their targets (``targets/<id>.npz``), aligned targets must hold the
same arrays; otherwise :class:`InstanceMismatch` is raised (``--allow-different-targets``
compares anyway and says so). To replicate a run with independent Monte Carlo noise the target
must stay fixed while the noise seed changes.

**Tests** (all two-sided; a change is *worse* in the metric's bad direction). Which metric gets which test
is its protocol's spec's ``rules`` (:attr:`gradbench.protocols.spec.ProtocolSpec.rules`):
* ratio metrics — ``trace_cov``, ``mse``, ``work_norm_var``, ``evals_mean``, SNR
  (``snr_median``, ``snr_q50``), ``tau_mean`` (when raw τ are not in both runs),
  ``seconds_per_estimate``, ``evals_per_second``, ``work_norm_var_seconds``:
  z = log(v_B / v_A) / √((se_A/v_A)² + (se_B/v_B)²)
  (delta method, se(log v) = se/v); with both s.e. zero any difference is deterministic (p = 0).
  Assumptions, printed with the output: each value is approximately normal on the log scale with
  the stated s.e. (large replicate counts; the s.e. itself is treated as exact), the two runs are
  independent (runs sharing noise seeds are positively correlated, which makes the test
  conservative), and the values are positive (otherwise a difference z-test). Heavy tails
  (``tail_index`` ≤ 2) void the first assumption: such rows carry a warning in their run;
* bias — ``rel_bias``: the *debiased* squared relative bias q = r² − tr Σ̂ / (n ‖g*‖²)
  (‖ḡ − g*‖² overshoots ‖b‖² by tr Σ / n, so runs with different replicate counts stay
  comparable), z = (q_B − q_A) / √(se_A² + se_B²), se(q)² = (2 r se_r)² + (se(tr Σ̂)/(n‖g*‖²))²;
  without ``trace_cov`` a plain difference of ``rel_bias``;
* paired log ratios — ``paired_<q>_log_ratio`` (L = log θ_A − log θ_B of two cells A, B sharing noise within a
  run, with its paired delta-method s.e.; shown as "A vs B"): D = L_run2 − L_run1 with
  s.e.(D) = √(se₁² + se₂²) (independent runs). With ``paired.parquet`` in both runs, the two-sample bootstrap-t of
  D (:func:`paired_log_ratio_test`, the paired protocol's ``compare_tests``; pairs resampled within each run); else
  the z on D (Rule kind ``log_diff``), anti-conservative on heavy-tailed replicates (lognormal: 3.3 % / 10.5 % at
  α = 1 % / 5 %, against 0.5 % / 3.5 % for the bootstrap-t; :func:`gradbench.protocols.paired.two_run_bootstrap_t_p`).
  The change is exp(D), the factor by which the A/B ratio moved, and ``rtol`` applies to it. A row aligns with the
  row of the *same pair*: the partner cell (``versus``) is part of the key. The pair's p- and q-value rows are
  shown, not tested;
* meeting times — raw τ per replicate (``meeting_times.parquet``) in both runs: Mann–Whitney U
  (a shift of the τ distribution; censored τ count at the cap), the meeting protocol's ``compare_tests``;
* non-finite replicates — Fisher's exact test on the non-finite fraction, when either run has any.
Other metrics (``mean_var``, ``bias_norm``, p-values, quantiles, …) are shown, not tested: they
repeat a tested quantity or are test outputs themselves. A testable metric whose standard error
is missing (NaN) on either side is *not tested* (never treated as exact) and listed as such.

**Multiplicity.** Holm's step-down correction over every test of the comparison controls the
family-wise error rate at α (default 0.01). A *regression* is a change significant after Holm,
in the worse direction, and (for ratio metrics) larger than ``rtol`` in relative terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from gradbench import registry
from gradbench.protocols.spec import Rule, resolve
from gradbench.report.data import RunData, RunError, load_run, param_columns
from gradbench.report.format import DEFAULT_ALPHA, fmt_p, fmt_value
from gradbench.stats import holm_adjust

NOT_TESTED_SE = "not tested: missing s.e."
LOG_DIFF_TEST = "log difference z"  # Rule kind "log_diff": z on the difference of two runs' log values
PAIRED_BOOT_TEST = "log difference bootstrap-t"  # the paired protocol's compare test (paired.parquet in both runs)
LOG_DIFF_PREFIX = "log difference"  # tests whose effect is a change of a log value: shown and rtol'd as exp(effect)
LOG_RATIO_ASSUMPTIONS = ("log-ratio z assumes: approximately normal values with the stated s.e., independent runs "
                         "(shared noise seeds make it conservative), finite variance (see tail_index warnings)")
KEY_COLUMNS = ["model", "estimator", "protocol", "param_group", "metric", "dtype", "device"]
CELL_LEVEL = {"protocol", "param_group", "metric"}
TARGET_PREFIXES = ("model.", "proposal.")  # with --allow-different-targets, not part of the key
TARGET_KEYS = {"dtype", "device"}
VERSUS_KEY = "_versus"  # the partner cell's content key of a pair's row (paired protocol), "" otherwise
TARGET_SEED_HINT = ("give both runs the same target_seed (in the suite, or `gradbench run --target-seed N`) and "
                    "change only --seed, or pass --allow-different-targets")


def rule_for(protocol: str, metric: str) -> Rule | None:
    """How a change of ``metric`` from ``protocol`` is tested: its spec's :attr:`ProtocolSpec.rules` (None: shown,
    not tested)."""
    spec = registry.PROTOCOLS.get(protocol)
    return None if spec is None else spec.rules.get(metric)


class InstanceMismatch(RunError):
    """The two runs measured different target instances (e.g. different suite seeds)."""


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per aligned metric (+ raw-τ and non-finite tests)
    alpha: float
    rtol: float
    n_a: int
    n_b: int
    only_a: int
    only_b: int
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["flag"] == "regression"]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.table[self.table["flag"] == "improvement"]

    @property
    def n_tests(self) -> int:
        return int(self.table["p"].notna().sum())


# -- alignment ----------------------------------------------------------------------------------
def _canon(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return repr(float(v))
    return str(v)


def _keys(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Content key per row; duplicates of a key (e.g. targets differing only by a data file) are
    told apart by their order of appearance."""
    parts = [df[c].map(_canon) if c in df else pd.Series("", index=df.index) for c in columns]
    key = parts[0].str.cat([c + "=" + p for c, p in zip(columns[1:], parts[1:])], sep="|") if parts else ""
    return key + "#" + key.groupby(key).cumcount().astype(str)


def align(a: RunData, b: RunData, *, across_targets: bool = False) -> tuple[pd.DataFrame, int, int]:
    """Inner join of the two tidy tables on the content key; also counts rows only in A / only in B.

    ``across_targets`` (``--allow-different-targets``) leaves what describes the target instance
    (``model.*``, ``proposal.*``, ``dtype``, ``device``) out of the key: cells then align by model,
    estimator and its parameters, targets matched in suite order."""
    pcols = sorted(set(param_columns(a.results)) | set(param_columns(b.results)))
    if across_targets:
        pcols = [c for c in pcols if not c.startswith(TARGET_PREFIXES)]
    columns = [c for c in KEY_COLUMNS if (c in a.results or c in b.results)
               and not (across_targets and c in TARGET_KEYS)] + pcols
    cell_columns = [c for c in columns if c not in CELL_LEVEL]
    frames = []
    for run in (a, b):
        r = run.results.copy()
        if "versus" not in r:
            r["versus"] = None
        cells = run.cells.copy()
        cells["_cell"] = _keys(cells, cell_columns)
        # a pair's row (``versus``: the partner's cell id, which differs between runs) is keyed by the partner's content
        partner = cells.set_index("cell_id")["_cell"]
        r[VERSUS_KEY] = r["versus"].map(partner).fillna("")
        r["_key"] = _keys(r, [*columns, VERSUS_KEY])
        r = r.merge(cells[["cell_id", "_cell"]], on="cell_id", how="left")
        frames.append(r)
    fa, fb = frames
    keep = ["_key", "_cell", "cell_id", "versus", "estimator", "protocol", "param_group", "metric", "value", "stderr",
            "n_replicates", "n_nonfinite"]
    keep_a = [c for c in keep if c in fa]
    keep_b = [c for c in keep if c in fb and c not in ("_cell", "estimator", "protocol", "param_group", "metric")]
    m = fa[keep_a].merge(fb[keep_b], on="_key", suffixes=("_a", "_b"))
    only_a = int((~fa["_key"].isin(fb["_key"])).sum())
    only_b = int((~fb["_key"].isin(fa["_key"])).sum())
    return m, only_a, only_b


def check_instances(a: RunData, b: RunData, aligned: pd.DataFrame) -> tuple[int, int]:
    """(targets checked, targets whose stored arrays differ) over the aligned cells' targets."""
    if "target_id" not in a.cells or "target_id" not in b.cells:
        return 0, 0
    ta = a.cells.set_index("cell_id")["target_id"]
    tb = b.cells.set_index("cell_id")["target_id"]
    pairs = {(ta.get(ca), tb.get(cb)) for ca, cb in zip(aligned["cell_id_a"], aligned["cell_id_b"])}
    checked = differ = 0
    for ida, idb in sorted(pairs, key=str):
        pa, pb = a.path / "targets" / f"{ida}.npz", b.path / "targets" / f"{idb}.npz"
        if not (pa.is_file() and pb.is_file()):
            continue
        checked += 1
        if ida == idb:
            continue
        with np.load(pa) as za, np.load(pb) as zb:
            same = set(za.files) == set(zb.files) and all(
                za[k].shape == zb[k].shape and np.allclose(za[k], zb[k], rtol=1e-12, atol=0, equal_nan=True)
                for k in za.files)
        differ += not same
    return checked, differ


# -- tests --------------------------------------------------------------------------------------
def _p_from_z(z: float) -> float:
    return float(2 * sps.norm.sf(abs(z)))


def ratio_test(va: float, sa: float, vb: float, sb: float) -> tuple[float, float, str]:
    """(p, B/A, method) for a positive quantity; falls back to a difference test otherwise."""
    if not (np.isfinite(va) and np.isfinite(vb)):
        return math.nan, math.nan, "untestable: non-finite value"
    if va <= 0 or vb <= 0:
        p, _d, method = diff_test(va, sa, vb, sb)
        return p, math.nan, method
    if not (np.isfinite(sa) and np.isfinite(sb)):
        return math.nan, vb / va, NOT_TESTED_SE
    lr = math.log(vb / va)
    se = math.hypot(sa / va, sb / vb)
    if se == 0:
        return (1.0 if abs(lr) < 1e-12 else 0.0), vb / va, "exact (no s.e.)"
    return _p_from_z(lr / se), vb / va, "log-ratio z"


def diff_test(va: float, sa: float, vb: float, sb: float) -> tuple[float, float, str]:
    if not (np.isfinite(va) and np.isfinite(vb)):
        return math.nan, math.nan, "untestable: non-finite value"
    d = vb - va
    if not (np.isfinite(sa) and np.isfinite(sb)):
        return math.nan, d, NOT_TESTED_SE
    se = math.hypot(sa, sb)
    if se == 0:
        return (1.0 if d == 0 else 0.0), d, "exact (no s.e.)"
    return _p_from_z(d / se), d, "difference z"


def _debiased_sq_bias(rel: float, rel_se: float, norm: float, trace: float, trace_se: float, n: float
                      ) -> tuple[float, float] | None:
    """q = r² − tr Σ̂/(n G²) with G = ‖g*‖ = bias_norm / rel_bias, and its delta-method s.e."""
    vals = [rel, rel_se, norm, trace, trace_se, n]
    if not all(np.isfinite(v) for v in vals) or rel <= 0 or norm <= 0 or n < 2:
        return None
    g2 = (norm / rel) ** 2
    q = rel**2 - trace / (n * g2)
    se = math.hypot(2 * rel * rel_se, trace_se / (n * g2))
    return q, se


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries are ignored and stay NaN): :func:`gradbench.stats.holm_adjust`,
    the one implementation the bias protocol also uses."""
    return holm_adjust(p)


# -- comparison ---------------------------------------------------------------------------------
def compare_runs(run_a: str | Path | RunData, run_b: str | Path | RunData, *, alpha: float = DEFAULT_ALPHA,
                 rtol: float = 0.0, skip: tuple[str, ...] = (), allow_different_targets: bool = False) -> Comparison:
    a = run_a if isinstance(run_a, RunData) else load_run(run_a)
    b = run_b if isinstance(run_b, RunData) else load_run(run_b)
    if not 0 < alpha < 1:
        raise RunError(f"alpha must be in (0, 1), got {alpha}")
    m, only_a, only_b = align(a, b, across_targets=allow_different_targets)
    if skip:
        m = m[~m["protocol"].isin(skip) & ~m["metric"].isin(skip)]
    if m.empty:
        hint = ("" if allow_different_targets else
                "; if only the targets changed (proposal, model parameters, dtype), pass --allow-different-targets")
        raise RunError(f"nothing to compare: no metric row of {a.path} matches one of {b.path} by content "
                       f"(different models, parameters, estimators, protocols, dtype or device?){hint}")
    notes = []
    checked, differ = check_instances(a, b, m)
    if differ:
        msg = (f"{differ} of {checked} aligned target(s) hold different parameters/data in the two runs "
               "(different target seeds, data files or target parameters): the metrics describe different problem "
               "instances")
        if not allow_different_targets:
            raise InstanceMismatch(msg + "; " + TARGET_SEED_HINT)
        notes.append("warning: " + msg + "; changes below include the change of instance")
    elif checked == 0:
        notes.append("targets not checked (no targets/*.npz in both runs)")

    wide = {run: _cell_metrics(run_df) for run, run_df in (("a", a.results), ("b", b.results))}
    side = [resolve(test)(a, b, m) for spec in registry.PROTOCOLS.values() if spec.name not in skip
            for test in spec.compare_tests]  # e.g. the meeting protocol's raw-τ test
    superseded = {key for _, keys in side for key in keys}
    rows = []
    for _, r in m.iterrows():
        if r["_key"] in superseded:  # a compare test's row replaces this very row (same pair, group and metric)
            continue
        rule = rule_for(r["protocol"], r["metric"])
        base = {"_cell": r["_cell"], "cell_id_a": r["cell_id_a"], "cell_id_b": r["cell_id_b"],
                "versus_a": r["versus_a"], "estimator": r["estimator"], "param_group": r["param_group"],
                "protocol": r["protocol"], "metric": r["metric"], "value_a": r["value_a"], "stderr_a": r["stderr_a"],
                "value_b": r["value_b"], "stderr_b": r["stderr_b"]}
        p, effect, method, worse = math.nan, math.nan, "not tested", 0
        if rule is not None and (r["_cell"], r["metric"]) not in superseded:
            if rule.kind == "ratio":
                p, effect, method = ratio_test(r["value_a"], r["stderr_a"], r["value_b"], r["stderr_b"])
                change = (r["value_b"] - r["value_a"])
            elif rule.kind == "bias":
                qa = _bias_q(wide["a"], r["cell_id_a"], r["param_group"], r.get("n_replicates_a", math.nan))
                qb = _bias_q(wide["b"], r["cell_id_b"], r["param_group"], r.get("n_replicates_b", math.nan))
                if qa is not None and qb is not None:
                    p, effect, _ = diff_test(qa[0], qa[1], qb[0], qb[1])
                    method = "debiased ‖b‖²/‖g*‖² z"
                else:
                    p, effect, method = diff_test(r["value_a"], r["stderr_a"], r["value_b"], r["stderr_b"])
                change = effect
            elif rule.kind == "log_diff":
                p, effect, method = diff_test(r["value_a"], r["stderr_a"], r["value_b"], r["stderr_b"])
                method = LOG_DIFF_TEST if method == "difference z" else method
                change = effect
            else:
                p, effect, method = diff_test(r["value_a"], r["stderr_a"], r["value_b"], r["stderr_b"])
                change = effect
            if np.isfinite(change) and change != 0:
                worse = rule.worse * (1 if change > 0 else -1)
        rows.append({**base, "test": method, "effect": effect, "p": p, "worse": worse})
    for side_rows, _ in side:
        rows += side_rows
    rows += _nonfinite_rows(a, b, m)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy(float))
    sig = table["p_holm"] <= alpha
    practical = np.ones(len(table), bool)
    if rtol > 0:
        ratio = (table["value_b"] / table["value_a"]).abs()
        is_ratio = table["test"].isin(["log-ratio z", "exact (no s.e.)"])
        practical = ~is_ratio | ((ratio - 1).abs() > rtol)
        is_log = table["test"].str.startswith(LOG_DIFF_PREFIX)  # the A/B ratio moved by exp(D)
        practical &= ~is_log | (np.expm1(table["effect"].abs()) > rtol)
    table["flag"] = np.where(sig & (table["worse"] > 0) & practical, "regression",
                             np.where(sig & (table["worse"] < 0), "improvement", ""))
    labels = a.cells.set_index("cell_id")
    versus = table["versus_a"] if "versus_a" in table else pd.Series(None, index=table.index)
    table["cell"] = [_label(labels, c) + (f" vs {_label(labels, v)}" if isinstance(v, str) and v else "")
                     for c, v in zip(table["cell_id_a"], versus)]
    return Comparison(table, alpha, rtol, len(a.results), len(b.results), only_a, only_b, notes)


def _est(run: RunData, cell_id: str) -> str:
    return str(run.cells.set_index("cell_id").loc[cell_id, "estimator"])


def _label(cells: pd.DataFrame, cell_id: str) -> str:
    """``iwae (K=8)`` plus the target when the run has several: the estimator's parameters that
    vary in the run (see :func:`gradbench.report.data.describe_cells`), not all of them."""
    r = cells.loc[cell_id]
    return str(r["label"]) + (f" [{r['target_label']}]" if r["target_label"] else "")


def _cell_metrics(results: pd.DataFrame) -> pd.DataFrame:
    sub = results[results["metric"].isin(["rel_bias", "bias_norm", "trace_cov"])]
    return sub.drop_duplicates(["cell_id", "param_group", "metric"]).set_index(["cell_id", "param_group", "metric"])[
        ["value", "stderr"]]


def _bias_q(w: pd.DataFrame, cell_id: str, group: str, n: float) -> tuple[float, float] | None:
    def get(metric: str) -> tuple[float, float]:
        try:
            v = w.loc[(cell_id, group, metric)]
        except KeyError:
            return math.nan, math.nan
        return float(v["value"]), float(v["stderr"])

    rel, rel_se = get("rel_bias")
    norm, _ = get("bias_norm")
    trace, trace_se = get("trace_cov")
    return _debiased_sq_bias(rel, rel_se, norm, trace, trace_se, float(n))


def _raw_tau_pairs(a: RunData, b: RunData, m: pd.DataFrame) -> dict[str, tuple[str, str, np.ndarray, np.ndarray]]:
    if a.meeting is None or b.meeting is None or a.meeting.empty or b.meeting.empty:
        return {}
    ga = {k: g["tau"].to_numpy(float) for k, g in a.meeting.groupby("cell_id")}
    gb = {k: g["tau"].to_numpy(float) for k, g in b.meeting.groupby("cell_id")}
    out = {}
    for cell, ca, cb in m[["_cell", "cell_id_a", "cell_id_b"]].drop_duplicates("_cell").itertuples(index=False):
        if ca in ga and cb in gb and len(ga[ca]) > 1 and len(gb[cb]) > 1:
            out[cell] = (ca, cb, ga[ca], gb[cb])
    return out


def raw_tau_test(a: RunData, b: RunData, m: pd.DataFrame) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """The meeting protocol's compare test (``ProtocolSpec.compare_tests``): Mann–Whitney U on the raw τ of each
    aligned cell that has them in both runs (``meeting_times.parquet``); it replaces that cell's ``tau_mean``
    ratio test. Returns the rows and the (cell, metric) pairs they supersede."""
    raw_tau = _raw_tau_pairs(a, b, m)
    rows = []
    for cell, (cid_a, cid_b, ta, tb) in raw_tau.items():
        u = sps.mannwhitneyu(tb, ta, alternative="two-sided", method="asymptotic")
        auc = float(u.statistic) / (len(ta) * len(tb))  # P(τ_B > τ_A) + ½ P(=)
        rows.append({"_cell": cell, "cell_id_a": cid_a, "cell_id_b": cid_b, "estimator": _est(a, cid_a),
                     "param_group": "all", "protocol": "meeting", "metric": "tau (raw)",
                     "value_a": float(np.mean(ta)), "stderr_a": float(np.std(ta, ddof=1) / math.sqrt(len(ta))),
                     "value_b": float(np.mean(tb)), "stderr_b": float(np.std(tb, ddof=1) / math.sqrt(len(tb))),
                     "test": "Mann-Whitney U", "effect": auc, "p": float(u.pvalue),
                     "worse": 0 if auc == 0.5 else (1 if auc > 0.5 else -1)})
    return rows, {(cell, "tau_mean") for cell in raw_tau}


def paired_log_ratio_test(a: RunData, b: RunData, m: pd.DataFrame) -> tuple[list[dict[str, Any]], set[str]]:
    """The paired protocol's compare test (``ProtocolSpec.compare_tests``): for each aligned
    ``paired_<q>_log_ratio`` row whose two cells have their replicates in both runs' ``paired.parquet``, the
    two-sample bootstrap-t of D = L_B − L_A (:func:`gradbench.protocols.paired.two_run_bootstrap_t_p`); it
    replaces that row's z test (the rule ``log_diff``). Returns the rows and the row keys they supersede."""
    from gradbench.protocols.paired import SIDE, pair_pseudo_values, two_run_bootstrap_t_p
    from gradbench.seeding import derive_seed

    sides = [run.side.get(SIDE) for run in (a, b)]
    if any(sd is None or sd.empty for sd in sides) or "versus_a" not in m:
        return [], set()
    frames = [{k: g for k, g in sd.groupby(["cell_id", "param_group"], sort=False)} for sd in sides]  # type: ignore[union-attr]
    sel = m[(m["protocol"] == SIDE) & m["metric"].str.endswith("_log_ratio") & m["versus_a"].notna()
            & m["versus_b"].notna()]
    rows, done = [], set()
    for _, r in sel.iterrows():
        q, group = r["metric"][len("paired_"):-len("_log_ratio")], r["param_group"]
        pairs = []
        for run, fr in zip("ab", frames):
            ga, gb = fr.get((r[f"cell_id_{run}"], group)), fr.get((r[f"versus_{run}"], group))
            pairs.append(None if ga is None or gb is None else pair_pseudo_values(ga, gb, q))
        if pairs[0] is None or pairs[1] is None:
            continue  # not paired in a run: the rule's z on the stored values (NaN: untestable)
        rng = np.random.default_rng(derive_seed(r["cell_id_a"], r["versus_a"], r["cell_id_b"], r["versus_b"], group, q,
                                                "compare-paired"))
        (_, phi_a1), (_, phi_b1) = pairs[0]
        (_, phi_a2), (_, phi_b2) = pairs[1]
        D, _se, p = two_run_bootstrap_t_p((phi_a1, phi_b1), (phi_a2, phi_b2), rng)
        rule = rule_for(SIDE, r["metric"])
        worse = 0 if rule is None or not np.isfinite(D) or D == 0 else rule.worse * (1 if D > 0 else -1)
        rows.append({"_cell": r["_cell"], "cell_id_a": r["cell_id_a"], "cell_id_b": r["cell_id_b"],
                     "versus_a": r["versus_a"], "estimator": r["estimator"], "param_group": group, "protocol": SIDE,
                     "metric": r["metric"], "value_a": r["value_a"], "stderr_a": r["stderr_a"],
                     "value_b": r["value_b"], "stderr_b": r["stderr_b"],
                     "test": PAIRED_BOOT_TEST if math.isfinite(p) else "untestable: undefined log ratio",
                     "effect": D, "p": p, "worse": worse})
        done.add(r["_key"])
    return rows, done


def _nonfinite_rows(a: RunData, b: RunData, m: pd.DataFrame) -> list[dict[str, Any]]:
    if "n_nonfinite" not in a.cells or "n_nonfinite" not in b.cells:
        return []
    ca, cb = a.cells.set_index("cell_id"), b.cells.set_index("cell_id")
    rows = []
    for cell, ida, idb in m[["_cell", "cell_id_a", "cell_id_b"]].drop_duplicates("_cell").itertuples(index=False):
        fa, fb = int(ca.loc[ida, "n_nonfinite"]), int(cb.loc[idb, "n_nonfinite"])
        if fa == 0 and fb == 0:
            continue
        na, nb = int(ca.loc[ida, "n_replicates"]) + fa, int(cb.loc[idb, "n_replicates"]) + fb
        p = float(sps.fisher_exact([[fa, na - fa], [fb, nb - fb]]).pvalue)
        ra, rb = fa / na, fb / nb
        rows.append({"_cell": cell, "cell_id_a": ida, "cell_id_b": idb, "estimator": ca.loc[ida, "estimator"],
                     "param_group": "all", "protocol": "(cell)", "metric": "nonfinite_rate", "value_a": ra,
                     "stderr_a": math.nan, "value_b": rb, "stderr_b": math.nan, "test": "Fisher exact",
                     "effect": rb - ra, "p": p, "worse": int(np.sign(rb - ra))})
    return rows


# -- text ---------------------------------------------------------------------------------------
def _pm(v: float, se: float) -> str:
    return fmt_value(v, se)


def _change(r: pd.Series) -> str:
    va, vb = r["value_a"], r["value_b"]
    if r["test"] == "Mann-Whitney U":
        return f"P(τB>τA)={r['effect']:.2f}"
    if str(r["test"]).startswith(LOG_DIFF_PREFIX):
        return f"A/B ×{math.exp(r['effect']):.3g}" if np.isfinite(r["effect"]) else "—"
    if np.isfinite(va) and np.isfinite(vb) and va > 0 and vb > 0:
        return f"×{vb / va:.3g}"
    return f"{vb - va:+.3g}" if np.isfinite(va) and np.isfinite(vb) else "—"


def format_comparison(c: Comparison, *, show_all: bool = False) -> str:
    t = c.table
    shown = t if show_all else t[t["flag"] != ""]
    lines = []
    if not shown.empty:
        rank = shown["flag"].map({"regression": 0, "improvement": 1}).fillna(2)
        order = shown.assign(_f=rank).sort_values(["_f", "p"])
        out = pd.DataFrame({
            "cell": order["cell"], "group": order["param_group"], "metric": order["metric"],
            "A": [_pm(v, s) for v, s in zip(order["value_a"], order["stderr_a"])],
            "B": [_pm(v, s) for v, s in zip(order["value_b"], order["stderr_b"])],
            "change": [_change(r) for _, r in order.iterrows()],
            "test": order["test"],
            "p": [fmt_p(p) for p in order["p"]],
            "p_holm": [fmt_p(p) for p in order["p_holm"]],
            "flag": order["flag"].str.upper().replace("", "·"),
        })
        lines.append(out.to_string(index=False))
        lines.append("")
    lines += c.notes
    untested = t[t["test"] == NOT_TESTED_SE]
    if not untested.empty:
        lines.append(f"not tested ({len(untested)} row(s) with a missing standard error): "
                     + "; ".join(f"{r.cell} {r.param_group} {r.metric}" for r in untested.itertuples()))
    if (t["test"] == "log-ratio z").any():
        lines.append(LOG_RATIO_ASSUMPTIONS + ".")
    lines.append(f"{len(t)} aligned metric(s), {c.n_tests} tested; Holm-corrected at α = {c.alpha:g}"
                 + (f", regressions also need a relative change > {c.rtol:g}" if c.rtol else "") + ".")
    if c.only_a or c.only_b:
        lines.append(f"not aligned: {c.only_a} row(s) only in A, {c.only_b} row(s) only in B (not compared).")
    lines.append(f"{len(c.regressions)} significant regression(s), {len(c.improvements)} significant improvement(s).")
    return "\n".join(lines)
