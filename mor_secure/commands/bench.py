"""`mor bench`: run the benchmark scripts of the source checkout (benchmarks/*.py) with this interpreter.

The benchmarks are not an installed package: they ship with the source checkout, found beside the
editable install of ``mor_secure``. Each runs as a subprocess; options after the name pass through
to the script, and ``--out`` defaults to the checkout's benchmarks/results.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click

from mor_secure.cli import MorGroup

BENCHMARKS = {
    "transport": "transport.py",
    "dp-overhead": "dp_overhead.py",
    "mia": "mia_audit.py",
    "robustness": "robustness.py",
    "reward-overhead": "reward_overhead.py",
    "privacy-utility": "privacy_utility.py",
    "faults": "fault_injection.py",
    "robustness-policy": "robustness_policy.py",
    "abuse": "abuse.py",
}
"""Command name -> script in the checkout's benchmarks/ folder."""

NO_CHECKOUT = (
    "benchmarks ship with the source checkout; run from a clone (git clone the project, then "
    "`pip install -e .` in it) so that mor_secure is imported from the folder holding benchmarks/"
)


def checkout_root() -> Path:
    """The source checkout the running ``mor_secure`` was imported from (one with a benchmarks/ folder)."""
    import mor_secure

    root = Path(mor_secure.__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir() or not (root / "pyproject.toml").is_file():
        raise click.ClickException(f"no benchmarks/ folder beside {root / 'mor_secure'}: {NO_CHECKOUT}")
    return root


def script_path(name: str) -> Path:
    """The script of benchmark ``name`` in the checkout (``ClickException`` naming the fix if absent)."""
    script = checkout_root() / "benchmarks" / BENCHMARKS[name]
    if not script.is_file():
        raise click.ClickException(
            f"{script} is missing from this checkout: update the clone (git pull), "
            f"or run `mor bench list` for the benchmarks present"
        )
    return script


def summary(script: Path) -> str:
    """First line of the script's docstring, read without running or importing it."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return "(unreadable)"
    return (doc or "").strip().splitlines()[0] if doc else ""


def run_script(name: str, args: list[str], out: Path | None) -> int:
    """Run benchmark ``name`` with ``args`` (and ``--out``) in the checkout root; its exit status."""
    script = script_path(name)
    root = script.parent.parent
    out = (out if out is not None else root / "benchmarks" / "results").resolve()
    if out.is_relative_to(root):  # the script runs in the checkout root: keep the recorded command short
        out = out.relative_to(root)
    command = [sys.executable, str(script.relative_to(root)), *args, "--out", str(out)]
    click.echo(f"running: {' '.join(command)}", err=True)
    return subprocess.run(command, cwd=root).returncode


@click.group(name="bench", cls=MorGroup)
def group() -> None:
    """Run the benchmarks and write reports under benchmarks/results/.

    Each benchmark is a script in the source checkout's benchmarks/ folder, run with this Python;
    its report (markdown + PNG, with the machine description and the exact command) lands in
    --out. Options after the benchmark's name pass through to the script: see
    `mor bench NAME --script-help`.
    """


@group.command(name="list")
def list_benchmarks() -> None:
    """List the benchmarks, their scripts and the reports already written."""
    root = checkout_root()
    for name, filename in BENCHMARKS.items():
        script = root / "benchmarks" / filename
        report = root / "benchmarks" / "results" / f"{script.stem}.md"
        status = "missing from this checkout" if not script.is_file() else summary(script)
        click.echo(f"{name:<12} benchmarks/{filename:<16} {status}")
        click.echo(f"{'':<12} report: {report.relative_to(root) if report.is_file() else '(not run yet)'}")


def _bench_command(name: str) -> click.Command:
    """`mor bench NAME [OPTIONS...]`: run one script, passing unknown options through."""

    @click.pass_context
    def run(ctx: click.Context, out: Path | None, script_help: bool) -> None:
        args = list(ctx.args)
        if script_help:
            ctx.exit(subprocess.run([sys.executable, str(script_path(name)), "--help"]).returncode)
        code = run_script(name, args, out)
        if code:
            raise click.ClickException(f"benchmark {name} failed (exit status {code}); its output above says why")

    help_text = (
        f"Run benchmarks/{BENCHMARKS[name]} and write its report.\n\n"
        "Every option not listed here passes through to the script (for example --quick where the "
        "script has it); --script-help lists them."
    )
    command = click.Command(
        name,
        callback=run,
        help=help_text,
        short_help=f"Run benchmarks/{BENCHMARKS[name]}.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        params=[
            click.Option(
                ["--out"],
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="Folder of the report (default: benchmarks/results of the checkout).",
            ),
            click.Option(["--script-help"], is_flag=True, help="Show the script's own options and exit."),
        ],
    )
    return command


for _name in BENCHMARKS:
    group.add_command(_bench_command(_name))
