"""`mor demo`: run the whole federation end to end on this machine and write a report."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click


@click.command(name="demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("mor-demo"),
    show_default=True,
    help="Folder for everything the demo builds, its logs (logs/STAGE.log) and "
    "the report (report.md, report.png); kept for inspection.",
)
@click.option(
    "--quick",
    is_flag=True,
    default=False,
    help="A smaller world, fewer training steps and a smaller evaluation (about 3 minutes on 2 cores).",
)
@click.option(
    "--fresh",
    is_flag=True,
    default=False,
    help="Rebuild every stage instead of reusing what an earlier run in --workdir built.",
)
def command(workdir: Path, quick: bool, fresh: bool) -> None:
    """Run a whole federation here, as separate processes over mutual TLS on 127.0.0.1, and report.

    Generates the benchmark world (3 clients); creates the CA and the coordinator certificate;
    each site makes its own key and CSR (`mor client init`) and the CA signs it; trains each
    site's reward model with DP (a dual-encoder on detail, a qwen2-vl VLM on medical, a
    dual-encoder on chart, at epsilon 2, 4, 8); warm-starts
    the policy; starts the agents, probes them, trains the router; runs GRPO with the MoR reward
    and a KL penalty; verifies the privacy ledger; writes WORKDIR/report.md and report.png.
    A second run reuses the stages already built with the same parameters (unless --fresh).
    A failure names the stage and shows the tail of its log.
    """
    from rich.console import Console

    from mor_secure.demo.pipeline import FULL, QUICK, Demo

    def stop(signum: int, frame: object) -> None:  # SIGTERM unwinds like Ctrl-C: the agents are stopped
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    console = Console()
    name = "quick" if quick else "full"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create --workdir {workdir}: {exc}; pick a writable folder") from None
    console.print(f"[bold]MoR-Secure demo ({name})[/bold] in {workdir.resolve()}")
    start = time.monotonic()
    report = Demo(workdir, QUICK if quick else FULL, console, name=name, fresh=fresh).run()
    console.print(report.read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(
        f"[bold green]demo finished in {time.monotonic() - start:.0f}s[/bold green]; "
        f"report: {report} (plot: {report.with_suffix('.png')})"
    )
