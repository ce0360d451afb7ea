"""The run folder: atomic writes, the lock, the reference cache, targets, and the collected table.

Output folder layout (docs/design.md §4.4):
    cells/<cell_id>.parquet      one per finished cell (rows without the suite name)
    cells/<cell_id>.failed.json  a cell whose estimator raised (message); re-tried by the next run
    checkpoints/<cell_id>.pt     training cells: the last checkpoint (deleted once the cell file exists)
    cells/<cell_id>.<side>.parquet  a protocol's or the cell kind's side table of the cell (``meeting``: raw τ;
                                 ``curves``: a training cell's learning curves), written before the cell file
    curves.parquet               all learning curves of the suite (the ``train`` kind's side table)
    meeting_times.parquet        raw τ per replicate (the ``meeting`` protocol's side table)
    references/<target>.<dtype>.<objective>.pt  each reference, computed once (estimated ones are costly)
    targets/<target_id>.npz      model parameters by name, data ``x``, exact gradient ``grad_<name>``
    results.parquet              all cells of the suite, in suite order, with the ``suite`` column
    run.json                     the suite name and its cell ids in order
Every file is written to a temporary file in the same folder, fsynced, then renamed over its name,
so a killed run leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gradbench import registry
from gradbench.atomic import atomic_write_bytes  # re-exported: the run folder's writes
from gradbench.run.cells import Cell, reference_objective
from gradbench.run.compute import target_for

PROVENANCE = ["gradbench_version", "torch_version", "started_at", "seconds"]


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


class RunBusy(Exception):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``out/.lock``; a second run on the same folder is refused.

    The kernel drops the lock when its process dies (even by SIGKILL), so no stale lock survives; a run that ends
    removes the file while it still holds the lock. A process that opened the file just before that removal
    would lock a file no longer in the folder, so after locking it checks that the path still names the file it
    locked, and starts again if not.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    while True:
        fh = open(path, "a+")  # noqa: SIM115 — closed below, after the lock is released
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise RunBusy(f"{out}: another gradbench run (pid {owner}) is writing this folder; "
                          "wait for it to finish or choose another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: no other run can hold it
        fh.close()


def reference_path(out: Path, cell: Cell) -> Path:
    """``references/<target>.<dtype>.<objective>.pt`` of a cell that needs a reference."""
    return out / "references" / f"{cell.target.target_id}.{cell.dtype}.{reference_objective(cell)}.pt"


def read_reference(path: Path) -> Any:
    from gradbench.core import Reference

    return Reference(**torch.load(path, weights_only=True))


def write_reference(path: Path, reference: Any) -> None:
    buf = io.BytesIO()
    torch.save({k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(reference).items()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_target(cell: Cell, out: Path, written: set[str]) -> None:
    """``targets/<target_id>.npz`` once per run (the target comes from this process's cache), and
    ``targets/<target_id>.json``: the model, its parameters, the proposal and the data's provenance (named
    set, split, rows, binarisation seed, sha256 of the rows — the fixed split is recorded with the run).

    A kind that does not store target arrays (``CellKind.stores_target_arrays``: a training cell starts from fresh
    (θ₀, φ₀) and never reads the target's own θ or φ) writes only the ``.json``: its arrays are not built here (the
    VAE's φ is a Laplace fit to every data point, minutes and gigabytes on Fashion-MNIST), and the data rows are
    identified by their spec and sha256 — of the rows the cell computed on (``CellKind.target_of``)."""
    tid = cell.target.target_id
    kind = registry.CELL_KINDS[cell.kind]
    if tid not in written:
        if kind.stores_target_arrays:
            npz = io.BytesIO()
            np.savez(npz, **target_for(cell).arrays())
            atomic_write_bytes(out / "targets" / f"{tid}.npz", npz.getvalue())
        t = cell.target
        info: dict[str, Any] = {"model": t.model, "params": t.params, "proposal": t.proposal, "target_seed": t.target_seed,
                                "data": {"file": t.data, "sha256": t.data_sha256} if t.data else None}
        if t.snapshot is not None:  # trained θ and φ: the training run, cell, step and the file's sha256
            info["snapshot"] = dict(t.snapshot)
        if t.data_spec is not None:
            from gradbench import data as datasets

            used = t if kind.target_of is None else kind.target_of(cell)
            grey = used.data_spec != t.data_spec  # the cell computed on the grey levels of a dynamically binarised set
            rows = datasets.load(datasets.DataSpec(**t.data_spec), grey=grey)[1]
            info["data"] = {"spec": t.data_spec, **rows}
        atomic_write_bytes(out / "targets" / f"{tid}.json", json.dumps(info, indent=1, default=str).encode())
        written.add(tid)


def collect(suite_name: str, cells: list[Cell], out: Path, failed: dict[str, str] | None = None) -> pd.DataFrame:
    """Rebuild the tidy table from the cell files, in suite order (failed cells have no rows), plus the
    protocols' run-level rows (``ProtocolSpec.run_rows``: the bias tests' ``bias_qvalue``/``bias_pvalue_holm``),
    and collect the protocols' side tables (``ProtocolSpec.side_tables``) into their run files."""
    done = [c for c in cells if (out / "cells" / f"{c.cell_id}.parquet").exists()]
    frames = [pd.read_parquet(out / "cells" / f"{c.cell_id}.parquet") for c in done]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    sides: dict[str, pd.DataFrame] = {}
    for side in side_tables():  # e.g. meeting_times.parquet, curves.parquet
        parts = [out / "cells" / f"{c.cell_id}.{side.name}.parquet" for c in done]
        parts = [pd.read_parquet(p) for p in parts if p.exists()]
        if parts:
            sides[side.name] = pd.concat(parts, ignore_index=True)
    if not table.empty:  # the protocols' run-level rows (e.g. the multiple-testing correction of the bias tests)
        extra = [spec.run_level_rows(table, sides) for spec in registry.PROTOCOLS.values()
                 if spec.run_rows is not None]
        table = pd.concat([table, *(e for e in extra if e is not None)], ignore_index=True)
        order = table["cell_id"].map({c: i for i, c in enumerate(dict.fromkeys(table["cell_id"]))})
        table = table.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)  # rows by cell
    for col in table.columns[table.dtypes == object]:  # e.g. estimator.k holding both 5 and "auto"
        kinds = {type(v) for v in table[col].dropna()}
        if len(kinds) > 1:
            table[col] = table[col].map(lambda v: v if pd.isna(v) else str(v))
    table.insert(0, "suite", suite_name)
    atomic_write_parquet(table, out / "results.parquet")
    for side in side_tables():
        if side.name in sides:
            atomic_write_parquet(sides[side.name], out / side.file)
    write_manifest(out, suite_name, cells, failed or {}, complete=True)
    return table


def side_tables() -> list[Any]:
    """Every registered protocol's and cell kind's side tables (:class:`gradbench.protocols.spec.SideTable`)."""
    return [side for entry in [*registry.PROTOCOLS.values(), *registry.CELL_KINDS.values()] for side in entry.side_tables]


def write_manifest(out: Path, suite_name: str, cells: list[Cell], failed: dict[str, str], *, complete: bool) -> None:
    """``run.json``: the suite name, its cell ids in order, failed cells, whether results.parquet is current, and the
    plugin modules its cells were computed with (the report imports them)."""
    plugins = sorted({m for c in cells for m in c.plugins})
    manifest = {"suite": suite_name, "cells": [c.cell_id for c in cells], "failed": failed, "complete": complete,
                **({"plugins": plugins} if plugins else {})}
    atomic_write_bytes(out / "run.json", json.dumps(manifest, indent=1).encode())
