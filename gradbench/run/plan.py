"""Suite files: YAML → validated :class:`Suite` → grid expansion → :class:`Cell` list.

Every problem with a suite raises :class:`SuiteError` whose message is one line naming the file,
the line and the key path, e.g. ``suites/x.yaml:14: estimators[2].params.K: must be > 0 (got -1)``.
YAML is read with PyYAML's safe loader only; validation is pydantic (strict: no silent casts).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gradbench import registry
from gradbench.run.cells import Cell, TargetConfig
from gradbench.seeding import content_hash
from gradbench.training.params import TRAIN

Loc = tuple[str | int, ...]


class SuiteError(Exception):
    """A located, one-line, user-facing error in a suite (exit code 2)."""


# -- schema ------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TargetEntry(_Strict):
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    proposal: dict[str, Any] = Field(default_factory=dict)
    data: str | dict[str, Any] | None = Field(
        None, description="a .npy/.csv/IDX file of data rows (relative to the suite), or {name: digits|fashion_mnist|synthetic, ...}")


class EstimatorEntry(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainArm(_Strict):
    """One arm of a training study: the θ-estimator, the φ-estimator (null: θ-only training of an energy-based model;
    omitted: reparam_elbo), an optional warm-up θ-estimator, and settings that override the block's."""

    theta: dict[str, Any] = Field(description="{name: θ-estimator, its params...}")
    phi: dict[str, Any] | None = Field(None, description="{name: φ-estimator, its params...}; null: no encoder")
    warmup: dict[str, Any] | None = Field(None, description="{name: θ-estimator, steps: n | evals: n, its params...}")
    settings: dict[str, Any] = Field(default_factory=dict, description="training settings of this arm (TrainParams)")


class TrainBlock(_Strict):
    """A training study (gradbench.training.loop): every arm × seed × settings grid on every target."""

    arms: list[TrainArm] = Field(min_length=1)
    seeds: int | list[int] = Field(0, description="training seeds (initialisation, minibatches, noise; shared by arms)")
    settings: dict[str, Any] = Field(default_factory=dict, description="training settings shared by the arms "
                                                                       "(TrainParams: budget, lr, batch_size, ...)")


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(0, ge=0, description="seeds the Monte Carlo noise (and the targets, unless target_seed is set)")
    target_seed: int | None = Field(None, ge=0, description="seeds the synthetic targets; default: seed")
    replicates: int | None = Field(None, gt=0, description="replicates per cell (required unless the suite is a train: block)")
    device: str = "cpu"
    dtype: Literal["float64", "float32"] = "float64"
    max_cells: int = Field(10_000, gt=0, description="refuse grids that expand past this many cells")
    executor: Literal["local", "dask"] = "local"
    plugins: list[str] = Field(default_factory=list, description="modules to import that register models/estimators/protocols")
    scheduler: str | None = Field(None, description="Dask scheduler address; none starts a LocalCluster")
    targets: list[TargetEntry] = Field(min_length=1)
    estimators: list[EstimatorEntry] = Field(default_factory=list, description="required unless train: is given")
    protocols: list[str] = Field(default_factory=list, description="required unless train: is given")
    train: TrainBlock | None = Field(None, description="a training study instead of estimators and protocols")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use cpu, cuda or cuda:N")
        return value


# -- loading -----------------------------------------------------------------------------------
def load_suite(
    path: str | Path, overrides: dict[str, Any] | None = None, *, check_device: bool = False
) -> tuple[Suite, list[Cell]]:
    """Read, validate and expand a suite file; ``overrides`` replace top-level keys (CLI flags).

    With ``check_device``, a CUDA device that this machine does not have is an error too.
    """
    path = Path(path)
    src = _SourceMap(path, overrides)
    raw = src.load()
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}:1: top level must be a mapping of keys (name, seed, replicates, ...), got {type(raw).__name__}")
    raw = {**raw, **(overrides or {})}
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(src.format_pydantic(exc, Suite)) from None
    try:
        registry.load_entry_points()
        registry.load_plugin_modules(suite.plugins)
    except registry.PluginError as exc:
        raise SuiteError(src.at(("plugins",), str(exc))) from None
    if check_device and suite.device != "cpu":
        import torch

        index = int(suite.device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise SuiteError(src.at(("device",), f"{suite.device!r} requested but this machine has "
                                                 f"{torch.cuda.device_count()} CUDA device(s); use --device cpu"))
    return suite, expand(suite, src)


def _form(suite: Suite, src: _SourceMap) -> tuple[str, list[tuple[str, dict[str, Any], Loc, Loc]], list[str], int]:
    """(cell kind, entries as (name, params, location, location of the params), protocols, replicates) of either
    form: estimators: + protocols: (``measure`` cells), or a train: block (``train`` cells: each arm one cell per seed
    and settings combination; no protocols, one replicate — the seeds are the replicates)."""
    if suite.train is None:
        for key in ("replicates", "estimators", "protocols"):
            if not getattr(suite, key):
                raise SuiteError(src.at((key,), f"missing required key {key!r}" if (key,) not in src.lines
                                        else "give at least one (or a train: block)"))
        training = "training is its own kind of cell: write a training study as a train: block (arms, seeds, settings)"
        for i, e in enumerate(suite.estimators):
            if e.name == TRAIN:
                raise SuiteError(src.at(("estimators", i, "name"), f"'train' is not an estimator; {training}"))
            _check_name(src, ("estimators", i, "name"), e.name, registry.ESTIMATORS, "estimator")
        for i, name in enumerate(suite.protocols):
            if name == TRAIN:
                raise SuiteError(src.at(("protocols", i), f"unknown protocol 'train'; {training}"))
        entries = [(e.name, e.params, ("estimators", i), ("estimators", i, "params")) for i, e in enumerate(suite.estimators)]
        return "measure", entries, list(suite.protocols), int(suite.replicates or 0)
    for key in ("estimators", "protocols"):
        if (key,) in src.lines:
            raise SuiteError(src.at((key,), f"a suite with a train: block has no {key}: (the block's arms are its cells)"))
    return "train", [(TRAIN, train_arm_params(src, suite.train, i), ("train", "arms", i), ("train", "arms", i))
                     for i in range(len(suite.train.arms))], [], 1


def train_arm_params(src: _SourceMap, block: TrainBlock, i: int) -> dict[str, Any]:
    """The parameters of arm i's ``train`` cells (gradbench.training.params.TrainParams; list values are grids)."""
    arm, loc = block.arms[i], ("train", "arms", i)
    params: dict[str, Any] = {"train_seed": block.seeds, **block.settings, **arm.settings}

    def named(part: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        rest = dict(spec)
        name = rest.pop("name", None)
        if not isinstance(name, str):
            raise SuiteError(src.at(loc + (part,), "missing required key 'name' (the estimator)"))
        return name, rest

    params["theta_estimator"], params["theta_params"] = named("theta", arm.theta)
    if "phi" in arm.model_fields_set:
        params["phi_estimator"], params["phi_params"] = named("phi", arm.phi) if arm.phi is not None else (None, {})
    if arm.warmup is not None:
        name, rest = named("warmup", arm.warmup)
        lengths = [k for k in ("steps", "evals") if k in rest]
        if len(lengths) != 1:
            raise SuiteError(src.at(loc + ("warmup",), "give the warm-up's length as exactly one of steps: n or evals: n"))
        params.update(warmup_theta_estimator=name, warmup_budget=lengths[0], warmup_value=float(rest.pop(lengths[0])),
                      warmup_theta_params=rest)
    return params


def expand(suite: Suite, src: _SourceMap) -> list[Cell]:
    kind, entries, suite.protocols, suite.replicates = _form(suite, src)  # a train: block's (no) protocols, 1 replicate
    cell_kind = registry.CELL_KINDS[kind]
    for i, name in enumerate(suite.protocols):
        _check_name(src, ("protocols", i), name, registry.PROTOCOLS, "protocol")
    if len(set(suite.protocols)) != len(suite.protocols):
        raise SuiteError(src.at(("protocols",), "a protocol is listed twice"))
    targets: list[TargetConfig] = []
    target_locs: list[int] = []
    for i, t in enumerate(suite.targets):
        entry = registry.MODELS.get(t.model)
        _check_name(src, ("targets", i, "model"), t.model, registry.MODELS, "model")
        data_path, data_sha, data_spec = None, None, None
        if isinstance(t.data, dict):
            data_spec = _data_spec(src, ("targets", i, "data"), t.data)
            if data_spec.get("name") == "synthetic":
                data_spec = None
        elif t.data is not None:
            p = (src.path.parent / t.data).resolve()
            if not p.is_file():
                raise SuiteError(src.at(("targets", i, "data"), f"data file {t.data!r} not found (looked in {p.parent})"))
            data_path, data_sha = str(p), hashlib.sha256(p.read_bytes()).hexdigest()
        target_seed = suite.seed if suite.target_seed is None else suite.target_seed
        if "checkpoint" in t.params:
            found = snapshot_targets(src, i, t, (data_path, data_sha, data_spec), target_seed, suite.seed)
            targets += found
            target_locs += [i] * len(found)
            continue
        params = _grid(src, ("targets", i, "params"), t.params, entry.params)
        proposals = _grid(src, ("targets", i, "proposal"), t.proposal, entry.proposal)
        targets += [TargetConfig(t.model, a, b, data_path, data_sha, target_seed, suite.seed, data_spec)
                    for a in params for b in proposals]
        target_locs += [i] * (len(params) * len(proposals))

    estimators: list[tuple[str, dict[str, Any]]] = []
    estimator_locs: list[Loc] = []
    seen: dict[str, Loc] = {}
    for e_name, e_params, loc, params_loc in entries:
        key = content_hash([e_name, e_params])
        if key in seen:
            raise SuiteError(src.at(loc, f"duplicate of {_format_loc(seen[key])} ({e_name} with the same params)"))
        seen[key] = loc
        grid = _grid(src, params_loc, e_params, cell_kind.params(e_name))
        estimators += [(e_name, p) for p in grid]
        estimator_locs += [loc] * len(grid)
    _check_capabilities(src, targets, target_locs, estimators, estimator_locs, suite.protocols, cell_kind)

    needed = {name: registry.PROTOCOLS[name].min_replicates for name in suite.protocols}
    short = {name: n for name, n in needed.items() if suite.replicates < n}
    if short:
        raise SuiteError(src.at(("replicates",), f"{suite.replicates} is too few for protocol(s) "
                                f"{', '.join(f'{k} (needs ≥ {v})' for k, v in short.items())}: a standard error "
                                f"from R replicates has R − 1 degrees of freedom"))
    n_cells = len(targets) * len(estimators)
    if n_cells > suite.max_cells:
        raise SuiteError(src.at((), f"the grids expand to {n_cells} cells, more than max_cells = {suite.max_cells}; "
                                    "set max_cells higher in the suite to allow it"))
    plugins = tuple(suite.plugins)

    def code(target: TargetConfig, estimator: str, params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        return (("gradbench", _gradbench_version()),
                *registry.cell_code(target.model, estimator, params, suite.protocols, kind))

    return [
        Cell(t, name, params, tuple(suite.protocols), suite.replicates, suite.device, suite.dtype, plugins,
             code(t, name, params), kind)
        for t in targets
        for name, params in estimators
    ]


def snapshot_targets(src: _SourceMap, i: int, t: TargetEntry, data: tuple[str | None, str | None, dict[str, Any] | None],
                     target_seed: int, suite_seed: int) -> list[TargetConfig]:
    """The targets of ``targets[i]`` with ``params: {checkpoint: PATH, step: N | [N, ...]}`` (gradbench.training.snapshots): one
    per step, at the saved θ and encoder φ, with the architecture (and, unless ``data:`` is given, the data) of the
    training cell. PATH is relative to the suite file. Explicit parameters that disagree with the snapshot, a
    ``proposal:`` block, a missing folder or step: one located line."""
    from gradbench.training import snapshots

    loc: Loc = ("targets", i, "params")
    rest = dict(t.params)
    raw_path = rest.pop("checkpoint")
    if "step" not in rest:
        raise SuiteError(src.at(loc, "a checkpoint target needs step: N (or a list of steps)"))
    steps = rest.pop("step")
    steps = steps if isinstance(steps, list) else [steps]
    if not steps or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
        raise SuiteError(src.at(loc + ("step",), f"steps are integers ≥ 0 (got {t.params['step']!r})"))
    if len(set(steps)) != len(steps):
        raise SuiteError(src.at(loc + ("step",), f"a step is listed twice (got {steps})"))
    if not isinstance(raw_path, str):
        raise SuiteError(src.at(loc + ("checkpoint",), f"give the snapshot folder as a path (got {raw_path!r})"))
    if t.proposal:
        raise SuiteError(src.at(("targets", i, "proposal"), "a checkpoint target's proposal is the trained encoder saved "
                                                            "in the snapshot; remove proposal:"))
    path = (src.path.parent / raw_path).resolve()
    out: list[TargetConfig] = []
    for step in steps:
        try:
            file = snapshots.locate(path, step)
            snap = snapshots.load(file)
        except snapshots.SnapshotError as exc:
            raise SuiteError(src.at(loc + ("checkpoint",), str(exc))) from None
        saved = snap["target"]
        if saved["model"] != t.model:
            raise SuiteError(src.at(("targets", i, "model"), f"the snapshot {file} is of model {saved['model']!r}, "
                                                             f"not {t.model!r}"))
        for key, value in rest.items():
            if key not in saved["params"]:
                raise SuiteError(src.at(loc + (key,), f"unknown parameter {key!r} of model {t.model!r}"))
            if value != saved["params"][key]:
                raise SuiteError(src.at(loc + (key,), f"{value!r} conflicts with the snapshot's {saved['params'][key]!r} "
                                                      "(the architecture comes from the snapshot; remove it)"))
        data_path, data_sha, data_spec = data if t.data is not None else (saved["data"], saved["data_sha256"],
                                                                          saved["data_spec"])
        provenance = {"file": str(file), "run": str(file.parent.parent.parent), "cell_id": snap["cell_id"],
                      "step": step, "sha256": snapshots.sha256(file)}
        out.append(TargetConfig(t.model, saved["params"], snapshots.proposal_of(snap), data_path, data_sha, target_seed,
                                suite_seed, data_spec, provenance))
    return out


def _gradbench_version() -> str:
    import gradbench

    return gradbench.__version__


def _data_spec(src: _SourceMap, loc: Loc, raw: dict[str, Any]) -> dict[str, Any]:
    from gradbench import data as datasets

    try:
        spec = datasets.DataSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        sub = loc + tuple(err["loc"][:1])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            raise SuiteError(src.at(sub, f"unknown key {key!r}{_did_you_mean(key, datasets.DataSpec.model_fields)}")) from None
        raise SuiteError(src.at(sub, _message(err))) from None
    if spec.name == "synthetic":
        return spec.model_dump()
    try:
        if spec.path is not None:
            spec = spec.model_copy(update={"path": str((src.path.parent / spec.path).resolve())})
        datasets.load(spec, grey=True)  # fail here, with the location, not later in a cell (no binarisation draw)
    except datasets.DataError as exc:
        raise SuiteError(src.at(loc, str(exc))) from None
    return spec.model_dump()


def _check_capabilities(src: _SourceMap, targets: list[TargetConfig], target_locs: list[int],
                        estimators: list[tuple[str, dict[str, Any]]], estimator_locs: list[Loc],
                        protocols: list[str] | tuple[str, ...], kind: registry.CellKind) -> None:
    """Refuse an estimator (a training arm: its estimators) on a target that lacks a capability it requires (before
    any cell runs)."""
    for t, ti in zip(targets, target_locs):
        provides = registry.MODELS[t.model].capabilities(t.proposal)
        for (name, params), ei in zip(estimators, estimator_locs):
            missing = sorted(kind.needs(name, params, tuple(protocols)) - provides)
            if missing:
                family = t.proposal.get("family")
                what = f"model {t.model!r}" + (f" with family {family!r}" if family else "")
                raise SuiteError(src.at(ei + ("name",),
                                        f"estimator {name!r} needs {', '.join(missing)}, which targets[{ti}] ({what}) does not "
                                        f"provide (it provides: {', '.join(sorted(provides)) or 'nothing'})"))


def _grid(src: _SourceMap, loc: Loc, params: dict[str, Any], model: type[BaseModel]) -> list[dict[str, Any]]:
    """Cartesian product over list-valued params, each combination validated by ``model``."""
    fields = model.model_fields
    for key in params:
        if key not in fields:
            raise SuiteError(src.at(loc + (key,), f"unknown parameter {key!r}{_did_you_mean(key, fields)}"
                                                  f" (known: {', '.join(fields) or 'none'})"))
    axes = {k: (v if isinstance(v, list) and not _is_single_list_value(fields[k].annotation, v) else [v])
            for k, v in params.items()}
    for k, v in axes.items():
        if not v:
            raise SuiteError(src.at(loc + (k,), "empty grid: give at least one value"))
    combos = []
    for picks in itertools.product(*(list(enumerate(v)) for v in axes.values())):
        combo = {k: val for k, (_, val) in zip(axes, picks)}
        try:
            validated = model.model_validate(combo)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = err["loc"][0] if err["loc"] else None
            sub = loc + ((key,) if key is not None else ())
            if isinstance(key, str) and isinstance(params.get(key), list):
                sub += (dict(zip(axes, picks))[key][0],)
            raise SuiteError(src.at(sub, _message(err))) from None
        combos.append(validated.model_dump())
    return combos


def _is_single_list_value(annotation: Any, value: list[Any]) -> bool:
    """A list-typed parameter (e.g. ``hidden: [200, 200]``) given a flat list is one value; a list of lists is a grid."""
    types = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType) \
        else (annotation,)
    takes_list = any(typing.get_origin(t) in (list, tuple) or t in (list, tuple) for t in types)
    return takes_list and not any(isinstance(v, list) for v in value)


def _check_name(src: _SourceMap, loc: Loc, name: str, known: dict[str, Any], what: str) -> None:
    if name not in known:
        raise SuiteError(src.at(loc, f"unknown {what} {name!r}{_did_you_mean(name, known)} (see `gradbench list`)"))


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    """``; did you mean 'ppca'?`` for the closest option, ignoring case (``PPCA`` → ``ppca``)."""
    by_lower = {str(o).lower(): str(o) for o in options}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


did_you_mean = _did_you_mean


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "missing":
        return f"missing required key {err['loc'][-1]!r}"
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    return f"{msg} (got {err['input']!r})" if "input" in err else msg


def _format_loc(loc: Loc) -> str:
    """``targets[0].params.latent_dim``; a key that is not one printable word is quoted (``params['\\n']``), so the
    location stays on its one line."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (isinstance(part, str) and part.isprintable() and part.split() == [part]):
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


class _SourceMap:
    """The suite file's text, parsed once into data and once into nodes that remember lines."""

    def __init__(self, path: Path, flags: dict[str, Any] | None = None) -> None:
        self.path = path
        self.lines: dict[Loc, int] = {}
        self.flags = flags or {}  # top-level keys set by command-line flags: errors there blame the flag

    def load(self) -> Any:
        if not self.path.is_file():
            raise SuiteError(f"{self.path}: no such suite file")
        try:
            text = self.path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SuiteError(f"{self.path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
            if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
                problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
            raise SuiteError(f"{self.path}:{line}: YAML syntax error: {problem}") from None
        except yaml.YAMLError as exc:
            raise SuiteError(f"{self.path}:1: YAML error: {' '.join(str(exc).split())}") from None
        if node is not None:
            self._index(node, ())
        return data

    def _index(self, node: yaml.Node, loc: Loc) -> None:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = loc + (key.value,)
                self.lines[sub] = key.start_mark.line + 1
                self._index(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, loc + (i,))

    def line(self, loc: Loc) -> int:
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return self.lines.get(loc, 1)

    def at(self, loc: Loc, message: str) -> str:
        if loc and loc[0] in self.flags:  # the value came from the command line, not from the file
            flag = "--" + str(loc[0]).replace("_", "-")
            return f"{flag} {self.flags[loc[0]]}: {message}"
        return f"{self.path}:{self.line(loc)}: {_format_loc(loc)}: {message}"

    def format_pydantic(self, exc: ValidationError, model: type[BaseModel]) -> str:
        # an unknown key first: a misspelt `replicate:` also makes `replicates` "missing"
        errors = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden", self.line(tuple(e["loc"]))))
        err = errors[0]
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            return self.at(loc, f"unknown key {loc[-1]!r}{_did_you_mean(str(loc[-1]), known)} (known: {', '.join(known)})")
        return self.at(loc, _message(err))


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the pydantic model that validates the mapping at ``loc``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            current = typing.get_args(current)[0] if typing.get_args(current) else current
        elif isinstance(current, type) and issubclass(current, BaseModel):
            current = current.model_fields[part].annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []
