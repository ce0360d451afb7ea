"""Run a suite: plan which cells are left, prepare their references, hand the cells to an executor,
store each outcome atomically as it arrives, and collect the tidy table (``gradbench.run.store``).

The modules and their imports, with no loop: ``suite`` (cells) ← ``cell`` (compute one cell, pure)
← ``executors`` (where cells compute: here or on Dask) and ``store`` (the run folder) ← ``runner``.
A re-run skips cells whose file exists; a cell's id is a hash of its content and of the code that
computes it (not of the suite name), so a changed suite or an edited estimator re-runs exactly the
cells it changes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from gradbench import registry
from gradbench.run.cells import Cell, reference_objective
from gradbench.run.compute import cell_thread_limits, cell_threads, target_for
from gradbench.run.executors import DaskExecutor, LocalExecutor
from gradbench.run.plan import Suite
from gradbench.run.store import (
    atomic_write_bytes,
    atomic_write_parquet,
    collect,
    output_lock,
    read_reference,
    reference_path,
    side_tables,
    write_manifest,
    write_reference,
    write_target,
)


@dataclass(frozen=True)
class RunSummary:
    out: Path
    table: pd.DataFrame
    ran: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)  # cell_id → one-line error
    interrupted: bool = False
    total: int = 0


@contextlib.contextmanager
def stop_after_current_cell() -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (the runner stops after the running cell); a second one aborts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\ngradbench: stopping after the current cell (Ctrl-C again to abort now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_suite(
    suite: Suite,
    cells: list[Cell],
    out: Path,
    *,
    fresh: bool = False,
    progress: bool = True,
    on_cell: Callable[[Cell], None] | None = None,
    executor: LocalExecutor | DaskExecutor | None = None,
) -> RunSummary:
    """Run every unfinished cell (all of them with ``fresh``), then collect ``results.parquet``.

    A cell whose estimator (or target) raises is recorded in ``cells/<id>.failed.json`` and the
    suite goes on; failed cells are tried again by the next run. Ctrl-C stops after the running
    cell(s); the collected table is written only when no cell is left to run.
    """
    out = Path(out)
    cell_dir = out / "cells"
    executor = executor or LocalExecutor()
    with output_lock(out), stop_after_current_cell() as stop:
        cell_dir.mkdir(parents=True, exist_ok=True)
        for f in cell_dir.glob(".*.tmp"):  # left by a killed run; safe to drop while we hold the lock
            f.unlink(missing_ok=True)
        if fresh:
            for f in [*cell_dir.iterdir(), *(out / "checkpoints").glob("*.pt"), out / "results.parquet",
                      *(out / side.file for side in side_tables())]:
                f.unlink(missing_ok=True)
        # claims the folder for this suite and records the cell count (report on an interrupted run)
        write_manifest(out, suite.name, cells, {}, complete=False)
        todo = [c for c in cells if not (cell_dir / f"{c.cell_id}.parquet").exists()]
        skipped, ran = len(cells) - len(todo), 0
        references = prepare_references(todo, out, stop)
        failed: dict[str, str] = {}
        written: set[str] = set()
        with tqdm(total=len(todo), desc=suite.name, unit="cell", disable=not progress) as bar:
            # long (``train``) cells checkpoint here; a shared folder for remote Dask workers
            for outcome in executor.run(todo, stop, references, str(out / "checkpoints")):
                cell = outcome.cell
                bar.update()
                if outcome.error is not None:
                    failed[cell.cell_id] = outcome.error
                    record = {"cell_id": cell.cell_id, "estimator": cell.estimator, "params": cell.estimator_params,
                              "target_id": cell.target.target_id, "error": outcome.error}
                    atomic_write_bytes(cell_dir / f"{cell.cell_id}.failed.json", json.dumps(record, indent=1).encode())
                    continue
                write_target(cell, out, written)
                for name, frame in outcome.side.items():  # first: the cell file's existence means it is complete
                    atomic_write_parquet(frame, cell_dir / f"{cell.cell_id}.{name}.parquet")
                atomic_write_parquet(outcome.rows, cell_dir / f"{cell.cell_id}.parquet")
                (cell_dir / f"{cell.cell_id}.failed.json").unlink(missing_ok=True)
                (out / "checkpoints" / f"{cell.cell_id}.pt").unlink(missing_ok=True)
                ran += 1
                if on_cell is not None:
                    on_cell(cell)
        interrupted = ran + len(failed) < len(todo)
        table = pd.DataFrame() if interrupted else collect(suite.name, cells, out, failed)
    return RunSummary(out, table, ran, skipped, failed, interrupted, len(cells))


ANNOUNCE_AFTER_S = 2.0  # a reference still computing after this long is announced on stderr


def prepare_references(cells: list[Cell], out: Path, stop: threading.Event | None = None,
                       say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each cell's reference, computed once per (target, dtype, objective) in this process and cached in
    ``references/`` (atomically, so a resumed run or a Dask worker never recomputes it; estimated references
    such as IWAE_K's high-budget runs are the expensive ones). Returns cell_id → Reference.

    Time is charged to what spent it: each computed reference's seconds go to ``references/<key>.json`` (not
    into any cell's ``seconds``), and one that takes longer than ``ANNOUNCE_AFTER_S`` is announced through
    ``say`` (default: stderr) while it runs and when it ends."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    by_key: dict[Path, Any] = {}
    out_refs: dict[str, Any] = {}
    for cell in cells:
        objective = reference_objective(cell)
        if objective is None or (stop is not None and stop.is_set()):
            continue
        path = reference_path(out, cell)
        if path not in by_key:
            if path.exists():
                by_key[path] = read_reference(path)
            else:
                what = (f"the reference gradient of target {cell.target.target_id} for {objective} "
                        f"(needed by protocol(s) {', '.join(p for p in cell.protocols if registry.PROTOCOLS[p].uses_reference)})")
                announce = threading.Timer(ANNOUNCE_AFTER_S, say, [(f"gradbench: computing {what}; an estimated "
                                                                  "reference runs many replicates and can take minutes")])
                announce.daemon = True
                t0 = time.perf_counter()
                announce.start()
                try:
                    with cell_thread_limits(cell_threads()):  # as in a cell: the same bits on every executor
                        ref = target_for(cell).reference(objective)
                except Exception:  # noqa: BLE001 — the cell itself will fail with this error, recorded per cell
                    by_key[path] = None
                    continue
                finally:
                    announce.cancel()
                seconds = time.perf_counter() - t0
                if seconds > ANNOUNCE_AFTER_S:
                    say(f"gradbench: computed {what} in {seconds:.1f} s")
                write_reference(path, ref)
                atomic_write_bytes(path.with_suffix(".json"), json.dumps(
                    {"target_id": cell.target.target_id, "dtype": cell.dtype, "objective": objective,
                     "kind": ref.kind, "seconds": seconds}, indent=1).encode())
                by_key[path] = ref
        if by_key[path] is not None:
            out_refs[cell.cell_id] = by_key[path]
    return out_refs
