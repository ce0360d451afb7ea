"""``gradbench speed``: gradbench side by side with its floors and peers, measured in one run.

Everything is timed in one process on one target (same model, data, proposal, dtype, device and
torch thread count), with the compared functions *interleaved* (A, B, A, B, ...) so a change in
machine load hits both sides alike; every figure is a median over the timed rounds.

The speed suite is an ordinary run suite (``gradbench run`` accepts it too) with one target and
an ``iwae`` estimator whose K is the K of the floors and of the Pyro comparison; its replicates are
the R of every vectorised call. How to time (threads, rounds, peers, loops) are command options.

Measurements (E = R·K·N single-point log-joint evaluations of the compared call):
* **forward floor**: ``sample_proposal`` + one batched ``log_joint`` on E particles, no gradient.
* **floor (a)**: the forward floor + one backward pass to θ of the summed log-joint (targets with a pure model,
  ``model.log_joint(θ, x, z)``: PPCA, ``vae`` — one batched decoder forward + backward —, ``sbn``): the least
  a θ-gradient estimator that evaluates E particles must do. Targets without a pure model use the forward floor.
* **floor (b)**: the batched ``iwae`` gradient at the same K and the same E (evals/s).
* **per-replicate gradients**: the R weighted gradients [R, P] by the model's batched weighted surrogate
  (hand-written backpropagation, e.g. :meth:`gradbench.models.vae.VAE.weighted_grad_log_joint`) vs
  ``torch.func.vmap(grad(·))`` (:func:`vmap_weighted_grad`), on the same particles and weights.
* **iwae vs Pyro**: ``iwae`` for R replicates at once vs Pyro's ``RenyiELBO(alpha=0, vectorize_particles=True)``
  on the same PPCA or Bernoulli VAE (one replicate per call, one data point: RenyiELBO weighs whole particles),
  after checking that both give the same gradient for the same noise (:mod:`gradbench.peers.pyro_ppca`,
  :mod:`gradbench.peers.pyro_vae`).
* **one pair at a time**: a coupled estimator vectorised over R replicates vs the same function
  called R times with R = 1 (how public reference implementations run coupled chains).
* **per estimator**: evals/s and its fraction of floors (a) and (b) at the estimator's own E and K.

Goals are printed beside each ratio: issue 8 (PPCA) Pyro ÷ iwae ≥ 50 per replicate, loop ÷ vectorised ≥ 30,
coupled evals/s ≥ 0.5 × floor (b), iwae time ≤ 3 × the forward floor; issue 18 (neural targets) iwae time ≤ 2 ×
floor (a), Pyro ÷ iwae ≥ 20 on the VAE. A suite with several targets is compared target by target in one
process. Timings depend on the machine and its load (the 1-minute load average is recorded before and after),
so they are reported, never asserted.

``--scaling`` (:func:`run_scaling`) instead sweeps R, K, data dimension, hidden width and N around the suite's
first target and fits log-log slopes of seconds and peak memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from pydantic import ValidationError

from gradbench import registry
from gradbench.core import GradSample
from gradbench.executors import cell_thread_limits
from gradbench.protocols.wallclock import device_info, synchronize
from gradbench.seeding import derive_seed, make_generator
from gradbench.suite import Cell, Suite, SuiteError, TargetConfig, load_suite
from gradbench.target import per_replicate_grad

# issue 8 (PPCA): Pyro ÷ iwae ≥ 50, loop ÷ vectorised ≥ 30, coupled ≥ 0.5 × floor (b), iwae ≤ 3 × the forward floor;
# issue 18 (neural targets): iwae ≤ 2 × floor (a) (forward + backward), Pyro ÷ iwae ≥ 20 on the VAE.
GOALS = {"pyro": 50.0, "pyro_vae": 20.0, "loop": 30.0, "floor_b": 0.5, "floor_fwd": 3.0, "floor_a": 2.0}


# -- settings ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeedSettings:
    """How to time (command options); *what* to time is the suite."""

    threads: int | None = None  # torch intra-op threads (None: torch's default)
    warmup: int = 2  # untimed rounds first
    repeats: int = 15  # timed rounds per comparison
    pyro: bool = True  # compare iwae with Pyro's RenyiELBO(alpha=0) (needs n_data = 1 and Pyro)
    pyro_block: int = 10  # Pyro calls (one replicate each) per timed round
    pyro_validate: bool = False  # Pyro's argument validation (off: Pyro at its fastest)
    check_seeds: int = 3  # seeds on which Pyro and iwae must agree before timing
    loop: tuple[str, ...] = ("coupled_isir",)  # estimators also run one replicate (one coupled pair) at a time
    loop_repeats: int = 3


@dataclass(frozen=True)
class SpeedPlan:
    """The one target, the particle count K of iwae, R, and the estimators of a speed suite."""

    suite: Suite
    target: TargetConfig
    K: int
    R: int
    estimators: list[tuple[str, dict[str, Any]]]


def plans(suite: Suite, cells: list[Cell], path: str | Path = "suite") -> list[SpeedPlan]:
    """One speed plan per target of a (validated, expanded) run suite, in suite order; each needs an iwae estimator."""
    by_target: dict[str, list[Cell]] = {}
    for c in cells:
        by_target.setdefault(c.target.target_id, []).append(c)
    out = []
    for group in by_target.values():
        iwae_cells = [c for c in group if c.estimator == "iwae"]
        if not iwae_cells:
            raise SuiteError(f"{path}: a speed suite needs an iwae estimator: its K is the K of the floors and of Pyro")
        out.append(SpeedPlan(suite, group[0].target, int(iwae_cells[0].estimator_params["K"]), suite.replicates,
                             [(c.estimator, c.estimator_params) for c in group]))
    return out


def plan(suite: Suite, cells: list[Cell], path: str | Path = "suite") -> SpeedPlan:
    """The speed plan of a suite with exactly one target (after grid expansion) and an iwae estimator."""
    targets = {c.target.target_id for c in cells}
    if len(targets) != 1:
        raise SuiteError(f"{path}: a speed suite needs exactly one target (after grid expansion), got {len(targets)}")
    return plans(suite, cells, path)[0]


# -- timing --------------------------------------------------------------------------------------
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


def time_interleaved(fns: dict[str, Callable[[], Any]], *, device: str, warmup: int, repeats: int) -> dict[str, np.ndarray]:
    """Seconds of ``repeats`` rounds, each calling every function once in turn (after ``warmup``
    untimed rounds); ``device`` is synchronised around each call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            out[name].append(time.perf_counter() - t0)
    return {name: np.asarray(v) for name, v in out.items()}


def _measured(seconds: np.ndarray, evals: float) -> Measured:
    q75, q25 = np.percentile(seconds, [75, 25])
    return Measured(float(np.median(seconds)), float(q75 - q25), float(evals), len(seconds))


# -- the floors ------------------------------------------------------------------------------------
def floor_sample_log_joint(target: Any, R: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """Forward floor: draw R × K particles per data point and evaluate the log-joint once, batched (no gradient)."""
    z, _ = target.sample_proposal((R, K), gen)
    return target.log_joint(z)


def has_backward_floor(target: Any) -> bool:
    """Targets built from a pure model (contract v2: ``model.log_joint(θ, x, z)``) have floor (a) with a backward."""
    return hasattr(target, "model") and hasattr(target, "theta") and hasattr(target.model, "log_joint")


def floor_log_joint_backward(target: Any, R: int, K: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Floor (a): draw R × K particles per data point, one batched ``log_joint`` (for the VAE: one batched decoder
    forward) and one backward pass to θ of its sum — the least a θ-gradient estimator that evaluates E = R·K·N
    particles must do. It returns one summed gradient, not R of them (an [R, P] result costs more)."""
    z, _ = target.sample_proposal((R, K), gen)
    theta = {k: v.detach().requires_grad_() for k, v in target.theta.items()}
    with torch.enable_grad():
        total = target.model.log_joint(theta, target.x, z).sum()
        return torch.autograd.grad(total, list(theta.values()))


def floor_a(target: Any) -> Callable[[Any, int, int, torch.Generator], Any]:
    """Floor (a) of a target: forward + backward where the target has a pure model, else the forward floor."""
    return floor_log_joint_backward if has_backward_floor(target) else floor_sample_log_joint


def vmap_weighted_grad(target: Any, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_{k,n} weights[r, k, n] ∇θ log p(x_n, z[r, k, n]) for every replicate r → [R, P], by
    ``torch.func.vmap(grad(·))`` of the weighted surrogate: the generic path of
    :meth:`gradbench.target.ComposedTarget.weighted_grad_log_joint`, bypassing a model's hand-written one."""
    model, x = target.model, target.x

    def surrogate(theta: Any, z1: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        return (w1 * model.log_joint(theta, x, z1)).sum()

    grads = per_replicate_grad(surrogate, target.theta, z, weights)
    return target.layout.flatten(grads, batch=(z.shape[0],))


def _matched_R(evals: float, K: int, n_data: int) -> int:
    """Replicates of a K-particle call that evaluate ``evals`` single-point log-joints."""
    return max(1, round(evals / (K * n_data)))


def _particles(params: dict[str, Any], default: int) -> int:
    for key in ("K", "S"):
        if isinstance(params.get(key), int):
            return int(params[key])
    return default


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class SpeedReport:
    suite: str
    dtype: str
    device: str
    settings: SpeedSettings
    info: dict[str, Any]
    ratios: list[dict[str, Any]]
    estimators: list[dict[str, Any]]
    floors: dict[str, dict[str, Any]]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "dtype": self.dtype, "device": self.device, "settings": asdict(self.settings),
                "info": self.info, "ratios": self.ratios,
                "estimators": self.estimators, "floors": self.floors, "notes": self.notes}

    def markdown(self) -> str:
        i = self.info
        lines = [
            (f"Speed suite `{self.suite}` — {i['device_name']}, {i['threads']} thread(s), torch {i['torch']} "
             f"(CUDA {i['cuda']}), {self.dtype}, device {self.device}; target {i['target']}; "
             f"load average {i['load_before']:.2f} → {i['load_after']:.2f} on {i['cpus']} CPU(s); {i['seconds']:.0f} s."),
            "",
            "| comparison | ratio | goal | met |",
            "| --- | ---: | ---: | :---: |",
        ]
        for r in self.ratios:
            goal = "" if r["goal"] is None else f"{r['goal_op']} {_fmt(r['goal'])}"
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(f"| {r['label']} | {_fmt(r['value'])} | {goal} | {met} |")
        lines += [
            "",
            "| estimator | params | s / estimate | evals / estimate | evals/s | ÷ floor (a) | ÷ floor (b) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for e in self.estimators:
            params = ", ".join(f"{k}={v}" for k, v in e["params"].items())
            lines.append(f"| {e['name']} | {params} | {e['seconds_per_estimate']:.3g} | {e['evals_per_estimate']:.4g} | "
                         f"{e['evals_per_second']:.3g} | {_fmt(e['frac_floor_a'])} | {_fmt(e['frac_floor_b'])} |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3g}"


def _ratio(label: str, value: float, goal_key: str | None, op: str = "≥", **extra: Any) -> dict[str, Any]:
    goal = GOALS.get(goal_key) if goal_key else None
    met = None if goal is None or math.isnan(value) else (value >= goal if op == "≥" else value <= goal)
    return {"label": label, "value": value, "goal": goal, "goal_op": op, "met": met, **extra}


def run_speed(plan: SpeedPlan, settings: SpeedSettings = SpeedSettings(), *,
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

    info["load_before"], info["load_after"] = load_before, os.getloadavg()[0]
    info["seconds"] = time.perf_counter() - t_start
    if max(load_before, info["load_after"]) > 0.75 * (os.cpu_count() or 1):
        notes.append(f"the machine was loaded (1-min load average {load_before:.2f} → {info['load_after']:.2f} on "
                     f"{os.cpu_count()} CPUs): absolute times are inflated; interleaving keeps the ratios comparable")
    return SpeedReport(suite.name, suite.dtype, suite.device, settings, info, ratios, est_rows, floors, notes)


def _shown(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The particle count (K or S) and the parameters that differ from the estimator's defaults."""
    try:
        defaults = registry.ESTIMATORS[name].params().model_dump()
    except ValidationError:
        return params
    return {k: v for k, v in params.items() if k in ("K", "S") or defaults.get(k) != v}


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _as_dict(m: Measured) -> dict[str, Any]:
    return {"seconds": m.seconds, "iqr": m.iqr, "evals": m.evals, "evals_per_second": m.evals_per_second,
            "rounds": m.rounds}


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


def _pyro_peer(plan: SpeedPlan, target: Any, K: int, validate: bool, notes: list[str]) -> tuple[Any, Any, str] | None:
    """(peer, the one-data-point target it matches, goal key), or None with a note saying why not."""
    from gradbench.peers import pyro_ppca

    if not pyro_ppca.available():
        notes.append(f"Pyro comparison skipped: {pyro_ppca.INSTALL_HINT}")
        return None
    if plan.target.model == "ppca":
        if target.n_data != 1:
            notes.append("Pyro comparison skipped: it needs model ppca with n_data = 1 (RenyiELBO weighs whole particles)")
            return None
        return pyro_ppca.PyroPPCA(target, K, validate=validate), target, "pyro"
    if plan.target.model == "vae" and target.model.likelihood == "bernoulli":
        from gradbench.peers import pyro_vae

        one = pyro_vae.one_point_target(target, 0)
        if target.n_data > 1:
            notes.append(f"Pyro on the VAE: RenyiELBO weighs whole particles, so both sides run on data point 0 "
                         f"alone (same θ, same q(z | x_0)); per replicate = K = {K} evaluations")
        return pyro_vae.PyroVAE(one, K, validate=validate), one, "pyro_vae"
    notes.append(f"Pyro comparison skipped: no Pyro model of {plan.target.model!r} (ppca, Bernoulli vae)")
    return None


def _pyro_ratio(plan: SpeedPlan, settings: SpeedSettings, target: Any, notes: list[str],
                progress: Callable[[str], None]) -> list[dict[str, Any]]:
    K, R = plan.K, plan.R
    found = _pyro_peer(plan, target, K, settings.pyro_validate, notes)
    if found is None:
        return []
    peer, one, goal = found
    progress(f"Pyro RenyiELBO(alpha=0, K={K}) agreement check")
    diff = check_pyro_agrees(one, peer, K, seeds=range(settings.check_seeds))
    # float64: both sides sum ~K·P rounded products in different orders, relative error ≲ 1e-12; float32 ≲ 1e-3
    tol = 1e-8 if one.x.dtype == torch.float64 else 1e-3
    if not diff <= tol:
        raise click.ClickException(f"Pyro and gradbench iwae disagree for the same noise (max relative difference "
                                   f"{diff:.3g} > {tol:g}): not timing them")
    progress(f"Pyro RenyiELBO(alpha=0, K={K}) vs iwae (R={R})")
    block = settings.pyro_block
    g = make_generator(derive_seed(plan.target.noise_seed(0), "speed", "iwae-pyro"), plan.suite.device)
    iwae = registry.ESTIMATORS["iwae"].fn

    def pyro_block() -> None:
        for _ in range(block):
            peer.grad()

    with torch.enable_grad():
        t = time_interleaved({"iwae": lambda: iwae(one, R, g, K=K), "pyro": pyro_block},
                             device=plan.suite.device, warmup=settings.warmup, repeats=settings.repeats)
    per_rep_ours = float(np.median(t["iwae"])) / R
    per_rep_pyro = float(np.median(t["pyro"])) / block
    return [_ratio(f"Pyro RenyiELBO(α=0) ÷ iwae, seconds per replicate ({plan.target.model}, N=1, K={K}, R={R}; Pyro "
                   f"{per_rep_pyro * 1e3:.3g} ms, iwae {per_rep_ours * 1e6:.3g} µs; agree to {diff:.1g})",
                   per_rep_pyro / per_rep_ours, goal, pyro_seconds=per_rep_pyro, iwae_seconds=per_rep_ours,
                   max_rel_diff=diff)]


def check_pyro_agrees(target: Any, peer: Any, K: int, seeds: Any) -> float:
    """Largest relative difference between Pyro's and gradbench's iwae gradient for the same noise."""
    iwae = registry.ESTIMATORS["iwae"].fn
    worst = 0.0
    for s in seeds:
        with torch.enable_grad():
            theirs = peer.grad(seed=int(s))
        ours = iwae(target, 1, make_generator(int(s), target.x.device), K=K).grads[0]
        worst = max(worst, float((theirs - ours).abs().max() / ours.abs().max()))
    return worst


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
    t = time_interleaved(fns, device=plan.suite.device, warmup=settings.warmup, repeats=settings.repeats)
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


# -- scaling laws ----------------------------------------------------------------------------------
# Each axis is swept with the others at the base point; values are multiples of the base (R, K) or absolute.
SCALING_FACTORS = (0.25, 0.5, 1.0, 2.0)
SCALING_AXES = ("R", "K", "data_dim", "hidden", "N")


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


def run_scaling(plan: SpeedPlan, settings: SpeedSettings = SpeedSettings(), *, factors: tuple[float, ...] = SCALING_FACTORS,
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


# -- command ---------------------------------------------------------------------------------------
@click.command("speed")
@click.argument("suite", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Folder for speed.json and speed.md [default: runs/<suite name>-speed].")
@click.option("--device", help="Override the suite's device (cpu, cuda, cuda:N).")
@click.option("--replicates", type=int, help="Override the suite's replicates (R).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), help="Override the suite's dtype (both sides of "
              "every comparison, Pyro included, run in it).")
@click.option("--threads", type=int, help="torch intra-op threads [default: torch's].")
@click.option("--repeats", type=int, default=SpeedSettings.repeats, show_default=True, help="Timed rounds per comparison.")
@click.option("--warmup", type=int, default=SpeedSettings.warmup, show_default=True, help="Untimed rounds first.")
@click.option("--loop", "loop", multiple=True, default=SpeedSettings.loop, show_default=True,
              help="Estimator also run one replicate (one coupled pair) at a time (repeatable).")
@click.option("--loop-repeats", type=int, default=SpeedSettings.loop_repeats, show_default=True)
@click.option("--no-peers", is_flag=True, help="Skip the Pyro comparison.")
@click.option("--no-loop", is_flag=True, help="Skip the one-pair-at-a-time loops.")
@click.option("--scaling", is_flag=True, help="Instead: sweep R, K, data_dim, hidden, N around the first target; fit "
              "log-log slopes of seconds and peak memory; write scaling.{md,json,png}.")
def speed(suite: Path, out: Path | None, device: str | None, replicates: int | None, dtype: str | None, threads: int | None,
          repeats: int, warmup: int, loop: tuple[str, ...], loop_repeats: int, no_peers: bool, no_loop: bool,
          scaling: bool) -> None:
    """Time a suite's estimators against floors (a)/(b), Pyro and a one-pair loop; print the ratios.

    SUITE is an ordinary run suite with an iwae estimator (e.g. suites/speed.yaml, which `gradbench run` also
    accepts); every target is compared in turn in this one process; replicates are the R of every vectorised call.
    """
    flags = {"device": device, "replicates": replicates, "dtype": dtype}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    spec, cells = load_suite(suite, overrides)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError(f"{suite}: device {spec.device!r} requested but no CUDA device is available; use --device cpu")
    settings = SpeedSettings(threads=threads, warmup=warmup, repeats=repeats, pyro=not no_peers,
                             loop=() if no_loop else tuple(loop), loop_repeats=loop_repeats)
    out = out or Path("runs") / f"{spec.name}-{'scaling' if scaling else 'speed'}"
    if scaling:
        result = run_scaling(plans(spec, cells, suite)[0], settings, progress=lambda s: click.echo(f"… {s}", err=True))
        md = scaling_markdown(result)
        click.echo(md)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "scaling.md").write_text(md + "\n")
        scaling_figure(result).savefig(out / "scaling.png", dpi=120)
        click.echo(f"\nwritten: {out / 'scaling.json'}, {out / 'scaling.md'}, {out / 'scaling.png'}")
        return
    reports = []
    for p in plans(spec, cells, suite):  # each target's table is printed as soon as it is measured
        reports.append(run_speed(p, settings, progress=lambda s: click.echo(f"… {s}", err=True)))
        click.echo(reports[-1].markdown() + "\n")
    md = "\n\n".join(r.markdown() for r in reports)
    out.mkdir(parents=True, exist_ok=True)
    data = reports[0].to_json() if len(reports) == 1 else {"suite": spec.name, "reports": [r.to_json() for r in reports]}
    (out / "speed.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "speed.md").write_text(md + "\n")
    click.echo(f"\nwritten: {out / 'speed.json'}, {out / 'speed.md'}")
