"""Summary table, paired tests and learning-curve figure of an EBM training run (suites/train-ebm.yaml).

    python reports/ebm/train_summary.py runs/train-ebm [reports/ebm]   # → <run name>-summary.txt, figures/<run_name>_curves.png

Final exact log-likelihoods are mean ± s.e. over training seeds (:func:`gradbench.training.stats.summarize`);
each estimator is compared with ``exact_sampling`` (the oracle) over the seeds they share — common random numbers —
by :func:`gradbench.training.stats.paired_test` (Student t and the exact sign-flip permutation p-value).
Curves: exact held-out log p(x) against steps and against Gibbs sweeps, mean over seeds ± 1 s.e. band.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import pandas as pd

from gradbench.training.stats import pair_label, paired_test, summarize

BASELINE = "exact_sampling"


def label(r: pd.Series) -> str:
    return pair_label(r).removesuffix(" / None") + ("" if r["estimator.budget"] == "steps" else
                                                    f" [{r['estimator.budget']} {r['estimator.budget_value']:g}]")


def main(run: Path, out: Path) -> None:
    df = pd.read_parquet(run / "results.parquet")
    df["label"] = df.apply(label, axis=1)
    s = summarize(df)
    s["label"] = [p.removesuffix(" / None") + ("" if b == "steps" else f" [{b} {v:g}]")
                  for p, b, v in zip(s["pair"], s["estimator.budget"], s["estimator.budget_value"])]
    wide = s.pivot_table(index="label", columns="metric", values=["mean", "stderr"], aggfunc="first", sort=False)
    lines = ["final metrics: mean ± s.e. over training seeds (n_seeds each); log-lik in nats per digit, exact (log Z enumerated)",
             f"{'estimator':<62} {'seeds':>5} {'test_loglik':>18} {'train_loglik':>18} {'steps':>6} {'sweeps':>16} {'tau_mean':>12}"]
    n = s.groupby("label", sort=False)["n_seeds"].max()
    def cell(lab: str, m: str, spec: str = ".3f") -> str:
        if ("mean", m) not in wide.columns or pd.isna(wide.loc[lab, ("mean", m)]):
            return ""
        return f"{wide.loc[lab, ('mean', m)]:{spec}} ± {wide.loc[lab, ('stderr', m)]:.2g}"

    for lab in wide.index:
        f = functools.partial(cell, lab)
        lines.append(f"{lab:<62} {n[lab]:>5} {f('test_loglik'):>18} {f('train_loglik'):>18} "
                     f"{wide.loc[lab, ('mean', 'steps')]:>6.0f} {f('evals', '.0f'):>16} {f('train_tau_mean', '.2f'):>12}")
    pairs = df[df["metric"] == "test_loglik"].apply(pair_label, axis=1).unique()
    base = next(p for p in pairs if p.startswith(BASELINE))
    lines += ["", (f"paired differences vs {base.removesuffix(' / None')} over shared seeds (other − baseline), "
                   "Student t and exact sign-flip permutation p")]
    for metric in ("test_loglik", "train_loglik"):
        for p in pairs:
            if p == base:
                continue
            for budget, sub in df.groupby("estimator.budget"):
                sub_pairs = set(sub[sub["metric"] == metric].apply(pair_label, axis=1))
                if p not in sub_pairs:
                    continue
                steps = df[df["estimator.budget"] == "steps"]
                base_rows = steps[steps.apply(pair_label, axis=1) == base]
                t = paired_test(pd.concat([base_rows, sub]).drop_duplicates(subset=["cell_id", "metric"]), base, p, metric)
                lines.append(f"  {metric:<13} {p.removesuffix(' / None') + ('' if budget == 'steps' else f' [{budget}]'):<55} "
                             f"d = {t['mean_diff']:+.3f} ± {t['stderr']:.2g}  (n = {t['n_seeds']}, p_t = {t['p_t']:.2g}, "
                             f"p_perm = {t['p_perm']:.3g})")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{run.name}-summary.txt").write_text(text + "\n")
    figure(run, df, out / "figures" / f"{run.name.replace('-', '_')}_curves.png")


def figure(run: Path, df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    curves = pd.read_parquet(run / "curves.parquet").dropna(subset=["test_estimate"])
    labels = df.drop_duplicates("cell_id").set_index("cell_id")["label"]
    curves["label"] = curves["cell_id"].map(labels)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    palette = dict(zip(labels.unique(), sns.color_palette("colorblind")))
    for lab, g in curves.groupby("label", sort=False):
        for ax, x in zip(axes, ("step", "evals")):
            if x == "step":
                agg = g.groupby("step")["test_estimate"].agg(["mean", "std", "count"])
                xs = agg.index.to_numpy()
            else:  # sweeps differ between seeds for coupled chains: mean sweeps at each curve step
                agg = g.groupby("step").agg(mean=("test_estimate", "mean"), std=("test_estimate", "std"),
                                            count=("test_estimate", "count"), x=("evals", "mean"))
                xs = agg["x"].to_numpy()
            se = (agg["std"] / np.sqrt(agg["count"])).to_numpy()
            ax.plot(xs, agg["mean"], color=palette[lab], label=lab, linewidth=1.2)
            ax.fill_between(xs, agg["mean"] - se, agg["mean"] + se, color=palette[lab], alpha=0.25)
    axes[0].set_xlabel("Adam step")
    axes[1].set_xlabel("Gibbs sweeps of one chain (an exact draw counts 1)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("exact held-out log p(x) per digit (nats)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{run.name}: RBM on binarised digits, exact held-out log-lik, mean over training seeds ± 1 s.e.", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("RUN_DIR", type=Path, help="a finished run of suites/train-ebm.yaml")
    parser.add_argument("OUT", type=Path, nargs="?", default=Path(__file__).parent, help="report folder")
    args = parser.parse_args()
    main(args.RUN_DIR, args.OUT)
