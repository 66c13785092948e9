"""`mor client`: the commands of a site (serving scores to the coordinator)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from mor_secure.cli import MorGroup

CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The site's client.toml ([tls], [coordinator], ...).",
)


@click.group(name="client", cls=MorGroup)
def group() -> None:
    """The agent installed at a site: train a DP reward model, serve scores.

    The agent dials out to the coordinator (the site opens no inbound port), proves its identity
    with mutual TLS 1.3 and answers requests until stopped.
    """


@group.command()
@CONFIG
@click.option(
    "--worker-id",
    default=None,
    help="Name of this worker in logs and the coordinator's "
    "peer list (default HOST-PID); run several per site to share load.",
)
@click.option(
    "--health-only",
    is_flag=True,
    default=False,
    help="Connect and answer health checks only, without a reward model: test the connection "
    "(certificates, allow-lists, firewall) before training.",
)
def serve(config_path: Path, worker_id: str | None, health_only: bool) -> None:
    """Dial the coordinator and answer its scoring requests until stopped (Ctrl-C or SIGTERM).

    Loads the reward model trained into [train].out, sends its privacy report signed with the
    site's key after each connection, and scores under the [serve] policy (allowed coordinators,
    max batch, requests per minute, max pixels); refused requests get an error reply. Retries with
    exponential back-off while the coordinator is unreachable, cannot be verified or answers garbage
    (the reason is logged at each try); exits non-zero with the reason only when the verified
    coordinator refuses this site.
    """
    from client_agent.agent import Agent
    from client_agent.config import load_client_config

    config = load_client_config(config_path)
    agent = Agent(config, worker_id=worker_id)
    if not health_only:
        from client_agent.scoring import ScoringService, load_served_model, signed_report

        served = load_served_model(config, config_path)
        report = signed_report(config, served.report)
        agent.serve_scores(ScoringService(served.model, served.sha256, config.serve), report)
        click.echo(
            f"serving {served.report.get('family')} model {served.sha256[:19]}... from {served.folder}", err=True
        )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.run()  # AgentRefused, or PKIError at a reconnect (stale CRL): shown by the group, no traceback
    except KeyboardInterrupt:
        agent.stop()


from client_agent.commands import budget, evaluate, train  # noqa: E402  (owned by the training side)

for _command in (train, evaluate, budget):
    group.add_command(_command)

from client_agent.site_commands import doctor, init  # noqa: E402  (site set-up and checks)

for _command in (init, doctor):
    group.add_command(_command)
