"""`mor coordinator probe`: bind, wait for the allowed agents and health-check each one."""

from __future__ import annotations

import uuid
from pathlib import Path

import click

from coordinator.commands.options import config_option


@click.command()
@config_option("The coordinator.toml ([tls], bind, [clients]).")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="Seconds to wait for the allowed sites to connect before probing.",
)
def probe(config_path: Path, wait_s: float) -> None:
    """Bind, wait for the allowed agents, health-check each and print who answered and who was refused.

    One row per agent session (site, certificate fingerprint, status, round-trip latency), then
    the peers refused or dropped and why. Exits non-zero when fewer than [clients] quorum sites
    answered.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from coordinator.config import load_coordinator_config
    from coordinator.federation.pool import ClientPool
    from mor_secure.config import ConfigError
    from mor_secure.protocol import HealthRequest

    config = load_coordinator_config(config_path)
    if not config.clients.allow:
        raise ConfigError(
            f"{config_path}: [clients] allow is empty, so no site may join: list the "
            "site names (their certificates' mor://client/SITE)"
        )
    pool = ClientPool.from_config(config)
    allowed = sorted(config.clients.allow)
    try:
        endpoint = pool.start()
    except Exception as exc:
        raise click.ClickException(f"cannot bind {config.bind}: {exc}; pick a free address in `bind`") from None
    try:
        click.echo(f"listening on {endpoint}; waiting up to {wait_s:g}s for {', '.join(allowed)}", err=True)
        pool.wait_for(allowed, wait_s)
        result = pool.fanout(HealthRequest(request_id=uuid.uuid4().hex), sites=allowed)
        peers = {p.site: p for p in pool.peers()}
        refusals = pool.server.refusals()
    finally:
        pool.stop()

    console = Console()
    table = Table(title=f"Federation probe: coordinator {config.name}")
    for column in ("site", "certificate", "status", "latency ms", "worker", "address"):
        table.add_column(column)
    for site in allowed:
        peer = peers.get(site)
        if site in result.replies:
            status, latency = "[green]ok[/green]", f"{result.latency_s.get(site, 0.0) * 1000:.1f}"
        else:
            status, latency = f"[red]{escape(str(result.failures.get(site, 'not connected')))}[/red]", "-"
        table.add_row(
            site,
            peer.fingerprint[:23] + "..." if peer else "-",
            status,
            latency,
            peer.worker_id if peer else "-",
            peer.address if peer else "-",
        )
    console.print(table)
    if refusals:
        refused = Table(title="Refused or dropped peers")
        for column in ("address", "identity", "reason"):
            refused.add_column(column)
        for refusal in refusals:
            refused.add_row(refusal.address or "?", refusal.identity or "?", escape(refusal.reason))
        console.print(refused)
    answered = len(result.replies)
    if answered < config.clients.quorum:
        raise click.ClickException(
            f"only {answered} of the quorum {config.clients.quorum} sites answered: "
            "start the missing agents (`mor client serve`), check the refusals "
            "above, or lower [clients] quorum"
        )
    click.echo(f"{answered} of {len(allowed)} sites answered (quorum {config.clients.quorum})", err=True)
