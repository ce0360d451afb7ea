"""Compute one cell: pure — a cell (and its reference, when the runner has it) in, rows out.

Nothing here writes files or knows about suites or executors: :func:`compute_cell` is what an
executor calls, in this process or on a Dask worker, and its :class:`Outcome` goes back to the runner,
which stores it (``gradbench.store``). Targets are built once per process and kept in a small LRU
cache; every cell computes with one torch/BLAS thread (``GRADBENCH_CELL_THREADS`` changes that), so a
table is bitwise the same whichever executor computed it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import gradbench
from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols import ProtocolContext
from gradbench.protocols.meeting import censoring_warning
from gradbench.protocols.spec import resolve
from gradbench.seeding import derive_seed, make_generator
from gradbench.stats import rare_state_verdict, replicates_needed
from gradbench.suite import Cell

REPLICATE_BLOCK = 500  # replicates per estimator call; block b's noise seed is (suite seed, target, b)

MAX_CACHED_TARGETS = 8
@dataclass(frozen=True)
class Outcome:
    cell: Cell
    rows: pd.DataFrame | None = None
    # the protocols' side tables by name (ProtocolSpec.side_tables: "meeting" raw τ; "curves" of train cells)
    side: dict[str, pd.DataFrame] = field(default_factory=dict)
    error: str | None = None  # one line; set when the cell failed


_TARGETS: OrderedDict[tuple[str, str, str], Any] = OrderedDict()  # per process (each Dask worker has its own)
_TARGETS_LOCK = threading.Lock()
def target_for(cell: Cell) -> Any:
    """The cell's target, built once per process and kept in a small LRU cache."""
    key = (cell.target.target_id, cell.dtype, cell.device)
    with _TARGETS_LOCK:
        if key in _TARGETS:
            _TARGETS.move_to_end(key)
            return _TARGETS[key]
    target = cell.target.build(cell.dtype, cell.device)
    with _TARGETS_LOCK:
        _TARGETS[key] = target
        while len(_TARGETS) > MAX_CACHED_TARGETS:
            _TARGETS.popitem(last=False)
    return target


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def cell_threads() -> int:
    """Threads a cell computes with: ``GRADBENCH_CELL_THREADS``, default 1 (see :func:`cell_thread_limits`)."""
    return int(os.environ.get("GRADBENCH_CELL_THREADS", "1"))


@contextlib.contextmanager
def cell_thread_limits(n: int | None) -> Iterator[None]:
    """torch intra-op threads and BLAS/LAPACK threads set to ``n`` while a cell computes
    (``None`` leaves both as they are).

    Parallel reductions sum in an order that depends on the thread count, so a table is bitwise
    reproducible across executors and machines only at a fixed count. gradbench parallelises
    across cells (the Dask executor runs one single-threaded worker per core) rather than within.
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


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


def uses_reference(cell: Cell) -> bool:
    return any(registry.PROTOCOLS[name].uses_reference for name in cell.protocols)


def cell_objective(cell: Cell) -> str:
    """The key of the objective the cell's estimator is measured against."""
    return registry.ESTIMATORS[cell.estimator].objective(cell.estimator_params).canonical().key


def run_cell(cell: Cell, target: Any, reference: Any = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """All protocol rows of one cell, with the docs/design.md §9.1 columns (except ``suite``), and the side tables of
    its protocols (``ProtocolSpec.side_tables``, e.g. the raw meeting times) by name.

    ``reference``: the cell's reference when the runner has it (computed once per target and objective
    and cached in the run folder); otherwise the target computes it."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    sample = sample_cell(cell, target)
    if not uses_reference(cell):
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
    return _provenance(df, started, t0), {k: v for k, v in side.items() if v is not None}


def with_meta(df: pd.DataFrame, cell: Cell, n_replicates: int, n_nonfinite: int) -> pd.DataFrame:
    """The docs/design.md §9.1 identifying columns in front of a cell's protocol rows."""
    meta: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "target_id": cell.target.target_id,
        "model": cell.target.model,
        "estimator": cell.estimator,
        "n_replicates": n_replicates,
        "n_nonfinite": n_nonfinite,
        "seed": cell.target.suite_seed,
        "device": cell.device,
        "dtype": cell.dtype,
        **{f"model.{k}": v for k, v in cell.target.params.items()},
        **{f"proposal.{k}": v for k, v in cell.target.proposal.items()},
        **{f"estimator.{k}": v for k, v in cell.estimator_params.items()},
        **({"snapshot.cell_id": cell.target.snapshot["cell_id"], "snapshot.step": cell.target.snapshot["step"]}
           if cell.target.snapshot else {}),
    }
    for col, value in reversed(meta.items()):
        df.insert(0, col, json.dumps(value) if isinstance(value, (list, tuple, dict)) else value)  # e.g. hidden: [200, 200]
    return df


def _provenance(df: pd.DataFrame, started: dt.datetime, t0: float) -> pd.DataFrame:
    df["gradbench_version"] = gradbench.__version__
    df["torch_version"] = torch.__version__
    df["started_at"] = started.isoformat(timespec="seconds")
    df["seconds"] = time.perf_counter() - t0
    return df


def is_train_cell(cell: Cell) -> bool:
    """Whether ``cell`` is a training run (gradbench.protocols.train), not an estimator measured on a fixed target."""
    return cell.estimator == "train"


def train_target(cell: Cell) -> Any:
    """The target a ``train`` cell trains on: the cell's own, except with ``binarize: dynamic`` data, where its rows
    stay grey levels (the training loop draws each minibatch's binarisation; gradbench.protocols.train)."""
    spec = cell.target.data_spec
    if spec is None or spec.get("binarize") != "dynamic":
        return target_for(cell)
    grey = dataclasses.replace(cell.target, data_spec={**spec, "binarize": "none"})
    return target_for(dataclasses.replace(cell, target=grey))


def run_train_cell(cell: Cell, target: Any, checkpoint_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A ``train`` cell (gradbench.protocols.train): the training loop is its computation; (rows, curves).
    With ``checkpoint_dir`` it checkpoints to, and resumes from, ``<checkpoint_dir>/<cell_id>.pt``, and keeps the
    ``snapshot_steps`` in ``<checkpoint_dir>/../snapshots/<cell_id>/`` (gradbench.snapshots)."""
    from gradbench.protocols import train

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{cell.cell_id}.pt"
    from gradbench.protocols import train_ebm  # energy-based models: θ-only training of energy-based models

    if train_ebm.is_ebm(target):
        if cell.estimator_params.get("snapshot_steps"):
            raise ValueError("train: snapshot_steps is not supported for energy-based models (vae, sbn only)")
        rows, curves = train_ebm.train_cell(cell, target, ckpt)
    else:
        from gradbench.snapshots import snapshot_dir

        snaps = None if checkpoint_dir is None else snapshot_dir(Path(checkpoint_dir), cell.cell_id)
        rows, curves = train.train_cell(cell, target, ckpt, snapshots=snaps)
    df = pd.DataFrame([{"protocol": train.TRAIN, **r} for r in rows],
                      columns=["protocol", "param_group", "metric", "value", "stderr", "method"])
    nonfinite = int(df.loc[df["metric"] == "nonfinite_steps", "value"].iloc[0])
    df = with_meta(df, cell, 1, nonfinite)
    df["warning"] = ""
    curves.insert(0, "estimator", cell.estimator)
    curves.insert(0, "cell_id", cell.cell_id)
    return _provenance(df, started, t0), curves


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


def compute_cell(cell: Cell, reference: Any = None, checkpoint_dir: str | Path | None = None) -> Outcome:
    """Run one cell (with its reference when the runner computed it); an exception from its target or
    estimator becomes a failed outcome. ``checkpoint_dir``: where long (``train``) cells checkpoint."""
    if is_train_cell(cell):
        try:
            registry.load_entry_points()
            registry.load_plugin_modules(cell.plugins)
            with cell_thread_limits(cell_threads()):
                rows, curves = run_train_cell(cell, train_target(cell), None if checkpoint_dir is None else Path(checkpoint_dir))
        except Exception as exc:  # noqa: BLE001 — recorded per cell; the suite goes on
            return Outcome(cell, error=one_line(exc))
        return Outcome(cell, rows, {"curves": curves})
    try:
        registry.load_entry_points()
        registry.load_plugin_modules(cell.plugins)  # a Dask worker imports the suite's plugins itself
        with cell_thread_limits(cell_threads()):
            if reference is not None and cell.device != "cpu":
                reference = type(reference)(**{k: v.to(cell.device) if hasattr(v, "to") else v
                                               for k, v in vars(reference).items()})
            rows, side = run_cell(cell, target_for(cell), reference)
    except Exception as exc:  # noqa: BLE001 — recorded per cell; the suite goes on
        return Outcome(cell, error=one_line(exc))
    return Outcome(cell, rows, side)
