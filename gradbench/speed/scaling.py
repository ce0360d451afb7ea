"""Scaling laws (``gradbench speed --scaling``): seconds and peak memory of each estimator of a plan along R, K,
data dimension, hidden width and N, with log-log slopes and standard errors; markdown and a figure."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols.wallclock import device_info
from gradbench.run.cells import TargetConfig
from gradbench.run.compute import cell_thread_limits
from gradbench.seeding import derive_seed, make_generator
from gradbench.speed.results import _kv
from gradbench.speed.settings import DEFAULT_SETTINGS, SpeedPlan, SpeedSettings
from gradbench.speed.timing import loglog_slope, peak_memory_bytes, time_interleaved

# Each axis is swept with the others at the base point; values are multiples of the base (R, K) or absolute.
SCALING_FACTORS = (0.25, 0.5, 1.0, 2.0)
SCALING_AXES = ("R", "K", "data_dim", "hidden", "N")


def _scaled_target(cfg: TargetConfig, base: dict[str, int], axis: str, value: int) -> TargetConfig:
    """The target of the scaling base with one of data_dim / hidden / N changed (synthetic data of the model)."""
    point = {**base, axis: value} if axis in ("data_dim", "hidden", "N") else dict(base)
    params = {**cfg.params, "data_dim": point["data_dim"], "n_data": point["N"]}
    if cfg.model == "vae":
        params["hidden"] = [point["hidden"]] * max(1, len(cfg.params.get("hidden", [1])))
    elif cfg.model == "sbn":
        params["hidden"] = point["hidden"]
    return dataclasses.replace(cfg, params=params, data=None, data_sha256=None, data_spec=None)


def _seeded_call(fn: Callable[..., GradSample], target: Any, R: int, seed: int, device: str,
                 params: dict[str, Any]) -> GradSample:
    return fn(target, R, make_generator(seed, device), **params)


def run_scaling(plan: SpeedPlan, settings: SpeedSettings = DEFAULT_SETTINGS, *, factors: tuple[float, ...] = SCALING_FACTORS,
                axes: tuple[str, ...] = SCALING_AXES, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Seconds and peak memory of each estimator of ``plan`` along each axis (the others at the base point: the
    suite's R, iwae's K, the target's data_dim, first hidden width and N), and log-log slopes with standard errors.

    Every call re-seeds its generator (same work each repeat: coupled chains meet at the same times), so
    repeats differ only by the machine. ``slope_RK`` fits seconds (memory) against R·K on the R and K sweeps
    together: 1 when cost is linear in R·K with the same constant along both axes."""
    t_start, load_before = time.perf_counter(), os.getloadavg()[0]
    suite, cfg, device = plan.suite, plan.target, plan.suite.device
    base_target = cfg.build(suite.dtype, device)
    hidden0 = cfg.params.get("hidden", 0)
    base = {"R": plan.R, "K": plan.K, "data_dim": int(base_target.x.shape[1]), "N": int(base_target.n_data),
            "hidden": int(hidden0[0] if isinstance(hidden0, list) and hidden0 else hidden0 or 0)}
    if cfg.model not in ("vae", "sbn"):
        axes = tuple(a for a in axes if a != "hidden")
    rows: list[dict[str, Any]] = []
    with cell_thread_limits(settings.threads), torch.no_grad():
        for axis in axes:
            values = sorted({max(1, round(base[axis] * f)) for f in factors})
            for value in values:
                target = base_target if axis in ("R", "K") else _scaled_target(cfg, base, axis, value).build(
                    suite.dtype, device)
                R = value if axis == "R" else base["R"]
                for name, params in plan.estimators:
                    fn = registry.ESTIMATORS[name].fn
                    p = dict(params)
                    key = "K" if "K" in p else ("S" if "S" in p else None)
                    if axis == "K" and key:
                        p[key] = value
                    seed = derive_seed(cfg.noise_seed(0), "scaling", name)
                    call = functools.partial(_seeded_call, fn, target, R, seed, device, p)
                    progress(f"scaling: {name} {axis}={value}")
                    sample = call()
                    secs = time_interleaved({"f": call}, device=device, warmup=max(0, settings.warmup - 1),
                                            repeats=settings.repeats)["f"]
                    mem = [peak_memory_bytes(call, device) for _ in range(2)]
                    rows.append({"estimator": name, "axis": axis, "value": value, "R": R, "K": p.get(key, 0),
                                 "evals": float(sample.cost.sum()), "seconds": [float(x) for x in secs],
                                 "peak_bytes": mem, "P": target.layout.size})
    fits: list[dict[str, Any]] = []
    for name, _ in plan.estimators:
        for what in ("seconds", "peak_bytes"):
            for axis in axes:
                pts = [(r["value"], y) for r in rows if r["estimator"] == name and r["axis"] == axis for y in r[what]]
                b, se = loglog_slope(*map(np.asarray, zip(*pts)))
                fits.append({"estimator": name, "measure": what, "axis": axis, "slope": b, "se": se})
            pts = [(r["R"] * r["K"], y) for r in rows if r["estimator"] == name and r["axis"] in ("R", "K")
                   for y in r[what]]
            if pts:
                b, se = loglog_slope(*map(np.asarray, zip(*pts)))
                fits.append({"estimator": name, "measure": what, "axis": "R·K", "slope": b, "se": se})
    info = {**device_info(device), "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0],
            "seconds": time.perf_counter() - t_start, "target": f"{cfg.model}({_kv(cfg.params)})",
            "memory": "CUDA max_memory_allocated" if torch.device(device).type == "cuda" else
                      "peak torch-allocated bytes (torch.profiler memory events)"}
    return {"suite": suite.name, "dtype": suite.dtype, "device": device, "base": base, "factors": list(factors),
            "info": info, "rows": rows, "fits": fits}


def scaling_markdown(result: dict[str, Any]) -> str:
    i, b = result["info"], result["base"]
    lines = [f"Scaling `{result['suite']}` — {i['device_name']}, {i['threads']} thread(s), {result['dtype']}, "
             f"{result['device']}; {i['target']}; base " + ", ".join(f"{k}={v}" for k, v in b.items()) +
             f"; memory: {i['memory']}; load average {i['load_before']:.2f} → {i['load_after']:.2f} on {i['cpus']} "
             f"CPU(s); {i['seconds']:.0f} s.", "",
             "Log-log slopes (± s.e., OLS over all repeats) of seconds and peak memory along each axis:", "",
             "| estimator | measure | " + " | ".join(sorted({f["axis"] for f in result["fits"]}, key=_axis_order)) + " |",
             "| --- | --- |" + " ---: |" * len({f["axis"] for f in result["fits"]})]
    axes = sorted({f["axis"] for f in result["fits"]}, key=_axis_order)
    for name in dict.fromkeys(f["estimator"] for f in result["fits"]):
        for what in ("seconds", "peak_bytes"):
            cell = {f["axis"]: f for f in result["fits"] if f["estimator"] == name and f["measure"] == what}
            lines.append(f"| {name} | {what} | " + " | ".join(
                f"{cell[a]['slope']:.2f} ± {cell[a]['se']:.2f}" if a in cell else "" for a in axes) + " |")
    lines += ["", "| estimator | axis | value | R | K | evals | median s | peak MiB | P |", "| --- | --- |" + " ---: |" * 7]
    for r in result["rows"]:
        lines.append(f"| {r['estimator']} | {r['axis']} | {r['value']} | {r['R']} | {r['K']} | {r['evals']:.4g} | "
                     f"{np.median(r['seconds']):.3g} | {np.median(r['peak_bytes']) / 2**20:.3g} | {r['P']} |")
    return "\n".join(lines)


def _axis_order(axis: str) -> int:
    order = ["R·K", *SCALING_AXES]
    return order.index(axis) if axis in order else len(order)


def scaling_figure(result: dict[str, Any]) -> Any:
    """Seconds (top) and peak memory (bottom) against each swept axis, log-log, one line per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    axes = [a for a in SCALING_AXES if any(r["axis"] == a for r in result["rows"])]
    fig, grid = plt.subplots(2, len(axes), figsize=(3.2 * len(axes), 5.6), squeeze=False)
    names = list(dict.fromkeys(r["estimator"] for r in result["rows"]))
    for j, axis in enumerate(axes):
        for i, (what, label) in enumerate((("seconds", "seconds"), ("peak_bytes", "peak MiB"))):
            ax = grid[i][j]
            for name in names:
                rs = [r for r in result["rows"] if r["estimator"] == name and r["axis"] == axis]
                x = np.array([r["value"] for r in rs], dtype=float)
                y = np.array([np.median(r[what]) for r in rs]) / (2**20 if what == "peak_bytes" else 1.0)
                fit = next(f for f in result["fits"] if f["estimator"] == name and f["measure"] == what and f["axis"] == axis)
                ax.plot(x, y, "o-", label=f"{name}: {fit['slope']:.2f} ± {fit['se']:.2f}")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(x))  # the swept values, plainly labelled
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            if any(np.median(r[what]) > 0 for r in result["rows"] if r["axis"] == axis):
                ax.set_yscale("log")  # (a tiny target's peak memory can be below a page: nothing to log-scale)
            ax.set_xlabel(axis)
            if j == 0:
                ax.set_ylabel(label)
            ax.legend(fontsize=7, title="slope", title_fontsize=7)
    fig.suptitle(f"scaling of {result['info']['target']}"[:120], fontsize=8)
    fig.tight_layout()
    return fig
