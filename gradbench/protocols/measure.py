"""A measurement cell: an estimator run in replicate blocks on a fixed target, then each of the cell's protocols.

The cell kind ``measure`` (``registry.CELL_KINDS``, docs/design.md §4.1): :func:`run_cell` is its computation. The
estimator runs in blocks of ``REPLICATE_BLOCK`` replicates, block b with the noise seed (suite seed, target, b)
shared by every estimator of the target (docs/design.md §4.3); the protocols (docs/design.md §9) turn the sample
and the reference into rows; the cell-wide warnings — the dtype's rounding, censored coupled chains, rare latent
values (docs/design.md §8.3) — are appended to every row.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols import ProtocolContext
from gradbench.protocols.meeting import censoring_warning
from gradbench.protocols.spec import resolve
from gradbench.run.cells import Cell, with_meta, with_provenance
from gradbench.seeding import derive_seed, make_generator
from gradbench.stats import rare_state_verdict, replicates_needed

REPLICATE_BLOCK = 500  # replicates per estimator call; block b's noise seed is (suite seed, target, b)


def sample_cell(cell: Cell, target: Any) -> GradSample:
    """Run the cell's estimator in blocks of REPLICATE_BLOCK replicates with derived seeds."""
    est = registry.ESTIMATORS[cell.estimator]
    blocks = []
    for b in range(math.ceil(cell.replicates / REPLICATE_BLOCK)):
        R = min(REPLICATE_BLOCK, cell.replicates - b * REPLICATE_BLOCK)
        gen = make_generator(cell.target.noise_seed(b), cell.device)
        blocks.append(est.fn(target, R, gen, **cell.estimator_params))
    return GradSample.cat(blocks)


def rerun_cell(cell: Cell, target: Any) -> Callable[[int], GradSample]:
    """``R ↦`` the cell's estimator on R replicates with a fresh generator (for timing protocols)."""
    est = registry.ESTIMATORS[cell.estimator]
    seed = derive_seed(cell.target.noise_seed(0), "rerun")
    return lambda R: est.fn(target, R, make_generator(seed, cell.device), **cell.estimator_params)


def run_cell(cell: Cell, target: Any, reference: Any = None,
             checkpoint_dir: Any = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """All protocol rows of one cell, with the docs/design.md §9.1 columns (except ``suite``), and the side tables of
    its protocols (``ProtocolSpec.side_tables``, e.g. the raw meeting times) by name. A measurement cell is short
    and does not checkpoint (``checkpoint_dir`` is unused).

    ``reference``: the cell's reference when the runner has it (computed once per target and objective
    and cached in the run folder); otherwise the target computes it."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    sample = sample_cell(cell, target)
    if registry.measured_objective(cell) is None:
        reference = None
    elif reference is None:
        reference = target.reference(sample.wrt)
    eps = float(torch.finfo(sample.grads.dtype).eps)
    n_nonfinite = int(sample.diagnostics["nonfinite"].sum())
    q_min = rare_value_probability(target, samplers_of(cell))
    rows = []
    for name in cell.protocols:
        ctx = ProtocolContext(seed=derive_seed(cell.target.noise_seed(0), "protocol", name), eps=eps,
                              device=cell.device, rerun=rerun_cell(cell, target), atoms=has_atoms(target),
                              rare_q_min=q_min)
        rows += [{"protocol": name, **r} for r in registry.PROTOCOLS[name].fn(sample, reference, ctx)]
    df = pd.DataFrame(rows, columns=["protocol", "param_group", "metric", "value", "stderr", "method", "warning"])
    df = with_meta(df, cell, sample.replicates - n_nonfinite, n_nonfinite)
    cell_warning = "; ".join(w for w in (resolution_warning(sample, reference), censoring_warning(sample),
                                         rare_state_warning(target, sample, q_min),
                                         rare_state_unchecked(target, q_min)) if w)
    df["warning"] = [
        "; ".join(w for w in (str(r) if isinstance(r, str) else "", cell_warning) if w) for r in df.pop("warning")
    ]
    side = {t.name: resolve(t.make)(cell, sample) for name in cell.protocols
            for t in registry.PROTOCOLS[name].side_tables if t.make is not None}
    return with_provenance(df, started, t0), {k: v for k, v in side.items() if v is not None}


DISCRETE = frozenset({"binary_latent", "categorical_latent", "energy_based", "enumerate"})  # discrete state spaces


def has_atoms(target: Any) -> bool:
    """Whether the target's latent (or visible) states are discrete, so replicate gradients may have rare atoms."""
    return bool(DISCRETE & set(getattr(target, "capabilities", ())))


def samplers_of(cell: Cell) -> tuple[str, ...]:
    """The samplers a cell's verdict depends on: the exact posterior for estimators that require it (``oracle``),
    else the proposal q."""
    needs = registry.ESTIMATORS[cell.estimator].required(cell.estimator_params)
    return ("posterior",) if "exact_posterior" in needs else ("q",)


def rare_value_probability(target: Any, samplers: tuple[str, ...] = ("q",)) -> float | None:
    """q_min: the smallest probability of a value that carries gradient coordinates under the samplers the verdict
    depends on, or ``None`` when the target does not say (the rare-state rule of
    :func:`gradbench.stats.rare_state_verdict` then does not apply, and :func:`rare_state_unchecked` says so).

    A target that declares ``state_probabilities`` (the contract method, :class:`gradbench.contracts.Target`): the
    smallest probability of any value of any latent at any data point under each of ``samplers`` (``q``,
    ``posterior``). An energy-based target: its own ``rare_value_probability()`` (the rarest value of a unit or
    sufficient statistic under p_θ, exact)."""
    if "state_probabilities" in getattr(target, "capabilities", ()):
        table = target.state_probabilities()
        values = [float(table[s].min()) for s in samplers if s in table]
        return min(values) if values else None
    own = getattr(target, "rare_value_probability", None)
    return float(own()) if callable(own) else None


def rare_state_unchecked(target: Any, q_min: float | None) -> str:
    """Non-empty for a discrete target whose rare states could not be checked (no ``state_probabilities``)."""
    if q_min is not None or not has_atoms(target):
        return ""
    return ("rare latent values not checked: the target does not declare state_probabilities, so a bias verdict "
            "cannot be flagged inconclusive when a rare value is absent from the replicates")


def rare_state_warning(target: Any, sample: GradSample, q_min: float | None = None) -> str:
    """Non-empty when the target has a value so rare that the R replicates probably never draw it
    (R·q_min < log(10³), :func:`gradbench.stats.rare_state_verdict`; q_min from :func:`rare_value_probability`
    unless given). A value of probability q is absent from R draws with probability (1 − q)^R ≈ e^{−Rq}; if it
    carries a large gradient (a score-function term ∝ 1/q, or a rare state of an energy-based model), the sample
    mean misses its contribution while the sample variance does not show it (measured on the discrete suites,
    the bias-test calibration study): the cell's bias test is then inconclusive, not a verdict; it needs more replicates, not a fix.
    """
    q_min = rare_value_probability(target) if q_min is None else q_min
    if q_min is None or not rare_state_verdict(q_min, sample.replicates):
        return ""
    return (f"rare latent values: q_min = {q_min:.2g}, R·q_min = {sample.replicates * q_min:.2g} < log(10³): such a "
            "value is likely absent from the sample; the bias test is inconclusive at this R (use more replicates: "
            f"R ≥ {replicates_needed(q_min)})")


def resolution_warning(sample: GradSample, reference: Any) -> str:
    """Non-empty when the bias resolution of the replicates is below the dtype's rounding.

    The smallest bias the test could detect in coordinate j is about 3 s.e._j; a gradient summed
    from c terms carries rounding of order eps · √c · ‖g*‖_∞. Below that, a rejected bias test may
    be measuring rounding, not the estimator (mainly float32 with many replicates).
    """
    if reference is None or sample.grads.dtype == torch.float64:
        return ""
    ok = ~sample.diagnostics["nonfinite"]
    G = sample.grads[ok].double()
    if G.shape[0] < 2:
        return ""
    se = G.std(dim=0) / math.sqrt(G.shape[0])
    se = se[se > 0]
    eps = torch.finfo(sample.grads.dtype).eps
    rounding = eps * math.sqrt(max(float(sample.cost.double().mean()), 1.0)) * float(reference.value.abs().max())
    if se.numel() and 3 * float(se.min()) < rounding:
        return (f"{sample.grads.dtype}: bias resolution {3 * float(se.min()):.2g} is below rounding {rounding:.2g}; "
                "bias p-values may reflect rounding (use float64 or fewer replicates)")
    return ""
