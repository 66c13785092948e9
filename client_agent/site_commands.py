"""`mor client init | doctor`: set up a site folder, then check the installation before training and serving."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("init")
@click.option("--site", required=True, help="This site's name, as the CA will certify it (e.g. 'site-a').")
@click.option(
    "--coordinator",
    "endpoint",
    required=True,
    help="The coordinator's address, tcp://HOST:PORT (from the coordinator operator).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to create: client.toml, certs/SITE.key (0600) and certs/SITE.csr.",
)
@click.option(
    "--coordinator-name",
    default=None,
    help="Name in the coordinator's certificate (mor://coordinator/NAME) [default: the endpoint's host].",
)
@click.option("--ca-fingerprint", default="", help="The CA fingerprint (sha256:...) if you already have it.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Your preference data folder.")
def init(
    site: str, endpoint: str, out_dir: Path, coordinator_name: str | None, ca_fingerprint: str, data: Path | None
) -> None:
    """Create a site folder: the private key (it never leaves), the request for the CA, a commented client.toml.

    client.toml lists every setting with its default and what it does; the paths of the
    certificate, CA and CRL point into OUT/certs/, where the files the CA operator sends back go.
    """
    from client_agent.init import init_site, next_steps

    folder = init_site(
        site, endpoint, out_dir, coordinator_name=coordinator_name, ca_fingerprint=ca_fingerprint, data=data
    )
    click.echo(
        f"config: {folder.config}\nkey:    {folder.key} (0600: it never leaves this machine)\n"
        f"CSR:    {folder.csr}\n\nNext steps:"
    )
    for number, step in enumerate(next_steps(folder, site), start=1):
        click.echo(f"  {number}. {step}")


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="The site's client.toml.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds to wait for the coordinator's welcome [default: [coordinator] connect_timeout_s].",
)
def doctor(config_path: Path, timeout_s: float | None) -> None:
    """Check the installation: config, certificate, CRL, CA pin, coordinator, data, model, budget.

    Each check prints PASS or FAIL with what it found and, on failure, the fix. The coordinator
    check makes a real mutual-TLS connection and waits for the welcome. Exits 1 if any check fails.
    """
    from rich.console import Console
    from rich.markup import escape

    from client_agent.doctor import run_checks

    console = Console(highlight=False, soft_wrap=True)
    results = run_checks(config_path, timeout_s=timeout_s)
    for check in results:
        mark = "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name:<12} {escape(check.detail)}")
        if not check.ok and check.fix:
            console.print(f"     {'':<12} [yellow]fix:[/yellow] {escape(check.fix)}")
    failed = [c.name for c in results if not c.ok]
    if failed:
        raise click.ClickException(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    console.print(f"all {len(results)} checks passed")
