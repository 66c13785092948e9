"""`mor coordinator`: the coordinator's commands, one module per job (probe, policy, router, status)."""

from __future__ import annotations

import click

from coordinator.commands import policy, probe, router, status
from mor_secure.cli import MorGroup


@click.group(name="coordinator", cls=MorGroup)
def group() -> None:
    """Probe the federation, train the router, run GRPO."""


for _command in (
    probe.probe,
    policy.public_data,
    policy.sft,
    policy.public_reward,
    policy.eval_,
    policy.grpo,
    router.router,
    status.status,
):
    group.add_command(_command)
