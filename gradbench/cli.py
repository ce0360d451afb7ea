"""Command line: ``gradbench list | show | validate | run | report | compare | speed`` (docs/design.md §10).

Start-up is kept well under a second for ``--help``, ``--version``, ``list``, ``show`` and
``validate``: this module imports only click at import time; torch, pandas and scipy are imported
inside the commands that compute (``run``, ``report``, ``compare``, ``speed``), and the registry
holds torch-free parameter schemas with the estimators' code named by dotted path.

Every user-facing error is one line ``gradbench: error: …`` on stderr with exit code 2 (bad suite,
bad option, unusable folder); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

ERROR = "gradbench: error:"


class UserError(click.ClickException):
    """A one-line, user-facing error (exit code 2) that is not about a suite file's content."""

    exit_code = 2


class LazyGroup(click.Group):
    """A group whose heavy subcommands are imported only when invoked (``--help`` lists them
    from :data:`LAZY_COMMANDS` without importing torch)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            from gradbench.registry import resolve

            return resolve(LAZY_COMMANDS[name][0])
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


# name → (dotted path of the click command, short help shown by ``gradbench --help``)
LAZY_COMMANDS = {
    "report": ("gradbench.report.commands:report", "Render RUN_DIR's results as index.html, summary.md and figures."),
    "compare": ("gradbench.report.commands:compare",
                "Compare RUN_B against the baseline RUN_A; exit 1 on a significant regression."),
    "calibrate": ("gradbench.calibrate:calibrate_cmd",
                  "False-alarm rates, KS test and QQ plot of the bias test on estimators unbiased for their reference."),
    "speed": ("gradbench.speed.command:speed", "Time a suite's estimators against floors (a)/(b), Pyro and a one-pair loop."),
}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE, which registers models/estimators/protocols/families (repeatable; any command). "
                   "Installed plugins' entry points and a suite's plugins: are loaded too.")
@click.version_option(package_name="gradbench")
@click.pass_context
def cli(ctx: click.Context, debug: bool, plugins: tuple[str, ...]) -> None:
    """gradbench: benchmark Monte Carlo gradient estimators against exact gradients."""
    ctx.obj = {"debug": debug, "plugins": plugins}
    load_plugins(plugins)


def load_plugins(modules: tuple[str, ...] = ()) -> None:
    """Installed plugins' entry points and the ``--plugin`` modules; a failure is one line (exit 2)."""
    from gradbench import registry

    try:
        registry.load_entry_points()
        registry.load_plugin_modules(modules)
    except registry.PluginError as exc:
        raise UserError(f"--plugin: {exc}") from None


def cli_plugins() -> tuple[str, ...]:
    """The ``--plugin`` modules of this invocation (added to every cell's plugins, so Dask workers import them)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return tuple((root.obj or {}).get("plugins", ())) if root is not None else ()


# -- list / show --------------------------------------------------------------------------------
SECTIONS = ("models", "estimators", "protocols", "families", "kinds")
SINGULAR = {"models": "model", "estimators": "estimator", "protocols": "protocol", "families": "family",
            "kinds": "kind of cell"}


def _sections() -> dict[str, dict[str, Any]]:
    from gradbench import registry

    return {"models": registry.MODELS, "estimators": registry.ESTIMATORS, "protocols": registry.PROTOCOLS,
            "families": registry.FAMILIES, "kinds": registry.CELL_KINDS}


def describe(entry: Any) -> str:
    """An entry's description as printed (development notes such as issue numbers left out)."""
    import re

    return re.sub(r"\s*\(issue \d+\)|\bissues? \d+:\s*", "", entry.description).strip()


@cli.command("list")
@click.argument("what", type=click.Choice([*SECTIONS, "all"]), default="all")
@click.option("-v", "--verbose", is_flag=True, help="Also list every parameter: type, default, description.")
def list_cmd(what: str, verbose: bool) -> None:
    """List registered models, estimators, protocols, variational families and kinds of cell, one line each."""
    for name, entries in _sections().items():
        if what not in ("all", name):
            continue
        click.echo(f"{name}:")
        width = max(len(k) for k in entries)
        for key, entry in entries.items():
            click.echo(f"  {key:<{width}}  {describe(entry)}")
            if verbose:
                for line in param_lines(entry):
                    click.echo(f"  {'':<{width}}    {line}")
    if not verbose:
        click.echo("\n(`gradbench list -v` or `gradbench show NAME` for each parameter's type, default, description)")


@cli.command()
@click.argument("name")
def show(name: str) -> None:
    """Describe one model, estimator, protocol, family or kind of cell: capabilities, each parameter's type, default,
    description."""
    from gradbench import registry

    found = [(section, entries[name]) for section, entries in _sections().items() if name in entries]
    if not found:
        from gradbench.run.plan import did_you_mean

        known = [k for entries in _sections().values() for k in entries]
        raise UserError(f"no model, estimator, protocol, family or kind named {name!r}{did_you_mean(name, known)} "
                        "(see `gradbench list`)")
    for section, entry in found:
        click.echo(f"{name} ({SINGULAR[section]}): {describe(entry)}")
        if isinstance(entry, registry.Model):
            caps = entry.provides if not callable(entry.provides) else entry.capabilities({})
            click.echo(f"  provides: {', '.join(sorted(caps)) or 'nothing'}"
                       + (" (with the default proposal; depends on it)" if callable(entry.provides) else ""))
        elif isinstance(entry, registry.Estimator):
            defaults = entry.params().model_dump()
            objective = entry.objective(defaults).canonical()
            click.echo(f"  estimates: {objective}; requires: {', '.join(sorted(entry.required(defaults))) or 'nothing'}"
                       + (" (with the default parameters)" if callable(entry.requires) else "")
                       + ("; and iwae_reference with a protocol that uses the reference (bias, variance)"
                          if objective.kind == "iwae" else ""))
        elif isinstance(entry, registry.Family):
            users = ", ".join(entry.models) or "plugin models"
            click.echo(f"  class: {entry.impl}; capabilities: {', '.join(sorted(entry.capabilities))}")
            click.echo(f"  chosen by: proposal: {{family: {name}}} of {users} (its proposal parameters below)"
                       if "family" in entry.proposal.model_fields else f"  used by: {users} (proposal parameters below)")
        if name in registry.PLUGIN_MODULES:
            click.echo(f"  plugin: {registry.PLUGIN_MODULES[name]}")
        lines = param_lines(entry)
        none = ("  (no parameters of its own: its estimator's, `gradbench show ESTIMATOR`)"
                if isinstance(entry, registry.CellKind) and not entry.own_params else "  (no parameters)")
        click.echo("\n".join(f"  {line}" for line in lines) if lines else none)


def param_lines(entry: Any) -> list[str]:
    """``K: int = 8 (> 0) — importance samples per data point`` per parameter of a registry entry;
    a model's proposal parameters are listed after its own, prefixed ``proposal.``."""
    from gradbench import registry

    if isinstance(entry, registry.CellKind):
        schemas = [("", entry.params(entry.name))] if entry.own_params else []
    else:
        schemas = [("", getattr(entry, "params", None)), ("proposal.", getattr(entry, "proposal", None))]
    ops = ((">", "gt"), ("≥", "ge"), ("<", "lt"), ("≤", "le"))
    lines = []
    for prefix, schema in schemas:
        if schema is None:
            continue
        for field_name, info in schema.model_fields.items():
            default = "required" if info.is_required() else f"= {_default(info)}"
            bounds = [f"{op} {v}" for m in info.metadata for op, attr in ops
                      if (v := getattr(m, attr, None)) is not None]
            rng = f" ({', '.join(bounds)})" if bounds else ""
            text = f"{prefix}{field_name}: {_type_name(info.annotation)} {default}{rng} — {info.description or ''}"
            lines.append(text.rstrip(" —"))
    return lines


def _default(info: Any) -> str:
    """A field's default as a suite would write it (a ``default_factory`` called, not ``PydanticUndefined``)."""
    value = info.default_factory() if info.default_factory is not None else info.default
    return repr(value)


def _type_name(annotation: Any) -> str:
    """``int``, ``list[int]``, ``int | 'auto' | None``, ``'maximal' | 'common_uniform'`` (Literal values quoted)."""
    import types
    import typing

    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


# -- validate / run -----------------------------------------------------------------------------
@cli.command()
@click.argument("suite", type=click.Path(path_type=Path))
@click.option("--estimate", is_flag=True, help="Also probe each cell and reference briefly on this machine and "
                                                "print the run's rough cost in seconds (takes seconds to minutes).")
def validate(suite: Path, estimate: bool) -> None:
    """Check a suite file and print what it costs: cells, references to compute (with --estimate: rough seconds)."""
    from gradbench.run.cost import estimate_lines, plan_lines
    from gradbench.run.plan import load_suite

    spec, cells = load_suite(suite, check_device=estimate)
    targets = len({c.target.target_id for c in cells})
    click.echo(f"{suite}: ok — suite {spec.name!r}: {targets} target(s), {len(cells)} cell(s), "
               f"{spec.replicates} replicates each")
    for line in plan_lines(cells):
        click.echo(line)
    note = meeting_note(spec.protocols, [c.estimator for c in cells])
    if note:
        click.echo(f"note: {note}")
    if estimate:
        from gradbench.run.cost import probe

        for line in estimate_lines(probe(cells), spec.executor):
            click.echo(line)


def meeting_note(protocols: list[str] | tuple[str, ...], estimators: list[str]) -> str:
    """One sentence when the ``meeting`` protocol is asked of estimators without coupled chains."""
    from gradbench.terminal import COUPLED_PREFIX

    if "meeting" not in protocols:
        return ""
    plain = list(dict.fromkeys(e for e in estimators if not e.startswith(COUPLED_PREFIX)))
    if not plain:
        return ""
    return (f"the meeting protocol reports only coupled estimators; it is skipped for {', '.join(plain)} "
            "(no coupled chains, no meeting time)")


@cli.command()
@click.argument("suite", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: runs/<suite name>].")
@click.option("--device", help="Override the suite's device (cpu, cuda, cuda:N).")
@click.option("--replicates", type=int, help="Override the suite's replicates.")
@click.option("--seed", type=int, help="Override the suite's seed (the Monte Carlo noise; targets too unless "
                                       "the suite sets target_seed).")
@click.option("--target-seed", type=int, help="Override the suite's target_seed (the synthetic targets' parameters and "
                                              "data). Keep it, change --seed: a replication on the same targets.")
@click.option("--fresh", is_flag=True, help="Discard finished cells and start over.")
@click.option("--executor", type=click.Choice(["local", "dask"]),
              help="Where cells run [default: the suite's, else local].")
@click.option("--scheduler", help="Dask scheduler address (tcp://HOST:8786); without it, a LocalCluster.")
@click.option("--correction", type=click.Choice(["bh", "holm"]), default="bh", show_default=True,
              help="Multiple-testing correction that flags biases in the printed table (bh: Benjamini–Hochberg "
                   "q-values; holm: Holm-adjusted p-values; over the run's bias tests, one per cell).")
def run(suite: Path, out: Path | None, device: str | None, replicates: int | None, seed: int | None,
        target_seed: int | None, fresh: bool, executor: str | None, scheduler: str | None, correction: str) -> None:
    """Run a suite (resuming finished cells) and write results.parquet."""
    from gradbench.run.plan import load_suite

    flags = {"device": device, "replicates": replicates, "seed": seed, "target_seed": target_seed,
             "executor": executor, "scheduler": scheduler}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    spec, cells = load_suite(suite, overrides, check_device=True)
    if cli_plugins():  # Dask workers import a cell's plugins themselves
        import dataclasses

        cells = [dataclasses.replace(c, plugins=tuple(dict.fromkeys((*c.plugins, *cli_plugins())))) for c in cells]
    out = out or Path("runs") / spec.name
    check_out_folder(out, spec.name)

    from gradbench.run.runner import run_suite
    from gradbench.run.store import RunBusy
    from gradbench.terminal import CellProgress, format_run, kind_tables, run_warnings

    interactive = sys.stderr.isatty()
    lines = CellProgress(cells, out, lambda s: click.echo(s, err=True), spec, fresh) if not interactive else None
    t0 = time.perf_counter()
    try:
        summary = run_suite(spec, cells, out, fresh=fresh, progress=interactive, executor=_executor(spec),
                            on_cell=lines)
    except RunBusy as exc:
        click.echo(f"{ERROR} {exc}", err=True)
        sys.exit(3)
    if summary.interrupted:
        done = summary.ran + summary.skipped
        click.echo(f"gradbench: interrupted: {done} of {summary.total} cells are finished and saved in {out}; "
                   "run the same command again to resume", err=True)
        sys.exit(130)
    if spec.protocols:
        click.echo(format_run(summary.table, spec.protocols, spec, correction))
    own = kind_tables(out, [c.kind for c in cells])
    if own:
        click.echo(own if not spec.protocols else "\n" + own)
    note = meeting_note(spec.protocols, [c.estimator for c in cells])
    if note:
        click.echo(f"\nnote: {note}")
    click.echo(f"\n{summary.ran} cell(s) run, {summary.skipped} reused, {len(summary.failed)} failed, "
               f"{time.perf_counter() - t0:.1f} s; results: {out / 'results.parquet'}")
    for line in run_warnings(summary.table, spec):  # one per cell, named as in the tables
        click.echo(f"gradbench: warning: {line}", err=True)
    if summary.failed:
        for cell_id, message in summary.failed.items():
            click.echo(f"gradbench: cell {cell_id} failed: {message}", err=True)
        click.echo(f"gradbench: {len(summary.failed)} cell(s) failed (details in {out / 'cells'}/*.failed.json); "
                   "they are tried again by the next run", err=True)
        sys.exit(1)


def check_out_folder(out: Path, suite_name: str) -> None:
    """Refuse an ``--out`` that is a file, or a folder another suite's run owns (its ``run.json``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; give a folder (it is created if missing)")
    manifest = out / "run.json"
    if manifest.is_file():
        try:
            owner = json.loads(manifest.read_text()).get("suite")
        except (json.JSONDecodeError, AttributeError):
            owner = None
        if owner is not None and owner != suite_name:
            raise UserError(f"--out {out}: this folder holds a run of suite {owner!r}, not {suite_name!r}; "
                            f"choose another --out (default: runs/{suite_name})")


def _executor(spec: Any) -> Any:
    from gradbench.run.executors import DaskExecutor, LocalExecutor
    from gradbench.run.plan import SuiteError

    if spec.executor == "local":
        return LocalExecutor()
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SuiteError("executor 'dask' needs Dask: pip install 'gradbench[dask]'") from None
    return DaskExecutor(spec.scheduler)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="gradbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("gradbench: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
        click.echo(f"{ERROR} {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"{ERROR} {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        suite_module = sys.modules.get("gradbench.run.plan")
        if debug or suite_module is None or not isinstance(exc, suite_module.SuiteError):
            raise
        click.echo(f"{ERROR} {exc}", err=True)
        sys.exit(2)
