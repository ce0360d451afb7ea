"""suite-table.txt of a semi-implicit run: per (model, estimator setting) rel_bias ± s.e. [95 % CI], bias p-value, evals,
work_norm_var ± s.e., and the mcmc diagnostics (HMC acceptance, reverse-chain ESS) where an estimator reports them.

    PYTHONPATH=. python reports/semi-implicit/table.py runs/semi-implicit > reports/semi-implicit/suite-table.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

SETTINGS = ["estimator.K", "estimator.reverse", "estimator.burn_in", "estimator.t", "estimator.steps"]
METRICS = {"rel_bias": "rel_bias", "rel_bias_ci_low": "ci_low", "rel_bias_ci_high": "ci_high", "bias_pvalue": "p",
           "evals_mean": "evals", "work_norm_var": "work_norm_var", "acceptance": "acceptance", "ess": "ess"}


def label(row: pd.Series) -> str:
    parts = [row["estimator"]]
    for col in SETTINGS:
        if col in row and pd.notna(row[col]):
            v = row[col]
            if col == "estimator.burn_in" and row.get("estimator.reverse") != "hmc":
                continue
            parts.append(f"{col.split('.')[1]}={int(v) if isinstance(v, float) and v.is_integer() else v}")
    return " ".join(parts)


def target(row: pd.Series) -> str:
    return row["model"] + (f" ({row['model.density']})" if pd.notna(row.get("model.density")) else "") + (
        f" atoms={int(row['proposal.n_atoms'])}" if row.get("proposal.n_atoms", 0) else "") + (
        f" hidden={int(row['proposal.hidden'])}" if row.get("proposal.hidden", 0) else "")


def main(run: str) -> None:
    df = pd.read_parquet(Path(run) / "results.parquet")
    df = df[(df.param_group == "all") & df.metric.isin(list(METRICS))].copy()
    df["target"] = df.apply(target, axis=1)
    df["setting"] = df.apply(label, axis=1)
    value = df.pivot_table(index=["target", "setting"], columns="metric", values="value", aggfunc="first")
    se = df.pivot_table(index=["target", "setting"], columns="metric", values="stderr", aggfunc="first")
    out = pd.DataFrame(index=value.index)
    out["rel_bias"] = value["rel_bias"].map("{:.3g}".format)
    out["95% CI"] = ("[" + value["rel_bias_ci_low"].map("{:.3g}".format) + ", "
                     + value["rel_bias_ci_high"].map("{:.3g}".format) + "]")
    out["p"] = value["bias_pvalue"].map("{:.2g}".format)
    out["evals"] = value["evals_mean"].map("{:.4g}".format)
    out["work_norm_var"] = value["work_norm_var"].map("{:.4g}".format) + " ± " + se["work_norm_var"].map("{:.2g}".format)
    for m in ("acceptance", "ess"):
        if m in value:
            out[m] = [f"{v:.3g} ± {s:.1g}" if pd.notna(v) else "" for v, s in zip(value[m], se[m])]
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 40):
        print(out.to_string())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("RUN_DIR", help="a finished run of a semi-implicit suite")
    main(parser.parse_args().RUN_DIR)
