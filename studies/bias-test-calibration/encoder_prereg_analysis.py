"""Summary of a calibration run's p-values (calibration_pvalues.parquet) for the encoder two-sample test:
false-alarm rates (binomial s.e. under H0), KS uniformity, deciles, the lower tail, for the combined p-value and
for its two components p_T2 and p_max (parsed from ``method``). Usage: encoder_prereg_analysis.py RUN_DIR [FIRST N]
(FIRST N: only seeds FIRST .. FIRST+N−1, e.g. to look at 300-seed sub-batches)."""
import argparse
import math
import re

import numpy as np
import pandas as pd
from scipy import stats as sps

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("RUN_DIR", help="a `gradbench calibrate` output folder")
parser.add_argument("FIRST", type=int, nargs="?")
parser.add_argument("N", type=int, nargs="?")
args = parser.parse_args()
d = pd.read_parquet(f"{args.RUN_DIR}/calibration_pvalues.parquet")
if args.N is not None:
    first, n = args.FIRST, args.N
    d = d[(d["seed"] >= first) & (d["seed"] < first + n)]


def part(name: str) -> np.ndarray:
    return np.array([float(m.group(1)) if (m := re.search(rf"{name}=([0-9.e-]+)", s)) else math.nan for s in d["method"]])


print(f"{args.RUN_DIR}: n = {len(d)}; branches {d['branch'].value_counts().to_dict()}")
for label, p in (("combined", d["pvalue"].to_numpy(float)), ("p_T2", part("p_T2")), ("p_max", part("p_max"))):
    p = p[np.isfinite(p)]
    if p.size == 0:
        continue
    n = p.size
    rates = "  ".join(f"rate@{a:g} = {np.mean(p <= a):.4f} ± {math.sqrt(a * (1 - a) / n):.4f}" for a in (0.01, 0.05, 0.1))
    ks = sps.kstest(p, "uniform")
    print(f"  {label:8s} {rates}  KS D = {ks.statistic:.4f}, p = {ks.pvalue:.3g}  mean = {p.mean():.4f} "
          f"(1/2 ± {math.sqrt(1 / 12 / n):.4f})")
    print(f"           deciles {np.histogram(p, 10, (0, 1))[0].tolist()}  (expected {n / 10:.0f} each); "
          f"p ≤ 0.002: {int((p <= 0.002).sum())} (exp. {0.002 * n:.1f}); p = 1: {int((p >= 1).sum())}")
