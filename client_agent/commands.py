"""`mor client`: the commands of a site, in the order an operator runs them: init, doctor, train, eval,
budget, serve. torch is imported inside the commands, so `mor client --help` stays fast."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import click

from mor_secure.cli import MorGroup

CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The site's client.toml (written by `mor client init`).",
)


def _eps(value: float) -> str:
    """An epsilon as the commands print it (infinity is a run without DP)."""
    return "inf (no DP)" if math.isinf(value) else f"{value:.3f}"


@click.group(name="client", cls=MorGroup)
def group() -> None:
    """The agent installed at a site: train a DP reward model, serve scores.

    The agent dials out to the coordinator (the site opens no inbound port), proves its identity
    with mutual TLS 1.3 and answers requests until stopped.
    """


@group.command("init")
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


@group.command("doctor")
@CONFIG
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


@group.command("train")
@CONFIG
@click.option(
    "--no-dp",
    is_flag=True,
    default=False,
    help="Train WITHOUT differential privacy, as a baseline that shows what DP costs. Its "
    "report says epsilon = infinity and baseline = true: never serve such a model.",
)
@click.option(
    "--no-resume",
    is_flag=True,
    default=False,
    help="Ignore a checkpoint in [train].out and start a new run (the old run's reserved budget stays spent).",
)
@click.option("--quiet", is_flag=True, default=False, help="No progress bar.")
def train(config_path: Path, no_dp: bool, no_resume: bool, quiet: bool) -> None:
    """Train the site's reward model with DP-SGD (Opacus) at [privacy].target_epsilon.

    One DP sample is one preference pair. Settings, data (every image decoded once) and model are
    checked first; then the planned run is composed with every earlier run on this data set (the
    ledger at [privacy].ledger, which must exist) and refused if it would exceed
    [privacy].max_epsilon. A run failing before its first noisy step releases its reservation. A
    killed run resumes from its last checkpoint with its privacy accounting intact. Writes model.safetensors,
    reward_config.json and privacy_report.json into [train].out.
    """
    from client_agent.config import load_client_config
    from client_agent.train import train_reward_model

    config = load_client_config(config_path)
    result = train_reward_model(config, no_dp=no_dp, resume=not no_resume, progress=not quiet)
    report = result.report
    click.echo(
        f"trained {report.family} on {report.n_pairs} pairs in {report.steps} steps"
        + (f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else "")
    )
    click.echo(
        f"epsilon {_eps(report.epsilon)} ({report.accountant}), epsilon_rdp {_eps(report.epsilon_rdp)}, "
        f"delta {report.delta:.2g}, noise multiplier {report.noise_multiplier:.4f}, "
        f"sample rate {report.sample_rate:.4f}"
    )
    click.echo(f"model and privacy_report.json in {result.out_dir}")


@group.command("eval")
@CONFIG
@click.option("--split", default=None, help="Split to score (default [data].test_split).")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A saved reward-model folder (default [train].out).",
)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the result as JSON.")
def evaluate(config_path: Path, split: str | None, model_dir: Path | None, as_json: bool) -> None:
    """Held-out pairwise accuracy of the trained reward model, overall and per domain, and its top-1 ranking.

    A pair counts as right when the chosen answer scores above the rejected one. Where the data has
    the ground truth (domain, question_type, answer columns, as the benchmark world does), top-1 asks
    whether a true answer scores above every other candidate (all answers in all styles, other types'
    answers, junk): the ranking GRPO climbs. Evaluation is post-processing of the DP model: it costs no
    privacy budget.
    """
    from client_agent.config import load_client_config
    from client_agent.evaluate import evaluate_saved
    from client_agent.site_data import load_pairs

    config = load_client_config(config_path)
    data = load_pairs(config, split or config.data.test_split, limit=False)
    result = evaluate_saved(model_dir or config.train.out, data, top1=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    ranked = (result.top1 or {}).get("per_domain", {})
    click.echo(f"{'domain':<12} {'pairs':>6} {'accuracy':>9} {'top-1':>7}")
    for domain, row in result.per_domain.items():
        top = f"{ranked[domain]['top1']:>7.3f}" if domain in ranked else f"{'-':>7}"
        click.echo(f"{domain:<12} {row['pairs']:>6} {row['accuracy']:>9.3f} {top}")
    top = f"{result.top1['top1']:>7.3f}" if result.top1 else f"{'-':>7}"
    click.echo(f"{'all':<12} {result.pairs:>6} {result.accuracy:>9.3f} {top}")


@group.command("budget")
@CONFIG
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the status as JSON.")
@click.option(
    "--new-ledger",
    is_flag=True,
    default=False,
    help="Start a new, empty privacy ledger at [privacy].ledger (the site's first training; logged). "
    "Refused when one exists. Never use it to replace a lost ledger: restore that from backup.",
)
def budget(config_path: Path, as_json: bool, new_ledger: bool) -> None:
    """The lifetime privacy spend on [data].path: every run in the ledger, composed.

    Runs compose through the accountant (two runs at epsilon 2 spend about 2.7, not 4); the
    budget is never reset and follows the data's content (not its folder, files or layout). Reads
    and decodes the data set once for its fingerprint. A missing ledger fails closed.
    """
    from client_agent.budget import SiteLedger, ledger_path, site_status
    from client_agent.config import load_client_config

    config = load_client_config(config_path)
    if new_ledger:
        SiteLedger(ledger_path(config)).start(reason=f"`mor client budget --new-ledger --config {config_path}`")
        click.echo(f"started a new privacy ledger at {ledger_path(config)} (logged)", err=True)
    status, runs = site_status(config)
    if as_json:
        click.echo(json.dumps({**vars(status), "remaining": status.remaining, "runs": runs}, indent=2))
        return
    click.echo(f"data set   {config.data.path} ({status.data_fingerprint[:19]}...)")
    click.echo(f"ledger     {status.ledger}")
    for run in runs:
        spent = "inf (no DP)" if run["epsilon"] is None else f"{run['epsilon']:.3f}"
        click.echo(
            f"  run {run['run_id'][:12]}  {run['status']:<9} {run['family']:<13} "
            f"{run['steps']:>6} steps  epsilon {spent}  {run['time']}"
        )
    click.echo(
        f"spent      epsilon {status.spent:.3f} at delta {status.delta:.2g} ({status.accountant}, "
        f"{status.runs} private run(s) composed)"
    )
    click.echo(f"budget     {status.max_epsilon:g}; remaining {status.remaining:.3f}")


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
