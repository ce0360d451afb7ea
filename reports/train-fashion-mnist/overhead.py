"""Each finished train cell's time outside its optimiser steps and its evaluation, as a fraction of the cell's time:
(cell seconds − training `seconds` − `eval_seconds`) / cell seconds, per arm (min and max over cells).

    python reports/train-fashion-mnist/overhead.py runs/train-fashion-mnist-cpu
"""

import argparse

import pandas as pd

from gradbench.report.data import load_run
from gradbench.training.stats import pair_labels

parser = argparse.ArgumentParser(description="Each train cell's time outside its steps and evaluation, per arm.")
parser.add_argument("run", help="a train run folder, e.g. runs/train-fashion-mnist-cpu")
df = load_run(parser.parse_args().run, partial=True).results  # the report's reader: a partial run's finished cells too
w = df.pivot_table(index="cell_id", columns="metric", values="value")
cell_s = df.groupby("cell_id")["seconds"].first()
over = (cell_s - w["seconds"] - w["eval_seconds"]) / cell_s
arm = pair_labels(df.drop_duplicates("cell_id").set_index("cell_id"))  # the arm as the report names it
t = pd.DataFrame({"arm": arm, "cell_s": cell_s, "train_s": w["seconds"], "eval_s": w["eval_seconds"], "overhead": over})
print(t.groupby("arm").agg(cells=("cell_s", "size"), cell_s=("cell_s", "mean"), train_s=("train_s", "mean"), eval_s=("eval_s", "mean"),
                           overhead_min=("overhead", "min"), overhead_max=("overhead", "max")).round(4).to_markdown())
print("cells:", len(t), "sum of cell seconds:", round(cell_s.sum()), "max overhead:", round(over.max(), 5))
