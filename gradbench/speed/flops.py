"""Distance to the hardware limit: achieved FLOP/s of a gradient estimator ÷ FLOP/s of one large matrix product.

**FLOPs of a gradient** (matrix products only; an MLP decoder of widths w_0 = latent_dim, w_1..w_L = hidden,
w_{L+1} = data_dim, a_l = w_l · w_{l+1} multiply-adds per single-point layer l = 0..L):

* forward of one single-point log-joint evaluation: F = Σ_l 2 a_l (for B·K particles, 2·B·K·fan_in·fan_out per
  layer);
* backward to θ: every layer's weight gradient ∇W_l = Σ δ_l h_lᵀ (2 a_l) and every layer above the first passes δ
  down, δ_{l−1} = δ_l W_l (2 a_l); z needs no gradient, so backward = 2F − 2a_0 ≈ 2 × forward;
* gradient per evaluation G = 3F − 2a_0 = 2 (3 Σ_l a_l − a_0), and FLOPs of a call = G × evaluations.

Elementwise work (activations, bias adds, the likelihood) is O(Σ w_l) per evaluation against O(Σ a_l) and is not
counted. On the latent-20 VAE, hidden [200, 200], 784 data dimensions: Σ a_l = 200 800, a_0 = 4 000,
F = 401 600 and G = 1 196 800 FLOPs per evaluation. ``torch.utils.flop_counter.FlopCounterMode`` gives the same
count for an autograd forward + backward to θ (tested).

**Evaluations of a call**: the charged cost (``GradSample.cost``, summed over replicates) — exact for ``iwae``
(K·N per replicate). Where the estimator reports what it actually computed — the coupled estimators' diagnostics
``lockstep_cost`` (single-point evaluations the lock-stepped batch ran, per replicate) and ``pilot_cost`` (a
meeting-time pilot for ``k: auto``, forward only) — FLOPs = G × lockstep + F × pilot instead, and the row says so.

**Executed ÷ counted**: one extra, untimed call of each estimator under ``torch.utils.flop_counter.FlopCounterMode``
gives the matrix-product FLOPs torch actually ran; divided by the count above for the same call it is 1 for ``iwae``
and > 1 where an estimator recomputes (a coupled i-SIR step's fused gradient re-runs the forward of its two carried
particles, K + 1 per chain pair where K − 1 are counted). The fraction uses the count, not the executed FLOPs, so
recomputation shows as a lower fraction.

**Reference**: C = A B with A, B [n, n] (n = 1024 by default) in the same dtype, on the same device and thread
count, 2n³ FLOPs, called once per round, *interleaved* with the estimators (matmul, estimator 1, estimator 2, …),
so that the fraction of each round uses the matrix product of the same round; reported as the median over rounds
with its interquartile range and a distribution-free 95 % interval for the median (:func:`median_ci`). One large
GEMM is close to what one core can do (BLAS), so the fraction says how far an estimator's arithmetic is from it.
On the CPU the fraction is also computed from the CPU time of this process (``time.process_time``) instead of wall
time: on a shared machine a call that is scheduled out is charged wall time but no CPU time, and a long call (the
matmul, a coupled call) is scheduled out more often than a short one, so wall-time fractions of calls of different
lengths are not equally inflated by load. Caches and memory bandwidth stay shared either way.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols.wallclock import synchronize
from gradbench.speed.settings import SpeedError, SpeedPlan, SpeedSettings
from gradbench.speed.timing import median_ci

MATMUL_N = 1024


def mlp_widths(target: Any) -> tuple[int, ...] | None:
    """Layer widths (latent_dim, *hidden, data_dim) of a target whose log-joint is an MLP decoder (``vae``), else None."""
    from gradbench.models.vae import VAE

    model = getattr(target, "model", None)
    if not isinstance(model, VAE):
        return None
    return (model.latent_dim, *model.hidden, model.data_dim)


def forward_flops(widths: tuple[int, ...]) -> int:
    """F = Σ_l 2 · fan_in_l · fan_out_l: matrix-product FLOPs of one single-point forward pass."""
    return sum(2 * a * b for a, b in itertools.pairwise(widths))


def gradient_flops(widths: tuple[int, ...]) -> int:
    """G = 3F − 2 · w_0 · w_1: forward + backward to θ of one single-point evaluation (backward = 2F − 2a_0 ≈ 2F)."""
    return 3 * forward_flops(widths) - 2 * widths[0] * widths[1]


def matmul_flops(n: int) -> int:
    """2n³: the FLOPs of one [n, n] @ [n, n] product (n³ multiply-adds)."""
    return 2 * n**3


def call_flops(sample: GradSample, widths: tuple[int, ...]) -> tuple[float, float, str]:
    """(FLOPs, evaluations, what was counted) of one estimator call, from its :class:`GradSample`.

    ``lockstep_cost`` (+ ``pilot_cost``) when the estimator reports what it computed, else the charged cost."""
    d = sample.diagnostics
    if "lockstep_cost" in d:
        lock = float(d["lockstep_cost"].sum())
        pilot = float(d["pilot_cost"].sum()) if "pilot_cost" in d else 0.0
        return (gradient_flops(widths) * lock + forward_flops(widths) * pilot, lock + pilot,
                "computed (lockstep_cost + pilot_cost)")
    evals = float(sample.cost.sum())
    return gradient_flops(widths) * evals, evals, "charged (GradSample.cost)"


def run_flops(plan: SpeedPlan, settings: SpeedSettings, target: Any, gen: Callable[[str], torch.Generator],
              progress: Callable[[str], None] = lambda s: None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Interleaved rounds of [matmul, each estimator of the plan]: per-round FLOP fractions and the per-evaluation
    seconds of each estimator ÷ iwae's. Returns (rows, reference); raises :class:`SpeedError` for a target without
    an MLP FLOP count."""
    widths = mlp_widths(target)
    if widths is None:
        raise SpeedError(f"flops: model {plan.target.model!r} has no FLOP count (only the MLP decoder of 'vae')")
    n, device, R = settings.flops_matmul_n, plan.suite.device, plan.R
    dtype = target.theta[next(iter(target.theta))].dtype
    g_mm = gen("flops-matmul")
    a = torch.randn(n, n, generator=g_mm, dtype=dtype, device=device)
    b = torch.randn(n, n, generator=g_mm, dtype=dtype, device=device)
    c = torch.empty(n, n, dtype=dtype, device=device)
    ests = [(name, params, registry.ESTIMATORS[name].fn, gen(f"flops-{name}")) for name, params in plan.estimators]
    progress(f"FLOP fraction: {', '.join(n for n, *_ in ests)} interleaved with a [{n}, {n}] matmul "
             f"({settings.repeats} rounds)")

    def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """(wall seconds, CPU seconds of this process, result) of one call."""
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        synchronize(device)
        return time.perf_counter() - t0, time.process_time() - c0, out

    for _ in range(max(1, settings.warmup)):  # at least one: a lazily fitted proposal is fitted before the probe
        torch.mm(a, b, out=c)
        for _name, params, fn, g in ests:
            fn(target, R, g, **params)
    executed: dict[str, tuple[float, float]] = {}  # one untimed call each: (FLOPs torch ran, FLOPs counted)
    for name, params, fn, g in ests:
        with FlopCounterMode(display=False) as counter:
            sample = fn(target, R, g, **params)
        executed[name] = float(counter.get_total_flops()), call_flops(sample, widths)[0]
    mm_s: list[tuple[float, float]] = []
    rec: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, *_ in ests}  # (s, CPU s, flops, evals)
    how: dict[str, str] = {}
    for _ in range(settings.repeats):
        mm_s.append(timed(lambda: torch.mm(a, b, out=c))[:2])
        for name, params, fn, g in ests:
            s, cpu, sample = timed(lambda fn=fn, g=g, params=params: fn(target, R, g, **params))
            flops, evals, how[name] = call_flops(sample, widths)
            rec[name].append((s, cpu, flops, evals))
    mm, mm_cpu = (np.array(col) for col in zip(*mm_s, strict=True))
    mm_rate, mm_cpu_rate = matmul_flops(n) / mm, matmul_flops(n) / mm_cpu
    on_cpu = torch.device(device).type == "cpu"  # CPU time says nothing about a GPU's work
    reference = {"n": n, "flops": matmul_flops(n), **_summary(mm, "seconds"), **_summary(mm_rate, "gflops", 1e-9),
                 "forward_flops_per_eval": forward_flops(widths), "gradient_flops_per_eval": gradient_flops(widths),
                 "widths": list(widths)}
    if on_cpu:
        reference.update(_summary(mm_cpu_rate, "cpu_gflops", 1e-9))
    rows = []
    per_eval = {name: np.array([s / e if e > 0 else math.nan for s, _, _, e in v]) for name, v in rec.items()}
    cpu_per_eval = {name: np.array([c / e if e > 0 else math.nan for _, c, _, e in v]) for name, v in rec.items()}
    for name, params, *_ in ests:
        s, cpu, flops, evals = (np.array(col) for col in zip(*rec[name], strict=True))
        rate = flops / s
        row = {"name": name, "params": params, "evals": how[name], "R": R, **_summary(s, "seconds"),
               **_summary(flops, "gflop", 1e-9), **_summary(evals, "evals_per_call"), **_summary(rate, "gflops", 1e-9),
               **_summary(rate / mm_rate, "fraction"), "fraction_rounds": (rate / mm_rate).tolist(),
               "executed_gflop_probe": executed[name][0] * 1e-9,
               "executed_vs_counted": executed[name][0] / executed[name][1] if executed[name][1] > 0 else math.nan}
        if on_cpu:
            row.update(_summary(flops / cpu / mm_cpu_rate, "cpu_fraction"))
        if name != "iwae" and "iwae" in per_eval:
            row.update(_summary(per_eval[name] / per_eval["iwae"], "per_eval_vs_iwae"))
            if on_cpu:
                row.update(_summary(cpu_per_eval[name] / cpu_per_eval["iwae"], "cpu_per_eval_vs_iwae"))
        rows.append(row)
    return rows, reference


def _summary(x: np.ndarray, key: str, scale: float = 1.0) -> dict[str, Any]:
    """``key``: median; ``key_q25``/``key_q75``: interquartile range; ``key_ci``: 95 % interval for the median."""
    x = np.asarray(x, dtype=float) * scale
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    lo, hi, level = median_ci(x)
    return {key: float(med), f"{key}_q25": float(q25), f"{key}_q75": float(q75), f"{key}_ci": [lo, hi],
            f"{key}_ci_level": level}
