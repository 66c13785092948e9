"""The `mor` console script: a root group that finds its sub-command groups lazily.

Groups are registered as entry points (``mor_secure.commands``), so ``mor --help`` lists every
installed group without importing torch, and importing the core never imports a side.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from mor_secure import __version__
from mor_secure.errors import MorError
from mor_secure.logs import configure_logging

ENTRY_POINT_GROUP = "mor_secure.commands"

# Shown by `mor --help` without importing the group; a group's own --help says the rest.
GROUP_SUMMARIES = {
    "certs": "Project CA, site keys and certificates, revocation (PKI).",
    "data": "Generate the multi-domain benchmark world; check a preference data set.",
    "models": "Build tiny offline vision-language models for tests and the demo.",
    "client": "The agent installed at a site: train a DP reward model, serve scores.",
    "coordinator": "Probe the federation, train the router, run GRPO.",
    "ledger": "Show and verify the hash-chained privacy ledger.",
    "bench": "Run the benchmarks and write reports under benchmarks/results/.",
    "demo": "Run a whole federation on this machine, end to end.",
}


def _registered() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class MorGroup(click.Group):
    """A click group that shows a ``MorError`` as its cause and fix, without a traceback: the one place
    where user-facing errors are handled. Any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MorError as exc:
            raise click.ClickException(exc.user_message()) from None


class LazyGroup(MorGroup):
    """A click group whose sub-commands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_registered())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = _registered().get(name)
        if entry is None:
            return None
        return entry.load()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, GROUP_SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mor")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Threshold for log records written to stderr.",
)
@click.option(
    "--log-json", is_flag=True, default=False, help="Write logs as JSON lines (one object per record) for log shippers."
)
def root(log_level: str, log_json: bool) -> None:
    """MoR-Secure: federated alignment of a vision-language model with a Mixture-of-Rewards.

    Sites train reward models on their own preference pairs with DP-SGD and answer scoring
    requests over mutual TLS; the coordinator fuses their scores with a learned router and
    trains the policy with GRPO. No data and no parameters leave a site, only scores.

    Run `mor COMMAND --help` for the commands of a group.
    """
    configure_logging(level=log_level.upper(), json_lines=log_json)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `mor` console script."""
    try:
        root.main(args=argv, prog_name="mor", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        logging.getLogger("mor").warning("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
