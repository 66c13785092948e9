"""`mor coordinator router`: train the Mixture-of-Rewards router from the live federation and print how
the fused reward compares with the baselines. torch is imported inside the command."""

from __future__ import annotations

import math
from pathlib import Path

import click

from coordinator.commands.options import config_option


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


@click.command("router")
@config_option("The coordinator.toml ([tls], [clients], [router], [pool], [ledger]).")
def router(config_path: Path) -> None:
    """Train the router on the labelled pairs of [router] data, with the sites' scores fetched once.

    Binds, waits for the allowed agents (their signed privacy reports go to the ledger), fetches
    each site's scores of every pair over mutual TLS (cached in [router] out/scores by data
    fingerprint, site and model sha256, so a re-run asks only sites whose model changed), fits the
    per-site calibration, embeds the prompts with the reference [router] policy, trains the router
    and saves the mixture (router + calibration) in [router] out/mixture. Prints held-out pairwise
    accuracy of the fused reward beside each baseline, and the mean routing weight per domain.
    With [router] defence = "agreement", sites no better than chance on the labelled pairs are left
    out of the router and the mixture, and a per-site trust report is printed and written to the ledger.
    """
    from rich.console import Console
    from rich.table import Table

    from coordinator.config import load_coordinator_config
    from coordinator.mixture.router_run import accuracy_rows, run_router
    from mor_secure.errors import MorError

    config = load_coordinator_config(config_path)
    try:
        report = run_router(config)
    except MorError:  # names its own cause (a missing file is one too): shown by the group
        raise
    except OSError as exc:
        raise click.ClickException(f"cannot bind {config.bind} or write {config.router.out}: {exc}") from None

    console = Console()
    if report["trust"]:
        trust = Table(title=f"Client trust ([router] defence = {report['defence']}; also in the ledger)")
        for column in ("site", "agreement", "lower bound", "pairs", "decision"):
            trust.add_column(column, justify="left" if column in ("site", "decision") else "right")
        for site, t in report["trust"].items():
            trust.add_row(
                site,
                _pct(t["agreement"]),
                _pct(t["lower_bound"]),
                str(t["pairs"]),
                "trusted" if t["trusted"] else "excluded",
            )
        console.print(trust)
    accuracy = Table(title=f"Held-out pairwise accuracy ({report['test_pairs']} pairs of {config.router.data})")
    accuracy.add_column("reward")
    accuracy.add_column("accuracy", justify="right")
    for name, value in accuracy_rows(report):
        accuracy.add_row(name, _pct(value))
    console.print(accuracy)
    weights = Table(title="Mean routing weight per domain (held-out prompts)")
    weights.add_column("domain")
    for site in report["sites"]:
        weights.add_column(site, justify="right")
    for domain, row in report["weights_by"].items():
        weights.add_row(domain, *(f"{row[site]:.2f}" for site in report["sites"]))
    console.print(weights)
    click.echo(f"mixture saved in {report['mixture']}; report in {config.router.out / 'report.json'}", err=True)
