"""Summary over seeds, paired tests and τ over training of a train-digits run: python reports/train-digits/analyse.py RUN_DIR"""
import argparse

import pandas as pd

from gradbench.training.stats import paired_test, summarize

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("RUN_DIR", help="a finished run of suites/train-digits.yaml")
out = parser.parse_args().RUN_DIR
t = pd.read_parquet(f"{out}/results.parquet")
s = summarize(t)
pd.set_option("display.width", 200)
print(s[["pair", "metric", "mean", "stderr", "n_seeds"]].to_string(index=False))
pairs = list(dict.fromkeys(s["pair"]))
for i in range(len(pairs)):
    for j in range(i + 1, len(pairs)):
        r = paired_test(t, pairs[i], pairs[j])
        print(f"{pairs[j]}  minus  {pairs[i]}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()))
print(t[t.metric == "test_loglik"][["estimator.theta_estimator", "estimator.train_seed", "value", "stderr", "method"]].to_string(index=False))
c = pd.read_parquet(f"{out}/curves.parquet")
cc = c.dropna(subset=["tau"])
print("tau over training (coupled cells), by step bin:")
cc = cc.assign(bin=(cc.step - 1) // 100 * 100)
print(cc.groupby("bin")["tau"].agg(["mean", "std", "max", "count"]).assign(se=lambda d: d["std"] / d["count"] ** 0.5).to_string())
