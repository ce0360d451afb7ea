"""Learning curves (IWAE_100 test estimate, mean ± s.e. over the 5 seeds), final exact test log-likelihood per
estimator pair (± s.e. over seeds), and the coupled estimator's meeting time τ over training.
Run: python reports/train-digits/figures.py [RUN_DIR]  (default: this folder's results/curves parquet files)"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gradbench.protocols.train import pair_label, summarize

here = Path(__file__).parent
run = Path(sys.argv[1]) if len(sys.argv) > 1 else here
table, curves = pd.read_parquet(run / "results.parquet"), pd.read_parquet(run / "curves.parquet")
labels = table.drop_duplicates("cell_id").set_index("cell_id").apply(pair_label, axis=1)
curves["pair"] = curves["cell_id"].map(labels)
fig, ax = plt.subplots(1, 3, figsize=(15, 4))
ev = curves.dropna(subset=["test_estimate"])
for pair, g in ev.groupby("pair", sort=False):
    s = g.groupby("step")["test_estimate"].agg(["mean", "std", "count"])
    se = s["std"] / np.sqrt(s["count"])
    ax[0].plot(s.index, s["mean"], label=pair)
    ax[0].fill_between(s.index, s["mean"] - se, s["mean"] + se, alpha=0.3)
ax[0].set(xlabel="Adam step", ylabel="test IWAE_100 estimate (nats/point)", title="learning curves (± s.e., 5 seeds)")
ax[0].legend(fontsize=7)
summ = summarize(table)
final = summ[summ["metric"] == "test_loglik"]
ax[1].errorbar(range(len(final)), final["mean"], yerr=1.96 * final["stderr"], fmt="o", capsize=4)
ax[1].set_xticks(range(len(final)), [p.replace(" / ", "\n") for p in final["pair"]], fontsize=7)
ax[1].set(ylabel="exact test log p(x) (nats/point)", title="final, 95% CI over seeds (400 steps)")
tau = curves.dropna(subset=["tau"])
b = tau.assign(bin=(tau["step"] - 1) // 25 * 25 + 12.5).groupby("bin")["tau"].agg(["mean", "std", "count", "max"])
ax[2].errorbar(b.index, b["mean"], yerr=b["std"] / np.sqrt(b["count"]), fmt="o-", ms=3, label="mean τ (± s.e.)")
ax[2].plot(b.index, b["max"], "x", label="max τ")
ax[2].set(xlabel="Adam step", ylabel="meeting time τ (max over the batch's 32 chains)", yscale="log",
          title="coupled i-SIR K=8: τ over training")
ax[2].legend(fontsize=7)
fig.tight_layout()
(here / "figures").mkdir(exist_ok=True)
fig.savefig(here / "figures" / "train-digits.png", dpi=110)
print(here / "figures" / "train-digits.png")
