"""Run folders for the report and compare tests (helpers; fixtures are in conftest.py).

Real runs (bias, variance) go through the Python API on tiny suites. Protocols that other
issues are still building (meeting, wallclock, snr) are *synthesised*: rows with the documented
columns (docs/design.md §9.1) appended to a real run's table, and raw τ in ``meeting_times.parquet``, so
these tests do not depend on unfinished estimators.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from gradbench.run.plan import load_suite
from gradbench.run.runner import run_suite

TARGET = {"model": "ppca", "params": {"data_dim": 6, "latent_dim": 2, "n_data": 1},
          "proposal": {"mean_shift": 0.5, "cov_scale": 2.0}}
ESTIMATORS = [{"name": "oracle", "params": {"S": 1}}, {"name": "elbo", "params": {"S": 1}},
              {"name": "iwae", "params": {"K": [2, 8, 32]}}]


def write_suite(folder: Path, name: str, protocols: list[str], *, estimators: list[dict[str, Any]] | None = None,
                replicates: int = 400, seed: int = 3, targets: list[dict[str, Any]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    spec = {"name": name, "seed": seed, "target_seed": seed, "replicates": replicates, "targets": targets or [TARGET],
            "estimators": estimators or ESTIMATORS, "protocols": protocols}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_to(suite: Path, out: Path, **overrides: Any) -> Path:
    """Run ``suite`` into ``out``; ``seed=N`` replicates it with new noise on the same targets."""
    spec, cells = load_suite(suite, overrides or None)
    run_suite(spec, cells, out, fresh=True, progress=False)
    return out


# -- synthesised protocols ----------------------------------------------------------------------
def _rows(template: pd.Series, cell_id: str, estimator: str, est_params: dict[str, Any], protocol: str,
          metrics: list[tuple[str, str, float, float]], columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for group, metric, value, se in metrics:
        r = {c: template[c] for c in columns}
        r.update({"cell_id": cell_id, "estimator": estimator, "protocol": protocol, "param_group": group,
                  "metric": metric, "value": value, "stderr": se, "method": ""})
        for c in columns:
            if c.startswith("estimator."):
                r[c] = np.nan
        for k, v in est_params.items():
            r[f"estimator.{k}"] = v
        rows.append(r)
    return rows


def add_meeting(run_dir: Path, *, ks: tuple[int, ...] = (2, 8, 32), tau_scale: float = 1.0, seed: int = 0,
                replicates: int = 400, cap: int = 200) -> None:
    """Append a synthetic coupled estimator (one cell per K) with meeting metrics and raw τ:
    τ geometric with success probability 1 − (1 − 1/K)^… chosen so E τ ≈ 1 + 4 tau_scale / √K."""
    results = pd.read_parquet(run_dir / "results.parquet")
    tpl = results.iloc[0]  # target, model and provenance columns to copy
    columns = list(results.columns)
    rng = np.random.default_rng(seed)
    rows, raw = [], []
    for K in ks:
        cell_id = f"synthcoupled{K:04d}"
        mean = 1 + 4 * tau_scale / np.sqrt(K)
        tau = rng.geometric(1 / mean, size=replicates).astype(float)
        censored = tau >= cap
        tau = np.minimum(tau, cap)
        q = np.quantile(tau, [0.5, 0.9, 0.99])
        se = tau.std(ddof=1) / np.sqrt(len(tau))
        metrics = [("all", "tau_mean", tau.mean(), se), ("all", "tau_q50", q[0], np.nan),
                   ("all", "tau_q90", q[1], np.nan), ("all", "tau_q99", q[2], np.nan),
                   ("all", "tau_max", tau.max(), np.nan),
                   ("all", "n_censored", float(censored.sum()), np.nan), ("all", "tail_rate", 1 / mean, np.nan)]
        rows += _rows(tpl, cell_id, "coupled_isir", {"K": float(K)}, "meeting", metrics, columns)
        raw.append(pd.DataFrame({"cell_id": cell_id, "estimator": "coupled_isir", "replicate": np.arange(replicates),
                                 "tau": tau.astype(np.int64), "censored": censored}))
    out = pd.concat([results, pd.DataFrame(rows, columns=columns)], ignore_index=True)
    out["n_replicates"] = out["n_replicates"].astype("int64")
    out.to_parquet(run_dir / "results.parquet", index=False)
    pd.concat(raw, ignore_index=True).to_parquet(run_dir / "meeting_times.parquet", index=False)


def add_wallclock(run_dir: Path, *, seed: int = 0, slowdown: float = 1.0) -> None:
    """Append wallclock rows to every cell: seconds ∝ evaluations (plus overhead)."""
    results = pd.read_parquet(run_dir / "results.parquet")
    rng = np.random.default_rng(seed)
    rows = []
    for cell_id, grp in results.groupby("cell_id", sort=False):
        evals = grp.loc[grp["metric"] == "evals_mean", "value"]
        e = float(evals.iloc[0]) if len(evals) else 4.0
        sec = slowdown * (2e-5 + 1e-6 * e) * (1 + 0.05 * rng.standard_normal())
        r = grp.iloc[0].to_dict()
        timings = (("seconds_per_estimate", sec, 0.02 * sec), ("evals_per_second", e / sec, 0.02 * e / sec))
        for metric, value, se in timings:
            rows.append({**r, "protocol": "wallclock", "param_group": "all", "metric": metric, "value": value,
                         "stderr": se, "method": "median (IQR)"})
    pd.concat([results, pd.DataFrame(rows)], ignore_index=True).to_parquet(run_dir / "results.parquet", index=False)


def add_snr(run_dir: Path) -> None:
    """Append snr protocol rows (quartiles over coordinates) derived from snr_median."""
    results = pd.read_parquet(run_dir / "results.parquet")
    base = results[results["metric"] == "snr_median"]
    rows = []
    for _, r in base.iterrows():
        for metric, f in (("snr_q25", 0.6), ("snr_q50", 1.0), ("snr_q75", 1.5)):
            rows.append({**r.to_dict(), "protocol": "snr", "metric": metric, "value": r["value"] * f,
                         "stderr": r["stderr"] * f, "method": "bootstrap(200)"})
    pd.concat([results, pd.DataFrame(rows)], ignore_index=True).to_parquet(run_dir / "results.parquet", index=False)


def keep_protocols(run_dir: Path, protocols: set[str]) -> None:
    results = pd.read_parquet(run_dir / "results.parquet")
    results[results["protocol"].isin(protocols)].to_parquet(run_dir / "results.parquet", index=False)
    if "meeting" not in protocols:
        (run_dir / "meeting_times.parquet").unlink(missing_ok=True)


def set_alpha(run_dir: Path, alpha: float) -> None:
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["alpha"] = alpha
    (run_dir / "run.json").write_text(json.dumps(manifest))
