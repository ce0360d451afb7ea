"""Compute one cell: pure — a cell (and its reference, when the runner has it) in, rows out.

Nothing here writes files or knows about suites, executors or what a kind of cell computes: :func:`compute_cell`
is what an executor calls, in this process or on a Dask worker; it hands the cell to its kind
(``registry.CELL_KINDS``: ``measure`` — gradbench.protocols.measure, ``train`` — gradbench.training.cell) and its
:class:`Outcome` goes back to the runner, which stores it (gradbench.run.store). Targets are built once per process
and kept in a small LRU cache; every cell computes with one torch/BLAS thread (``GRADBENCH_CELL_THREADS`` changes
that), so a table is bitwise the same whichever executor computed it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradbench import registry
from gradbench.run.cells import Cell, TargetConfig

if TYPE_CHECKING:
    import pandas as pd

MAX_CACHED_TARGETS = 8


@dataclass(frozen=True)
class Outcome:
    cell: Cell
    rows: pd.DataFrame | None = None
    # side tables by name (the protocols' ProtocolSpec.side_tables, e.g. "meeting" raw τ; a kind's, e.g. "curves")
    side: dict[str, pd.DataFrame] = field(default_factory=dict)
    error: str | None = None  # one line; set when the cell failed


_TARGETS: OrderedDict[tuple[str, str, str], Any] = OrderedDict()  # per process (each Dask worker has its own)
_TARGETS_LOCK = threading.Lock()


def target_for(cell: Cell, config: TargetConfig | None = None) -> Any:
    """The target ``config`` (default: the cell's own; a kind may compute on another, ``CellKind.target_of``) in the
    cell's dtype and device, built once per process and kept in a small LRU cache."""
    config = cell.target if config is None else config
    key = (config.target_id, cell.dtype, cell.device)
    with _TARGETS_LOCK:
        if key in _TARGETS:
            _TARGETS.move_to_end(key)
            return _TARGETS[key]
    target = config.build(cell.dtype, cell.device)
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


def compute_cell(cell: Cell, reference: Any = None, checkpoint_dir: str | Path | None = None) -> Outcome:
    """Run one cell through its kind (``registry.CELL_KINDS[cell.kind].compute``) on its target, built once per
    process (with its reference when the runner computed it); an exception from the target, the estimator or the
    kind's computation becomes a failed outcome. ``checkpoint_dir``: where long (training) cells checkpoint."""
    try:
        registry.load_entry_points()
        registry.load_plugin_modules(cell.plugins)  # a Dask worker imports the suite's plugins itself
        kind = registry.CELL_KINDS[cell.kind]
        with cell_thread_limits(cell_threads()):
            if reference is not None and cell.device != "cpu":
                reference = type(reference)(**{k: v.to(cell.device) if hasattr(v, "to") else v
                                               for k, v in vars(reference).items()})
            config = None if kind.target_of is None else kind.target_of(cell)
            rows, side = kind.compute(cell, target_for(cell, config), reference,
                                      None if checkpoint_dir is None else Path(checkpoint_dir))
    except Exception as exc:  # noqa: BLE001 — recorded per cell; the suite goes on
        return Outcome(cell, error=one_line(exc))
    return Outcome(cell, rows, side)
