"""The result of a speed run (:class:`SpeedReport`: JSON and markdown) and the small formatters it uses."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from gradbench import registry
from gradbench.speed.settings import GOALS, SpeedSettings
from gradbench.speed.timing import Measured


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
