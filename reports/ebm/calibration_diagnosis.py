"""Why the bias test is not calibrated on rbm 8x4 β=2 (suites/calibration-ebm.yaml): rare visible/hidden states.

For every calibration seed of the rbm cells, the target is rebuilt and (1) the exact marginals P(v_i = 1), P(h_j = 1)
are enumerated; p_rare = min over units of min(P(on), P(off)); seeds are grouped by the expected count R·p_rare of the
rarer value in one R-replicate sample; (2) the exact law of one exact-sampling replicate ∇F(v′), v′ ~ p_θ, is
enumerated over the 2^{n_v} visible states, and seeds are grouped by γ/√R, γ = max_j |skewness_j| (the size of the
first Edgeworth correction to a normal or studentised statistic's law). False-alarm rates at α = 1 % and 5 % per
group, with their binomial s.e. under H0. A gradient coordinate carried by a state of probability p ≪ 1/R has, in most samples,
a sample mean off by ≈ p × (its size) and a sample variance that does not see it (the sampler is exact: at R = 4·10⁵
the mean agrees with the enumerated gradient) — no test that only sees the sample can be calibrated there.

    gradbench calibrate suites/calibration-ebm.yaml --seeds 300 --out runs/calibration-ebm
    python reports/ebm/calibration_diagnosis.py runs/calibration-ebm/calibration_pvalues.parquet
    python reports/ebm/calibration_diagnosis.py runs/calibration-ebm-fixed/calibration_pvalues.parquet suites/calibration-ebm-fixed.yaml
"""

from __future__ import annotations

import itertools
import math
import sys

import pandas as pd
import torch

from gradbench.calibrate import reseeded
from gradbench.models.ebm import RBM, _bits
from gradbench.suite import load_suite


def main(pvalues: str, suite: str = "suites/calibration-ebm.yaml") -> None:
    """Print the false-alarm rates of ``pvalues`` (a calibrate output of ``suite``) grouped as above."""
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
                         "skew_over_sqrt_R": max_skewness(t) / math.sqrt(cell.replicates), "pvalue": p})
    o = pd.DataFrame(rows)
    o["R·p_rare"] = pd.cut(o["expected_rare_count"], [0, 1, 3, 10, math.inf], labels=["< 1", "1–3", "3–10", "≥ 10"])
    edges = [0, 0.4, 1, 2, 4, math.inf]
    o["γ/√R"] = pd.cut(o["skew_over_sqrt_R"], edges, labels=[f"{a:g}–{b:g}" for a, b in itertools.pairwise(edges)])
    for by in ("R·p_rare", "γ/√R"):
        for (est, cls), g in o.groupby(["estimator", by], observed=True):
            n = len(g)
            rates = "  ".join(f"α={a:g}: {(g['pvalue'] <= a).mean():.3f} ± {math.sqrt(a * (1 - a) / n):.3f}" for a in (0.01, 0.05))
            print(f"{est:<15} {by} {cls:<7} n={n:<4} {rates}")
    print(f"γ/√R over seeds: median {o['skew_over_sqrt_R'].median():.2f}, range {o['skew_over_sqrt_R'].min():.2f}–{o['skew_over_sqrt_R'].max():.2f}")


def max_skewness(t: RBM) -> float:
    """max_j |skewness| of ∇_j F(v′), v′ ~ p_θ, by enumerating the 2^{n_v} visible states (the exact law of one
    exact-sampling replicate, up to the affine map to ĝ)."""
    V = _bits(torch.arange(2**t.n_visible), t.n_visible).to(torch.float64)
    w = torch.softmax(-t.free_energy(V), 0)
    g = t.weighted_grad_free_energy(V.unsqueeze(1), torch.ones(V.shape[0], 1, dtype=torch.float64))  # [2^n_v, P]
    mu = w @ g
    c = g - mu
    var, m3 = w @ c**2, w @ c**3
    ok = var > 1e-12 * float(var.max())
    return float((m3[ok].abs() / var[ok] ** 1.5).max())


if __name__ == "__main__":
    main(*sys.argv[1:])
