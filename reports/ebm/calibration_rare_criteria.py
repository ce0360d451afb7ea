"""Which rare-state criterion would make the rbm β = 2 exact-sampling seeds of calibration-ebm calibrated? Per seed
(enumerating the 256 visible states): q_min of the unit marginals (the shipped rule), a two-point-equivalent mass
1/(1 + γ²) from the largest coordinate skewness γ, and the largest share of a coordinate's variance carried by the
least probable states of total mass < log(10³)/R. Prints false-alarm rates over the seeds each criterion keeps.
Usage (repository root): python reports/ebm/calibration_rare_criteria.py > reports/ebm/calibration-ebm-wave4/rare_criteria.txt
"""

import argparse
import itertools
import math

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from gradbench.calibrate import cell_label, reseeded
from gradbench.run.plan import load_suite

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--suite", default="suites/calibration-ebm.yaml")
parser.add_argument("--pvalues", default="reports/ebm/calibration-ebm-wave4/calibration_pvalues.parquet",
                    help="calibration_pvalues.parquet of `gradbench calibrate SUITE`")
args = parser.parse_args()
_, cells = load_suite(args.suite)
pv = pd.read_parquet(args.pvalues)
c = next(x for x in cells if x.target.model == "rbm" and x.target.params["weight_scale"] == 2.0 and x.estimator == "exact_sampling")
lab = cell_label(c)
g = pv[pv.cell == lab].sort_values("seed")
V = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64)
rows = []
for s in g.seed:
    t = reseeded(c, int(s)).target.build("float64", "cpu")
    p = torch.softmax(-t.free_energy(V), 0)
    G = -t.weighted_grad_free_energy(V.unsqueeze(1), torch.ones(len(V), 1, dtype=torch.float64))
    mu = p @ G; D = G - mu; var = p @ D**2; m3 = p @ D**3
    live = var > 1e-20
    qeff = float((1 / (1 + m3[live]**2 / var[live]**3)).min())
    # largest share of a coordinate's variance carried by states of total mass < log(1e3)/R
    order = torch.argsort(p)
    cum = torch.cumsum(p[order], 0)
    rare = order[cum < math.log(1e3) / c.replicates]
    share = float(((p[rare] @ D[rare]**2)[live] / var[live]).max()) if len(rare) else 0.0
    rows.append((int(s), t.rare_value_probability(), qeff, share))
d = pd.DataFrame(rows, columns=["seed", "qmin", "qeff", "share"]).merge(g[["seed", "pvalue"]], on="seed")
R = c.replicates
def rep(name, m):
    p = d.pvalue[m].to_numpy()
    print(f"{name}: n={m.sum()} rate@.01={np.mean(p <= .01):.3f} rate@.05={np.mean(p <= .05):.3f} KS={sps.kstest(p, 'uniform').pvalue:.3g}")
rep("unit marginal testable", R * d.qmin >= math.log(1e3))
rep("skewness qeff testable", R * d.qeff >= math.log(1e3))
for thr in (0.5, 0.2, 0.1, 0.05):
    rep(f"rare-state variance share < {thr}", d.share < thr)
    rep("  and unit marginal", (d.share < thr) & (R * d.qmin >= math.log(1e3)))
