"""A protocol as one vertical: its computation and every place its rows are shown.

A :class:`ProtocolSpec` is what the registry lists for a protocol (``registry.Protocol`` is this class).
Besides the computation it carries, in one object:

* ``fn`` — ``(sample, reference, ctx) -> list[Row]``, the cell's rows; ``uses_reference``;
  ``min_replicates``; ``modules`` (extra source covered by cell ids);
* ``metrics`` — metric name → meaning, every metric its rows (and run-level rows) may hold;
* ``run_rows`` — ``table -> DataFrame``: rows computed over the whole run by ``store.collect``
  (e.g. the bias tests' multiplicity correction); a protocol with side tables gets them too,
  ``(table, {side name: the run's frame or None}) -> DataFrame`` (e.g. ``paired``'s tests on per-replicate data);
* ``side_tables`` — :class:`SideTable`: per-cell frames written next to the cell file and collected
  into one run file (e.g. the raw meeting times);
* ``terminal`` — ``(metrics, correction, alpha) -> TerminalTable | None``: what ``gradbench run`` prints;
* ``report_columns`` — :class:`ReportColumn`: its columns in the report's summary/cost/group tables;
  ``report_tables`` — ``run -> Table | None``: tables of its own (e.g. from a side table);
* ``rules`` — metric → :class:`Rule`: how ``gradbench compare`` tests a change; ``compare_tests`` — further
  tests of its own (e.g. Mann–Whitney U on the raw meeting times, superseding ``tau_mean``'s rule);
* ``figures`` — :class:`FigureSpec`: the report's figures.

Code may be given as a ``"module:attr"`` path (:func:`code`): it is imported on first use, so a spec
module imports nothing heavy (no numpy, pandas, torch, matplotlib) and the registry loads every spec
at start-up. A view a protocol lacks is an empty field, visible in its spec. Spec modules live next
to the computation (``bias.py`` / ``bias_spec.py``): a cell's id covers the computation's source, not
how its rows are shown, so editing a view does not invalidate finished cells.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MIN_REPLICATES = 10  # the usual ProtocolSpec.min_replicates (see there)
Metrics = dict[str, tuple[float, float]]  # metric -> (value, s.e.) of one terminal row


@dataclass(frozen=True)
class code:
    """A ``"package.module:attr.attr"`` path to code, imported on first use (:func:`resolve`)."""

    path: str

    @property
    def module(self) -> str:
        return self.path.partition(":")[0]


def resolve(impl: Any) -> Any:
    """The object a :class:`code` path (or a ``"module:attr"`` string) names, or ``impl`` itself."""
    path = impl.path if isinstance(impl, code) else impl if isinstance(impl, str) else None
    if path is None:
        return impl
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Rule:
    """How ``gradbench compare`` tests a change of one metric (:mod:`gradbench.report.compare`)."""

    kind: str  # "ratio" (log-ratio z) | "bias" (debiased squared relative bias) | "diff" (difference z)
    # | "log_diff" (difference z of log values, e.g. paired log ratios; the change shown and rtol: exp of it)
    worse: int  # +1: an increase is worse; -1: a decrease is worse


@dataclass(frozen=True)
class SideTable:
    """A per-cell frame besides the rows: written as ``cells/<cell_id>.<name>.parquet`` before the cell file,
    and concatenated over the run's cells into ``<file>`` by ``store.collect``. ``make(cell, sample)`` returns
    the frame or None; ``None`` here means the cell computes it itself (``train`` cells' curves)."""

    name: str
    file: str
    make: Callable[[Any, Any], Any] | code | None = None


@dataclass(frozen=True)
class TermColumn:
    """One column of a protocol's terminal table: ``show(metrics)`` is the cell text (None: no value)."""

    header: str
    show: Callable[[Metrics], str | None]
    metrics: tuple[str, ...]  # the metrics it reads


@dataclass(frozen=True)
class TerminalTable:
    """A protocol's table in ``gradbench run``'s output. ``per_group``: a row per parameter group (else group
    ``all`` only); ``text_last``: the last column is words (left-aligned); ``footer(rows)``: a line under the
    table from its rows ``(label, values, n_replicates)`` ("" for none)."""

    columns: list[TermColumn]
    note: str
    per_group: bool = False
    text_last: bool = False
    footer: Callable[[list[tuple[str, dict[str, float], Any]]], str] | None = None


@dataclass(frozen=True)
class ReportColumn:
    """A column of the report's per-cell tables (``table``: ``accuracy``, ``cost`` or ``group``), shown when the
    run has any of ``needs`` (default: the metric). ``kind`` picks the formatter (:mod:`gradbench.report.tables`):
    ``value`` (± s.e.), ``p``, ``adjusted_p`` (only the run's bias decision), ``bias``, ``verdict``, ``tail``,
    ``snr``, ``count``; ``loads``: further metrics the formatter reads. ``heavy_tail``: a variance-type value,
    shown with ``†`` and no s.e. in a cell whose variance may be infinite (``tail_index`` warning)."""

    table: str
    metric: str
    header: str
    kind: str = "value"
    needs: tuple[str, ...] = ()
    loads: tuple[str, ...] = ()
    heavy_tail: bool = False

    @property
    def shown_if(self) -> tuple[str, ...]:
        return self.needs or (self.metric,)


@dataclass(frozen=True)
class FigureSpec:
    """A report figure: ``draw(run) -> Figure | None`` (None: nothing to draw); ``caption`` a string or a
    function of the run. Both may be :class:`code` paths (figure code imports matplotlib)."""

    name: str  # file stem
    title: str
    caption: Any  # str | Callable[[RunData], str] | code
    draw: Any  # Callable[[RunData], Figure | None] | code

    def caption_for(self, run: Any) -> str:
        caption = resolve(self.caption) if isinstance(self.caption, code) else self.caption
        return caption(run) if callable(caption) else caption

    def drawer(self) -> Callable[[Any], Any]:
        return resolve(self.draw)


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ProtocolSpec:
    """One protocol: its computation and its views (see the module docstring). The first six fields are those
    of the registry's entries (a plugin's ``Protocol(name, fn, description, …)`` is a spec without views)."""

    name: str
    fn: Any  # Callable[[GradSample, Reference | None, ProtocolContext], list[Row]] or its "module:attr"
    description: str
    uses_reference: bool = True  # False: the runner need not compute (or estimate) a reference for it
    # fewest replicates whose rows mean anything: a standard error from R draws has R − 1 degrees of freedom,
    # and below 10 the normal-theory intervals and tests understate their width by > 15 % (t₉,₀.₉₇₅ = 2.26 vs 1.96)
    min_replicates: int = 1
    modules: tuple[str, ...] = ()  # modules whose source computes its rows besides fn's own (for cell ids)
    timed: bool = False  # its rows are wall-clock times: the cell never runs beside another cell (executors)
    metrics: Mapping[str, str] = field(default_factory=dict)  # metric -> meaning
    run_rows: Callable[[Any], Any] | code | None = None
    side_tables: tuple[SideTable, ...] = ()
    terminal: Callable[[set[str], str, float], TerminalTable | None] | code | None = None
    report_columns: tuple[ReportColumn, ...] = ()
    report_tables: tuple[Callable[[Any], Any] | code, ...] = ()
    rules: Mapping[str, Rule] = field(default_factory=dict)
    # (run_a, run_b, aligned) -> (rows, {(cell, metric) they supersede}): tests on side tables (e.g. raw τ)
    compare_tests: tuple[Callable[[Any, Any, Any], Any] | code, ...] = ()
    figures: tuple[FigureSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        object.__setattr__(self, "rules", _frozen(self.rules))

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        return resolve(value) if name == "fn" and isinstance(value, (str, code)) else value

    def module_of(self, field_name: str) -> str:
        """The module that defines a code field, without importing it."""
        value = object.__getattribute__(self, field_name)
        if isinstance(value, code):
            return value.module
        return value.partition(":")[0] if isinstance(value, str) else value.__module__

    def run_level_rows(self, table: Any, sides: Mapping[str, Any] | None = None) -> Any:
        """Its rows over the whole run's table (None when it has none); a protocol with side tables also gets
        the run's side-table frames by name (``sides``)."""
        if self.run_rows is None:
            return None
        if not self.side_tables:
            return resolve(self.run_rows)(table)
        sides = sides or {}
        return resolve(self.run_rows)(table, {t.name: sides.get(t.name) for t in self.side_tables})

    def terminal_table(self, metrics: set[str], correction: str, alpha: float) -> TerminalTable | None:
        return None if self.terminal is None else resolve(self.terminal)(metrics, correction, alpha)

    def views(self) -> dict[str, bool]:
        """Which views the protocol has (``gradbench list``-style overview; tests list them)."""
        return {"terminal": self.terminal is not None, "report_columns": bool(self.report_columns),
                "report_tables": bool(self.report_tables), "rules": bool(self.rules or self.compare_tests),
                "figures": bool(self.figures),
                "run_rows": self.run_rows is not None, "side_tables": bool(self.side_tables)}
