"""`mor bench`: run the benchmarks of the source checkout (``python -m benchmarks.NAME``) with this interpreter.

The benchmarks package is not installed: it ships with the source checkout, found beside the editable
install of ``mor_secure``. Each runs as a subprocess in the checkout; options after the name pass through
to the module, and ``--out`` defaults to the checkout's benchmarks/results.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click

from mor_secure.cli import MorGroup

BENCHMARKS = {
    "transport": "transport",
    "dp-overhead": "dp_overhead",
    "mia": "mia_audit",
    "robustness": "robustness",
    "reward-overhead": "reward_overhead",
    "privacy-utility": "privacy_utility",
    "faults": "fault_injection",
    "robustness-policy": "robustness_policy",
    "abuse": "abuse",
}
"""Command name -> module of the checkout's benchmarks package."""

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
    """The module file of benchmark ``name`` in the checkout (``ClickException`` naming the fix if absent)."""
    script = checkout_root() / "benchmarks" / f"{BENCHMARKS[name]}.py"
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


def module_command(name: str) -> list[str]:
    """The command that runs benchmark ``name`` with this interpreter (in the checkout root)."""
    script_path(name)  # present, or a ClickException naming the fix
    return [sys.executable, "-m", f"benchmarks.{BENCHMARKS[name]}"]


def run_script(name: str, args: list[str], out: Path | None) -> int:
    """Run benchmark ``name`` with ``args`` (and ``--out``) in the checkout root; its exit status."""
    root = checkout_root()
    out = (out if out is not None else root / "benchmarks" / "results").resolve()
    if out.is_relative_to(root):  # the script runs in the checkout root: keep the recorded command short
        out = out.relative_to(root)
    command = [*module_command(name), *args, "--out", str(out)]
    click.echo(f"running: {' '.join(command)}", err=True)
    return subprocess.run(command, cwd=root).returncode


@click.group(name="bench", cls=MorGroup)
def group() -> None:
    """Run the benchmarks and write reports under benchmarks/results/.

    Each benchmark is a module of the source checkout's benchmarks package, run with this Python
    (`python -m benchmarks.MODULE`); its report (markdown + PNG, with the machine description and the
    exact command) lands in --out. Options after the benchmark's name pass through to the module:
    see `mor bench NAME --script-help`.
    """


@group.command(name="list")
def list_benchmarks() -> None:
    """List the benchmarks, their modules and the reports already written."""
    root = checkout_root()
    for name, module in BENCHMARKS.items():
        script = root / "benchmarks" / f"{module}.py"
        report = root / "benchmarks" / "results" / f"{module}.md"
        status = "missing from this checkout" if not script.is_file() else summary(script)
        click.echo(f"{name:<12} benchmarks.{module:<16} {status}")
        click.echo(f"{'':<12} report: {report.relative_to(root) if report.is_file() else '(not run yet)'}")


def _bench_command(name: str) -> click.Command:
    """`mor bench NAME [OPTIONS...]`: run one script, passing unknown options through."""

    @click.pass_context
    def run(ctx: click.Context, out: Path | None, script_help: bool) -> None:
        args = list(ctx.args)
        if script_help:
            ctx.exit(subprocess.run([*module_command(name), "--help"], cwd=checkout_root()).returncode)
        code = run_script(name, args, out)
        if code:
            raise click.ClickException(f"benchmark {name} failed (exit status {code}); its output above says why")

    help_text = (
        f"Run benchmarks.{BENCHMARKS[name]} and write its report.\n\n"
        "Every option not listed here passes through to the script (for example --quick where the "
        "script has it); --script-help lists them."
    )
    command = click.Command(
        name,
        callback=run,
        help=help_text,
        short_help=f"Run benchmarks.{BENCHMARKS[name]}.",
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
