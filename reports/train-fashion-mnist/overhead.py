"""Each finished train cell's time outside its optimiser steps and its evaluation, as a fraction of the cell's time:
(cell seconds − training `seconds` − `eval_seconds`) / cell seconds, per arm (min and max over cells).

    python reports/train-fashion-mnist/overhead.py runs/train-fashion-mnist-cpu
"""

import argparse
import glob

import pandas as pd

parser = argparse.ArgumentParser(description="Each train cell's time outside its steps and evaluation, per arm.")
parser.add_argument("run", help="a train run folder, e.g. runs/train-fashion-mnist-cpu")
run = parser.parse_args().run
fs = [f for f in glob.glob(f"{run}/cells/*.parquet") if f.count(".") == 1]
df = pd.concat(pd.read_parquet(f) for f in fs)
w = df.pivot_table(index="cell_id", columns="metric", values="value")
cell_s = df.groupby("cell_id")["seconds"].first()
over = (cell_s - w["seconds"] - w["eval_seconds"]) / cell_s
arm = df.groupby("cell_id")["estimator.theta_estimator"].first() + df.groupby("cell_id")["estimator.warmup_theta_estimator"].first().fillna("").map(lambda s: f" (warm {s})" if s else "")
t = pd.DataFrame({"arm": arm, "cell_s": cell_s, "train_s": w["seconds"], "eval_s": w["eval_seconds"], "overhead": over})
print(t.groupby("arm").agg(cells=("cell_s", "size"), cell_s=("cell_s", "mean"), train_s=("train_s", "mean"), eval_s=("eval_s", "mean"),
                           overhead_min=("overhead", "min"), overhead_max=("overhead", "max")).round(4).to_markdown())
print("cells:", len(t), "sum of cell seconds:", round(cell_s.sum()), "max overhead:", round(over.max(), 5))
