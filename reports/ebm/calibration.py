"""Calibration of the bias test on a suite's EBM targets: false-rejection rate of the exact sampler.

``exact_sampling`` is exactly unbiased, so at level α the bias test (gradbench.stats.bias_test, as in
the ``bias`` protocol) should reject it in a fraction α of independent runs. For every target of the
suite this runs it ``--runs`` times with the suite's replicate count (seeds derived from
"calibration", run index and target id: independent of the suite's noise) and prints the rejection
fraction with its exact (Clopper–Pearson) 95 % interval and the tests used. A target whose rate is
far above α cannot separate a biased estimator from the test's own failure at that replicate count
(discrete gradients with rare states: see the report).

    python reports/ebm/calibration.py suites/ebm-bias.yaml --runs 40 --alpha 0.001
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from scipy import stats as sps

from gradbench.estimators.ebm import exact_sampling
from gradbench.seeding import derive_seed, make_generator
from gradbench.stats import bias_test
from gradbench.suite import load_suite


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("suite")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--alpha", type=float, default=0.001)
    args = ap.parse_args()
    suite, cells = load_suite(args.suite)
    targets = {c.target.target_id: c.target for c in cells if c.target.model in ("rbm", "ising")}
    eps = float(torch.finfo(torch.float64).eps)
    for tid, tc in targets.items():
        t = tc.build("float64", "cpu")
        g = t.exact_grad().numpy()
        rejected, methods = 0, Counter()
        for i in range(args.runs):
            s = exact_sampling(t, suite.replicates, make_generator(derive_seed("calibration", i, tid)))
            res = bias_test(s.grads.numpy(), g, eps, np.random.default_rng(0))
            rejected += res.pvalue < args.alpha
            methods[res.method.split("(")[0].split(":")[0]] += 1
        lo = sps.beta.ppf(0.025, rejected, args.runs - rejected + 1) if rejected else 0.0
        hi = sps.beta.ppf(0.975, rejected + 1, args.runs - rejected) if rejected < args.runs else 1.0
        print(f"{tc.model} {tc.params}: rejected {rejected}/{args.runs} = {rejected / args.runs:.3f} "
              f"[{lo:.3f}, {hi:.3f}] at α = {args.alpha} (R = {suite.replicates}); tests {dict(methods)}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
