"""Print the energy-based-model tables from a finished run (parameter group ``all``).

    python reports/ebm/summarise.py runs/ebm-bias      # bias / variance / work-normalised variance
    python reports/ebm/summarise.py runs/ebm-meeting   # meeting-time distribution vs size and β

Values are ``value ± s.e.`` as written by the protocols (docs/design.md §9); cost in Gibbs sweeps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def _fmt(v: float, se: float | None = None, spec: str = ".3g") -> str:
    if pd.isna(v):
        return ""
    return f"{v:{spec}}" if se is None or pd.isna(se) else f"{v:{spec}} ± {se:.2g}"


def main(run: Path) -> None:
    df = pd.read_parquet(run / "results.parquet")
    df = df[df.param_group == "all"].copy()
    size = {"rbm": lambda r: f"{int(r['model.n_visible'])}x{int(r['model.n_hidden'])}",
            "ising": lambda r: f"n={int(r['model.n_spins'])}"}
    df["target"] = df.apply(lambda r: f"{r['model']} {size[r['model']](r)} "
                                      f"{'digits ' if r.get('model.data') == 'digits' else ''}β={r['model.weight_scale']:g}", axis=1)
    est_cols = [c for c in df.columns if c.startswith("estimator.") and c not in ("estimator.max_iter", "estimator.lag")]
    df["est"] = df.apply(lambda r: r["estimator"] + "(" + ", ".join(
        f"{c.split('.', 1)[1]}={r[c]}" for c in est_cols if not pd.isna(r[c])) + ")", axis=1)
    key = ["target", "est"]
    val = df.pivot_table(index=key, columns="metric", values="value", aggfunc="first", sort=False)
    se = df.pivot_table(index=key, columns="metric", values="stderr", aggfunc="first", sort=False)
    cols: dict[str, list[str]] = {}
    if "rel_bias" in val:
        cols["rel_bias"] = [_fmt(v, s) for v, s in zip(val.rel_bias, se.rel_bias)]
        cols["bias_pvalue"] = [_fmt(v, None, ".2g") for v in val.bias_pvalue]
        if "rel_bias_ci_low" in val:  # statistics v2: 95 % interval of ‖b‖/‖g*‖
            cols["rel_bias_95ci"] = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(val.rel_bias_ci_low, val.rel_bias_ci_high)]
    if "trace_cov" in val:
        cols["sweeps"] = [_fmt(v, None, ".1f") for v in val.evals_mean]
        cols["trace_cov"] = [_fmt(v, s) for v, s in zip(val.trace_cov, se.trace_cov)]
        cols["work_norm_var"] = [_fmt(v, s) for v, s in zip(val.work_norm_var, se.work_norm_var)]
        cols["mse"] = [_fmt(v, s) for v, s in zip(val.mse, se.mse)]
    if "tau_mean" in val:
        cols["tau_mean"] = [_fmt(v, s) for v, s in zip(val.tau_mean, se.tau_mean)]
        for q in ("tau_q50", "tau_q90", "tau_q99", "tau_max"):
            cols[q] = [_fmt(v, None, "g") for v in val[q]]
        cols["n_censored"] = [_fmt(v, None, "g") for v in val.n_censored]
        cols["tail_rate"] = [_fmt(v, s) for v, s in zip(val.tail_rate, se.tail_rate)]
    out = pd.DataFrame(cols, index=val.index)
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 60):
        print(out.to_string())
    methods = df[df.metric == "bias_pvalue"]["method"].str.replace(r"\(.*", "", regex=True).value_counts()
    if len(methods):
        print("\nbias tests used:", dict(methods))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("RUN_DIR", type=Path, help="a finished run of suites/ebm-*.yaml")
    main(parser.parse_args().RUN_DIR)
