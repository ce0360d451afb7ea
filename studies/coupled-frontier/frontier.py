"""Cost frontier of coupled i-SIR θ-gradients on a trained latent-20 VAE (Fashion-MNIST), against IWAE and SUMO.

Stages (each resumable; results are appended config by config):

* ``train``: the one arm of ``train.yaml`` (IWAE-8 θ / IWAE-8 reparameterised φ) through gradbench's own training
  loop (gradbench.training.cell.train) for ``--steps`` steps; the final (θ, φ) are read back from the cell's
  checkpoint (the budget is steps + 1 and ``checkpoint_every`` = steps, so the checkpoint holds the state after
  exactly ``--steps`` steps; the last step's update is discarded) into ``<out>/trained.pt``.
* ``measure``: the target at the trained (θ, φ) with x = the first 32 test images (one fixed binarisation), and
  R replicates of each estimator config through gradbench.registry.ESTIMATORS — coupled_isir over
  K × lag × (k, m) × index coupling, iwae (θ) and sumo — summarised with gradbench.protocols.variance (tr Σ̂ with
  its influence s.e., evals, work-normalised variance, Hill tail index) and gradbench.protocols.meeting (τ,
  censoring, lockstep efficiency). One row per config in ``<out>/frontier.csv``.
* ``plot``: ``<out>/frontier.png`` (cost vs tr Σ̂, log-log, with the Pareto frontier) and ``<out>/table.md``
  (sorted by work-normalised variance).

    OMP_NUM_THREADS=1 PYTHONPATH=. python studies/coupled-frontier/frontier.py --out DIR --stage all

No bias reference exists at latent 20: only variance and cost are measured (all estimators but iwae are unbiased
for ∇θ Σ_n log p(x_n); iwae is biased, O(1/K)).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POINTS = 32  # the fixed minibatch of test images

parser = argparse.ArgumentParser(description="Coupled i-SIR cost frontier on a trained latent-20 VAE.")
parser.add_argument("--out", type=Path, default=HERE, help="output folder (trained.pt, frontier.csv, table, figure)")
parser.add_argument("--stage", choices=["train", "measure", "plot", "all"], default="all")
parser.add_argument("--steps", type=int, default=1000, help="IWAE-8 training steps")
parser.add_argument("--R", type=int, default=20, help="replicates per config")
parser.add_argument("--K", default="8,16,64,256", help="coupled_isir particle counts")
parser.add_argument("--lags", default="1,10", help="coupled_isir lags L")
parser.add_argument("--km", default="0:0,2:10", help="coupled_isir (k:m) pairs")
parser.add_argument("--couplings", default="maximal,common_uniform", help="coupled_isir index couplings")
parser.add_argument("--iwae-K", default="8,64,512,2048", help="iwae particle counts (θ-gradient)")
parser.add_argument("--sumo", default="1", help="sumo K_min values (power tail, the defaults otherwise); empty: none")
parser.add_argument("--only", default="", help="comma-separated substrings: run only configs whose label has one")
parser.add_argument("--max-iter", type=int, default=10_000, help="coupled max_iter (censoring cap)")
parser.add_argument("--seed", type=int, default=0, help="seed of the measurement generators")
parser.add_argument("--block", type=int, default=0, help="replicates per estimator call (0: all R at once); each "
                    "block has its own generator, derive_seed(seed, 'frontier', label, b): memory ∝ block · K")
parser.add_argument("--tag", default="", help="appended to every label (a repeat of a config, e.g. at a larger R)")
args = parser.parse_args()

import numpy as np
import pandas as pd
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols import ProtocolContext
from gradbench.protocols.meeting import meeting
from gradbench.protocols.variance import variance
from gradbench.run.compute import target_for
from gradbench.run.plan import load_suite
from gradbench.seeding import derive_seed, make_generator
from gradbench.training import cell as training_cell
from gradbench.training import loop as train_protocol
from gradbench.training.params import TRAIN, TrainParams


def train_cell() -> object:
    """The suite's single train cell with this run's step budget and a minimal evaluation."""
    cell = load_suite(HERE / "train.yaml")[1][0]
    p = dict(cell.estimator_params)
    p.update(budget_value=args.steps + 1, checkpoint_every=args.steps)
    return dataclasses.replace(cell, estimator_params=p)


def train() -> None:
    cell = train_cell()
    ckdir = args.out / "checkpoints"
    t0 = time.perf_counter()
    rows, _curves = training_cell.train(cell, target_for(cell, training_cell.target_of(cell)), checkpoint_dir=ckdir)
    state = torch.load(ckdir / f"{cell.cell_id}.pt", weights_only=False)
    assert state["step"] == args.steps, state["step"]
    r = rows.set_index("metric")["value"]
    torch.save({"theta": state["theta"], "phi": state["phi"], "steps": state["step"], "cell_id": cell.cell_id,
                "train_seconds": state["seconds"], "test_iwae100_after_steps_plus_1": float(r["test_iwae_bound"])},
               args.out / "trained.pt")
    (ckdir / f"{cell.cell_id}.pt").unlink()
    print(f"trained {state['step']} steps in {state['seconds']:.1f} s (wall {time.perf_counter() - t0:.1f} s); "
          f"IWAE-100 bound on the 32 test points after {args.steps + 1} steps: {r['test_iwae_bound']:.2f}", flush=True)


def trained_target() -> object:
    """Target at the trained (θ, φ) with x = the first 32 test images (the held-out binarisation)."""
    cell = train_cell()
    grey = target_for(cell, training_cell.target_of(cell))
    p = TrainParams(**cell.estimator_params)
    base = derive_seed(cell.target.noise_seed(0), TRAIN, p.train_seed)
    full = train_protocol.initial_state(grey, p, base)
    test_x = train_protocol.held_out_data(cell, grey)[:POINTS]
    state = torch.load(args.out / "trained.pt", weights_only=False)
    return full.at(theta=state["theta"], phi=state["phi"], x=test_x)


def configs() -> list[tuple[str, str, dict]]:
    out = []
    ints = lambda s: [int(v) for v in s.split(",") if v]
    for K in ints(args.K):
        for L in ints(args.lags):
            for km in args.km.split(","):
                k, m = (int(v) for v in km.split(":"))
                for c in args.couplings.split(","):
                    p = {"K": K, "lag": L, "k": k, "m": m, "coupling": c, "max_iter": args.max_iter}
                    out.append((f"coupled_isir K={K} L={L} k={k} m={m} {c}", "coupled_isir", p))
    out += [(f"iwae K={K}", "iwae", {"K": K}) for K in ints(args.iwae_K)]
    out += [(f"sumo K_min={K}", "sumo", {"K_min": K}) for K in ints(args.sumo)]
    if args.only:
        out = [c for c in out if any(s in c[0] for s in args.only.split(","))]
    return [(label + args.tag, name, p) for label, name, p in out]


def summarise(label: str, name: str, params: dict, sample: object, seconds: float) -> dict:
    ctx = ProtocolContext(seed=args.seed, eps=float(torch.finfo(sample.grads.dtype).eps))
    rows = {(r["param_group"], r["metric"]): r for r in variance(sample, None, ctx) + meeting(sample, None, ctx)}
    get = lambda m, f="value": rows[("all", m)][f] if ("all", m) in rows else math.nan
    d = sample.diagnostics
    out = {"label": label, "estimator": name, **{k: params.get(k) for k in ("K", "lag", "k", "m", "coupling", "K_min")},
           "R": sample.replicates, "n_nonfinite": int(d["nonfinite"].sum()),
           "trace_cov": get("trace_cov"), "trace_cov_se": get("trace_cov", "stderr"),
           "evals_mean": get("evals_mean"), "evals_mean_se": get("evals_mean", "stderr"),
           "work_norm_var": get("work_norm_var"), "work_norm_var_se": get("work_norm_var", "stderr"),
           "seconds_per_rep": seconds / sample.replicates,
           "time_norm_var": get("trace_cov") * seconds / sample.replicates,
           "tail_index": get("tail_index"), "tail_index_se": get("tail_index", "stderr"),
           "heavy_tail_warning": bool(rows.get(("all", "trace_cov"), {}).get("warning"))}
    if "tau" in d:
        tau = d["tau"].double().numpy()
        out.update(n_censored=get("n_censored"), tau_mean=get("tau_mean"), tau_mean_se=get("tau_mean", "stderr"),
                   tau_median=float(np.median(tau)), tau_q90=get("tau_q90"), tau_max=get("tau_max"),
                   lockstep_efficiency=get("lockstep_efficiency"), lockstep_efficiency_se=get("lockstep_efficiency", "stderr"))
    return out


def measure() -> None:
    target = trained_target()
    path = args.out / "frontier.csv"
    done = set(pd.read_csv(path)["label"]) if path.exists() else set()
    for label, name, params in configs():
        if label in done:
            continue
        est = registry.ESTIMATORS[name]
        kw = est.params(**params).model_dump()
        t0 = time.perf_counter()
        if args.block <= 0:
            sample = est.fn(target, args.R, make_generator(derive_seed(args.seed, "frontier", label)), **kw)
        else:  # the coupled driver holds R × points × K particle states at once: K = 64, R = 200 ran out of memory
            sizes = [min(args.block, args.R - b) for b in range(0, args.R, args.block)]
            sample = GradSample.cat([est.fn(target, r, make_generator(derive_seed(args.seed, "frontier", label, b)),
                                            **kw) for b, r in enumerate(sizes)])
        seconds = time.perf_counter() - t0
        rec = summarise(label, name, params, sample, seconds)
        pd.DataFrame([rec]).to_csv(path, mode="a", header=not path.exists(), index=False)
        print(f"{label}: trΣ {rec['trace_cov']:.4g} ± {rec['trace_cov_se']:.2g}, evals {rec['evals_mean']:.4g}, "
              f"wnv {rec['work_norm_var']:.3g}, tau mean {rec.get('tau_mean', math.nan):.3g} max "
              f"{rec.get('tau_max', math.nan):.3g}, {seconds:.1f} s", flush=True)


def pareto(df: pd.DataFrame) -> pd.DataFrame:
    """Configs not dominated in (evals_mean, trace_cov): no other is at most as costly and has lower tr Σ̂."""
    d = df.sort_values(["evals_mean", "trace_cov"])
    best, keep = math.inf, []
    for i, r in d.iterrows():
        if r["trace_cov"] < best:
            best = r["trace_cov"]
            keep.append(i)
    return d.loc[keep]


def plot() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(args.out / "frontier.csv")
    ok = df[np.isfinite(df["trace_cov"])]
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    styles = {"maximal": "o", "common_uniform": "s"}
    for (name, coupling), g in ok.groupby([ok["estimator"], ok["coupling"].fillna("")]):
        for K, gk in g.groupby(g["K"].fillna(g["K_min"]) if name != "sumo" else g["K_min"]):
            lab = f"{name} K={K:g}" + (f" {coupling}" if coupling else "")
            ax.errorbar(gk["evals_mean"], gk["trace_cov"], yerr=gk["trace_cov_se"], xerr=gk["evals_mean_se"],
                        fmt=styles.get(coupling, "^" if name == "iwae" else "D"), ms=5, capsize=2, label=lab,
                        mfc="none" if coupling == "common_uniform" else None)
    front = pareto(ok)
    front_u = pareto(ok[ok["estimator"] != "iwae"])  # iwae is biased (O(1/K)); the others are unbiased
    ax.plot(front["evals_mean"], front["trace_cov"], "k--", lw=1, label="Pareto frontier (all)")
    ax.plot(front_u["evals_mean"], front_u["trace_cov"], "k:", lw=1, label="Pareto frontier (unbiased only)")
    ax.set(xscale="log", yscale="log", xlabel="log-joint evaluations per estimate (32 points)",
           ylabel="tr Σ̂ of the θ-gradient (sum over the 32 points)",
           title="θ-gradient cost frontier, trained VAE k=20 (Fashion-MNIST), R replicates per config\n"
                 "(every coupled row and sumo at R=20 carry the heavy-tail warning: their s.e. bars are unreliable)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out / "frontier.png", dpi=120)
    cols = ["label", "R", "n_censored", "tau_mean", "tau_median", "tau_q90", "tau_max", "trace_cov", "trace_cov_se",
            "evals_mean", "seconds_per_rep", "work_norm_var", "work_norm_var_se", "lockstep_efficiency", "tail_index",
            "tail_index_se", "heavy_tail_warning"]
    t = df.sort_values("work_norm_var")[[c for c in cols if c in df]]
    t.insert(1, "pareto", t["label"].isin(front["label"]))
    t.insert(2, "pareto_unbiased", t["label"].isin(front_u["label"]))
    (args.out / "table.md").write_text(t.to_markdown(index=False, floatfmt=".4g") + "\n")
    print(t.to_string(index=False))


if __name__ == "__main__":
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.stage in ("train", "all"):
        train()
    if args.stage in ("measure", "all"):
        measure()
    if args.stage in ("plot", "all"):
        plot()
