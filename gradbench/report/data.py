"""Read a run folder and describe its cells the way figures and tables need them.

A run folder holds ``results.parquet`` (the tidy table, docs/design.md §9.1), optionally
``meeting_times.parquet`` (raw τ per replicate) and ``run.json`` (suite name, cell ids and,
when the suite states one, the significance level ``alpha``).

Per cell this module derives:
* the **budget** — the estimator parameter that sets how much work one estimate does: the first
  of :data:`BUDGET_PARAMS` the estimator has (K before S, …), else its only numeric parameter
  that varies in the run; cells without one have budget NaN;
* the **series** — the estimator name plus its other parameters that vary within the run
  (``coupled_isir · coupling=maximal``): one line per series in budget plots;
* the **target label** — the model/proposal parameters that vary across the run's targets
  (empty when the run has one target): one facet row per target in figures.

Significance level α: ``--alpha`` on the command line, else ``run.json["alpha"]``, else
:data:`gradbench.report.format.DEFAULT_ALPHA` (0.01).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradbench.report.format import (
    ADJUSTED_BIAS_METRICS,
    CORRECTIONS,
    DEFAULT_ALPHA,
    decision_metric,
    fmt_param,
    rare_state_threshold,
)

__all__ = ["ADJUSTED_BIAS_METRICS", "CORRECTIONS", "DEFAULT_ALPHA", "RunData", "RunError", "bias_decision",
           "bias_flag_note", "fmt_param", "infinite_variance_cells", "load_run", "param_columns"]

BUDGET_PARAMS = ("K", "S", "M", "N", "n_particles", "n_samples", "m", "n_steps", "steps", "iterations")
NON_PARAM_COLUMNS = {
    "suite", "cell_id", "target_id", "model", "estimator", "n_replicates", "n_nonfinite", "seed", "device", "dtype",
    "protocol", "param_group", "metric", "value", "stderr", "method",
    "gradbench_version", "torch_version", "started_at", "seconds",
}


class RunError(Exception):
    """A run folder that cannot be read (missing or malformed files): a one-line message."""


def param_columns(df: pd.DataFrame, prefix: str | None = None) -> list[str]:
    """Parameter columns (``model.*``, ``proposal.*``, ``estimator.*``, …) in table order."""
    cols = [c for c in df.columns if "." in c and c not in NON_PARAM_COLUMNS]
    return [c for c in cols if prefix is None or c.startswith(prefix + ".")]


@dataclass(frozen=True)
class RunData:
    path: Path
    results: pd.DataFrame
    side: dict[str, pd.DataFrame]  # the protocols' side tables by name (ProtocolSpec.side_tables), e.g. "meeting"
    manifest: dict[str, Any]
    alpha: float
    cells: pd.DataFrame = field(repr=False)
    correction: str = "bh"  # multiple-testing correction of the bias flags: "bh" or "holm" (see bias_decision)

    @property
    def meeting(self) -> pd.DataFrame | None:
        """Raw meeting times per replicate (the ``meeting`` protocol's side table), or None."""
        return self.side.get("meeting")

    @property
    def suite(self) -> str:
        if "suite" in self.results and len(self.results):
            return str(self.results["suite"].iloc[0])
        return str(self.manifest.get("suite", self.path.name))

    @property
    def metrics(self) -> set[str]:
        return set(self.results["metric"].unique()) if len(self.results) else set()

    @property
    def protocols(self) -> list[str]:
        return list(dict.fromkeys(self.results["protocol"])) if len(self.results) else []

    @property
    def param_groups(self) -> list[str]:
        groups = list(dict.fromkeys(self.results["param_group"])) if len(self.results) else []
        return sorted(groups, key=lambda g: g != "all")  # 'all' first, then layout order

    def has(self, *metrics: str) -> bool:
        return any(m in self.metrics for m in metrics)

    def metric(self, name: str, group: str | None = "all") -> pd.DataFrame:
        """Rows of one metric (one param group, or every group with ``group=None``) joined
        with the cell description; columns ``value, stderr, method, param_group`` + cell columns."""
        r = self.results
        sel = r[(r["metric"] == name) & ((r["param_group"] == group) if group is not None else True)]
        sel = sel[["cell_id", "param_group", "value", "stderr", "method"]]
        return sel.merge(self.cells, on="cell_id", how="left")

    def wide(self, metrics: list[str], group: str = "all") -> pd.DataFrame:
        """One row per cell with ``<metric>`` and ``<metric>__se`` columns for the metrics present."""
        out = self.cells.copy()
        for m in metrics:
            sub = self.metric(m, group)
            if sub.empty:
                continue
            sub = sub.drop_duplicates("cell_id").set_index("cell_id")
            out[m] = out["cell_id"].map(sub["value"])
            out[m + "__se"] = out["cell_id"].map(sub["stderr"])
            if m in ("bias_pvalue",) + ADJUSTED_BIAS_METRICS:
                out[m + "__method"] = out["cell_id"].map(sub["method"])
        return out


def with_data_provenance(path: Path, results: pd.DataFrame) -> pd.DataFrame:
    """Targets built on a named data set (``data:`` in the suite) get a ``target.data`` column from their provenance
    (``targets/<id>.json``: source, split, rows × dim, binarisation), and their ``model.n_data``/``model.data_dim``,
    which the data override, are blanked so that a report does not show the model's defaults as the problem."""
    if "target_id" not in results.columns:
        return results
    labels: dict[str, str] = {}
    for tid in results["target_id"].dropna().unique():
        f = path / "targets" / f"{tid}.json"
        try:
            data = json.loads(f.read_text()).get("data") if f.is_file() else None
        except (OSError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict) and "rows" in data:
            binar = f", {data['binarize']} binarisation" if data.get("binarize") else ""
            labels[str(tid)] = f"{data.get('source', '?')} ({data.get('split', '?')}, {data['rows']}×{data.get('dim', '?')}{binar})"
    if not labels:
        return results
    out = results.copy()
    named = out["target_id"].astype(str).isin(labels)
    out["target.data"] = out["target_id"].astype(str).map(labels)
    for c in ("model.n_data", "model.data_dim"):
        if c in out.columns:
            out[c] = out[c].astype(object).where(~named, None)
    return out


def load_run(path: str | Path, alpha: float | None = None, *, partial: bool = False, correction: str = "bh") -> RunData:
    """Read a run folder (or its ``results.parquet``) written by ``gradbench run``.

    An unfinished run (interrupted, or still running: ``run.json`` says ``"complete": false``, or
    there is no ``results.parquet``) is an error that counts its finished cells; with ``partial``
    the finished cells (``cells/*.parquet``) are read instead, and ``manifest["partial"]`` holds
    ``(finished, total)``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        path = path.parent
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder" if not path.exists() else f"{path}: not a run folder")
    manifest = _read_manifest(path)
    _load_plugins(path, manifest.get("plugins", []))
    results_path = path / "results.parquet"
    finished = sorted((path / "cells").glob("*.parquet")) if (path / "cells").is_dir() else []
    finished = [p for p in finished if p.name.count(".") == 1]  # <cell_id>.parquet, not <cell_id>.<side>.parquet
    complete = results_path.is_file() and manifest.get("complete", True)
    if not complete:
        if not finished and not manifest:
            raise RunError(f"{path}: no results.parquet here (is this a folder written by `gradbench run`?)")
        total = len(manifest.get("cells", [])) or "?"
        if not partial:
            raise RunError(f"{path}: the run is incomplete: {len(finished)} of {total} cells are finished; "
                           "finish it by running the same `gradbench run` command again, or report the finished "
                           "cells with `gradbench report --partial`")
        if not finished:
            raise RunError(f"{path}: the run is incomplete and no cell is finished yet (0 of {total})")
        results = _read_cells(path, finished, manifest)
        manifest = {**manifest, "partial": (len(finished), total)}
    else:
        try:
            results = pd.read_parquet(results_path)
        except Exception as exc:  # noqa: BLE001 — pyarrow raises several types for a corrupt file
            raise RunError(f"{results_path}: cannot read parquet ({type(exc).__name__}: {exc})") from None
    required = {"cell_id", "estimator", "protocol", "param_group", "metric", "value", "stderr"}
    missing = required - set(results.columns)
    if missing:
        raise RunError(f"{results_path}: missing column(s) {', '.join(sorted(missing))}")
    results = with_data_provenance(path, results)
    side = read_side_tables(path, results, partial="partial" in manifest)
    if alpha is None:
        alpha = float(manifest.get("alpha", DEFAULT_ALPHA))
    if not 0 < alpha < 1:
        raise RunError(f"alpha must be in (0, 1), got {alpha}")
    if correction not in CORRECTIONS:
        raise RunError(f"correction must be one of {sorted(CORRECTIONS)}, got {correction!r}")
    return RunData(path, results, side, manifest, alpha, describe_cells(results), correction)


def _load_plugins(path: Path, modules: list[str]) -> None:
    """Import the plugin modules the run was computed with (``run.json``), so their protocols' and kinds' views and
    their models' names are known to the report; one located line if one cannot be imported."""
    from gradbench import registry

    try:
        registry.load_entry_points()
        registry.load_plugin_modules(modules)
    except registry.PluginError as exc:
        raise RunError(f"{path / 'run.json'}: {exc}") from None


def read_side_tables(path: Path, results: pd.DataFrame, *, partial: bool = False) -> dict[str, pd.DataFrame]:
    """The side tables of a run folder, of every registered protocol and kind of cell (``side_tables``: raw meeting
    times, learning curves, ...): the collected file, or for a partial run the finished cells'
    ``cells/<cell_id>.<name>.parquet``."""
    from gradbench import registry

    out: dict[str, pd.DataFrame] = {}
    for entry in [*registry.PROTOCOLS.values(), *registry.CELL_KINDS.values()]:
        for side in entry.side_tables:
            if partial:
                suffix = f".{side.name}.parquet"
                parts = [pd.read_parquet(p) for p in sorted((path / "cells").glob(f"*{suffix}"))
                         if p.name.removesuffix(suffix) in set(results["cell_id"])]
                if parts:
                    out[side.name] = pd.concat(parts, ignore_index=True)
            elif (path / side.file).is_file():
                out[side.name] = pd.read_parquet(path / side.file)
    return out


def _read_manifest(path: Path) -> dict[str, Any]:
    if not (path / "run.json").is_file():
        return {}
    try:
        manifest = json.loads((path / "run.json").read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path / 'run.json'}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    return manifest if isinstance(manifest, dict) else {}


def _read_cells(path: Path, files: list[Path], manifest: dict[str, Any]) -> pd.DataFrame:
    """The finished cells' rows, in the suite's order where run.json lists it (as ``collect`` does)."""
    order = {cid: i for i, cid in enumerate(manifest.get("cells", []))}
    files = sorted(files, key=lambda p: order.get(p.stem, len(order)))
    table = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    for col in table.columns[table.dtypes == object]:  # as runner.collect: mixed int/str parameter columns
        if len({type(v) for v in table[col].dropna()}) > 1:
            table[col] = table[col].map(lambda v: v if pd.isna(v) else str(v))
    if "suite" not in table:
        table.insert(0, "suite", str(manifest.get("suite", path.name)))
    return table


def describe_cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its identifying columns plus ``budget_param``, ``budget``, ``series``,
    ``variant``, ``target_label`` and ``label`` (series and budget, for tables)."""
    keep = [c for c in ["cell_id", "target_id", "model", "estimator", "n_replicates", "n_nonfinite", "seed",
                        "device", "dtype"] if c in results.columns]
    pcols = param_columns(results)
    cells = results.drop_duplicates("cell_id")[keep + pcols].reset_index(drop=True)
    if "target_id" not in cells:
        cells["target_id"] = ""
    est_cols = [c for c in pcols if c.startswith("estimator.")]
    target_cols = ["model"] * ("model" in cells) + [c for c in pcols if not c.startswith("estimator.")]

    varying_targets = [c for c in target_cols if cells[c].astype(str).nunique() > 1]
    cells["target_label"] = [
        ", ".join(f"{_short(c)}={fmt_param(row[c])}" for c in varying_targets if _present(row[c]))
        for _, row in cells.iterrows()
    ]

    budget_param: dict[str, str | None] = {}
    variant_cols: dict[str, list[str]] = {}
    for est, grp in cells.groupby("estimator", sort=False):
        own = [c for c in est_cols if grp[c].notna().any()]
        numeric = [c for c in own if pd.api.types.is_numeric_dtype(grp[c])]
        named = [c for name in BUDGET_PARAMS for c in own if c == f"estimator.{name}"]
        varying_numeric = [c for c in numeric if grp[c].nunique() > 1]
        chosen = named[0] if named else (varying_numeric[0] if len(varying_numeric) == 1 else None)
        budget_param[str(est)] = chosen
        variant_cols[str(est)] = [c for c in own if c != chosen and grp[c].astype(str).nunique() > 1]

    cells["budget_param"] = [(_short(budget_param[e]) if budget_param[e] else "") for e in cells["estimator"]]
    cells["budget"] = [
        float(row[budget_param[row["estimator"]]]) if budget_param[row["estimator"]] else math.nan
        for _, row in cells.iterrows()
    ]
    cells["variant"] = [
        ", ".join(f"{_short(c)}={fmt_param(row[c])}" for c in variant_cols[row["estimator"]] if _present(row[c]))
        for _, row in cells.iterrows()
    ]
    cells["series"] = [f"{e} · {v}" if v else str(e) for e, v in zip(cells["estimator"], cells["variant"])]
    wrt = cells["estimator.wrt"] if "estimator.wrt" in cells else pd.Series(None, index=cells.index)
    cells["gradient"] = [gradient_of(str(e), w) for e, w in zip(cells["estimator"], wrt)]
    cells["label"] = [
        s + (f" ({p}={fmt_param(b)})" if p else "")
        for s, p, b in zip(cells["series"], cells["budget_param"], cells["budget"])
    ]
    return cells


def gradient_of(estimator: str, wrt: Any = None) -> str:
    """``∇θ`` or ``∇φ``: which gradient a cell estimates — its ``wrt`` parameter when it has one, else
    the registry's ``wrt`` of the estimator (``?`` for a name the registry does not know)."""
    from gradbench import registry

    if not isinstance(wrt, str):
        entry = registry.ESTIMATORS.get(estimator)
        wrt = entry.wrt.split("|")[0] if entry is not None else "?"
    return {"theta": "∇θ", "phi": "∇φ"}.get(wrt, wrt)


def bias_decision(run: RunData) -> str:
    """The metric that flags a bias: the adjusted p-value of the run's correction (``bias_qvalue``,
    Benjamini–Hochberg, by default; ``bias_pvalue_holm`` with ``--correction holm``) when the run has it
    (multiple testing controlled within the run), else the per-row ``bias_pvalue``."""
    return decision_metric(run.correction, run.metrics)


def bias_flag_note(run: RunData) -> str:
    """What ``✱ biased`` means in this report: the statistic, α and the family the correction spans."""
    decision = bias_decision(run)
    if decision == "bias_pvalue":
        return f"✱ biased: bias p-value < α = {run.alpha:g} (H0: unbiased; per row, no multiplicity correction)."
    c = CORRECTIONS[run.correction]
    name, controls = c.name, c.controls
    sub = run.results[(run.results["metric"] == decision) & (run.results["param_group"] == "all")]
    m = int(np.isfinite(sub["value"].to_numpy(float)).sum())
    return (f"✱ biased: {name} < α = {run.alpha:g}; the correction controls the {controls} over the family of the "
            f"run's {m} bias tests of parameter group 'all' (one per cell; per-group p-values are not corrected)."
            + (" Inconclusive: R·q_min < log(10³), a rare state probably unsampled; no verdict, not in the family."
               if _any_inconclusive(run) else ""))


def _any_inconclusive(run: RunData) -> bool:
    """Whether a cell's bias test is inconclusive (``bias_rare_count`` = R·q_min < log(10³), gradbench.stats)."""
    if not run.has("bias_rare_count"):
        return False
    return bool((run.results.loc[run.results["metric"] == "bias_rare_count", "value"] < rare_state_threshold()).any())




def heavy_tail_metrics() -> frozenset[str]:
    """Variance-type metrics (shown with † and no s.e. where the variance may be infinite): the registered
    protocols' report columns marked ``heavy_tail``."""
    from gradbench import registry

    return frozenset(c.metric for s in registry.PROTOCOLS.values() for c in s.report_columns if c.heavy_tail)

INFINITE_VARIANCE_TEXT = "variance may be infinite"  # gradbench.protocols.variance's tail_index warning


def infinite_variance_cells(run: RunData) -> set[str]:
    """Cells whose ``tail_index`` row warns that the variance may be infinite (Hill index ≤ 2 within its
    one-sided 95 % uncertainty): their variance-type values must not be shown with an error bar."""
    if "warning" not in run.results:
        return set()
    r = run.results
    hit = r[(r["metric"] == "tail_index") & r["warning"].astype(str).str.contains(INFINITE_VARIANCE_TEXT, regex=False)]
    return set(hit["cell_id"])


def _short(col: str) -> str:
    return col.split(".", 1)[1] if "." in col else col


def _present(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and math.isnan(v)))
