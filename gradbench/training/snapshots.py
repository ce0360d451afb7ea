"""Snapshots of training runs, and targets built from them: estimators measured at trained parameters.

Writing. A ``train`` cell with ``snapshot_steps: [0, 200, 800]`` (:class:`gradbench.training.params.TrainParams`)
keeps, at each listed step t (0: the initial state, before any update), the file
``<out>/snapshots/<cell_id>/step-<t>.pt`` holding θ_t, φ_t, t, the log-joint evaluations spent, the cell id, the
training target's spec (model, parameters, data and its provenance; :func:`target_spec`), the trained encoder's family
(:func:`encoder_spec`) and the training settings. The file is written atomically (:mod:`gradbench.atomic`) and the
runner never deletes it (checkpoints are deleted when a cell finishes; snapshots are results). A resumed cell
recomputes the same θ_t, so it writes the same bytes.

Reading. A suite's target ``{model: vae, params: {checkpoint: RUN_DIR, step: 800}}`` (or ``step: [0, 200, 800]``,
one target per step) is the model at θ_t with the trained encoder q_φt as its proposal: the architecture and the data
come from the snapshot (explicit parameters must agree with it; ``data:`` may choose other rows of the same width,
e.g. a subset). ``checkpoint`` names a snapshot folder ``RUN_DIR/snapshots/<cell_id>``, or a run folder (or its
``snapshots/``) that holds exactly one training cell's snapshots. The target's identity includes the training cell id,
the step and the SHA-256 of the snapshot file, so a changed file is a new target (and recomputes); where it lives does
not count.

Contract for a model (plugins too): ``build(params, proposal, seed, dtype, device, data)`` returns a target whose
``model``, ``x``, ``reference_builders``, ``seed`` and ``provides`` are kept, and whose θ is replaced by the saved
tensors by name (every name of ``model.layout`` must be in the snapshot, with the same shape). The proposal is the
saved encoder family (``gaussian_encoder`` for real z, ``bernoulli_encoder`` for binary z), at the saved φ.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

SNAPSHOTS = "snapshots"  # the folder of a run that holds them: <out>/snapshots/<cell_id>/step-<t>.pt
FORMAT = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
# the suite's proposal block equivalent to a saved encoder, per family (the keys its model's proposal schema uses)
_PROPOSAL_OF = {
    "gaussian_encoder": lambda hidden: {"family": "gaussian_encoder", "encoder_hidden": list(hidden)},
    "bernoulli_encoder": lambda hidden: {"family": "bernoulli_encoder", "hidden": hidden[0] if hidden else None},
}


class SnapshotError(ValueError):
    """A snapshot that cannot be found or used: one line naming the path (and the steps that exist)."""


# -- writing ---------------------------------------------------------------------------------------
def snapshot_dir(checkpoint_dir: Path, cell_id: str) -> Path:
    """``<out>/snapshots/<cell_id>`` from the run's checkpoint folder ``<out>/checkpoints``."""
    return Path(checkpoint_dir).parent / SNAPSHOTS / cell_id


def step_file(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step}.pt"


def target_spec(cell: Any) -> dict[str, Any]:
    """The training target's spec (:class:`gradbench.run.cells.TargetConfig` as a mapping), from which a target is rebuilt."""
    return asdict(cell.target)


def encoder_spec(family: Any) -> dict[str, Any]:
    """``{family: gaussian_encoder | bernoulli_encoder, hidden: [...]}`` of a trained encoder."""
    from gradbench.families.bernoulli import BernoulliEncoder
    from gradbench.families.gaussian import GaussianEncoder

    if isinstance(family, GaussianEncoder):
        return {"family": "gaussian_encoder", "hidden": list(family.hidden)}
    if isinstance(family, BernoulliEncoder):
        return {"family": "bernoulli_encoder", "hidden": [] if family.hidden is None else [family.hidden]}
    raise SnapshotError(f"snapshots: no saved form for the encoder family {type(family).__name__}")


def write_snapshot(path: Path, *, theta: Any, phi: Any, step: int, evals: float, cell: Any, family: Any) -> None:
    """Write one snapshot atomically (θ and φ detached copies on the CPU, in the training dtype)."""
    import torch

    from gradbench.atomic import atomic_write_bytes

    payload = {"format": FORMAT, "step": int(step), "evals": float(evals), "cell_id": cell.cell_id,
               "theta": {k: v.detach().cpu().clone() for k, v in theta.items()},
               "phi": {k: v.detach().cpu().clone() for k, v in phi.items()},
               "target": target_spec(cell), "encoder": encoder_spec(family), "train_params": dict(cell.estimator_params),
               "dtype": cell.dtype}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


# -- finding ---------------------------------------------------------------------------------------
def steps_in(folder: Path) -> list[int]:
    """The steps with a snapshot file in ``folder``, ascending."""
    if not Path(folder).is_dir():
        return []
    return sorted(int(m.group(1)) for f in Path(folder).iterdir() if (m := _STEP_FILE.match(f.name)))


def cell_folder(path: Path) -> Path:
    """The snapshot folder of one training cell named by ``path``: the folder itself (it holds ``step-*.pt``), or the
    only cell folder under ``path/snapshots`` or ``path``; otherwise a :class:`SnapshotError` naming what is there."""
    path = Path(path)
    if not path.exists():
        raise SnapshotError(f"no snapshot folder {path} (run the training suite with snapshot_steps first)")
    if path.is_file():
        raise SnapshotError(f"{path} is a file; give the snapshot folder (…/snapshots/<cell_id>) and step:")
    if steps_in(path):
        return path
    for root in (path / SNAPSHOTS, path):
        cells = sorted(d for d in root.iterdir() if d.is_dir() and steps_in(d)) if root.is_dir() else []
        if len(cells) == 1:
            return cells[0]
        if len(cells) > 1:
            raise SnapshotError(f"{root} holds the snapshots of {len(cells)} training cells "
                                f"({', '.join(c.name for c in cells)}); name one: {root}/<cell_id>")
    raise SnapshotError(f"no snapshots in {path} (no step-<N>.pt files, no snapshots/<cell_id>/ folder)")


def locate(path: Path, step: int) -> Path:
    """The snapshot file of ``step`` under ``path`` (:func:`cell_folder`); a missing step names the steps there."""
    folder = cell_folder(path)
    f = step_file(folder, step)
    if not f.is_file():
        have = ", ".join(map(str, steps_in(folder))) or "none"
        raise SnapshotError(f"no snapshot at step {step} in {folder} (steps there: {have})")
    return f


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load(path: Path) -> dict[str, Any]:
    """The snapshot's contents (a file written by :func:`write_snapshot`)."""
    import torch

    try:
        snap = torch.load(path, weights_only=True, map_location="cpu")  # tensors and plain containers only
    except Exception as exc:  # noqa: BLE001 — any unreadable file is one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SnapshotError(f"{path}: not a readable snapshot ({type(exc).__name__}: {first})") from None
    if not isinstance(snap, dict) or snap.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a gradbench snapshot (format {FORMAT})")
    return snap


def proposal_of(snap: dict[str, Any]) -> dict[str, Any]:
    """The suite proposal block equivalent to the snapshot's trained encoder (for capability checks and tables)."""
    enc = snap["encoder"]
    return _PROPOSAL_OF[enc["family"]](enc["hidden"])


# -- building --------------------------------------------------------------------------------------
def build_target(config: Any, dtype: str, device: str) -> Any:
    """The target of a snapshot ``config`` (:class:`gradbench.run.cells.TargetConfig` with ``snapshot``): the model's own
    build (model, data, references) with θ replaced by the saved θ_t and the proposal by the saved encoder at φ_t.

    The file must still have the SHA-256 recorded when the suite was loaded."""
    import torch

    from gradbench import registry
    from gradbench.families.bernoulli import BernoulliEncoder
    from gradbench.families.gaussian import GaussianEncoder
    from gradbench.target import ComposedTarget

    info = config.snapshot
    path = Path(info["file"])
    if sha256(path) != info["sha256"]:
        raise SnapshotError(f"{path} changed since the suite was loaded (sha256 differs); load the suite again")
    snap = load(path)
    entry = registry.MODELS[config.model]
    data = None
    if config.data:
        from gradbench.data import read_array_file

        data = read_array_file(Path(config.data))
    if config.data_spec is not None:
        from gradbench import data as datasets

        data, _ = datasets.load(datasets.DataSpec(**config.data_spec))
    torch_dtype = getattr(torch, dtype)
    base = entry.build(entry.params(**config.params), entry.proposal(), config.data_seed, torch_dtype, device, data)
    model = base.model
    missing = [k for k in base.theta if k not in snap["theta"]]
    if missing:
        raise SnapshotError(f"{path}: θ has no {', '.join(missing)} (model {config.model!r} cannot be restored from it)")
    theta = {k: snap["theta"][k].to(dtype=torch_dtype, device=device) for k in base.theta}
    for k, v in theta.items():
        if v.shape != base.theta[k].shape:
            raise SnapshotError(f"{path}: θ[{k}] has shape {tuple(v.shape)}, the model needs {tuple(base.theta[k].shape)}")
    enc, k_lat, d = snap["encoder"], model.latent.dim, base.x.shape[-1]
    family = (GaussianEncoder(k_lat, d, tuple(enc["hidden"])) if enc["family"] == "gaussian_encoder"
              else BernoulliEncoder(k_lat, d, enc["hidden"][0] if enc["hidden"] else None))
    phi = {k: v.to(dtype=torch_dtype, device=device) for k, v in snap["phi"].items()}
    return ComposedTarget(model, family, base.x, theta, phi, reference_builders=base.reference_builders,
                          seed=base.seed, provides=base.provides)
