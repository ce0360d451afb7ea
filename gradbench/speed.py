"""``gradbench speed``: gradbench side by side with its floors and peers, measured in one run.

Everything is timed in one process on one target (same model, data, proposal, dtype, device and
torch thread count), with the compared functions *interleaved* (A, B, A, B, ...) so a change in
machine load hits both sides alike; every figure is a median over the timed rounds.

The speed suite is an ordinary run suite (``gradbench run`` accepts it too) with one target and
an ``iwae`` estimator whose K is the K of the floors and of the Pyro comparison; its replicates are
the R of every vectorised call. How to time (threads, rounds, peers, loops) are command options.

Measurements (E = total single-point log-joint evaluations of the compared call):
* **floor (a)**: ``sample_proposal`` + one batched ``log_joint`` on E particles — the least any
  estimator that evaluates E particles must do.
* **floor (b)**: the batched ``iwae`` gradient at the same K and the same E (evals/s).
* **iwae vs Pyro**: ``iwae`` for R replicates at once vs Pyro's
  ``RenyiELBO(alpha=0, vectorize_particles=True)`` on the same PPCA (one replicate per call),
  after checking that both give the same gradient for the same noise
  (:mod:`gradbench.peers.pyro_ppca`).
* **one pair at a time**: a coupled estimator vectorised over R replicates vs the same function
  called R times with R = 1 (how public reference implementations run coupled chains).
* **per estimator**: evals/s and its fraction of floors (a) and (b) at the estimator's own E and K.

Goals (issue 8) are printed beside each ratio: Pyro ÷ iwae ≥ 50 per replicate, loop ÷ vectorised
≥ 30, coupled evals/s ≥ 0.5 × floor (b), iwae time ≤ 3 × floor (a). Timings depend on the machine
and its load (the 1-minute load average is recorded before and after), so they are reported,
never asserted.
"""

from __future__ import annotations

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

GOALS = {"pyro": 50.0, "loop": 30.0, "floor_b": 0.5, "floor_a": 3.0, "floor_c": 2.0}


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


def plan(suite: Suite, cells: list[Cell], path: str | Path = "suite") -> SpeedPlan:
    """Check that a (validated, expanded) run suite can be a speed suite: one target, an iwae estimator."""
    targets = {c.target.target_id: c.target for c in cells}
    if len(targets) != 1:
        raise SuiteError(f"{path}: a speed suite needs exactly one target (after grid expansion), got {len(targets)}")
    iwae_cells = [c for c in cells if c.estimator == "iwae"]
    if not iwae_cells:
        raise SuiteError(f"{path}: a speed suite needs an iwae estimator: its K is the K of the floors and of Pyro")
    estimators = [(c.estimator, c.estimator_params) for c in cells]
    return SpeedPlan(suite, next(iter(targets.values())), int(iwae_cells[0].estimator_params["K"]),
                     suite.replicates, estimators)


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
    """Floor (a): draw R × K particles per data point and evaluate the log-joint once, batched."""
    z, _ = target.sample_proposal((R, K), gen)
    return target.log_joint(z)


def floor_log_joint_backward(target: Any, R: int, K: int, gen: torch.Generator) -> Any:
    """Floor (c), for contract-v2 targets: draw R × K particles per data point, one batched ``log_joint`` and one
    backward pass to θ — the least a θ-gradient estimator that evaluates E particles must do."""
    z, _ = target.sample_proposal((R, K), gen)
    model, x = target.model, target.x
    return torch.func.grad(lambda theta: model.log_joint(theta, x, z).sum())(target.theta)


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

        # 1. iwae vs floor (a) at the same total evaluations (floor (b) is iwae itself here)
        progress(f"iwae (K={K}, R={R}) vs floor (a)")
        g_i, g_a = gen("iwae"), gen("floor-a")
        t = time_interleaved({"iwae": lambda: iwae(target, R, g_i, K=K),
                              "floor_a": lambda: floor_sample_log_joint(target, R, K, g_a)}, **timing)
        m_iwae, m_a = _measured(t["iwae"], R * K * N), _measured(t["floor_a"], R * K * N)
        floors["floor_a"] = {"K": K, "R": R, **_as_dict(m_a)}
        floors["floor_b"] = {"K": K, "R": R, **_as_dict(m_iwae)}
        ratios.append(_ratio(f"iwae ÷ floor (a), seconds at the same evaluations (K={K}, R={R})",
                             m_iwae.seconds / m_a.seconds, "floor_a", "≤"))
        m_c = None
        if hasattr(target, "model") and hasattr(target, "theta"):  # neural targets: forward + backward floor
            progress(f"iwae (K={K}, R={R}) vs floor (c): log_joint + backward")
            g_i, g_c = gen("iwae"), gen("floor-c")
            t = time_interleaved({"iwae": lambda: iwae(target, R, g_i, K=K),
                                  "floor_c": lambda: floor_log_joint_backward(target, R, K, g_c)}, **timing)
            m_c = _measured(t["floor_c"], R * K * N)
            floors["floor_c"] = {"K": K, "R": R, **_as_dict(m_c)}
            ratios.append(_ratio(f"iwae ÷ floor (c) (one batched log_joint + backward), seconds at the same evaluations "
                                 f"(K={K}, R={R})", float(np.median(t["iwae"])) / m_c.seconds, "floor_c", "≤"))

        # 2. Pyro RenyiELBO(alpha=0) per replicate vs iwae per replicate
        if settings.pyro:
            ratios += _pyro_ratio(plan, settings, target, notes, progress)

        # 3. each estimator: evals/s, fractions of floors (a) and (b) at its own E and K
        est_rows = []
        for name, params in plan.estimators:
            progress(f"{name}({_kv(_shown(name, params))})")
            row = _estimator_row(plan, settings, target, name, params, gen)
            est_rows.append(row)
            if m_c is not None and name != "iwae" and row["evals_per_estimate"] > 0:
                per_eval = row["seconds_per_estimate"] / row["evals_per_estimate"]
                ratios.append(_ratio(f"{name}: seconds per evaluation ÷ floor (c)'s", per_eval / (m_c.seconds / m_c.evals),
                                     None))
            if name.startswith("coupled_") and not math.isnan(row["frac_floor_b"]):
                ratios.append(_ratio(f"{name} evals/s ÷ floor (b) (iwae, K={row['floor_K']}, same evaluations)",
                                     row["frac_floor_b"], "floor_b"))

        # 4. one coupled pair at a time vs vectorised
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


def _pyro_ratio(plan: SpeedPlan, settings: SpeedSettings, target: Any, notes: list[str],
                progress: Callable[[str], None]) -> list[dict[str, Any]]:
    from gradbench.peers import pyro_ppca

    if not pyro_ppca.available():
        notes.append(f"Pyro comparison skipped: {pyro_ppca.INSTALL_HINT}")
        return []
    if plan.target.model != "ppca" or target.n_data != 1:
        notes.append("Pyro comparison skipped: it needs model ppca with n_data = 1 (RenyiELBO weighs whole particles)")
        return []
    K, R = plan.K, plan.R
    progress(f"Pyro RenyiELBO(alpha=0, K={K}) agreement check")
    peer = pyro_ppca.PyroPPCA(target, K, validate=settings.pyro_validate)
    diff = check_pyro_agrees(target, peer, K, seeds=range(settings.check_seeds))
    tol = 1e-8 if target.W.dtype == torch.float64 else 1e-3
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
        t = time_interleaved({"iwae": lambda: iwae(target, R, g, K=K), "pyro": pyro_block},
                             device=plan.suite.device, warmup=settings.warmup, repeats=settings.repeats)
    per_rep_ours = float(np.median(t["iwae"])) / R
    per_rep_pyro = float(np.median(t["pyro"])) / block
    return [_ratio(f"Pyro RenyiELBO(α=0) ÷ iwae, seconds per replicate (K={K}, R={R}; Pyro "
                   f"{per_rep_pyro * 1e3:.3g} ms, iwae {per_rep_ours * 1e6:.3g} µs; agree to {diff:.1g})",
                   per_rep_pyro / per_rep_ours, "pyro", pyro_seconds=per_rep_pyro, iwae_seconds=per_rep_ours,
                   max_rel_diff=diff)]


def check_pyro_agrees(target: Any, peer: Any, K: int, seeds: Any) -> float:
    """Largest relative difference between Pyro's and gradbench's iwae gradient for the same noise."""
    iwae = registry.ESTIMATORS["iwae"].fn
    worst = 0.0
    for s in seeds:
        with torch.enable_grad():
            theirs = peer.grad(seed=int(s))
        ours = iwae(target, 1, make_generator(int(s), target.W.device), K=K).grads[0]
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
        fns["floor_a"] = lambda: floor_sample_log_joint(target, Rm, K, g_a)
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


# -- command ---------------------------------------------------------------------------------------
@click.command("speed")
@click.argument("suite", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Folder for speed.json and speed.md [default: runs/<suite name>-speed].")
@click.option("--device", help="Override the suite's device (cpu, cuda, cuda:N).")
@click.option("--replicates", type=int, help="Override the suite's replicates (R).")
@click.option("--threads", type=int, help="torch intra-op threads [default: torch's].")
@click.option("--repeats", type=int, default=SpeedSettings.repeats, show_default=True, help="Timed rounds per comparison.")
@click.option("--warmup", type=int, default=SpeedSettings.warmup, show_default=True, help="Untimed rounds first.")
@click.option("--loop", "loop", multiple=True, default=SpeedSettings.loop, show_default=True,
              help="Estimator also run one replicate (one coupled pair) at a time (repeatable).")
@click.option("--loop-repeats", type=int, default=SpeedSettings.loop_repeats, show_default=True)
@click.option("--no-peers", is_flag=True, help="Skip the Pyro comparison.")
@click.option("--no-loop", is_flag=True, help="Skip the one-pair-at-a-time loops.")
def speed(suite: Path, out: Path | None, device: str | None, replicates: int | None, threads: int | None,
          repeats: int, warmup: int, loop: tuple[str, ...], loop_repeats: int, no_peers: bool, no_loop: bool) -> None:
    """Time a suite's estimators against floors (a)/(b), Pyro and a one-pair loop; print the ratios.

    SUITE is an ordinary run suite with one target and an iwae estimator (e.g. suites/speed.yaml,
    which `gradbench run` also accepts); its replicates are the R of every vectorised call.
    """
    overrides: dict[str, Any] = {k: v for k, v in {"device": device, "replicates": replicates}.items() if v is not None}
    spec, cells = load_suite(suite, overrides)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError(f"{suite}: device {spec.device!r} requested but no CUDA device is available; use --device cpu")
    settings = SpeedSettings(threads=threads, warmup=warmup, repeats=repeats, pyro=not no_peers,
                             loop=() if no_loop else tuple(loop), loop_repeats=loop_repeats)
    report = run_speed(plan(spec, cells, suite), settings, progress=lambda s: click.echo(f"… {s}", err=True))
    md = report.markdown()
    click.echo(md)
    out = out or Path("runs") / f"{spec.name}-speed"
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report.to_json(), indent=1, default=str))
    (out / "speed.md").write_text(md + "\n")
    click.echo(f"\nwritten: {out / 'speed.json'}, {out / 'speed.md'}")
