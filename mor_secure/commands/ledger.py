"""`mor ledger`: read and verify the coordinator's hash-chained privacy ledger (read-only)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import click

from mor_secure.cli import MorGroup

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(name="ledger", cls=MorGroup)
def group() -> None:
    """Show and verify the hash-chained privacy ledger.

    The coordinator appends every site's signed privacy report, scoring sessions and refused peers
    to a JSON-lines ledger in which each entry hashes the one before it. These commands never
    modify the file.
    """


def _fmt_epsilon(epsilon: float | None) -> str:
    if epsilon is None:
        return "-"
    return "inf (no DP)" if math.isinf(epsilon) else f"{epsilon:.4g}"


@group.command(short_help="Per-site summary: spent epsilon, reports, items scored, refusals.")
@click.argument("file", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object instead of a table.")
def show(file: Path, as_json: bool) -> None:
    """Per-site summary of ledger FILE: spent epsilon, delta, accountant, reports, items scored, refusals.

    The epsilon is the largest the site ever reported (the site composes its own lifetime budget,
    so it never goes down with later entries). The head hash printed last can be passed to
    `mor ledger verify --anchor` later to prove that no entry was cut from the end since. This reads
    without verifying: run `mor ledger verify` for that.
    """
    from rich.console import Console
    from rich.table import Table

    from mor_secure.ledger import read_entries, summarize

    entries = read_entries(file)
    sites = summarize(entries)
    head = entries[-1] if entries else None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "entries": len(entries),
                    "head": head.hash if head else None,
                    "sites": {name: row.to_dict() for name, row in sites.items()},
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"Privacy ledger {file.name}: {len(entries)} entries")
    for column in (
        "site",
        "spent epsilon",
        "delta",
        "accountant",
        "reports",
        "last report",
        "items scored",
        "refusals",
    ):
        table.add_column(column, justify="right" if column not in ("site", "accountant") else "left")
    for row in sites.values():
        table.add_row(
            row.site,
            _fmt_epsilon(row.epsilon),
            "-" if row.delta is None else f"{row.delta:.3g}",
            row.accountant or "-",
            str(row.reports),
            (row.last_report or "-")[:19],
            f"{row.items_scored} ({row.scoring_sessions} sessions)",
            str(row.refusals),
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(f"head: seq {head.seq} hash {head.hash}" if head else "the ledger is empty")


def _check_anchor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise click.BadParameter(
            "an anchor is an entry hash: 64 lower-case hex digits, as `mor ledger show` prints after 'head:'"
        )
    return value


@group.command(name="verify", short_help="Check the hash chain and every report signature against the CA.")
@click.argument("file", type=_FILE)
@click.option(
    "--ca",
    "ca",
    type=_FILE,
    required=True,
    help="The project CA certificate (ca.pem) that signed every site's certificate.",
)
@click.option(
    "--anchor",
    default=None,
    metavar="HASH",
    callback=_check_anchor,
    help="An entry hash noted earlier (`mor ledger show` prints the head); fail if the "
    "chain no longer contains it, which catches entries cut from the end.",
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    default=False,
    help="Accept a ledger without any coordinator checkpoint (written before ledgers were signed); "
    "such a chain can be recomputed after an edit, so this proves much less.",
)
def verify_command(file: Path, ca: Path, anchor: str | None, allow_unsigned: bool) -> None:
    """Check ledger FILE: seq continuity, the hash chain, every report and checkpoint signature against --ca.

    The coordinator signs the chain at checkpoints and keeps the last one in FILE.head: deleting,
    rewriting or reordering signed entries, or cutting the file back past its last checkpoint, fails.
    Exits 0 when intact; exits 1 naming the first bad entry (line, seq, what is wrong). A torn tail
    (bytes after the last newline, left by a crash) is reported but does not fail.
    """
    from mor_secure.ledger import verify

    result = verify(file, ca, anchor=anchor, require_signed=not allow_unsigned)
    if not result.ok:
        raise click.ClickException(
            f"ledger {file} is NOT intact: {result.problem} ({result.entries} entries before it verified); "
            "keep this copy as evidence and restore the ledger from a trusted backup"
        )
    click.echo(
        f"ok: {result.entries} entries, chain intact, {result.signatures} signatures valid "
        f"({result.checkpoints} coordinator checkpoints; {result.unsigned_tail} entries after the last)"
    )
    click.echo(f"head: {result.head}")
    if result.torn_bytes:
        click.echo(
            f"note: a torn last line ({result.torn_bytes} bytes, left by a crash) is not part of "
            "the chain; the coordinator moves it aside when it next opens the ledger"
        )
