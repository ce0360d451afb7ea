"""Variance orderings of the literature on a discrete-sbn run: differences of tr Σ̂ ± s.e. (s.e. combined as if
independent: conservative under the common random numbers of the run). Usage:
python reports/discrete-estimators/orderings.py RUN_DIR/results.parquet"""

from __future__ import annotations

import argparse
import math

import pandas as pd

PAIRS = [("disarm", "arm"), ("relax", "rebar(30)"), ("relax", "rebar(0)"), ("rebar(30)", "nvil"), ("rebar(0)", "nvil"),
         ("nvil", "reinforce(ma)"), ("sum_and_sample", "disarm"), ("rloo", "disarm")]


def label(r: pd.Series) -> str:
    e = r["estimator"]
    if e == "rebar":
        return f"rebar({int(r['estimator.warmup'])})"
    if e == "reinforce":
        return "reinforce(ma)" if r["estimator.baseline"] == "moving_average" else "reinforce(none)"
    return e


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("RESULTS", help="RUN_DIR/results.parquet of a discrete-sbn run")
    d = pd.read_parquet(parser.parse_args().RESULTS)
    d = d[(d.metric == "trace_cov") & (d.param_group == "all")].copy()
    d["est"] = d.apply(label, axis=1)
    for layers, g in d.groupby("model.layers"):
        v = g.set_index("est")[["value", "stderr"]]
        print(f"layers {layers}")
        for a, b in PAIRS:
            if a in v.index and b in v.index:
                diff = v.loc[b, "value"] - v.loc[a, "value"]
                se = math.hypot(v.loc[a, "stderr"], v.loc[b, "stderr"])
                print(f"  tr Σ {b} − {a} = {diff:.4g} ± {se:.2g} ({diff / se:+.1f} s.e.): "
                      f"{a} ≤ {b} {'holds' if diff > 3 * se else 'fails' if diff < -3 * se else 'not shown'}")
