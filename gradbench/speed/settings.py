"""What a speed run times (a :class:`SpeedPlan`, from a run suite) and how (:class:`SpeedSettings`), the goals
printed beside each ratio, and :class:`SpeedError`, the library's one-line error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradbench.run.cells import Cell, TargetConfig
from gradbench.run.plan import Suite, SuiteError


class SpeedError(ValueError):
    """A one-line, user-facing failure of a speed measurement (e.g. a peer that disagrees with gradbench)."""


# PPCA goals: Pyro ÷ iwae ≥ 50, loop ÷ vectorised ≥ 30, coupled ≥ 0.5 × floor (b), iwae ≤ 3 × the forward floor;
# neural-target goals: iwae ≤ 2 × floor (a) (forward + backward), Pyro ÷ iwae ≥ 20 on the VAE.
GOALS = {"pyro": 50.0, "pyro_vae": 20.0, "loop": 30.0, "floor_b": 0.5, "floor_fwd": 3.0, "floor_a": 2.0}


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
    flops: bool = False  # also: FLOP fraction of each estimator vs one [n, n] matmul, interleaved (gradbench.speed.flops)
    flops_matmul_n: int = 1024  # n of the reference matrix product


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


DEFAULT_SETTINGS = SpeedSettings()  # frozen: safe as a shared default argument
