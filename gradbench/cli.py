"""Command line: ``gradbench list | validate | run`` (DESIGN §6).

Bad suites exit with code 2 and one located line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from gradbench.suite import SuiteError, load_suite


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="gradbench")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """gradbench: benchmark Monte Carlo gradient estimators against exact gradients."""
    ctx.obj = {"debug": debug}


@cli.command("list")
@click.argument("what", type=click.Choice(["estimators", "models", "protocols", "all"]), default="all")
def list_cmd(what: str) -> None:
    """List registered estimators, models and protocols with one-line descriptions."""
    from gradbench import registry

    sections = {"models": registry.MODELS, "estimators": registry.ESTIMATORS, "protocols": registry.PROTOCOLS}
    for name, entries in sections.items():
        if what not in ("all", name):
            continue
        click.echo(f"{name}:")
        width = max(len(k) for k in entries)
        for key, entry in entries.items():
            click.echo(f"  {key:<{width}}  {entry.description}")


@cli.command()
@click.argument("suite", type=click.Path(path_type=Path))
def validate(suite: Path) -> None:
    """Check a suite file and print how many cells it expands to."""
    spec, cells = load_suite(suite)
    targets = len({c.target.target_id for c in cells})
    click.echo(f"{suite}: ok — suite {spec.name!r}: {targets} target(s), {len(cells)} cell(s), "
               f"{spec.replicates} replicates each")


@cli.command()
@click.argument("suite", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: runs/<suite name>].")
@click.option("--device", help="Override the suite's device (cpu, cuda, cuda:N).")
@click.option("--replicates", type=int, help="Override the suite's replicates.")
@click.option("--seed", type=int, help="Override the suite's seed.")
@click.option("--fresh", is_flag=True, help="Discard finished cells and start over.")
@click.option("--executor", type=click.Choice(["local", "dask"]), help="Where cells run [default: the suite's, else local].")
@click.option("--scheduler", help="Dask scheduler address (tcp://HOST:8786); without it, a LocalCluster.")
def run(suite: Path, out: Path | None, device: str | None, replicates: int | None, seed: int | None, fresh: bool,
        executor: str | None, scheduler: str | None) -> None:
    """Run a suite (resuming finished cells) and write results.parquet."""
    from gradbench.runner import RunBusy, run_suite

    flags = {"device": device, "replicates": replicates, "seed": seed, "executor": executor, "scheduler": scheduler}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    spec, cells = load_suite(suite, overrides, check_device=True)
    out = out or Path("runs") / spec.name
    t0 = time.perf_counter()
    try:
        summary = run_suite(spec, cells, out, fresh=fresh, progress=sys.stderr.isatty(), executor=_executor(spec))
    except RunBusy as exc:
        click.echo(f"gradbench: error: {exc}", err=True)
        sys.exit(3)
    if summary.interrupted:
        done = summary.ran + summary.skipped
        click.echo(f"gradbench: interrupted: {done} of {summary.total} cells are finished and saved in {out}; "
                   "run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(_summary_table(summary.table))
    click.echo(f"\n{summary.ran} cell(s) run, {summary.skipped} reused, {len(summary.failed)} failed, "
               f"{time.perf_counter() - t0:.1f} s; results: {out / 'results.parquet'}")
    if "warning" in summary.table.columns:
        for text in sorted(set(summary.table.warning) - {""}):
            click.echo(f"gradbench: warning: {text}", err=True)
    if summary.failed:
        for cell_id, message in summary.failed.items():
            click.echo(f"gradbench: cell {cell_id} failed: {message}", err=True)
        click.echo(f"gradbench: {len(summary.failed)} cell(s) failed (details in {out / 'cells'}/*.failed.json); "
                   "they are tried again by the next run", err=True)
        sys.exit(1)


def _fmt_param(v: Any) -> str:
    """3.0 → 3; strings (e.g. ``coupling=maximal``, ``k=auto``) and other values as they are."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _executor(spec: Any) -> Any:
    from gradbench.executors import DaskExecutor, LocalExecutor

    if spec.executor == "local":
        return LocalExecutor()
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SuiteError("executor 'dask' needs Dask: pip install 'gradbench[dask]'") from None
    return DaskExecutor(spec.scheduler)


def _summary_table(table: Any) -> str:
    """Per cell: relative bias ± s.e., bias p-value, trace of covariance ± s.e. (group 'all')."""
    import pandas as pd

    if table.empty:
        return "(no rows)"
    sub = table[table.param_group == "all"]
    est_cols = [c for c in table.columns if c.startswith("estimator.")]
    keys = ["target_id", "estimator", *est_cols]
    fmt = {"rel_bias": "rel_bias", "rel_bias_ci_low": "ci_low", "rel_bias_ci_high": "ci_high", "bias_pvalue": "p",
           "bias_qvalue": "q (BH, run)", "trace_cov": "trace_cov", "evals_mean": "evals"}
    out = []
    for key, grp in sub.groupby(keys, sort=False, dropna=False):
        rec = dict(zip(keys, key))
        params = ", ".join(f"{c.split('.', 1)[1]}={_fmt_param(rec[c])}"
                           for c in est_cols if pd.notna(rec[c]))
        line = {"target": rec["target_id"], "estimator": f"{rec['estimator']}({params})"}
        for metric, label in fmt.items():
            m = grp[grp.metric == metric]
            if m.empty:
                continue
            v, se = m.value.iloc[0], m.stderr.iloc[0]
            line[label] = f"{v:.3g}" if pd.isna(se) else f"{v:.3g} ± {se:.2g}"
        out.append(line)
    return pd.DataFrame(out).to_string(index=False)


@cli.command("calibrate")
@click.argument("suites", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--seeds", type=int, default=300, show_default=True, help="Independent targets and noise seeds per cell.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: runs/<first suite>-calibration].")
def calibrate_cmd(suites: tuple[Path, ...], seeds: int, out: Path | None) -> None:
    """False-alarm rates, KS test and QQ plot of the bias test on estimators unbiased for their reference."""
    from gradbench.calibrate import calibrate, format_summary

    loaded = [load_suite(s, check_device=True) for s in suites]
    out = out or Path("runs") / f"{loaded[0][0].name}-calibration"
    cells = [c for _, cs in loaded for c in cs]
    click.echo(format_summary(calibrate(cells, seeds, out, progress=sys.stderr.isatty())))
    click.echo(f"\noutputs: {out}/calibration_summary.csv, calibration_pvalues.parquet, calibration_qq.png")


# Commands defined beside their subsystems (they import their heavy dependencies lazily).
from gradbench.report.commands import compare, report  # noqa: E402
from gradbench.speed import speed  # noqa: E402

for _command in (report, compare, speed):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="gradbench", standalone_mode=False)
    except SuiteError as exc:
        if debug:
            raise
        click.echo(f"gradbench: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("gradbench: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
