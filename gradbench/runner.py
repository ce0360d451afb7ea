"""Run cells, write each finished cell atomically, collect the tidy results table.

Output folder layout (DESIGN §1):
    cells/<cell_id>.parquet    one per finished cell (rows without the suite name)
    cells/<cell_id>.failed.json  a cell whose estimator raised (message); re-tried by the next run
    meeting_times.parquet      raw τ per replicate for estimators that report ``tau`` diagnostics
    targets/<target_id>.npz    model parameters by name, data ``x``, exact gradient ``grad_<name>``
    results.parquet            all cells of the suite, in suite order, with the ``suite`` column
    run.json                   the suite name and its cell ids in order
A re-run skips cells whose file exists; a cell's id is a hash of its content (not of the suite
name), so a changed suite re-uses exactly the cells whose content did not change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import gradbench
from gradbench import registry
from gradbench.core import GradSample
from gradbench.executors import DaskExecutor, LocalExecutor, target_for
from gradbench.protocols import ProtocolContext
from gradbench.protocols.meeting import censoring_warning
from gradbench.seeding import derive_seed, make_generator
from gradbench.suite import Cell, Suite

REPLICATE_BLOCK = 500  # replicates per estimator call; block b's noise seed is (suite seed, target, b)
PROVENANCE = ["gradbench_version", "torch_version", "started_at", "seconds"]


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


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


def run_cell(cell: Cell, target: Any) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """All protocol rows of one cell, with the DESIGN §5 columns (except ``suite``), and the raw
    per-replicate meeting times when the estimator reports them (diagnostics ``tau``/``censored``)."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    sample = sample_cell(cell, target)
    uses_reference = any(registry.PROTOCOLS[name].uses_reference for name in cell.protocols)
    reference = target.reference(sample.wrt) if uses_reference else None
    eps = float(torch.finfo(sample.grads.dtype).eps)
    n_nonfinite = int(sample.diagnostics["nonfinite"].sum())
    rows = []
    for name in cell.protocols:
        ctx = ProtocolContext(seed=derive_seed(cell.target.noise_seed(0), "protocol", name), eps=eps,
                              device=cell.device, rerun=rerun_cell(cell, target))
        rows += [{"protocol": name, **r} for r in registry.PROTOCOLS[name].fn(sample, reference, ctx)]
    df = pd.DataFrame(rows, columns=["protocol", "param_group", "metric", "value", "stderr", "method", "warning"])
    meta: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "target_id": cell.target.target_id,
        "model": cell.target.model,
        "estimator": cell.estimator,
        "n_replicates": sample.replicates - n_nonfinite,
        "n_nonfinite": n_nonfinite,
        "seed": cell.target.suite_seed,
        "device": cell.device,
        "dtype": cell.dtype,
        **{f"model.{k}": v for k, v in cell.target.params.items()},
        **{f"proposal.{k}": v for k, v in cell.target.proposal.items()},
        **{f"estimator.{k}": v for k, v in cell.estimator_params.items()},
    }
    for col, value in reversed(meta.items()):
        df.insert(0, col, value)
    cell_warning = "; ".join(w for w in (resolution_warning(sample, reference), censoring_warning(sample)) if w)
    df["warning"] = [
        "; ".join(w for w in (str(r) if isinstance(r, str) else "", cell_warning) if w) for r in df.pop("warning")
    ]
    df["gradbench_version"] = gradbench.__version__
    df["torch_version"] = torch.__version__
    df["started_at"] = started.isoformat(timespec="seconds")
    df["seconds"] = time.perf_counter() - t0
    return df, _meeting_frame(cell, sample)


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


def _meeting_frame(cell: Cell, sample: GradSample) -> pd.DataFrame | None:
    if "tau" not in sample.diagnostics:
        return None
    tau = sample.diagnostics["tau"].cpu().numpy()
    censored = sample.diagnostics.get("censored", torch.zeros(len(tau), dtype=torch.bool)).cpu().numpy()
    return pd.DataFrame({"cell_id": cell.cell_id, "estimator": cell.estimator, "replicate": np.arange(len(tau)),
                         "tau": tau, "censored": censored})


class RunBusy(Exception):
    """Another process holds the output folder's lock."""


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
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``out/.lock``; a second run on the same folder is refused.

    The kernel drops the lock when its process dies (even by SIGKILL), so no stale lock survives.
    """
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            raise RunBusy(f"{out}: another gradbench run (pid {owner}) is writing this folder; "
                          "wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


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
            for f in [*cell_dir.iterdir(), out / "results.parquet", out / "meeting_times.parquet"]:
                f.unlink(missing_ok=True)
        todo = [c for c in cells if not (cell_dir / f"{c.cell_id}.parquet").exists()]
        skipped, ran = len(cells) - len(todo), 0
        failed: dict[str, str] = {}
        written: set[str] = set()
        with tqdm(total=len(todo), desc=suite.name, unit="cell", disable=not progress) as bar:
            for outcome in executor.run(todo, stop):
                cell = outcome.cell
                bar.update()
                if outcome.error is not None:
                    failed[cell.cell_id] = outcome.error
                    record = {"cell_id": cell.cell_id, "estimator": cell.estimator, "params": cell.estimator_params,
                              "target_id": cell.target.target_id, "error": outcome.error}
                    atomic_write_bytes(cell_dir / f"{cell.cell_id}.failed.json", json.dumps(record, indent=1).encode())
                    continue
                _write_target(cell, out, written)
                if outcome.meeting is not None:  # written first: the cell file's existence means it is complete
                    atomic_write_parquet(outcome.meeting, cell_dir / f"{cell.cell_id}.meeting.parquet")
                atomic_write_parquet(outcome.rows, cell_dir / f"{cell.cell_id}.parquet")
                (cell_dir / f"{cell.cell_id}.failed.json").unlink(missing_ok=True)
                ran += 1
                if on_cell is not None:
                    on_cell(cell)
        interrupted = ran + len(failed) < len(todo)
        table = pd.DataFrame() if interrupted else collect(suite.name, cells, out, failed)
    return RunSummary(out, table, ran, skipped, failed, interrupted, len(cells))


def _write_target(cell: Cell, out: Path, written: set[str]) -> None:
    """``targets/<target_id>.npz`` once per run (the target comes from this process's cache)."""
    tid = cell.target.target_id
    if tid not in written:
        npz = io.BytesIO()
        np.savez(npz, **target_for(cell).arrays())
        atomic_write_bytes(out / "targets" / f"{tid}.npz", npz.getvalue())
        written.add(tid)


def collect(suite_name: str, cells: list[Cell], out: Path, failed: dict[str, str] | None = None) -> pd.DataFrame:
    """Rebuild the tidy table from the cell files, in suite order (failed cells have no rows), plus the
    run-wide ``bias_qvalue``/``bias_pvalue_holm`` rows (:func:`gradbench.protocols.bias.multiplicity_rows`)."""
    done = [c for c in cells if (out / "cells" / f"{c.cell_id}.parquet").exists()]
    frames = [pd.read_parquet(out / "cells" / f"{c.cell_id}.parquet") for c in done]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not table.empty:  # multiple-testing correction across the run's bias tests
        from gradbench.protocols.bias import multiplicity_rows

        table = pd.concat([table, multiplicity_rows(table)], ignore_index=True)
        order = table["cell_id"].map({c: i for i, c in enumerate(dict.fromkeys(table["cell_id"]))})
        table = table.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)  # rows by cell
    for col in table.columns[table.dtypes == object]:  # e.g. estimator.k holding both 5 and "auto"
        kinds = {type(v) for v in table[col].dropna()}
        if len(kinds) > 1:
            table[col] = table[col].map(lambda v: v if pd.isna(v) else str(v))
    table.insert(0, "suite", suite_name)
    atomic_write_parquet(table, out / "results.parquet")
    meeting = [out / "cells" / f"{c.cell_id}.meeting.parquet" for c in done]
    meeting = [pd.read_parquet(p) for p in meeting if p.exists()]
    if meeting:
        atomic_write_parquet(pd.concat(meeting, ignore_index=True), out / "meeting_times.parquet")
    manifest = {"suite": suite_name, "cells": [c.cell_id for c in cells], "failed": failed or {}}
    atomic_write_bytes(out / "run.json", json.dumps(manifest, indent=1).encode())
    return table
