"""`mor coordinator status`: the sites, their workers, last seen, certificate expiry, epsilon, failures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from pathlib import Path

import click

from coordinator.commands.options import config_option


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    return "now" if seconds < 10 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.0f} h ago"


def _expiry(when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    days = (when - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    text = f"{when:%Y-%m-%d} ({days:.0f} d)"
    return f"[red]{text}[/red]" if days < 7 else text


@click.command("status")
@config_option("The coordinator.toml (its ledger's folder holds the running service's status.json).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the status as JSON.")
def status(config_path: Path, as_json: bool) -> None:
    """Show the sites: workers, last seen, certificate expiry, reported epsilon, failures in the last hour.

    Reads status.json, which the running coordinator rewrites every few seconds, and the privacy
    ledger; works while the coordinator runs (live workers) and after it stopped (from the ledger).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from coordinator.config import load_coordinator_config
    from coordinator.federation.status import read_status

    config = load_coordinator_config(config_path)
    report = read_status(config)
    if as_json:
        out = dataclasses.asdict(report)
        for site in out["sites"]:
            site["cert_expires"] = site["cert_expires"].isoformat() if site["cert_expires"] else None
            if site["epsilon"] is not None and math.isinf(site["epsilon"]):
                site["epsilon"] = "inf"
        click.echo(json.dumps(out, indent=2))
        return
    now = time.time()
    state = (
        "[green]running[/green]"
        if report.running
        else "[yellow]not running[/yellow]"
        + (
            f" (last snapshot {_ago(now - report.snapshot_age_s, now)})"
            if report.snapshot_age_s is not None
            else " (no snapshot yet)"
        )
    )
    table = Table(title=f"Coordinator {escape(report.coordinator)}: {state}")
    for column in ("site", "workers", "last seen", "certificate expires", "epsilon", "items scored 1h", "failures 1h"):
        table.add_column(column)
    for site in report.sites:
        workers = ", ".join(w["worker_id"] + ("" if w["admitted"] else " (not admitted)") for w in site.workers)
        epsilon = "-" if site.epsilon is None else "inf (no DP)" if math.isinf(site.epsilon) else f"{site.epsilon:.3f}"
        failures = "; ".join(site.failures_last_hour[-3:])
        table.add_row(
            site.site + ("" if site.allowed else " (not allowed)"),
            escape(workers or "-"),
            _ago(site.last_seen, now),
            _expiry(site.cert_expires),
            epsilon,
            str(site.scored_last_hour),
            f"[red]{len(site.failures_last_hour)}[/red]: {escape(failures)}" if failures else "0",
        )
    Console(soft_wrap=True).print(table)
    click.echo("remaining budget: sites keep their lifetime budget locally (`mor client budget` at the site)")
