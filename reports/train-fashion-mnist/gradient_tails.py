"""Per-step θ-gradient norms and meeting times of a finished train run, per arm: mean ± s.e. over training seeds of
each seed's statistic (the seeds are the independent units; a step's norm is one draw of the arm's gradient law).

* ‖∇θ‖ median, and its q99 / median and max / median (tail weight: a heavy-tailed gradient has ratios far above a
  Gaussian's ≈ 1.5 / 2), over the arm's own θ-steps (after any warm-up; censored coupled steps, where θ is not
  updated, left out);
* τ (the maximum over a step's chain pairs) mean per block of ``block`` steps, for coupled arms: τ over training.

    OMP_NUM_THREADS=1 python reports/train-fashion-mnist/gradient_tails.py runs/train-fashion-mnist-cpu [block]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from gradbench.report.data import load_run
from gradbench.report.format import fmt_value
from gradbench.training.stats import pair_labels


def mean_se(values: pd.Series) -> str:
    """Mean ± s.e. over seeds, written by the report's one formatter (an empty block is "—")."""
    v = values.dropna().to_numpy(dtype=float)
    se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else math.nan
    return fmt_value(v.mean() if v.size else math.nan, se)


def cell_arms(results: pd.DataFrame) -> pd.DataFrame:
    """Each cell's arm, named as the report names it (:func:`gradbench.training.stats.pair_labels`), and its seed."""
    cells = results.drop_duplicates("cell_id").set_index("cell_id")
    return pd.DataFrame({"arm": pair_labels(cells), "estimator.train_seed": cells["estimator.train_seed"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished (or partial) train run folder")
    parser.add_argument("block", type=int, nargs="?", default=250, help="steps per τ block")
    args = parser.parse_args()
    run = load_run(args.run, partial=True)  # the report's reader: finished cells of a partial run too
    curves = run.side["curves"].join(cell_arms(run.results), on="cell_id")
    own = curves[~curves["warmup"].astype(bool) & ~curves["censored"].astype(bool) & curves["theta_finite"].astype(bool)]
    g = own.groupby(["arm", "estimator.train_seed"])["grad_norm_theta"]
    per_seed = pd.DataFrame({"median": g.median(), "q99/median": g.quantile(0.99) / g.median(),
                             "max/median": g.max() / g.median(), "steps": g.size()})
    print("‖∇θ‖ over each arm's own θ-steps: mean ± s.e. over seeds of the per-seed statistic")
    print(per_seed.groupby(level="arm").agg(mean_se).to_markdown())
    tau = curves[curves["tau"].notna() & ~curves["warmup"].astype(bool)].copy()
    if tau.empty:
        return
    tau["block"] = (tau["step"] - 1) // args.block * args.block + args.block
    blocks = tau.groupby(["arm", "block", "estimator.train_seed"])["tau"].mean().groupby(level=["arm", "block"]).agg(mean_se)
    print(f"\nτ (max over a step's chain pairs) mean per {args.block}-step block, up to that step: mean ± s.e. over seeds")
    print(blocks.unstack("block").fillna("—").to_markdown())  # no block: no coupled steps there
    cens = curves.groupby(["arm", "estimator.train_seed"])["censored"].sum().groupby(level="arm").agg(["sum", "max"])
    print("\ncensored coupled steps (τ at max_iter, θ not updated): total over seeds, most in one seed")
    print(cens.to_markdown())
    q = tau.groupby(["arm", "estimator.train_seed"])["tau"].quantile([0.5, 0.9]).unstack()
    print("\nτ median and q90 over the coupled steps: mean ± s.e. over seeds")
    print(q.groupby(level="arm").agg(mean_se).to_markdown())


if __name__ == "__main__":
    main()
