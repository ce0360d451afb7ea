"""Wall-clock cost of one estimate (docs/design.md §9.5), measured by re-running the cell's estimator.

The runner's sample is not timed (its first call pays for allocation and dispatch warm-up, and
it may be split into replicate blocks). Instead ``ctx.rerun(B)`` runs the estimator on a batch of
B = min(replicates, ``MAX_BATCH``) replicates: ``WARMUP`` untimed calls, then timed calls until
at least ``MIN_REPEATS`` and at most ``MAX_REPEATS`` calls have run and ``BUDGET_S`` seconds have
passed. On CUDA every timed call is bracketed by ``torch.cuda.synchronize`` so the clock sees the
kernels, not just their launch. Per timed call c with wall time t_c and total cost E_c (log-joint
evaluations of the B replicates):

* ``seconds_per_estimate`` median of t_c / B (one estimate = one replicate), and
  ``seconds_per_estimate_iqr`` its inter-quartile range;
* ``evals_per_second`` median of E_c / t_c, and ``evals_per_second_iqr``;
* ``work_norm_var_seconds`` (every parameter group) tr Σ̂ × seconds_per_estimate: the variance
  of an estimator that spends one second, tr Σ̂ from the cell's sample as in ``variance``.

The s.e. of a median is 1.2533 σ̂/√n with the robust σ̂ = IQR/1.349 (normal approximation);
``work_norm_var_seconds`` combines it with the s.e. of tr Σ̂ by the delta method. Every timing row
carries ``device=<name>; torch=<version>; cuda=<version|none>; threads=<torch threads>;
timed=<n>x<B>`` in its ``method`` column. Timings are properties of a machine and its load, so
they are recorded, never asserted.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from gradbench.core import GradSample, Reference
from gradbench.protocols import FiniteSample, ProtocolContext, Row, group_slices, row
from gradbench.stats import influence_se

MAX_BATCH = 1000
WARMUP = 2
MIN_REPEATS = 5
MAX_REPEATS = 25
BUDGET_S = 2.0


# -- timing primitives (also used by ``gradbench speed`` and the asv benchmarks) ---------------
def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls of one function, and the last call's result."""

    seconds: np.ndarray
    result: Any

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))

    @property
    def iqr(self) -> float:
        return _iqr(self.seconds)


def time_calls(
    fn: Callable[[], Any],
    *,
    device: str | torch.device = "cpu",
    warmup: int = WARMUP,
    min_repeats: int = MIN_REPEATS,
    max_repeats: int = MAX_REPEATS,
    budget_s: float = BUDGET_S,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time calls (synchronising ``device`` around each)
    until ``min_repeats`` calls and ``budget_s`` seconds are done, or ``max_repeats`` calls."""
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(f"need 1 ≤ min_repeats ≤ max_repeats, got {min_repeats}, {max_repeats}")
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < budget_s):
        synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(np.asarray(times), result)


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Device name, torch and CUDA versions, and torch's intra-op thread count."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    return {"device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "threads": torch.get_num_threads()}


def describe(device: str | torch.device, n: int, batch: int) -> str:
    info = device_info(device)
    return (f"device={info['device_name']}; torch={info['torch']}; cuda={info['cuda']}; "
            f"threads={info['threads']}; timed={n}x{batch}")


def robust_median_se(x: np.ndarray) -> float:
    """s.e. of the median from the IQR: 1.2533 (IQR/1.349)/√n."""
    if len(x) < 2:
        return float("nan")
    q75, q25 = np.percentile(x, [75, 25])
    return float(1.2533 * (q75 - q25) / 1.349 / np.sqrt(len(x)))


# -- the protocol --------------------------------------------------------------------------------
def wallclock(sample: GradSample, reference: Reference | None, ctx: ProtocolContext) -> list[Row]:
    if ctx.rerun is None:
        raise ValueError("the wallclock protocol re-runs the estimator: it needs ctx.rerun "
                         "(set by gradbench.protocols.measure.run_cell)")
    batch = max(1, min(sample.replicates, MAX_BATCH))
    timing = time_calls(lambda: ctx.rerun(batch), device=ctx.device, warmup=WARMUP, min_repeats=MIN_REPEATS,
                        max_repeats=MAX_REPEATS, budget_s=BUDGET_S)
    out: GradSample = timing.result
    evals = float(out.cost.sum())
    per_estimate = timing.seconds / batch
    eps_rate = evals / timing.seconds
    method = describe(ctx.device, len(timing.seconds), batch)
    spe = float(np.median(per_estimate))
    spe_se = robust_median_se(per_estimate)
    rows = [
        row("all", "seconds_per_estimate", spe, spe_se, method),
        row("all", "seconds_per_estimate_iqr", _iqr(per_estimate), float("nan"), method),
        row("all", "evals_per_second", float(np.median(eps_rate)), robust_median_se(eps_rate), method),
        row("all", "evals_per_second_iqr", _iqr(eps_rate), float("nan"), method),
    ]
    fs = FiniteSample.of(sample)
    n = fs.G.shape[0]
    if n < 2:
        return rows
    for name, sl in group_slices(sample.layout).items():
        G = fs.G[:, sl]
        q = ((G - G.mean(0)) ** 2).sum(1)
        trace = float(q.sum() / (n - 1))
        trace_se = influence_se(q * n / (n - 1) - trace)
        se = float(np.hypot(trace_se * spe, trace * spe_se))
        rows.append(row(name, "work_norm_var_seconds", trace * spe, se, method))
    return rows


def _iqr(x: np.ndarray) -> float:
    q75, q25 = np.percentile(x, [75, 25])
    return float(q75 - q25)
