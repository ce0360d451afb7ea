"""The min-p combination rule of the Hotelling branch (T² + max-t) on exchangeable statistics, where the exact law is
known: the observed (T, M) and B = 499 draws are i.i.d. bivariate normal with correlation ρ, so a valid rule has
P(p ≤ α) ≤ α (= α on the grid k/(B + 1) when continuous). Rules:
  old      — before wave 4: each draw's p-values ranked within the draws, p = (1 + #{min(p_T*, p_M*) ≤ min(p_T, p_M)})/(B+1)
  fullpool — Westfall & Young with ranks in the pool of all B + 1 (observed included; ties counted)
  new      — the shipped fix (gradbench.stats._min_p_count): full-pool ranks, members ordered by (min rank, max rank)
200 000 replications per ρ, seed 0. usage: minp_rule.py"""
import argparse
import math

import numpy as np

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--replications", type=int, default=200_000, help="per ρ (a multiple of 5000)")
rng = np.random.default_rng(0)
B, nsim = 499, parser.parse_args().replications


def old(T, M):
    Tb, Mb = T[:, 1:], M[:, 1:]
    p_t = (1 + (Tb >= T[:, :1]).sum(1)) / (B + 1)
    p_m = (1 + (Mb >= M[:, :1]).sum(1)) / (B + 1)
    rt, rm = np.argsort(np.argsort(Tb, 1), 1), np.argsort(np.argsort(Mb, 1), 1)  # #{draws < draw}
    pmin_b = np.minimum((B + 1 - rt) / (B + 1), (B + 1 - rm) / (B + 1))
    return (1 + (pmin_b <= np.minimum(p_t, p_m)[:, None]).sum(1)) / (B + 1)


def fullpool(T, M):
    rt, rm = np.argsort(np.argsort(T, 1), 1), np.argsort(np.argsort(M, 1), 1)
    mp = np.minimum((B + 1 - rt) / (B + 1), (B + 1 - rm) / (B + 1))
    return ((mp[:, 1:] <= mp[:, :1]).sum(1) + 1) / (B + 1)


def new(T, M):
    from gradbench.stats import _min_p_count

    return np.array([(1 + _min_p_count(t[0], m[0], t[1:], m[1:])) / (B + 1) for t, m in zip(T, M)])


for rho in (0.0, 0.5, 0.9):
    out = {"old": [], "fullpool": [], "new": []}
    for _ in range(nsim // 5000):
        Z = rng.standard_normal((5000, B + 1, 2))
        T, M = Z[..., 0], rho * Z[..., 0] + math.sqrt(1 - rho**2) * Z[..., 1]
        for name, rule in (("old", old), ("fullpool", fullpool), ("new", new)):
            out[name].append(rule(T, M))
    for name, v in out.items():
        p = np.concatenate(v)
        print(f"rho={rho} {name:8s} " + "  ".join(f"P(p<={a:g}) = {np.mean(p <= a + 1e-12):.5f} ± {math.sqrt(a * (1 - a) / p.size):.5f}"
                                                 for a in (0.002, 0.01, 0.05, 0.1)))
