"""The cell kind ``train`` (``registry.CELL_KINDS``, docs/design.md §6.10): a training run is the cell's computation.

A suite's ``train:`` block (gradbench.run.plan) expands to one ``train`` cell per target × arm × seed × settings;
its parameters are :class:`gradbench.training.params.TrainParams`. The kind declares what the cell needs of its
target (the capabilities of its θ-, φ- and warm-up estimators), which registered estimators it runs (their code
counts in the cell id, docs/design.md §4.2), the target it trains on (grey levels under dynamic binarisation), and
computes the rows and learning curves (:func:`compute`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pandas as pd

from gradbench.run.cells import Cell, TargetConfig, with_meta, with_provenance
from gradbench.training.params import TRAIN


def target_of(cell: Cell) -> TargetConfig:
    """The target a training cell trains on: the cell's own, except with ``binarize: dynamic`` data, where its rows
    stay grey levels (the training loop draws each minibatch's binarisation; gradbench.training.loop)."""
    spec = cell.target.data_spec
    if spec is None or spec.get("binarize") != "dynamic":
        return cell.target
    return dataclasses.replace(cell.target, data_spec={**spec, "binarize": "none"})


def compute(cell: Cell, target: Any, reference: Any = None,
            checkpoint_dir: Path | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The kind's computation (gradbench.run.compute): :func:`train`'s rows and its learning curves as the side table
    ``curves``; a training run has no reference (``reference`` is unused)."""
    rows, curves = train(cell, target, checkpoint_dir)
    return rows, {"curves": curves}


def train(cell: Cell, target: Any, checkpoint_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on ``target`` (:func:`target_of` the cell, built): (rows, learning curves). With ``checkpoint_dir`` it checkpoints to, and resumes from, ``<checkpoint_dir>/<cell_id>.pt``, and keeps the
    ``snapshot_steps`` in ``<checkpoint_dir>/../snapshots/<cell_id>/`` (gradbench.training.snapshots)."""
    from gradbench.training import ebm, loop
    from gradbench.training.snapshots import snapshot_dir

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{cell.cell_id}.pt"
    if ebm.is_ebm(target):  # θ-only training of energy-based models
        if cell.estimator_params.get("snapshot_steps"):
            raise ValueError("train: snapshot_steps is not supported for energy-based models (vae, sbn only)")
        rows, curves = ebm.train_cell(cell, target, ckpt)
    else:
        snaps = None if checkpoint_dir is None else snapshot_dir(Path(checkpoint_dir), cell.cell_id)
        rows, curves = loop.train_cell(cell, target, ckpt, snapshots=snaps)
    df = pd.DataFrame([{"protocol": TRAIN, **r} for r in rows],
                      columns=["protocol", "param_group", "metric", "value", "stderr", "method"])
    nonfinite = int(df.loc[df["metric"] == "nonfinite_steps", "value"].iloc[0])
    df = with_meta(df, cell, 1, nonfinite)
    df["warning"] = ""
    curves.insert(0, "estimator", cell.estimator)
    curves.insert(0, "cell_id", cell.cell_id)
    return with_provenance(df, started, t0), curves
