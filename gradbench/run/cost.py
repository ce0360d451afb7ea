"""What a suite will cost before it runs: its cells, the references the runner computes, and — from a quick probe
on this machine — rough seconds.

The plan (:func:`reference_keys`) needs only the registry (no torch): one reference per (target, dtype, objective)
that a cell with a reference-using protocol measures against, as the runner computes them
(``gradbench.run.runner.prepare_references``). The probe (:func:`probe`) builds each target once and

* computes each reference at two small replicate counts where the model's ``reference_replicates`` sets how many
  an estimated reference averages: exact references (closed form, enumeration, quadrature) are timed as they are,
  estimated ones (the expensive kind: many replicates of an unbiased estimator) are extrapolated linearly to the
  model's ``reference_replicates``;
* runs each cell (estimator and every protocol) at two small replicate counts and extrapolates linearly in
  replicates, seconds ≈ a + b·R, to the cell's replicates.

Linear extrapolation ignores caches and memory effects, timings on a loaded machine vary, and a Dask cluster
divides the cells among its workers: the result is a rough, sequential, single-machine estimate.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradbench import registry
from gradbench.run.cells import reference_objective

PROBE_REPLICATES = (128, 512)  # each cell runs at these replicate counts (fewer when the cell has fewer)
PROBE_REFERENCE = (200, 800)  # an estimated reference's replicates in the probe


@dataclass(frozen=True)
class ReferenceKey:
    target_id: str
    dtype: str
    objective: str
    cell: Any  # a cell measured against it (gradbench.run.cells.Cell)


@dataclass(frozen=True)
class ReferenceCost:
    key: ReferenceKey
    kind: str  # "exact", "enumerated", "quadrature", "estimated", or "failed: …"
    replicates: int | None  # an estimated reference's replicates
    seconds: float


@dataclass(frozen=True)
class CellCost:
    cell: Any
    seconds: float  # extrapolated to the cell's replicates
    fixed: float  # a: seconds that do not grow with replicates
    per_replicate: float  # b


@dataclass(frozen=True)
class Estimate:
    targets_seconds: float
    startup_seconds: float  # one-off warm-up of the first cell in a fresh process (imports, first calls)
    references: list[ReferenceCost]
    cells: list[CellCost]
    skipped: list[str]  # cells the probe cannot time, one line each
    probe_seconds: float

    @property
    def total(self) -> float:
        return self.targets_seconds + self.startup_seconds + sum(r.seconds for r in self.references) + sum(c.seconds for c in self.cells)


def reference_keys(cells: list[Any]) -> list[ReferenceKey]:
    """The references a run of ``cells`` computes, one per (target, dtype, objective), in cell order. Torch-free."""
    out: dict[tuple[str, str, str], ReferenceKey] = {}
    for cell in cells:
        objective = reference_objective(cell)
        if objective is None:
            continue
        k = (cell.target.target_id, cell.dtype, objective)
        out.setdefault(k, ReferenceKey(*k, cell))
    return list(out.values())


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(a, b) of seconds ≈ a + b·R through two (R, seconds) points, both ≥ 0 (one point: through the origin)."""
    if len(points) < 2 or points[0][0] == points[-1][0]:
        r, t = points[-1]
        return 0.0, t / max(r, 1)
    (r1, t1), (r2, t2) = points[0], points[-1]
    b = max((t2 - t1) / (r2 - r1), 0.0)
    a = max(t1 - b * r1, 0.0)
    if b == 0.0:  # noise made the larger probe faster: charge it all per replicate
        a, b = 0.0, t2 / r2
    return a, b


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _probe_target(cell: Any, replicates: int | None) -> Any:
    """The cell's target, with ``reference_replicates`` set to ``replicates`` where the model has it."""
    fields = registry.MODELS[cell.target.model].params.model_fields
    target = cell.target
    if replicates is not None and "reference_replicates" in fields:
        target = dataclasses.replace(target, params={**target.params, "reference_replicates": replicates})
    return target.build(cell.dtype, cell.device)


def probe(cells: list[Any], say: Callable[[str], None] | None = None) -> Estimate:
    """Time each distinct target, reference and cell at small sizes and extrapolate (module docstring)."""
    from gradbench.run.compute import cell_thread_limits, cell_threads

    t_start = time.perf_counter()
    say = say or (lambda _: None)
    targets: dict[tuple[str, str, str], Any] = {}
    targets_seconds = 0.0
    skipped: list[str] = []

    def built_target(cell: Any) -> Any:
        nonlocal targets_seconds
        key = (cell.target.target_id, cell.dtype, cell.device)
        if key not in targets:
            seconds, targets[key] = _timed(lambda: _probe_target(cell, PROBE_REFERENCE[0]))
            targets_seconds += seconds
        return targets[key]

    refs: list[ReferenceCost] = []
    costs: list[CellCost] = []
    startup = 0.0
    probe_refs: dict[tuple[str, str, str], Any] = {}
    with cell_thread_limits(cell_threads()):
        for key in reference_keys(cells):
            say(f"probing the reference {key.target_id} {key.objective}")
            cost, warmup = _reference_cost(key, built_target(key.cell), probe_refs)
            refs.append(cost)
            startup += warmup
        for cell in cells:
            kind = registry.CELL_KINDS[cell.kind]
            if not kind.replicate_scaled:
                skipped.append(f"{cell.estimator}: {cell.kind} cells are not probed (their cost does not scale with replicates)")
                continue
            say(f"probing cell {cell.estimator} {cell.estimator_params}")
            target = built_target(cell)
            objective = reference_objective(cell)
            ref = None if objective is None else probe_refs.get((cell.target.target_id, cell.dtype, objective))
            points = []
            sizes = sorted({min(r, cell.replicates) for r in PROBE_REPLICATES})
            try:
                for r in [sizes[0], *sizes]:  # the smallest twice: the first pays one-off costs (imports, first calls)
                    small = dataclasses.replace(cell, replicates=r)
                    t0 = time.perf_counter()
                    kind.compute(small, target, ref, None)
                    points.append((r, time.perf_counter() - t0))
            except Exception as exc:  # noqa: BLE001 — the run records the same error per cell
                skipped.append(f"{cell.estimator} {cell.estimator_params}: fails ({str(exc).splitlines()[0][:120]})")
                continue
            startup += max(points[0][1] - points[1][1], 0.0)  # a fresh run pays these once, in whichever cell
            points = points[1:]
            a, b = fit_line(points)
            costs.append(CellCost(cell, a + b * cell.replicates, a, b))
    return Estimate(targets_seconds, startup, refs, costs, skipped, time.perf_counter() - t_start)


def _reference_cost(key: ReferenceKey, target: Any, probe_refs: dict[tuple[str, str, str], Any]
                    ) -> tuple[ReferenceCost, float]:
    """Time the reference at the probe's sizes, and extrapolate an estimated one to the model's replicates; with the
    one-off seconds (first calls) its first computation paid."""
    cell = key.cell
    try:
        seconds, ref = _timed(lambda: target.reference(key.objective))
    except Exception as exc:  # noqa: BLE001 — the cells fail with it, one line each
        return ReferenceCost(key, f"failed: {str(exc).splitlines()[0][:120]}", None, 0.0), 0.0
    probe_refs[(key.target_id, key.dtype, key.objective)] = ref
    if ref.kind != "estimated":
        return ReferenceCost(key, ref.kind, None, seconds), 0.0
    fields = registry.MODELS[cell.target.model].params
    if "reference_replicates" not in fields.model_fields:  # the model fixes its own replicates: that was the cost
        return ReferenceCost(key, ref.kind, getattr(ref, "n", None), seconds), 0.0
    full = int(fields(**cell.target.params).reference_replicates)
    again, _ = _timed(lambda: _probe_target(cell, PROBE_REFERENCE[0]).reference(key.objective))  # warm now
    bigger, _ = _timed(lambda: _probe_target(cell, PROBE_REFERENCE[1]).reference(key.objective))
    a, b = fit_line([(PROBE_REFERENCE[0], again), (PROBE_REFERENCE[1], bigger)])
    return ReferenceCost(key, ref.kind, full, a + b * full), max(seconds - again, 0.0)


# -- text -----------------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    """``0.04 s``, ``4.2 s``, ``12 s``, ``3.5 min``, ``2.1 h``: one rough figure."""
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_lines(cells: list[Any]) -> list[str]:
    """The torch-free part: how many references the run computes."""
    keys = reference_keys(cells)
    if not keys:
        return ["references: none (no protocol of this suite needs one)"]
    users = sorted({p for k in keys for p in k.cell.protocols if registry.PROTOCOLS[p].uses_reference})
    return [(f"references: {len(keys)} to compute, one per target × objective (for {', '.join(users)}); "
            "`validate --estimate` says which are estimated (many replicates: the expensive kind) and times the run")]


def estimate_lines(est: Estimate, executor: str = "local") -> list[str]:
    """The probe's result, one reference per line, the cells summed (the slowest named)."""
    lo, hi = PROBE_REPLICATES
    lines = [(f"estimate (rough: each cell probed at {lo} and {hi} replicates on this machine and extrapolated "
             "linearly in replicates; estimated references likewise in their replicates):"),
             (f"  targets: {duration(est.targets_seconds)} to build; start-up (first calls): "
             f"{duration(est.startup_seconds)}")]
    for r in est.references:
        what = f"{r.kind} ({r.replicates} replicates)" if r.kind == "estimated" and r.replicates else r.kind
        lines.append(f"  reference {r.key.target_id} {r.key.objective}: {what}, ~{duration(r.seconds)}")
    n_est = sum(r.kind == "estimated" for r in est.references)
    if est.references:
        lines.append(f"  references: {len(est.references)}, {n_est} estimated, "
                     f"~{duration(sum(r.seconds for r in est.references))}")
    if est.cells:
        slow = max(est.cells, key=lambda c: c.seconds)
        params = ", ".join(f"{k}={v}" for k, v in slow.cell.estimator_params.items())
        lines.append(f"  cells: {len(est.cells)}, ~{duration(sum(c.seconds for c in est.cells))} "
                     f"(slowest: {slow.cell.estimator}{f' ({params})' if params else ''}, ~{duration(slow.seconds)})")
    counts = dict(Counter(est.skipped))  # first-seen order; a message repeated per cell is printed once, counted
    lines += [f"  not probed: {s}" + (f" — {k} cells" if k > 1 else "") for s, k in counts.items()]
    total = f"  total: ~{duration(est.total)}" + (f" for the probed cells ({len(est.skipped)} not probed)"
                                                 if est.skipped else "")
    if executor == "dask":
        total += " sequential (a Dask cluster divides the cells among its workers)"
    lines.append(total + f"; the probe took {duration(est.probe_seconds)}")
    return lines
