"""A cell and its target: what one row-set of a run is computed from, and its id.

A :class:`Cell` is pure and hashable: its target (:class:`TargetConfig`), its kind (``measure``: an estimator under
protocols; ``train``: a training run — ``registry.CELL_KINDS``), what it runs and with which parameters, replicates,
device, dtype, plugins and the versions of the code that computes it. Its id is a hash of all of it (docs/design.md
§4.2). The helpers at the end put the identifying and provenance columns of docs/design.md §9.1 on a cell's rows;
every kind writes its rows through them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradbench
from gradbench import registry
from gradbench.seeding import content_hash, derive_seed

if TYPE_CHECKING:
    import pandas as pd

CELL_FORMAT = 3  # bump when what a cell computes changes outside the modules its id covers (their edits are tracked by hash)


# -- cells -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetConfig:
    model: str
    params: dict[str, Any]
    proposal: dict[str, Any]
    data: str | None  # absolute path of a data file, or None for synthetic data
    data_sha256: str | None
    target_seed: int  # seeds the synthetic parameters and data
    suite_seed: int  # seeds the Monte Carlo noise
    data_spec: dict[str, Any] | None = None  # a named data set (gradbench.data.DataSpec), or None
    # a trained snapshot (gradbench.training.snapshots): {file, run, cell_id, step, sha256}; None: θ from target_seed
    snapshot: dict[str, Any] | None = None

    @property
    def snapshot_identity(self) -> list[Any]:
        """What identifies a snapshot target's θ and φ: the training cell, the step and the file's SHA-256
        (not where the file lives); empty for other targets, so their ids are unchanged."""
        s = self.snapshot
        return [{"snapshot": [s["cell_id"], s["step"], s["sha256"]]}] if s else []

    @property
    def data_seed(self) -> int:
        """Seed of the synthetic parameters/data: independent of the proposal, the estimator and the noise seed."""
        return derive_seed(self.target_seed, "target-data", self.model, self.params, self.data_sha256,
                           *([self.data_spec] if self.data_spec else []))

    @property
    def target_id(self) -> str:
        """Identifies the target (model, parameters, data, proposal) — not the noise it is run with."""
        return content_hash(["target", self.model, self.params, self.proposal, self.data_sha256, self.target_seed,
                             *([self.data_spec] if self.data_spec else []), *self.snapshot_identity], 12)

    def param_columns(self) -> dict[str, Any]:
        """The target's parameter columns of a cell's rows (docs/design.md §9.1): ``model.*``, ``proposal.*`` and, for a
        trained snapshot, ``snapshot.cell_id`` and ``snapshot.step`` — what the terminal and the report name targets by."""
        s = self.snapshot
        return {**{f"model.{k}": v for k, v in self.params.items()},
                **{f"proposal.{k}": v for k, v in self.proposal.items()},
                **({"snapshot.cell_id": s["cell_id"], "snapshot.step": s["step"]} if s else {})}

    def noise_seed(self, block: int) -> int:
        """Seed of replicate block ``block`` — shared by every estimator on this target."""
        return derive_seed(self.suite_seed, "target-noise", self.target_id, block)

    def build(self, dtype: str, device: str) -> Any:
        import torch

        if self.snapshot is not None:
            from gradbench.training import snapshots

            return snapshots.build_target(self, dtype, device)

        entry = registry.MODELS[self.model]
        from gradbench.data import read_array_file

        data = read_array_file(Path(self.data)) if self.data else None
        if self.data_spec is not None:
            from gradbench import data as datasets

            data, _ = datasets.load(datasets.DataSpec(**self.data_spec))
        return entry.build(entry.params(**self.params), entry.proposal(**self.proposal), self.data_seed,
                           getattr(torch, dtype), device, data)


@dataclass(frozen=True)
class Cell:
    target: TargetConfig
    estimator: str
    estimator_params: dict[str, Any]
    protocols: tuple[str, ...]
    replicates: int
    device: str
    dtype: str
    plugins: tuple[str, ...] = ()  # modules to import before computing (Dask workers too)
    code: tuple[tuple[str, str], ...] = ()  # (module, version or source hash) of the code that computes the cell
    kind: str = "measure"  # registry.CELL_KINDS: "measure" (estimator × protocols) or "train" (a training run)

    @property
    def cell_id(self) -> str:
        """A hash of the cell's content *and* of the code that computes it (``code``): editing the estimator's,
        the model's, a protocol's or the contract's source, or upgrading a plugin, re-runs the cell."""
        content = asdict(self)
        content["target"].pop("data")  # the file's content (sha256) counts, not where it lives
        if not content["target"]["data_spec"]:
            content["target"].pop("data_spec")
        snapshot = content["target"].pop("snapshot")
        if snapshot:
            content["target"]["snapshot"] = self.target.snapshot_identity
        return content_hash(["cell", CELL_FORMAT, content])


def reference_objective(cell: Cell) -> str | None:
    """The key of the objective whose reference the cell needs (its kind's ``reference_of``), or None."""
    kind = registry.CELL_KINDS[cell.kind]
    return None if kind.reference_of is None else kind.reference_of(cell)


# -- the identifying and provenance columns of a cell's rows ---------------------------------------
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
        **cell.target.param_columns(),
        **{f"estimator.{k}": v for k, v in cell.estimator_params.items()},
    }
    for col, value in reversed(meta.items()):
        df.insert(0, col, json.dumps(value) if isinstance(value, (list, tuple, dict)) else value)  # e.g. hidden: [200, 200]
    return df


def with_provenance(df: pd.DataFrame, started: dt.datetime, t0: float) -> pd.DataFrame:
    """The provenance columns (docs/design.md §9.1) after a cell's rows: versions, start time, seconds since ``t0``."""
    import torch

    df["gradbench_version"] = gradbench.__version__
    df["torch_version"] = torch.__version__
    df["started_at"] = started.isoformat(timespec="seconds")
    df["seconds"] = time.perf_counter() - t0
    return df
