"""Run cells, write each finished cell atomically, collect the tidy results table.

Output folder layout (DESIGN §1):
    cells/<cell_id>.parquet    one per finished cell (rows without the suite name)
    meeting_times.parquet      raw τ per replicate for estimators that report ``tau`` diagnostics
    targets/<target_id>.npz    model parameters by name, data ``x``, exact gradient ``grad_<name>``
    results.parquet            all cells of the suite, in suite order, with the ``suite`` column
    run.json                   the suite name and its cell ids in order
A re-run skips cells whose file exists; a cell's id is a hash of its content (not of the suite
name), so a changed suite re-uses exactly the cells whose content did not change.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import gradbench
from gradbench import registry
from gradbench.core import GradSample
from gradbench.protocols import ProtocolContext
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


def run_cell(cell: Cell, target: Any) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """All protocol rows of one cell, with the DESIGN §5 columns (except ``suite``), and the raw
    per-replicate meeting times when the estimator reports them (diagnostics ``tau``/``censored``)."""
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    sample = sample_cell(cell, target)
    reference = target.reference(sample.wrt)
    eps = float(torch.finfo(sample.grads.dtype).eps)
    n_nonfinite = int(sample.diagnostics["nonfinite"].sum())
    rows = []
    for name in cell.protocols:
        ctx = ProtocolContext(seed=derive_seed(cell.target.noise_seed(0), "protocol", name), eps=eps)
        rows += [{"protocol": name, **r} for r in registry.PROTOCOLS[name].fn(sample, reference, ctx)]
    df = pd.DataFrame(rows, columns=["protocol", "param_group", "metric", "value", "stderr", "method"])
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
    df["gradbench_version"] = gradbench.__version__
    df["torch_version"] = torch.__version__
    df["started_at"] = started.isoformat(timespec="seconds")
    df["seconds"] = time.perf_counter() - t0
    return df, _meeting_frame(cell, sample)


def _meeting_frame(cell: Cell, sample: GradSample) -> pd.DataFrame | None:
    if "tau" not in sample.diagnostics:
        return None
    tau = sample.diagnostics["tau"].cpu().numpy()
    censored = sample.diagnostics.get("censored", torch.zeros(len(tau), dtype=torch.bool)).cpu().numpy()
    return pd.DataFrame({"cell_id": cell.cell_id, "estimator": cell.estimator, "replicate": np.arange(len(tau)),
                         "tau": tau, "censored": censored})


@dataclass(frozen=True)
class RunSummary:
    out: Path
    table: pd.DataFrame
    ran: int
    skipped: int


def run_suite(
    suite: Suite,
    cells: list[Cell],
    out: Path,
    *,
    fresh: bool = False,
    progress: bool = True,
    on_cell: Callable[[Cell], None] | None = None,
) -> RunSummary:
    """Run every unfinished cell (all of them with ``fresh``), then collect ``results.parquet``."""
    out = Path(out)
    cell_dir = out / "cells"
    if fresh:
        for f in list(cell_dir.glob("*.parquet")) + [out / "results.parquet", out / "meeting_times.parquet"]:
            f.unlink(missing_ok=True)
    targets: dict[str, Any] = {}
    ran = skipped = 0
    for cell in tqdm(cells, desc=suite.name, unit="cell", disable=not progress):
        path = cell_dir / f"{cell.cell_id}.parquet"
        if path.exists():
            skipped += 1
            continue
        tid = cell.target.target_id
        if tid not in targets:
            targets[tid] = cell.target.build(cell.dtype, cell.device)
            npz = io.BytesIO()
            np.savez(npz, **targets[tid].arrays())
            atomic_write_bytes(out / "targets" / f"{tid}.npz", npz.getvalue())
        rows, meeting = run_cell(cell, targets[tid])
        if meeting is not None:  # written first: the cell file's existence means the cell is complete
            atomic_write_parquet(meeting, cell_dir / f"{cell.cell_id}.meeting.parquet")
        atomic_write_parquet(rows, path)
        ran += 1
        if on_cell is not None:
            on_cell(cell)
    table = collect(suite.name, cells, out)
    return RunSummary(out, table, ran, skipped)


def collect(suite_name: str, cells: list[Cell], out: Path) -> pd.DataFrame:
    """Rebuild the tidy table from the cell files, in suite order."""
    frames = [pd.read_parquet(out / "cells" / f"{c.cell_id}.parquet") for c in cells]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.insert(0, "suite", suite_name)
    atomic_write_parquet(table, out / "results.parquet")
    meeting = [out / "cells" / f"{c.cell_id}.meeting.parquet" for c in cells]
    meeting = [pd.read_parquet(p) for p in meeting if p.exists()]
    if meeting:
        atomic_write_parquet(pd.concat(meeting, ignore_index=True), out / "meeting_times.parquet")
    manifest = {"suite": suite_name, "cells": [c.cell_id for c in cells]}
    atomic_write_bytes(out / "run.json", json.dumps(manifest, indent=1).encode())
    return table
