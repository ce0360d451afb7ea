"""Executors turn cells into outcomes; only the runner (in the calling process) writes them.

* :class:`LocalExecutor` — in-process, one cell after another (the default; needs no Dask).
* :class:`DaskExecutor` — one ``dask.distributed`` task per cell, on a scheduler given by address
  or on a ``LocalCluster`` sized to the machine (one single-threaded worker process per core).

Cells are pure (docs/design.md §2.1, §4.2): :func:`compute_cell` depends only on the cell's content, so where it
runs does not change the result, and since results come back to the runner, which writes them
through the same atomic per-cell store, a run can be resumed with either executor. Every cell
computes with one torch/BLAS thread (``GRADBENCH_CELL_THREADS`` changes that), so tables are
bitwise equal whichever executor ran them.

Timed cells (a protocol with ``ProtocolSpec.timed``, e.g. ``wallclock``) are never run beside another cell: the Dask executor
holds them back until every other cell of the run has finished, then runs them one at a time.
Cells on a CUDA device request the worker resource ``GPU=1`` (start GPU workers with
``--resources GPU=1``, one per GPU); with none declared, such cells are refused up front.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from gradbench import registry
from gradbench.run.cells import Cell
from gradbench.run.compute import Outcome, compute_cell, one_line


def is_timed(cell: Cell) -> bool:
    """Whether a protocol of the cell times it (``ProtocolSpec.timed``): it then runs alone."""
    return any(registry.PROTOCOLS[name].timed for name in cell.protocols)


class LocalExecutor:
    name = "local"

    def run(self, cells: list[Cell], stop: threading.Event, references: dict[str, Any] | None = None,
            checkpoint_dir: str | None = None) -> Iterator[Outcome]:
        for cell in cells:
            if stop.is_set():
                return
            yield compute_cell(cell, (references or {}).get(cell.cell_id), checkpoint_dir)


class DaskExecutor:
    """Cells as ``dask.distributed`` tasks.

    ``scheduler``: address of a running scheduler (``tcp://HOST:8786``); None starts a LocalCluster
    with ``n_workers`` single-threaded worker processes (default: one per core). A task whose
    worker dies is retried by the scheduler up to ``retries`` times (for a LocalCluster; a remote
    scheduler uses its own ``distributed.scheduler.allowed-failures``), then the cell is failed.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, n_workers: int | None = None, retries: int = 2) -> None:
        self.scheduler = scheduler
        self.n_workers = n_workers or os.cpu_count() or 1
        self.retries = retries

    def run(self, cells: list[Cell], stop: threading.Event, references: dict[str, Any] | None = None,
            checkpoint_dir: str | None = None) -> Iterator[Outcome]:
        import dask
        from distributed import Client, LocalCluster

        with dask.config.set({"distributed.scheduler.allowed-failures": self.retries}):
            cluster = None
            if self.scheduler is None:
                cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = Client(self.scheduler or cluster)
            try:
                self._check_resources(client, cells)
                refs = references or {}
                yield from self._gather(client, [c for c in cells if not is_timed(c)], stop, refs, checkpoint_dir)
                for cell in (c for c in cells if is_timed(c)):  # alone on the cluster, one at a time
                    if stop.is_set():
                        return
                    yield from self._gather(client, [cell], stop, refs, checkpoint_dir)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()

    @staticmethod
    def _check_resources(client: Any, cells: list[Cell]) -> None:
        if not any(c.device.startswith("cuda") for c in cells):
            return
        workers = client.scheduler_info()["workers"].values()
        if not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers):
            raise RuntimeError("cuda cells need Dask workers started with --resources GPU=1; none has it")

    @staticmethod
    def _gather(client: Any, cells: list[Cell], stop: threading.Event, refs: dict[str, Any],
                checkpoint_dir: str | None = None) -> Iterator[Outcome]:
        from distributed import wait

        pending = {
            client.submit(compute_cell, cell, refs.get(cell.cell_id), checkpoint_dir, key=f"cell-{cell.cell_id}", pure=False,
                          resources={"GPU": 1} if cell.device.startswith("cuda") else None): cell
            for cell in cells
        }
        try:
            while pending:
                if stop.is_set():
                    return
                try:
                    done, _ = wait(list(pending), timeout=0.25, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in done:
                    cell = pending.pop(future)
                    try:
                        yield future.result()
                    except Exception as exc:  # noqa: BLE001 — e.g. KilledWorker after the retries
                        yield Outcome(cell, error=f"worker failure: {one_line(exc)}")
        finally:
            if pending:
                client.cancel(list(pending))
