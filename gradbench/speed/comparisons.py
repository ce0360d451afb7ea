"""One speed run (:func:`run_speed`): every comparison of a plan, interleaved in this process."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols.wallclock import device_info
from gradbench.run.compute import cell_thread_limits
from gradbench.seeding import derive_seed, make_generator
from gradbench.speed.floors import (
    _matched_R,
    _particles,
    floor_a,
    floor_log_joint_backward,
    floor_sample_log_joint,
    has_backward_floor,
    vmap_weighted_grad,
)
from gradbench.speed.flops import run_flops
from gradbench.speed.peers import _pyro_ratio
from gradbench.speed.results import SpeedReport, _as_dict, _kv, _ratio, _shown
from gradbench.speed.settings import DEFAULT_SETTINGS, SpeedPlan, SpeedSettings
from gradbench.speed.timing import _measured, time_interleaved


def run_speed(plan: SpeedPlan, settings: SpeedSettings = DEFAULT_SETTINGS, *,
              progress: Callable[[str], None] = lambda s: None) -> SpeedReport:
    """Run every comparison of ``plan`` in this process and return the report."""
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    suite = plan.suite
    target = plan.target.build(suite.dtype, suite.device)
    N = target.n_data
    R, K = plan.R, plan.K
    notes: list[str] = []
    ratios: list[dict[str, Any]] = []
    floors: dict[str, dict[str, Any]] = {}

    def gen(tag: str) -> torch.Generator:
        return make_generator(derive_seed(plan.target.noise_seed(0), "speed", tag), suite.device)

    iwae = registry.ESTIMATORS["iwae"].fn
    timing = {"device": suite.device, "warmup": settings.warmup, "repeats": settings.repeats}

    with cell_thread_limits(settings.threads), torch.no_grad():
        info = {**device_info(suite.device), "cpus": os.cpu_count(),
                "target": f"{plan.target.model}({_kv(plan.target.params)}; {_kv(plan.target.proposal)})"}

        # 1. iwae vs the floors at the same total evaluations (floor (b) is iwae itself here)
        fns: dict[str, Callable[[], Any]] = {}
        g_i, g_f, g_a = gen("iwae"), gen("floor-a"), gen("floor-ab")
        fns["iwae"] = lambda: iwae(target, R, g_i, K=K)
        fns["floor_fwd"] = lambda: floor_sample_log_joint(target, R, K, g_f)
        backward = has_backward_floor(target)
        if backward:
            fns["floor_a"] = lambda: floor_log_joint_backward(target, R, K, g_a)
        progress(f"iwae (K={K}, R={R}) vs the forward floor" + (" and floor (a) (forward + backward)" if backward else ""))
        t = time_interleaved(fns, **timing)
        E = R * K * N
        m_iwae, m_fwd = _measured(t["iwae"], E), _measured(t["floor_fwd"], E)
        m_a = _measured(t["floor_a"], E) if backward else m_fwd
        floors["floor_fwd"] = {"K": K, "R": R, **_as_dict(m_fwd)}
        floors["floor_a"] = {"K": K, "R": R, "backward": backward, **_as_dict(m_a)}
        floors["floor_b"] = {"K": K, "R": R, **_as_dict(m_iwae)}
        ratios.append(_ratio(f"iwae ÷ forward floor (sample + one batched log_joint, no backward), seconds at the same "
                             f"evaluations (K={K}, R={R}, N={N})", m_iwae.seconds / m_fwd.seconds, "floor_fwd", "≤"))
        if backward:
            ratios.append(_ratio(f"iwae ÷ floor (a) (sample + one batched log_joint + one backward to θ), seconds at the "
                                 f"same evaluations (K={K}, R={R}, N={N})", m_iwae.seconds / m_a.seconds, "floor_a", "≤"))
        else:
            notes.append("floor (a) is the forward floor: this target has no pure model to differentiate")

        # 2. per-replicate gradients [R, P]: the model's batched weighted surrogate vs torch.func vmap(grad)
        if backward and hasattr(target.model, "weighted_grad_log_joint"):
            ratios.append(_per_replicate_ratio(target, R, K, gen("per-replicate"), timing, progress))

        # 3. Pyro RenyiELBO(alpha=0) per replicate vs iwae per replicate
        if settings.pyro:
            ratios += _pyro_ratio(plan, settings, target, notes, progress)

        # 4. each estimator: evals/s, fractions of floors (a) and (b) at its own E and K
        est_rows = []
        for name, params in plan.estimators:
            progress(f"{name}({_kv(_shown(name, params))})")
            row = _estimator_row(plan, settings, target, name, params, gen)
            est_rows.append(row)
            if name.startswith("coupled_") and not math.isnan(row["frac_floor_b"]):
                ratios.append(_ratio(f"{name} evals/s ÷ floor (b) (iwae, K={row['floor_K']}, same evaluations)",
                                     row["frac_floor_b"], "floor_b"))

        # 5. one coupled pair at a time vs vectorised
        looped = [(n, p) for n, p in plan.estimators if n in settings.loop]
        for name in settings.loop:
            if name not in {n for n, _ in looped}:
                notes.append(f"one-pair loop: {name!r} is not among the suite's estimators, skipped")
        for name, params in looped:
            progress(f"{name}: vectorised vs one pair at a time (R={R})")
            ratios.append(_loop_ratio(plan, settings, target, name, params, gen))

        # 6. distance to the hardware limit: FLOP/s of each estimator ÷ FLOP/s of one large matmul, interleaved
        flops_rows: list[dict[str, Any]] = []
        flops_reference: dict[str, Any] = {}
        if settings.flops:
            flops_rows, flops_reference = run_flops(plan, settings, target, gen, progress)

    info["load_before"], info["load_after"] = load_before, os.getloadavg()[0]
    info["seconds"] = time.perf_counter() - t_start
    if max(load_before, info["load_after"]) > 0.75 * (os.cpu_count() or 1):
        notes.append(f"the machine was loaded (1-min load average {load_before:.2f} → {info['load_after']:.2f} on "
                     f"{os.cpu_count()} CPUs): absolute times are inflated; interleaving keeps the ratios comparable")
    return SpeedReport(suite.name, suite.dtype, suite.device, settings, info, ratios, est_rows, floors, notes,
                       flops_rows, flops_reference)



def _per_replicate_ratio(target: Any, R: int, K: int, gen: torch.Generator, timing: dict[str, Any],
                         progress: Callable[[str], None]) -> dict[str, Any]:
    """Seconds of R per-replicate weighted gradients [R, P] by vmap(grad) ÷ by the model's batched surrogate."""
    progress(f"per-replicate gradients (R={R}, K={K}): model's batched surrogate vs vmap(grad)")
    z, log_q = target.sample_proposal((R, K), gen)
    w = torch.softmax(target.log_joint(z) - log_q, dim=1)
    fast, generic = target.weighted_grad_log_joint(z, w), vmap_weighted_grad(target, z, w)
    diff = float((fast - generic).abs().max() / fast.abs().max())
    t = time_interleaved({"surrogate": lambda: target.weighted_grad_log_joint(z, w),
                          "vmap": lambda: vmap_weighted_grad(target, z, w)}, **timing)
    sur, vm = float(np.median(t["surrogate"])), float(np.median(t["vmap"]))
    return _ratio(f"per-replicate θ-gradients [R, P] (R={R}, K={K}, P={target.layout.size}): torch.func vmap(grad) ÷ "
                  f"the model's batched weighted surrogate (surrogate {sur * 1e3:.3g} ms, vmap(grad) {vm * 1e3:.3g} ms; "
                  f"agree to {diff:.1g})", vm / sur, None, surrogate_seconds=sur, vmap_seconds=vm, max_rel_diff=diff)



def _estimator_row(plan: SpeedPlan, settings: SpeedSettings, target: Any, name: str, params: dict[str, Any],
                   gen: Callable[[str], torch.Generator]) -> dict[str, Any]:
    fn = registry.ESTIMATORS[name].fn
    R, N = plan.R, target.n_data
    g = gen(f"est-{name}")
    probe: GradSample = fn(target, R, g, **params)
    evals = float(probe.cost.sum())
    K = _particles(params, plan.K)
    fns: dict[str, Callable[[], Any]] = {"est": lambda: fn(target, R, g, **params)}
    Rm = _matched_R(evals, K, N)
    if evals > 0:
        g_a, g_b = gen(f"fa-{name}"), gen(f"fb-{name}")
        iwae = registry.ESTIMATORS["iwae"].fn
        floor = floor_a(target)
        fns["floor_a"] = lambda: floor(target, Rm, K, g_a)
        fns["floor_b"] = lambda: iwae(target, Rm, g_b, K=K)
    timed_evals: list[float] = []  # each timed call's own cost: a coupled call's varies with its meeting times

    def record(key: str, value: Any) -> None:
        if key == "est":
            timed_evals.append(float(value.cost.sum()))

    t = time_interleaved(fns, device=plan.suite.device, warmup=settings.warmup, repeats=settings.repeats,
                         on_result=record)
    evals = float(np.mean(timed_evals)) if timed_evals else evals
    m = _measured(t["est"], evals)
    frac_a = frac_b = float("nan")
    if evals > 0:
        fa, fb = _measured(t["floor_a"], Rm * K * N), _measured(t["floor_b"], Rm * K * N)
        frac_a, frac_b = m.evals_per_second / fa.evals_per_second, m.evals_per_second / fb.evals_per_second
    row = {"name": name, "params": _shown(name, params), "seconds": m.seconds, "iqr": m.iqr,
           "seconds_per_estimate": m.seconds / R, "evals_per_estimate": evals / R,
           "evals_per_second": m.evals_per_second, "frac_floor_a": frac_a, "frac_floor_b": frac_b, "floor_K": K}
    if "lockstep_cost" in probe.diagnostics:
        row["lockstep_evals_per_estimate"] = float(probe.diagnostics["lockstep_cost"].mean())
    return row


def _loop_ratio(plan: SpeedPlan, settings: SpeedSettings, target: Any, name: str, params: dict[str, Any],
                gen: Callable[[str], torch.Generator]) -> dict[str, Any]:
    fn = registry.ESTIMATORS[name].fn
    R = plan.R
    g_v, g_l = gen(f"loop-vectorised-{name}"), gen(f"loop-one-pair-{name}")

    def one_at_a_time() -> None:
        for _ in range(R):
            fn(target, 1, g_l, **params)

    t = time_interleaved({"vectorised": lambda: fn(target, R, g_v, **params), "loop": one_at_a_time},
                         device=plan.suite.device, warmup=1, repeats=settings.loop_repeats)
    vec, loop = float(np.median(t["vectorised"])) / R, float(np.median(t["loop"])) / R
    return _ratio(f"{name} one pair at a time ÷ vectorised, seconds per replicate (R={R}; loop "
                  f"{loop * 1e3:.3g} ms, vectorised {vec * 1e6:.3g} µs)", loop / vec, "loop",
                  loop_seconds=loop, vectorised_seconds=vec)
