"""Why the bias test is not calibrated on rbm 8x4 β=2 (suites/calibration-ebm.yaml): rare visible/hidden states.

For every calibration seed of the rbm cells, the target is rebuilt and the exact marginals P(v_i = 1), P(h_j = 1)
are enumerated; p_rare = min over units of min(P(on), P(off)). Seeds are grouped by the expected count R·p_rare of
the rarer value in one R-replicate sample, and the false-alarm rates at α = 1 % and 5 % are printed per group with
their binomial s.e. under H0. A gradient coordinate carried by a state of probability p ≪ 1/R has, in most samples,
a sample mean off by ≈ p × (its size) and a sample variance that does not see it (the sampler is exact: at R = 4·10⁵
the mean agrees with the enumerated gradient) — no test that only sees the sample can be calibrated there.

    gradbench calibrate suites/calibration-ebm.yaml --seeds 300 --out runs/calibration-ebm
    python reports/ebm/calibration_diagnosis.py runs/calibration-ebm/calibration_pvalues.parquet
"""

from __future__ import annotations

import math
import sys

import pandas as pd
import torch

from gradbench.calibrate import reseeded
from gradbench.suite import load_suite


def main(pvalues: str, suite: str = "suites/calibration-ebm.yaml") -> None:
    _, cells = load_suite(suite)
    d = pd.read_parquet(pvalues)
    rows = []
    for cell in (c for c in cells if c.target.model == "rbm"):
        sub = d[d["cell"].str.startswith(cell.estimator) & d["cell"].str.contains("rbm")].set_index("seed")["pvalue"]
        for s, p in sub.items():
            c = reseeded(cell, int(s))
            t = c.target.build("float64", "cpu")
            H, lw = t.hidden_log_weights()
            w = torch.softmax(lw, 0)
            marg = torch.cat([(w.unsqueeze(-1) * torch.sigmoid(H @ t.W.T + t.b)).sum(0), w @ H])
            rows.append({"estimator": cell.estimator, "expected_rare_count": cell.replicates * float(torch.minimum(marg, 1 - marg).min()),
                         "pvalue": p})
    o = pd.DataFrame(rows)
    o["R·p_rare"] = pd.cut(o["expected_rare_count"], [0, 1, 3, 10, math.inf], labels=["< 1", "1–3", "3–10", "≥ 10"])
    for (est, cls), g in o.groupby(["estimator", "R·p_rare"], observed=True):
        n = len(g)
        rates = "  ".join(f"α={a:g}: {(g['pvalue'] <= a).mean():.3f} ± {math.sqrt(a * (1 - a) / n):.3f}" for a in (0.01, 0.05))
        print(f"{est:<15} R·p_rare {cls:<5} n={n:<4} {rates}")


if __name__ == "__main__":
    main(*sys.argv[1:])
