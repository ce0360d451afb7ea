"""Write a report folder: ``index.html`` (self-contained), ``summary.md`` and ``figures/*.png``.

``index.html`` embeds every figure as a base64 PNG and its CSS inline, so the one file opens
anywhere without network access; the same PNGs are also written beside it (``figures/``) for
``summary.md`` and for reuse. With ``embed=False`` (``--link-figures``) the page links the PNGs in
``figures/`` instead: half the size on disk (what the published examples in ``reports/`` use),
still viewable offline as long as the folder travels together.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

import gradbench
from gradbench.report.data import (
    CORRECTIONS,
    RunData,
    bias_decision,
    fmt_param,
    infinite_variance_cells,
    load_run,
    param_columns,
)
from gradbench.report.tables import Table, all_tables

DEFAULT_DPI = 200  # print quality; figures use ≥ 9 pt text at this size


@dataclass(frozen=True)
class RenderedFigure:
    name: str
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Report:
    out: Path
    run: RunData
    figures: list[RenderedFigure]
    tables: list[Table]
    embed: bool = True

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def render_report(run_dir: str | Path, out: str | Path | None = None, *, alpha: float | None = None,
                  dpi: int = DEFAULT_DPI, embed: bool = True, progress: bool = False, partial: bool = False,
                  correction: str = "bh") -> Report:
    """Render the report of the run in ``run_dir`` into ``out`` (default ``<run_dir>/report``: inside
    the run folder, never over the published examples in the tracked ``reports/``). ``partial``:
    report the finished cells of an incomplete run. ``correction``: the multiple-testing correction of the
    bias flags, ``bh`` (Benjamini–Hochberg q-values) or ``holm`` (Holm-adjusted p-values)."""
    import matplotlib.pyplot as plt

    from gradbench.report.figures import draw, figure_specs

    run = load_run(run_dir, alpha, partial=partial, correction=correction)
    out = Path(out) if out is not None else run.path / "report"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures: list[RenderedFigure] = []
    specs = figure_specs()
    steps = tqdm(total=len(specs) + 2, desc=f"report {run.suite}", unit="step", disable=not progress)
    with steps:
        for spec in specs:
            steps.set_postfix_str(spec.name)
            fig = draw(spec, run)
            if fig is not None:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
                plt.close(fig)
                png = compact_png(buf.getvalue())
                (out / "figures" / f"{spec.name}.png").write_bytes(png)
                caption = spec.caption_for(run)
                figures.append(RenderedFigure(spec.name, spec.title, caption, png))
            else:
                (out / "figures" / f"{spec.name}.png").unlink(missing_ok=True)  # stale from an earlier render
            steps.update()
        steps.set_postfix_str("tables")
        tables = all_tables(run)
        steps.update()
        steps.set_postfix_str("write")
        report = Report(out, run, figures, tables, embed)
        (out / "summary.md").write_text(to_markdown(report))
        (out / "index.html").write_text(to_html(report))
        steps.update()
    return report


def compact_png(png: bytes, colors: int = 256) -> bytes:
    """The same image with an adaptive palette of ``colors`` colours (no dithering): figures are
    flat colours and anti-aliased lines, so this keeps them visually identical at a third of the
    size. Returns the original when that is not smaller."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        q = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = io.BytesIO()
        q.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


# -- run facts ----------------------------------------------------------------------------------
def run_facts(run: RunData) -> list[tuple[str, str]]:
    r = run.results
    done = run.manifest.get("partial")
    cells = str(run.cells["cell_id"].nunique()) + (f" (partial: {done[0]} of {done[1]} finished)" if done else "")
    facts = [("suite", run.suite), ("cells", cells),
             ("estimators", ", ".join(dict.fromkeys(map(str, run.cells["estimator"])))),
             ("protocols", ", ".join(run.protocols)),
             ("parameter groups", ", ".join(run.param_groups))]
    if "n_replicates" in r:
        reps = sorted({int(x) for x in r["n_replicates"].dropna()})
        facts.append(("replicates per cell (finite)", ", ".join(map(str, reps))))
    for col, name in (("seed", "seed"), ("device", "device"), ("dtype", "dtype"),
                      ("gradbench_version", "gradbench (run)"), ("torch_version", "torch (run)")):
        if col in r:
            facts.append((name, ", ".join(dict.fromkeys(fmt_param(v) for v in r[col].dropna()))))
    if "started_at" in r and r["started_at"].notna().any():
        facts.append(("run started", f"{r['started_at'].min()} … {r['started_at'].max()}"))
    facts.append(("significance level α", f"{run.alpha:g}" + ("" if "alpha" in run.manifest else " (default)")))
    if run.has("bias_pvalue"):
        decision = bias_decision(run)
        names = {c.metric: f"{c.name} ({c.controls})" for c in CORRECTIONS.values()}
        facts.append(("bias flags", names.get(decision, "per-row p-value, no multiplicity correction")
                      + (" over the run's bias tests of parameter group 'all', one per cell" if decision in names else "")))
    return facts


def run_notes(run: RunData) -> list[str]:
    """Failed cells (run.json ``failed``: cell id → error) and the distinct non-empty per-cell
    ``warning`` strings of the results table, each with the cells it concerns."""
    notes = []
    failed = run.manifest.get("failed") or {}
    if isinstance(failed, dict):
        notes += [f"failed cell {cid}: {err}" for cid, err in failed.items()]
    if "warning" in run.results:
        w = run.results[["cell_id", "warning"]].dropna()
        w = w[w["warning"].astype(str).str.strip() != ""].drop_duplicates()
        labels = run.cells.set_index("cell_id")["label"]
        for text, grp in w.groupby("warning", sort=False):
            cells = ", ".join(str(labels.get(c, c)) for c in grp["cell_id"])
            notes.append(f"warning ({cells}): {text}")
    heavy = infinite_variance_cells(run)
    if heavy:
        labels = run.cells.set_index("cell_id")["label"]
        notes.append("variance may be infinite (the one-sided 95 % lower bound of the tail index is ≤ 2) for "
                     + ", ".join(str(labels.get(c, c)) for c in sorted(heavy))
                     + ": their variance-type values (tr Σ̂, mean var, MSE, tr Σ̂ × cost) are drawn as hollow markers "
                     "without error bars and shown with † and no standard error in the tables; they are not "
                     "reliable estimates.")
    return notes


def _symbol(column: str) -> str:
    """``model.data_dim`` → ``d (data_dim)`` using the registry's field description (``"d, dimension
    of x"``) when it starts with a short symbol; else the bare parameter name."""
    from gradbench import registry

    prefix, _, name = column.partition(".")
    for model in registry.MODELS.values():
        schema = model.params if prefix == "model" else model.proposal if prefix == "proposal" else None
        info = schema.model_fields.get(name) if schema is not None else None
        if info is not None and info.description and ", " in info.description:
            sym = info.description.split(", ", 1)[0]
            if len(sym) <= 3:
                return f"{sym} ({name})"
    return name


def problem_line(run: RunData) -> str:
    """``ppca: d=5, k=2, N=1, σ=1, δ=0.5, s=1.5`` per target (the problem, in one line each)."""
    cols = [c for c in param_columns(run.cells) if not c.startswith("estimator.")]
    lines = []
    for _, r in run.cells.drop_duplicates("target_id").iterrows():
        parts = [f"{_symbol(c).split(' (')[0]}={fmt_param(r[c])}" for c in cols if pd.notna(r[c])]
        lines.append(f"{r.get('model', '?')}: {', '.join(parts)}")
    return "; ".join(lines)


def targets_table(run: RunData) -> Table:
    """The problem: one row per target with every model and proposal parameter (symbol and name)."""
    from gradbench.report.tables import Cell

    cols = [c for c in param_columns(run.cells) if not c.startswith("estimator.")]
    cells = run.cells.drop_duplicates("target_id")
    n = len(cells)
    t = Table(f"Problem: {n} target{'s' if n > 1 else ''}", ["model"] + [_symbol(c) for c in cols] + ["target id"],
              text_columns=1, note="The model, its parameters and the proposal/encoder at which gradients are "
                                   "measured (target id: content hash, for files in targets/).")
    for _, r in cells.iterrows():
        t.rows.append([Cell(str(r.get("model", "")))] + [Cell(fmt_param(r[c]) if pd.notna(r[c]) else "—") for c in cols]
                      + [Cell(str(r["target_id"]))])
    return t


# -- markdown -----------------------------------------------------------------------------------
def to_markdown(report: Report) -> str:
    run = report.run
    lines = [f"# gradbench report: {run.suite}", "", f"**Problem.** {problem_line(run)}", "",
             f"Generated {_now()} by gradbench {gradbench.__version__} from `{run.path}`.", ""]
    lines += ["", targets_table(run).to_markdown()]
    lines += [f"- **{k}**: {v}" for k, v in run_facts(run)]
    notes = run_notes(run)
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Tables", ""]
    for t in report.tables:
        lines += [t.to_markdown()]
    if report.figures:
        lines += ["## Figures", ""]
        for f in report.figures:
            lines += [f"### {f.title}", "", f"![{f.title}](figures/{f.name}.png)", "", f.caption, ""]
    return "\n".join(lines)


# -- html ---------------------------------------------------------------------------------------
CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bad:#b2182b; --badbg:#fde0dd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1340px; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid var(--line);
padding-bottom: 4px; } h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: var(--muted); margin: 0 0 14px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; min-width: 0; }
nav ul { margin: 6px 0; padding-left: 20px; columns: 2; }
figure { margin: 14px 0 26px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; max-width: 900px; margin-top: 4px; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }  /* a wide table scrolls inside its box, the page never does */
table { border-collapse: collapse; font-size: 12.5px; font-variant-numeric: tabular-nums; margin: 4px 0 10px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px; text-align: right; white-space: nowrap; }
th { white-space: normal; min-width: 5em; vertical-align: bottom; }  /* long headers wrap, numbers do not */
th { background: #f6f8fa; position: sticky; top: 0; } td:first-child, th:first-child, .txt { text-align: left; }
tbody tr:hover { background: #f6f8fa; }
td.bad { color: var(--bad); background: var(--badbg); font-weight: 600; }
.note { color: var(--muted); font-size: 12.5px; margin: 2px 0 6px; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
ul.notes { color: var(--bad); margin: 10px 0; overflow-wrap: anywhere; }
p.problem { font-size: 15px; margin: 6px 0; } p.partial { color: var(--bad); font-weight: 600; }
"""


def to_html(report: Report) -> str:
    run = report.run
    esc = html.escape
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in run_facts(run))
    problem = targets_table(run)
    toc = [f'<li><a href="#problem">{esc(problem.title)}</a></li>']
    toc += [f'<li><a href="#fig-{f.name}">{esc(f.title)}</a></li>' for f in report.figures]
    toc += [f'<li><a href="#table-{i}">{esc(t.title)}</a></li>' for i, t in enumerate(report.tables)]
    notes = run_notes(run)
    notes = (f'<ul class="notes">{"".join(f"<li>{esc(n)}</li>" for n in notes)}</ul>' if notes else "")
    done = run.manifest.get("partial")
    partial = (f'<p class="partial">Partial report: the run is incomplete, {done[0]} of {done[1]} cells are '
               "finished; only those are shown.</p>" if done else "")
    figs = []
    for f in report.figures:
        src = (f"data:image/png;base64,{base64.b64encode(f.png).decode('ascii')}" if report.embed
               else f"figures/{f.name}.png")
        figs.append(f'<figure id="fig-{f.name}"><h3>{esc(f.title)}</h3>'
                    f'<img src="{src}" alt="{esc(f.title)}">'
                    f'<figcaption>{esc(f.caption)} <a href="figures/{f.name}.png">PNG</a></figcaption></figure>')
    if not figs:
        figs.append('<p class="note">This run has no metric any figure draws.</p>')
    tables = "".join(f'<section id="table-{i}">{t.to_html()}</section>' for i, t in enumerate(report.tables))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradbench report: {esc(run.suite)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>gradbench report: {esc(run.suite)}</h1>
<p class="problem"><b>Problem.</b> {esc(problem_line(run))}</p>
<p class="meta">Generated {esc(_now())} by gradbench {esc(gradbench.__version__)} · Monte Carlo gradient estimators
against the reference gradient · error bars and ± are one standard error.</p></header>
{partial}
<nav><ul>{''.join(toc)}</ul></nav>
<section id="problem">{problem.to_html()}</section>
<dl class="facts">{facts}</dl>
{notes}
<h2>Figures</h2>
{''.join(figs)}
<h2>Tables</h2>
{tables}
<footer>{"Self-contained: figures are embedded; the same PNGs are" if report.embed else "Figures are the PNGs"} in
<code>figures/</code>, the key tables in <code>summary.md</code>.
No network access is needed to view this page.</footer>
</body></html>
"""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
