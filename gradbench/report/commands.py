"""``gradbench report`` and ``gradbench compare`` (docs/design.md §10).

Both import matplotlib/seaborn/scipy lazily, inside the command, so ``gradbench list`` stays fast.
Exit codes: 0 success (compare: no significant regression), 1 compare found a significant
regression, 2 unreadable run folder, bad option value or runs that cannot be compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gradbench.report.format import DEFAULT_ALPHA


class ReportInputError(click.ClickException):
    exit_code = 2


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Report folder [default: RUN_DIR/report].")
@click.option("--alpha", type=float, help="Significance level for bias flags [default: run.json's alpha, else 0.01].")
@click.option("--dpi", type=click.IntRange(50, 600), default=200, show_default=True,
              help="Resolution of the PNG figures (200: print quality).")
@click.option("--link-figures", is_flag=True,
              help="Link figures/*.png from index.html instead of embedding them "
                   "(half the size; keep the folder together).")
@click.option("--partial", is_flag=True, help="Report the finished cells of an incomplete (interrupted) run.")
@click.option("--correction", type=click.Choice(["bh", "holm"]), default="bh", show_default=True,
              help="Multiple-testing correction of the bias flags over the run's bias tests (one per cell): "
                   "bh = Benjamini–Hochberg q-values (false discovery rate), holm = Holm (family-wise error).")
def report(run_dir: Path, out: Path | None, alpha: float | None, dpi: int, link_figures: bool, partial: bool,
           correction: str) -> None:
    """Render RUN_DIR's results as index.html (self-contained), summary.md and figures/*.png."""
    from gradbench.report.data import RunError
    from gradbench.report.render import render_report

    if out is not None and out.exists() and not out.is_dir():
        raise ReportInputError(f"-o {out}: is a file, not a folder; give a folder (it is created if missing)")
    try:
        rep = render_report(run_dir, out, alpha=alpha, dpi=dpi, embed=not link_figures, progress=sys.stderr.isatty(),
                            partial=partial, correction=correction)
    except RunError as exc:
        raise ReportInputError(str(exc)) from None
    done = rep.run.manifest.get("partial")
    note = f" (partial: {done[0]} of {done[1]} cells)" if done else ""
    click.echo(f"{len(rep.figures)} figure(s), {len(rep.tables)} table(s){note}; report: {rep.index}")


@click.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
              help="Family-wise significance level (Holm-corrected over all tests).")
@click.option("--rtol", type=float, default=0.0, show_default=True,
              help="Also require a relative change above this for ratio metrics to count as a regression.")
@click.option("--skip", multiple=True, help="Protocol or metric to leave out (repeatable), e.g. --skip wallclock.")
@click.option("--allow-different-targets", is_flag=True,
              help="Compare even when aligned targets hold different parameters/data (different seeds).")
@click.option("--all", "show_all", is_flag=True, help="Print every aligned metric, not only significant changes.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write the full comparison table here.")
def compare(run_a: Path, run_b: Path, alpha: float, rtol: float, skip: tuple[str, ...], allow_different_targets: bool,
            show_all: bool, csv_path: Path | None) -> None:
    """Compare RUN_B against the baseline RUN_A; exit 1 on a significant regression."""
    from gradbench.report.compare import compare_runs, format_comparison
    from gradbench.report.data import RunError

    try:
        result = compare_runs(run_a, run_b, alpha=alpha, rtol=rtol, skip=skip,
                              allow_different_targets=allow_different_targets)
    except RunError as exc:
        raise ReportInputError(str(exc)) from None
    click.echo(format_comparison(result, show_all=show_all))
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        result.table.drop(columns=["_cell"]).to_csv(csv_path, index=False)
    if len(result.regressions):
        sys.exit(1)
