"""The result of a speed run (:class:`SpeedReport`: JSON and markdown) and the small formatters it uses."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
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
    flops: list[dict[str, Any]] = field(default_factory=list)  # FLOP-fraction rows (settings.flops)
    flops_reference: dict[str, Any] = field(default_factory=dict)  # the reference matrix product

    def to_json(self) -> dict[str, Any]:
        out = {"suite": self.suite, "dtype": self.dtype, "device": self.device, "settings": asdict(self.settings),
               "info": self.info, "ratios": self.ratios,
               "estimators": self.estimators, "floors": self.floors, "notes": self.notes}
        if self.flops:
            out["flops"], out["flops_reference"] = self.flops, self.flops_reference
        return out

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
        if self.flops:
            lines += ["", *self.flops_markdown()]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)

    def flops_markdown(self) -> list[str]:
        """The FLOP-fraction table: medians over interleaved rounds, [q25, q75] and the interval for the median."""
        ref = self.flops_reference
        lines = [
            (f"FLOP fraction: achieved FLOP/s of each gradient ÷ FLOP/s of one [{ref['n']}, {ref['n']}] @ [{ref['n']}, "
             f"{ref['n']}] matmul ({self.dtype}, same threads), per interleaved round; MLP widths {ref['widths']}, "
             f"{ref['gradient_flops_per_eval']:,} FLOPs per evaluation (forward {ref['forward_flops_per_eval']:,} + "
             f"backward to θ); matmul {_iqr(ref, 'gflops')} GFLOP/s (wall), "
             f"{_iqr(ref, 'cpu_gflops') if 'cpu_gflops' in ref else '–'} GFLOP/s (CPU time), "
             f"{_iqr(ref, 'seconds', 1e3)} ms. Cells: median "
             f"[q25, q75] (distribution-free interval for the median, coverage {ref['seconds_ci_level']:.1%})."),
            "",
            ("| estimator | R | evaluations counted | evals / call | GFLOP / call | ms / call | GFLOP/s | FLOP fraction | "
             "FLOP fraction (CPU time) | s / eval ÷ iwae's | CPU s / eval ÷ iwae's | executed ÷ counted FLOPs (one call) |"),
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.flops:
            vs = _iqr(r, "per_eval_vs_iwae", ci=True) if "per_eval_vs_iwae" in r else "–"
            cpu = _iqr(r, "cpu_fraction", ci=True) if "cpu_fraction" in r else "–"
            cpu_vs = _iqr(r, "cpu_per_eval_vs_iwae", ci=True) if "cpu_per_eval_vs_iwae" in r else "–"
            lines.append(f"| {r['name']} | {r['R']} | {r['evals']} | {_iqr(r, 'evals_per_call')} | {_iqr(r, 'gflop')} | "
                         f"{_iqr(r, 'seconds', 1e3)} | {_iqr(r, 'gflops')} | {_iqr(r, 'fraction', ci=True)} | {cpu} | {vs} | {cpu_vs} | "
                         f"{_fmt(r['executed_vs_counted'])} |")
        return lines


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3g}"


def _iqr(row: dict[str, Any], key: str, scale: float = 1.0, ci: bool = False) -> str:
    """``median [q25, q75]`` of ``row[key]`` (times ``scale``), with ``(lo–hi)``, the interval for the median."""
    text = f"{_fmt(row[key] * scale)} [{_fmt(row[key + '_q25'] * scale)}, {_fmt(row[key + '_q75'] * scale)}]"
    if ci:
        lo, hi = row[key + "_ci"]
        text += f" ({_fmt(lo * scale)}–{_fmt(hi * scale)})"
    return text


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
