"""Timing primitives: interleaved rounds with device synchronisation, medians and IQRs, peak tensor memory of
one call, and log-log slopes with standard errors. Nothing here knows about suites or estimators."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradbench.protocols.wallclock import synchronize


@dataclass(frozen=True)
class Measured:
    """Median and IQR of the timed rounds of one function, and what one call evaluated."""

    seconds: float
    iqr: float
    evals: float  # single-point log-joint evaluations per call
    rounds: int

    @property
    def evals_per_second(self) -> float:
        return self.evals / self.seconds if self.seconds > 0 else float("nan")


def time_interleaved(fns: dict[str, Callable[[], Any]], *, device: str, warmup: int, repeats: int,
                     on_result: Callable[[str, Any], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, np.ndarray]:
    """Seconds of ``repeats`` rounds, each calling every function once in turn (after ``warmup``
    untimed rounds); ``device`` is synchronised around each call. ``on_result(name, value)`` (outside the timing)
    receives what each timed call returned. ``clock``: wall time by default; ``time.process_time`` counts only the
    CPU time of this process (on a shared CPU, the time it was scheduled out is not charged)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            t0 = clock()
            value = fn()
            synchronize(device)
            out[name].append(clock() - t0)
            if on_result is not None:
                on_result(name, value)
    return {name: np.asarray(v) for name, v in out.items()}


def _measured(seconds: np.ndarray, evals: float) -> Measured:
    q75, q25 = np.percentile(seconds, [75, 25])
    return Measured(float(np.median(seconds)), float(q75 - q25), float(evals), len(seconds))


@contextlib.contextmanager
def _quiet_stderr_fd() -> Any:
    """Silence file descriptor 2 (kineto prints a line to it at every profiler start and stop)."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], Any], device: str) -> float:
    """Peak tensor memory one call of ``fn`` adds, counted by torch's own allocator.

    CUDA: ``max_memory_allocated`` − allocated before (the caching allocator's count). CPU: the largest running
    sum of the allocation (+bytes) and free (−bytes) events that ``torch.profiler`` records with
    ``profile_memory=True``, in time order — the same quantity for the CPU allocator. (The resident set is no
    substitute: on Linux ≥ 6.2 VmRSS/VmHWM are per-CPU approximations and missed a 64 MiB tensor in CI.)
    Memory outside torch tensors (Python objects, NumPy arrays) is not counted."""
    if torch.device(device).type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr_fd():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_stderr_fd():
            prof.__exit__(None, None, None)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return float(max(0, np.cumsum([b for _, b in events]).max(initial=0))) if events else 0.0


def loglog_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """OLS slope of log y on log x and its standard error (NaN with fewer than 3 points or y ≤ 0)."""
    ok = (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if len(lx) < 3 or np.ptp(lx) == 0:
        return float("nan"), float("nan")
    X = np.column_stack([np.ones_like(lx), lx])
    coef, *_ = np.linalg.lstsq(X, ly, rcond=None)
    resid = ly - X @ coef
    sigma2 = float(resid @ resid) / (len(lx) - 2)
    se = math.sqrt(sigma2 * np.linalg.inv(X.T @ X)[1, 1])
    return float(coef[1]), se


def median_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free interval for the median of i.i.d. rounds: (x_(j), x_(n+1−j), coverage).

    j is the largest order with P(Bin(n, ½) ≤ j − 1) ≤ (1 − level)/2, so the coverage 1 − 2 P(Bin(n, ½) ≤ j − 1) is at
    least ``level`` (reported exactly); fewer than 6 rounds cannot reach 95 % and give (min, max) with their coverage.
    Reference: Conover (1999), *Practical Nonparametric Statistics*, §3.2."""
    from scipy.stats import binom

    xs = np.sort(np.asarray(x, dtype=float))
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    j = int(binom.ppf((1 - level) / 2, n, 0.5))  # smallest j with cdf(j) ≥ α/2, so cdf(j − 1) < α/2
    if j >= 1 and binom.cdf(j, n, 0.5) <= (1 - level) / 2:
        j += 1
    j = max(j, 1)
    return float(xs[j - 1]), float(xs[n - j]), float(1 - 2 * binom.cdf(j - 1, n, 0.5))
