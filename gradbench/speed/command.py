"""``gradbench speed``: the click command around the speed library (:mod:`gradbench.speed`). Library errors
(:class:`~gradbench.speed.settings.SpeedError`) become one line naming the suite, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch

from gradbench.run.plan import SuiteError, load_suite
from gradbench.speed.comparisons import run_speed
from gradbench.speed.scaling import run_scaling, scaling_figure, scaling_markdown
from gradbench.speed.settings import SpeedError, SpeedSettings, plans


class SpeedCommandError(click.ClickException):
    """A library :class:`SpeedError`, located at the suite: one line ``gradbench: error: SUITE: …``, exit code 2."""

    exit_code = 2

@click.command("speed")
@click.argument("suite", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Folder for speed.json and speed.md [default: runs/<suite name>-speed].")
@click.option("--device", help="Override the suite's device (cpu, cuda, cuda:N).")
@click.option("--replicates", type=int, help="Override the suite's replicates (R).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), help="Override the suite's dtype (both sides of "
              "every comparison, Pyro included, run in it).")
@click.option("--threads", type=int, help="torch intra-op threads [default: torch's].")
@click.option("--repeats", type=int, default=SpeedSettings.repeats, show_default=True, help="Timed rounds per comparison.")
@click.option("--warmup", type=int, default=SpeedSettings.warmup, show_default=True, help="Untimed rounds first.")
@click.option("--loop", "loop", multiple=True, default=SpeedSettings.loop, show_default=True,
              help="Estimator also run one replicate (one coupled pair) at a time (repeatable).")
@click.option("--loop-repeats", type=int, default=SpeedSettings.loop_repeats, show_default=True)
@click.option("--no-peers", is_flag=True, help="Skip the Pyro comparison.")
@click.option("--no-loop", is_flag=True, help="Skip the one-pair-at-a-time loops.")
@click.option("--flops", is_flag=True, help="Also: FLOP/s of each estimator's gradient ÷ FLOP/s of one [n, n] matmul "
              "(same dtype and threads), interleaved round by round (MLP decoders: vae).")
@click.option("--matmul-n", type=click.IntRange(min=1), default=SpeedSettings.flops_matmul_n, show_default=True,
              help="n of the --flops reference matmul.")
@click.option("--scaling", is_flag=True, help="Instead: sweep R, K, data_dim, hidden, N around the first target; fit "
              "log-log slopes of seconds and peak memory; write scaling.{md,json,png}.")
def speed(suite: Path, out: Path | None, device: str | None, replicates: int | None, dtype: str | None, threads: int | None,
          repeats: int, warmup: int, loop: tuple[str, ...], loop_repeats: int, no_peers: bool, no_loop: bool,
          flops: bool, matmul_n: int, scaling: bool) -> None:
    """Time a suite's estimators against floors (a)/(b), Pyro and a one-pair loop; print the ratios.

    SUITE is an ordinary run suite with an iwae estimator (e.g. suites/speed.yaml, which `gradbench run` also
    accepts); every target is compared in turn in this one process; replicates are the R of every vectorised call.
    """
    try:
        _speed(suite, out, device, replicates, dtype, threads, repeats, warmup, loop, loop_repeats, no_peers, no_loop,
               flops, matmul_n, scaling)
    except SpeedError as exc:
        raise SpeedCommandError(f"{suite}: {exc}") from None


def _speed(suite: Path, out: Path | None, device: str | None, replicates: int | None, dtype: str | None,
           threads: int | None, repeats: int, warmup: int, loop: tuple[str, ...], loop_repeats: int, no_peers: bool,
           no_loop: bool, flops: bool, matmul_n: int, scaling: bool) -> None:
    """The command's body: measure, print each table as soon as it is measured, write the files."""
    flags = {"device": device, "replicates": replicates, "dtype": dtype}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    spec, cells = load_suite(suite, overrides)
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError(f"{suite}: device {spec.device!r} requested but no CUDA device is available; use --device cpu")
    settings = SpeedSettings(threads=threads, warmup=warmup, repeats=repeats, pyro=not no_peers,
                             loop=() if no_loop else tuple(loop), loop_repeats=loop_repeats, flops=flops,
                             flops_matmul_n=matmul_n)
    out = out or Path("runs") / f"{spec.name}-{'scaling' if scaling else 'speed'}"
    if scaling:
        result = run_scaling(plans(spec, cells, suite)[0], settings, progress=lambda s: click.echo(f"… {s}", err=True))
        md = scaling_markdown(result)
        click.echo(md)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "scaling.md").write_text(md + "\n")
        scaling_figure(result).savefig(out / "scaling.png", dpi=120)
        click.echo(f"\nwritten: {out / 'scaling.json'}, {out / 'scaling.md'}, {out / 'scaling.png'}")
        return
    reports = []
    for p in plans(spec, cells, suite):  # each target's table is printed as soon as it is measured
        reports.append(run_speed(p, settings, progress=lambda s: click.echo(f"… {s}", err=True)))
        click.echo(reports[-1].markdown() + "\n")
    md = "\n\n".join(r.markdown() for r in reports)
    out.mkdir(parents=True, exist_ok=True)
    data = reports[0].to_json() if len(reports) == 1 else {"suite": spec.name, "reports": [r.to_json() for r in reports]}
    (out / "speed.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "speed.md").write_text(md + "\n")
    click.echo(f"\nwritten: {out / 'speed.json'}, {out / 'speed.md'}")
